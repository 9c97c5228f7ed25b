-- The reading uid is no longer stored with the reading: it is made from the reading's key
-- (device, metric, measured time) and read back from it (rpm/domain/reading_ids.py, an RFC
-- 9562 UUIDv8 holding the measured time, the metric's code and 56 bits of MD5 of the device
-- id). The stored uid cost 16 bytes a row and, once compressed by TimescaleDB, 16 of a
-- reading's 56 (random bytes do not compress), and its index another 40-45 bytes a reading
-- on plain PostgreSQL (docs/data-lifecycle.md, "Bytes per reading").
--
-- Uids change from the UUIDv5 of 0003 to the new form: every stored reference (alerts,
-- their contributions and evidence, confirmations, corrections) is rewritten here to the new
-- uid of the same reading. Audit rows keep the ids they were written with.

-- The first 56 bits of MD5 of the device id's UTF-8 bytes (rpm.domain.device_hash).
CREATE FUNCTION rpm_device_hash(device_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('x' || substr(md5(device_id), 1, 14))::bit(56)::bigint
$$;

-- Readings are found by uid through their device: rpm.storage.readings.by_uid.
CREATE INDEX devices_hash ON devices (rpm_device_hash(id));

-- The new uid of a key (rpm.domain.reading_uid, bit for bit): the measured time in µs plus
-- 2^59, its high 48 bits, version 8, its low 12 bits; variant 0b10 and the metric's code
-- (the 1-based position in METRIC_CODES: append only; an unknown metric gives NULL); the
-- first 14 hex digits of MD5 of the device id. PL/pgSQL computes the time once: 1.5 µs a
-- row, where one SQL expression computing it twice took 3.5 (0003's UUIDv5: 1.8).
CREATE FUNCTION rpm_reading_uid_v8(device_id text, metric text, measured_at timestamptz)
RETURNS uuid LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    t bigint := (extract(epoch FROM measured_at) * 1000000)::bigint + 576460752303423488;
BEGIN
    -- to_hex of a bigint whose top bit is set writes its 16 hex digits (two's complement).
    RETURN (lpad(to_hex(((t >> 12) << 16) | 32768 | (t & 4095)), 16, '0')
            || to_hex(128 + array_position('{blood_pressure,heart_rate,spo2,weight,'
                                            'body_temperature,glucose,respiratory_rate}'::text[],
                                           metric))
            || substr(md5(device_id), 1, 14))::uuid;
END
$$;

-- Old uid -> new uid, for every reading something refers to (found through the old index).
CREATE TEMP TABLE reading_uid_map ON COMMIT DROP AS
SELECT r.uid AS old, rpm_reading_uid_v8(r.device_id, r.metric, r.measured_at) AS new
  FROM readings r
 WHERE r.uid IN (
       SELECT first_reading_uid FROM alerts WHERE first_reading_uid IS NOT NULL
       UNION SELECT last_reading_uid FROM alerts WHERE last_reading_uid IS NOT NULL
       UNION SELECT reading_uid FROM alert_confirmations WHERE reading_uid IS NOT NULL
       UNION SELECT closed_reading_uid FROM alert_confirmations
              WHERE closed_reading_uid IS NOT NULL
       UNION SELECT m[1]::uuid
               FROM alerts,
                    regexp_matches(evidence::text || contributions::text,
                                   '[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}',
                                   'g') m
       UNION SELECT m[1]::uuid
               FROM alert_confirmations,
                    regexp_matches(candidate::text,
                                   '[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}',
                                   'g') m);
CREATE UNIQUE INDEX ON reading_uid_map (old);

-- Every old reading uid written inside a JSON document, replaced by its new one.
CREATE FUNCTION pg_temp.remap_uids(doc jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    t text := doc::text;
    m record;
BEGIN
    FOR m IN SELECT DISTINCT u.old::text AS old, u.new::text AS new
               FROM regexp_matches(t, '[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}',
                                   'g') x
               JOIN reading_uid_map u ON u.old = x[1]::uuid LOOP
        t := replace(t, m.old, m.new);
    END LOOP;
    RETURN t::jsonb;
END $$;

UPDATE alerts a
   SET first_reading_uid = coalesce((SELECT new FROM reading_uid_map WHERE old = a.first_reading_uid),
                                    a.first_reading_uid),
       last_reading_uid = coalesce((SELECT new FROM reading_uid_map WHERE old = a.last_reading_uid),
                                   a.last_reading_uid),
       evidence = pg_temp.remap_uids(a.evidence),
       contributions = pg_temp.remap_uids(a.contributions)
 WHERE a.first_reading_uid IS NOT NULL OR a.last_reading_uid IS NOT NULL
    OR a.evidence::text ~ '-5[0-9a-f]{3}-' OR a.contributions::text ~ '-5[0-9a-f]{3}-';

UPDATE alert_confirmations c
   SET reading_uid = coalesce((SELECT new FROM reading_uid_map WHERE old = c.reading_uid),
                              c.reading_uid),
       closed_reading_uid = coalesce((SELECT new FROM reading_uid_map
                                       WHERE old = c.closed_reading_uid), c.closed_reading_uid),
       candidate = pg_temp.remap_uids(c.candidate);

-- A correction names its reading by key (it may arrive before the reading): recomputed.
UPDATE reading_corrections SET uid = rpm_reading_uid_v8(device_id, metric, measured_at);

-- From now on rpm_reading_uid is the new form; the old column and its index go.
DROP FUNCTION rpm_reading_uid(text, text, timestamptz);
ALTER FUNCTION rpm_reading_uid_v8(text, text, timestamptz) RENAME TO rpm_reading_uid;

DROP INDEX IF EXISTS readings_uid;
ALTER TABLE readings DROP COLUMN uid;
