-- What neutralisation (`odoo neutralize`) must have achieved, read back before an environment
-- is published: the flag, no active outgoing server but Odoo's dummy one, no active cron but
-- the autovacuum, and the "neutralized database" banner active wherever `web` installed it.
SELECT (SELECT value FROM ir_config_parameter WHERE key = 'database.is_neutralized')
           AS is_neutralized,
       (SELECT count(*) FROM ir_mail_server
         WHERE active AND smtp_host IS DISTINCT FROM 'invalid') AS live_mail_servers,
       (SELECT count(*) FROM ir_cron
         WHERE active AND id NOT IN (SELECT res_id FROM ir_model_data
                                      WHERE model = 'ir.cron' AND name = 'autovacuum_job'
                                        AND module = 'base')) AS active_crons,
       (SELECT count(*) FROM ir_ui_view
         WHERE key = 'web.neutralize_banner' AND NOT active) AS inactive_banners;
