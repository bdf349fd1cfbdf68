# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test app 2",
    "summary": "Depends on plana_test_app (for the plana-jobs test suite)",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["plana_test_app"],
    "data": ["data/plana_test_app2_data.xml"],
    "installable": True,
}
