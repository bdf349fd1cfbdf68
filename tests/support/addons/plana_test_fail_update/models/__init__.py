from . import plana_test_fail_update  # noqa: F401 -- Odoo loads the models by importing them
