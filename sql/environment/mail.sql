-- Neutralisation of module `mail` (addons/mail/data/neutralize.sql): templates lose their
-- dedicated outgoing server, so they fall back to the neutralised dummy one.
DO $$
BEGIN
  IF to_regclass('mail_template') IS NOT NULL THEN
    UPDATE mail_template SET mail_server_id = NULL;
  END IF;
END
$$;
