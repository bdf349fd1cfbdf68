# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test: update fails",
    "summary": "Installs; every update of it fails",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["base"],
    "data": ["data/plana_test_fail_update_data.xml"],
    "installable": True,
}
