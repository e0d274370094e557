//! Real-cluster test support (the suites that `cargo xtask integration` runs): the `rbd`/`rados`
//! CLIs as observers ([`Ceph`]), clean-up of what a test created when it fails half-way
//! ([`Leftovers`]), keeping the daemon log of a failed run, and small request helpers.
//!
//! The cluster comes from the environment of `cargo xtask ceph env` (`CEPH_CONF`, `CEPH_POOL`,
//! `CEPH_KEYRING`, ...). Under `CEPHVOL_INTEGRATION=1` a missing prerequisite is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use iri::volume_v1 as pb;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use testdata::pattern;

use crate::daemon::volume_req;

/// The omap object of the volume records (the Go provider's layout).
pub const VOLUMES: &str = "ironcore.csi.volumes";
/// The omap object of the snapshot records.
pub const SNAPSHOTS: &str = "ironcore.csi.snapshots";
/// Block size of [`Ceph::write_pattern`] and [`Ceph::export_blocks`] (one rbd object).
pub const BLOCK: u64 = 4 << 20;

/// An environment variable that is set and not empty.
pub fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Under `cargo xtask integration` a missing prerequisite is a failure, not a skip.
pub fn integration() -> bool {
    var("CEPHVOL_INTEGRATION").is_some_and(|v| v == "1")
}

/// Skips the test, unless `cargo xtask integration` runs it (`CEPHVOL_INTEGRATION=1`): there a
/// missing prerequisite fails it.
pub fn skip(reason: &str) {
    assert!(
        !integration(),
        "CEPHVOL_INTEGRATION=1 but {reason}: the real-Ceph suite must not skip"
    );
    eprintln!("skipped: {reason}");
}

/// The daemon flags of the test cluster (`--backend=ceph`, monitors, pool, user, keyring), with a
/// KEK written to `dir/kek`, and the pool; `None` (after [`skip`]) when the daemon is built without
/// Ceph or the cluster environment is missing.
pub fn daemon_flags(dir: &std::path::Path) -> Option<(Vec<String>, String)> {
    if !cfg!(feature = "ceph") && std::env::var_os("CEPHVOL_BIN").is_none() {
        skip("build with --features ceph (or set CEPHVOL_BIN)");
        return None;
    }
    let (Some(monitors), Some(pool), Some(_conf)) =
        (var("CEPH_MONITORS"), var("CEPH_POOL"), var("CEPH_CONF"))
    else {
        skip("CEPH_MONITORS/CEPH_POOL/CEPH_CONF not set (eval $(cargo xtask ceph env))");
        return None;
    };
    let user = var("CEPH_USER").unwrap_or_else(|| "admin".into());
    let client = var("CEPH_CLIENT").unwrap_or_else(|| format!("client.{user}"));
    let keyring = var("CEPH_KEYRING")
        .or_else(|| var("CEPH_USER_KEYRING"))
        .expect("CEPH_KEYRING");
    let kek = dir.join("kek");
    std::fs::write(&kek, [0x6bu8; 32]).expect("kek");
    let flags = vec![
        "--backend=ceph".to_string(),
        format!("--ceph-monitors={monitors}"),
        format!("--ceph-pool={pool}"),
        format!("--ceph-user={user}"),
        format!("--ceph-client={client}"),
        format!("--ceph-keyring-file={keyring}"),
        format!("--ceph-kek-path={}", kek.display()),
    ];
    Some((flags, pool))
}

/// The `rbd`/`rados`/`ceph` CLIs on the test cluster (`CEPH_CONF`/`CEPH_KEYRING` from the env).
#[derive(Clone)]
pub struct Ceph {
    /// The pool the daemon under test works in.
    pub pool: String,
}

/// An `rbd export` read back: its length, the SHA-256 of its first `split` bytes and of all of it,
/// and whether the bytes behind `split` are all zeroes.
pub struct Export {
    /// Bytes exported.
    pub len: u64,
    /// SHA-256 (hex) of the first `split` bytes.
    pub head: String,
    /// SHA-256 (hex) of everything.
    pub whole: String,
    /// Whether every byte behind `split` is zero.
    pub tail_zero: bool,
}

