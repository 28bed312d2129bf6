-- A template sync a gateway was asked for and has not acknowledged, with
-- the command id it goes out under: a restart or a new leader sends it
-- again, same id, until the gateway answers. At most one per gateway (a
-- newer request replaces an unanswered older one).
CREATE TABLE pending_template_syncs (
    gateway_id        text PRIMARY KEY REFERENCES gateways (id),
    command_id        bigint NOT NULL,
    template_version  text NOT NULL,
    requested_at      timestamptz NOT NULL
);
