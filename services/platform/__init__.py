"""The shared platform every EMMA gRPC service runs on: config, database, migrations, server, notify.

Part of the services kernel (with errors, names, pagination, runtime): every domain may import it,
it imports no domain.
"""

# Tables of the kernel: idempotency records of mutating RPCs (run_once) and the migration ledger.
TABLES = ("app.idempotency_keys",)
