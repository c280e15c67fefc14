-- Back to one unpartitioned table, rows moved (as up.sql does, fine for small tables), with the
-- identity key and UNIQUE (message_id) of migrations 1 and 5, and the grants of migrations 4 and 7.
-- Fails, leaving everything as it was, if one message_id is stored under two dates (possible only for
-- bare ids from before message_claims, which up.sql did not write twice).
DROP VIEW user_logins_masked;
ALTER TABLE user_logins RENAME TO user_logins_partitioned;
ALTER TABLE user_logins_partitioned RENAME CONSTRAINT user_logins_pkey TO user_logins_partitioned_pkey;
ALTER TABLE user_logins_partitioned RENAME CONSTRAINT user_logins_message_id_create_date_key TO user_logins_partitioned_message_id_create_date_key;
ALTER INDEX user_logins_create_date_idx RENAME TO user_logins_partitioned_create_date_idx;
ALTER INDEX user_logins_masked_device_id_idx RENAME TO user_logins_partitioned_masked_device_id_idx;
ALTER SEQUENCE user_logins_id_seq RENAME TO user_logins_partitioned_id_seq;

CREATE TABLE user_logins (
    LIKE user_logins_partitioned INCLUDING COMMENTS INCLUDING STORAGE,
    CONSTRAINT user_logins_message_id_key UNIQUE (message_id)
);
ALTER TABLE user_logins ALTER COLUMN ingested_at SET DEFAULT now();
ALTER TABLE user_logins ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
ALTER TABLE user_logins ADD CONSTRAINT user_logins_pkey PRIMARY KEY (id);
CREATE INDEX user_logins_create_date_idx ON user_logins (create_date);
CREATE INDEX user_logins_masked_device_id_idx ON user_logins (masked_device_id);
INSERT INTO user_logins OVERRIDING SYSTEM VALUE SELECT * FROM user_logins_partitioned;
SELECT setval(pg_get_serial_sequence('user_logins', 'id'),
              coalesce((SELECT max(id) FROM user_logins_partitioned), 0) + 1, false);
DROP TABLE user_logins_partitioned;
DROP FUNCTION user_logins_ensure_partitions(DATE[]);
DROP FUNCTION user_logins_partitions();

CREATE VIEW user_logins_masked AS
    SELECT id, message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version,
           create_date, sent_at, ingested_at, mask_key_id
    FROM user_logins;
GRANT SELECT ON user_logins_masked TO pii_analyst;
GRANT INSERT ON user_logins TO pii_ingester;
GRANT SELECT (message_id) ON user_logins TO pii_ingester;
GRANT SELECT (id, message_id, user_id, masked_ip, masked_device_id, create_date, ip_sealed, device_id_sealed, seal_key_id)
    ON user_logins TO pii_revealer;
