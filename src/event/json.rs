//! A borrowed JSON view for validation, read in one pass with caps on object fields and nesting.
//!
//! Strings are borrowed from the body where they hold no escapes, objects are their fields in order,
//! and of everything else only the kind is kept. Building `serde_json::Value` instead (a BTreeMap
//! and a String per field) was the largest CPU item of a replay. Every step is constant work per
//! byte of input: nothing here looks back over what it already read, so judging is linear in the
//! body's size, and the caps stop a hostile body early.

use std::borrow::Cow;
use std::cell::Cell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Caps on one body, checked while it is read. A body over a cap is rejected with a reason code
/// naming the cap (`too_large`, `too_many_fields`, `too_deep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body judged, in bytes (SQS's own maximum is 1 MiB).
    pub max_body_bytes: usize,
    /// Most object fields in one body, counted at every depth.
    pub max_fields: usize,
    /// Deepest nesting of objects and arrays (the body itself is depth 1).
    pub max_depth: usize,
}

/// Deepest nesting a configuration may allow: serde_json stops at 128 on its own, and the masking
/// walk of a quarantined body must stay well inside the stack.
pub const MAX_DEPTH_LIMIT: usize = 100;

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 1024 * 1024, max_fields: 1000, max_depth: 32 }
    }
}

/// A JSON document as far as validation needs it.
pub(crate) enum Json<'a> {
    Null,
    Bool,
    Number,
    String(Cow<'a, str>),
    Array,
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    pub(crate) fn kind(&self) -> &'static str {
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

/// Which cap a body went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Fields,
    Depth,
}

/// Why a text could not be read.
pub(crate) enum ReadError {
    /// Not JSON; serde_json's message names the position and the kind of error, never the input.
    Syntax(serde_json::Error),
    Exceeded(Exceeded),
}

/// Reads `text` into a [`Json`] view, within `limits` (the body size is checked by the caller).
pub(crate) fn read<'a>(text: &'a str, limits: &Limits) -> Result<Json<'a>, ReadError> {
    let budget = Budget { limits: *limits, fields: Cell::new(0), depth: Cell::new(0), exceeded: Cell::new(None) };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Seed(&budget).deserialize(&mut deserializer).and_then(|v| deserializer.end().map(|()| v));
    match (value, budget.exceeded.get()) {
        (_, Some(exceeded)) => Err(ReadError::Exceeded(exceeded)),
        (Ok(value), None) => Ok(value),
        (Err(error), None) => Err(ReadError::Syntax(error)),
    }
}

/// What has been read so far, shared by every level of one read.
struct Budget {
    limits: Limits,
    fields: Cell<usize>,
    depth: Cell<usize>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Budget {
    fn over<E: de::Error>(&self, what: Exceeded) -> E {
        self.exceeded.set(Some(what));
        E::custom("a limit was exceeded")
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        let depth = self.depth.get() + 1;
        if depth > self.limits.max_depth {
            return Err(self.over(Exceeded::Depth));
        }
        self.depth.set(depth);
        Ok(())
    }

    fn leave(&self) {
        self.depth.set(self.depth.get() - 1);
    }

    fn field<E: de::Error>(&self) -> Result<(), E> {
        let fields = self.fields.get() + 1;
        if fields > self.limits.max_fields {
            return Err(self.over(Exceeded::Fields));
        }
        self.fields.set(fields);
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Seed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        self.0.enter()?;
        // Elements are read (so nesting and fields inside them count) but only the kind is kept.
        while seq.next_element_seed(self)?.is_some() {}
        self.0.leave();
        Ok(Json::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        self.0.enter()?;
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            self.0.field()?;
            fields.push((key, map.next_value_seed(self)?));
        }
        self.0.leave();
        Ok(Json::Object(fields))
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_fields: usize, max_depth: usize) -> Limits {
        Limits { max_fields, max_depth, ..Limits::default() }
    }

    #[test]
    fn fields_are_counted_at_every_depth_and_in_arrays() {
        let text = r#"{"a":1,"b":[{"c":2},{"d":{"e":3}}]}"#;
        assert!(read(text, &limits(5, 10)).is_ok());
        assert!(matches!(read(text, &limits(4, 10)), Err(ReadError::Exceeded(Exceeded::Fields))));
    }

    #[test]
    fn nesting_past_the_cap_is_refused_before_serde_json_would_recurse_further() {
        assert!(read("[[[[1]]]]", &limits(10, 4)).is_ok());
        assert!(matches!(read("[[[[1]]]]", &limits(10, 3)), Err(ReadError::Exceeded(Exceeded::Depth))));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(read(&deep, &Limits::default()), Err(ReadError::Exceeded(Exceeded::Depth))));
    }

    #[test]
    fn trailing_text_and_bad_syntax_are_syntax_errors() {
        assert!(matches!(read("{} x", &Limits::default()), Err(ReadError::Syntax(_))));
        assert!(matches!(read("{", &Limits::default()), Err(ReadError::Syntax(_))));
    }
}
