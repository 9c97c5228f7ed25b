-- Confirm before paging (docs/alerts.md, "Confirm before paging"): a first reading of a rule
-- marked `confirm` waits here for its repeat instead of paging. One row per confirmation,
-- kept after it ends (confirmed, not_confirmed, no_repeat, superseded) as the patient's
-- history. Times are measured times (the deciding reading's, or the window's end).
CREATE TABLE alert_confirmations (
    id                bigserial PRIMARY KEY,
    patient_id        text NOT NULL REFERENCES patients(id),
    rule_id           text NOT NULL,
    group_key         text NOT NULL,
    severity          text NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'confirmed', 'not_confirmed', 'no_repeat', 'superseded')),
    reading_uid       uuid,
    measured_at       timestamptz NOT NULL,
    deadline          timestamptz NOT NULL,
    first_values      jsonb NOT NULL DEFAULT '{}',
    candidate         jsonb NOT NULL,          -- the first reading's alert, paged later
    created_at        timestamptz NOT NULL DEFAULT now(),
    closed_at         timestamptz,             -- measured time of the end (or the deadline)
    closed_reading_uid uuid,
    closed_values     jsonb,
    note              text,
    alert_id          bigint REFERENCES alerts(id),
    CHECK (deadline > measured_at)
);
-- At most one waiting confirmation per patient and episode group.
CREATE UNIQUE INDEX alert_confirmations_one_pending
    ON alert_confirmations (patient_id, group_key) WHERE state = 'pending';
CREATE INDEX alert_confirmations_due ON alert_confirmations (deadline) WHERE state = 'pending';
CREATE INDEX alert_confirmations_patient ON alert_confirmations (patient_id, measured_at DESC);
