# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test app",
    "summary": "A model, a record and an attachment for the plana-jobs test suite",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["base", "web"],
    "data": [
        "security/ir.model.access.csv",
        "data/plana_test_app_data.xml",
    ],
    "installable": True,
}
