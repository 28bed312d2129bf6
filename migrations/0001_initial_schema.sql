-- Agents, gateways, and the event history that every transition commits to.

CREATE TABLE gateways (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    -- SHA-256 of the gateway token; the token itself is never stored.
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL
);

CREATE TABLE agents (
    id                         text PRIMARY KEY,
    name                       text NOT NULL,
    gateway_id                 text NOT NULL,
    board_id                   text,
    role                       text NOT NULL,
    status                     text NOT NULL,
    generation                 bigint NOT NULL,
    wake_attempts              integer NOT NULL,
    last_wake_sent_at          timestamptz,
    checkin_deadline_at        timestamptz,
    last_seen_at               timestamptz,
    lease_expires_at           timestamptz,
    last_provision_error       text,
    offline_reason             text,
    desired_template_version   text NOT NULL,
    reported_template_version  text NOT NULL,
    created_at                 timestamptz NOT NULL,
    updated_at                 timestamptz NOT NULL,
    -- The revision of the last event about this agent.
    revision                   bigint NOT NULL,
    -- SHA-256 of the agent token; the token itself is never stored.
    token_hash                 bytea NOT NULL UNIQUE
);

CREATE INDEX agents_gateway_idx ON agents (gateway_id);

-- One row per committed transition. The revision is one sequence across the
-- whole service, assigned by the single writer.
CREATE TABLE agent_events (
    revision         bigint PRIMARY KEY,
    agent_id         text NOT NULL,
    kind             text NOT NULL,
    reason           text NOT NULL,
    previous_status  text,
    attempt          integer NOT NULL,
    error            text,
    at               timestamptz NOT NULL,
    -- The agent's full state after the change (before it, for deletions).
    agent            jsonb NOT NULL
);

CREATE INDEX agent_events_agent_idx ON agent_events (agent_id, revision DESC);
CREATE INDEX agent_events_at_idx ON agent_events (at);

-- Retire commands a gateway has not yet acknowledged; resent on connect.
CREATE TABLE pending_retires (
    gateway_id  text NOT NULL,
    agent_id    text NOT NULL,
    generation  bigint NOT NULL,
    PRIMARY KEY (gateway_id, agent_id, generation)
);

-- Events at or below this revision have been compacted away.
CREATE TABLE event_history (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    compacted_revision  bigint NOT NULL
);
INSERT INTO event_history (compacted_revision) VALUES (0);
