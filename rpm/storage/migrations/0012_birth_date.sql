-- Patients' birth dates: the pseudonymised export (rpm/export.py) turns them into age bands.
-- Nullable: patients enrolled before this migration, or without a known date, have none.
ALTER TABLE patients ADD COLUMN birth_date date;
