-- TimescaleDB extras for 0001: readings become a hypertable partitioned by measured time.
-- The primary key (device_id, metric, measured_at) contains the partitioning column,
-- as TimescaleDB requires of unique indexes.
SELECT create_hypertable('readings', by_range('measured_at', INTERVAL '7 days'),
                         migrate_data => true);
