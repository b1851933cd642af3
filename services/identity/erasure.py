"""Identity's part of a site's GDPR erasure: the request payloads of the site's audit entries.

Audit rows are immutable (identity.audit_entries_immutable); the one exception is this: inside a
transaction that set emma.erasing_site to the site's resource name, the payload of that site's
entries may be replaced by ERASED_JSON and nothing else may change.
"""

from __future__ import annotations

from services.platform.migrations import Conn

ERASED_JSON = '{"erased":true}'


async def erase_audit_requests(conn: Conn, org: str, resource: str) -> None:
    """Replace the request payloads of the audit entries of `resource` and everything under it."""
    await conn.execute("SELECT set_config('emma.erasing_site', $1, true)", resource)
    await conn.execute(
        """UPDATE identity.audit_entries SET request_json = $3
           WHERE org_id = $1 AND (resource = $2 OR resource LIKE $2 || '/%') AND request_json <> $3""",
        org,
        resource,
        ERASED_JSON,
    )
    await conn.execute("SELECT set_config('emma.erasing_site', '', true)")
