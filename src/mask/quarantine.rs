//! Default-deny masking of a quarantined body (the rule is written out in `docs/pii.md`).
//!
//! The shape stays for debugging: keys, JSON types of containers, array sizes, string lengths. Every
//! string and number leaf becomes a token (`"str:<chars>:<hmac>"`, `"num:<hmac>"`), at any depth, in
//! arrays, in the payload of an SNS or EventBridge envelope and inside strings that hold JSON. Only
//! `device_type`, `app_version` and `locale` (under any of their configured names), at the login's
//! own level, stay readable, and only when they do not look personal. A key that does not look like
//! an identifier is itself replaced by `"key:<hmac>"`. Booleans and nulls stay.
//!
//! Bounded: a body over `validation.max_body_bytes` or with more than [`MAX_LEAVES`] leaves is not
//! kept at all (only its HMAC and length are), and JSON inside strings is followed only
//! [`MAX_STRING_DEPTH`] levels deep (deeper, the whole string is one token).

use serde_json::{Map, Value};

use super::Masker;
use crate::event::{Envelope, Rules, canonical_ip, payload_key};

/// Most string and number leaves masked in one body (each costs an HMAC and ~80 bytes of output).
pub const MAX_LEAVES: usize = 10_000;

/// Deepest nesting at which a string is still read as JSON.
const MAX_STRING_DEPTH: usize = 48;

/// Longest readable value of a declared non-sensitive field, in characters (their column width).
const MAX_READABLE_CHARS: usize = 32;

pub(super) fn mask(masker: &Masker, body: &[u8], rules: &Rules) -> Option<String> {
    if body.len() > rules.limits.max_body_bytes {
        return None;
    }
    // serde_json refuses nesting past 128 levels: such a body is kept as its HMAC only.
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let mut walk = Walk { masker, rules, leaves: 0 };
    walk.value(&mut value, true, 0).ok()?;
    // Serializing a Value cannot fail (string keys only).
    Some(serde_json::to_string(&value).expect("a JSON value always serializes"))
}

/// Too many leaves: the body is not kept.
struct TooBig;

struct Walk<'m> {
    masker: &'m Masker,
    rules: &'m Rules,
    leaves: usize,
}

