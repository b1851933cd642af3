-- Commands in fewer round trips (docs/commands.md, "Latency"): each of these functions is one call,
-- so one round trip and one commit, where the same work took a transaction of several statements.
-- The state machine stays in services/command/states.py: callers pass the allowed predecessors.

-- CreateCommand's write: an earlier command with this request_id (returned, nothing else done), else
-- under the caller's advisory lock the rate and queue checks, the command, its first event and the
-- notification of the replica holding the edge. A VOLATILE plpgsql function takes a fresh snapshot
-- for every statement (READ COMMITTED), so the counts after the lock see every command this caller
-- committed before the lock was ours: the same guarantee as the lock and the statement in one
-- transaction, in one round trip. Nothing is inserted when a limit is reached (r_create_time is NULL).
CREATE FUNCTION app.create_command(
    p_id uuid, p_edge_pk bigint, p_channel text, p_value double precision, p_issued timestamptz,
    p_ttl interval, p_creator text, p_request_id text, p_request_hash text, p_fleet_dispatch uuid,
    p_traceparent text, p_replica_id text, p_rate_limit integer, p_queue_cap integer
) RETURNS TABLE (r_earlier_id uuid, r_earlier_hash text, r_rate_n bigint, r_queue_n bigint,
                 r_create_time timestamptz, r_expire_time timestamptz)
LANGUAGE plpgsql AS $$
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
    PERFORM pg_notify('emma_edge_commands', p_edge_pk::text);
    RETURN NEXT;
END
$$;

-- Delivery: up to p_limit of the edge's unexpired queued commands, oldest first, become DELIVERED.
-- Losing DELIVERED in a database crash only means delivering again, which the edge deduplicates, so
-- this commit does not wait for the disk (set_config(..., true) holds for this call's transaction).
CREATE FUNCTION app.deliver_commands(p_edge_pk bigint, p_replica_id text, p_limit integer)
RETURNS TABLE (id uuid, seq bigint, channel text, value double precision, expire_time timestamptz,
               create_time timestamptz, traceparent text, event_time timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH picked AS (
        SELECT k.id FROM app.commands k
        WHERE k.edge_pk = p_edge_pk AND k.state = 'QUEUED' AND k.expire_time > now()
        ORDER BY k.seq FOR UPDATE SKIP LOCKED LIMIT p_limit
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
    SELECT n.id, n.seq, n.channel, n.value, n.expire_time, n.create_time, n.traceparent, now()
    FROM notified n ORDER BY n.seq;
END
$$;

-- An edge's acknowledgements, in the order they arrived, in one call: each is applied only when the
-- command's state is one of that ack's allowed predecessors (p_allowed: comma-separated states), under
-- the row's lock, with its event row and notification. One row per applied ack (p_ids' 1-based
-- ordinal, the state it left, the event's time, the applied value now stored); refused acks have none.
-- p_sync false: the commit does not wait for the disk (acks whose loss a crash makes harmless).
CREATE FUNCTION app.apply_command_acks(
    p_ids uuid[], p_to_states text[], p_allowed text[], p_reasons text[], p_messages text[],
    p_applied double precision[], p_replica_id text, p_sync boolean
) RETURNS TABLE (r_ord integer, r_from_state text, r_event_time timestamptz, r_applied_value double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
BEGIN
    IF NOT p_sync THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        SELECT c.state INTO v_state FROM app.commands c WHERE c.id = p_ids[i] FOR UPDATE;
        CONTINUE WHEN NOT FOUND OR NOT (v_state = ANY (string_to_array(p_allowed[i], ',')));
        UPDATE app.commands c SET state = p_to_states[i], state_reason = p_reasons[i],
               applied_value = coalesce(p_applied[i], c.applied_value), update_time = now()
        WHERE c.id = p_ids[i]
        RETURNING c.applied_value INTO r_applied_value;
        INSERT INTO app.command_events (command_id, from_state, to_state, reason, message, replica_id)
        VALUES (p_ids[i], v_state, p_to_states[i], p_reasons[i], p_messages[i], p_replica_id);
        PERFORM pg_notify('emma_command_events', p_ids[i]::text);
        r_ord := i;
        r_from_state := v_state;
        r_event_time := now();
        RETURN NEXT;
    END LOOP;
END
$$;
