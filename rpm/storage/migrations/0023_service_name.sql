-- The name patient texts and calls are from, per care team (e.g. "Riverside Heart Clinic").
-- NULL: the configured default (RPM_SMS_SERVICE_NAME). Patient texts name the service so a
-- message on a lock screen says who sent it without clinical words (docs/alerts.md).
ALTER TABLE care_teams ADD COLUMN service_name text
    CHECK (service_name IS NULL OR length(btrim(service_name)) BETWEEN 1 AND 40);
