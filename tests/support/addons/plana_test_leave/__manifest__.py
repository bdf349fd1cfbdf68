# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test: left to install",
    "summary": "Depends on a module that is not installable: -i leaves it `to install`",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["plana_test_gone"],
    "installable": True,
}
