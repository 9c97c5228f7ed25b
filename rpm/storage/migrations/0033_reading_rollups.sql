-- Rollups of readings per patient, metric and hour (readings_hourly) or UTC day
-- (readings_daily): count, and per component count, min, max and sum (mean = sum / count),
-- for charts and reports that summarise over days (docs/data-lifecycle.md). On plain
-- PostgreSQL they are tables kept up by the lifecycle scheduler from reading_rollup_dirty;
-- with TimescaleDB, 0033_reading_rollups.timescale.sql replaces them by continuous
-- aggregates of the same name and columns, so one query (rpm/storage/rollups.py) reads both.
--
-- A rollup counts every stored reading, those entered in error included: readings are never
-- updated and corrections are a separate table (0029). The reader recomputes from raw rows
-- the few buckets holding a correction, or not rolled up yet (a row in
-- reading_rollup_dirty), so what it returns always equals the raw aggregate of the readings
-- not entered in error.

-- Components are slots 1 to 3, in the order of rpm.domain.METRICS (tests/test_rollups.py
-- checks they agree).
CREATE FUNCTION rpm_component_name(metric text, slot integer)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE metric
                WHEN 'blood_pressure' THEN ARRAY['systolic', 'diastolic', 'pulse']
                WHEN 'heart_rate' THEN ARRAY['pulse']
                WHEN 'spo2' THEN ARRAY['spo2', 'pulse']
                WHEN 'weight' THEN ARRAY['weight']
                WHEN 'body_temperature' THEN ARRAY['temperature']
                WHEN 'glucose' THEN ARRAY['glucose']
                WHEN 'respiratory_rate' THEN ARRAY['respiratory_rate']
            END)[slot]
$$;

CREATE TABLE readings_hourly (
    bucket     timestamptz NOT NULL,
    patient_id text NOT NULL,
    metric     text NOT NULL,
    n          bigint NOT NULL,
    c1_n bigint NOT NULL, c1_min float8, c1_max float8, c1_sum float8,
    c2_n bigint NOT NULL, c2_min float8, c2_max float8, c2_sum float8,
    c3_n bigint NOT NULL, c3_min float8, c3_max float8, c3_sum float8,
    PRIMARY KEY (patient_id, metric, bucket)
);
CREATE TABLE readings_daily (LIKE readings_hourly INCLUDING ALL);

-- (patient, metric, hour) whose rollups lag the readings: written by the statement trigger
-- below in the inserting transaction, consumed by the scheduler (rpm/storage/lifecycle.py).
CREATE TABLE reading_rollup_dirty (
    patient_id text NOT NULL,
    metric     text NOT NULL,
    hour       timestamptz NOT NULL
);
CREATE INDEX reading_rollup_dirty_key ON reading_rollup_dirty (patient_id, metric, hour);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;  -- continuous aggregates (a hypertable takes no transition-table trigger)
    END IF;
    CREATE FUNCTION rpm_note_rollup_dirty() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
        INSERT INTO reading_rollup_dirty (patient_id, metric, hour)
        SELECT DISTINCT patient_id, metric,
               date_bin('1 hour', measured_at, '2000-01-03 00:00:00+00')
          FROM inserted;
        RETURN NULL;
    END $f$;
    CREATE TRIGGER readings_rollup_dirty AFTER INSERT ON readings
        REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_rollup_dirty();

    -- The readings stored before this migration.
    INSERT INTO readings_hourly
    SELECT date_bin('1 hour', measured_at, '2000-01-03 00:00:00+00'), patient_id, metric,
           count(*),
           count(v1), min(v1), max(v1), sum(v1),
           count(v2), min(v2), max(v2), sum(v2),
           count(v3), min(v3), max(v3), sum(v3)
      FROM (SELECT measured_at, patient_id, metric,
                   (components ->> rpm_component_name(metric, 1))::float8 AS v1,
                   (components ->> rpm_component_name(metric, 2))::float8 AS v2,
                   (components ->> rpm_component_name(metric, 3))::float8 AS v3
              FROM readings) r
     GROUP BY 1, 2, 3;
    INSERT INTO readings_daily
    SELECT date_bin('1 day', bucket, '2000-01-03 00:00:00+00'), patient_id, metric, sum(n),
           sum(c1_n), min(c1_min), max(c1_max), sum(c1_sum),
           sum(c2_n), min(c2_min), max(c2_max), sum(c2_sum),
           sum(c3_n), min(c3_min), max(c3_max), sum(c3_sum)
      FROM readings_hourly
     GROUP BY 1, 2, 3;
END $$;
