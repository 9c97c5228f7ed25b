-- TimescaleDB extras for 0041: the readings hypertable rebuilt with the smaller row.
--
-- A hypertable's column cannot change type, nor its columns their order, while continuous
-- aggregates read it and chunks are compressed: a new hypertable takes the readings (those
-- of compressed chunks too), with the old chunk interval and 0038's compression settings.
-- Its chunks are uncompressed until the lifecycle scheduler's next pass compresses those
-- older than RPM_LIFECYCLE_COMPRESS_AFTER_DAYS.
--
-- The continuous aggregates are made again (0033's, from the typed slots) without data:
-- real-time aggregation (materialized_only = false) answers from the readings until the
-- scheduler's next pass materialises them. With retention on, buckets of chunks already
-- dropped are not made again: their readings are gone.

DO $$
DECLARE
    chunk interval := (SELECT time_interval FROM timescaledb_information.dimensions
                        WHERE hypertable_name = 'readings' AND column_name = 'measured_at');
BEGIN
    DROP MATERIALIZED VIEW readings_daily;
    DROP MATERIALIZED VIEW readings_hourly;
    ALTER TABLE readings RENAME TO readings_v0040;
    ALTER TABLE readings_v0040 RENAME CONSTRAINT readings_pkey TO readings_v0040_pkey;
    ALTER INDEX readings_patient_time RENAME TO readings_v0040_patient_time;
    ALTER INDEX IF EXISTS readings_measured_at_idx RENAME TO readings_v0040_measured_at_idx;

    CREATE TABLE readings (
        measured_at    timestamptz NOT NULL,
        received_at    timestamptz NOT NULL,
        stored_at      timestamptz NOT NULL DEFAULT now(),
        v1             float8 NOT NULL,
        v2             float8,
        v3             float8,
        metric         rpm_metric NOT NULL,
        interpretation text CHECK (interpretation IN ('N', 'H', 'HH', 'L', 'LL')),
        device_id      text NOT NULL,
        patient_id     text NOT NULL,
        original       jsonb,
        PRIMARY KEY (device_id, metric, measured_at)
    );
    -- A hypertable keeps the patient index (plain PostgreSQL does not: 0041_reading_row.sql).
    -- TimescaleDB has its own measured_at index in every chunk, and for "a patient's N newest
    -- readings" the planner walks it through the uncompressed chunks, filtering every
    -- patient's rows out (300 ms at 10,000 patients), unless an index leads with the patient.
    -- It costs only the uncompressed chunks (the recent weeks): compressed ones keep no
    -- btree of the hypertable's, and find a patient by their batches' patient ranges.
    CREATE INDEX readings_patient_time ON readings (patient_id, measured_at DESC);
    PERFORM create_hypertable('readings', by_range('measured_at', coalesce(chunk, '7 days')));
    ALTER TABLE readings SET (
        timescaledb.compress,
        timescaledb.compress_segmentby = 'metric',
        timescaledb.compress_orderby = 'patient_id, device_id, measured_at DESC'
    );

    INSERT INTO readings (measured_at, received_at, stored_at, v1, v2, v3, metric,
                          interpretation, device_id, patient_id, original)
    SELECT measured_at, received_at, stored_at,
           (components ->> rpm_component_name(metric, 1))::float8,
           (components ->> rpm_component_name(metric, 2))::float8,
           (components ->> rpm_component_name(metric, 3))::float8,
           metric::rpm_metric, interpretation, device_id, patient_id, original
      FROM readings_v0040
     ORDER BY measured_at;
    DROP TABLE readings_v0040;
END $$;

-- 0033's continuous aggregates, over the slots.
CREATE MATERIALIZED VIEW readings_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', measured_at) AS bucket, patient_id, metric,
       count(*) AS n,
       count(v1) AS c1_n, min(v1) AS c1_min, max(v1) AS c1_max, sum(v1) AS c1_sum,
       count(v2) AS c2_n, min(v2) AS c2_min, max(v2) AS c2_max, sum(v2) AS c2_sum,
       count(v3) AS c3_n, min(v3) AS c3_min, max(v3) AS c3_max, sum(v3) AS c3_sum
  FROM readings
 GROUP BY 1, 2, 3
WITH NO DATA;

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
