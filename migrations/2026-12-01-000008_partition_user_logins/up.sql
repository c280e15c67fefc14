-- user_logins range-partitioned by create_date, one partition a month (docs/partitions.md). The
-- dedup key becomes UNIQUE (message_id, create_date): a partitioned table can only enforce keys that
-- contain its partition key. That is safe because create_date is the UTC date of SentTimestamp,
-- identical on every redelivery, and because exactly-once never rested on this index: the one fate of
-- a message is its claim in message_claims (migration 5), one unpartitioned table across all months.
--
-- Partitions are made by user_logins_ensure_partitions(), which the ingester calls ahead of time
-- (current month and the next ones, at startup and daily) and for every month a batch holds that it
-- has not seen yet, in the write transaction; there is no DEFAULT partition (why: docs/partitions.md).
--
-- Rows are moved by this migration, fine for small tables. A large installation partitions by hand
-- first (docs/partitions.md, no copy); this migration then finds user_logins partitioned and only
-- adds the functions and grants.

-- The partitions of user_logins and the dates each accepts: [from_date, to_date), -infinity/infinity
-- for MINVALUE/MAXVALUE, both NULL for a DEFAULT partition. Parsed from the catalog's bound text,
-- which Postgres prints in one fixed form for range partitions on a date.
CREATE OR REPLACE FUNCTION user_logins_partitions()
    RETURNS TABLE (name TEXT, from_date DATE, to_date DATE)
    LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT c.relname::text,
           CASE WHEN b LIKE 'FOR VALUES FROM (MINVALUE)%' THEN '-infinity'::date
                ELSE substring(b FROM 'FROM \(''([^'']+)''\)')::date END,
           CASE WHEN b LIKE '%TO (MAXVALUE)' THEN 'infinity'::date
                ELSE substring(b FROM 'TO \(''([^'']+)''\)')::date END
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b
    WHERE i.inhparent = 'user_logins'::regclass
$$;

-- Creates a partition for each of `days` that no partition accepts yet: the day's month, clipped to
-- the partitions around it (a hand-made legacy partition may end mid-month). Returns how many it
-- created. SECURITY DEFINER: only the table's owner may add partitions, and the ingester role
-- (pii_ingester) is granted EXECUTE on this function, not ownership. An advisory lock serialises
-- creators, so two writers missing the same month create it once; creating takes an ACCESS
-- EXCLUSIVE lock on user_logins until the caller's transaction ends (once a month, ahead of time).
CREATE OR REPLACE FUNCTION user_logins_ensure_partitions(days DATE[])
    RETURNS INTEGER
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    wanted DATE;
    lo DATE;
    hi DATE;
    locked BOOLEAN := false;
    created INTEGER := 0;
