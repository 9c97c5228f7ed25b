-- The record: what the EHR push (rpm/fhir/push.py) could not deliver, kept for people to
-- see, and patient and device ids as FHIR ids for the FHIR API (rpm/api/fhir.py).
--
-- An Observation the EHR refused with a 4xx, isolated from the rest of its transaction
-- Bundle, with the EHR's status and OperationOutcome. It is never retried on its own;
-- someone may requeue it (requeued_at/by) after fixing the cause.
CREATE TABLE fhir_push_refusals (
    id             bigserial PRIMARY KEY,
    outbox_id      bigint NOT NULL REFERENCES outbox(id),
    observation_id text NOT NULL,
    device_id      text NOT NULL,
    metric         text NOT NULL,
    measured_at    timestamptz NOT NULL,
    patient_id     text NOT NULL,
    status         integer NOT NULL,
    outcome        jsonb,
    refused_at     timestamptz NOT NULL DEFAULT now(),
    requeued_at    timestamptz,
    requeued_by    text,
    UNIQUE (outbox_id, observation_id)
);
CREATE INDEX fhir_push_refusals_open ON fhir_push_refusals (refused_at DESC)
    WHERE requeued_at IS NULL;

-- Failed push items (outbox channel 'fhir', failed_at set) someone sent again.
CREATE TABLE fhir_push_requeues (
    outbox_id   bigint PRIMARY KEY REFERENCES outbox(id),
    requeued_at timestamptz NOT NULL DEFAULT now(),
    requeued_by text NOT NULL
);

-- The failures view lists failed items per channel, newest first.
CREATE INDEX outbox_failed ON outbox (channel, failed_at DESC) WHERE failed_at IS NOT NULL;

-- Patient and device ids as FHIR ids (R4 datatypes.html#id: [A-Za-z0-9-.]{1,64}): the id
-- itself when valid, else 'h-' and 40 hex digits of its SHA-256, exactly as
-- rpm.fhir.mapping.logical_id computes it (tests/test_fhir_api.py checks they agree).
CREATE FUNCTION rpm_fhir_id(id text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN id ~ '^[A-Za-z0-9.-]{1,64}$' THEN id
                ELSE 'h-' || left(encode(sha256(convert_to(id, 'UTF8')), 'hex'), 40) END
$$;
CREATE INDEX patients_fhir_id ON patients (rpm_fhir_id(id));
CREATE INDEX devices_fhir_id ON devices (rpm_fhir_id(id));
