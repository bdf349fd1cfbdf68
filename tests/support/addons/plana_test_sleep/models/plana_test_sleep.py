import logging
import os
import time

from odoo import api, models

_logger = logging.getLogger(__name__)


class PlanaTestSleep(models.AbstractModel):
    _name = "plana.test.sleep"
    _description = "PLANA test: sleeps while loading"

    @api.model
    def plana_test_sleep(self) -> None:
        """Called by the module's data on install and update, inside the registry's transaction."""
        seconds = float(os.environ.get("PLANA_TEST_ODOO_SLEEP") or 0)
        _logger.info("plana_test_sleep: sleeping %gs (PLANA_TEST_ODOO_SLEEP)", seconds)
        time.sleep(seconds)
