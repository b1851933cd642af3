"""The shared platform every EMMA gRPC service runs on: config, errors, database, server, tracing."""
