// @generated automatically by Diesel CLI.

diesel::table! {
    erasure_audit (id) {
        id -> Int8,
        erased_at -> Timestamptz,
        who -> Text,
        reason -> Text,
        selector -> Text,
        rows_erased -> Int8,
        quarantine_erased -> Int8,
        mask_key_id -> Nullable<Text>,
    }
}

diesel::table! {
    ingest_meta (singleton) {
        singleton -> Bool,
        database_id -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    message_claims (dedup_key) {
        #[max_length = 256]
        dedup_key -> Varchar,
        #[max_length = 64]
        body_fingerprint -> Nullable<Bpchar>,
        #[max_length = 64]
        fingerprint_key_id -> Nullable<Varchar>,
        #[max_length = 16]
        fate -> Varchar,
        create_date -> Date,
        claimed_at -> Timestamptz,
    }
}

diesel::table! {
    quarantined_messages (id) {
        id -> Int8,
        #[max_length = 256]
        message_id -> Varchar,
        #[max_length = 32]
        reason -> Varchar,
        #[max_length = 64]
        field -> Nullable<Varchar>,
        detail -> Text,
        masked_body -> Nullable<Text>,
        #[max_length = 64]
        body_hmac -> Bpchar,
        body_bytes -> Int4,
        receive_count -> Int4,
        sent_at -> Timestamptz,
        quarantined_at -> Timestamptz,
        #[max_length = 64]
        mask_key_id -> Varchar,
        body_sealed -> Nullable<Bytea>,
        #[max_length = 64]
        seal_key_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    rekey_audit (id) {
        id -> Int8,
        rekeyed_at -> Timestamptz,
        who -> Text,
        new_seal_key_id -> Nullable<Text>,
        new_mask_key_id -> Nullable<Text>,
        resealed -> Int8,
        retokenized -> Int8,
        skipped -> Int8,
        rows_per_seal_key -> Jsonb,
    }
}

diesel::table! {
    retention_audit (id) {
        id -> Int8,
        applied_at -> Timestamptz,
        who -> Text,
        cutoff -> Date,
        partitions_dropped -> Array<Nullable<Text>>,
        rows_deleted -> Int8,
        quarantine_deleted -> Int8,
    }
}

diesel::table! {
    reveal_audit (id) {
        id -> Int8,
        revealed_at -> Timestamptz,
        who -> Text,
        reason -> Text,
        selector -> Text,
        message_ids -> Array<Nullable<Text>>,
    }
}

diesel::table! {
    user_logins (id) {
        id -> Int8,
        #[max_length = 256]
        message_id -> Varchar,
        #[max_length = 128]
        user_id -> Varchar,
        #[max_length = 32]
        device_type -> Varchar,
        #[max_length = 64]
        masked_ip -> Bpchar,
        #[max_length = 64]
        masked_device_id -> Bpchar,
        #[max_length = 32]
        locale -> Nullable<Varchar>,
        #[max_length = 32]
        app_version -> Varchar,
        create_date -> Date,
        sent_at -> Timestamptz,
        ingested_at -> Timestamptz,
        #[max_length = 64]
        mask_key_id -> Varchar,
        ip_sealed -> Nullable<Bytea>,
        device_id_sealed -> Nullable<Bytea>,
        #[max_length = 64]
        seal_key_id -> Nullable<Varchar>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    erasure_audit,
    ingest_meta,
    message_claims,
    quarantined_messages,
    rekey_audit,
    retention_audit,
    reveal_audit,
    user_logins,
);
