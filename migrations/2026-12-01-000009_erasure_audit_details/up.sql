-- What `pii-ingest erase` records besides migration 7's columns: the quarantine records it removed
-- with the rows, and the masking key whose HMAC token the selector column holds (never a raw id:
-- `user_id:<token>`, `masked_ip:<token>`, `masked_device_id:<token>`; docs/partitions.md).
ALTER TABLE erasure_audit
    ADD COLUMN quarantine_erased BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN mask_key_id       TEXT;
