-- A database's own identity, as Odoo's duplication resets it (ir.config_parameter.init(force=True)):
-- a fresh database.secret (it signs sessions and tokens: two databases sharing it could forge
-- each other's sessions), a fresh database.uuid, its creation date and its URL.
--
-- Run by jobs.ops.identity for every copy of a database: personalise (a tenant cloned from a
-- template, inside its transaction) and new_identity (a restored copy, an environment), with
-- named parameters (%(name)s): values are never spliced into the text.

INSERT INTO ir_config_parameter (key, value)
VALUES ('database.secret', %(secret)s),
       ('database.uuid', %(uuid)s),
       ('database.create_date', %(create_date)s),
       ('web.base.url', %(base_url)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
