-- The record: each reading keeps the interpretation its threshold rules gave it when it
-- was stored (FHIR Observation.interpretation: N, H, HH, L, LL), and FHIR push work goes
-- through the outbox (channel 'fhir'), one item per ingest batch.
ALTER TABLE readings ADD COLUMN interpretation text
    CHECK (interpretation IN ('N', 'H', 'HH', 'L', 'LL'));
