-- The patient panel (docs/panel.md): live updates when what it shows changes.
--
-- rpm_panel_notify(ids) announces on the rpm_panel channel that something changed for
-- these patients: {"patients": [ids]}, each payload under 7000 bytes (PostgreSQL's limit is
-- 8000), delivered at commit. The trigger below calls it once per statement on time_entries,
-- whatever writes them (the time API, the CLI, a script), so a bulk load of a month of
-- entries sends a few notifications, not one a row. (The ingest unit of work sends its
-- batch's ids itself, chunked the same way in rpm.storage.panel.patient_payloads.)
CREATE FUNCTION rpm_panel_notify(ids text[]) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('rpm_panel', json_build_object('patients', chunk_ids)::text)
      FROM (SELECT array_agg(id ORDER BY id) AS chunk_ids
              FROM (SELECT id, sum(octet_length(id) + 3) OVER (ORDER BY id) / 7000 AS chunk
                      FROM (SELECT DISTINCT id FROM unnest(ids) AS u(id)
                             WHERE id IS NOT NULL) d) c
             GROUP BY chunk) g
$$;

CREATE FUNCTION rpm_panel_notify_time_entries() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(patient_id) INTO ids FROM changed;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(patient_id) INTO ids FROM gone;
    ELSE  -- an edit may move an entry to another patient: both hear of it
        SELECT array_agg(patient_id) INTO ids
          FROM (SELECT patient_id FROM changed UNION SELECT patient_id FROM gone) u;
    END IF;
    PERFORM rpm_panel_notify(ids);
    RETURN NULL;
END;
$$;

CREATE TRIGGER time_entries_panel_insert AFTER INSERT ON time_entries
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION rpm_panel_notify_time_entries();
CREATE TRIGGER time_entries_panel_update AFTER UPDATE ON time_entries
    REFERENCING OLD TABLE AS gone NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION rpm_panel_notify_time_entries();
CREATE TRIGGER time_entries_panel_delete AFTER DELETE ON time_entries
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION rpm_panel_notify_time_entries();

-- The panel takes a care team's patients (rpm/storage/panel.py): without this, a scan of
-- every patient (a team of 10,000 among 100,000: benchmarks/panel.py --others 90000).
CREATE INDEX patients_care_team ON patients (care_team);
