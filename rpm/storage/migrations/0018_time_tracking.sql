-- Running a monitoring program (docs/billing.md): the time the care team spends with each
-- patient, the timers that measure it, and when each patient's monitoring started (device
-- periods of 30 days run from that day).

-- One span of a clinician's time spent on one patient: from a timer or entered by hand.
-- Activities: data review, interactive communication (real-time, by phone or video: the
-- "interactive communication" of CPT 99457/99470), care coordination. A deleted entry keeps
-- its row with deleted_at set; every change is in time_entry_events with the old value.
CREATE TABLE time_entries (
    id          bigserial PRIMARY KEY,
    patient_id  text NOT NULL REFERENCES patients(id),
    staff_id    text NOT NULL REFERENCES staff(id),  -- who spent the time
    started_at  timestamptz NOT NULL,
    duration_s  integer NOT NULL CHECK (duration_s > 0 AND duration_s <= 86400),
    activity    text NOT NULL CHECK (activity IN ('data_review', 'interactive_phone',
                                                  'interactive_video', 'care_coordination')),
    note        text NOT NULL DEFAULT '',             -- may hold PHI: never logged
    source      text NOT NULL CHECK (source IN ('timer', 'manual')),
    version     integer NOT NULL DEFAULT 1,           -- +1 on each edit (optimistic locking)
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX time_entries_patient ON time_entries (patient_id, started_at)
    WHERE deleted_at IS NULL;
CREATE INDEX time_entries_started ON time_entries (started_at) WHERE deleted_at IS NULL;

-- Every creation, edit and deletion of a time entry: who, when, the value before and after.
-- Rows are never changed.
CREATE TABLE time_entry_events (
    id        bigserial PRIMARY KEY,
    entry_id  bigint NOT NULL REFERENCES time_entries(id),
    action    text NOT NULL CHECK (action IN ('create', 'edit', 'delete')),
    actor     text NOT NULL,                          -- the principal: staff id or API key id
    at        timestamptz NOT NULL DEFAULT now(),
    old       jsonb,                                  -- NULL on create
    new       jsonb                                   -- NULL on delete
);
CREATE INDEX time_entry_events_entry ON time_entry_events (entry_id, id);

-- A running timer: at most one per clinician, kept in the database so it survives a reload,
-- a restart or another browser. Stopping it writes a time entry (source 'timer').
CREATE TABLE time_timers (
    staff_id    text PRIMARY KEY REFERENCES staff(id),
    patient_id  text NOT NULL REFERENCES patients(id),
    activity    text NOT NULL CHECK (activity IN ('data_review', 'interactive_phone',
                                                  'interactive_video', 'care_coordination')),
    started_at  timestamptz NOT NULL,
    note        text NOT NULL DEFAULT ''
);

-- The first day of monitoring, in the patient's time zone: device periods are the 30-day
-- spans from it (CPT 99454/99445: "each 30 days"). NULL: the first day with readings.
ALTER TABLE patients ADD COLUMN monitoring_started_on date;
