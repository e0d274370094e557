//! Volume classes (`--supported-volume-classes`): a YAML or JSON list of IRI
//! `VolumeClass` objects with proto JSON names, e.g.
//! `[{"name":"fast","capabilities":{"tps":262144000,"iops":15000}}]`. Unknown keys are ignored,
//! duplicate or empty names and negative capabilities are rejected. The file is loaded and validated
//! before anything else starts (the Go provider loaded it only after every background loop had
//! started). Classes keep their file order, which is the order
//! of `Status` replies.
//!
//! Without a file the daemon uses [`VolumeClasses::builtin`]: one class `standard` with modest caps
//! (100 MiB/s, 3000 IOPS), enough for a newcomer to create volumes on the embedded default.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Name of the built-in class used when no class file is given.
pub const BUILTIN_CLASS: &str = "standard";
/// Throughput (bytes/s) of the built-in class: 100 MiB/s.
pub const BUILTIN_TPS: i64 = 100 * 1024 * 1024;
/// IOPS of the built-in class.
pub const BUILTIN_IOPS: i64 = 3000;

/// One supported volume class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeClass {
    /// Class name (what CreateVolume's `spec.class` names).
    pub name: String,
    /// Throughput limit in bytes per second.
    pub tps: i64,
    /// IOPS limit.
    pub iops: i64,
}

#[derive(Deserialize)]
struct RawClass {
    #[serde(default)]
    name: String,
    #[serde(default)]
    capabilities: Option<RawCaps>,
}

#[derive(Deserialize, Default)]
struct RawCaps {
    #[serde(default)]
    tps: i64,
    #[serde(default)]
    iops: i64,
}

/// The supported classes, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeClasses {
    classes: Vec<VolumeClass>,
}

impl VolumeClasses {
    /// The built-in class list (see the module docs).
    pub fn builtin() -> VolumeClasses {
        VolumeClasses {
            classes: vec![VolumeClass {
                name: BUILTIN_CLASS.to_string(),
                tps: BUILTIN_TPS,
                iops: BUILTIN_IOPS,
            }],
        }
    }

    /// Builds and validates a class list.
    pub fn new(classes: Vec<VolumeClass>) -> std::result::Result<VolumeClasses, String> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in classes.iter().enumerate() {
            if c.name.trim().is_empty() {
                return Err(format!("class #{i}: name must not be empty"));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(format!("duplicate class name {:?}", c.name));
            }
            if c.tps < 0 || c.iops < 0 {
                return Err(format!(
                    "class {:?}: capabilities must not be negative",
                    c.name
                ));
            }
        }
        Ok(VolumeClasses { classes })
    }

    /// Parses a YAML or JSON class list (see the module docs).
    pub fn parse(text: &str) -> std::result::Result<VolumeClasses, String> {
        let raw: Option<Vec<RawClass>> = serde_yaml::from_str(text)
            .map_err(|e| format!("not a YAML/JSON list of classes: {e}"))?;
        let classes = raw
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let caps = r.capabilities.unwrap_or_default();
                VolumeClass {
                    name: r.name,
                    tps: caps.tps,
                    iops: caps.iops,
                }
            })
            .collect();
        VolumeClasses::new(classes)
    }

    /// Reads and validates a class file.
    pub fn load(path: &Path) -> Result<VolumeClasses> {
        let err = |reason: String| Error::Classes {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let classes = VolumeClasses::parse(&text).map_err(err)?;
        if classes.classes.is_empty() {
            return Err(err("the file lists no class".to_string()));
        }
        Ok(classes)
    }

    /// The class called `name`.
    pub fn get(&self, name: &str) -> Option<&VolumeClass> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// All classes in file order.
    pub fn iter(&self) -> impl Iterator<Item = &VolumeClass> {
        self.classes.iter()
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there is no class.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Class names joined with `, ` (for messages).
    pub fn names(&self) -> String {
        self.classes
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_class_list_parses_in_file_order() {
        let c = VolumeClasses::parse(
            r#"[{"name":"fast","capabilities":{"tps":262144000,"iops":15000}},{"name":"slow","capabilities":{"tps":1,"iops":2}}]"#,
        )
        .expect("valid");
        let names: Vec<_> = c.iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, ["fast", "slow"]);
        assert_eq!(c.get("fast").expect("fast").iops, 15000);
        assert_eq!(c.get("fast").expect("fast").tps, 262_144_000);
    }

    #[test]
    fn a_yaml_class_list_with_unknown_keys_parses() {
        let c = VolumeClasses::parse(
            "- name: fast\n  extra: 1\n  capabilities:\n    tps: 10\n    iops: 20\n    other: x\n",
        )
        .expect("valid");
        assert_eq!(
            c.get("fast"),
            Some(&VolumeClass {
                name: "fast".into(),
                tps: 10,
                iops: 20
            })
        );
    }

    #[test]
    fn duplicate_class_names_are_rejected() {
        let e = VolumeClasses::parse("- name: a\n- name: a\n").expect_err("must fail");
        assert!(e.contains("duplicate class name \"a\""), "{e}");
    }

    #[test]
    fn empty_names_and_negative_caps_are_rejected() {
        assert!(VolumeClasses::parse("- capabilities: {tps: 1}\n").is_err());
        assert!(VolumeClasses::parse("- name: a\n  capabilities: {tps: -1}\n").is_err());
        assert!(VolumeClasses::parse("{name: a}").is_err());
    }

    #[test]
    fn a_class_file_without_classes_is_rejected_before_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "[]").expect("write");
        assert!(VolumeClasses::load(&p).is_err());
        assert!(VolumeClasses::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_builtin_list_has_one_standard_class() {
        let c = VolumeClasses::builtin();
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(BUILTIN_CLASS).expect("standard").iops, BUILTIN_IOPS);
    }
}
