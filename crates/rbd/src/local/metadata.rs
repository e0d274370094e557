//! [`Metadata`]: one image's key/value metadata as the [`LocalBackend`](super::LocalBackend)
//! keeps it in memory, for every image it holds.
//!
//! Owns only that representation; the catalogue, the locking and `meta.json` stay in the parent
//! module.
//!
//! Why not a `BTreeMap<String, String>`: the provider writes about fifteen keys on every volume
//! (`wwn` and the `conf_rbd_qos_*` limits), and as a map of owned strings they cost about 3 KB of
//! heap per image (three B-tree nodes and thirty small allocations) — most of the daemon's memory
//! with 10k volumes on the embedded default (BENCHMARKS.md, *rss*). Here they are one allocation:
//! the map's compact JSON text (about 600 bytes for those keys). Reads and writes decode it, which
//! costs microseconds and happens a few times in an image's life (provisioning, clone); listing
//! images or volumes never touches it. On disk (`meta.json`) it is the same JSON object as before.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One image's metadata, sorted by key, encoded as a JSON object in one allocation.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Metadata(Box<str>);

impl Default for Metadata {
    fn default() -> Self {
        Metadata("{}".into())
    }
}

impl Metadata {
    /// Every key and value.
    pub(super) fn to_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.0).expect("a Metadata always holds a JSON object of strings")
    }

    /// The value of `key`, if set.
    pub(super) fn get(&self, key: &str) -> Option<String> {
        self.to_map().remove(key)
    }

    /// Sets every pair, in order (a later pair wins over an earlier one with the same key).
    pub(super) fn set_all<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut map = self.to_map();
        for (key, value) in pairs {
            map.insert(key.to_string(), value.to_string());
        }
        *self = Metadata::from_map(&map);
    }

    fn from_map(map: &BTreeMap<String, String>) -> Metadata {
        Metadata(
            serde_json::to_string(map)
                .expect("a map of strings always encodes")
                .into_boxed_str(),
        )
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.to_map()).finish()
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(Metadata::from_map(&map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_all_keeps_every_key_sorted_and_the_last_value_wins() {
        let mut m = Metadata::default();
        m.set_all([("wwn", "0x1"), ("conf_b", "2")]);
        m.set_all([("conf_a", "1"), ("wwn", "0x2")]);
        let map = m.to_map();
        assert_eq!(
            map.into_iter().collect::<Vec<_>>(),
            [
                ("conf_a".to_string(), "1".to_string()),
                ("conf_b".to_string(), "2".to_string()),
                ("wwn".to_string(), "0x2".to_string()),
            ]
        );
        assert_eq!(m.get("conf_b").as_deref(), Some("2"));
        assert_eq!(m.get("missing"), None);
    }

    #[test]
    fn it_reads_and_writes_the_same_json_object_as_a_map_of_strings() {
        let json = r#"{"wwn":"0xabc","conf_rbd_qos_iops_limit":"3000","odd \"key\"":"é\n"}"#;
        let m: Metadata = serde_json::from_str(json).expect("decodes");
        let as_map: BTreeMap<String, String> = serde_json::from_str(json).expect("decodes");
        assert_eq!(m.to_map(), as_map);
        assert_eq!(
            serde_json::to_string(&m).expect("encodes"),
            serde_json::to_string(&as_map).expect("encodes")
        );
    }

    #[test]
    fn non_string_values_are_refused_when_read() {
        assert!(serde_json::from_str::<Metadata>(r#"{"wwn":1}"#).is_err());
    }
}
