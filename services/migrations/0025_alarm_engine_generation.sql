-- The alarm engine keeps its judgements (levels, holds, read positions) in memory between passes and
-- stores only what changed (docs/alarms.md, "The engine"). This counter tells a replica whether what
-- it keeps is still what is stored: every pass adds one, and so does anything else that changes
-- alarm.rule_state (a manual clear re-arms its rule); a replica that finds the counter anywhere but
-- where its own last pass left it reads the judgements again.
CREATE TABLE alarm.engine_generation (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    generation bigint NOT NULL
);
INSERT INTO alarm.engine_generation VALUES (true, 0);
