//! The login event: parse a message body, validate every field, and either produce a [`Login`] or a
//! [`Reject`] with a reason code and the offending field.
//!
//! Pure: no I/O, no masking. Validation mirrors the columns of `user_logins`, so a batch that passes
//! here is not refused by Postgres for its data. A [`Reject`]'s detail never quotes a field's value
//! (values may be PII): it names the field and the problem only.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Why a message was quarantined. The string forms are stable: they are stored and used as labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The body is not valid UTF-8.
    NotUtf8,
    /// The body is not JSON.
    NotJson,
    /// The body is JSON but not an object.
    NotObject,
    /// A required field is absent.
    MissingField,
    /// A required field is `null`.
    NullField,
    /// A text field is empty or only white space.
    EmptyField,
    /// A field has the wrong JSON type (a number where text is expected).
    WrongType,
    /// A text field is longer than its column.
    TooLong,
    /// A text field holds a NUL character, which Postgres text cannot store.
    InvalidText,
    /// `ip` is not an IPv4 or IPv6 address.
    InvalidIp,
    /// `device_type` is not in the configured set.
    UnknownDeviceType,
    /// Postgres refused the row although validation passed; isolated by splitting the batch.
    DbRejected,
}

impl RejectReason {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [RejectReason; 12] = [
        Self::NotUtf8,
        Self::NotJson,
        Self::NotObject,
        Self::MissingField,
        Self::NullField,
        Self::EmptyField,
        Self::WrongType,
        Self::TooLong,
        Self::InvalidText,
        Self::InvalidIp,
        Self::UnknownDeviceType,
        Self::DbRejected,
    ];

    /// The stable code stored in `quarantined_messages.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotUtf8 => "not_utf8",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::MissingField => "missing_field",
            Self::NullField => "null_field",
            Self::EmptyField => "empty_field",
            Self::WrongType => "wrong_type",
            Self::TooLong => "too_long",
            Self::InvalidText => "invalid_text",
            Self::InvalidIp => "invalid_ip",
            Self::UnknownDeviceType => "unknown_device_type",
            Self::DbRejected => "db_rejected",
        }
    }

    /// Position in [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).expect("ALL lists every variant")
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot become a login row. Holds no field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    /// The offending field, when one field is to blame.
    pub field: Option<&'static str>,
    /// One line for a human: the field and the problem, never the value.
    pub detail: String,
}

impl Reject {
    fn new(reason: RejectReason, field: Option<&'static str>, detail: impl Into<String>) -> Self {
        Reject { reason, field, detail: detail.into() }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// A valid login, still holding raw PII in `ip` and `device_id`: it must be masked before it leaves
/// the process, and it has no `Debug` so it cannot be logged by accident.
pub struct Login {
    pub user_id: String,
    pub device_type: String,
    pub ip: String,
    pub device_id: String,
    pub locale: Option<String>,
    pub app_version: String,
    /// Fields in the body that are not part of a login: kept out of the table, counted.
    pub unknown_fields: usize,
}

/// What the validator accepts beyond the column limits.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Accepted `device_type` values, compared case-sensitively; empty accepts any.
    pub device_types: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { device_types: vec!["android".into(), "ios".into()] }
    }
}

/// Column widths of `user_logins`, in characters (Postgres `VARCHAR(n)` counts characters).
pub const MAX_USER_ID: usize = 128;
pub const MAX_DEVICE_TYPE: usize = 32;
pub const MAX_LOCALE: usize = 32;
pub const MAX_APP_VERSION: usize = 32;
/// `device_id` is only ever stored as a token; the cap keeps absurd values out of the HMAC.
pub const MAX_DEVICE_ID: usize = 256;
/// Longest textual IPv6 address with a zone is well under this.
pub const MAX_IP: usize = 64;

const KNOWN_FIELDS: [&str; 6] = ["user_id", "app_version", "device_type", "ip", "locale", "device_id"];

