from . import plana_test_sleep  # noqa: F401 -- Odoo loads the models by importing them
