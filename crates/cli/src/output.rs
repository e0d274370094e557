//! CLI output: aligned tables, and JSON/YAML the way irictl prints them (Go `encoding/json` of the
//! generated structs: snake_case proto names, enums as numbers, bytes as base64, empty fields left
//! out — an empty nested message stays as `{}`, as a non-nil Go pointer would).

use std::time::{SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

use iri::{event_v1, volume_v1};

/// `-o` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON (snake_case proto names, enums as numbers).
    Json,
    /// YAML (same keys as JSON).
    Yaml,
}

/// Removes empty scalars, empty maps/lists and nulls like Go's `omitempty` (see module docs).
pub fn prune(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        Value::Array(a) if a.is_empty() => None,
        Value::Array(a) => Some(Value::Array(
            a.into_iter()
                .map(|x| prune(x).unwrap_or(Value::Null))
                .collect(),
        )),
        Value::Object(o) if o.is_empty() => None,
        Value::Object(o) => Some(Value::Object(
            o.into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect(),
        )),
        other => Some(other),
    }
}

/// An object as pruned JSON.
pub fn to_value<T: Serialize>(obj: &T) -> Value {
    let v = serde_json::to_value(obj).unwrap_or(Value::Null);
    prune(v).unwrap_or_else(|| Value::Object(Default::default()))
}

/// Renders `obj` as JSON or YAML (`Table` is not handled here).
pub fn render<T: Serialize>(obj: &T, fmt: Output) -> String {
    let v = to_value(obj);
    match fmt {
        Output::Yaml => serde_yaml::to_string(&v).unwrap_or_default(),
        _ => {
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

/// Aligned columns separated by three spaces, header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let n = cells.len();
        let mut l = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            l.push_str(&c);
            if i + 1 < n {
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
    out
}

/// Bytes in binary units: `512Mi`, `1Gi`, `1.5Gi`, `100` (below 1 KiB).
pub fn bytes(n: i64) -> String {
    const UNITS: [(&str, i64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (u, f) in UNITS {
        if n >= f {
            return if n % f == 0 {
                format!("{}{u}", n / f)
            } else {
                let v = n as f64 / f as f64;
                format!("{:.1}{u}", v)
            };
        }
    }
    n.to_string()
}

/// Parses a size: plain bytes or with a suffix `K/M/G/T` (powers of 1000) or `Ki/Mi/Gi/Ti`
/// (powers of 1024), optionally followed by `B`.
pub fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let t = t.strip_suffix('B').unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (examples: 1073741824, 10Gi, 512Mi)"))?;
    let f: i64 = match unit {
        "" => 1,
        "K" | "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?} (use K, M, G, T, Ki, Mi, Gi, Ti)"
            ))
        }
    };
    n.checked_mul(f)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// kubectl-style age of a Unix-nanosecond timestamp: `45s`, `3m`, `5h`, `2d`.
pub fn age(created_ns: i64, now_ns: i64) -> String {
    if created_ns <= 0 {
        return "<unknown>".to_string();
    }
    let s = (now_ns - created_ns).max(0) / 1_000_000_000;
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn volume_state_name(v: i32) -> String {
    volume_v1::VolumeState::try_from(v)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| v.to_string())
}

fn snapshot_state_name(v: i32) -> String {
    volume_v1::VolumeSnapshotState::try_from(v)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| v.to_string())
}

/// Volumes as a table: ID, CLASS, SIZE (requested), STATE, AGE.
pub fn volumes_table(vols: &[volume_v1::Volume]) -> String {
    let now = now_nanos();
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            let md = v.metadata.clone().unwrap_or_default();
            let spec = v.spec.clone().unwrap_or_default();
            let status = v.status.clone().unwrap_or_default();
            let mut state = volume_state_name(status.state);
            if md.deleted_at > 0 {
                state.push_str(" (deleting)");
            }
            vec![
                md.id,
                spec.class,
                bytes(spec.resources.map(|r| r.storage_bytes).unwrap_or(0)),
                state,
                age(md.created_at, now),
            ]
        })
        .collect();
    table(&["ID", "CLASS", "SIZE", "STATE", "AGE"], &rows)
}

/// Snapshots as a table: ID, VOLUMEID, SIZE, STATE, AGE.
pub fn snapshots_table(snaps: &[volume_v1::VolumeSnapshot]) -> String {
    let now = now_nanos();
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            let md = s.metadata.clone().unwrap_or_default();
            let status = s.status.unwrap_or_default();
            let mut state = snapshot_state_name(status.state);
            if md.deleted_at > 0 {
                state.push_str(" (deleting)");
            }
            vec![
                md.id,
                s.spec.clone().unwrap_or_default().volume_id,
                bytes(status.size),
                state,
                age(md.created_at, now),
            ]
        })
        .collect();
    table(&["ID", "VOLUMEID", "SIZE", "STATE", "AGE"], &rows)
}

