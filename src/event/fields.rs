//! The names a login's fields go by ([`FieldNames`], config table `[fields]`), and the bounded set of
//! labels under which extra fields are counted ([`ExtraFields`]).
//!
//! Field names in a body are chosen by the producer, so by whoever controls the producer: they are
//! never copied into a label, a log line or a reject detail. Only the names listed here are.

use std::collections::HashSet;

/// A field of a login, by its canonical name (the `user_logins` column it feeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    UserId,
    AppVersion,
    DeviceType,
    Ip,
    DeviceId,
    Locale,
}

impl Field {
    /// Every field, in the order of [`Field::index`].
    pub const ALL: [Field; 6] =
        [Field::UserId, Field::AppVersion, Field::DeviceType, Field::Ip, Field::DeviceId, Field::Locale];

    /// The canonical name, as in the default `[fields]` table and in reject details.
    pub fn name(self) -> &'static str {
        match self {
            Field::UserId => "user_id",
            Field::AppVersion => "app_version",
            Field::DeviceType => "device_type",
            Field::Ip => "ip",
            Field::DeviceId => "device_id",
            Field::Locale => "locale",
        }
    }

    /// Position in [`Field::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The fields that are not personal and stay readable in a quarantined body.
    pub fn is_readable(self) -> bool {
        matches!(self, Field::DeviceType | Field::AppVersion | Field::Locale)
    }
}

/// The accepted names of each login field, checked by `Config::validate` (no empty list, no name
/// shared by two fields). Lookups scan a short flat list: a handful of names, constant per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldNames {
    names: Vec<(String, Field)>,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames { names: Field::ALL.iter().map(|f| (f.name().to_owned(), *f)).collect() }
    }
}

impl FieldNames {
    /// Names per field, in [`Field::ALL`] order. Validation is the config's job; a name given for two
    /// fields here belongs to the first.
    pub fn new(per_field: [&[String]; 6]) -> Self {
        let mut names = Vec::new();
        for (field, list) in Field::ALL.iter().zip(per_field) {
            names.extend(list.iter().map(|name| (name.clone(), *field)));
        }
        FieldNames { names }
    }

    /// The field `key` names, and which of its names it is.
    pub fn lookup(&self, key: &str) -> Option<(Field, usize)> {
        self.names.iter().position(|(name, _)| name == key).map(|i| (self.names[i].1, i))
    }
}

/// Labels of the `pii_ingest_extra_fields_total` metric: common names of personal data, so an
/// operator sees *which kind* of data a producer sends, and `other` for every other name. Matched
/// after lower-casing and removing `_`, `-` and `.`; never an arbitrary producer-chosen name.
pub const EXTRA_FIELD_LABELS: [&str; 16] = [
    "email",
    "phone",
    "name",
    "address",
    "birth_date",
    "ssn",
    "password",
    "token",
    "location",
    "card",
    "ip",
    "device_id",
    "user_agent",
    "session",
    "advertising_id",
    "other",
];

/// Normalised names and the label each one counts under.
const EXTRA_FIELD_NAMES: &[(&str, usize)] = &[
    ("email", 0),
    ("mail", 0),
    ("emailaddress", 0),
    ("phone", 1),
    ("phonenumber", 1),
    ("mobile", 1),
    ("msisdn", 1),
    ("tel", 1),
    ("name", 2),
    ("firstname", 2),
    ("lastname", 2),
    ("fullname", 2),
    ("surname", 2),
    ("username", 2),
    ("address", 3),
    ("street", 3),
    ("city", 3),
    ("zip", 3),
    ("zipcode", 3),
    ("postcode", 3),
    ("postalcode", 3),
    ("dob", 4),
    ("birthdate", 4),
    ("dateofbirth", 4),
    ("birthday", 4),
    ("ssn", 5),
    ("nationalid", 5),
    ("password", 6),
    ("pass", 6),
    ("pwd", 6),
    ("token", 7),
    ("accesstoken", 7),
    ("apikey", 7),
    ("secret", 7),
    ("location", 8),
    ("lat", 8),
    ("latitude", 8),
    ("lon", 8),
    ("lng", 8),
    ("longitude", 8),
    ("geo", 8),
    ("card", 9),
    ("cardnumber", 9),
    ("creditcard", 9),
    ("iban", 9),
    ("ip", 10),
    ("ipaddress", 10),
    ("clientip", 10),
    ("deviceid", 11),
    ("imei", 11),
    ("mac", 11),
    ("macaddress", 11),
    ("serialnumber", 11),
    ("useragent", 12),
    ("ua", 12),
    ("session", 13),
    ("sessionid", 13),
    ("cookie", 13),
    ("idfa", 14),
    ("gaid", 14),
    ("advertisingid", 14),
    ("adid", 14),
];

