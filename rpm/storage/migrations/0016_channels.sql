-- Channels beyond SMS (docs/channels.md): WhatsApp through Twilio's Messages API, voice
-- calls for critical alerts through Twilio's Calls API, and each patient's fallback order.

-- Where a patient's messages go when the preferred channel (0013) cannot carry them or
-- fails: tried in this order, each at most once per message. Voice carries only critical
-- alerts; leaving it out means a patient is never called.
ALTER TABLE patients ADD COLUMN channel_fallback text[] NOT NULL DEFAULT '{sms,voice}'
    CHECK (channel_fallback <@ ARRAY['sms', 'whatsapp', 'voice']::text[]);

-- WhatsApp's 24-hour customer-service window opens with each message the patient sends us
-- on WhatsApp: the newest one is kept (outside the window only approved templates go out).
ALTER TABLE patients ADD COLUMN whatsapp_inbound_at timestamptz;

-- WhatsApp messages are Twilio Messages like SMS: same sids, statuses and callbacks.
ALTER TABLE sms_messages ADD COLUMN channel text NOT NULL DEFAULT 'sms'
    CHECK (channel IN ('sms', 'whatsapp'));
ALTER TABLE sms_messages ADD COLUMN content_sid text;  -- the WhatsApp template, when one was used

-- Voice calls placed for critical alerts, one per voice outbox row (an alert and round),
-- with Twilio's call status and what the patient pressed.
CREATE TABLE voice_calls (
    id           bigserial PRIMARY KEY,
    outbox_id    bigint NOT NULL UNIQUE REFERENCES outbox(id),
    patient_id   text NOT NULL REFERENCES patients(id),
    alert_id     bigint REFERENCES alerts(id),
    call_sid     text UNIQUE,                       -- NULL when Twilio refused the call
    status       text NOT NULL,                     -- queued, ringing, in-progress, completed, busy, no-answer, failed, canceled
    error_code   integer,
    digits       text,                              -- the last keys pressed at the prompt
    confirmed_at timestamptz,                       -- when the patient pressed 1
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX voice_calls_alert ON voice_calls (alert_id);
