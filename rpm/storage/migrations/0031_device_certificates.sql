-- Device identity by X.509 certificates from the deployment's own CA (docs/devices.md).
-- One row per issued certificate; the broker keeps nothing per device: it trusts the CA,
-- reads the CRL written from the revoked rows, and limits each device by a pattern ACL.
CREATE TABLE device_certificates (
    serial      text PRIMARY KEY,              -- hex, as in the certificate
    device_id   text NOT NULL REFERENCES devices(id),
    key_sha256  text NOT NULL,                 -- the device's public key: a retry is recognised
    pem         text NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    not_after   timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX device_certificates_device ON device_certificates (device_id);
CREATE INDEX device_certificates_revoked ON device_certificates (not_after)
    WHERE revoked_at IS NOT NULL;

-- Whether the device has a password login in the broker's dynamic-security plugin (the
-- enrolment before certificates). MQTT devices enrolled before this migration have one.
ALTER TABLE devices ADD COLUMN password_login boolean NOT NULL DEFAULT false;
UPDATE devices SET password_login = true WHERE integration IS NULL;
