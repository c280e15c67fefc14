-- Reversible protection for authorised people only: the raw ip and device_id sealed to a public key
-- (X25519 sealed boxes). The ingester holds only the public key; the private key never touches it.
-- NULL when sealing is not configured.
ALTER TABLE user_logins
    ADD COLUMN ip_sealed        BYTEA,
    ADD COLUMN device_id_sealed BYTEA,
    ADD COLUMN seal_key_id      VARCHAR(64);

-- Every `pii-ingest reveal`: who, when, why, which rows. Written before anything is shown.
CREATE TABLE reveal_audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    revealed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    who         TEXT        NOT NULL,
    reason      TEXT        NOT NULL CHECK (length(trim(reason)) > 0),
    selector    TEXT        NOT NULL,
    message_ids TEXT[]      NOT NULL
);

-- What analysts query: every column but the ciphertext.
CREATE VIEW user_logins_masked AS
    SELECT id, message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version,
           create_date, sent_at, ingested_at, mask_key_id
    FROM user_logins;

-- Roles are cluster-wide: created once, granted per database. They cannot log in; grant them to the
-- login users of the people and services that need them (`GRANT pii_analyst TO alice;`).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pii_analyst') THEN
        CREATE ROLE pii_analyst NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pii_ingester') THEN
        CREATE ROLE pii_ingester NOLOGIN;
    END IF;
END
$$;

-- Analysts: the masked view and the quarantine's reasons, never ciphertext.
GRANT SELECT ON user_logins_masked TO pii_analyst;
GRANT SELECT (id, message_id, reason, field, detail, quarantined_at, mask_key_id) ON quarantined_messages TO pii_analyst;

-- The ingester: insert rows, read back only the dedup key (ON CONFLICT ... RETURNING message_id),
-- read its bookkeeping, stage COPY batches in temporary tables. It cannot read ciphertext or tokens.
GRANT INSERT ON user_logins, quarantined_messages TO pii_ingester;
GRANT SELECT (message_id) ON user_logins, quarantined_messages TO pii_ingester;
GRANT SELECT ON ingest_meta, __diesel_schema_migrations TO pii_ingester;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO pii_ingester, pii_analyst', current_database());
END
$$;