BEGIN
    FOR wanted IN SELECT DISTINCT d FROM unnest(days) AS d WHERE d IS NOT NULL AND d <> 'infinity' AND d <> '-infinity' ORDER BY d LOOP
        CONTINUE WHEN EXISTS (SELECT FROM user_logins_partitions() p WHERE wanted >= p.from_date AND wanted < p.to_date);
        IF NOT locked THEN
            PERFORM pg_advisory_xact_lock(hashtext('user_logins_ensure_partitions'));
            locked := true;
            CONTINUE WHEN EXISTS (SELECT FROM user_logins_partitions() p WHERE wanted >= p.from_date AND wanted < p.to_date);
        END IF;
        lo := greatest(date_trunc('month', wanted)::date,
                       (SELECT max(p.to_date) FROM user_logins_partitions() p WHERE p.to_date <= wanted));
        hi := least((date_trunc('month', wanted) + interval '1 month')::date,
                    (SELECT min(p.from_date) FROM user_logins_partitions() p WHERE p.from_date > wanted));
        EXECUTE format('CREATE TABLE %I PARTITION OF user_logins FOR VALUES FROM (%L) TO (%L)',
                       'user_logins_' || to_char(lo, CASE WHEN to_char(lo, 'DD') = '01' THEN 'YYYY_MM' ELSE 'YYYY_MM_DD' END),
                       lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;
REVOKE EXECUTE ON FUNCTION user_logins_partitions(), user_logins_ensure_partitions(DATE[]) FROM PUBLIC;

DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'user_logins'::regclass) = 'p' THEN
        RAISE NOTICE 'user_logins is partitioned already (docs/partitions.md): no rows moved';
        RETURN;
    END IF;
    -- The old table and everything named after it step aside; the new one takes the names.
    DROP VIEW user_logins_masked;
    ALTER TABLE user_logins RENAME TO user_logins_unpartitioned;
    ALTER TABLE user_logins_unpartitioned RENAME CONSTRAINT user_logins_pkey TO user_logins_unpartitioned_pkey;
    ALTER TABLE user_logins_unpartitioned RENAME CONSTRAINT user_logins_message_id_key TO user_logins_unpartitioned_message_id_key;
    ALTER INDEX user_logins_create_date_idx RENAME TO user_logins_unpartitioned_create_date_idx;
    ALTER INDEX user_logins_masked_device_id_idx RENAME TO user_logins_unpartitioned_masked_device_id_idx;
    ALTER SEQUENCE user_logins_id_seq RENAME TO user_logins_unpartitioned_id_seq;

    -- `id` stays unique by coming from one sequence, but is no longer a key on its own: Postgres 15
    -- has no identity columns on partitioned tables, and a key must contain create_date.
    CREATE TABLE user_logins (
        LIKE user_logins_unpartitioned INCLUDING DEFAULTS INCLUDING COMMENTS INCLUDING STORAGE,
        CONSTRAINT user_logins_pkey PRIMARY KEY (id, create_date),
        CONSTRAINT user_logins_message_id_create_date_key UNIQUE (message_id, create_date)
    ) PARTITION BY RANGE (create_date);
    CREATE SEQUENCE user_logins_id_seq OWNED BY user_logins.id;
    ALTER TABLE user_logins ALTER COLUMN id SET DEFAULT nextval('user_logins_id_seq');
    CREATE INDEX user_logins_create_date_idx ON user_logins (create_date);
    CREATE INDEX user_logins_masked_device_id_idx ON user_logins (masked_device_id);

    PERFORM user_logins_ensure_partitions(ARRAY(SELECT DISTINCT create_date FROM user_logins_unpartitioned));
    INSERT INTO user_logins SELECT * FROM user_logins_unpartitioned;
    PERFORM setval('user_logins_id_seq', coalesce((SELECT max(id) FROM user_logins_unpartitioned), 0) + 1, false);
    DROP TABLE user_logins_unpartitioned;
END
$$;

-- This month and the next two exist from the start.
SELECT user_logins_ensure_partitions(ARRAY[current_date, (current_date + interval '1 month')::date,
                                           (current_date + interval '2 months')::date]);

-- What migrations 4 and 7 granted on the old table, on the new one (privileges are checked on the
-- parent, not on the partitions), plus the sequence that replaced the identity and the function that
-- adds partitions.
CREATE OR REPLACE VIEW user_logins_masked AS
    SELECT id, message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version,
           create_date, sent_at, ingested_at, mask_key_id
    FROM user_logins;
GRANT SELECT ON user_logins_masked TO pii_analyst;
GRANT INSERT ON user_logins TO pii_ingester;
GRANT SELECT (message_id) ON user_logins TO pii_ingester;
GRANT USAGE ON SEQUENCE user_logins_id_seq TO pii_ingester;
GRANT EXECUTE ON FUNCTION user_logins_ensure_partitions(DATE[]) TO pii_ingester;
GRANT SELECT (id, message_id, user_id, masked_ip, masked_device_id, create_date, ip_sealed, device_id_sealed, seal_key_id)
    ON user_logins TO pii_revealer;
