-- What personalise.sql must have achieved; read back in the same transaction before COMMIT.
SELECT u.login, p.email, c.name AS company_name,
       (SELECT value FROM ir_config_parameter WHERE key = 'database.uuid') AS db_uuid,
       (SELECT value FROM ir_config_parameter WHERE key = 'web.base.url') AS base_url
  FROM ir_model_data du
  JOIN res_users u ON u.id = du.res_id
  JOIN res_partner p ON p.id = u.partner_id
  JOIN ir_model_data dc ON dc.module = 'base' AND dc.name = 'main_company'
                       AND dc.model = 'res.company'
  JOIN res_company c ON c.id = dc.res_id
 WHERE du.module = 'base' AND du.name = 'user_admin' AND du.model = 'res.users';
