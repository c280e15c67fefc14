//! Envelopes a login may arrive in, unwrapped when `sqs.envelope = "auto"`:
//! - an SNS notification (`"Type": "Notification"`, the payload as a JSON *string* in `Message`),
//!   which is what an SNS -> SQS subscription delivers unless it sets `RawMessageDelivery`;
//! - an EventBridge event (`detail-type`, `source`, and the payload *object* in `detail`).
//!
//! Only the payload is judged; the envelope's own fields (topic, subject, attributes) are neither
//! stored nor checked. The dedup key and `create_date` still come from the SQS delivery.

use std::borrow::Cow;

use super::json::Json;

/// Whether envelopes are unwrapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// Unwrap SNS notifications and EventBridge events, up to [`MAX_ENVELOPES`] deep.
    #[default]
    Auto,
    /// Judge every body as it is: an envelope is then quarantined (`missing_field`).
    None,
}

/// Most envelopes around one payload (EventBridge -> SNS -> SQS is two).
pub const MAX_ENVELOPES: usize = 3;

/// What an object turned out to be.
pub(crate) enum Shape<'a> {
    /// Not an envelope: judged as a login.
    Plain(Vec<(Cow<'a, str>, Json<'a>)>),
    /// An SNS notification; its `Message` text (a payload to be read in turn).
    Sns(Json<'a>),
    /// An EventBridge event; its `detail` value.
    EventBridge(Json<'a>),
}

/// Sorts an object into an envelope or a plain object (always plain with [`Envelope::None`]). The
/// last occurrence of a key counts.
pub(crate) fn classify<'a>(object: Vec<(Cow<'a, str>, Json<'a>)>, mode: Envelope) -> Shape<'a> {
    if mode == Envelope::None {
        return Shape::Plain(object);
    }
    let last = |name: &str| object.iter().rposition(|(key, _)| key == name);
    let is_sns = last("Type").is_some_and(|i| matches!(&object[i].1, Json::String(t) if t == "Notification"))
        && last("Message").is_some();
    if is_sns {
        let i = last("Message").expect("checked just above");
        return Shape::Sns(take(object, i));
    }
    let is_event_bridge = last("detail-type").is_some() && last("source").is_some() && last("detail").is_some();
    if is_event_bridge {
        let i = last("detail").expect("checked just above");
        return Shape::EventBridge(take(object, i));
    }
    Shape::Plain(object)
}

fn take<'a>(object: Vec<(Cow<'a, str>, Json<'a>)>, i: usize) -> Json<'a> {
    object.into_iter().nth(i).map(|(_, value)| value).expect("index found in this object")
}

/// Recognises the same envelopes in a `serde_json` value (for masking a quarantined body): the key
/// holding the payload, if `object` is an envelope.
pub fn payload_key(object: &serde_json::Map<String, serde_json::Value>) -> Option<&'static str> {
    if object.get("Type").and_then(|t| t.as_str()) == Some("Notification") && object.contains_key("Message") {
        return Some("Message");
    }
    let event_bridge = ["detail-type", "source", "detail"].iter().all(|k| object.contains_key(*k));
    event_bridge.then_some("detail")
}
