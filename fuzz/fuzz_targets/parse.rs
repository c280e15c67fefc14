//! Fuzzes the message parser (`event::parse`) and the quarantine masker (`Masker::mask_body`) with
//! arbitrary message bodies. Besides "never panics", it checks:
//!
//! * an accepted login obeys every column rule and matches the body's JSON fields;
//! * a reject's `detail` never quotes a string value (>= 6 chars) of the body;
//! * `mask_body` keeps something exactly for JSON bodies, and lets no string value of the body
//!   through but the declared readable fields' values (`device_type`, `app_version`, `locale`).
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pii_ingest::event::{self, Login, Reject, RejectReason, Rules};
use pii_ingest::mask::Masker;
use serde_json::{Map, Value};

/// A fixed 32-byte test key (the minimum length the masker accepts).
const TEST_KEY: &[u8; 32] = b"fuzz-test-key-0123456789abcdef!!";

/// The fields of a login and their column limits, in characters.
const TEXT_FIELDS: [(&str, usize); 6] = [
    ("user_id", event::MAX_USER_ID),
    ("app_version", event::MAX_APP_VERSION),
    ("device_type", event::MAX_DEVICE_TYPE),
    ("ip", event::MAX_IP),
    ("device_id", event::MAX_DEVICE_ID),
    ("locale", event::MAX_LOCALE),
];

/// Shortest input string value the reject-detail check looks for.
const MIN_LEAK_CHARS: usize = 6;
/// Shortest string value the masked-body check looks for.
const MIN_PII_CHARS: usize = 8;

fuzz_target!(|body: &[u8]| {
    let rules = Rules::default();
    let masker = masker();
    // The body as serde_json sees it, independently of the code under test.
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let object: Option<&Map<String, Value>> = json.as_ref().and_then(Value::as_object);

    match event::parse(body, &rules) {
        Ok(login) => check_login(&login, object, &rules),
        Err(reject) => check_reject(&reject, body, json.as_ref()),
    }

    check_masked_body(masker, body, json.as_ref(), &rules);
});

fn masker() -> &'static Masker {
    static MASKER: OnceLock<Masker> = OnceLock::new();
    MASKER.get_or_init(|| Masker::new(TEST_KEY, Some("fuzz")).expect("a 32-byte key is accepted"))
}

/// An accepted login: every field within its column, valid text, a real IP, a known device type,
/// and each value exactly the body's JSON string.
fn check_login(login: &Login, object: Option<&Map<String, Value>>, rules: &Rules) {
    let object = object.expect("parse accepted a body that is not a JSON object");

    assert!(login.ip.parse::<IpAddr>().is_ok(), "accepted ip does not parse as an IpAddr");
    assert_eq!(event::canonical_ip(&login.ip).as_deref(), Some(login.ip.as_str()), "accepted ip is not canonical");
    // The fields of a login unwrapped from an envelope are checked by the envelope unit tests.
    if login.envelopes > 0 {
        return;
    }
    assert!(
        rules.device_types.is_empty() || rules.device_types.contains(&login.device_type),
        "accepted device_type is not in the rules"
    );

    let values: [(&str, Option<&str>); 6] = [
        ("user_id", Some(&login.user_id)),
        ("app_version", Some(&login.app_version)),
        ("device_type", Some(&login.device_type)),
        ("ip", Some(&login.ip)),
        ("device_id", Some(&login.device_id)),
        ("locale", login.locale.as_deref()),
    ];
    for ((field, value), (limit_field, max)) in values.into_iter().zip(TEXT_FIELDS) {
        assert_eq!(field, limit_field);
        match value {
            Some(v) => {
                assert!(!v.trim().is_empty(), "accepted {field} is empty or blank");
                assert!(v.chars().count() <= max, "accepted {field} is longer than {max} characters");
                // NUL is the one character a Postgres text column cannot hold.
                assert!(!v.contains('\0'), "accepted {field} holds a NUL character");
                let given = object.get(field).and_then(Value::as_str);
                let given = if field == "ip" { given.and_then(event::canonical_ip) } else { given.map(str::to_owned) };
                assert_eq!(given.as_deref(), Some(v), "accepted {field} is not the body's string value");
            }
            // Only `locale` is optional: absent or null.
            None => {
                assert_eq!(field, "locale");
                assert!(matches!(object.get(field), None | Some(Value::Null)), "locale dropped although given");
            }
        }
    }

    let unknown = object.keys().filter(|k| !TEXT_FIELDS.iter().any(|(f, _)| f == k)).count();
    assert_eq!(login.extra_fields.total(), unknown, "extra fields miscounted");
}

