-- The forecast domain (docs/forecasting.md): every run and every forecast it made, never overwritten,
-- so "what did we believe at 06:00" is a query over issue_time; scores are added when actuals arrive.
CREATE SCHEMA IF NOT EXISTS forecast;

-- One run of one site. request_id (with creator) makes RunForecast idempotent; status: succeeded, failed.
CREATE TABLE forecast.runs (
    run_id           uuid PRIMARY KEY,
    org_id           text NOT NULL,
    site_id          text NOT NULL,
    issue_time       timestamptz NOT NULL,
    status           text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    status_reason    text NOT NULL DEFAULT '',
    trigger          text NOT NULL CHECK (trigger IN ('scheduled', 'on_demand')),
    creator          text NOT NULL,
    request_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (creator, request_id)
);
CREATE INDEX runs_site_issue ON forecast.runs (org_id, site_id, issue_time DESC);

-- One kind (pv_power, site_load, net_load) of one run, with its model, degradation and weather.
CREATE TABLE forecast.forecasts (
    forecast_id        uuid PRIMARY KEY,
    run_id             uuid NOT NULL REFERENCES forecast.runs ON DELETE CASCADE,
    org_id             text NOT NULL,
    site_id            text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('pv_power', 'site_load', 'net_load')),
    issue_time         timestamptz NOT NULL,
    start_time         timestamptz NOT NULL,
    slot_count         integer NOT NULL CHECK (slot_count BETWEEN 1 AND 288),
    model_version      text NOT NULL,
    degraded_reasons   text[] NOT NULL DEFAULT '{}',
    weather_source     text NOT NULL DEFAULT '',
    weather_fetch_time timestamptz,
    scored_at          timestamptz,
    UNIQUE (run_id, kind)
);
CREATE INDEX forecasts_site_kind_issue ON forecast.forecasts (org_id, site_id, kind, issue_time DESC);

-- The slots of a forecast, p10 <= p50 <= p90, watts.
CREATE TABLE forecast.forecast_values (
    forecast_id uuid NOT NULL REFERENCES forecast.forecasts ON DELETE CASCADE,
    slot_start  timestamptz NOT NULL,
    p10_w       double precision NOT NULL,
    p50_w       double precision NOT NULL,
    p90_w       double precision NOT NULL,
    PRIMARY KEY (forecast_id, slot_start),
    CHECK (p10_w <= p50_w AND p50_w <= p90_w)
);

-- The scores of a forecast per horizon band (hours after issue), once its actuals arrived.
CREATE TABLE forecast.scores (
    forecast_id   uuid NOT NULL REFERENCES forecast.forecasts ON DELETE CASCADE,
    band_start_h  integer NOT NULL,
    band_end_h    integer NOT NULL,
    n             integer NOT NULL,
    mae_w         double precision NOT NULL,
    rmse_w        double precision NOT NULL,
    nmae          double precision,  -- NULL when the mean actual is 0 (PV at night)
    bias_w        double precision NOT NULL,
    skill         double precision,  -- NULL when persistence was perfect
    scored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (forecast_id, band_start_h)
);

-- The scheduler's rounds: one row per site and round (the round's start, every EMMA_FORECAST_INTERVAL).
-- Replicas insert with ON CONFLICT DO NOTHING and claim with FOR UPDATE SKIP LOCKED and a lease, so
-- each site is forecast once per round; an expired lease (a replica that died mid-run) lets another
-- take it. state: pending, done, failed (reason says why).
CREATE TABLE forecast.schedule (
    org_id      text NOT NULL,
    site_id     text NOT NULL,
    round_start timestamptz NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    lease_until timestamptz,
    claimed_by  text,
    run_id      uuid,
    reason      text NOT NULL DEFAULT '',
    PRIMARY KEY (org_id, site_id, round_start)
);
