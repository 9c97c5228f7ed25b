-- Core schema. Applied on plain PostgreSQL and on TimescaleDB alike;
-- 0001_core.timescale.sql adds the TimescaleDB extras when the extension is present.

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE patients (
    id             text PRIMARY KEY,
    display_name   text NOT NULL,                 -- PHI: never logged
    phone          text,                          -- PHI, E.164: never logged
    sms_consent    boolean NOT NULL DEFAULT false,
    language       text NOT NULL DEFAULT 'en',
    timezone       text NOT NULL DEFAULT 'UTC',
    programs       text[] NOT NULL DEFAULT '{}',
    rule_overrides jsonb NOT NULL DEFAULT '{}',   -- {rule_id: {param: value}}
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id           text PRIMARY KEY,                -- the identity in the MQTT topic
    kind         text NOT NULL,                   -- bp_cuff, pulse_oximeter, scale, ...
    vendor       text,
    serial       text,
    retired_at   timestamptz,
    battery      real,
    signal       real,
    last_seen_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A device is lent to one patient for a period; periods of one device never overlap.
CREATE TABLE device_bindings (
    device_id  text NOT NULL REFERENCES devices(id),
    patient_id text NOT NULL REFERENCES patients(id),
    during     tstzrange NOT NULL,
    EXCLUDE USING gist (device_id WITH =, during WITH &&)
);
CREATE INDEX device_bindings_patient ON device_bindings (patient_id);

-- One row per measurement event. Its identity is (device, metric, measured time):
-- a redelivered or retransmitted reading conflicts and is skipped.
CREATE TABLE readings (
    measured_at timestamptz NOT NULL,
    device_id   text NOT NULL,
    metric      text NOT NULL,
    patient_id  text NOT NULL,
    uid         uuid NOT NULL,
    components  jsonb NOT NULL,                    -- {component: value in canonical UCUM}
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, metric, measured_at)
);
CREATE INDEX readings_patient_time ON readings (patient_id, measured_at DESC);
CREATE INDEX readings_uid ON readings (uid);

-- Everything we refused, with the reason and the raw bytes, so nothing is lost.
CREATE TABLE quarantine (
    id             bigserial PRIMARY KEY,
    fingerprint    bytea NOT NULL UNIQUE,          -- same payload + same reason stored once
    transport      text NOT NULL,
    payload_format text NOT NULL,
    device_id      text,
    topic          text,
    reason         text NOT NULL,
    detail         text NOT NULL,
    payload        bytea NOT NULL,
    received_at    timestamptz NOT NULL,
    seen_count     integer NOT NULL DEFAULT 1,
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz
);
CREATE INDEX quarantine_reason ON quarantine (reason, received_at DESC);

CREATE TABLE alerts (
    id                bigserial PRIMARY KEY,
    patient_id        text NOT NULL REFERENCES patients(id),
    rule_id           text NOT NULL,
    severity          text NOT NULL,
    state             text NOT NULL,
    title             text NOT NULL,
    explanation       text NOT NULL,
    evidence          jsonb NOT NULL,
    first_reading_uid uuid NOT NULL,
    last_reading_uid  uuid NOT NULL,
    occurrences       integer NOT NULL DEFAULT 1,
    opened_at         timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    acknowledged_at   timestamptz,
    acknowledged_by   text,
    resolved_at       timestamptz,
    resolved_by       text,
    resolution_note   text
);
-- One episode per patient and rule while it is not resolved.
CREATE UNIQUE INDEX alerts_one_open_episode ON alerts (patient_id, rule_id)
    WHERE state <> 'resolved';
CREATE INDEX alerts_state_time ON alerts (state, opened_at DESC);

-- Audit trail of every alert transition: who, when, what.
CREATE TABLE alert_events (
    id         bigserial PRIMARY KEY,
    alert_id   bigint NOT NULL REFERENCES alerts(id),
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    from_state text,
    to_state   text NOT NULL,
    severity   text NOT NULL,
    note       text
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, at);

-- Work for delivery workers, written in the same transaction as its cause.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    channel         text NOT NULL,                 -- 'sms'
    dedupe_key      text NOT NULL UNIQUE,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed_at       timestamptz,
    last_error      text,
    result          jsonb
);
CREATE INDEX outbox_due ON outbox (channel, next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
