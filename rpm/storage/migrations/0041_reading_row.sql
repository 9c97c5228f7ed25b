-- A smaller readings row (docs/data-lifecycle.md, "Bytes per reading"):
--
-- * components jsonb -> v1, v2, v3 float8: a metric's components in the slots of
--   rpm.domain.METRICS (rpm_component_name, 0033). The jsonb document spelled each name in
--   every row: 56 bytes a reading on average, against 8 to 24 now. Slot 1 is required by
--   every metric, so v1 is NOT NULL;
-- * metric text -> the enum rpm_metric (4 bytes, against 7 to 15 in the row and as much again
--   in the primary key). Its labels are METRIC_CODES' order (rpm/domain/reading_ids.py):
--   append only;
-- * fixed-width columns first, so no byte is lost to alignment;
-- * no index on (patient_id, measured_at) on plain PostgreSQL: a patient's readings are
--   found through the patient's devices and the primary key (patient_devices below). A
--   hypertable keeps it (0041_reading_row.timescale.sql says why).
--
-- Measured on 510,900 readings of a TimescaleDB chunk: heap 158.5 -> 102.0 bytes a reading,
-- the primary key 70.2 -> 52.8 (40.6 once rebuilt), the patient index's 41.5 gone.
--
-- The table is rebuilt: on plain PostgreSQL here, with TimescaleDB in
-- 0041_reading_row.timescale.sql. Every reading is copied in this migration's transaction,
-- so an upgrade of a large database takes minutes (docs/data-lifecycle.md, "Bytes per
-- reading").

CREATE TYPE rpm_metric AS ENUM (
    'blood_pressure', 'heart_rate', 'spo2', 'weight', 'body_temperature', 'glucose',
    'respiratory_rate'
);

-- Queries compare readings.metric with text (parameters, other tables' metric columns)
-- through an explicit cast, $1::rpm_metric or metric::text: an enum and a text have no
-- operator in common.

-- The functions of text metrics, for readings' enum metric (no implicit cast back to text).
CREATE FUNCTION rpm_component_name(metric rpm_metric, slot integer)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT rpm_component_name(metric::text, slot)
$$;

CREATE FUNCTION rpm_reading_uid(device_id text, metric rpm_metric, measured_at timestamptz)
RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT rpm_reading_uid(device_id, metric::text, measured_at)
$$;

-- The devices each patient has had, ended bindings included. A reading belongs to the patient
-- its device was bound to at the measured time (rpm/validation.py; bindings are never
-- deleted), so a patient's readings are those of these devices with the patient's id: reads
-- go device by device through the primary key (rpm/storage/patient_readings.py).
CREATE VIEW patient_devices AS SELECT DISTINCT patient_id, device_id FROM device_bindings;

-- A reading's components as the jsonb document the row used to hold (exports, ad-hoc SQL).
CREATE FUNCTION rpm_components(metric rpm_metric, v1 float8, v2 float8, v3 float8)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        coalesce(rpm_component_name(metric, 1), '-1'), v1,
        coalesce(rpm_component_name(metric, 2), '-2'), v2,
        coalesce(rpm_component_name(metric, 3), '-3'), v3))
$$;

DO $$
DECLARE
    first_month timestamptz;
    partman_template text;
    part record;
    use_partman boolean :=
        EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_partman');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;  -- a hypertable: 0041_reading_row.timescale.sql
    END IF;
    -- The old table and its partitions step aside under other names.
    FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'readings'::regclass LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', part.relname, 'v0040_' || part.relname);
    END LOOP;
    ALTER TABLE readings RENAME TO readings_v0040;
    ALTER TABLE readings_v0040 RENAME CONSTRAINT readings_pkey TO readings_v0040_pkey;
    ALTER INDEX readings_patient_time RENAME TO readings_v0040_patient_time;
    ALTER INDEX IF EXISTS readings_measured_brin RENAME TO readings_v0040_measured_brin;
    DROP TRIGGER IF EXISTS readings_rollup_dirty ON readings_v0040;
    IF use_partman THEN
        SELECT template_table INTO partman_template FROM partman.part_config
         WHERE parent_table = current_schema() || '.readings';
        DELETE FROM partman.part_config WHERE parent_table = current_schema() || '.readings';
        IF partman_template IS NOT NULL THEN
            EXECUTE format('DROP TABLE IF EXISTS %s', partman_template);
        END IF;
    END IF;

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
        original       jsonb
    ) PARTITION BY RANGE (measured_at);
    ALTER TABLE readings ADD PRIMARY KEY (device_id, metric, measured_at);
    CREATE INDEX readings_measured_brin ON readings USING brin (measured_at);

    -- The same partitions as 0032 made: from the oldest reading's month (a year back at
    -- least) to four months ahead.
    SELECT date_trunc('month', least(min(measured_at), now() - interval '1 year')
                               AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
      INTO first_month FROM readings_v0040;
    PERFORM set_config('TimeZone', 'UTC', true);
    IF use_partman THEN
        PERFORM partman.create_parent(
            p_parent_table => current_schema() || '.readings',
            p_control => 'measured_at',
            p_type => 'native',
            p_interval => 'monthly',
            p_premake => 4,
            p_start_partition => to_char(first_month AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                                 || ' 00:00:00+00',
            p_jobmon => false);
        UPDATE partman.part_config SET infinite_time_partitions = true
         WHERE parent_table = current_schema() || '.readings';
    ELSE
        CREATE TABLE readings_default PARTITION OF readings DEFAULT;
        PERFORM rpm_make_reading_partitions(first_month, now() + interval '4 months');
    END IF;

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

    -- The rollups hold these readings already: the dirty log starts again from here.
    CREATE TRIGGER readings_rollup_dirty AFTER INSERT ON readings
        REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_rollup_dirty();
END $$;
