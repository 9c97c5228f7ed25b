-- The program between the alerts (docs/engagement.md): days with readings per patient, the
-- segments and campaigns that aim messages at patients, what each campaign sent to whom,
-- and the interaction ledger.

-- Days on which a patient had readings, in the patient's own time zone. Kept by the ingest
-- unit of work from the readings it stores (duplicates are not counted twice), so segments,
-- triggers and adherence read a row per patient-day, never the readings.
CREATE TABLE patient_days (
    patient_id text NOT NULL REFERENCES patients(id),
    day        date NOT NULL,
    readings   integer NOT NULL,
    metrics    text[] NOT NULL,                  -- the metrics measured that day
    PRIMARY KEY (patient_id, day)
);
CREATE INDEX patient_days_day ON patient_days (day, patient_id);

INSERT INTO patient_days (patient_id, day, readings, metrics)
SELECT r.patient_id, (r.measured_at AT TIME ZONE p.timezone)::date, count(*),
       array_agg(DISTINCT r.metric ORDER BY r.metric)
  FROM readings r JOIN patients p ON p.id = r.patient_id
 GROUP BY 1, 2;

-- Each patient's channel for program messages, and where to go when it fails.
ALTER TABLE patients ADD COLUMN preferred_channel text NOT NULL DEFAULT 'sms'
    CHECK (preferred_channel IN ('sms', 'whatsapp', 'voice'));

-- Segments: named, versioned definitions over patient facts (rpm/engagement/segments.py).
-- A new definition is a new version; the newest is the one in use. Rows are never changed.
CREATE TABLE segment_versions (
    name       text NOT NULL,
    version    integer NOT NULL,
    definition jsonb NOT NULL,
    note       text,
    actor      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired    boolean NOT NULL DEFAULT false,   -- true: this version retires the segment
    PRIMARY KEY (name, version)
);

-- Campaigns: a segment, a trigger or schedule, templates per language
-- (rpm/engagement/campaigns.py). Versioned like segments; the newest version says whether
-- it is live.
CREATE TABLE campaign_versions (
    name       text NOT NULL,
    version    integer NOT NULL,
    definition jsonb NOT NULL,
    live       boolean NOT NULL,
    note       text,
    actor      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- What each campaign planned for whom: one row per campaign, patient and occurrence (a
-- local day, a week, a reading, an alert), so a planner pass that runs twice, or on two
-- processes, plans each message once.
CREATE TABLE campaign_sends (
    campaign   text NOT NULL,
    patient_id text NOT NULL REFERENCES patients(id),
    occurrence text NOT NULL,
    version    integer NOT NULL,
    planned_at timestamptz NOT NULL,
    outbox_id  bigint REFERENCES outbox(id),
    PRIMARY KEY (campaign, patient_id, occurrence)
);
CREATE INDEX campaign_sends_patient ON campaign_sends (patient_id, planned_at DESC);

-- The interaction ledger: every touch with a patient but a day with readings (those are
-- patient_days), with its channel and direction. ``ref`` is the touch's own identity
-- (an SMS sid, an outbox id), so recording it twice records it once.
CREATE TABLE interactions (
    id         bigserial PRIMARY KEY,
    patient_id text NOT NULL REFERENCES patients(id),
    at         timestamptz NOT NULL,
    kind       text NOT NULL,                    -- alert, campaign, checkin, reply, nurse, ...
    channel    text NOT NULL,                    -- sms, whatsapp, voice, phone, video, ...
    direction  text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    campaign   text,
    ref        text NOT NULL,
    UNIQUE (kind, ref)
);
CREATE INDEX interactions_patient ON interactions (patient_id, at);
CREATE INDEX interactions_at ON interactions (at);
