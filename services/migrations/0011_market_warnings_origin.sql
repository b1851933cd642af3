-- Which publication last raised or changed a border warning (docs/market.md, "Border warnings"):
-- WatchPublications reads a publication's warnings by it, so a NOTIFY payload (under 8000 bytes)
-- never has to carry them. NULL for a warning stored by hand (save_warnings without an origin).
ALTER TABLE market.warnings
    ADD COLUMN source      text,
    ADD COLUMN document_id text,
    ADD COLUMN revision    bigint;
CREATE INDEX warnings_origin ON market.warnings (source, document_id, revision);
