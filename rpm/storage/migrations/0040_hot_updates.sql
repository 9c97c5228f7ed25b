-- Rows the ingest unit of work updates on most batches get room in their page, so the
-- update is a HOT one (no new index entries; the old version pruned in place), as
-- patient_day_bits has since 0036. Measured with pg_stat_statements on benchmarks/ingest.py
-- (docs/performance.md, "Ingest"): with full pages most updates of devices moved the row to
-- another page and inserted into both its indexes, evaluating rpm_fhir_id(id) for the
-- expression index each time. The setting applies to pages written from now on; the
-- tables are small (a row per device, per patient and metric, per patient and day, per
-- patient), so the free space costs little.
ALTER TABLE devices SET (fillfactor = 50);
ALTER TABLE patient_metric_last SET (fillfactor = 70);
ALTER TABLE patient_days SET (fillfactor = 70);
ALTER TABLE patient_rule_versions SET (fillfactor = 70);
