//! Serde helpers that reproduce Go `encoding/json` conventions (private to the crate).
//!
//! * times: Go's `RFC3339Nano` (`2006-01-02T15:04:05.999999999Z07:00`): fraction with trailing zeros trimmed,
//!   no fraction at all for whole seconds. We always write UTC (`Z`); any offset is accepted when reading.
//! * `[]byte`: standard base64 with padding; a nil slice is `null`. We write `null` for an empty vector and read
//!   `null` or `""` as empty.
//! * maps (`labels`, `annotations`, `limits`): a nil map is `null`. We write `null` for an empty map (what Go
//!   writes for the usual empty case, a nil map) and read `null` or `{}` as empty.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Formats like Go's `time.Time.MarshalJSON` for a UTC time.
pub(crate) fn format_time(t: &DateTime<Utc>) -> String {
    let mut s = t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        let frac = frac.trim_end_matches('0');
        // `s` ends with 'Z'; insert the fraction before it.
        s.insert_str(s.len() - 1, &format!(".{frac}"));
    }
    s
}

/// Parses an RFC 3339 timestamp with any offset into UTC.
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// Non-optional timestamp (`createdAt`).
pub(crate) mod time {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse_time(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {s:?}: {e}")))
    }
}

/// Optional timestamp (`deletedAt`, Go `*time.Time`): `null` reads as `None`.
pub(crate) mod opt_time {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_time(t)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse_time(&s)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {s:?}: {e}"))),
        }
    }
}

/// Go `[]byte`: base64 (standard, padded); empty ⇄ `null`.
pub(crate) mod bytes {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if b.is_empty() {
            s.serialize_none()
        } else {
            s.serialize_str(&STANDARD.encode(b))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => STANDARD
                .decode(s.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}"))),
        }
    }
}

/// Go map that is written as `null` when nil: empty ⇄ `null`.
pub(crate) mod map_or_null {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    pub(crate) fn serialize<S, V>(m: &BTreeMap<String, V>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        V: Serialize,
    {
        if m.is_empty() {
            s.serialize_none()
        } else {
            m.serialize(s)
        }
    }

    pub(crate) fn deserialize<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        Ok(Option::<BTreeMap<String, V>>::deserialize(d)?.unwrap_or_default())
    }
}

/// Reads `null` as the type's default (Go nil map / nil slice); writes normally.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_like_go_rfc3339nano() {
        let t = parse_time("2024-05-01T10:11:12.123456789Z").expect("valid");
        assert_eq!(format_time(&t), "2024-05-01T10:11:12.123456789Z");
        let t = parse_time("2024-05-01T10:11:12.120Z").expect("valid");
        assert_eq!(format_time(&t), "2024-05-01T10:11:12.12Z");
        let t = parse_time("2024-05-01T10:11:12Z").expect("valid");
        assert_eq!(format_time(&t), "2024-05-01T10:11:12Z");
        assert_eq!(format_time(&crate::zero_time()), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn times_with_an_offset_are_read_as_the_same_instant_in_utc() {
        let t = parse_time("2024-05-01T12:11:12.5+02:00").expect("valid");
        assert_eq!(format_time(&t), "2024-05-01T10:11:12.5Z");
    }
}
