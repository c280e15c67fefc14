-- Audit records nobody can rewrite (docs/keys.md). Every `reveal`, `rekey`, `erase` and `retention` run
-- leaves a record; the records are append-only for every role but the tables' owner: no role is granted
-- UPDATE, DELETE or TRUNCATE, and triggers refuse all three even to a role that is granted them later
-- (only the owner can disable a trigger, and doing so is itself visible in the catalog and in its log).
-- `who` defaults to session_user: the login that connected, which SET ROLE does not change.

CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit records are never changed or removed; only the table owner can disable this trigger';
END
$$;

ALTER TABLE reveal_audit ALTER COLUMN who SET DEFAULT session_user;

-- `rekey`: what one run moved, what it could not open, and the rows per seal key when it ended.
CREATE TABLE rekey_audit (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rekeyed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    who              TEXT        NOT NULL DEFAULT session_user,
    new_seal_key_id  TEXT,
    new_mask_key_id  TEXT,
    resealed         BIGINT      NOT NULL,
    retokenized      BIGINT      NOT NULL,
    skipped          BIGINT      NOT NULL,
    rows_per_seal_key JSONB      NOT NULL
);

-- `erase`: rows deleted on request (the right to erasure), by which selector, how many, why.
CREATE TABLE erasure_audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    erased_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    who         TEXT        NOT NULL DEFAULT session_user,
    reason      TEXT        NOT NULL CHECK (length(trim(reason)) > 0),
    selector    TEXT        NOT NULL,
    rows_erased BIGINT      NOT NULL
);

-- `retention`: what one run removed (partitions dropped, rows and quarantine records deleted).
CREATE TABLE retention_audit (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    applied_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    who                  TEXT        NOT NULL DEFAULT session_user,
    cutoff               DATE        NOT NULL,
    partitions_dropped   TEXT[]      NOT NULL,
    rows_deleted         BIGINT      NOT NULL,
    quarantine_deleted   BIGINT      NOT NULL
);

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['reveal_audit', 'rekey_audit', 'erasure_audit', 'retention_audit'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()', t || '_no_change', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()', t || '_no_truncate', t);
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %I FROM PUBLIC', t);
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pii_revealer') THEN
        CREATE ROLE pii_revealer NOLOGIN;
    END IF;
END
$$;

-- `reveal` runs as pii_revealer (SET LOCAL ROLE): it reads the sealed values of the rows it selects and
-- appends its audit record, nothing else. Grant it to the people allowed to reveal:
-- `GRANT pii_revealer TO alice;`.
GRANT SELECT (id, message_id, user_id, masked_ip, masked_device_id, create_date, ip_sealed, device_id_sealed, seal_key_id)
    ON user_logins TO pii_revealer;
GRANT SELECT (message_id, reason, body_sealed, seal_key_id) ON quarantined_messages TO pii_revealer;
GRANT INSERT ON reveal_audit TO pii_revealer;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pii_revealer', current_database());
END
$$;
