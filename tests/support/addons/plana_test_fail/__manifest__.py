# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test: install fails",
    "summary": "Its data names a model that does not exist: installing it fails",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["base"],
    "data": ["data/plana_test_fail_data.xml"],
    "installable": True,
}
