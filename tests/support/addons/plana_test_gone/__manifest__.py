# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test: not installable",
    "summary": "A dependency that cannot be installed",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["base"],
    "installable": False,
}
