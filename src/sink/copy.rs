//! The COPY sink: the same contract as [`super::PgSink`] (claim the keys, write only what
//! this transaction claimed, one durable transaction), at near-COPY speed. A batch of at least
//! [`UNNEST_BELOW`] rows and records goes by COPY:
//! 1. `BEGIN`; then, in one round trip, `SET LOCAL synchronous_commit = on`, the partitions of months
//!    this process has not written yet ([`super::partitions`]) and the start of step 2;
//! 2. claim the keys ([`super::claims`]) with a binary COPY into `message_claims`. Most batches hold
//!    only new keys (the ledger filtered redeliveries out), and this is all it takes. If the primary
//!    key refuses one (a redelivery the ledger missed, another worker's message, a key twice in the
//!    batch), the transaction is rolled back and the batch is written again by the second path;
//! 3. binary COPY of the claimed logins straight into `user_logins`;
//! 4. quarantine records (rare), one prepared insert each; `COMMIT`.
//!
//! Six round trips in all. A smaller batch (or one whose COPY of claims was refused) goes by
//! `INSERT ... SELECT FROM unnest(...)` ([`super::unnest`]): the claims with `ON CONFLICT DO NOTHING
//! RETURNING` (sent with step 1's prelude), the keys not claimed compared with what claimed them,
//! then one insert of the claimed rows: four round trips. Every statement is prepared once per
//! connection.
//!
//! diesel-async has no COPY, so this sink keeps tokio-postgres connections of its own, one per
//! concurrent writer, reconnecting after a failure. diesel still owns the schema and the
//! migrations; the column lists here follow `src/schema.rs`.

use std::pin::pin;

use std::collections::{HashMap, HashSet};

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement, ToStatement, Transaction};

use super::binary::{BinaryRows, Chunk};
use super::claims::{ClaimRows, Claimed, StoredClaim, keep_claimed};
use super::partitions::Months;
use super::statements::{Statements, insert_quarantined, stored_claims, stored_claims_in};
use super::unnest;
use super::{NewLogin, NewQuarantined, SinkError, WriteLimits, Written};

/// Batches of fewer rows and records than this are written by `INSERT ... SELECT FROM unnest(...)`,
/// larger ones by binary COPY. Measured by `pii-bench` (one writer, rows/s of UNNEST over COPY, four
/// runs on the shared 2-core machine, 2026-12-01): 0.96, 1.02, 1.01, 1.14 at 10 rows a transaction;
/// 1.04, 0.99, 1.01, 0.92 at 100; 0.63, 0.86, 0.81 at 250; 0.80, 0.70, 0.81 at 500; 0.83, 0.87, 0.82,
/// 0.84 at 1000; 0.63, 0.82, 0.71, 0.68 at 5000. Small transactions are bound by the commit's flush
/// and tie or favour UNNEST, which also saves two round trips (4 against 6). From 100 rows COPY wins,
/// because per row `INSERT ... ON CONFLICT` pays a speculative insertion and `INSERT ... SELECT` a
/// heap insert each, where COPY inserts in batches.
pub const UNNEST_BELOW: usize = 100;

macro_rules! login_columns {
    () => {
        "message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date, sent_at, \
         mask_key_id, ip_sealed, device_id_sealed, seal_key_id"
    };
}

pub(super) const COPY_LOGINS: &str = concat!("COPY user_logins (", login_columns!(), ") FROM STDIN BINARY");

/// Binary COPY of login rows into `table`, a table shaped like `user_logins` (also the bare-COPY
/// baseline of `pii-bench`, so both copy exactly the same bytes).
pub async fn copy_logins(tx: &Transaction<'_>, table: &str, logins: &[NewLogin]) -> Result<(), tokio_postgres::Error> {
    let rows: Vec<&NewLogin> = logins.iter().collect();
    copy_rows(tx, &format!("COPY {table} ({}) FROM STDIN BINARY", login_columns!()), &rows).await?;
    Ok(())
}

/// Binary COPY of login rows by `statement` (a `COPY ... FROM STDIN BINARY` of [`login_columns`]).
async fn copy_rows<T: ?Sized + ToStatement>(
    tx: &Transaction<'_>,
    statement: &T,
    logins: &[&NewLogin],
) -> Result<u64, tokio_postgres::Error> {
    let mut sink = pin!(tx.copy_in::<_, Chunk>(statement).await?);
    let mut out = BinaryRows::new();
    for row in logins {
        out.row(13);
        out.text(&row.message_id);
        out.text(&row.user_id);
        out.text(&row.device_type);
        out.text(&row.masked_ip);
        out.text(&row.masked_device_id);
        out.optional_text(row.locale.as_deref());
        out.text(&row.app_version);
        out.date(row.create_date);
        out.timestamptz(row.sent_at);
        out.text(&row.mask_key_id);
        out.optional_bytes(row.ip_sealed.as_deref());
        out.optional_bytes(row.device_id_sealed.as_deref());
        out.optional_text(row.seal_key_id.as_deref());
        out.send_full(sink.as_mut()).await?;
    }
    out.finish(sink.as_mut()).await
}

