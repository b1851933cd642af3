-- Commands (docs/commands.md): durable before CreateCommand returns, every transition a row.
-- `seq` orders an edge's queue (FIFO on reconnect). Idempotency (AIP-155) is per edge and request_id;
-- request_hash tells a retry of the same request from a reused request_id.

-- What each edge said it has in its Hello: devices and their channel declarations (units, limits,
-- access), so commands can be validated against the real inventory.
CREATE TABLE app.edge_inventory (
    edge_pk     bigint NOT NULL REFERENCES app.edges ON DELETE CASCADE,
    device_id   text NOT NULL,
    kind        integer NOT NULL DEFAULT 0,
    driver      text NOT NULL DEFAULT '',
    model       text NOT NULL DEFAULT '',
    channels    bytea NOT NULL,          -- serialized emma.edge.v1.DeviceInventoryItem
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge_pk, device_id)
);

CREATE TABLE app.fleet_dispatches (
    id            uuid PRIMARY KEY,
    org_id        text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    action        integer NOT NULL,
    power_kw      double precision NOT NULL DEFAULT 0,
    request       bytea NOT NULL,        -- the FleetDispatch as requested (targets)
    skipped_edges jsonb NOT NULL DEFAULT '{}',
    creator       text NOT NULL,
    request_id    text NOT NULL,
    request_hash  text NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, request_id)
);

CREATE TABLE app.commands (
    id             uuid PRIMARY KEY,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    edge_pk        bigint NOT NULL REFERENCES app.edges ON DELETE CASCADE,
    channel        text NOT NULL,
    value          double precision NOT NULL,
    state          text NOT NULL CHECK (state IN ('QUEUED', 'DELIVERED', 'RECEIVED', 'EXECUTED',
                                                  'REJECTED_BY_EDGE', 'FAILED', 'CANCELLED')),
    state_reason   text NOT NULL DEFAULT '',
    applied_value  double precision,
    issued_time    timestamptz NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    expire_time    timestamptz NOT NULL,
    delivered_time timestamptz,
    creator        text NOT NULL,
    request_id     text NOT NULL,
    request_hash   text NOT NULL,
    fleet_dispatch uuid REFERENCES app.fleet_dispatches ON DELETE SET NULL,
    traceparent    text NOT NULL DEFAULT '',
    UNIQUE (edge_pk, request_id)
);
CREATE INDEX commands_queue ON app.commands (edge_pk, seq) WHERE state = 'QUEUED';
CREATE INDEX commands_expiring ON app.commands (expire_time) WHERE state = 'QUEUED';
CREATE INDEX commands_in_flight ON app.commands (delivered_time) WHERE state IN ('DELIVERED', 'RECEIVED');
CREATE INDEX commands_edge_time ON app.commands (edge_pk, create_time DESC);
CREATE INDEX commands_creator_time ON app.commands (creator, create_time DESC);
CREATE INDEX commands_fleet ON app.commands (fleet_dispatch) WHERE fleet_dispatch IS NOT NULL;

CREATE TABLE app.command_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id  uuid NOT NULL REFERENCES app.commands ON DELETE CASCADE,
    from_state  text NOT NULL,           -- '' for creation
    to_state    text NOT NULL,
    event_time  timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL DEFAULT '',
    message     text NOT NULL DEFAULT '',
    replica_id  text NOT NULL DEFAULT ''
);
CREATE INDEX command_events_command ON app.command_events (command_id, id);
