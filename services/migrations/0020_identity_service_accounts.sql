-- Service accounts (docs/security.md): a login for a program with one narrow role in one organization.
-- Each is a user (identity.users: it logs in, refreshes and is revoked like anyone) that has no
-- membership, so every method that asks for a role in an organization refuses it; the few methods
-- that accept a service account's role ask this table (services.identity.service_account_role).

-- role: emma.identity.v1.ServiceAccountRole (1 recommender).
CREATE TABLE identity.service_accounts (
    user_id      text PRIMARY KEY REFERENCES identity.users ON DELETE CASCADE,
    org_id       text NOT NULL REFERENCES app.organizations ON DELETE CASCADE,
    account_id   text NOT NULL,
    role         smallint NOT NULL CHECK (role >= 1),
    display_name text NOT NULL DEFAULT '',
    created_by   text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, account_id)
);

-- The account's user goes with its row, whichever way the row goes (DeleteServiceAccount, the
-- organization deleted, plain SQL): a user left behind would keep a password that still logs in.
-- Deleting the user cascades to its sessions, and the triggers of migration 0005 tell every replica.
CREATE FUNCTION identity.service_account_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM identity.users WHERE user_id = OLD.user_id;
    RETURN NULL;
END $$;
CREATE TRIGGER service_accounts_user AFTER DELETE ON identity.service_accounts
    FOR EACH ROW EXECUTE FUNCTION identity.service_account_deleted();
