-- One row naming this database. The ledger (a local cache of committed ids) records which database it
-- belongs to; a ledger that meets another database (wiped, recreated, or a different URL) is cleared
-- instead of trusted, because its ids were never committed here.
CREATE TABLE ingest_meta (
    singleton   BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    database_id TEXT        NOT NULL DEFAULT gen_random_uuid()::text,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO ingest_meta DEFAULT VALUES;
