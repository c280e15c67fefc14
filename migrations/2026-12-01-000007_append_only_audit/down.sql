-- Undoes up.sql: grants to pii_revealer revoked (the role itself is cluster-wide and may serve other
-- databases: drop it by hand with `DROP ROLE pii_revealer;`), triggers and the new audit tables dropped.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM pii_revealer', current_database());
END
$$;
REVOKE ALL ON reveal_audit FROM pii_revealer;
REVOKE ALL (message_id, reason, body_sealed, seal_key_id) ON quarantined_messages FROM pii_revealer;
REVOKE ALL (id, message_id, user_id, masked_ip, masked_device_id, create_date, ip_sealed, device_id_sealed, seal_key_id)
    ON user_logins FROM pii_revealer;
DROP TRIGGER reveal_audit_no_change ON reveal_audit;
DROP TRIGGER reveal_audit_no_truncate ON reveal_audit;
ALTER TABLE reveal_audit ALTER COLUMN who DROP DEFAULT;
DROP TABLE retention_audit, erasure_audit, rekey_audit;
DROP FUNCTION audit_refuse_change();
