from . import models  # noqa: F401 -- Odoo loads the models by importing them
