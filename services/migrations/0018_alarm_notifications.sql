-- Alarms, second part (docs/alarms.md): rate-of-change memory, escalation when unacknowledged,
-- proposed commands, notification channels with their delivery log, and recommendations.

-- RATE_OF_CHANGE compares each sample with the one before it, which may have come in an earlier pass.
ALTER TABLE alarm.rule_state ADD COLUMN last_value double precision;

-- Copied from the rule when the alarm opens, like remediation_steps: an alarm keeps what it was raised
-- with, and the escalation pass finds its due alarms in SQL without decoding rules.
ALTER TABLE alarm.alarms
    ADD COLUMN escalate_after        interval,
    ADD COLUMN escalate_time         timestamptz,
    ADD COLUMN proposed_commands     bytea[] NOT NULL DEFAULT '{}',
    ADD COLUMN notification_channels text[] NOT NULL DEFAULT '{}';
-- The open, unacknowledged alarms that may still escalate: few, so a partial index on raise_time is
-- enough (timestamptz + interval is not immutable, so it cannot be the index expression).
CREATE INDEX alarms_escalation_due ON alarm.alarms (raise_time)
    WHERE clear_time IS NULL AND acknowledge_time IS NULL AND escalate_time IS NULL AND escalate_after IS NOT NULL;

-- Where transitions are sent. The webhook secret is kept to sign each body; the API never returns it.
CREATE TABLE alarm.notification_channels (
    pk              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id          text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    channel_id      text NOT NULL,
    display_name    text NOT NULL,
    kind            smallint NOT NULL,
    webhook_url     text NOT NULL DEFAULT '',
    webhook_secret  text NOT NULL DEFAULT '',
    email_addresses text[] NOT NULL DEFAULT '{}',
    min_severity    smallint NOT NULL DEFAULT 0,
    create_time     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, channel_id)
);

-- One row per transition and channel, queued in the transaction that stored the transition (so no
-- transition is announced that did not commit, and none is lost), then attempted by the notifier.
-- state: 1 pending, 2 delivered, 3 failed (as emma.alarm.v1.NotificationDeliveryState).
CREATE TABLE alarm.deliveries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_pk        bigint NOT NULL REFERENCES alarm.notification_channels ON DELETE CASCADE,
    transition_seq    bigint NOT NULL REFERENCES alarm.transitions ON DELETE CASCADE,
    state             smallint NOT NULL DEFAULT 1,
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT now(),
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    finish_time       timestamptz
);
CREATE INDEX deliveries_due ON alarm.deliveries (next_attempt_time) WHERE state = 1;
CREATE INDEX deliveries_channel ON alarm.deliveries (channel_pk, id DESC);

-- Advice for a site's operators from a recommendation service; accepted or dismissed by an operator
-- (state 1 open, 2 accepted, 3 dismissed, as emma.alarm.v1.RecommendationState). Devices are the
-- names as validated when it was posted; the rate limit counts a site's rows of the last hour.
CREATE TABLE alarm.recommendations (
    id            uuid PRIMARY KEY,
    org_id        text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    site_id       text NOT NULL,
    title         text NOT NULL,
    detail        text NOT NULL DEFAULT '',
    source        text NOT NULL,
    confidence    double precision NOT NULL,
    devices       text[] NOT NULL DEFAULT '{}',
    state         smallint NOT NULL DEFAULT 1,
    creator       text NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    decided_by    text NOT NULL DEFAULT '',
    decide_time   timestamptz,
    decision_note text NOT NULL DEFAULT ''
);
CREATE INDEX recommendations_site ON alarm.recommendations (org_id, site_id, create_time DESC, id);
