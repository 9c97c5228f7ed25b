-- Compression settings of the readings hypertable: TimescaleDB only
-- (0038_compression_segments.timescale.sql). Nothing to do on plain PostgreSQL.
SELECT 1;
