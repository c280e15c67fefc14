REVOKE ALL ON message_claims FROM pii_ingester, pii_analyst;
DROP TABLE message_claims;
-- Fails if a namespaced id longer than 128 characters was stored since: such rows must be dealt with
-- (they exist only with producer keys of 125 characters or more) before going back.
-- The analysts' view reads the column, so it is recreated around the change (as in migration 4).
DROP VIEW user_logins_masked;
ALTER TABLE user_logins ALTER COLUMN message_id TYPE VARCHAR(128);
ALTER TABLE quarantined_messages ALTER COLUMN message_id TYPE VARCHAR(128);
CREATE VIEW user_logins_masked AS
    SELECT id, message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version,
           create_date, sent_at, ingested_at, mask_key_id
    FROM user_logins;
GRANT SELECT ON user_logins_masked TO pii_analyst;
