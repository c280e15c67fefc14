REVOKE ALL ON user_logins, quarantined_messages, ingest_meta, __diesel_schema_migrations FROM pii_ingester;
REVOKE ALL ON quarantined_messages FROM pii_analyst;
DROP VIEW user_logins_masked;
DROP TABLE reveal_audit;
ALTER TABLE user_logins DROP COLUMN ip_sealed, DROP COLUMN device_id_sealed, DROP COLUMN seal_key_id;
-- The roles are cluster-wide and may serve other databases: they are left in place.
