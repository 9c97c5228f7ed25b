-- Days with readings kept per patient (docs/engagement.md, "How the planner finds who to look
-- at"; docs/performance.md, "Engagement"): one row per patient with the days of patient_days
-- as a bitmap, so the planner and segments count a patient's days in a window from one row
-- (rpm_days_in) instead of a range of patient_days per patient and per window. Kept by the
-- statement-level triggers below from whatever writes patient_days: an insert of new days is
-- merged into the bitmap (one row per patient of the statement, not per reading; a reading
-- of a day already counted is an update of patient_days and changes no day); a delete
-- (rpm.storage.engagement.recount_days) recomputes the patients' rows from patient_days.
CREATE TABLE patient_day_bits (
    patient_id text PRIMARY KEY,
    last_day   date NOT NULL,   -- the newest day of the patient's patient_days
    first_day  date NOT NULL,   -- the oldest
    bits       bigint NOT NULL  -- bit k set: a row of patient_days on last_day - k (k < 62)
) WITH (fillfactor = 70);  -- room for the update of a row in its page (a HOT update)

-- The bitmap moved to a newest day s days later: older days drop off at bit 62.
CREATE FUNCTION rpm_day_bits_shift(bits bigint, s integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN s >= 62 THEN 0::bigint
                ELSE (bits << s) & 4611686018427387903 END  -- 2^62 - 1
$$;

-- Days with readings in (today - n, today], from a bitmap whose newest day is last_day; no
-- bitmap is no days. NULL when the bitmap cannot tell: the window reaches days older than it
-- holds (last_day more than 62 - n days after today), where the caller counts patient_days
-- (rpm.storage.segments.days_in_sql).
CREATE FUNCTION rpm_days_in(bits bigint, last_day date, today date, n integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN bits IS NULL THEN 0
                WHEN last_day - today + n - 1 >= 62 THEN NULL
                WHEN last_day - today + n - 1 < 0 THEN 0
                ELSE bit_count((((bits >> greatest(last_day - today, 0))
                                & ((1::bigint << (last_day - today + n
                                                  - greatest(last_day - today, 0))) - 1))
                               )::bit(64))::integer END
$$;

-- The bitmap of a set of days, relative to the newest of them.
CREATE FUNCTION rpm_day_bits_of(days date[]) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT bit_or(rpm_day_bits_shift(1, m.day - d))
      FROM (SELECT max(d) AS day FROM unnest(days) d) m, unnest(days) d
$$;

-- One row per patient of the statement (almost always one new day: a bitmap of 1).
CREATE FUNCTION rpm_day_bits_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO patient_day_bits AS b (patient_id, last_day, first_day, bits)
    SELECT patient_id, max(day), min(day),
           CASE WHEN count(*) = 1 THEN 1 ELSE rpm_day_bits_of(array_agg(day)) END
      FROM added
     GROUP BY patient_id
     ORDER BY patient_id
    ON CONFLICT (patient_id) DO UPDATE
       SET last_day = greatest(b.last_day, excluded.last_day),
           first_day = least(b.first_day, excluded.first_day),
           bits = rpm_day_bits_shift(b.bits, greatest(excluded.last_day - b.last_day, 0))
                  | rpm_day_bits_shift(excluded.bits, greatest(b.last_day - excluded.last_day, 0));
    RETURN NULL;
END $$;

CREATE FUNCTION rpm_day_bits_recount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM patient_day_bits b USING (SELECT DISTINCT patient_id FROM removed) r
     WHERE b.patient_id = r.patient_id;
    INSERT INTO patient_day_bits (patient_id, last_day, first_day, bits)
    SELECT d.patient_id, x.last_day, x.first_day,
           bit_or(rpm_day_bits_shift(1, x.last_day - d.day))
      FROM (SELECT DISTINCT patient_id FROM removed) r
      JOIN LATERAL (SELECT max(day) AS last_day, min(day) AS first_day FROM patient_days
                     WHERE patient_id = r.patient_id) x ON x.last_day IS NOT NULL
      JOIN patient_days d ON d.patient_id = r.patient_id AND d.day > x.last_day - 62
     GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE FUNCTION rpm_day_bits_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE patient_day_bits;
    RETURN NULL;
END $$;

CREATE FUNCTION rpm_patient_days_fixed_day() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'patient_days: a row keeps its patient and day (delete and insert instead)';
END $$;

CREATE TRIGGER patient_days_bits_added AFTER INSERT ON patient_days
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION rpm_day_bits_added();
CREATE TRIGGER patient_days_bits_removed AFTER DELETE ON patient_days
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION rpm_day_bits_recount();
CREATE TRIGGER patient_days_bits_truncated AFTER TRUNCATE ON patient_days
    FOR EACH STATEMENT EXECUTE FUNCTION rpm_day_bits_truncated();
-- The bitmap follows inserts and deletes: an update that moves a row to another day or
-- patient would leave it wrong, and nothing does that.
CREATE TRIGGER patient_days_fixed_day BEFORE UPDATE OF patient_id, day ON patient_days
    FOR EACH ROW WHEN (old.patient_id IS DISTINCT FROM new.patient_id OR old.day <> new.day)
    EXECUTE FUNCTION rpm_patient_days_fixed_day();

INSERT INTO patient_day_bits (patient_id, last_day, first_day, bits)
SELECT d.patient_id, x.last_day, x.first_day, bit_or(rpm_day_bits_shift(1, x.last_day - d.day))
  FROM patient_days d
  JOIN (SELECT patient_id, max(day) AS last_day, min(day) AS first_day
          FROM patient_days GROUP BY patient_id) x USING (patient_id)
 WHERE d.day > x.last_day - 62
 GROUP BY 1, 2, 3;
