-- One fate per message (docs/exactly-once.md). A message's dedup key is claimed here once, in the same
-- transaction as its row in user_logins or its record in quarantined_messages; a transaction writes a
-- row or a record only for the keys its own claim inserted. So a message can never be both a row and a
-- record, whichever validation config judged it, and however user_logins is partitioned later.
--
-- dedup_key is namespaced by origin: `sqs:<MessageId>`, `key:<producer idempotency key>` (archive lines
-- are keyed `key:line:<HMAC of the line>:<occurrence>`, as `seed --file` sends them), `conflict:...`.
-- body_fingerprint is the hex HMAC-SHA256 of the body under the masking key named by
-- fingerprint_key_id (never the body): the same key with another body is a key conflict, not a
-- duplicate. Both are NULL for claims backfilled from rows written before fingerprints were kept.
CREATE TABLE message_claims (
    dedup_key          VARCHAR(256) PRIMARY KEY,
    body_fingerprint   CHAR(64),
    fingerprint_key_id VARCHAR(64),
    fate               VARCHAR(16)  NOT NULL CHECK (fate IN ('row', 'quarantined', 'key_conflict')),
    create_date        DATE         NOT NULL,
    claimed_at         TIMESTAMPTZ  NOT NULL DEFAULT now()
);

-- Namespaced keys are longer than the bare ids of before (`key:` + a 128-character producer key).
-- Raising a varchar limit rewrites neither the table nor its indexes.
-- The analysts' view reads the column, so it is recreated around the change (as in migration 4).
DROP VIEW user_logins_masked;
ALTER TABLE user_logins ALTER COLUMN message_id TYPE VARCHAR(256);
ALTER TABLE quarantined_messages ALTER COLUMN message_id TYPE VARCHAR(256);
CREATE VIEW user_logins_masked AS
    SELECT id, message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version,
           create_date, sent_at, ingested_at, mask_key_id
    FROM user_logins;
GRANT SELECT ON user_logins_masked TO pii_analyst;

-- Existing rows and records keep their bare ids; their claims get the namespaced form the ingester
-- now derives for the same message: a canonical UUID was an SQS MessageId, anything else a producer
-- key (including the `file:` keys of `seed --file` and old replays).
INSERT INTO message_claims (dedup_key, body_fingerprint, fingerprint_key_id, fate, create_date, claimed_at)
SELECT CASE WHEN message_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            THEN 'sqs:' || message_id ELSE 'key:' || message_id END,
       NULL, NULL, 'row', create_date, ingested_at
FROM user_logins
ON CONFLICT DO NOTHING;

INSERT INTO message_claims (dedup_key, body_fingerprint, fingerprint_key_id, fate, create_date, claimed_at)
SELECT CASE WHEN message_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            THEN 'sqs:' || message_id ELSE 'key:' || message_id END,
       body_hmac, mask_key_id, 'quarantined', (sent_at AT TIME ZONE 'UTC')::date, quarantined_at
FROM quarantined_messages
ON CONFLICT DO NOTHING;

GRANT SELECT, INSERT ON message_claims TO pii_ingester;
GRANT SELECT (dedup_key, fate, create_date, claimed_at) ON message_claims TO pii_analyst;
