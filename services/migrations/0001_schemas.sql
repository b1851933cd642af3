-- The three logical stores (docs/architecture.md, Storage), as schemas of one database by default.
-- identity: users, sessions, API keys, audit; app: registry, commands, schedules; telemetry: series
-- and samples. Later migrations fill them; keeping them apart lets a deployment move one to its own
-- server without renaming anything.
CREATE SCHEMA IF NOT EXISTS identity;
CREATE SCHEMA IF NOT EXISTS app;
CREATE SCHEMA IF NOT EXISTS telemetry;
