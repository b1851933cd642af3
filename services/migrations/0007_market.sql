-- Market data (docs/market.md, "Storage and service"): the documents EMMA fetched from ENTSO-E and
-- REE, the prices, flows and capacities they published, and the border warnings computed from them.
-- Reference data, the same for every organization: no org_id anywhere.
--
-- Values are keyed by what they describe (zone, product, ..., delivery start, resolution), so storing
-- a document twice is idempotent. Each value row names the document and revision it came from; a new
-- revision of a document deletes that document's rows and writes its own, in one transaction, while
-- market.documents keeps a row per revision ever stored (the revision record).
CREATE SCHEMA IF NOT EXISTS market;

-- One row per (document, revision) stored. kind: prices, flows, capacities, no-data.
CREATE TABLE market.documents (
    source         text NOT NULL,              -- entsoe, ree-redata, ree-esios
    document_id    text NOT NULL,
    revision       bigint NOT NULL,
    kind           text NOT NULL,
    fetched_at     timestamptz NOT NULL,
    created_at     timestamptz,                -- the document's own creation time, when it states one
    interval_start timestamptz,                -- the delivery interval it covers; NULL for no-data
    interval_end   timestamptz,
    no_data_reason text NOT NULL DEFAULT '',
    zones          text[] NOT NULL DEFAULT '{}',  -- every zone its series name (EIC)
    value_count    integer NOT NULL DEFAULT 0,
    stored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, document_id, revision)
);

-- product: emma.market.v1.MarketProduct (1 day-ahead, 2 intraday auction, 3 PVPC, 4 spot).
-- resolution_s: the slot length in seconds as published; a slot is [delivery_start, + resolution).
CREATE TABLE market.prices (
    zone           text NOT NULL,
    product        smallint NOT NULL,
    auction        smallint NOT NULL,
    sequence       integer NOT NULL,
    geography      text NOT NULL,
    delivery_start timestamptz NOT NULL,
    resolution_s   integer NOT NULL CHECK (resolution_s > 0),
    value          double precision NOT NULL,
    currency       text NOT NULL,
    unit           text NOT NULL,
    source         text NOT NULL,
    document_id    text NOT NULL,
    revision       bigint NOT NULL,
    PRIMARY KEY (zone, product, auction, sequence, geography, delivery_start, resolution_s)
);
CREATE INDEX prices_document ON market.prices (source, document_id);

-- Physical flow out_zone -> in_zone (ENTSO-E A11), MW.
CREATE TABLE market.flows (
    out_zone       text NOT NULL,
    in_zone        text NOT NULL,
    delivery_start timestamptz NOT NULL,
    resolution_s   integer NOT NULL CHECK (resolution_s > 0),
    value          double precision NOT NULL,
    source         text NOT NULL,
    document_id    text NOT NULL,
    revision       bigint NOT NULL,
    PRIMARY KEY (out_zone, in_zone, delivery_start, resolution_s)
);
CREATE INDEX flows_document ON market.flows (source, document_id);

-- Forecasted transfer capacity out_zone -> in_zone (ENTSO-E A61), MW.
CREATE TABLE market.capacities (
    out_zone       text NOT NULL,
    in_zone        text NOT NULL,
    delivery_start timestamptz NOT NULL,
    resolution_s   integer NOT NULL CHECK (resolution_s > 0),
    value          double precision NOT NULL,
    source         text NOT NULL,
    document_id    text NOT NULL,
    revision       bigint NOT NULL,
    PRIMARY KEY (out_zone, in_zone, delivery_start, resolution_s)
);
CREATE INDEX capacities_document ON market.capacities (source, document_id);

-- Border warnings by their stable key (services/market/interconnect.py WarningKey): recomputing a
-- warning from the same data updates the same row.
CREATE TABLE market.warnings (
    warning_key  text PRIMARY KEY,
    kind         text NOT NULL,
    out_zone     text NOT NULL,
    in_zone      text NOT NULL,
    delivery_day date NOT NULL,
    message      text NOT NULL,
    evidence     jsonb NOT NULL,
    update_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX warnings_day ON market.warnings (delivery_day);
