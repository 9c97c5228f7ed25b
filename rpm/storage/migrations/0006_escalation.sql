-- Escalation rounds and re-notification (alerts/escalation.py).
--
-- last_fired_at: measured time of the newest candidate that opened, escalated or recurred
-- in the episode; an acknowledged alert still firing RPM_RENOTIFY_AFTER_MIN after its
-- acknowledgement returns to open.
-- escalation_round: a re-opened episode (a worse value, or re-notification) starts its
-- escalation again from tier 1; the round keeps each round's SMS dedupe keys distinct.
-- last_notified_at (0005) is when the current escalation step started: the episode opened
-- or re-opened, or the previous tier was sent its SMS; NULL while an episode that opened
-- during a snooze has told nobody.
ALTER TABLE alerts ADD COLUMN last_fired_at timestamptz;
ALTER TABLE alerts ADD COLUMN escalation_round integer NOT NULL DEFAULT 0;
UPDATE alerts SET last_fired_at = updated_at;
