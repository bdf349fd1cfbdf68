from . import plana_test_record  # noqa: F401 -- Odoo loads the models by importing them
