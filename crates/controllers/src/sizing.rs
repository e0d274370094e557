//! Sizes and QoS limits of volumes, shared by the reconcilers and the gRPC server: how a requested
//! size is rounded for provisioning, and which librbd QoS options a volume class sets. Pure
//! functions: no state, no I/O.

use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Rounds a requested size up the way the provider provisions it: below 1 GiB to whole MiB, from
/// 1 GiB on to whole GiB. 0 stays 0.
pub fn round_size(bytes: u64) -> u64 {
    let unit = if bytes < GIB { MIB } else { GIB };
    bytes.div_ceil(unit).saturating_mul(unit)
}

/// The librbd QoS limits of a volume class with `iops` and `tps` (bytes/s), burst `factor` and
/// burst `duration` seconds. Keys are librbd option names (written as `conf_<key>` metadata).
pub fn limits_for_class(iops: i64, tps: i64, factor: i64, duration: i64) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for kind in ["iops", "bps"] {
        let value = if kind == "iops" { iops } else { tps };
        for dir in ["", "read_", "write_"] {
            m.insert(format!("rbd_qos_{dir}{kind}_limit"), value);
            m.insert(
                format!("rbd_qos_{dir}{kind}_burst"),
                factor.saturating_mul(value),
            );
        }
        m.insert(format!("rbd_qos_{kind}_burst_seconds"), duration);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_mib_below_a_gib_and_to_gib_above() {
        assert_eq!(round_size(0), 0);
        assert_eq!(round_size(1024), MIB);
        assert_eq!(round_size(MIB + MIB / 10), 2 * MIB);
        assert_eq!(round_size(GIB), GIB);
        assert_eq!(round_size(GIB + 1), 2 * GIB);
        assert_eq!(round_size(GIB - 1), GIB);
    }

    #[test]
    fn class_limits_fill_fourteen_keys_with_factor_and_duration() {
        let l = limits_for_class(15000, 262_144_000, 10, 15);
        assert_eq!(l.len(), 14);
        assert_eq!(l["rbd_qos_iops_limit"], 15000);
        assert_eq!(l["rbd_qos_write_iops_burst"], 150_000);
        assert_eq!(l["rbd_qos_read_bps_limit"], 262_144_000);
        assert_eq!(l["rbd_qos_bps_burst"], 2_621_440_000);
        assert_eq!(l["rbd_qos_iops_burst_seconds"], 15);
        assert_eq!(l["rbd_qos_bps_burst_seconds"], 15);
        assert!(!l.contains_key("rbd_qos_read_iops_burst_seconds"));
    }
}
