-- Border warnings a publication cleared (docs/market.md, "Border warnings"): when a border's
-- re-evaluation deletes a stored warning, its key is kept here under the publication that cleared it,
-- so WatchPublications can announce it (Publication.cleared_warning_keys) without the NOTIFY payload
-- (under 8000 bytes) having to carry every key. Deleted with the fetch jobs' retention.
CREATE TABLE market.cleared_warnings (
    source       text NOT NULL,
    document_id  text NOT NULL,
    revision     bigint NOT NULL,
    warning_key  text NOT NULL,
    cleared_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, document_id, revision, warning_key)
);
CREATE INDEX cleared_warnings_time ON market.cleared_warnings (cleared_at);
