-- Give a clone of a template its own identity, as Odoo's duplication does
-- (ir.config_parameter.init(force=True)), plus the owner's admin identity and the tenant URL.
--
-- Run by jobs.tenant_db.personalise in ONE transaction, one statement per ";" at a line end,
-- with named parameters (%(name)s): values are never spliced into the text.
-- Every tenant gets a fresh database.secret (signs sessions and tokens: two tenants sharing it
-- could forge each other's sessions) and database.uuid.

INSERT INTO ir_config_parameter (key, value)
VALUES ('database.secret', %(secret)s),
       ('database.uuid', %(uuid)s),
       ('database.create_date', %(create_date)s),
       ('web.base.url', %(base_url)s),
       ('web.base.url.freeze', 'True')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

-- The admin user (xmlid base.user_admin) logs in with the owner's email. The template's default
-- password ("admin", identical in every clone) is cleared: the owner sets one through a reset link.
UPDATE res_users
   SET login = %(admin_login)s, password = NULL
 WHERE id = (SELECT res_id FROM ir_model_data
              WHERE module = 'base' AND name = 'user_admin' AND model = 'res.users');

-- The admin's partner carries the owner's name and email.
UPDATE res_partner
   SET name = %(owner_name)s, email = %(owner_email)s
 WHERE id = (SELECT u.partner_id FROM res_users u
               JOIN ir_model_data d ON d.res_id = u.id AND d.model = 'res.users'
              WHERE d.module = 'base' AND d.name = 'user_admin');

-- The main company and its partner are named after the owner.
UPDATE res_company
   SET name = %(company_name)s
 WHERE id = (SELECT res_id FROM ir_model_data
              WHERE module = 'base' AND name = 'main_company' AND model = 'res.company');

UPDATE res_partner
   SET name = %(company_name)s
 WHERE id = (SELECT c.partner_id FROM res_company c
               JOIN ir_model_data d ON d.res_id = c.id AND d.model = 'res.company'
              WHERE d.module = 'base' AND d.name = 'main_company');
