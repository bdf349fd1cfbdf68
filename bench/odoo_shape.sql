-- The bench template's data, shaped like an Odoo database in use (on top of the stand-in's core
-- tables). What matters for the benchmark is what each copy method pays for:
--   * a TEMPLATE clone copies files: it pays per byte and per relation file;
--   * pg_dump | pg_restore replays the schema: it pays per row, per index built and per foreign
--     key validated, one commit per object.
-- Odoo's own shape is what makes the second expensive, so the bench must have it: every model
-- table carries create_uid/write_uid (FOREIGN KEY res_users ON DELETE SET NULL), its many2one
-- fields are FOREIGN KEYs, `index=True` fields are btree indexes, translatable fields are
-- jsonb, and the large tables are narrow rows with several indexes (account_move_line), chatter
-- (mail_message) and XML ids (ir_model_data). ~720 model tables, ~4,700 relations, ~2,900
-- foreign keys, ~340 MB.
DO $$
DECLARE i int;
BEGIN
  FOR i IN 0..719 LOOP
    EXECUTE format(
      'CREATE TABLE %I (id serial PRIMARY KEY, name varchar NOT NULL,'
      ' company_id integer REFERENCES res_company(id) ON DELETE SET NULL,'
      ' partner_id integer REFERENCES res_partner(id) ON DELETE SET NULL,'
      ' active boolean DEFAULT true, sequence integer DEFAULT 10,'
      ' create_uid integer REFERENCES res_users(id) ON DELETE SET NULL,'
      ' create_date timestamp DEFAULT now(),'
      ' write_uid integer REFERENCES res_users(id) ON DELETE SET NULL,'
      ' write_date timestamp DEFAULT now())', 'bench_model_' || i);
    EXECUTE format('CREATE INDEX ON %I (company_id)', 'bench_model_' || i);
    EXECUTE format(
      'INSERT INTO %I (name, company_id, create_uid, write_uid)'
      ' SELECT ''r'' || g, 1, 1, 1 FROM generate_series(1, 20) g', 'bench_model_' || i);
  END LOOP;
END $$;

INSERT INTO res_partner (name, email, company_id, is_company)
  SELECT 'Partner ' || g, 'p' || g || '@example.com', 1, g % 7 = 0
  FROM generate_series(1, 20000) g;
CREATE INDEX ON res_partner (name);
CREATE INDEX ON res_partner (email);
CREATE INDEX ON res_partner (company_id);

CREATE TABLE bench_account_account (id serial PRIMARY KEY, code varchar NOT NULL,
  name jsonb NOT NULL, company_id integer NOT NULL REFERENCES res_company(id),
  account_type varchar NOT NULL,
  create_uid integer REFERENCES res_users(id) ON DELETE SET NULL, create_date timestamp DEFAULT now(),
  write_uid integer REFERENCES res_users(id) ON DELETE SET NULL, write_date timestamp DEFAULT now());
INSERT INTO bench_account_account (code, name, company_id, account_type, create_uid, write_uid)
  SELECT lpad(g::text, 6, '0'), jsonb_build_object('en_US', 'Account ' || g), 1,
    'asset_current', 1, 1
  FROM generate_series(1, 500) g;
CREATE UNIQUE INDEX ON bench_account_account (code, company_id);

CREATE TABLE bench_account_move (id serial PRIMARY KEY, name varchar, ref varchar,
  date date NOT NULL, state varchar NOT NULL, move_type varchar NOT NULL,
  partner_id integer REFERENCES res_partner(id) ON DELETE RESTRICT,
  company_id integer NOT NULL REFERENCES res_company(id), amount_total numeric,
  currency_id integer, narration jsonb,
  create_uid integer REFERENCES res_users(id) ON DELETE SET NULL, create_date timestamp DEFAULT now(),
  write_uid integer REFERENCES res_users(id) ON DELETE SET NULL, write_date timestamp DEFAULT now());
