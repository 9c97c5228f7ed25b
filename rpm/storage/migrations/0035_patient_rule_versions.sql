-- Active-active gateways (docs/architecture.md, "Several gateways"): one row per patient whose
-- rule state a unit of work changed. Each ingest unit of work bumps the version of its
-- patients in sorted order before it reads their history, which also row-locks them until
-- commit: units of work on one patient run one after another, whatever process runs them,
-- and a process whose cached version is not the one before its bump reloads that patient.
CREATE TABLE patient_rule_versions (
    patient_id text PRIMARY KEY,
    version    bigint NOT NULL
);