/// Status as a table: NAME, TPS, IOPS, QUANTITY.
pub fn status_table(st: &volume_v1::StatusResponse) -> String {
    let rows: Vec<Vec<String>> = st
        .volume_class_status
        .iter()
        .map(|c| {
            let class = c.volume_class.clone().unwrap_or_default();
            let caps = class.capabilities.unwrap_or_default();
            vec![
                class.name,
                caps.tps.to_string(),
                caps.iops.to_string(),
                bytes(c.quantity),
            ]
        })
        .collect();
    table(&["NAME", "TPS", "IOPS", "QUANTITY"], &rows)
}

/// Events as a table (irictl's columns plus AGE).
pub fn events_table(events: &[event_v1::Event]) -> String {
    let now_s = now_nanos() / 1_000_000_000;
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let spec = e.spec.clone().unwrap_or_default();
            let md = spec.involved_object_meta.unwrap_or_default();
            let label = |k: &str| md.labels.get(k).cloned().unwrap_or_default();
            vec![
                md.id.clone(),
                spec.r#type,
                spec.reason,
                spec.message,
                label(iri::labels::VOLUME_NAME_LABEL),
                label(iri::labels::VOLUME_NAMESPACE_LABEL),
                age(spec.event_time * 1_000_000_000, now_s * 1_000_000_000),
            ]
        })
        .collect();
    table(
        &[
            "INVOLVEDVOLUMENAME",
            "TYPE",
            "REASON",
            "MESSAGE",
            "ROOTVOLUMENAME",
            "ROOTVOLUMENAMESPACE",
            "AGE",
        ],
        &rows,
    )
}

/// Version as a table.
pub fn version_table(v: &volume_v1::VersionResponse) -> String {
    table(
        &["NAME", "VERSION"],
        &[vec![v.runtime_name.clone(), v.runtime_version.clone()]],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use iri::meta_v1::ObjectMetadata;

    #[test]
    fn json_uses_snake_case_numbers_for_enums_base64_for_bytes_and_omits_empties() {
        let v = volume_v1::Volume {
            metadata: Some(ObjectMetadata {
                id: "v1".into(),
                ..Default::default()
            }),
            spec: Some(volume_v1::VolumeSpec {
                class: "fast".into(),
                resources: Some(volume_v1::VolumeResources {
                    storage_bytes: 1024,
                }),
                ..Default::default()
            }),
            status: Some(volume_v1::VolumeStatus {
                state: volume_v1::VolumeState::VolumeAvailable as i32,
                access: Some(volume_v1::VolumeAccess {
                    driver: "ceph".into(),
                    secret_data: BTreeMap::from([("userKey".to_string(), b"k".to_vec())]),
                    ..Default::default()
                }),
                resources: Some(volume_v1::VolumeResources::default()),
            }),
        };
        let j = to_value(&v);
        assert_eq!(
            j,
            serde_json::json!({
                "metadata": {"id": "v1"},
                "spec": {"class": "fast", "resources": {"storage_bytes": 1024}},
                "status": {"state": 1, "access": {"driver": "ceph", "secret_data": {"userKey": "aw=="}}, "resources": {}}
            })
        );
        assert!(render(&v, Output::Yaml).contains("storage_bytes: 1024"));
    }

    #[test]
    fn input_files_are_yaml_or_json_with_unknown_keys_ignored() {
        let y = "metadata: {labels: {a: b}}\nspec:\n  class: fast\n  unknown: 1\n  resources: {storage_bytes: 1073741824}\n  volume_data_source: {image_data_source: {image: ghcr.io/org/os:tag, architecture: amd64}}\n  encryption: {secret_data: {encryptionKey: cGFzcw==}}\n";
        let v: volume_v1::Volume = serde_yaml::from_str(y).expect("parses");
        let spec = v.spec.expect("spec");
        assert_eq!(spec.class, "fast");
        assert_eq!(spec.resources.expect("r").storage_bytes, 1 << 30);
        assert_eq!(
            spec.encryption.expect("e").secret_data["encryptionKey"],
            b"pass"
        );
        assert_eq!(
            spec.volume_data_source
                .expect("ds")
                .image_data_source
                .expect("img")
                .architecture,
            "amd64"
        );
        let j: volume_v1::VolumeSnapshot =
            serde_yaml::from_str(r#"{"spec":{"volume_id":"x"}}"#).expect("json");
        assert_eq!(j.spec.expect("spec").volume_id, "x");
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(&["A", "LONGER"], &[vec!["xxxxx".into(), "y".into()]]);
        assert_eq!(t, "A       LONGER\nxxxxx   y\n");
    }

    #[test]
    fn sizes_parse_and_print_in_binary_units() {
        assert_eq!(parse_size("10Gi"), Ok(10 << 30));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert!(parse_size("1Xi").is_err());
        assert!(parse_size("Gi").is_err());
        assert_eq!(bytes(1 << 30), "1Gi");
        assert_eq!(bytes(3 << 29), "1.5Gi");
        assert_eq!(bytes(100), "100");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = 1_000_000_000i64;
        assert_eq!(age(s, 46 * s), "45s");
        assert_eq!(age(s, 601 * s), "10m");
        assert_eq!(age(s, 3 * 3600 * s + s), "3h");
        assert_eq!(age(s, 3 * 86400 * s + s), "3d");
        assert_eq!(age(0, s), "<unknown>");
    }
}
