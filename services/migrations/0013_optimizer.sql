-- The optimizer domain (docs/optimizer.md): every run with the inputs it was solved from, so a replay
-- solves exactly the same problem. inputs is an emma.optimizer.v1.OptimizationInputs, result an
-- OptimizationRun without its inputs, both serialized protobuf (the contract is their schema).
CREATE SCHEMA IF NOT EXISTS optimizer;

CREATE TABLE optimizer.runs (
    run_id       uuid PRIMARY KEY,
    org_id       text NOT NULL,
    site_names   text[] NOT NULL,
    state        text NOT NULL CHECK (state IN ('succeeded', 'failed')),
    create_time  timestamptz NOT NULL,
    start_time   timestamptz NOT NULL,
    end_time     timestamptz NOT NULL,
    objective    double precision,
    replay_of    uuid REFERENCES optimizer.runs,
    creator      text NOT NULL,
    request_id   text,
    inputs       bytea NOT NULL,
    result       bytea NOT NULL,
    UNIQUE (creator, request_id)
);
CREATE INDEX runs_org_time ON optimizer.runs (org_id, create_time DESC, run_id);
CREATE INDEX runs_sites ON optimizer.runs USING gin (site_names);
