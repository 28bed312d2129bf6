-- The mass-failure brake on a gateway (suspected or draining, since when,
-- why), kept so that a restart or a new leader keeps the suspicion and its
-- bound instead of judging the silent agents one by one.
ALTER TABLE gateways
    ADD COLUMN brake_state  text,
    ADD COLUMN brake_since  timestamptz,
    ADD COLUMN brake_reason text;
