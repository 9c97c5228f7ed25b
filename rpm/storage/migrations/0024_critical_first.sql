-- Critical first: among the urgent outbox items, a critical alert's message (to the patient or
-- to staff, and a legacy ``body`` item, which carries no severity and is treated as urgent)
-- goes before a high one. 3 critical (and severity-less urgent), 2 other urgent, 1 other
-- alert message, 0 campaign. A backlog of high alerts never delays a critical one.
DROP INDEX outbox_due;
ALTER TABLE outbox DROP COLUMN priority;
ALTER TABLE outbox ADD COLUMN priority smallint NOT NULL GENERATED ALWAYS AS (
    CASE WHEN payload->>'template' = 'campaign' THEN 0
         WHEN payload->'urgent' = 'false'::jsonb THEN 1
         WHEN payload->>'severity' IS NULL OR payload->>'severity' = 'CRITICAL' THEN 3
         ELSE 2 END
) STORED;
CREATE INDEX outbox_due ON outbox (channel, priority DESC, next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
