-- Writer fencing: the writer bumps the epoch when it takes the writer lock,
-- and every commit checks (and row-locks) it, so a server that lost the lock
-- cannot commit, and a new writer waits for the old one's last commit.
CREATE TABLE writer_fence (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint NOT NULL
);
INSERT INTO writer_fence (epoch) VALUES (0);

-- The highest generation each deleted agent id reached: a re-created agent
-- starts above it, so no wake or acknowledgement of its earlier self can be
-- mistaken for its own.
CREATE TABLE agent_tombstones (
    agent_id    text PRIMARY KEY,
    generation  bigint NOT NULL
);

-- The board before the change, so a watch on a board sees agents leave it.
ALTER TABLE agent_events ADD COLUMN previous_board_id text;
