-- Undoes up.sql completely within this database: every grant it made is revoked (the database-level
-- CONNECT and TEMPORARY too), so nothing here keeps the roles alive and `DROP ROLE` works once no other
-- database uses them. The roles themselves are cluster-wide and may serve other databases: they are
-- left in place (drop them by hand: `DROP ROLE pii_analyst, pii_ingester;`).
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM pii_ingester, pii_analyst', current_database());
END
$$;
REVOKE ALL ON user_logins, quarantined_messages, ingest_meta, __diesel_schema_migrations FROM pii_ingester;
REVOKE ALL ON quarantined_messages FROM pii_analyst;
REVOKE ALL (id, message_id, reason, field, detail, quarantined_at, mask_key_id) ON quarantined_messages FROM pii_analyst;
REVOKE ALL (message_id) ON user_logins, quarantined_messages FROM pii_ingester;
DROP VIEW user_logins_masked;
DROP TABLE reveal_audit;
ALTER TABLE user_logins DROP COLUMN ip_sealed, DROP COLUMN device_id_sealed, DROP COLUMN seal_key_id;
