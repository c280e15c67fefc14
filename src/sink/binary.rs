//! Postgres' binary COPY format, written straight into one buffer per 256 KiB: the COPY sink's rows
//! and claims. tokio-postgres' `BinaryCopyInWriter` checks every value's type through `dyn ToSql`
//! and hands the connection a chunk every 4 KiB (a channel send and a socket write each: some 25,000
//! for 200,000 rows); here a row is a few `extend_from_slice` calls and a chunk goes every 256 KiB.
//!
//! The format (Postgres docs, "COPY", binary format): a signature, two zero words, then per row a
//! 16-bit field count and per field a 32-bit length (-1 for NULL) and the value in the type's binary
//! form, then a 16-bit -1. Text types are their UTF-8 bytes, `bytea` its bytes, `date` days and
//! `timestamptz` microseconds since 2000-01-01 (UTC), big-endian. Encoding cannot fail: every
//! value the sink writes fits its length word (validated fields, bounded sealed values) and chrono's
//! dates and times span less than Postgres' 32-bit days and 64-bit microseconds; a value Postgres
//! does not accept in its column (a date past its range) is refused by the server, as before.

use std::io::Cursor;
use std::pin::Pin;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::SinkExt;
use tokio_postgres::CopyInSink;

/// What a COPY sink takes: whole buffers, sent without copying.
pub(super) type Chunk = Cursor<Vec<u8>>;

/// Bytes gathered before they go to the connection.
const CHUNK_BYTES: usize = 256 * 1024;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Rows being encoded for one `COPY ... FROM STDIN BINARY`.
pub(super) struct BinaryRows {
    buf: Vec<u8>,
}

fn epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).expect("2000-01-01 is a date")
}

impl BinaryRows {
    /// An empty stream: the header only.
    pub fn new() -> BinaryRows {
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&[0; 8]); // flags, header extension length
        BinaryRows { buf }
    }

    /// Starts a row of `fields` values.
    pub fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    pub fn bytes(&mut self, value: &[u8]) {
        // A value of 2 GiB or more cannot be in a batch (see the module's comment).
        let length = i32::try_from(value.len()).expect("no value the sink writes reaches 2 GiB");
        self.buf.extend_from_slice(&length.to_be_bytes());
        self.buf.extend_from_slice(value);
    }

    pub fn text(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn optional_bytes(&mut self, value: Option<&[u8]>) {
        match value {
            Some(v) => self.bytes(v),
            None => self.null(),
        }
    }

    pub fn date(&mut self, value: NaiveDate) {
        // chrono's dates lie within +-262,143 years: their day numbers fit 32 bits.
        let days = (value - epoch().date()).num_days() as i32;
        self.buf.extend_from_slice(&4i32.to_be_bytes());
        self.buf.extend_from_slice(&days.to_be_bytes());
    }

    pub fn timestamptz(&mut self, value: DateTime<Utc>) {
        let micros = (value.naive_utc() - epoch())
            .num_microseconds()
            .expect("chrono's range (+-262,143 years) is within 64-bit microseconds");
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&micros.to_be_bytes());
    }

    /// Sends what is gathered once it reaches a chunk.
    pub async fn send_full(&mut self, mut sink: Pin<&mut CopyInSink<Chunk>>) -> Result<(), tokio_postgres::Error> {
        if self.buf.len() >= CHUNK_BYTES {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + 4096));
            sink.send(Cursor::new(full)).await?;
        }
        Ok(())
    }

    /// Ends the stream and the COPY; the rows copied.
    pub async fn finish(mut self, mut sink: Pin<&mut CopyInSink<Chunk>>) -> Result<u64, tokio_postgres::Error> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        sink.as_mut().send(Cursor::new(self.buf)).await?;
        sink.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_as_postgres_reads_them() {
        let mut rows = BinaryRows::new();
        let header = rows.buf.len();
        rows.row(4);
        rows.text("ab");
        rows.optional_bytes(None);
        rows.date(NaiveDate::from_ymd_opt(2000, 1, 2).unwrap());
        rows.timestamptz(DateTime::from_timestamp(946_684_801, 5_000).unwrap());
        let want: Vec<u8> = [
            &4i16.to_be_bytes()[..],
            &2i32.to_be_bytes(),
            b"ab",
            &(-1i32).to_be_bytes(),
            &4i32.to_be_bytes(),
            &1i32.to_be_bytes(),
            &8i32.to_be_bytes(),
            &1_000_005i64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(&rows.buf[..header], b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
        assert_eq!(&rows.buf[header..], &want[..]);
    }
}