/// One COPY connection: the client, and the task that drives its socket (aborted when the
/// connection is given up, so a connection stuck on a dead network does not linger).
struct Connection {
    client: Client,
    driver: tokio::task::AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A connection with its prepared statements.
struct Writer {
    connection: Connection,
    statements: Statements,
}

/// Writes batches through COPY (or, below [`UNNEST_BELOW`] rows, `INSERT ... SELECT FROM unnest`).
pub struct CopySink {
    url: String,
    /// One connection per concurrent writer; a writer takes a free one.
    clients: Vec<Mutex<Option<Writer>>>,
    limits: WriteLimits,
    /// Months whose `user_logins` partition a committed write has seen.
    months: Months,
    /// Batches of fewer rows and records than this skip COPY.
    unnest_below: usize,
}

impl CopySink {
    /// A sink for `url` with up to `connections` concurrent writes; it connects on first use.
    pub fn new(url: &str, connections: usize) -> Self {
        CopySink {
            url: url.to_owned(),
            clients: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            limits: WriteLimits::default(),
            months: Months::default(),
            unnest_below: UNNEST_BELOW,
        }
    }

    /// The same sink writing batches of fewer than `rows` rows and records by `INSERT ... SELECT
    /// FROM unnest` and larger ones by COPY (`0`: always COPY; `usize::MAX`: never).
    pub fn with_unnest_below(self, rows: usize) -> Self {
        CopySink { unnest_below: rows, ..self }
    }

    /// The same sink with other client-side limits.
    pub fn with_limits(self, limits: WriteLimits) -> Self {
        CopySink { limits, ..self }
    }

    /// Claims the keys, then writes the logins and quarantine records whose key this transaction
    /// claimed, in one durable transaction.
    /// A connection that fails, times out or finds the database read-only is dropped; the next
    /// write connects afresh.
    pub async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        let mut slot = self.connection().await?;
        let writer = slot.as_mut().expect("connection() connects");
        let months = self.months.unseen(logins.iter().map(|l| l.create_date));
        let by_copy = logins.len() + quarantined.len() >= self.unnest_below;
        let prelude = prelude(&months);
        let write = write_batch(writer, &prelude, logins, quarantined, by_copy);
        let result = match tokio::time::timeout(self.limits.write, write).await {
            Ok(result) => result.map_err(SinkError::Copy),
            Err(_) => Err(SinkError::Timeout { what: "write transaction", after: self.limits.write }),
        };
        match &result {
            Ok(_) => self.months.remember(&months),
            Err(_) => self.months.forget(),
        }
        if result.as_ref().is_err_and(SinkError::drops_connection) || writer.connection.client.is_closed() {
            *slot = None;
        }
        result
    }

    /// What is stored about `keys` (one query), within the write limit.
    pub async fn claims(&self, keys: &[String]) -> Result<HashMap<String, StoredClaim>, SinkError> {
        let mut slot = self.connection().await?;
        let writer = slot.as_mut().expect("connection() connects");
        let query = stored_claims(&writer.connection.client, &writer.statements.select_claims, keys);
        let result = match tokio::time::timeout(self.limits.write, query).await {
            Ok(result) => result.map_err(SinkError::Copy),
            Err(_) => Err(SinkError::Timeout { what: "claims query", after: self.limits.write }),
        };
        if result.as_ref().is_err_and(SinkError::drops_connection) || writer.connection.client.is_closed() {
            *slot = None;
        }
        result
    }

    /// A free connection (or the first, once free), connected.
    async fn connection(&self) -> Result<MutexGuard<'_, Option<Writer>>, SinkError> {
        let mut slot = match self.clients.iter().find_map(|c| c.try_lock().ok()) {
            Some(slot) => slot,
            None => self.clients[0].lock().await,
        };
        if slot.as_ref().is_none_or(|w| w.connection.client.is_closed()) {
            *slot = Some(self.connect().await?);
        }
        Ok(slot)
    }

    /// Whether the server answers a trivial query.
    pub async fn ping(&self) -> bool {
        let ping = async {
            let connection = self.connect_plain().await.ok()?;
            connection.client.simple_query("SELECT 1").await.ok()
        };
        matches!(tokio::time::timeout(self.limits.connect, ping).await, Ok(Some(_)))
    }

    /// A connection with its statements prepared, within the connect limit.
    async fn connect(&self) -> Result<Writer, SinkError> {
        let connect = async {
            let connection = self.connect_plain().await?;
            let statements = Statements::prepare(&connection.client).await.map_err(SinkError::Copy)?;
            Ok(Writer { connection, statements })
        };
        match tokio::time::timeout(self.limits.connect, connect).await {
            Ok(writer) => writer,
            Err(_) => Err(SinkError::Timeout { what: "connect", after: self.limits.connect }),
        }
    }

    /// A connection through the crate's one connect helper (TLS as the URL says), without the
    /// staging table.
    async fn connect_plain(&self) -> Result<Connection, SinkError> {
        let (client, connection) = crate::db::connect_raw(&self.url).await.map_err(SinkError::Connect)?;
        // The connection task ends when the client is dropped or the server goes away; the next
        // write then sees a closed client and reconnects.
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "COPY sink connection closed");
            }
        });
        Ok(Connection { client, driver: driver.abort_handle() })
    }
}

