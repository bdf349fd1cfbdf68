-- mail's stored res_partner.email_normalized (mail.thread.blacklist), for the admin's partner
-- whose email personalise.sql changed. Run by jobs.ops.identity.personalise in the same
-- transaction, only when the column exists (mail installed); the value is computed by the job, as
-- Odoo's email_normalize does (the owner's address, lower-cased).

UPDATE res_partner
   SET email_normalized = %(owner_email_normalized)s
 WHERE id = (SELECT u.partner_id FROM res_users u
               JOIN ir_model_data d ON d.res_id = u.id AND d.model = 'res.users'
              WHERE d.module = 'base' AND d.name = 'user_admin');
