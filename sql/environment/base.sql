-- Neutralisation of module `base`, as Odoo does it for a duplicated database
-- (odoo/addons/base/data/neutralize.sql): applied by environment-db to every environment before
-- it is published, then checked by jobs.environment_db.check_neutralised. Run as one script.

-- Outgoing mail servers off ...
UPDATE ir_mail_server SET active = false;

-- ... and a dummy, unreachable one active, so that a server given on Odoo's command line
-- (--smtp-server) is never used as the fallback. Older schemas lack the auth/encryption columns.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM ir_mail_server WHERE name = 'neutralization - disable emails') THEN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'ir_mail_server'
                  AND column_name = 'smtp_authentication') THEN
      INSERT INTO ir_mail_server (name, smtp_port, smtp_host, smtp_encryption, active,
                                  smtp_authentication)
      VALUES ('neutralization - disable emails', 1025, 'invalid', 'none', true, 'login');
    ELSE
      INSERT INTO ir_mail_server (name, smtp_port, smtp_host, active)
      VALUES ('neutralization - disable emails', 1025, 'invalid', true);
    END IF;
  END IF;
END
$$;

-- Scheduled actions off, except the autovacuum (it only cleans the database itself).
UPDATE ir_cron
   SET active = false
 WHERE id NOT IN (SELECT res_id FROM ir_model_data
                   WHERE model = 'ir.cron' AND name = 'autovacuum_job' AND module = 'base');

-- The flag Odoo shows as the "neutralized database" banner.
INSERT INTO ir_config_parameter (key, value)
VALUES ('database.is_neutralized', 'true')
    ON CONFLICT (key) DO UPDATE SET value = 'true';

-- Outgoing webhooks of server actions (17+), where the schema has them.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = 'ir_act_server'
                AND column_name = 'webhook_url') THEN
    UPDATE ir_act_server SET webhook_url = 'neutralization - disable webhook'
     WHERE state = 'webhook';
  END IF;
END
$$;
