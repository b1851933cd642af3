-- The registry's core tables: what every other store refers to. Edges get a surrogate bigint key
-- (edges.pk) because telemetry and commands reference them millions of times; the text ids form the
-- resource names. The registry issue adds devices, profiles and the rest of the columns additively.
CREATE TABLE app.organizations (
    org_id        text PRIMARY KEY,
    display_name  text NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app.sites (
    org_id              text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    site_id             text NOT NULL,
    display_name        text NOT NULL,
    latitude_deg        double precision NOT NULL DEFAULT 0,
    longitude_deg       double precision NOT NULL DEFAULT 0,
    time_zone           text NOT NULL DEFAULT 'UTC',
    country_code        text NOT NULL DEFAULT '',
    bidding_zone        text NOT NULL DEFAULT '',
    grid_import_limit_w double precision NOT NULL DEFAULT 0,
    grid_export_limit_w double precision NOT NULL DEFAULT 0,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, site_id)
);

CREATE TABLE app.edges (
    pk            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id        text NOT NULL,
    site_id       text NOT NULL,
    edge_id       text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, site_id, edge_id),
    FOREIGN KEY (org_id, site_id) REFERENCES app.sites ON DELETE CASCADE
);

-- Edge API keys: "emma_<key_id>_<secret>". The secret is 256 random bits, so a SHA-256 of it is as
-- strong as a slow password hash and cheap enough to check on every reconnect.
CREATE TABLE identity.edge_api_keys (
    key_id        text PRIMARY KEY,
    edge_pk       bigint NOT NULL REFERENCES app.edges ON DELETE CASCADE,
    display_name  text NOT NULL DEFAULT '',
    key_prefix    text NOT NULL,
    secret_sha256 bytea NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    revoke_time   timestamptz,
    last_use_time timestamptz
);
CREATE INDEX edge_api_keys_edge ON identity.edge_api_keys (edge_pk);

-- Which replica holds which edge's stream, and how the edge is doing. One row per edge, rewritten
-- on every (re)connect; `online` flips to false when heartbeats stop (the offline sweeper).
CREATE TABLE app.edge_sessions (
    edge_pk           bigint PRIMARY KEY REFERENCES app.edges ON DELETE CASCADE,
    session_id        uuid NOT NULL,
    replica_id        text NOT NULL,
    online            boolean NOT NULL,
    connected_time    timestamptz NOT NULL,
    last_seen_time    timestamptz NOT NULL,
    disconnected_time timestamptz,
    agent_version     text NOT NULL DEFAULT '',
    protocol_version  integer NOT NULL DEFAULT 0,
    clock_offset_ms   double precision NOT NULL DEFAULT 0
);
CREATE INDEX edge_sessions_online ON app.edge_sessions (last_seen_time) WHERE online;

-- What happened to and at edges: connects, disconnects, clock drift warnings, events the edge sent.
CREATE TABLE app.edge_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    edge_pk     bigint NOT NULL REFERENCES app.edges ON DELETE CASCADE,
    event_time  timestamptz NOT NULL,
    record_time timestamptz NOT NULL DEFAULT now(),
    severity    text NOT NULL,
    kind        text NOT NULL,
    message     text NOT NULL DEFAULT '',
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX edge_events_edge_time ON app.edge_events (edge_pk, event_time DESC);
