DROP TABLE ingest_meta;
