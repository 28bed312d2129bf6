-- A follower keeps a warm copy of the agents, so that taking over reads only
-- what changed since its last position. Commits name every agent they write
-- in an event; lease checkpoints write no event, so each one takes the next
-- generation of this clock (its row lock is held until commit: generations
-- become visible in order) and stamps the rows it wrote with it. A follower
-- reads the rows stamped after the last generation it saw.
CREATE TABLE lease_clock (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  bigint NOT NULL
);
INSERT INTO lease_clock (generation) VALUES (0);

-- No index: a follower reads it only when the clock moved (once per
-- checkpoint), and an indexed column would make every checkpoint's update a
-- non-HOT one.
ALTER TABLE agents ADD COLUMN lease_checkpoint bigint NOT NULL DEFAULT 0;
