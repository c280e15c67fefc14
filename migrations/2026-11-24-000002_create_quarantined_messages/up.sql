-- Every message that could not become a login row: one record per message, never raw PII.
-- `masked_body` is the JSON body with `ip` and `device_id` replaced by their HMAC tokens; a body that is
-- not a JSON object is not stored at all (its PII cannot be located), only its HMAC and length.
CREATE TABLE quarantined_messages (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id     VARCHAR(128) NOT NULL,
    reason         VARCHAR(32)  NOT NULL,
    field          VARCHAR(64),
    detail         TEXT         NOT NULL,
    masked_body    TEXT,
    body_hmac      CHAR(64)     NOT NULL,
    body_bytes     INTEGER      NOT NULL,
    receive_count  INTEGER      NOT NULL,
    sent_at        TIMESTAMPTZ  NOT NULL,
    quarantined_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    mask_key_id    VARCHAR(64)  NOT NULL,
    CONSTRAINT quarantined_messages_message_id_key UNIQUE (message_id)
);

CREATE INDEX quarantined_messages_reason_idx ON quarantined_messages (reason);
