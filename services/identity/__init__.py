"""Identity: tenants (organizations), users, memberships and roles, sessions, edge API keys, the audit
trail, and the authentication and authorisation of every call (the interceptor and its policy)."""

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON: tuple[str, ...] = ()
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = (
    "app.organizations",
    "identity.users",
    "identity.memberships",
    "identity.sessions",
    "identity.edge_api_keys",
    "identity.login_failures",
    "identity.audit_entries",
    # Trigger functions: audit rows are immutable; changes to credentials NOTIFY every replica.
    "identity.audit_entries_immutable",
    "identity.edge_api_keys_changed",
    "identity.memberships_changed",
    "identity.notify_auth",
    "identity.sessions_changed",
    "identity.users_changed",
)