/// A reject: its reason agrees with what the body is, it names a login field when it blames one,
/// and its detail quotes no string value of the body.
fn check_reject(reject: &Reject, body: &[u8], json: Option<&Value>) {
    let utf8 = std::str::from_utf8(body).is_ok();
    assert_eq!(reject.reason == RejectReason::NotUtf8, !utf8, "NotUtf8 iff the body is not UTF-8");
    // A body over a cap is refused before anyone can say whether it is JSON.
    if utf8 && !reject.reason.is_over_a_cap() {
        assert_eq!(reject.reason == RejectReason::NotJson, json.is_none(), "NotJson iff the body is not JSON");
    }
    if let Some(json) = json.filter(|_| !reject.reason.is_over_a_cap()) {
        assert_eq!(reject.reason == RejectReason::NotObject, !json.is_object(), "NotObject iff JSON but no object");
    }
    assert_ne!(reject.reason, RejectReason::DbRejected, "parse never says DbRejected");
    match reject.field {
        Some(field) => assert!(
            TEXT_FIELDS.iter().any(|(f, _)| *f == field) || ["Message", "detail"].contains(&field),
            "reject blames unknown field {field}"
        ),
        None => assert!(
            reject.reason.is_over_a_cap()
                || matches!(
                    reject.reason,
                    RejectReason::NotUtf8 | RejectReason::NotJson | RejectReason::NotObject | RejectReason::BadEnvelope
                ),
            "reject {} names no field",
            reject.reason
        ),
    }
    assert!(!reject.detail.contains('\n'), "a detail is one line");

    // A value is only findable in the body when it is JSON; every string in it (nested too) counts.
    let Some(json) = json else { return };
    let mut strings = Vec::new();
    collect_strings(json, &mut strings);
    for value in strings {
        if value.chars().count() < MIN_LEAK_CHARS || !reject.detail.contains(value) {
            continue;
        }
        assert!(
            is_fixed_wording(value),
            "reject detail quotes a value of the body: reason {}, field {:?}, detail {:?}, value {:?}",
            reject.reason,
            reject.field,
            reject.detail,
            value
        );
    }
}

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// True when `value` is a piece of the parser's own wording (field names, JSON kinds, the default
/// device types, fixed phrases, numbers such as lengths and limits), so finding it in a detail is
/// not a leak. The wording is learnt from `parse` itself, on canonical bad bodies whose string
/// values are all shorter than [`MIN_LEAK_CHARS`] (but for one long value that is checked not to
/// be quoted), so it follows src/event.rs when its messages change and cannot excuse a real leak.
/// Digit runs are compared as "0" because lengths differ between inputs; a value made only of
/// digits is never excused (no limit or length in a detail has six digits).
fn is_fixed_wording(value: &str) -> bool {
    static WORDING: OnceLock<String> = OnceLock::new();
    let wording = WORDING.get_or_init(|| {
        let details = canonical_details();
        collapse_digits(&details.join("\n"))
    });
    value.chars().any(|c| !c.is_ascii_digit()) && wording.contains(&collapse_digits(value))
}

