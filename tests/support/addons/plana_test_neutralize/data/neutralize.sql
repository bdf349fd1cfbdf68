-- `odoo neutralize` runs this (Odoo reads every installed module's data/neutralize.sql, inside
-- its one transaction). Without the parameters below it does nothing.
-- plana_test_neutralize.sleep = N: sleep N seconds (a test kills Odoo while pg_stat_activity
-- shows this query waiting on PgSleep).
SELECT pg_sleep(coalesce((SELECT value::float FROM ir_config_parameter
                           WHERE key = 'plana_test_neutralize.sleep'), 0));
-- plana_test_neutralize.fail set: raise, so the neutralisation fails and is rolled back.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM ir_config_parameter WHERE key = 'plana_test_neutralize.fail') THEN
        RAISE EXCEPTION 'plana_test_neutralize: failing, as plana_test_neutralize.fail asks';
    END IF;
END
$$;
