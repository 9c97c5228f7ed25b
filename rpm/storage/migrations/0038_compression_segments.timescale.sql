-- Readings chunks compress in segments of one metric, ordered by patient, device and
-- measured time, in place of 0033's segments of one patient, device and metric.
--
-- A 7-day chunk holds about 7-25 readings of a patient's device and metric, so 0033's
-- segments made compressed batches of a few rows each, which column compression can hardly
-- shrink: 172-178 bytes a reading once compressed, against 356 uncompressed
-- (benchmarks/data_year.py, docs/performance.md). One segment per metric fills batches of
-- 1,000 rows. TimescaleDB keeps the minimum and maximum of each ORDER BY column per batch,
-- so a patient's reads (patient_id) and insert_new's ON CONFLICT check (device_id, metric,
-- measured_at) decompress only the batches whose ranges hold them; lookups by uid use the
-- bloom filter TimescaleDB keeps for the indexed uid column.
--
-- Chunks compressed before keep their settings (TimescaleDB keeps them per chunk) until the
-- lifecycle scheduler recompresses them, two a pass (rpm/workers/lifecycle.py).
ALTER TABLE readings SET (
    timescaledb.compress_segmentby = 'metric',
    timescaledb.compress_orderby = 'patient_id, device_id, measured_at DESC'
);
