-- Template rollouts. A rollout is one document (its selection, limits, state
-- and every agent's progress), rewritten in the same transaction as the
-- agent transitions that move it, so a restart or a new leader resumes it
-- exactly where it was.
CREATE TABLE rollouts (
    id          text PRIMARY KEY,
    state       text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    body        jsonb NOT NULL
);

-- The rollout that caused a transition, shown in the agent's history.
ALTER TABLE agent_events ADD COLUMN rollout_id text;
