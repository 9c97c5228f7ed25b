-- Billing code tables (docs/billing.md): which codes a month of monitoring earns, their day
-- and minute thresholds, what excludes what, and from which date a table applies. A table is
-- data (rpm/billing/codes.py checks it), versioned: each change is a new row naming its
-- author and why; rows are never changed. The table shipped with the server
-- (rpm/billing/tables/cms-2026.json) is stored as version 1 the first time a report or a
-- listing needs a table and none is stored.
CREATE TABLE billing_code_tables (
    version        integer PRIMARY KEY,
    name           text NOT NULL,            -- a table's versions share its name
    effective_from date NOT NULL,            -- applies to dates from this day
    definition     jsonb NOT NULL,
    note           text,
    actor          text NOT NULL,            -- the principal, or 'system' for the default
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_code_tables_name ON billing_code_tables (name, version DESC);
