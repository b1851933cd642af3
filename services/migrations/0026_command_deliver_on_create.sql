-- CreateCommand delivers at once when its replica holds the edge's stream (docs/commands.md,
-- "Routing and delivery"): the create call of migration 0023 with a delivery limit. With a limit above
-- zero the new command and the edge's older queued ones (oldest first, up to the limit) become
-- DELIVERED in the same transaction, exactly as app.deliver_commands would mark them, and are returned
-- for the caller to send; the separate delivery call (and the wasted one each replica's listener made
-- on the notification of a command already delivered) is gone. The commit waits for the disk as a
-- create always did: it is the command's durability.
--
-- emma_edge_commands is notified only when the new command is still QUEUED (no limit, a limit reached,
-- or an older command locked by another delivery): only then has any replica anything to deliver.
-- Returns one row per delivered command (d_* columns, in seq order), each repeating the create result;
-- a single row with the d_* columns NULL when nothing was delivered.
CREATE FUNCTION app.create_command(
    p_id uuid, p_edge_pk bigint, p_channel text, p_value double precision, p_issued timestamptz,
    p_ttl interval, p_creator text, p_request_id text, p_request_hash text, p_fleet_dispatch uuid,
    p_traceparent text, p_replica_id text, p_rate_limit integer, p_queue_cap integer, p_deliver_limit integer
) RETURNS TABLE (r_earlier_id uuid, r_earlier_hash text, r_rate_n bigint, r_queue_n bigint,
                 r_create_time timestamptz, r_expire_time timestamptz,
                 d_id uuid, d_seq bigint, d_channel text, d_value double precision, d_expire_time timestamptz,
                 d_create_time timestamptz, d_traceparent text, d_event_time timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_delivered boolean := false;
BEGIN
    SELECT c.id, c.request_hash INTO r_earlier_id, r_earlier_hash
    FROM app.commands c WHERE c.edge_pk = p_edge_pk AND c.request_id = p_request_id;
    IF FOUND THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- Serialise this caller's creations so the rate limit counts what concurrent requests commit.
    PERFORM pg_advisory_xact_lock(hashtext(p_creator));
    SELECT count(*) INTO r_rate_n FROM app.commands c
    WHERE c.creator = p_creator AND c.create_time > now() - interval '1 second';
    SELECT count(*) INTO r_queue_n FROM (
        SELECT 1 FROM app.commands c WHERE c.edge_pk = p_edge_pk AND c.state = 'QUEUED' LIMIT p_queue_cap
    ) q;
    IF r_rate_n >= p_rate_limit OR r_queue_n >= p_queue_cap THEN
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO app.commands AS c (id, edge_pk, channel, value, state, issued_time, expire_time, creator,
                                   request_id, request_hash, fleet_dispatch, traceparent)
    VALUES (p_id, p_edge_pk, p_channel, p_value, 'QUEUED', p_issued, now() + p_ttl, p_creator, p_request_id,
            p_request_hash, p_fleet_dispatch, p_traceparent)
    RETURNING c.create_time, c.expire_time INTO r_create_time, r_expire_time;
    INSERT INTO app.command_events (command_id, from_state, to_state, replica_id)
    VALUES (p_id, '', 'QUEUED', p_replica_id);
    IF p_deliver_limit > 0 THEN
        FOR d_id, d_seq, d_channel, d_value, d_expire_time, d_create_time, d_traceparent IN
            WITH picked AS (
                SELECT k.id FROM app.commands k
                WHERE k.edge_pk = p_edge_pk AND k.state = 'QUEUED' AND k.expire_time > now()
                ORDER BY k.seq FOR UPDATE SKIP LOCKED LIMIT p_deliver_limit
            ),
            upd AS (
                UPDATE app.commands c SET state = 'DELIVERED', delivered_time = now(), update_time = now()
                FROM picked WHERE c.id = picked.id
                RETURNING c.id, c.seq, c.channel, c.value, c.expire_time, c.create_time, c.traceparent
            ),
            ev AS (
                INSERT INTO app.command_events (command_id, from_state, to_state, replica_id)
                SELECT u.id, 'QUEUED', 'DELIVERED', p_replica_id FROM upd u
            ),
            notified AS (
                SELECT u.*, pg_notify('emma_command_events', u.id::text) FROM upd u
            )
            SELECT n.id, n.seq, n.channel, n.value, n.expire_time, n.create_time, n.traceparent
            FROM notified n ORDER BY n.seq
        LOOP
            d_event_time := now();
            v_delivered := v_delivered OR d_id = p_id;
            RETURN NEXT;
        END LOOP;
    END IF;
    IF NOT v_delivered THEN
        PERFORM pg_notify('emma_edge_commands', p_edge_pk::text);
    END IF;
    IF d_id IS NULL THEN
        RETURN NEXT;
    END IF;
END
$$;

-- The call of migration 0023 is this one without delivery (kept for replicas still calling it).
CREATE OR REPLACE FUNCTION app.create_command(
    p_id uuid, p_edge_pk bigint, p_channel text, p_value double precision, p_issued timestamptz,
    p_ttl interval, p_creator text, p_request_id text, p_request_hash text, p_fleet_dispatch uuid,
    p_traceparent text, p_replica_id text, p_rate_limit integer, p_queue_cap integer
) RETURNS TABLE (r_earlier_id uuid, r_earlier_hash text, r_rate_n bigint, r_queue_n bigint,
                 r_create_time timestamptz, r_expire_time timestamptz)
LANGUAGE sql AS $$
    SELECT c.r_earlier_id, c.r_earlier_hash, c.r_rate_n, c.r_queue_n, c.r_create_time, c.r_expire_time
    FROM app.create_command(p_id, p_edge_pk, p_channel, p_value, p_issued, p_ttl, p_creator, p_request_id,
                            p_request_hash, p_fleet_dispatch, p_traceparent, p_replica_id, p_rate_limit,
                            p_queue_cap, 0) c
$$;
