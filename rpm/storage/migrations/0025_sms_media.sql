-- Media (photos) in patients' inbound messages: kept as Twilio's links, never fetched or
-- copied (docs/checkins.md#media). A list of {"url", "content_type"}; empty for plain text.
-- The links name patient data: stored and shown to staff, never logged.
ALTER TABLE sms_messages ADD COLUMN media jsonb NOT NULL DEFAULT '[]';
-- A patient_reply event shows the reply's media in the alert's history.
ALTER TABLE alert_events ADD COLUMN media jsonb;
