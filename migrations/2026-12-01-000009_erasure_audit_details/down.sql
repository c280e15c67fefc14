ALTER TABLE erasure_audit DROP COLUMN quarantine_erased, DROP COLUMN mask_key_id;
