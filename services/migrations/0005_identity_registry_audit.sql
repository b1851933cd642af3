-- Identity (users, memberships, sessions, failed logins), the rest of the registry (device profiles,
-- devices, idempotency keys) and the audit log (docs/security.md).
--
-- Revocation reaches every replica through NOTIFY on the channel emma_auth, sent by triggers, so a
-- change made by any path (the API, `emma admin`, plain SQL) is announced, and only once it commits.

CREATE TABLE identity.users (
    user_id        text PRIMARY KEY,
    email          text NOT NULL,
    display_name   text NOT NULL DEFAULT '',
    password_hash  text NOT NULL,              -- argon2id, PHC string format
    disabled       boolean NOT NULL DEFAULT false,
    platform_admin boolean NOT NULL DEFAULT false,  -- may create and delete organizations
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email ON identity.users (lower(email));

-- role: 1 viewer, 2 operator, 3 admin (emma.identity.v1.Role).
CREATE TABLE identity.memberships (
    org_id      text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    user_id     text NOT NULL REFERENCES identity.users ON DELETE CASCADE,
    role        smallint NOT NULL CHECK (role BETWEEN 1 AND 3),
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON identity.memberships (user_id);

-- A login. The refresh token is 256 random bits, stored as SHA-256 (like edge keys); the previous
-- one is kept to detect a replayed refresh token, which revokes the session.
CREATE TABLE identity.sessions (
    session_id           text PRIMARY KEY,
    user_id              text NOT NULL REFERENCES identity.users ON DELETE CASCADE,
    refresh_sha256       bytea NOT NULL,
    prev_refresh_sha256  bytea,
    create_time          timestamptz NOT NULL DEFAULT now(),
    expire_time          timestamptz NOT NULL,
    revoke_time          timestamptz,
    revoke_reason        text NOT NULL DEFAULT '',
    last_refresh_time    timestamptz,
    client_address       text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON identity.sessions (user_id, create_time DESC);

-- Failed logins, one row each, counted in a sliding window per user name and per client address.
-- In the database so that every replica applies the same limit.
CREATE TABLE identity.login_failures (
    key          text NOT NULL,                -- 'user:<email>' or 'addr:<ip>'
    failure_time timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX login_failures_key_time ON identity.login_failures (key, failure_time);

-- The audit log. org_id is NULL for platform-level entries (for example a failed login of an
-- unknown user); no foreign key, so deleting an organization keeps its audit trail.
CREATE TABLE identity.audit_entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id         text,
    entry_time     timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_kind     smallint NOT NULL,           -- emma.identity.v1.ActorKind
    actor          text NOT NULL,
    method         text NOT NULL,
    resource       text NOT NULL DEFAULT '',
    request_json   text NOT NULL DEFAULT '{}',
    result_code    integer NOT NULL,
    result_message text NOT NULL DEFAULT '',
    trace_id       text NOT NULL DEFAULT '',
    client_address text NOT NULL DEFAULT ''
);
CREATE INDEX audit_entries_org ON identity.audit_entries (org_id, id DESC);

-- Audit rows cannot be changed or deleted, by the API or by SQL. The one exception is GDPR erasure:
-- inside a transaction that set emma.erasing_site to a site's resource name, the request payload of
-- that site's entries may be replaced by '{"erased":true}' and nothing else may change.
CREATE FUNCTION identity.audit_entries_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    erasing text := current_setting('emma.erasing_site', true);
BEGIN
    IF TG_OP = 'UPDATE' AND coalesce(erasing, '') <> ''
       AND (OLD.resource = erasing OR OLD.resource LIKE erasing || '/%')
       AND NEW.request_json = '{"erased":true}'
       AND (NEW.id, NEW.org_id, NEW.entry_time, NEW.actor_kind, NEW.actor, NEW.method, NEW.resource,
            NEW.result_code, NEW.result_message, NEW.trace_id, NEW.client_address)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.org_id, OLD.entry_time, OLD.actor_kind, OLD.actor, OLD.method, OLD.resource,
            OLD.result_code, OLD.result_message, OLD.trace_id, OLD.client_address)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit entries are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_entries_no_update BEFORE UPDATE OR DELETE ON identity.audit_entries
    FOR EACH ROW EXECUTE FUNCTION identity.audit_entries_immutable();
CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON identity.audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION identity.audit_entries_immutable();

-- Revocation announcements: {"t": "session"|"user"|"edge_key", "id": "..."} on channel emma_auth.
CREATE FUNCTION identity.notify_auth(kind text, id text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_notify('emma_auth', json_build_object('t', kind, 'id', id)::text) $$;

CREATE FUNCTION identity.sessions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.revoke_time IS DISTINCT FROM OLD.revoke_time
       OR NEW.expire_time IS DISTINCT FROM OLD.expire_time THEN
        PERFORM identity.notify_auth('session', OLD.session_id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER sessions_notify AFTER UPDATE OR DELETE ON identity.sessions
    FOR EACH ROW EXECUTE FUNCTION identity.sessions_changed();

CREATE FUNCTION identity.users_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.disabled IS DISTINCT FROM OLD.disabled
       OR NEW.platform_admin IS DISTINCT FROM OLD.platform_admin
       OR NEW.password_hash IS DISTINCT FROM OLD.password_hash
       OR NEW.email IS DISTINCT FROM OLD.email THEN
        PERFORM identity.notify_auth('user', OLD.user_id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER users_notify AFTER UPDATE OR DELETE ON identity.users
    FOR EACH ROW EXECUTE FUNCTION identity.users_changed();

CREATE FUNCTION identity.memberships_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM identity.notify_auth('user', CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END);
    RETURN NULL;
END;
$$;
CREATE TRIGGER memberships_notify AFTER INSERT OR UPDATE OR DELETE ON identity.memberships
    FOR EACH ROW EXECUTE FUNCTION identity.memberships_changed();

CREATE FUNCTION identity.edge_api_keys_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (NEW.revoke_time IS NOT NULL AND OLD.revoke_time IS NULL) THEN
        PERFORM identity.notify_auth('edge_key', OLD.key_id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER edge_api_keys_notify AFTER UPDATE OR DELETE ON identity.edge_api_keys
    FOR EACH ROW EXECUTE FUNCTION identity.edge_api_keys_changed();

-- Device profiles: what a model of device offers. Each channel's emma.common.v1.ChannelSpec is
-- stored serialized (spec) next to the columns the command service and SQL readers filter on.
CREATE TABLE app.device_profiles (
    org_id       text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    profile_id   text NOT NULL,
    display_name text NOT NULL DEFAULT '',
    kind         smallint NOT NULL,             -- emma.common.v1.DeviceKind
    manufacturer text NOT NULL DEFAULT '',
    model        text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, profile_id)
);

CREATE TABLE app.device_profile_channels (
    org_id     text NOT NULL,
    profile_id text NOT NULL,
    position   integer NOT NULL,
    name       text NOT NULL,
    unit       text NOT NULL DEFAULT '',
    writable   boolean NOT NULL,
    spec       bytea NOT NULL,                  -- emma.common.v1.ChannelSpec, serialized
    PRIMARY KEY (org_id, profile_id, name),
    FOREIGN KEY (org_id, profile_id) REFERENCES app.device_profiles ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE app.devices (
    edge_pk      bigint NOT NULL REFERENCES app.edges ON DELETE CASCADE,
    device_id    text NOT NULL,
    org_id       text NOT NULL,
    profile_id   text NOT NULL,
    display_name text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge_pk, device_id),
    FOREIGN KEY (org_id, profile_id) REFERENCES app.device_profiles
);
CREATE INDEX devices_profile ON app.devices (org_id, profile_id);

-- AIP-155 idempotency: the first response of a mutating request with a request_id, per actor and
-- method. Written in the mutation's own transaction; secrets are stripped from stored responses.
CREATE TABLE app.idempotency_keys (
    actor        text NOT NULL,
    method       text NOT NULL,
    request_id   text NOT NULL,
    request_hash bytea NOT NULL,
    response     bytea NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, method, request_id)
);
CREATE INDEX idempotency_keys_time ON app.idempotency_keys (create_time);