/// The details `parse` gives for one bad body of each kind: each field missing, null, empty, blank,
/// of each wrong type, too long, with a NUL; a bad ip; an unknown device type; and
/// bodies that are not an object.
fn canonical_details() -> Vec<String> {
    const GOOD: &str =
        r#"{"user_id":"u1","app_version":"1.0","device_type":"ios","ip":"1.2.3.4","locale":"RU","device_id":"d1"}"#;
    // Longer than every column; checked below not to be quoted.
    let long: String = "\u{e9}".repeat(300);
    let rules = Rules::default();
    let mut bodies: Vec<String> = Vec::new();
    for (field, _) in TEXT_FIELDS {
        let mut variants: Vec<Option<Value>> =
            vec![None, Some(Value::Null), Some("".into()), Some("  ".into()), Some("a\0b".into())];
        variants.push(Some(long.clone().into()));
        variants.extend([Value::Bool(true), 12.into(), Value::Array(vec![]), Value::Object(Map::new())].map(Some));
        for variant in variants {
            let mut object: Map<String, Value> = serde_json::from_str(GOOD).expect("GOOD is a JSON object");
            match variant {
                None => {
                    object.remove(field);
                }
                Some(v) => {
                    object.insert(field.to_owned(), v);
                }
            }
            bodies.push(Value::Object(object).to_string());
        }
    }
    bodies.push(GOOD.replace("1.2.3.4", "1.2.3"));
    bodies.push(GOOD.replace("\"ios\"", "\"toy\""));
    for not_object in ["[1]", "\"s\"", "12", "true", "null"] {
        bodies.push(not_object.to_owned());
    }
    // Envelopes that cannot be read, and bodies over each cap.
    for envelope in [
        r#"{"Type":"Notification","Message":"x"}"#,
        r#"{"Type":"Notification","Message":1}"#,
        r#"{"Type":"Notification","Message":"[1]"}"#,
        r#"{"detail-type":"a","source":"b","detail":1}"#,
    ] {
        bodies.push(envelope.to_owned());
    }
    let mut nested = GOOD.to_owned();
    for _ in 0..=event::MAX_ENVELOPES {
        nested = serde_json::json!({"Type": "Notification", "Message": nested}).to_string();
    }
    bodies.push(nested);
    bodies.push(format!("{}{}", "[".repeat(200), "]".repeat(200)));
    bodies.push(format!("{{{}\"z\":0}}", (0..2000).map(|i| format!("\"k{i}\":0,")).collect::<String>()));
    bodies.push(format!("\"{}\"", "x".repeat(2 * 1024 * 1024)));

    let mut details = Vec::new();
    for body in &bodies {
        // A missing or null locale is valid: those bodies parse and teach nothing.
        let Err(reject) = event::parse(body.as_bytes(), &rules) else { continue };
        assert!(!reject.detail.contains(&long[..12]), "canonical detail quotes its long value: {}", reject.detail);
        details.push(reject.detail);
    }
    details
}

/// `value` with every run of ASCII digits replaced by a single `0`.
fn collapse_digits(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut in_digits = false;
    for c in value.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('0');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// `mask_body`: `Some` exactly for JSON bodies within the caps; and no string value of the body
/// (>= 8 chars, with a char no token or prefix holds, nothing JSON escapes) appears in the output,
/// unless it is also a key of the body (kept keys are shown) or the value of a declared readable
/// field (`device_type`, `app_version`, `locale` stay readable at the login's level).
fn check_masked_body(masker: &Masker, body: &[u8], json: Option<&Value>, rules: &Rules) {
    let masked = masker.mask_body(body, rules);
    let Some(json) = json else {
        assert!(masked.is_none(), "mask_body kept a body that is not JSON");
        return;
    };
    // `None` is allowed for JSON too: over the body cap or past the leaf limit.
    let Some(masked) = masked else { return };
    serde_json::from_str::<Value>(&masked).expect("mask_body output is JSON");
    let (mut strings, mut excused) = (Vec::new(), Vec::new());
    collect_strings(json, &mut strings);
    collect_excused(json, &mut excused);
    for value in strings {
        let checkable = value.chars().count() >= MIN_PII_CHARS
            && value.chars().any(|c| !(c.is_ascii_digit() || c.is_ascii_lowercase() || c == ':'))
            && !value.chars().any(|c| c == '"' || c == '\\' || c == '/' || c.is_control() || !c.is_ascii());
        if checkable && !excused.iter().any(|e| e.contains(value)) {
            assert!(!masked.contains(value), "mask_body output contains a value of the body: {value:?}");
        }
    }
}

/// Keys at any depth, and values of the readable login fields at any depth.
fn collect_excused<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_excused(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                out.push(key);
                match v {
                    Value::String(s) if ["device_type", "app_version", "locale"].contains(&key.as_str()) => out.push(s),
                    _ => collect_excused(v, out),
                }
            }
        }
        _ => {}
    }
}
