-- The receding horizon (docs/optimizer.md): a run whose inputs were assembled from the platform can be
-- re-optimised from fresh prices, forecasts and measured state; one given explicit inputs cannot.
-- The worker finds the plans in force among the assembled runs, so they get an index of their own.
ALTER TABLE optimizer.runs ADD COLUMN assembled boolean NOT NULL DEFAULT false;
CREATE INDEX runs_assembled_end ON optimizer.runs (end_time) WHERE assembled AND state = 'succeeded';