/// Parses and validates one message body.
pub fn parse(body: &[u8], rules: &Rules) -> Result<Login, Reject> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Reject::new(RejectReason::NotUtf8, None, format!("body is not UTF-8 (bad byte at offset {})", e.valid_up_to()))
    })?;
    let value: Json = serde_json::from_str(text).map_err(|e| {
        // serde_json's message names the position and the kind of error, never the input text.
        Reject::new(RejectReason::NotJson, None, format!("body is not JSON: {e}"))
    })?;
    let Json::Object(object) = value else {
        return Err(Reject::new(
            RejectReason::NotObject,
            None,
            format!("body is a JSON {}, expected an object", value.kind()),
        ));
    };
    let login = Login {
        user_id: required(&object, "user_id", MAX_USER_ID)?,
        app_version: required(&object, "app_version", MAX_APP_VERSION)?,
        device_type: required(&object, "device_type", MAX_DEVICE_TYPE)?,
        ip: required(&object, "ip", MAX_IP)?,
        device_id: required(&object, "device_id", MAX_DEVICE_ID)?,
        locale: optional(&object, "locale", MAX_LOCALE)?,
        unknown_fields: object
            .iter()
            .enumerate()
            // A key given twice counts once (its last occurrence), as in a JSON map.
            .filter(|(i, (k, _))| !KNOWN_FIELDS.contains(&k.as_ref()) && !object[i + 1..].iter().any(|(l, _)| l == k))
            .count(),
    };
    if login.ip.parse::<IpAddr>().is_err() {
        return Err(Reject::new(RejectReason::InvalidIp, Some("ip"), "ip is not an IPv4 or IPv6 address"));
    }
    if !rules.device_types.is_empty() && !rules.device_types.contains(&login.device_type) {
        return Err(Reject::new(
            RejectReason::UnknownDeviceType,
            Some("device_type"),
            format!("device_type is not one of {:?}", rules.device_types),
        ));
    }
    Ok(login)
}

/// The value of `field`: the last one given, as a JSON map would keep it.
fn get<'o, 'a>(object: &'o [(Cow<'a, str>, Json<'a>)], field: &str) -> Option<&'o Json<'a>> {
    object.iter().rev().find(|(key, _)| key == field).map(|(_, value)| value)
}

/// A required text field: present, not null, a string, not blank, within `max` characters.
fn required(object: &[(Cow<'_, str>, Json<'_>)], field: &'static str, max: usize) -> Result<String, Reject> {
    match get(object, field) {
        None => Err(Reject::new(RejectReason::MissingField, Some(field), format!("{field} is missing"))),
        Some(Json::Null) => Err(Reject::new(RejectReason::NullField, Some(field), format!("{field} is null"))),
        Some(value) => text(value, field, max),
    }
}

/// An optional text field: absent and null both mean "not given".
fn optional(object: &[(Cow<'_, str>, Json<'_>)], field: &'static str, max: usize) -> Result<Option<String>, Reject> {
    match get(object, field) {
        None | Some(Json::Null) => Ok(None),
        Some(value) => text(value, field, max).map(Some),
    }
}

fn text(value: &Json<'_>, field: &'static str, max: usize) -> Result<String, Reject> {
    let Json::String(s) = value else {
        return Err(Reject::new(
            RejectReason::WrongType,
            Some(field),
            format!("{field} is a {}, expected a string", value.kind()),
        ));
    };
    if s.trim().is_empty() {
        return Err(Reject::new(RejectReason::EmptyField, Some(field), format!("{field} is empty")));
    }
    let chars = s.chars().count();
    if chars > max {
        return Err(Reject::new(
            RejectReason::TooLong,
            Some(field),
            format!("{field} is {chars} characters, at most {max} fit"),
        ));
    }
    // NUL is the one character Postgres text cannot hold; any other Unicode is the producer's text.
    if s.contains('\0') {
        return Err(Reject::new(RejectReason::InvalidText, Some(field), format!("{field} contains a NUL character")));
    }
    Ok(s.clone().into_owned())
}

