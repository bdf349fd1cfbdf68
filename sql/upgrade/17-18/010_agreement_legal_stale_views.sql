-- agreement_legal 17.0 → 18.0 pre-fix: PLANA's own (no upstream migration script or fix exists).
--
-- 17.0's agreement_legal adds inheriting views on model `agreement` that show the field
-- `signed_contract_filename`, which 18.0 no longer has. The 18.0 pass re-validates agreement's
-- views together with every view inheriting them and fails (ParseError) on those stale ones.
-- Removing agreement_legal's views (and views built on them) with their ir_model_data rows lets
-- the 18.0 pass recreate them from the 18.0 XML. Where agreement_legal is absent it deletes
-- nothing. Applied once, in one transaction with its record in the work copy's marker.
WITH RECURSIVE stale AS (
    SELECT d.res_id AS id
      FROM ir_model_data d
     WHERE d.module = 'agreement_legal' AND d.model = 'ir.ui.view' AND d.res_id IS NOT NULL
    UNION
    SELECT v.id
      FROM ir_ui_view v
      JOIN stale s ON v.inherit_id = s.id
), gone AS (
    DELETE FROM ir_ui_view v USING stale s WHERE v.id = s.id RETURNING v.id
)
DELETE FROM ir_model_data d
 WHERE d.model = 'ir.ui.view'
   AND (d.module = 'agreement_legal' OR d.res_id IN (SELECT id FROM gone));
