-- The reading uid is derived by the database on insert, from the reading's identity:
-- UUIDv5(namespace, "<device_id>|<metric>|<epoch microseconds>"), exactly as
-- rpm.domain.reading_uid computes it (tests/test_reading_uid.py checks they agree).
-- Independent of the UTC offset a device wrote its time with.
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE FUNCTION rpm_reading_uid(device_id text, metric text, measured_at timestamptz)
RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT uuid_generate_v5('6f1c3c2e-6a0e-4d8f-9d0b-2f4f9c1a7e11'::uuid,
                            device_id || '|' || metric || '|'
                            || (extract(epoch FROM measured_at) * 1000000)::bigint::text)
$$;

UPDATE readings SET uid = rpm_reading_uid(device_id, metric, measured_at);