/// A JSON document as far as validation needs it: strings borrowed from the body where they hold no
/// escapes, objects as their fields in order, and of everything else only its kind. Building
/// `serde_json::Value` instead (a BTreeMap and a String per field) was the largest CPU item of a replay.
enum Json<'a> {
    Null,
    Bool,
    Number,
    String(Cow<'a, str>),
    Array,
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "boolean",
            Json::Number => "number",
            Json::String(_) => "string",
            Json::Array => "array",
            Json::Object(_) => "object",
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Json::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(key)) = map.next_key()? {
            fields.push((key, map.next_value()?));
        }
        Ok(Json::Object(fields))
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const GOOD: &str = r#"{"user_id":"424cdd21-063a-43a7-b91b-7ca1a833afae","app_version":"2.3.0","device_type":"android","ip":"199.172.111.135","locale":"RU","device_id":"593-47-5928"}"#;

    fn reject(body: &str) -> Reject {
        match parse(body.as_bytes(), &Rules::default()) {
            Ok(_) => panic!("expected a reject for {body}"),
            Err(r) => r,
        }
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn a_sample_login_parses_with_every_field() {
        let login = parse(GOOD.as_bytes(), &Rules::default()).unwrap();
        assert_eq!(login.user_id, "424cdd21-063a-43a7-b91b-7ca1a833afae");
        assert_eq!(login.app_version, "2.3.0");
        assert_eq!(login.device_type, "android");
        assert_eq!(login.ip, "199.172.111.135");
        assert_eq!(login.device_id, "593-47-5928");
        assert_eq!(login.locale.as_deref(), Some("RU"));
        assert_eq!(login.unknown_fields, 0);
    }

    #[test]
    fn null_or_absent_locale_is_valid() {
        assert_eq!(parse(with("locale", "null").as_bytes(), &Rules::default()).unwrap().locale, None);
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        v.as_object_mut().unwrap().remove("locale");
        assert!(parse(v.to_string().as_bytes(), &Rules::default()).is_ok());
    }

    #[test]
    fn the_sample_malformed_message_is_missing_user_id() {
        let r = reject(r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#);
        assert_eq!((r.reason, r.field), (RejectReason::MissingField, Some("user_id")));
    }

    #[test]
    fn each_kind_of_bad_body_gets_its_reason_and_field() {
        let cases: Vec<(Vec<u8>, RejectReason, Option<&str>)> = vec![
            (b"\xff\xfe".to_vec(), RejectReason::NotUtf8, None),
            (b"{not json".to_vec(), RejectReason::NotJson, None),
            (b"[1,2]".to_vec(), RejectReason::NotObject, None),
            (with("ip", "null").into_bytes(), RejectReason::NullField, Some("ip")),
            (with("device_id", "\"  \"").into_bytes(), RejectReason::EmptyField, Some("device_id")),
            (with("app_version", "2.3").into_bytes(), RejectReason::WrongType, Some("app_version")),
            (with("user_id", &format!("\"{}\"", "u".repeat(129))).into_bytes(), RejectReason::TooLong, Some("user_id")),
            (with("locale", "\"a\\u0000b\"").into_bytes(), RejectReason::InvalidText, Some("locale")),
            (with("ip", "\"999.1.1.1\"").into_bytes(), RejectReason::InvalidIp, Some("ip")),
            (with("device_type", "\"toaster\"").into_bytes(), RejectReason::UnknownDeviceType, Some("device_type")),
        ];
        for (body, reason, field) in cases {
            let r = parse(&body, &Rules::default()).err().unwrap_or_else(|| panic!("{body:?} parsed"));
            assert_eq!((r.reason, r.field), (reason, field), "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn reject_details_never_quote_the_value() {
        for body in
            [with("ip", "\"999.77.66.55\""), with("device_id", "123456789"), with("device_type", "\"secretdev\"")]
        {
            let r = reject(&body);
            for raw in ["999.77.66.55", "123456789", "secretdev"] {
                assert!(!r.detail.contains(raw), "{} leaks {raw}", r.detail);
            }
        }
    }

    #[test]
    fn ipv6_unicode_and_sql_looking_text_are_valid() {
        assert!(parse(with("ip", "\"2001:db8::1\"").as_bytes(), &Rules::default()).is_ok());
        let login =
            parse(with("user_id", r#""Robert'); DROP TABLE user_logins;-- ☃""#).as_bytes(), &Rules::default()).unwrap();
        assert!(login.user_id.ends_with('☃'));
    }

    #[test]
    fn unknown_fields_are_counted_not_kept() {
        let login = parse(with("extra", "\"x\"").as_bytes(), &Rules::default()).unwrap();
        assert_eq!(login.unknown_fields, 1);
    }

    #[test]
    fn escapes_repeated_keys_and_nested_values_read_as_a_json_map_would() {
        // Escaped key and value: "us\u0065r_id" is user_id, "\u0041" is "A".
        let body = GOOD.replacen(r#""user_id":"#, r#""us\u0065r_id":"#, 1).replacen(r#""RU""#, r#""R\u0055""#, 1);
        let login = parse(body.as_bytes(), &Rules::default()).unwrap();
        assert_eq!(login.user_id, "424cdd21-063a-43a7-b91b-7ca1a833afae");
        assert_eq!(login.locale.as_deref(), Some("RU"));
        // A key given twice: the last value counts, and an unknown key given twice counts once.
        let twice = GOOD.replacen('{', r#"{"ip":"not an address","x":1,"x":2,"#, 1);
        let login = parse(twice.as_bytes(), &Rules::default()).unwrap();
        assert_eq!((login.ip.as_str(), login.unknown_fields), ("199.172.111.135", 1));
        let last_bad = GOOD.replacen('}', r#","ip":"not an address"}"#, 1);
        assert_eq!(parse(last_bad.as_bytes(), &Rules::default()).err().unwrap().reason, RejectReason::InvalidIp);
        // Nested values are only their kind.
        for (nested, kind) in [(r#"{"a":[1,{"b":null}]}"#, "object"), ("[1,[2]]", "array"), ("true", "boolean")] {
            let reject = parse(with("device_id", nested).as_bytes(), &Rules::default()).err().unwrap();
            assert_eq!((reject.reason, reject.field), (RejectReason::WrongType, Some("device_id")));
            assert!(reject.detail.contains(kind), "{}", reject.detail);
        }
    }

    #[test]
    fn an_empty_device_type_list_accepts_any_device() {
        let rules = Rules { device_types: vec![] };
        assert!(parse(with("device_type", "\"web\"").as_bytes(), &rules).is_ok());
    }

    #[test]
    fn every_reason_has_a_distinct_code_and_index() {
        let codes: std::collections::HashSet<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), RejectReason::ALL.len());
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn login_json(user_id: &str, ip: &str, device_id: &str, locale: Option<&str>) -> String {
        serde_json::json!({
            "user_id": user_id, "app_version": "2.3.0", "device_type": "ios",
            "ip": ip, "locale": locale, "device_id": device_id,
        })
        .to_string()
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body, &Rules::default());
        }

        #[test]
        fn any_valid_login_round_trips_its_fields(
            user_id in "[^\\x00-\\x1f]{1,128}",
            ip in any::<std::net::IpAddr>(),
            device_id in "[0-9]{3}-[0-9]{2}-[0-9]{4}",
            locale in proptest::option::of("[A-Z]{2}"),
        ) {
            prop_assume!(!user_id.trim().is_empty());
            let body = login_json(&user_id, &ip.to_string(), &device_id, locale.as_deref());
            let login = parse(body.as_bytes(), &Rules::default()).map_err(|r| TestCaseError::fail(r.to_string()))?;
            prop_assert_eq!(login.user_id, user_id);
            prop_assert_eq!(login.ip, ip.to_string());
            prop_assert_eq!(login.device_id, device_id);
            prop_assert_eq!(login.locale, locale);
        }

        #[test]
        fn a_reject_never_quotes_the_offending_value(value in "[a-zA-Z0-9.:_-]{6,40}") {
            // As an ip (invalid unless it happens to parse), a device type, and a too-long locale.
            let mut bodies = vec![
                login_json("u", &value, "1", None),
                serde_json::json!({"user_id": "u", "app_version": "1", "device_type": value, "ip": "1.1.1.1", "device_id": "d"}).to_string(),
                login_json("u", "1.1.1.1", "d", Some(&format!("{value}{}", "x".repeat(40)))),
            ];
            bodies.push(serde_json::json!({"ip": value}).to_string());
            for body in bodies {
                if let Err(reject) = parse(body.as_bytes(), &Rules::default()) {
                    prop_assert!(!reject.detail.contains(&value), "{} quotes {}", reject.detail, value);
                }
            }
        }
    }
}
