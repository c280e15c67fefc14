-- One row per login event, written exactly once per SQS message.
-- `message_id` is the dedup key: the SQS MessageId, or the producer's idempotency key when the message
-- carried one (see docs/exactly-once.md). The unique constraint is what makes ingestion exactly-once;
-- every insert uses ON CONFLICT (message_id) DO NOTHING.
CREATE TABLE user_logins (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       VARCHAR(128) NOT NULL,
    user_id          VARCHAR(128) NOT NULL,
    device_type      VARCHAR(32)  NOT NULL,
    masked_ip        CHAR(64)     NOT NULL,
    masked_device_id CHAR(64)     NOT NULL,
    locale           VARCHAR(32),
    app_version      VARCHAR(32)  NOT NULL,
    create_date      DATE         NOT NULL,
    sent_at          TIMESTAMPTZ  NOT NULL,
    ingested_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    mask_key_id      VARCHAR(64)  NOT NULL,
    CONSTRAINT user_logins_message_id_key UNIQUE (message_id)
);

CREATE INDEX user_logins_create_date_idx ON user_logins (create_date);
CREATE INDEX user_logins_masked_device_id_idx ON user_logins (masked_device_id);

COMMENT ON COLUMN user_logins.masked_ip IS 'hex HMAC-SHA256 of the raw ip under the key named by mask_key_id';
COMMENT ON COLUMN user_logins.masked_device_id IS 'hex HMAC-SHA256 of the raw device_id under the key named by mask_key_id';
COMMENT ON COLUMN user_logins.create_date IS 'UTC date of the SQS SentTimestamp: identical for every redelivery';