INSERT INTO bench_account_move (name, ref, date, state, move_type, partner_id, company_id,
    amount_total, currency_id, create_uid, write_uid)
  SELECT 'INV/2026/' || lpad(g::text, 6, '0'), 'REF' || g, date '2024-01-01' + (g % 900),
    'posted', 'out_invoice', (SELECT min(id) FROM res_partner) + g % 20000, 1,
    (g % 10000) / 7.0, 1, 1, 1
  FROM generate_series(1, 100000) g;
CREATE INDEX ON bench_account_move (name);
CREATE INDEX ON bench_account_move (date);
CREATE INDEX ON bench_account_move (partner_id);
CREATE INDEX ON bench_account_move (state);
CREATE INDEX ON bench_account_move (company_id);

CREATE TABLE bench_account_move_line (id serial PRIMARY KEY,
  move_id integer NOT NULL REFERENCES bench_account_move(id) ON DELETE CASCADE,
  account_id integer NOT NULL REFERENCES bench_account_account(id),
  partner_id integer REFERENCES res_partner(id) ON DELETE RESTRICT,
  company_id integer NOT NULL REFERENCES res_company(id), name varchar, date date NOT NULL,
  parent_state varchar, debit numeric NOT NULL DEFAULT 0, credit numeric NOT NULL DEFAULT 0,
  balance numeric NOT NULL DEFAULT 0, amount_currency numeric, amount_residual numeric,
  quantity numeric, price_unit numeric, reconciled boolean, sequence integer, display_type varchar,
  create_uid integer REFERENCES res_users(id) ON DELETE SET NULL, create_date timestamp DEFAULT now(),
  write_uid integer REFERENCES res_users(id) ON DELETE SET NULL, write_date timestamp DEFAULT now());
INSERT INTO bench_account_move_line (move_id, account_id, partner_id, company_id, name, date,
    parent_state, debit, credit, balance, amount_currency, amount_residual, quantity, price_unit,
    reconciled, sequence, display_type, create_uid, write_uid)
  SELECT m.id, 1 + (m.id * 7 + k) % 500, m.partner_id, 1, 'Line ' || k || ' of ' || m.name,
    m.date, 'posted', m.amount_total, 0, m.amount_total, m.amount_total, 0, 1, m.amount_total,
    false, k, 'product', 1, 1
  FROM bench_account_move m, generate_series(1, 5) k;
CREATE INDEX ON bench_account_move_line (move_id);
CREATE INDEX ON bench_account_move_line (account_id);
CREATE INDEX ON bench_account_move_line (partner_id);
CREATE INDEX ON bench_account_move_line (date);
CREATE INDEX ON bench_account_move_line (company_id);
CREATE INDEX ON bench_account_move_line (account_id, date);

CREATE TABLE bench_mail_message (id serial PRIMARY KEY, model varchar, res_id integer,
  body text, subject varchar, message_type varchar NOT NULL,
  author_id integer REFERENCES res_partner(id) ON DELETE SET NULL, date timestamp,
  create_uid integer REFERENCES res_users(id) ON DELETE SET NULL, create_date timestamp DEFAULT now(),
  write_uid integer REFERENCES res_users(id) ON DELETE SET NULL, write_date timestamp DEFAULT now());
INSERT INTO bench_mail_message (model, res_id, body, subject, message_type, author_id, date,
    create_uid, write_uid)
  SELECT 'account.move', 1 + g % 100000, '<p>' || repeat(md5(g::text) || ' ', 8) || '</p>',
    'Invoice ' || g, 'notification', (SELECT min(id) FROM res_partner) + g % 20000, now(), 1, 1
  FROM generate_series(1, 170000) g;
CREATE INDEX ON bench_mail_message (model, res_id);
CREATE INDEX ON bench_mail_message (author_id);
CREATE INDEX ON bench_mail_message (date);

INSERT INTO ir_model_data (module, name, model, res_id)
  SELECT 'bench', 'record_' || g, 'bench.model', g FROM generate_series(1, 100000) g;
CREATE INDEX ON ir_model_data (model, res_id);
