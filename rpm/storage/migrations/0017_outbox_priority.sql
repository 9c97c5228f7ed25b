-- Outbox priority: what a worker takes first among the items due. Derived from the payload,
-- so no writer can forget it: an urgent message (critical and high alerts, escalations to
-- staff, and any message that does not say it is not urgent) 2, another alert message 1, a
-- campaign message 0. A backlog of program messages never delays an alert's.
ALTER TABLE outbox ADD COLUMN priority smallint NOT NULL GENERATED ALWAYS AS (
    CASE WHEN payload->>'template' = 'campaign' THEN 0
         WHEN payload->'urgent' = 'false'::jsonb THEN 1
         ELSE 2 END
) STORED;
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (channel, priority DESC, next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
