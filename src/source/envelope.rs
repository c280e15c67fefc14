//! The envelope form of a message, one JSON object a line, as `pii-ingest export` writes it and
//! `replay` and `seed --file` read it:
//!
//! ```json
//! {"message_id": "<SQS MessageId>", "sent_timestamp": 1700000000000, "body": "<the body, a string>",
//!  "attributes": {"idempotency-key": "<producer key>"}}
//! ```
//!
//! `sent_timestamp` is milliseconds since the epoch (a number, or a numeric string as the AWS CLI prints
//! it); `attributes` is optional, each value a string or an SQS-shaped `{"StringValue": ...}`. A
//! malformed envelope is a reject naming the member at fault, never a crash and never a guess.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Longest `message_id` accepted (SQS ids are at most 100 characters).
pub const MAX_MESSAGE_ID: usize = 128;

/// One exported message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Envelope {
    pub message_id: String,
    /// SQS `SentTimestamp`, milliseconds since the epoch.
    pub sent_timestamp: i64,
    pub body: String,
    /// String message attributes (a producer's idempotency key among them).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// What is wrong with an envelope line. Names the member, never quotes a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("envelope member {field}: {problem}")]
pub struct EnvelopeError {
    pub field: &'static str,
    pub problem: &'static str,
    /// The `body` member, when it could be read (so the record can keep it, masked).
    pub body: Option<String>,
}

impl Envelope {
    /// When the message was sent.
    pub fn sent_at(&self) -> DateTime<Utc> {
        // `parse` checked the range.
        DateTime::from_timestamp_millis(self.sent_timestamp).expect("checked by parse")
    }

    /// Whether a line is meant as an envelope: a JSON object naming a `message_id` (a login has none).
    pub fn is_envelope(line: &[u8]) -> bool {
        line.trim_ascii_start().starts_with(b"{") && line.windows(12).any(|w| w == b"\"message_id\"")
    }

    /// Reads one envelope line.
    pub fn parse(line: &[u8]) -> Result<Envelope, EnvelopeError> {
        let fail = |field, problem, body: Option<&str>| EnvelopeError { field, problem, body: body.map(str::to_owned) };
        let object: Map<String, Value> =
            serde_json::from_slice(line).map_err(|_| fail("(line)", "not a JSON object", None))?;
        let body = match object.get("body") {
            Some(Value::String(body)) => body.as_str(),
            Some(_) => return Err(fail("body", "not a string", None)),
            None => return Err(fail("body", "missing", None)),
        };
        let message_id = match object.get("message_id") {
            Some(Value::String(id)) if id.trim().is_empty() => return Err(fail("message_id", "empty", Some(body))),
            Some(Value::String(id)) if id.len() > MAX_MESSAGE_ID => {
                return Err(fail("message_id", "longer than 128 bytes", Some(body)));
            }
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(fail("message_id", "not a string", Some(body))),
            None => return Err(fail("message_id", "missing", Some(body))),
        };
        let sent_timestamp = match object.get("sent_timestamp") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse::<i64>().ok(),
            Some(_) => return Err(fail("sent_timestamp", "not a number of milliseconds", Some(body))),
            None => return Err(fail("sent_timestamp", "missing", Some(body))),
        }
        .filter(|ms| *ms >= 0 && DateTime::from_timestamp_millis(*ms).is_some())
        .ok_or_else(|| fail("sent_timestamp", "not a number of milliseconds since 1970", Some(body)))?;
        let attributes =
            attributes(object.get("attributes")).map_err(|problem| fail("attributes", problem, Some(body)))?;
        Ok(Envelope { message_id, sent_timestamp, body: body.to_owned(), attributes })
    }
}

fn attributes(value: Option<&Value>) -> Result<BTreeMap<String, String>, &'static str> {
    let object = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object,
        Some(_) => return Err("not an object"),
    };
    let mut out = BTreeMap::new();
    for (name, value) in object {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Object(o) => match o.get("StringValue") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err("an attribute without a string value"),
            },
            _ => return Err("an attribute that is neither a string nor {\"StringValue\": ...}"),
        };
        out.insert(name.clone(), text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_through_its_json_line() {
        let envelope = Envelope {
            message_id: "m-1".into(),
            sent_timestamp: 1_700_000_000_000,
            body: "{\"a\":1}".into(),
            attributes: BTreeMap::from([("idempotency-key".into(), "k".into())]),
        };
        let line = serde_json::to_vec(&envelope).unwrap();
        assert!(Envelope::is_envelope(&line));
        assert_eq!(Envelope::parse(&line), Ok(envelope));
    }

    #[test]
    fn aws_cli_shapes_are_read_too() {
        let line = br#"{"message_id":"m","sent_timestamp":"1700000000000","body":"x","attributes":{"k":{"DataType":"String","StringValue":"v"}}}"#;
        let envelope = Envelope::parse(line).unwrap();
        assert_eq!((envelope.sent_timestamp, envelope.attributes["k"].as_str()), (1_700_000_000_000, "v"));
    }

    #[test]
    fn a_bad_envelope_names_the_member_and_never_quotes_it() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"message_id":"m","sent_timestamp":1}"#, "body"),
            (br#"{"message_id":7,"sent_timestamp":1,"body":"secret"}"#, "message_id"),
            (br#"{"message_id":"","sent_timestamp":1,"body":"secret"}"#, "message_id"),
            (br#"{"message_id":"m","sent_timestamp":"soon","body":"secret"}"#, "sent_timestamp"),
            (br#"{"message_id":"m","sent_timestamp":-5,"body":"secret"}"#, "sent_timestamp"),
            (br#"{"message_id":"m","sent_timestamp":1,"body":"secret","attributes":[1]}"#, "attributes"),
        ];
        for (line, field) in cases {
            let error = Envelope::parse(line).unwrap_err();
            assert_eq!(error.field, field, "{}", String::from_utf8_lossy(line));
            assert!(!error.to_string().contains("secret"));
        }
        assert!(!Envelope::is_envelope(br#"{"user_id":"u"}"#));
    }
}
