-- A gateway's link (is its command stream open, since when, why), with its
-- own history, so a new leader knows how long a gateway has been away.
ALTER TABLE gateways
    ADD COLUMN link_state  text NOT NULL DEFAULT 'disconnected',
    ADD COLUMN link_since  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN link_reason text NOT NULL DEFAULT 'never connected';

CREATE TABLE gateway_events (
    id              bigserial PRIMARY KEY,
    gateway_id      text NOT NULL,
    at              timestamptz NOT NULL,
    from_state      text NOT NULL,
    to_state        text NOT NULL,
    reason          text NOT NULL,
    wakes_released  integer NOT NULL
);
CREATE INDEX gateway_events_gateway_idx ON gateway_events (gateway_id, id DESC);

-- The agent's current wake waits for its gateway to reconnect; its
-- checkin_deadline_at is then when the hold gives up.
ALTER TABLE agents ADD COLUMN wake_held boolean NOT NULL DEFAULT false;