/// Extra fields of one login, counted per label of [`EXTRA_FIELD_LABELS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraFields([usize; EXTRA_FIELD_LABELS.len()]);

impl ExtraFields {
    /// Counts each distinct key of `keys` once (a key given twice is one field, as in a JSON map).
    pub(crate) fn count<'k>(keys: impl Iterator<Item = &'k str>) -> Self {
        let mut seen = HashSet::new();
        let mut counts = ExtraFields::default();
        for key in keys {
            if seen.insert(key) {
                counts.0[label_index(key)] += 1;
            }
        }
        counts
    }

    /// All extra fields.
    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }

    /// `(label, count)` for every label with a non-zero count.
    pub fn by_label(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        EXTRA_FIELD_LABELS.iter().zip(self.0).filter(|(_, n)| *n > 0).map(|(label, n)| (*label, n))
    }
}

fn label_index(key: &str) -> usize {
    const OTHER: usize = EXTRA_FIELD_LABELS.len() - 1;
    // Longer than any listed name: no need to normalise it.
    if key.len() > 24 {
        return OTHER;
    }
    let normal: String = key.chars().filter(|c| !matches!(c, '_' | '-' | '.')).flat_map(char::to_lowercase).collect();
    EXTRA_FIELD_NAMES.iter().find(|(name, _)| *name == normal).map_or(OTHER, |(_, label)| *label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_pii_names_get_their_label_in_any_spelling_and_the_rest_are_other() {
        let keys = ["email", "E-Mail", "phoneNumber", "first_name", "alice@example.com", "zz", "zz", "203.0.113.9"];
        let extra = ExtraFields::count(keys.into_iter());
        let labels: Vec<_> = extra.by_label().collect();
        assert_eq!(labels, vec![("email", 2), ("phone", 1), ("name", 1), ("other", 3)]);
        assert_eq!(extra.total(), 7);
    }

    #[test]
    fn every_label_is_used_and_names_point_at_real_labels() {
        for (i, label) in EXTRA_FIELD_LABELS.iter().enumerate().filter(|(_, l)| **l != "other") {
            assert!(EXTRA_FIELD_NAMES.iter().any(|(_, l)| *l == i), "label {label} unused");
        }
        assert!(EXTRA_FIELD_NAMES.iter().all(|(n, l)| *l < EXTRA_FIELD_LABELS.len() - 1 && n.len() <= 24));
    }

    #[test]
    fn aliases_resolve_to_their_field() {
        let ip = vec!["ip".to_owned(), "ipAddress".to_owned()];
        let one = |n: &str| vec![n.to_owned()];
        let (u, a, d, i, l) = (one("user_id"), one("app_version"), one("device_type"), one("device_id"), one("locale"));
        let names = FieldNames::new([&u, &a, &d, &ip, &i, &l]);
        assert_eq!(names.lookup("ipAddress").map(|(f, _)| f), Some(Field::Ip));
        assert_ne!(names.lookup("ip").unwrap().1, names.lookup("ipAddress").unwrap().1);
        assert_eq!(names.lookup("IP"), None);
    }
}
