-- The TimescaleDB path of the telemetry store (docs/telemetry-store.md).
--
-- Where the timescaledb extension can be created and the store is still empty (a new installation),
-- samples become a hypertable of 1-day chunks, compressed per series once they are a few days old,
-- and the two rollups become continuous aggregates with the same names and columns as the tables of
-- 0003, so ingest and history queries are the same SQL on both paths. Everywhere else the plain path
-- of 0003 stays. telemetry.storage_info.mode records which path this database runs.
--
-- The choice is made once, here: the migration runner sets emma.telemetry_store from
-- EMMA_TELEMETRY_STORE: 'auto' (the default: TimescaleDB where it can be created), 'partitioned'
-- (never), or 'timescaledb' (fail unless it can be created). A store that already holds data is not
-- converted: moving raw rows and rollups kept beyond the raw retention is an operator's decision.
--
-- What differs between the paths is behind the functions below, created for the plain path first
-- and replaced on the TimescaleDB path: partitions ahead (chunks need none), retention (drop_chunks
-- keeps the continuous aggregates' rows), compression (plain: nothing to do) and erasure (the
-- aggregates' materialized rows are deleted where they are stored). Continuous aggregates are
-- refreshed by the rollup worker for exactly the buckets that received data, not by TimescaleDB's
-- background jobs, so one mechanism serves both paths and the answers equal the raw rows.

-- Buckets the rollup worker took from rollup_dirty and is refreshing (TimescaleDB path): a refresh
-- cannot run inside a transaction, so buckets move here first and leave when their refresh is done.
-- History queries treat them as dirty, so they are read from raw rows until then.
CREATE TABLE telemetry.rollup_refreshing (
    edge_pk bigint NOT NULL,
    bucket  timestamptz NOT NULL,
    PRIMARY KEY (edge_pk, bucket)
);

-- Compresses raw data older than cutoff; returns how many chunks it compressed. Plain path: none.
CREATE FUNCTION telemetry.compress_before(cutoff date) RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;

-- Deletes the raw samples and rollups of these series; returns rows deleted per table.
CREATE FUNCTION telemetry.delete_series_data(ids bigint[]) RETURNS TABLE (table_name text, deleted bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM telemetry.samples WHERE series_id = ANY(ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'telemetry.samples'; deleted := n; RETURN NEXT;
    DELETE FROM telemetry.rollup_15m WHERE series_id = ANY(ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'telemetry.rollup_15m'; deleted := n; RETURN NEXT;
    DELETE FROM telemetry.rollup_1h WHERE series_id = ANY(ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'telemetry.rollup_1h'; deleted := n; RETURN NEXT;
END;
$$;

DO $migration$
DECLARE
    wanted text := coalesce(nullif(current_setting('emma.telemetry_store', true), ''), 'auto');
BEGIN
    IF wanted NOT IN ('auto', 'partitioned', 'timescaledb') THEN
        RAISE EXCEPTION 'emma.telemetry_store is %, expected auto, partitioned or timescaledb', wanted;
    END IF;
    IF wanted = 'partitioned' THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM telemetry.samples) OR EXISTS (SELECT 1 FROM telemetry.rollup_15m) THEN
        IF wanted = 'timescaledb' THEN
            RAISE EXCEPTION 'EMMA_TELEMETRY_STORE=timescaledb, but the plain store already holds data';
        END IF;
        RAISE NOTICE 'telemetry store holds data: staying on the plain PostgreSQL path';
        RETURN;
    END IF;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    EXCEPTION WHEN OTHERS THEN
        -- The server has no timescaledb, or has it but not in shared_preload_libraries. (Creating is
        -- the test: pg_available_extensions does not list extensions that some builds load on demand.)
        IF wanted = 'timescaledb' THEN
            RAISE EXCEPTION 'EMMA_TELEMETRY_STORE=timescaledb, but the extension cannot be created: %', SQLERRM;
        END IF;
        RAISE NOTICE 'timescaledb cannot be created (%): staying on the plain PostgreSQL path', SQLERRM;
        RETURN;
    END;

    DROP TABLE telemetry.samples, telemetry.rollup_15m, telemetry.rollup_1h;
    CREATE TABLE telemetry.samples (
        series_id bigint NOT NULL,
        time      timestamptz NOT NULL,
        value     double precision NOT NULL
    );
    PERFORM create_hypertable('telemetry.samples', 'time', chunk_time_interval => interval '1 day',
                              create_default_indexes => false);
    CREATE INDEX samples_series_time ON telemetry.samples (series_id, time);
    ALTER TABLE telemetry.samples SET (timescaledb.compress, timescaledb.compress_segmentby = 'series_id',
                                       timescaledb.compress_orderby = 'time');

    -- Same columns as the rollup tables of 0003. Only materialized rows are read: the history
    -- query reads raw rows itself from the first dirty bucket on.
    CREATE MATERIALIZED VIEW telemetry.rollup_15m
        WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
        SELECT series_id, time_bucket(interval '15 minutes', time) AS bucket,
               min(value) AS min_value, max(value) AS max_value, sum(value) AS sum_value,
               count(*) AS count, max(time) AS last_time, last(value, time) AS last_value
        FROM telemetry.samples
        GROUP BY series_id, time_bucket(interval '15 minutes', time)
        WITH NO DATA;
    CREATE MATERIALIZED VIEW telemetry.rollup_1h
        WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
        SELECT series_id, time_bucket(interval '1 hour', bucket) AS bucket,
               min(min_value) AS min_value, max(max_value) AS max_value, sum(sum_value) AS sum_value,
               sum(count)::bigint AS count, max(last_time) AS last_time, last(last_value, last_time) AS last_value
        FROM telemetry.rollup_15m
        GROUP BY series_id, time_bucket(interval '1 hour', bucket)
        WITH NO DATA;

    -- Chunks are created by inserts: nothing to prepare.
    CREATE OR REPLACE FUNCTION telemetry.ensure_partitions(first_day date, last_day date) RETURNS integer
    LANGUAGE sql AS $f$ SELECT 0 $f$;

    -- Raw retention; the continuous aggregates keep their rows (the worker never refreshes there).
    CREATE OR REPLACE FUNCTION telemetry.drop_partitions_before(cutoff date) RETURNS integer
    LANGUAGE sql AS $f$
        SELECT count(*)::integer
        FROM drop_chunks('telemetry.samples', older_than => (cutoff::timestamp AT TIME ZONE 'UTC'))
    $f$;

    CREATE OR REPLACE FUNCTION telemetry.compress_before(cutoff date) RETURNS integer
    LANGUAGE plpgsql AS $f$
    DECLARE
        c regclass;
        n integer := 0;
    BEGIN
        FOR c IN
            SELECT format('%I.%I', chunk_schema, chunk_name)::regclass
            FROM timescaledb_information.chunks
            WHERE hypertable_schema = 'telemetry' AND hypertable_name = 'samples' AND NOT is_compressed
              AND range_end <= (cutoff::timestamp AT TIME ZONE 'UTC')
            ORDER BY range_start
        LOOP
            PERFORM compress_chunk(c, if_not_compressed => true);
            n := n + 1;
        END LOOP;
        RETURN n;
    END;
    $f$;

    -- A continuous aggregate cannot be deleted from; its materialized rows live in a hypertable of
    -- their own, where they are deleted at once (erasure cannot wait for a refresh).
    CREATE OR REPLACE FUNCTION telemetry.delete_series_data(ids bigint[])
    RETURNS TABLE (table_name text, deleted bigint)
    LANGUAGE plpgsql AS $f$
    DECLARE
        n bigint;
        agg record;
    BEGIN
        DELETE FROM telemetry.samples WHERE series_id = ANY(ids);
        GET DIAGNOSTICS n = ROW_COUNT;
        table_name := 'telemetry.samples'; deleted := n; RETURN NEXT;
        FOR agg IN
            SELECT view_name, format('%I.%I', materialization_hypertable_schema,
                                     materialization_hypertable_name) AS stored
            FROM timescaledb_information.continuous_aggregates
            WHERE view_schema = 'telemetry' AND view_name IN ('rollup_15m', 'rollup_1h')
            ORDER BY view_name
        LOOP
            EXECUTE format('DELETE FROM %s WHERE series_id = ANY($1)', agg.stored) USING ids;
            GET DIAGNOSTICS n = ROW_COUNT;
            table_name := 'telemetry.' || agg.view_name; deleted := n; RETURN NEXT;
        END LOOP;
    END;
    $f$;

    UPDATE telemetry.storage_info SET mode = 'timescaledb';
END;
$migration$;
