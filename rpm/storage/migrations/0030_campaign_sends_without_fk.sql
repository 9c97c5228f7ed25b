-- A cheaper write per planned message (docs/performance.md, "Engagement"): campaign_sends
-- keeps no foreign keys. Each was a check per row inserted (a key-share lock of the patient's
-- row and of the outbox row, the patient's page dirtied for it), for references that hold by
-- construction: the planner is the only writer of campaign_sends, and writes each row in the
-- statement that writes its outbox row, from the patient row it read
-- (rpm.storage.campaigns.plan); no patient, outbox row or send is ever deleted.
ALTER TABLE campaign_sends DROP CONSTRAINT campaign_sends_patient_id_fkey;
ALTER TABLE campaign_sends DROP CONSTRAINT campaign_sends_outbox_id_fkey;
