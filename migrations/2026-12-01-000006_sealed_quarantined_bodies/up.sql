-- The raw body of a quarantined message, sealed to the sealing public key (X25519 sealed box) when
-- sealing is configured, so that an authorised person can recover it with the private key through the
-- audited `pii-ingest reveal --quarantined` and replay it once the producer is fixed. NULL without
-- sealing: then nothing raw is kept. pii_analyst's column grants (migration 4) do not include it.
ALTER TABLE quarantined_messages
    ADD COLUMN body_sealed BYTEA,
    ADD COLUMN seal_key_id VARCHAR(64);
