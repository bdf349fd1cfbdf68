from odoo import api, models
from odoo.exceptions import UserError


class PlanaTestFailUpdate(models.AbstractModel):
    _name = "plana.test.fail.update"
    _description = "PLANA test: updating fails"

    @api.model
    def plana_test_fail_on_update(self) -> None:
        """Called by the module's data on every load: raises when the load is an update."""
        module = self.env["ir.module.module"].search([("name", "=", "plana_test_fail_update")])
        if module.state == "to upgrade":
            raise UserError("plana_test_fail_update: updating this module fails (by design)")
