-- Plain PostgreSQL: readings become a table partitioned by measured time, one partition a
-- month (docs/data-lifecycle.md). With TimescaleDB, readings is a hypertable already
-- (0001_core.timescale.sql) and this migration leaves it alone.
--
-- Partitions are made by pg_partman (Debian's postgresql-15-partman, installed by
-- scripts/install-system-deps.sh) when the server has it; without it, by
-- rpm_make_reading_partitions below, called by the lifecycle scheduler
-- (rpm/workers/lifecycle.py). Both name a month's partition readings_pYYYY_MM and keep a
-- readings_default partition for a reading outside every partition, so no reading is refused.
--
-- The primary key (device_id, metric, measured_at) contains the partition key, as PostgreSQL
-- requires of a partitioned table's unique indexes, so insert_new's ON CONFLICT DO NOTHING
-- (rpm/storage/readings.py) drops duplicates exactly as before. The reading uid index
-- (0003) is not unique: nothing changes for it.

-- Creates the missing monthly partitions from the month of ``since`` to the month of
-- ``upto``; returns how many it made. A month whose readings sit in readings_default is
-- left to the default partition (PostgreSQL refuses the new partition) and counted in
-- nothing.
CREATE FUNCTION rpm_make_reading_partitions(since timestamptz, upto timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month timestamptz := date_trunc('month', since AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    made integer := 0;
    name text;
BEGIN
    WHILE month <= upto LOOP
        name := 'readings_p' || to_char(month AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                               name, month, month + interval '1 month');
                made := made + 1;
            EXCEPTION WHEN check_violation THEN
                NULL;  -- readings of that month are in readings_default already
            END;
        END IF;
        month := ((month AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    END LOOP;
    RETURN made;
END $$;

DO $$
DECLARE
    first_month timestamptz;
    use_partman boolean :=
        EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_partman');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;  -- a hypertable: TimescaleDB's chunks partition it
    END IF;
    ALTER TABLE readings RENAME TO readings_unpartitioned;
    ALTER TABLE readings_unpartitioned RENAME CONSTRAINT readings_pkey
        TO readings_unpartitioned_pkey;
    ALTER INDEX readings_patient_time RENAME TO readings_unpartitioned_patient_time;
    ALTER INDEX readings_uid RENAME TO readings_unpartitioned_uid;

    CREATE TABLE readings (
        LIKE readings_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
    ) PARTITION BY RANGE (measured_at);
    ALTER TABLE readings ADD PRIMARY KEY (device_id, metric, measured_at);
    CREATE INDEX readings_patient_time ON readings (patient_id, measured_at DESC);
    CREATE INDEX readings_uid ON readings (uid);

    -- Partitions from the month of the oldest stored reading (a year back on an empty
    -- database, for devices that upload a backlog), and four months ahead.
    SELECT date_trunc('month', least(min(measured_at), now() - interval '1 year')
                               AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
      INTO first_month FROM readings_unpartitioned;
    PERFORM set_config('TimeZone', 'UTC', true);  -- month boundaries at UTC midnight
    IF use_partman THEN
        CREATE SCHEMA IF NOT EXISTS partman;
        CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;
        PERFORM partman.create_parent(
            p_parent_table => current_schema() || '.readings',
            p_control => 'measured_at',
            p_type => 'native',
            p_interval => 'monthly',
            p_premake => 4,
            p_start_partition => to_char(first_month AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                                 || ' 00:00:00+00',
            p_jobmon => false);
        -- The project's scheduler runs maintenance (pg_partman's background worker is
        -- optional and not loaded); partitions are never dropped by pg_partman: retention
        -- is the scheduler's, off unless configured.
        UPDATE partman.part_config SET infinite_time_partitions = true
         WHERE parent_table = current_schema() || '.readings';
    ELSE
        CREATE TABLE readings_default PARTITION OF readings DEFAULT;
        PERFORM rpm_make_reading_partitions(first_month, now() + interval '4 months');
    END IF;

    INSERT INTO readings SELECT * FROM readings_unpartitioned;
    DROP TABLE readings_unpartitioned;
END $$;