/// The statements every write transaction starts with. A role or database default of `off` would
/// let a commit be lost after its messages were deleted. Partitions come before any claim: creating
/// one waits for other writers' transactions, which must not be waiting for a claim this one holds.
fn prelude(months: &[chrono::NaiveDate]) -> String {
    let mut prelude = String::from("SET LOCAL synchronous_commit = on");
    if !months.is_empty() {
        // Dates print as digits and dashes only: nothing to escape.
        let list: Vec<String> = months.iter().map(ToString::to_string).collect();
        prelude.push_str(&format!("; SELECT user_logins_ensure_partitions('{{{}}}'::date[])", list.join(",")));
    }
    prelude
}

/// One batch by COPY when `by_copy`, falling back to `INSERT ... SELECT FROM unnest` if a key was
/// taken; by the latter at once otherwise.
async fn write_batch(
    writer: &mut Writer,
    prelude: &str,
    logins: &[NewLogin],
    quarantined: &[NewQuarantined],
    by_copy: bool,
) -> Result<Written, tokio_postgres::Error> {
    if by_copy && let Some(written) = write_once(writer, prelude, logins, quarantined, true).await? {
        return Ok(written);
    }
    let written = write_once(writer, prelude, logins, quarantined, false).await?;
    Ok(written.expect("INSERT ... ON CONFLICT never refuses a taken key"))
}

/// One transaction. `None`: the COPY of the claims met a taken key, and the transaction was rolled back.
async fn write_once(
    writer: &mut Writer,
    prelude: &str,
    logins: &[NewLogin],
    quarantined: &[NewQuarantined],
    by_copy: bool,
) -> Result<Option<Written>, tokio_postgres::Error> {
    let Writer { connection, statements } = writer;
    let tx = connection.client.transaction().await?;
    let rows = ClaimRows::of(logins, quarantined);
    let (mut claimed, conflicts) = if by_copy {
        match copy_claims(&tx, &statements.copy_claims, prelude, &rows).await {
            Ok(()) => (Claimed::All, HashSet::new()),
            // Dropping the transaction rolls it back.
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Ok(None),
            Err(error) => return Err(error),
        }
    } else {
        let claimed = unnest::claim(&tx, &statements.insert_claims, prelude, &rows).await?;
        let others = rows.others(&claimed);
        let stored =
            if others.is_empty() { HashMap::new() } else { stored_claims_in(&tx, statements, &others).await? };
        (claimed, rows.conflicts(&stored))
    };
    let logins = keep_claimed(logins, |l| &l.message_id, &mut claimed);
    let quarantined = keep_claimed(quarantined, |q| &q.message_id, &mut claimed);
    let mut written = Written { conflicts, ..Written::default() };
    if !logins.is_empty() {
        if by_copy {
            copy_rows(&tx, &statements.copy_logins, &logins).await?;
        } else {
            unnest::insert_logins(&tx, &statements.insert_logins, &logins).await?;
        }
        written.logins.reserve(logins.len());
        written.logins.extend(logins.iter().map(|l| l.message_id.clone()));
    }
    for q in quarantined {
        insert_quarantined(&tx, &statements.insert_quarantined, q).await?;
        written.quarantined.insert(q.message_id.clone());
    }
    tx.commit().await?;
    Ok(Some(written))
}

/// The COPY of the claims, started in the same round trip as `prelude` (which runs first).
async fn copy_claims(
    tx: &Transaction<'_>,
    statement: &Statement,
    prelude: &str,
    rows: &ClaimRows<'_>,
) -> Result<(), tokio_postgres::Error> {
    let (_, sink) = futures::try_join!(tx.batch_execute(prelude), tx.copy_in::<_, Chunk>(statement))?;
    let mut sink = pin!(sink);
    let mut out = BinaryRows::new();
    for i in 0..rows.keys.len() {
        out.row(5);
        out.text(rows.keys[i]);
        out.text(rows.fingerprints[i]);
        out.text(rows.key_ids[i]);
        out.text(rows.fates[i]);
        out.date(rows.dates[i]);
        out.send_full(sink.as_mut()).await?;
    }
    out.finish(sink.as_mut()).await?;
    Ok(())
}
