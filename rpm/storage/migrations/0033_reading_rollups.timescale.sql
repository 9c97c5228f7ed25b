-- TimescaleDB extras for 0033 (docs/data-lifecycle.md): the rollups are continuous
-- aggregates, and readings chunks can be compressed.
--
-- Compression: segments per patient, device and metric (the patient page reads a patient's
-- rows, insert_new's ON CONFLICT looks up a device and metric), ordered by measured time.
-- A device is bound to one patient for weeks, so patient_id adds hardly any segment.
-- Chunks are compressed by the lifecycle scheduler (rpm/workers/lifecycle.py) once older
-- than RPM_LIFECYCLE_COMPRESS_AFTER_DAYS; TimescaleDB's own policy jobs are not used: on
-- Debian's PostgreSQL 15.20 they fail ("cannot drop portal while it is being set up").
ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'patient_id, device_id, metric',
    timescaledb.compress_orderby = 'measured_at DESC'
);

DROP TABLE readings_hourly;
DROP TABLE readings_daily;

-- Real-time aggregation on (materialized_only = false): rows after the last refresh are
-- aggregated from readings at query time. Buckets as time_bucket's default origin
-- (2000-01-03 00:00 UTC), the same as date_bin in 0033_reading_rollups.sql.
CREATE MATERIALIZED VIEW readings_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', measured_at) AS bucket, patient_id, metric,
       count(*) AS n,
       count((components ->> rpm_component_name(metric, 1))::float8) AS c1_n,
       min((components ->> rpm_component_name(metric, 1))::float8) AS c1_min,
       max((components ->> rpm_component_name(metric, 1))::float8) AS c1_max,
       sum((components ->> rpm_component_name(metric, 1))::float8) AS c1_sum,
       count((components ->> rpm_component_name(metric, 2))::float8) AS c2_n,
       min((components ->> rpm_component_name(metric, 2))::float8) AS c2_min,
       max((components ->> rpm_component_name(metric, 2))::float8) AS c2_max,
       sum((components ->> rpm_component_name(metric, 2))::float8) AS c2_sum,
       count((components ->> rpm_component_name(metric, 3))::float8) AS c3_n,
       min((components ->> rpm_component_name(metric, 3))::float8) AS c3_min,
       max((components ->> rpm_component_name(metric, 3))::float8) AS c3_max,
       sum((components ->> rpm_component_name(metric, 3))::float8) AS c3_sum
  FROM readings
 GROUP BY 1, 2, 3
WITH NO DATA;

-- The daily rollup is aggregated from the hourly one (a hierarchical continuous aggregate).
CREATE MATERIALIZED VIEW readings_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket, patient_id, metric,
       sum(n)::bigint AS n,
       sum(c1_n)::bigint AS c1_n, min(c1_min) AS c1_min, max(c1_max) AS c1_max,
       sum(c1_sum) AS c1_sum,
       sum(c2_n)::bigint AS c2_n, min(c2_min) AS c2_min, max(c2_max) AS c2_max,
       sum(c2_sum) AS c2_sum,
       sum(c3_n)::bigint AS c3_n, min(c3_min) AS c3_min, max(c3_max) AS c3_max,
       sum(c3_sum) AS c3_sum
  FROM readings_hourly
 GROUP BY 1, 2, 3
WITH NO DATA;
