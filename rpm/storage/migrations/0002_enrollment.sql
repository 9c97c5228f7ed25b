-- Device enrollment, webhook integrations, and the original units of converted readings.

-- Vendor clouds that post readings over HTTP. The secret verifies their requests
-- (HMAC-SHA256 signature or bearer token), so it is kept usable: protect the database.
CREATE TABLE integrations (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    auth       text NOT NULL CHECK (auth IN ('hmac', 'token')),
    secret     text NOT NULL,
    formats    text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- A device reported by an integration has the id "<integration>:<vendor device id>";
-- a device that publishes over MQTT has a plain id and a broker login of that name.
ALTER TABLE devices ADD COLUMN integration text REFERENCES integrations(id);
ALTER TABLE devices ADD COLUMN credentials_rotated_at timestamptz;

-- Audit trail of enrollment: enroll, bind, unbind, rotate, retire.
CREATE TABLE device_events (
    id        bigserial PRIMARY KEY,
    device_id text NOT NULL REFERENCES devices(id),
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX device_events_device ON device_events (device_id, at);

-- What a converted value was before normalisation to the canonical UCUM unit.
ALTER TABLE readings ADD COLUMN original jsonb;

ALTER TABLE quarantine ADD COLUMN integration text;
