-- Give a clone of a template the owner's admin identity and the tenant URL, frozen. Its own
-- database.secret, uuid, creation date and URL come first, from identity.sql (what every copy
-- gets, as Odoo's duplication does).
--
-- Run by jobs.ops.identity.personalise in ONE transaction, one statement at a time (split by
-- jobs.adapters.pg.script as PostgreSQL reads the text: quotes, $$ bodies, comments),
-- with named parameters (%(name)s): values are never spliced into the text.
-- Odoo's ORM recomputes the STORED fields it derives from a changed field; plain SQL must do it
-- itself (the last two statements): a stale res_partner.complete_name, which name_search and the
-- partners' order read, would keep the company findable as "My Company" only. mail's
-- res_partner.email_normalized is updated by personalise_mail.sql, run when that column exists.

-- The tenant's URL is fixed: Odoo would otherwise take it from the first admin's request.
INSERT INTO ir_config_parameter (key, value)
VALUES ('web.base.url.freeze', 'True')
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

-- The partners renamed above: the admin's and the main company's. Both statements below
-- recompute only what Odoo 17/18 would recompute on their rename (res.partner's depends).
-- commercial_company_name (_compute_commercial_company_name, depends on
-- commercial_partner_id.name): the commercial partner's name when that partner is a company,
-- else the partner's own company_name. For every partner whose commercial partner was renamed:
-- the renamed ones themselves and, below the company, all its contacts and their addresses.
UPDATE res_partner p
   SET commercial_company_name = CASE WHEN cp.is_company AND cp.name <> '' THEN cp.name
                                      ELSE p.company_name END
  FROM res_partner cp
 WHERE cp.id = p.commercial_partner_id
   AND cp.id IN (SELECT u.partner_id FROM res_users u
                   JOIN ir_model_data d ON d.res_id = u.id AND d.model = 'res.users'
                  WHERE d.module = 'base' AND d.name = 'user_admin'
                 UNION ALL
                 SELECT c.partner_id FROM res_company c
                   JOIN ir_model_data d ON d.res_id = c.id AND d.model = 'res.company'
                  WHERE d.module = 'base' AND d.name = 'main_company');

-- complete_name (_get_complete_name, depends on name, parent_id.name and the
-- commercial_company_name just written): the name alone, or, for a partner with a parent or a
-- company_name, the name (an unnamed invoice/delivery/other address: its type's English label)
-- prefixed "{commercial_company_name or the parent's name}, " unless the partner is a company.
-- Odoo prints a missing name as "False" and strips the result as Python's str.strip() does (the
-- characters are the parameter %(whitespace)s). For the renamed partners, their children (who
-- show the parent's name) and every partner whose commercial partner was renamed.
UPDATE res_partner p
   SET complete_name = btrim(
       CASE WHEN COALESCE(p.company_name, '') = '' AND p.parent_id IS NULL
            THEN COALESCE(p.name, '')
            ELSE CASE WHEN p.is_company THEN ''
                      ELSE COALESCE(NULLIF(p.commercial_company_name, ''),
                                    (SELECT q.name FROM res_partner q WHERE q.id = p.parent_id),
                                    'False') || ', ' END
                 || CASE WHEN COALESCE(p.name, '') <> '' THEN p.name
                         WHEN p.type = 'invoice' THEN 'Invoice Address'
                         WHEN p.type = 'delivery' THEN 'Delivery Address'
                         WHEN p.type = 'other' THEN 'Other Address'
                         ELSE '' END
       END, %(whitespace)s)
 WHERE EXISTS (SELECT 1
                 FROM (SELECT u.partner_id AS id FROM res_users u
                         JOIN ir_model_data d ON d.res_id = u.id AND d.model = 'res.users'
                        WHERE d.module = 'base' AND d.name = 'user_admin'
                       UNION ALL
                       SELECT c.partner_id FROM res_company c
                         JOIN ir_model_data d ON d.res_id = c.id AND d.model = 'res.company'
                        WHERE d.module = 'base' AND d.name = 'main_company') AS renamed
                WHERE renamed.id IN (p.id, p.parent_id, p.commercial_partner_id));
