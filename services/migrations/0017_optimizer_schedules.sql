-- The optimizer's schedules on their way to the edges (docs/optimizer.md): one row per run and edge
-- it was sent to, with the edge's answer (ScheduleAck). The schedule itself is derived from the run
-- (optimizer.runs), so only its delivery is recorded here.
CREATE TABLE optimizer.schedule_deliveries (
    run_id       uuid NOT NULL REFERENCES optimizer.runs ON DELETE CASCADE,
    edge_name    text NOT NULL,
    schedule_id  text NOT NULL,
    first_sent_time timestamptz NOT NULL,
    last_sent_time  timestamptz NOT NULL,
    sent_count   integer NOT NULL DEFAULT 1,
    ack_time     timestamptz,
    accepted     boolean,
    reason       text,
    PRIMARY KEY (run_id, edge_name)
);
CREATE INDEX schedule_deliveries_edge ON optimizer.schedule_deliveries (edge_name, schedule_id);
