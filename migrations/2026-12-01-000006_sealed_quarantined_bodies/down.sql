ALTER TABLE quarantined_messages DROP COLUMN body_sealed, DROP COLUMN seal_key_id;
