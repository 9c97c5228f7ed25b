-- Rule programs as versioned data, audited per-patient overrides, and what the
-- missing-data timer and auto-resolve need.

-- Every version of every care program's rule spec; one active version per program.
CREATE TABLE rule_program_versions (
    id         bigserial PRIMARY KEY,
    program    text NOT NULL,
    version    integer NOT NULL,
    spec       jsonb NOT NULL,                 -- the validated ProgramSpec (canonical JSON)
    digest     text NOT NULL,                  -- sha256 of the canonical JSON
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    note       text,
    active     boolean NOT NULL DEFAULT false,
    UNIQUE (program, version)
);
CREATE UNIQUE INDEX rule_program_one_active ON rule_program_versions (program) WHERE active;

-- Every change of a patient's rule parameters: who, when, old and new (NULL = defaults).
CREATE TABLE rule_override_events (
    id         bigserial PRIMARY KEY,
    patient_id text NOT NULL REFERENCES patients(id),
    rule_id    text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    old_params jsonb,
    new_params jsonb,
    reason     text
);
CREATE INDEX rule_override_events_patient ON rule_override_events (patient_id, at);

-- Missing-data alerts have no reading; a rule's condition can be seen to clear.
ALTER TABLE alerts ALTER COLUMN first_reading_uid DROP NOT NULL;
ALTER TABLE alerts ALTER COLUMN last_reading_uid DROP NOT NULL;
ALTER TABLE alerts ADD COLUMN condition_cleared_at timestamptz;

-- Newest reading per patient and metric, kept by the ingest unit of work for the
-- missing-data timer (a scan of readings for every patient would not scale).
CREATE TABLE patient_metric_last (
    patient_id  text NOT NULL,
    metric      text NOT NULL,
    measured_at timestamptz NOT NULL,
    PRIMARY KEY (patient_id, metric)
);
