-- Leadership replaces the session advisory lock: one row naming the leader,
-- its address (followers forward calls there) and an expiry set by the
-- database's own clock. The leader renews it well within its TTL; another
-- replica takes it only once it has expired (or was released). The epoch
-- rises with each new leader, and every commit first checks, under a key-share
-- lock on this row, that its epoch still holds and has not expired: a
-- deposed leader commits nothing, and a new leader's takeover waits for the
-- old leader's last transaction to end.
CREATE TABLE leader_lease (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch       bigint NOT NULL,
    holder      text NOT NULL DEFAULT '',
    address     text NOT NULL DEFAULT '',
    expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO leader_lease (epoch) SELECT epoch FROM writer_fence;
DROP TABLE writer_fence;

-- Followers keep a warm copy by reading events by revision; this wakes them
-- when a transaction that added events commits.
CREATE FUNCTION notify_agent_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mc_agent_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER agent_events_notify AFTER INSERT ON agent_events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_agent_events();