impl Walk<'_> {
    /// Masks `value` in place. `login_level` is true for the body itself and an envelope's payload:
    /// the objects where a login's own fields live.
    fn value(&mut self, value: &mut Value, login_level: bool, depth: usize) -> Result<(), TooBig> {
        match value {
            Value::Null | Value::Bool(_) => Ok(()),
            Value::Number(n) => {
                let token = self.token(&n.to_string())?;
                *value = Value::String(format!("num:{token}"));
                Ok(())
            }
            Value::String(s) => {
                let masked = self.string(s, login_level, depth)?;
                *s = masked;
                Ok(())
            }
            Value::Array(items) => items.iter_mut().try_for_each(|item| self.value(item, false, depth + 1)),
            Value::Object(map) => self.object(map, login_level, depth),
        }
    }

    fn object(&mut self, map: &mut Map<String, Value>, login_level: bool, depth: usize) -> Result<(), TooBig> {
        let payload = match self.rules.envelope {
            Envelope::Auto if login_level => payload_key(map),
            _ => None,
        };
        for (key, mut value) in std::mem::take(map) {
            let is_payload = payload == Some(key.as_str());
            if !(login_level && self.is_readable(&key, &value)) {
                self.value(&mut value, is_payload, depth + 1)?;
            }
            let key = if self.keeps_key(&key) { key } else { format!("key:{}", self.token(&key)?) };
            map.insert(key, value);
        }
        Ok(())
    }

    /// A string leaf: JSON inside is masked in place (the string keeps holding JSON); anything else
    /// becomes its token.
    fn string(&mut self, s: &str, login_level: bool, depth: usize) -> Result<String, TooBig> {
        let looks_like_json = matches!(s.trim_start().as_bytes().first(), Some(b'{' | b'['));
        if looks_like_json
            && depth < MAX_STRING_DEPTH
            && let Ok(mut inner) = serde_json::from_str::<Value>(s)
        {
            self.value(&mut inner, login_level, depth + 1)?;
            return Ok(serde_json::to_string(&inner).expect("a JSON value always serializes"));
        }
        // An address is tokenised in canonical form, as in `user_logins.masked_ip`.
        let token = match canonical_ip(s) {
            Some(ip) => self.token(&ip)?,
            None => self.token(s)?,
        };
        Ok(format!("str:{}:{token}", s.chars().count()))
    }

    fn token(&mut self, text: &str) -> Result<String, TooBig> {
        self.leaves += 1;
        if self.leaves > MAX_LEAVES {
            return Err(TooBig);
        }
        Ok(self.masker.token(text))
    }

    /// A declared non-sensitive login field holding a short string that does not look personal.
    fn is_readable(&self, key: &str, value: &Value) -> bool {
        let readable_field = self.rules.fields.lookup(key).is_some_and(|(field, _)| field.is_readable());
        let Value::String(s) = value else { return false };
        readable_field
            && s.chars().count() <= MAX_READABLE_CHARS
            && !s.contains('@')
            && s.bytes().filter(u8::is_ascii_digit).count() <= 6
            && canonical_ip(s).is_none()
    }

    /// A configured field name, or a key shaped like an identifier: a letter or `_` first, then
    /// letters, digits, `_` and `-`, at most 64 bytes and 3 digits. So no address, e-mail, number,
    /// phone, date or dotted name survives as a key.
    fn keeps_key(&self, key: &str) -> bool {
        if self.rules.fields.lookup(key).is_some() {
            return true;
        }
        let bytes = key.as_bytes();
        let Some(first) = bytes.first() else { return true };
        bytes.len() <= 64
            && (first.is_ascii_alphabetic() || *first == b'_')
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            && bytes.iter().filter(|b| b.is_ascii_digit()).count() <= 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker() -> Masker {
        Masker::new(&[7; 32], None).unwrap()
    }

    fn masked(body: &str) -> String {
        masker().mask_body(body.as_bytes(), &Rules::default()).unwrap()
    }

    #[test]
    fn every_leaf_is_a_token_at_any_depth_and_the_shape_stays() {
        let m = masker();
        let out = masked(r#"{"a":{"b":["203.0.113.9",42,true,null,{"c":"x"}]},"device_type":"ios"}"#);
        let want = serde_json::json!({
            "a": {"b": [format!("str:11:{}", m.token("203.0.113.9")), format!("num:{}", m.token("42")), true, null,
                        {"c": format!("str:1:{}", m.token("x"))}]},
            "device_type": "ios",
        });
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), want);
    }

    #[test]
    fn keys_that_may_be_personal_become_tokens() {
        let m = masker();
        let out = masked(r#"{"alice@example.com":1,"203.0.113.9":2,"5551234567":3,"ok_key-2":4,"":5}"#);
        let v: Value = serde_json::from_str(&out).unwrap();
        for key in ["alice@example.com", "203.0.113.9", "5551234567"] {
            assert!(v.get(format!("key:{}", m.token(key))).is_some(), "{key}: {out}");
            assert!(!out.contains(key));
        }
        assert!(v.get("ok_key-2").is_some() && v.get("").is_some(), "{out}");
    }

    #[test]
    fn readable_fields_stay_only_at_the_login_level_and_only_when_they_look_harmless() {
        let out = masked(r#"{"locale":"RU","app_version":"2.3.0","nested":{"locale":"RU"},"device_type":"a@b.c"}"#);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!((v["locale"].as_str(), v["app_version"].as_str()), (Some("RU"), Some("2.3.0")));
        assert!(v["nested"]["locale"].as_str().unwrap().starts_with("str:2:"));
        assert!(v["device_type"].as_str().unwrap().starts_with("str:5:"));
        for personal in ["593-47-5928", "1.2.3.4", "2001:db8::1"] {
            let out = masked(&serde_json::json!({"app_version": personal}).to_string());
            assert!(!out.contains(personal), "{out}");
        }
    }

    #[test]
    fn envelopes_and_json_in_strings_are_masked_inside_and_keep_their_login_level() {
        let login = r#"{"user_id":"u","ip":"203.0.113.9","device_id":"593-47-5928","locale":"RU"}"#;
        let sns = serde_json::json!({"Type": "Notification", "Message": login, "Note": "{\"ip\":\"203.0.113.9\"}"});
        let out = masked(&sns.to_string());
        assert!(!out.contains("203.0.113.9") && !out.contains("593-47-5928"), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let inner: Value = serde_json::from_str(v["Message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["locale"], "RU", "the SNS payload is the login's level");
        assert_eq!(inner["ip"], format!("str:11:{}", masker().token("203.0.113.9")));
        let note: Value = serde_json::from_str(v["Note"].as_str().unwrap()).unwrap();
        assert!(note["ip"].as_str().unwrap().starts_with("str:11:"));
        let none = Rules { envelope: Envelope::None, ..Rules::default() };
        let out = masker().mask_body(sns.to_string().as_bytes(), &none).unwrap();
        assert!(!out.contains("\\\"RU\\\""), "without envelopes the payload is not the login level: {out}");
    }

    #[test]
    fn ip_spellings_share_one_token_and_bodies_past_the_bounds_are_not_kept() {
        let a = masked(r#"{"x":"2001:DB8::1"}"#);
        assert_eq!(a, masked(r#"{"x":"2001:db8::1"}"#));
        assert!(masked(r#"{"x":"::ffff:198.51.100.7"}"#).contains(&masker().token("198.51.100.7")));
        let leaves = format!("[{}]", vec!["1"; MAX_LEAVES + 1].join(","));
        assert_eq!(masker().mask_body(leaves.as_bytes(), &Rules::default()), None);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(masker().mask_body(deep.as_bytes(), &Rules::default()), None);
        assert_eq!(masker().mask_body(b"\xff{}", &Rules::default()), None);
        assert_eq!(masker().mask_body(b"not json 1.2.3.4", &Rules::default()), None);
    }
}
