-- Alarms (docs/alarms.md): rules, the alarms they raise, every transition of an alarm, and the
-- engine's judgement per rule and source (where it is in the telemetry and how long a level holds).

CREATE SCHEMA IF NOT EXISTS alarm;

-- A rule: the key columns the engine and the lists select on, and the whole emma.alarm.v1.AlarmRule
-- (levels, durations, remediation) as it was accepted, so new rule fields need no migration.
CREATE TABLE alarm.rules (
    pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id      text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    rule_id     text NOT NULL,
    kind        smallint NOT NULL,
    enabled     boolean NOT NULL,
    spec        bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, rule_id)
);

-- An alarm outlives its rule (rule_pk becomes NULL; rule keeps the name) so history is never lost.
CREATE TABLE alarm.alarms (
    id                uuid PRIMARY KEY,
    org_id            text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    rule_pk           bigint REFERENCES alarm.rules ON DELETE SET NULL,
    rule              text NOT NULL,
    rule_display_name text NOT NULL,
    kind              smallint NOT NULL,
    source            text NOT NULL,
    site              text NOT NULL DEFAULT '',
    severity          smallint NOT NULL,
    value             double precision,
    unit              text NOT NULL DEFAULT '',
    message           text NOT NULL,
    remediation_steps text[] NOT NULL DEFAULT '{}',
    allow_manual_clear boolean NOT NULL DEFAULT false,
    raise_time        timestamptz NOT NULL,
    acknowledge_time  timestamptz,
    acknowledged_by   text NOT NULL DEFAULT '',
    shelve_until_time timestamptz,
    clear_time        timestamptz,
    cleared_by        text NOT NULL DEFAULT '',
    update_time       timestamptz NOT NULL
);
-- One open alarm per rule and source: a condition that persists updates its alarm, never floods.
CREATE UNIQUE INDEX alarms_one_open ON alarm.alarms (rule_pk, source) WHERE clear_time IS NULL;
CREATE INDEX alarms_org_raise ON alarm.alarms (org_id, raise_time DESC, id);

-- Every change of an alarm with who made it and when (the engine is "alarm-engine").
CREATE TABLE alarm.transitions (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alarm_id uuid NOT NULL REFERENCES alarm.alarms ON DELETE CASCADE,
    kind     smallint NOT NULL,
    time     timestamptz NOT NULL,
    actor    text NOT NULL,
    severity smallint NOT NULL,
    value    double precision,
    note     text NOT NULL DEFAULT ''
);
CREATE INDEX transitions_alarm ON alarm.transitions (alarm_id, seq);

-- The engine's memory per rule and source: the judged level (0 normal, 1 warning, 2 critical), since
-- when each level has been exceeded without a break (the hold time), and the time of the last sample
-- judged (its cursor into the committed telemetry).
CREATE TABLE alarm.rule_state (
    rule_pk        bigint NOT NULL REFERENCES alarm.rules ON DELETE CASCADE,
    source         text NOT NULL,
    level          smallint NOT NULL DEFAULT 0,
    warn_since     timestamptz,
    critical_since timestamptz,
    last_time      timestamptz,
    PRIMARY KEY (rule_pk, source)
);
