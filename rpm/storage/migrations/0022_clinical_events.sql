-- One row per clinical event, and measured time decides (docs/alerts.md, alerts/policy.py).
--
-- group_key: the episode's group (the rule programs' `group`; a lone rule's own id). One
-- unresolved episode per patient and group replaces one per patient and rule. A writer
-- that names no group gets the rule id (the trigger), as every episode did before.
-- contributions: every rule that fired in the episode, with its first explanation:
-- [{"rule_id", "severity", "title", "explanation", "measured_at"}], the leading rule first.
ALTER TABLE alerts ADD COLUMN group_key text;
UPDATE alerts SET group_key = rule_id;
ALTER TABLE alerts ALTER COLUMN group_key SET NOT NULL;
ALTER TABLE alerts ADD COLUMN contributions jsonb NOT NULL DEFAULT '[]';
UPDATE alerts SET contributions = jsonb_build_array(jsonb_build_object(
    'rule_id', rule_id, 'severity', severity, 'title', title, 'explanation', explanation,
    'measured_at', last_fired_at));

CREATE FUNCTION alerts_default_group() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.group_key := coalesce(NEW.group_key, NEW.rule_id);
    IF NEW.contributions = '[]'::jsonb THEN
        NEW.contributions := jsonb_build_array(jsonb_build_object(
            'rule_id', NEW.rule_id, 'severity', NEW.severity, 'title', NEW.title,
            'explanation', NEW.explanation, 'measured_at', NEW.last_fired_at));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alerts_default_group BEFORE INSERT ON alerts
    FOR EACH ROW EXECUTE FUNCTION alerts_default_group();

DROP INDEX alerts_one_open_episode;
CREATE UNIQUE INDEX alerts_one_open_episode ON alerts (patient_id, group_key)
    WHERE state <> 'resolved';
-- Late evidence: the episodes of a key resolved after a late reading was measured.
CREATE INDEX alerts_resolved_by_key ON alerts (patient_id, group_key, resolved_at)
    WHERE state = 'resolved';

-- Snooze windows, kept after they end: a reading measured inside one that arrives after it
-- ended is still snoozed. alert_snoozes keeps the window in force (one per patient and
-- group, its rule_id column holding the group key); a new snooze ends the previous window,
-- an unsnooze ends the current one.
CREATE TABLE alert_snooze_windows (
    id           bigserial PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients(id),
    group_key    text NOT NULL,
    since        timestamptz NOT NULL,
    until        timestamptz NOT NULL,
    max_severity text NOT NULL,
    actor        text NOT NULL
);
CREATE INDEX alert_snooze_windows_key ON alert_snooze_windows (patient_id, group_key, until);
INSERT INTO alert_snooze_windows (patient_id, group_key, since, until, max_severity, actor)
SELECT patient_id, rule_id, created_at, until, max_severity, actor FROM alert_snoozes;
