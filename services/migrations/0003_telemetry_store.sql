-- The telemetry store (docs/telemetry-store.md), plain PostgreSQL path.
--
-- series: one row per (edge, channel). samples: (series_id, time, value), range-partitioned by day so
-- retention drops whole partitions instead of deleting rows. The batch ledger makes ingest exactly
-- once: (edge, batch_seq) is written in the same transaction as the batch's samples.
-- Rollups at 15 min and 1 h hold min, max, sum, count and last; the rollup worker recomputes a
-- 15-minute bucket from raw rows once it has closed (and again if late data arrives, via
-- rollup_dirty), so rollups equal aggregates of the raw rows; queries read still-open or dirty
-- buckets from raw rows, so answers are current.

CREATE TABLE telemetry.series (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    edge_pk     bigint NOT NULL REFERENCES app.edges ON DELETE CASCADE,
    channel     text NOT NULL,            -- "device/Channel"
    unit        text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    UNIQUE (edge_pk, channel)
);

CREATE TABLE telemetry.samples (
    series_id bigint NOT NULL,
    time      timestamptz NOT NULL,
    value     double precision NOT NULL
) PARTITION BY RANGE (time);
CREATE INDEX samples_series_time ON telemetry.samples (series_id, time);

CREATE TABLE telemetry.batch_ledger (
    edge_pk       bigint NOT NULL REFERENCES app.edges ON DELETE CASCADE,
    batch_seq     bigint NOT NULL,
    point_count   integer NOT NULL,
    min_time      timestamptz,
    max_time      timestamptz,
    received_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge_pk, batch_seq)
);

-- The newest value of every series, for "latest values" without touching samples. Every row is
-- rewritten about once a second: half-empty pages let PostgreSQL update in place (HOT) instead of
-- touching the index, and aggressive autovacuum keeps the dead versions from piling up.
CREATE TABLE telemetry.latest (
    series_id bigint PRIMARY KEY REFERENCES telemetry.series ON DELETE CASCADE,
    time      timestamptz NOT NULL,
    value     double precision NOT NULL
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE telemetry.rollup_15m (
    series_id  bigint NOT NULL,
    bucket     timestamptz NOT NULL,
    min_value  double precision NOT NULL,
    max_value  double precision NOT NULL,
    sum_value  double precision NOT NULL,
    count      bigint NOT NULL,
    last_time  timestamptz NOT NULL,
    last_value double precision NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

CREATE TABLE telemetry.rollup_1h (LIKE telemetry.rollup_15m INCLUDING ALL);

-- 15-minute buckets of an edge that received samples since the rollup worker last looked.
CREATE TABLE telemetry.rollup_dirty (
    edge_pk bigint NOT NULL,
    bucket  timestamptz NOT NULL,
    PRIMARY KEY (edge_pk, bucket)
);

-- Which storage path this database runs (plain partitions here; 'timescaledb' when that path runs).
CREATE TABLE telemetry.storage_info (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mode       text NOT NULL,
    retention_days integer NOT NULL DEFAULT 30
);
INSERT INTO telemetry.storage_info (mode) VALUES ('partitioned');

-- Creates the daily partitions covering [first_day, last_day]; safe to call concurrently and often.
CREATE FUNCTION telemetry.ensure_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date := first_day;
    created integer := 0;
    part text;
BEGIN
    WHILE d <= last_day LOOP
        part := 'samples_' || to_char(d, 'YYYYMMDD');
        IF to_regclass('telemetry.' || part) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE telemetry.%I PARTITION OF telemetry.samples FOR VALUES FROM (%L) TO (%L)',
                    part, (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
                created := created + 1;
            EXCEPTION WHEN duplicate_table THEN
                NULL;  -- another replica created it first
            END;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Drops daily partitions that end before cutoff (raw retention); rollups are kept.
CREATE FUNCTION telemetry.drop_partitions_before(cutoff date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = p.relnamespace
        WHERE n.nspname = 'telemetry' AND p.relname = 'samples'
          AND c.relname ~ '^samples_[0-9]{8}$'
          AND to_date(substring(c.relname from 9), 'YYYYMMDD') < cutoff
    LOOP
        EXECUTE format('DROP TABLE telemetry.%I', r.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END;
$$;

-- Partitions for the retention window and the next days, so ingest never meets a missing partition.
SELECT telemetry.ensure_partitions((now() AT TIME ZONE 'UTC')::date - 31, (now() AT TIME ZONE 'UTC')::date + 3);
