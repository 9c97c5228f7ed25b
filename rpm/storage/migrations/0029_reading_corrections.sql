-- Corrections: a reading marked entered-in-error (FHIR R4 ObservationStatus
-- "entered-in-error"), by a vendor's retraction at /ingest/fhir or by staff. Append-only and
-- keyed by the reading's identity (device, metric, measured time), so marking a reading never
-- UPDATEs the readings hypertable (whose old chunks may be compressed) and a retraction that
-- arrives before its reading is kept under the same key, marking the reading when it comes.
-- Reads join against it. A reading is never deleted.
CREATE TABLE reading_corrections (
    device_id    text NOT NULL,
    metric       text NOT NULL,
    measured_at  timestamptz NOT NULL,
    uid          uuid NOT NULL,                 -- rpm_reading_uid of the key (FHIR id)
    patient_id   text NOT NULL REFERENCES patients(id),
    status       text NOT NULL DEFAULT 'entered-in-error' CHECK (status = 'entered-in-error'),
    sent_status  text NOT NULL CHECK (sent_status IN ('entered-in-error', 'cancelled')),
    source       text NOT NULL CHECK (source IN ('vendor', 'staff')),
    actor        text NOT NULL,                 -- integration:<id> or staff:<id>
    reason       text NOT NULL,
    corrected_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric, measured_at)
);
CREATE INDEX reading_corrections_uid ON reading_corrections (uid);
CREATE INDEX reading_corrections_patient ON reading_corrections (patient_id, measured_at DESC);
