-- Access control: short-lived staff bearer tokens, integration API keys, and the
-- append-only audit log of every access to and change of patient data (rpm/storage/audit.py).

-- Bearer tokens for staff (POST /api/auth/token): like sessions, only a hash is kept.
CREATE TABLE staff_tokens (
    token_hash  bytea PRIMARY KEY,
    staff_id    text NOT NULL REFERENCES staff(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX staff_tokens_expiry ON staff_tokens (expires_at);

-- API keys of machines (an EHR reading FHIR, a vendor cloud posting readings). The key
-- itself is shown once at creation; only its SHA-256 is kept.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    scopes      text[] NOT NULL CHECK (scopes <@ ARRAY['ingest', 'fhir:read']::text[]
                                       AND cardinality(scopes) > 0),
    integration text REFERENCES integrations(id),   -- the webhook sender an ingest key acts as
    key_hash    bytea NOT NULL UNIQUE,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (NOT ('ingest' = ANY(scopes)) OR integration IS NOT NULL)
);

-- Who accessed or changed which patient's data, when, from where, and how it ended.
-- Append-only: the trigger below refuses UPDATE and DELETE, and TRUNCATE.
CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL,          -- staff:<id> or key:<id>
    role          text NOT NULL,          -- admin, nurse, integration
    action        text NOT NULL,          -- read, search, create, update, delete, ...
    resource      text NOT NULL,          -- resource type (alert, readings, Observation, ...)
    resource_id   text,
    route         text NOT NULL,          -- METHOD path template
    patient_ids   text[] NOT NULL DEFAULT '{}',
    client_addr   text,
    user_agent    text,
    status        integer NOT NULL        -- the HTTP status answered
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);
CREATE INDEX audit_log_patients ON audit_log USING gin (patient_ids);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
