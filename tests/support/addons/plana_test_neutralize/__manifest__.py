# ruff: noqa: B018 -- an Odoo manifest is one bare dict literal
{
    "name": "PLANA test: neutralize.sql that can sleep or fail",
    "summary": "Its data/neutralize.sql sleeps or raises when the database's parameters say so",
    "version": "1.0",
    "license": "LGPL-3",
    "depends": ["base"],
    "installable": True,
}
