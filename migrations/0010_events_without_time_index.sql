-- The event log's index on `at` goes: compaction, its one reader, finds
-- where to cut by walking the primary key in revision order instead (the
-- first event at or after the cutoff; store/postgres.rs, `compact`). Every
-- committed transition inserted an entry into it, in the writer's serial
-- path: the database's sessions spent about 1.5-10 us less CPU per
-- Provision without it (scripts/provision-cost, BENCHMARKS.md, durable
-- transitions).
DROP INDEX IF EXISTS agent_events_at_idx;
