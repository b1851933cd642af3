-- The market fetch scheduler (docs/market.md, "Fetch scheduler"): its jobs, the validators kept per
-- query for conditional re-fetch, and each source's last success and last error.

-- One row per query (source, product, zone or border, delivery day) and round (the publication it
-- waits for). Replicas insert with ON CONFLICT DO NOTHING and claim due rows with FOR UPDATE SKIP
-- LOCKED and a lease: a job is fetched by one replica at a time, and an expired lease (a replica that
-- died mid-fetch) lets another take it. state: pending, retry (asked again at due_at), done, abandoned.
CREATE TABLE market.fetch_jobs (
    job_key     text PRIMARY KEY,
    query_key   text NOT NULL,
    source      text NOT NULL,
    product     text NOT NULL,
    zone        text NOT NULL DEFAULT '',
    out_zone    text NOT NULL DEFAULT '',
    in_zone     text NOT NULL DEFAULT '',
    day         date NOT NULL,
    round       text NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'retry', 'done', 'abandoned')),
    due_at      timestamptz NOT NULL,
    give_up_at  timestamptz NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    lease_until timestamptz,
    claimed_by  text,
    outcome     text NOT NULL DEFAULT '',   -- stored, unchanged, revised, not modified, no data, failed
    reason      text NOT NULL DEFAULT '',   -- why it failed or was abandoned
    finished_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fetch_jobs_due ON market.fetch_jobs (due_at) WHERE state IN ('pending', 'retry');

-- ETag / Last-Modified of the last answer per query, sent back to ask "has it changed?".
CREATE TABLE market.fetch_queries (
    query_key     text PRIMARY KEY,
    etag          text,
    last_modified text,
    fetched_at    timestamptz NOT NULL
);

-- Per source: the last answer (a document, "no data" or "not modified") and the last failure, so a
-- source that is down shows "stale since <last_success_at>".
CREATE TABLE market.source_status (
    source          text PRIMARY KEY,
    last_success_at timestamptz,
    last_error_at   timestamptz,
    last_error      text NOT NULL DEFAULT ''
);
