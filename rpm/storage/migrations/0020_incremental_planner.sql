-- Incremental campaign planning (docs/engagement.md, "How the planner finds who to look at").

-- Which patients' facts changed, by transaction: one row per statement that wrote
-- patient_days, alerts or patients, written by the statement-level triggers below, whatever
-- the code path. A planner pass looks at the patients of the rows from transactions it had
-- not yet seen (xid at or above its last watermark, pg_snapshot_xmin), so a transaction that
-- commits late is never missed. patient_metric_last and readings are left out: the ingest
-- unit of work writes them only in a transaction that also writes patient_days.
CREATE TABLE fact_changes (
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    patient_ids text[] NOT NULL
);
CREATE INDEX fact_changes_xid ON fact_changes (xid);

CREATE FUNCTION rpm_note_fact_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fact_changes (patient_ids)
    SELECT array_agg(DISTINCT patient_id) FROM changed HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION rpm_note_patient_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fact_changes (patient_ids)
    SELECT array_agg(DISTINCT id) FROM changed HAVING count(*) > 0;
    RETURN NULL;
END $$;

-- A trigger with a transition table takes one event, hence two per table.
CREATE TRIGGER patient_days_inserted AFTER INSERT ON patient_days
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_fact_changes();
CREATE TRIGGER patient_days_updated AFTER UPDATE ON patient_days
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_fact_changes();
CREATE TRIGGER alerts_inserted AFTER INSERT ON alerts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_fact_changes();
CREATE TRIGGER alerts_updated AFTER UPDATE ON alerts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_fact_changes();
CREATE TRIGGER patients_inserted AFTER INSERT ON patients
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_patient_changes();
CREATE TRIGGER patients_updated AFTER UPDATE ON patients
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION rpm_note_patient_changes();

-- Each live campaign's last pass: what it was evaluated with, the planner clock, the
-- transaction watermark of the change log, and when it was last evaluated in full.
CREATE TABLE campaign_planner_state (
    campaign        text PRIMARY KEY,
    version         integer NOT NULL,
    segment         text NOT NULL,
    segment_version integer NOT NULL,
    daily_cap       integer NOT NULL,
    planned_to      timestamptz NOT NULL,
    watermark       xid8 NOT NULL,
    full_at         timestamptz NOT NULL
);

-- A whole week since enrolment passes for a patient when the clock's offset into the week
-- (from the Unix epoch, in microseconds) passes that of created_at: a range of this index
-- (rpm.engagement.planning.phase_ranges). The epoch of an instant does not depend on the
-- session's time zone, so the function is immutable.
CREATE FUNCTION rpm_week_phase_us(at timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ((extract(epoch FROM at) * 1000000)::bigint % 604800000000 + 604800000000)
           % 604800000000;
CREATE INDEX patients_week_phase ON patients (rpm_week_phase_us(created_at));
-- The patients of a time zone (a zone whose local day changed), and the list of zones.
CREATE INDEX patients_timezone ON patients (timezone);
-- Cooldowns ending, resolutions and NEWS2 alerts leaving their window, by time.
CREATE INDEX campaign_sends_campaign_time ON campaign_sends (campaign, planned_at);
CREATE INDEX alerts_resolved_at ON alerts (resolved_at) WHERE resolved_at IS NOT NULL;
CREATE INDEX alerts_news2_opened ON alerts (opened_at) WHERE rule_id LIKE 'news2.%';
