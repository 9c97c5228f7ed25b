-- Alerts that reach people: staff and sign-in, care teams and on-call tiers, escalation
-- and snooze timers (in the database, so they survive restarts), patient SMS preferences,
-- and every SMS sent or received with its delivery state.

-- Staff who sign in to the dashboard and receive escalations.
CREATE TABLE staff (
    id            text PRIMARY KEY,                -- login name; what audit rows name
    display_name  text NOT NULL,                   -- personal: never logged
    role          text NOT NULL CHECK (role IN ('admin', 'nurse')),
    password_hash text NOT NULL,                   -- argon2id (argon2-cffi)
    phone         text,                            -- E.164, for escalation SMS: never logged
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Browser sessions: only a hash of the token is stored.
CREATE TABLE staff_sessions (
    token_hash   bytea PRIMARY KEY,
    staff_id     text NOT NULL REFERENCES staff(id),
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staff_sessions_staff ON staff_sessions (staff_id);

-- Care teams own patients; nurses belong to teams; each team has on-call tiers.
CREATE TABLE care_teams (
    id    text PRIMARY KEY,
    title text NOT NULL
);
CREATE TABLE care_team_members (
    team_id  text NOT NULL REFERENCES care_teams(id),
    staff_id text NOT NULL REFERENCES staff(id),
    PRIMARY KEY (team_id, staff_id)
);
ALTER TABLE patients ADD COLUMN care_team text REFERENCES care_teams(id);

CREATE TABLE on_call (
    team_id  text NOT NULL REFERENCES care_teams(id),
    tier     integer NOT NULL CHECK (tier IN (1, 2)),
    staff_id text NOT NULL REFERENCES staff(id),
    during   tstzrange NOT NULL,
    EXCLUDE USING gist (team_id WITH =, tier WITH =, during WITH &&)
);

-- Alert timers and assignment. next_escalation_at is when an unacknowledged alert goes to
-- the next on-call tier; auto-resolve reads condition_cleared_at (migration 0004).
ALTER TABLE alerts ADD COLUMN assigned_to text REFERENCES staff(id);
ALTER TABLE alerts ADD COLUMN escalation_tier integer NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN next_escalation_at timestamptz;
ALTER TABLE alerts ADD COLUMN last_notified_at timestamptz;
ALTER TABLE alerts ADD COLUMN program text;
CREATE INDEX alerts_escalation_due ON alerts (next_escalation_at)
    WHERE state = 'open' AND next_escalation_at IS NOT NULL;
CREATE INDEX alerts_cleared ON alerts (condition_cleared_at)
    WHERE state <> 'resolved' AND condition_cleared_at IS NOT NULL;

-- Snooze per patient and alert kind (rule), capped by severity; a more severe alert of
-- the same kind breaks through.
CREATE TABLE alert_snoozes (
    patient_id   text NOT NULL REFERENCES patients(id),
    rule_id      text NOT NULL,
    until        timestamptz NOT NULL,
    max_severity text NOT NULL,
    actor        text NOT NULL,
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, rule_id)
);

-- Patient SMS preferences (phone, consent, language and time zone are in 0001).
ALTER TABLE patients ADD COLUMN sms_opted_out_at timestamptz;
ALTER TABLE patients ADD COLUMN quiet_hours_start time NOT NULL DEFAULT '21:00';
ALTER TABLE patients ADD COLUMN quiet_hours_end time NOT NULL DEFAULT '08:00';

-- Every SMS we sent or received. Bodies are patient data: stored, never logged.
CREATE TABLE sms_messages (
    id          bigserial PRIMARY KEY,
    direction   text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    outbox_id   bigint REFERENCES outbox(id),
    patient_id  text REFERENCES patients(id),
    staff_id    text REFERENCES staff(id),
    alert_id    bigint REFERENCES alerts(id),
    twilio_sid  text UNIQUE,
    status      text NOT NULL,                      -- queued, sent, delivered, undelivered, failed, received
    error_code  integer,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_messages_patient ON sms_messages (patient_id, created_at DESC);
CREATE INDEX sms_messages_alert ON sms_messages (alert_id);
