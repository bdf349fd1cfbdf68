# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test: sleeps",
    "summary": "Sleeps PLANA_TEST_ODOO_SLEEP seconds while it is installed or updated",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["base"],
    "data": ["data/plana_test_sleep_data.xml"],
    "installable": True,
}