impl Ceph {
    /// Runs `prog args…`; `Err(command, stderr and stdout)` on failure.
    pub fn try_run(&self, prog: &str, args: &[&str]) -> Result<String, String> {
        let out = tokio::task::block_in_place(|| {
            Command::new(prog)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("running {prog}: {e}"))
        });
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{prog} {} failed ({}): {} {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    }

    /// Runs `prog args…` and panics with its output on failure.
    pub fn run(&self, prog: &str, args: &[&str]) -> String {
        self.try_run(prog, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `prog args… --format json` and parses the output.
    pub fn json(&self, prog: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let out = self.run(prog, &a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{prog} {}: bad JSON ({e}): {out}", a.join(" ")))
    }

    /// `<pool>/<image>`.
    pub fn spec(&self, image: &str) -> String {
        format!("{}/{image}", self.pool)
    }

    /// `rbd ls`.
    pub fn images(&self) -> BTreeSet<String> {
        let v = self.json("rbd", &["ls", "-p", &self.pool]);
        v.as_array()
            .expect("rbd ls: array")
            .iter()
            .map(|n| n.as_str().expect("rbd ls: name").to_string())
            .collect()
    }

    /// `rbd info`, `None` when the image does not exist.
    pub fn info(&self, image: &str) -> Option<Value> {
        match self.try_run("rbd", &["info", &self.spec(image), "--format", "json"]) {
            Ok(out) => Some(serde_json::from_str(&out).expect("rbd info JSON")),
            Err(e) if e.contains("No such file") || e.contains("(2)") => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// The parent `image@snapshot` of a clone, `None` for a flat (or missing) image.
    pub fn parent(&self, image: &str) -> Option<String> {
        let info = self.info(image)?;
        let p = info.get("parent")?;
        Some(format!(
            "{}@{}",
            p["image"].as_str().unwrap_or("?"),
            p["snapshot"].as_str().unwrap_or("?")
        ))
    }

    /// Every rbd snapshot of `image` (all namespaces): `(name, namespace type, protected)`.
    pub fn snaps(&self, image: &str) -> Vec<(String, String, bool)> {
        self.try_snaps(image).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Ceph::snaps`], `Err` with rbd's answer when the image cannot be opened (e.g. listed by
    /// `rbd ls` but half-created or half-removed).
    pub fn try_snaps(&self, image: &str) -> Result<Vec<(String, String, bool)>, String> {
        let out = self.try_run(
            "rbd",
            &["snap", "ls", "--all", &self.spec(image), "--format", "json"],
        )?;
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("rbd snap ls {image}: bad JSON ({e}): {out}"));
        Ok(v.as_array()
            .expect("rbd snap ls: array")
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or("").to_string(),
                    s["namespace"]["type"].as_str().unwrap_or("").to_string(),
                    s["protected"].as_str() == Some("true"),
                )
            })
            .collect())
    }

    /// Bytes allocated by `image` itself (not its parent).
    pub fn used(&self, image: &str) -> u64 {
        let v = self.json("rbd", &["du", &self.spec(image)]);
        v["images"][0]["used_size"]
            .as_u64()
            .unwrap_or_else(|| panic!("rbd du {image}: no used_size in {v}"))
    }

    /// The `block_name_prefix` of `image`'s data objects (`rbd_data.<id>`).
    pub fn block_prefix(&self, image: &str) -> String {
        let info = self.info(image).expect("image exists");
        info["block_name_prefix"]
            .as_str()
            .expect("block_name_prefix")
            .to_string()
    }

    /// How many rados data objects `image` has (by its `block_name_prefix`).
    pub fn data_objects(&self, image: &str) -> usize {
        let prefix = format!("{}.", self.block_prefix(image));
        self.run("rados", &["-p", &self.pool, "ls"])
            .lines()
            .filter(|o| o.starts_with(&prefix))
            .count()
    }

    /// `rbd trash ls`.
    pub fn trash(&self) -> Vec<Value> {
        let v = self.json("rbd", &["trash", "ls", "-p", &self.pool]);
        v.as_array().cloned().unwrap_or_default()
    }

    /// Streams `rbd export <spec> -` and hashes it (see [`Export`]).
    pub fn export(&self, spec: &str, split: u64) -> Export {
        let full = format!("{}/{spec}", self.pool);
        tokio::task::block_in_place(|| {
            let mut child = Command::new("rbd")
                .args(["export", "--no-progress", &full, "-"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rbd export");
            let mut out = child.stdout.take().expect("stdout");
            let (mut head, mut whole) = (Sha256::new(), Sha256::new());
            let mut len = 0u64;
            let mut tail_zero = true;
            let mut buf = vec![0u8; 4 << 20];
            loop {
                let n = out.read(&mut buf).expect("read rbd export");
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                whole.update(chunk);
                let in_head = split.saturating_sub(len).min(n as u64) as usize;
                head.update(&chunk[..in_head]);
                tail_zero &= chunk[in_head..].iter().all(|b| *b == 0);
                len += n as u64;
            }
            let status = child.wait_with_output().expect("rbd export");
            assert!(
                status.status.success(),
                "rbd export {full}: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            Export {
                len,
                head: hex::encode(head.finalize()),
                whole: hex::encode(whole.finalize()),
                tail_zero,
            }
        })
    }

    /// Writes `len` bytes of deterministic pseudo-random data (4 MiB blocks of
    /// [`pattern`]`(…, seed + block)`) at `offset` of `image` through `rbd import-diff` (a
    /// hand-made "rbd diff v1" stream of `w` records); returns the SHA-256 of the data.
    pub fn write_pattern(&self, image: &str, offset: u64, len: u64, seed: u64) -> String {
        use std::io::Write as _;
        let spec = self.spec(image);
        tokio::task::block_in_place(|| {
            let mut child = Command::new("rbd")
                .args(["import-diff", "--no-progress", "-", &spec])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rbd import-diff");
            let mut sha = Sha256::new();
            {
                let mut w = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
                w.write_all(b"rbd diff v1\n").expect("write diff");
                let mut done = 0;
                while done < len {
                    let n = BLOCK.min(len - done);
                    let data = pattern(n as usize, seed.wrapping_add(done / BLOCK));
                    sha.update(&data);
                    w.write_all(b"w").expect("write diff");
                    w.write_all(&(offset + done).to_le_bytes())
                        .expect("write diff");
                    w.write_all(&n.to_le_bytes()).expect("write diff");
                    w.write_all(&data).expect("write diff");
                    done += n;
                }
                w.write_all(b"e").expect("write diff");
                w.flush().expect("write diff");
            }
            let out = child.wait_with_output().expect("rbd import-diff");
            assert!(
                out.status.success(),
                "rbd import-diff {spec}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            hex::encode(sha.finalize())
        })
    }

    /// SHA-256 and all-zero flag of every 4 MiB block of `rbd export <spec> -` (diagnostics).
    pub fn export_blocks(&self, spec: &str) -> Vec<(String, bool)> {
        let full = format!("{}/{spec}", self.pool);
        tokio::task::block_in_place(|| {
            let mut child = Command::new("rbd")
                .args(["export", "--no-progress", &full, "-"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn rbd export");
            let mut out = child.stdout.take().expect("stdout");
            let mut blocks = Vec::new();
            let mut buf = vec![0u8; BLOCK as usize];
            loop {
                let mut filled = 0;
                while filled < buf.len() {
                    let n = out.read(&mut buf[filled..]).expect("read rbd export");
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                let b = &buf[..filled];
                blocks.push((hex::encode(Sha256::digest(b)), b.iter().all(|x| *x == 0)));
            }
            let _ = child.wait();
            blocks
        })
    }

    /// Keys of an omap object of the store.
    pub fn omap_keys(&self, object: &str) -> BTreeSet<String> {
        match self.try_run("rados", &["-p", &self.pool, "listomapkeys", object]) {
            Ok(out) => out.lines().map(str::to_string).collect(),
            Err(e) if e.contains("No such file") || e.contains("(2)") => BTreeSet::new(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Every record of an omap object, parsed.
    pub fn records(&self, object: &str) -> BTreeMap<String, Value> {
        self.omap_keys(object)
            .into_iter()
            .filter_map(|k| self.record(object, &k).map(|v| (k, v)))
            .collect()
    }

    /// One record (its JSON document), `None` if the key is absent.
    pub fn record(&self, object: &str, key: &str) -> Option<Value> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("value");
        let file = file.to_str().expect("utf-8 path");
        match self.try_run(
            "rados",
            &["-p", &self.pool, "getomapval", object, key, file],
        ) {
            Ok(_) => {
                let bytes = std::fs::read(file).expect("omap value");
                Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!(
                        "record {object}/{key} is not JSON ({e}): {}",
                        String::from_utf8_lossy(&bytes)
                    )
                }))
            }
            Err(e) if e.contains("No such key") || e.contains("(2)") => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// `status.state` of a record.
    pub fn state(&self, object: &str, key: &str) -> Option<String> {
        self.record(object, key)
            .map(|r| r["status"]["state"].as_str().unwrap_or("").to_string())
    }

    /// Checks that the rbd images of the provider (`img_*`, `snap_*`) and the omap store agree;
    /// returns every disagreement (empty: consistent).
    pub fn inconsistencies(&self) -> Vec<String> {
        let images = self.images();
        let vols = self.records(VOLUMES);
        let snaps = self.records(SNAPSHOTS);
        let mut bad = Vec::new();
        for name in &images {
            if let Some(id) = name.strip_prefix("img_") {
                if !vols.contains_key(id) {
                    bad.push(format!("rbd image {name} has no Image record"));
                }
            } else if let Some(id) = name.strip_prefix("snap_") {
                if !snaps.contains_key(id) {
                    bad.push(format!("rbd image {name} has no Snapshot record"));
                }
            } else {
                continue;
            }
            let listed = match self.try_snaps(name) {
                Ok(listed) => listed,
                Err(e) => {
                    bad.push(format!(
                        "rbd image {name} is listed but cannot be opened: {e}"
                    ));
                    continue;
                }
            };
            for (snap, ns, _) in listed {
                if ns != "user" {
                    bad.push(format!("{name}@{snap} left in the {ns} namespace"));
                } else if name.starts_with("snap_") {
                    if snap != "v1" {
                        bad.push(format!("OS image {name} has a foreign snapshot {snap}"));
                    }
                } else if !snaps.contains_key(&snap) {
                    bad.push(format!("rbd snapshot {name}@{snap} has no Snapshot record"));
                }
            }
        }
        for (id, rec) in &vols {
            if !rec["metadata"]["deletedAt"].is_null() {
                bad.push(format!("Image record {id} is still being deleted"));
            }
            if !images.contains(&format!("img_{id}")) {
                bad.push(format!(
                    "Image record {id} ({}) has no rbd image img_{id}",
                    rec["status"]["state"]
                ));
            }
        }
        for (id, rec) in &snaps {
            if !rec["metadata"]["deletedAt"].is_null() {
                bad.push(format!("Snapshot record {id} is still being deleted"));
            }
            let os = rec["source"]["ironcoreImage"].as_str().unwrap_or("");
            let vol = rec["source"]["volumeImageId"].as_str().unwrap_or("");
            let (image, snap) = if !os.is_empty() {
                (format!("snap_{id}"), "v1".to_string())
            } else {
                (format!("img_{vol}"), id.clone())
            };
            let state = rec["status"]["state"].as_str().unwrap_or("");
            if state != "Ready" {
                bad.push(format!("Snapshot record {id} is {state:?}, not Ready"));
            } else if !images.contains(&image)
                || !self.snaps(&image).iter().any(|(n, _, p)| *n == snap && *p)
            {
                bad.push(format!(
                    "Snapshot record {id} has no protected rbd snapshot {image}@{snap}"
                ));
            }
        }
        let trash = self.trash();
        if !trash.is_empty() {
            bad.push(format!("rbd trash is not empty: {trash:?}"));
        }
        bad
    }

    /// Panics with every inconsistency between the pool and the store (see `inconsistencies`).
    pub fn assert_consistent(&self, when: &str) {
        let bad = self.inconsistencies();
        assert!(
            bad.is_empty(),
            "pool {} and the store disagree {when}:\n  {}",
            self.pool,
            bad.join("\n  ")
        );
    }

    /// The addresses of the clients watching `image` (`rbd status`).
    pub fn watchers(&self, image: &str) -> Vec<String> {
        let v = self.json("rbd", &["status", &self.spec(image)]);
        v["watchers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|w| w["address"].as_str().map(str::to_string))
            .collect()
    }

    /// The addresses on the OSD blocklist.
    pub fn blocklist(&self) -> Vec<String> {
        let out = self.run("ceph", &["osd", "blocklist", "ls"]);
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|a| a.contains('/'))
            .map(str::to_string)
            .collect()
    }

    /// Watches that killed clients left on image headers and that the OSD will never expire, as
    /// `(image, watcher address)`. Ceph Pacific's OSD arms a watch's timeout only when the watch
    /// op completes with its client session still there: a client killed while its watch
    /// registration was in flight (opening an image read-write, librbd's clone) leaves a watch
    /// that no timeout ever removes (fixed upstream in later releases: "osd: avoid watcher
    /// remains after rados watch is interrupted"). librbd then refuses to remove that image
    /// ("image has watchers") for ever. Only watches of clients on the OSD blocklist count: each
    /// killed daemon is fenced by its successor, so those clients are certainly dead.
    pub fn orphan_watches(&self) -> Vec<(String, String)> {
        let blocklist: BTreeSet<String> = self.blocklist().into_iter().collect();
        let mut orphans = Vec::new();
        for image in self.images() {
            let Some(info) = self.info(&image) else {
                continue;
            };
            let Some(id) = info["id"].as_str() else {
                continue;
            };
            let header = format!("rbd_header.{id}");
            let Ok(out) = self.try_run("rados", &["-p", &self.pool, "listwatchers", &header])
            else {
                continue;
            };
            for addr in out
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("watcher="))
            {
                if blocklist.contains(addr) {
                    orphans.push((image.clone(), addr.to_string()));
                }
            }
        }
        orphans
    }

    /// Clears [`Ceph::orphan_watches`] the way an operator would: marks every OSD down, so that
    /// its placement groups peer again and re-arm the timeout of every watch (an OSD marked down
    /// while alive comes back by itself). Returns once none is left (panics after 2 minutes).
    pub fn clear_orphan_watches(&self) {
        let osds = self.run("ceph", &["osd", "ls"]);
        for osd in osds.split_whitespace() {
            self.run("ceph", &["osd", "down", osd]);
        }
        let t = Instant::now();
        while !self.orphan_watches().is_empty() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(120),
                "orphan watches still there 2 minutes after the OSDs were marked down"
            );
            tokio::task::block_in_place(|| std::thread::sleep(std::time::Duration::from_secs(2)));
        }
    }

    /// SHA-256 (hex) of `rbd export <spec>`.
    pub fn export_sha(&self, spec: &str) -> String {
        self.export(spec, 0).whole
    }

    /// Best-effort removal of an rbd image and its snapshots (clean-up after a failure): the
    /// killed daemon's watches are blocklisted first, else `rbd rm` refuses for 30 s.
    pub fn purge_image(&self, image: &str) {
        if self.info(image).is_none() {
            // Half-removed (listed, cannot be opened): `rbd rm` finishes the removal.
            if self.images().contains(image) {
                let _ = self.try_run("rbd", &["rm", "--no-progress", &self.spec(image)]);
            }
            return;
        }
        let spec = self.spec(image);
        if let Ok(out) = self.try_run("rbd", &["status", &spec, "--format", "json"]) {
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            for w in v["watchers"].as_array().cloned().unwrap_or_default() {
                if let Some(addr) = w["address"].as_str() {
                    let _ = self.try_run("ceph", &["osd", "blocklist", "add", addr]);
                }
            }
        }
        let _ = self.try_run("rbd", &["flatten", "--no-progress", &spec]);
        for (snap, ns, protected) in self.snaps(image) {
            if ns != "user" {
                continue;
            }
            let s = format!("{spec}@{snap}");
            if protected {
                let _ = self.try_run("rbd", &["snap", "unprotect", &s]);
            }
            let _ = self.try_run("rbd", &["snap", "rm", "--no-progress", &s]);
        }
        if let Err(e) = self.try_run("rbd", &["rm", "--no-progress", &spec]) {
            eprintln!("clean-up: {e}");
        }
    }

    /// Removes the cached OS image of `digest` the way the daemon leaves it (`snap_<digest>` with
    /// its protected snapshot `v1`) and its Snapshot record, with the CLIs; panics if a step
    /// fails (the test expects the image to be there).
    pub fn remove_os_image(&self, digest: &str) {
        let image = format!("snap_{digest}");
        let v1 = self.spec(&format!("{image}@v1"));
        self.run("rbd", &["snap", "unprotect", &v1]);
        self.run("rbd", &["snap", "rm", "--no-progress", &v1]);
        self.run("rbd", &["rm", "--no-progress", &self.spec(&image)]);
        self.run("rados", &["-p", &self.pool, "rmomapkey", SNAPSHOTS, digest]);
    }

    /// Removes one omap record (clean-up; failures are only printed).
    pub fn remove_record(&self, object: &str, key: &str) {
        if let Err(e) = self.try_run("rados", &["-p", &self.pool, "rmomapkey", object, key]) {
            eprintln!("clean-up: {e}");
        }
    }
}

/// What the test created, removed with the CLIs if the test fails half-way (declared before the
/// daemons so that they are killed first).
pub struct Leftovers {
    /// The CLIs that remove things.
    pub ceph: Ceph,
    /// Volume ids, in creation order (removed newest first: clones before their parents).
    pub volumes: Mutex<Vec<String>>,
    /// Snapshot ids: volume snapshots, and the OS image's digest.
    pub snapshots: Mutex<Vec<String>>,
}

impl Leftovers {
    /// Nothing remembered yet.
    pub fn new(ceph: &Ceph) -> Leftovers {
        Leftovers {
            ceph: ceph.clone(),
            volumes: Mutex::default(),
            snapshots: Mutex::default(),
        }
    }
    /// The test removed everything itself: nothing to clean up.
    pub fn done(&self) {
        self.volumes.lock().expect("lock").clear();
        self.snapshots.lock().expect("lock").clear();
    }
    /// Remembers a volume the test created.
    pub fn volume(&self, id: &str) {
        self.volumes.lock().expect("lock").push(id.to_string());
    }
    /// Remembers a snapshot (or OS image digest) the test created.
    pub fn snapshot(&self, id: &str) {
        self.snapshots.lock().expect("lock").push(id.to_string());
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("clean-up after failure: removing what this test created");
        let volumes = std::mem::take(&mut *self.volumes.lock().unwrap_or_else(|p| p.into_inner()));
        let snapshots =
            std::mem::take(&mut *self.snapshots.lock().unwrap_or_else(|p| p.into_inner()));
        for id in volumes.iter().rev() {
            self.ceph.purge_image(&format!("img_{id}"));
        }
        for id in &snapshots {
            // Re-homed snapshot images and OS images.
            self.ceph.purge_image(&format!("img_{id}"));
            self.ceph.purge_image(&format!("snap_{id}"));
        }
        for id in volumes.iter().chain(&snapshots) {
            self.ceph.remove_record(VOLUMES, id);
        }
        for id in &snapshots {
            self.ceph.remove_record(SNAPSHOTS, id);
        }
    }
}

/// Where a failing run of test `name` keeps the daemon's log.
pub fn log_copy_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}.log"))
}

/// Copies the daemon's log to `CARGO_TARGET_TMPDIR` when the test fails while it exists
/// (declare it after the daemon: it must drop first).
pub struct KeepLogOnPanic(pub std::path::PathBuf, pub &'static str);

impl Drop for KeepLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let to = log_copy_path(self.1);
            match std::fs::copy(&self.0, &to) {
                Ok(_) => eprintln!("daemon log kept in {}", to.display()),
                Err(e) => eprintln!("keeping the daemon log {}: {e}", self.0.display()),
            }
        }
    }
}

/// A CreateVolume request for an OS-image volume of `size` bytes.
pub fn image_req(class: &str, reference: &str, size: u64) -> pb::CreateVolumeRequest {
    let mut r = volume_req(class, size as i64, &[]);
    r.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .volume_data_source = Some(pb::VolumeDataSource {
        image_data_source: Some(pb::ImageDataSource {
            image: reference.into(),
            architecture: String::new(),
        }),
        snapshot_data_source: None,
    });
    r
}

/// The IRI state of a volume (-1 without a status).
pub fn volume_state(v: &pb::Volume) -> i32 {
    v.status.as_ref().map(|s| s.state).unwrap_or(-1)
}

/// Prints a step with the time since the start.
pub fn step(t0: Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}
