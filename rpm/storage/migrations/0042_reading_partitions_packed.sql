-- The readings partitions (plain PostgreSQL) and chunks (TimescaleDB) whose indexes the
-- lifecycle scheduler has rebuilt once they closed (docs/data-lifecycle.md, "Packing closed
-- partitions"), so a pass does not rebuild them again. Readings arrive in time order, so
-- inserts land all over the primary key and its leaf pages split half and half; rebuilt
-- once no more readings are expected, the index is packed full. Keyed by the relation's
-- schema-qualified name, not its oid: an oid may be reused after retention drops a
-- partition, a name of a month or a chunk id is not. Rows of dropped relations are
-- removed by the scheduler.
CREATE TABLE reading_partitions_packed (
    name text PRIMARY KEY,
    packed_at timestamptz NOT NULL
);
