from odoo import fields, models


class PlanaTestRecord(models.Model):
    _name = "plana.test.record"
    _description = "PLANA test record"

    name = fields.Char(required=True)
