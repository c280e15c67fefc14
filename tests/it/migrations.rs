//! Migrations are reversible: every `down.sql` undoes its `up.sql`, so reverting them all leaves only
//! diesel's own bookkeeping table, nothing in the database keeps the roles from being dropped, and
//! the migrations apply again on the reverted database.

use diesel::QueryableByName;
use diesel::migration::MigrationSource;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::MigrationHarness;
use pii_ingest::db::{self, MIGRATIONS};

use crate::support::TestDb;

/// What the migrations can leave behind in the schema, one `kind name` per line, sorted:
/// relations (tables, views, indexes, sequences), functions, free-standing types, extensions.
const SCHEMA_OBJECTS: &str = "
    SELECT string_agg(object, E'\\n' ORDER BY object) AS text FROM (
        SELECT 'relation ' || relname || ' (' || relkind::text || ')' AS object
            FROM pg_class WHERE relnamespace = 'public'::regnamespace
        UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
        UNION ALL SELECT 'type ' || typname FROM pg_type
            WHERE typnamespace = 'public'::regnamespace AND typrelid = 0 AND typelem = 0
        UNION ALL SELECT 'extension ' || extname FROM pg_extension WHERE extname <> 'plpgsql'
    ) objects";

/// What keeps `DROP ROLE pii_analyst, pii_ingester, pii_revealer` from working because of this database: any
/// privilege or ownership they hold on it or in it (`pg_shdepend`, what DROP ROLE checks).
const ROLE_DEPENDENCIES: &str = "
    SELECT coalesce(string_agg(r.rolname || ' ' || d.classid::regclass::text || ' ' || d.deptype::text, E'\\n'), '') AS text
    FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
    WHERE r.rolname IN ('pii_analyst', 'pii_ingester', 'pii_revealer')
      AND (d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           OR (d.classid = 'pg_database'::regclass
               AND d.objid = (SELECT oid FROM pg_database WHERE datname = current_database())))";

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    text: Option<String>,
}

async fn text(db: &TestDb, sql: &str) -> String {
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let rows: Vec<Text> = diesel::sql_query(sql).load(&mut conn).await.unwrap();
    rows.into_iter().next().and_then(|row| row.text).unwrap_or_default()
}

/// Reverts every applied migration, newest first (what `diesel migration revert --all` does).
async fn revert_all(url: &str) -> Vec<String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url).unwrap();
        let reverted = conn.revert_all_migrations(MIGRATIONS).expect("every down.sql runs");
        reverted.iter().map(ToString::to_string).collect()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn reverting_every_migration_leaves_nothing_behind_and_they_apply_again() {
    let db = TestDb::new().await;
    let migrated = text(&db, SCHEMA_OBJECTS).await;
    assert!(migrated.contains("relation user_logins (p)") && migrated.contains("relation user_logins_masked (v)"));
    assert!(!text(&db, ROLE_DEPENDENCIES).await.is_empty(), "the migrations grant the roles privileges here");

    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS).unwrap().len();
    let reverted = revert_all(&db.url).await;
    assert_eq!(reverted.len(), embedded, "{reverted:?}");
    assert_eq!(
        text(&db, SCHEMA_OBJECTS).await,
        "relation __diesel_schema_migrations (r)\nrelation __diesel_schema_migrations_pkey (i)",
        "only diesel's bookkeeping table may remain"
    );
    assert_eq!(text(&db, ROLE_DEPENDENCIES).await, "", "privileges left that would stop DROP ROLE");

    let applied = db::migrate(&db.url).await.expect("the migrations apply again after a full revert");
    assert_eq!(applied.len(), embedded, "{applied:?}");
    assert_eq!(text(&db, SCHEMA_OBJECTS).await, migrated, "up again gives the same schema");
}

#[tokio::test]
async fn an_existing_database_is_found_without_the_createdb_privilege() {
    // A managed database's application role usually may not CREATE DATABASE: `migrate` once tried it
    // anyway and failed with "permission denied" on a database that was already there (and the server
    // logged a failed CREATE on every `docker compose up`).
    let db = TestDb::new().await;
    let role = format!("pii_it_nocreatedb_{}", uuid::Uuid::new_v4().simple());
    let url = db.url.replacen("://postgres@", &format!("://{role}@"), 1);
    assert_ne!(url, db.url, "the test server's URL connects as postgres@");
    TestDb::execute(&db, &format!("CREATE ROLE {role} LOGIN NOCREATEDB")).await; // not RunQueryDsl::execute
    let found = db::create_database_if_missing(&url).await;
    TestDb::execute(&db, &format!("DROP ROLE {role}")).await;
    assert!(matches!(found, Ok(false)), "{found:?}");
}
