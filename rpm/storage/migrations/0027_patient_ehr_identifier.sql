-- How the EHR we push to knows a patient (docs/fhir.md, "Push to an EHR"): an identifier
-- of its own, e.g. the hospital's MRN, written into each pushed Observation's subject as
-- Patient?identifier=<system>|<value>. Both or neither; without one the push uses
-- RPM_EHR_PATIENT_IDENTIFIER_SYSTEM|<our id>. PHI-adjacent: never logged.
ALTER TABLE patients ADD COLUMN ehr_identifier_system text;
ALTER TABLE patients ADD COLUMN ehr_identifier_value text;
ALTER TABLE patients ADD CONSTRAINT patients_ehr_identifier_both_or_neither
    CHECK ((ehr_identifier_system IS NULL) = (ehr_identifier_value IS NULL));
ALTER TABLE patients ADD CONSTRAINT patients_ehr_identifier_value_shape
    CHECK (ehr_identifier_value IS NULL
           OR (length(ehr_identifier_value) BETWEEN 1 AND 64
               AND position('|' IN ehr_identifier_value) = 0));
-- Two of our patients under one EHR identifier would file one's readings under the other.
CREATE UNIQUE INDEX patients_ehr_identifier_unique
    ON patients (ehr_identifier_system, ehr_identifier_value)
    WHERE ehr_identifier_system IS NOT NULL;
