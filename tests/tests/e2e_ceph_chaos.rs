// size: one scenario with its model of the workload, its convergence and data checks, and diagnostics.
//! SIGKILL chaos on a real Ceph cluster: the real daemon (`--backend ceph`) runs a mixed workload
//! given through its IRI socket and is killed with SIGKILL at random moments, then restarted with
//! the same flags and data directory. Nothing may be lost, nothing may stay stuck.
//!
//! The workload, in rounds (one kill per round, `CEPHVOL_CHAOS_KILLS` rounds, default 5):
//!
//! 1. a few random requests (seeded RNG; the seed is printed, `CEPHVOL_CHAOS_SEED` replays one):
//!    plain, encrypted and OS-image volumes (plain and encrypted, from a loopback registry with
//!    two images), snapshots of written volumes (a snapshot whose volume is deleted before it is
//!    ready may end `FAILED`, "source volume is being deleted"; the test then deletes it), restores from ready snapshots, deletion of
//!    volumes (preferably parents of snapshots and clones: their snapshots are re-homed) and of
//!    snapshots (preferably ones with restores: their clones are flattened);
//! 2. after a random delay (0–1.5 s, while populates, formats, fills, clones, flattens and
//!    removals run) the daemon gets SIGKILL and is restarted at once;
//! 3. mostly, the test then waits until everything converged (every volume it keeps `AVAILABLE`,
//!    every snapshot `READY`, every deleted object gone, as listed through the socket) and
//!    reports how long that took; sometimes it goes straight on, so that the next kill hits the
//!    recovery itself. A volume in `ERROR` or a snapshot `FAILED`, ever, fails the test;
//!    After the last restart, everything must also stay converged for 20 s.
//! 4. each volume that is new and converged is checked (an OS volume starts with its rootfs, a
//!    restore reads exactly its snapshot), gets 4 MiB of pseudo-random data at its end (raw,
//!    through `rbd import-diff`; behind the LUKS2 header of encrypted ones) and its raw checksum
//!    is recorded; a snapshot records the checksum of its volume.
//!
//! After the last restart and convergence: every recorded checksum is read back (`rbd export` of
//! volumes and of snapshots where they live, re-homed or not); the pool and the store agree
//! ([`Ceph::inconsistencies`]: no rbd image or snapshot without a record and vice versa, nothing
//! in the trash) and the records are exactly what the test kept (plus re-homes and OS images).
//! Then everything is deleted through the daemon, the cached OS images are removed with the CLIs
//! and the pool must be exactly as before the test. If the test fails half-way, a guard removes
//! what it created with the `rbd`/`rados` CLIs and the daemon log is kept.
//!
//! The figures (seed, kills, objects, time to converge after each restart, maximum, orphan
//! watches cleared) are printed
//! at the end as one `chaos:` block.
//!
//! Found by this test (Ceph Pacific 16.2.15):
//! * a kill while a fill removed its partial image (an encrypted OS volume starting its fill
//!   again) left the image half-removed (listed, not openable); every pass of the volume failed
//!   on it and the volume stayed `PENDING` for ever. The image reconciler now finishes the
//!   removal of a half-removed image of a volume that is not provisioned yet.
//! * a kill during librbd's clone (a restore, an OS volume) leaves the child image created but
//!   without its parent link (`rbd clone` killed after a few tens of milliseconds does the same):
//!   it reads all zeroes. The restarted daemon takes the existing image for the finished clone
//!   and makes the volume `AVAILABLE`: the guest gets a blank disk (the checks "restore … does
//!   not read exactly snapshot" and "OS volume … does not start with the rootfs" fail). The Ceph
//!   backend now clones under `<child>.cloning` and renames the whole clone.
//! * a Ceph defect, not ours: a client killed while its watch registration is in flight (an image
//!   open, librbd's clone) leaves a watch that Pacific's OSD never expires, and librbd refuses to
//!   remove that image for ever ([`Ceph::orphan_watches`]). The daemon waits for it with a
//!   Warning event naming the busy image; an operator clears it by marking the OSD down. The test
//!   does the same when a convergence or the clean-up has waited 45 s and such watches of killed
//!   (fenced) daemons exist, restarts the daemon so that its backed-off retries run at once, and
//!   counts them in the figures.
//!
//! Ignored by default. With a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); CEPHVOL_CHAOS_KILLS=20 cargo test -p tests --features ceph --test e2e_ceph_chaos -- --ignored --nocapture`,
//! or `cargo xtask chaos --kills 20`. `cargo xtask integration` runs it with the default number of
//! kills and `CEPHVOL_INTEGRATION=1`, under which a missing cluster environment fails the test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cli::client::Clients;
use iri::volume_v1 as pb;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use registry_fixture::{pattern, IronImage, TestRegistry};
use sha2::{Digest as _, Sha256};
use tests::cephvol_bin;
use tests::cluster::{
    daemon_flags, image_req, step, var, Ceph, KeepLogOnPanic, Leftovers, BLOCK, SNAPSHOTS, VOLUMES,
};
use tests::daemon::{id_of, ops, restore_req, snapshot_req, volume_req, Daemon};

const MIB: u64 = 1 << 20;
/// Guest size of plain and encrypted volumes.
const VOLUME_SIZE: u64 = 16 * MIB;
/// Guest size of OS-image volumes (holds the rootfs).
const OS_VOLUME_SIZE: u64 = 32 * MIB;
/// Rootfs of the two OS images.
const ROOTFS_LEN: u64 = 8 * MIB;
/// Data written at the end of each volume (one rbd object).
const WRITE_LEN: u64 = BLOCK;
/// Passphrase of the encrypted volumes.
const PASSPHRASE: &str = "chaos-passphrase-41d7";
/// A class without QoS limits, so the CLIs' own reads and writes are not throttled.
const CLASS: &str = "chaos-unthrottled";
/// Longest random wait between the requests of a round and the SIGKILL.
const MAX_KILL_DELAY_MS: u64 = 1500;
/// Bound of a convergence after a restart: a killed client's watches and locks may stay until
/// the OSD times them out (30 s), and resumed work waits for its backoff.
const CONVERGE: Duration = Duration::from_secs(240);
/// How long a convergence, the final settling or the clean-up may wait before the test looks for
/// watches that the OSD never expires (see [`Ceph::orphan_watches`]).
const ORPHAN_CHECK_AFTER: Duration = Duration::from_secs(45);
/// Bound of the clean-up at the end.
const CLEANUP: Duration = Duration::from_secs(240);
/// How long everything must stay converged after the last restart (a volume that flips to
/// `ERROR` later, e.g. on a transient answer of the cluster, fails the test).
const STABLE: Duration = Duration::from_secs(20);
/// How long the pool and the store may still disagree once the socket shows convergence (a
/// removal already reported can still be finishing).
const SETTLE: Duration = Duration::from_secs(60);

/// What kind of volume (and so what its content must be).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Encrypted,
    /// From OS image number `n`.
    Os(usize),
    /// Encrypted, from OS image number `n` (filled through the encryption layer).
    EncryptedOs(usize),
    /// Restored from a snapshot: reads exactly the snapshot's raw data.
    Restore,
}

/// A volume the test made.
struct Vol {
    id: String,
    kind: Kind,
    /// Snapshot of a restore.
    from: Option<String>,
    /// Guest size.
    size: u64,
    /// Raw checksum after the test wrote its data (`None` until then).
    sha: Option<String>,
    deleted: bool,
}

/// A snapshot the test made.
struct Snap {
    id: String,
    volume: String,
    /// Raw checksum of the volume when the snapshot was taken.
    sha: String,
    /// Seen `READY` at a convergence (only those are restored from).
    ready: bool,
    /// Its volume was deleted before it was seen `READY`: it may legally end `FAILED` ("source
    /// volume is being deleted"), and is then deleted by the test.
    doomed: bool,
    deleted: bool,
}

/// An OS image of the registry.
struct Os {
    reference: String,
    digest: String,
    rootfs_sha: String,
    /// SHA-256 of each 4 MiB block of the rootfs (diagnostics).
    rootfs_blocks: Vec<String>,
}

/// What the test made and what it must find.
#[derive(Default)]
struct Model {
    vols: Vec<Vol>,
    snaps: Vec<Snap>,
}

impl Model {
    fn vol(&self, id: &str) -> &Vol {
        self.vols.iter().find(|v| v.id == id).expect("known volume")
    }
    fn snap(&self, id: &str) -> &Snap {
        self.snaps
            .iter()
            .find(|s| s.id == id)
            .expect("known snapshot")
    }
    fn live_vols(&self) -> impl Iterator<Item = &Vol> {
        self.vols.iter().filter(|v| !v.deleted)
    }
    fn live_snaps(&self) -> impl Iterator<Item = &Snap> {
        self.snaps.iter().filter(|s| !s.deleted)
    }
    /// How many live snapshots and restores depend on volume `id` (deleting it re-homes them).
    fn dependents_of_volume(&self, id: &str) -> usize {
        self.live_snaps().filter(|s| s.volume == id).count()
    }
    /// How many live restores are clones of snapshot `id` (deleting it flattens them).
    fn restores_of(&self, id: &str) -> usize {
        self.live_vols()
            .filter(|v| v.from.as_deref() == Some(id))
            .count()
    }
}

/// One request of a round.
#[derive(Clone, Copy, Debug)]
enum Action {
    CreatePlain,
    CreateEncrypted,
    CreateOs,
    CreateEncryptedOs,
    Snapshot,
    Restore,
    DeleteVolume,
    DeleteSnapshot,
}

const ACTIONS: &[(Action, u32)] = &[
    (Action::CreatePlain, 3),
    (Action::CreateEncrypted, 2),
    (Action::CreateOs, 2),
    (Action::CreateEncryptedOs, 1),
    (Action::Snapshot, 5),
    (Action::Restore, 5),
    (Action::DeleteVolume, 2),
    (Action::DeleteSnapshot, 2),
];

fn encrypted(mut r: pb::CreateVolumeRequest) -> pb::CreateVolumeRequest {
    r.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([(
            "encryptionKey".to_string(),
            PASSPHRASE.as_bytes().to_vec(),
        )]),
    });
    r
}

/// The test's state besides the model: the CLIs, the RNG, the registry's images, the guard.
struct Chaos {
    ceph: Ceph,
    rng: StdRng,
    os: Vec<Os>,
    model: Model,
    leftovers: Leftovers,
    t0: Instant,
    /// Orphan watches cleared ([`Chaos::heal_orphan_watches`]).
    orphan_watches: usize,
}

impl Chaos {
    /// Issues one random request that the model allows; `false` if the chosen one had no
    /// candidate.
    async fn act(&mut self, c: &mut Clients) -> bool {
        let action = ACTIONS
            .choose_weighted(&mut self.rng, |(_, w)| *w)
            .expect("weights")
            .0;
        let what = match action {
            Action::CreatePlain | Action::CreateEncrypted => {
                let enc = matches!(action, Action::CreateEncrypted);
                let mut req = volume_req(CLASS, VOLUME_SIZE as i64, &[]);
                if enc {
                    req = encrypted(req);
                }
                let id = ops::create(c, req).await;
                self.leftovers.volume(&id);
                let kind = if enc { Kind::Encrypted } else { Kind::Plain };
                self.model.vols.push(Vol {
                    id: id.clone(),
                    kind,
                    from: None,
                    size: VOLUME_SIZE,
                    sha: None,
                    deleted: false,
                });
                format!("create {kind:?} volume {id}")
            }
            Action::CreateOs | Action::CreateEncryptedOs => {
                let n = self.rng.gen_range(0..self.os.len());
                let mut req = image_req(CLASS, &self.os[n].reference, OS_VOLUME_SIZE);
                let kind = if matches!(action, Action::CreateEncryptedOs) {
                    req = encrypted(req);
                    Kind::EncryptedOs(n)
                } else {
                    Kind::Os(n)
                };
                let id = ops::create(c, req).await;
                self.leftovers.volume(&id);
                self.model.vols.push(Vol {
                    id: id.clone(),
                    kind,
                    from: None,
                    size: OS_VOLUME_SIZE,
                    sha: None,
                    deleted: false,
                });
                format!("create {kind:?} volume {id}")
            }
            Action::Snapshot => {
                let candidates: Vec<(String, String)> = self
                    .model
                    .live_vols()
                    .filter_map(|v| v.sha.clone().map(|s| (v.id.clone(), s)))
                    .collect();
                let Some((vid, sha)) = candidates.choose(&mut self.rng).cloned() else {
                    return false;
                };
                let snap = c
                    .runtime
                    .create_volume_snapshot(snapshot_req(&vid, &[]))
                    .await
                    .expect("CreateVolumeSnapshot")
                    .into_inner()
                    .volume_snapshot
                    .expect("snapshot");
                let id = id_of(&snap.metadata);
                self.leftovers.snapshot(&id);
                self.model.snaps.push(Snap {
                    id: id.clone(),
                    volume: vid.clone(),
                    sha,
                    ready: false,
                    doomed: false,
                    deleted: false,
                });
                format!("snapshot {id} of volume {vid}")
            }
            Action::Restore => {
                let candidates: Vec<String> = self
                    .model
                    .live_snaps()
                    .filter(|s| s.ready)
                    .map(|s| s.id.clone())
                    .collect();
                let Some(sid) = candidates.choose(&mut self.rng).cloned() else {
                    return false;
                };
                let size = self.model.vol(&self.model.snap(&sid).volume).size;
                let id = ops::create(c, restore_req(CLASS, size as i64, &sid, &[])).await;
                self.leftovers.volume(&id);
                self.model.vols.push(Vol {
                    id: id.clone(),
                    kind: Kind::Restore,
                    from: Some(sid.clone()),
                    size,
                    sha: None,
                    deleted: false,
                });
                format!("restore volume {id} from snapshot {sid}")
            }
            Action::DeleteVolume => {
                // Parents of snapshots first (their snapshots are re-homed), any volume else.
                let ids: Vec<(String, usize)> = self
                    .model
                    .live_vols()
                    .map(|v| (v.id.clone(), self.model.dependents_of_volume(&v.id)))
                    .collect();
                let Ok((id, deps)) = ids
                    .choose_weighted(&mut self.rng, |(_, d)| 1 + 3 * d)
                    .cloned()
                else {
                    return false;
                };
                ops::delete(c, &id).await;
                for s in self.model.snaps.iter_mut() {
                    if s.volume == id && !s.ready {
                        s.doomed = true;
                    }
                }
                self.model
                    .vols
                    .iter_mut()
                    .find(|v| v.id == id)
                    .expect("known")
                    .deleted = true;
                format!("delete volume {id} ({deps} snapshot(s) on it)")
            }
            Action::DeleteSnapshot => {
                let ids: Vec<(String, usize)> = self
                    .model
                    .live_snaps()
                    .map(|s| (s.id.clone(), self.model.restores_of(&s.id)))
                    .collect();
                let Ok((id, clones)) = ids
                    .choose_weighted(&mut self.rng, |(_, n)| 1 + 3 * n)
                    .cloned()
                else {
                    return false;
                };
                ops::delete_snapshot(c, &id).await;
                self.model
                    .snaps
                    .iter_mut()
                    .find(|s| s.id == id)
                    .expect("known")
                    .deleted = true;
                format!("delete snapshot {id} ({clones} restore(s) of it)")
            }
        };
        step(self.t0, &format!("  {what}"));
        true
    }

    /// Polls the socket until every kept volume is `AVAILABLE`, every kept snapshot `READY` and
    /// every deleted object gone; panics on `ERROR`/`FAILED` or after [`CONVERGE`]. Marks the
    /// snapshots ready. `None` when it found and cleared watches that the OSD never expires (a
    /// Ceph defect, see [`Chaos::heal_orphan_watches`]): the caller restarts the daemon, whose
    /// retries of the blocked work have backed off meanwhile, and converges again.
    async fn converge(&mut self, c: &mut Clients, baseline: &Baseline) -> Option<Duration> {
        let t = Instant::now();
        let mut orphan_check = OrphanCheck::start();
        loop {
            let vols: BTreeMap<String, pb::Volume> = ops::list(c)
                .await
                .into_iter()
                .map(|v| (id_of(&v.metadata), v))
                .collect();
            let snaps: BTreeMap<String, pb::VolumeSnapshot> = ops::list_snapshots(c)
                .await
                .into_iter()
                .map(|s| (id_of(&s.metadata), s))
                .collect();
            let mut waiting = Vec::new();
            for v in &self.model.vols {
                let listed = vols.get(&v.id);
                match (v.deleted, listed) {
                    (true, Some(_)) => waiting.push(format!("volume {} still listed", v.id)),
                    (true, None) => {}
                    (false, None) => panic!("volume {} ({:?}) is not listed", v.id, v.kind),
                    (false, Some(l)) => {
                        let st = l.status.as_ref().map(|s| s.state).unwrap_or(-1);
                        assert_ne!(
                            st,
                            pb::VolumeState::VolumeError as i32,
                            "volume {} ({:?}) in ERROR: {l:?}\n{}",
                            v.id,
                            v.kind,
                            events_of(c, &v.id).await
                        );
                        if st != pb::VolumeState::VolumeAvailable as i32 {
                            waiting.push(format!("volume {} in state {st}", v.id));
                        }
                    }
                }
            }
            let mut failed = Vec::new();
            for s in &self.model.snaps {
                match (s.deleted, snaps.get(&s.id)) {
                    (true, Some(_)) => waiting.push(format!("snapshot {} still listed", s.id)),
                    (true, None) => {}
                    (false, None) => panic!("snapshot {} is not listed", s.id),
                    (false, Some(l)) => {
                        let st = l.status.as_ref().map(|s| s.state).unwrap_or(-1);
                        if s.doomed && st == pb::VolumeSnapshotState::VolumeSnapshotFailed as i32 {
                            failed.push(s.id.clone());
                            continue;
                        }
                        assert_ne!(
                            st,
                            pb::VolumeSnapshotState::VolumeSnapshotFailed as i32,
                            "snapshot {} FAILED: {l:?}\n{}",
                            s.id,
                            events_of(c, &s.id).await
                        );
                        if st != pb::VolumeSnapshotState::VolumeSnapshotReady as i32 {
                            waiting.push(format!("snapshot {} in state {st}", s.id));
                        }
                    }
                }
            }
            let known_vols: BTreeSet<&str> =
                self.model.vols.iter().map(|v| v.id.as_str()).collect();
            for id in vols.keys() {
                assert!(
                    known_vols.contains(id.as_str()) || baseline.volumes.contains(id),
                    "volume {id} listed that the test never created"
                );
            }
            let known_snaps: BTreeSet<&str> =
                self.model.snaps.iter().map(|s| s.id.as_str()).collect();
            for id in snaps.keys() {
                assert!(
                    known_snaps.contains(id.as_str()) || baseline.snapshots.contains(id),
                    "snapshot {id} listed that the test never created"
                );
            }
            for id in failed {
                // Legal for a snapshot whose volume was deleted first; the user deletes it.
                step(
                    self.t0,
                    &format!("  snapshot {id} FAILED (its volume was deleted): delete it"),
                );
                ops::delete_snapshot(c, &id).await;
                self.model
                    .snaps
                    .iter_mut()
                    .find(|s| s.id == id)
                    .expect("known")
                    .deleted = true;
                waiting.push(format!("snapshot {id} deleted after it failed"));
            }
            if waiting.is_empty() {
                for s in self.model.snaps.iter_mut().filter(|s| !s.deleted) {
                    s.ready = true;
                }
                return Some(t.elapsed());
            }
            if orphan_check.healed(self) {
                return None;
            }
            assert!(
                t.elapsed() < CONVERGE,
                "no convergence within {CONVERGE:?} after the restart:\n  {}",
                waiting.join("\n  ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clears the watches that killed daemons left and the OSD never expires
    /// ([`Ceph::orphan_watches`]: a defect of Ceph Pacific, not of the daemon, which waits with a
    /// Warning event naming the busy image), as an operator would; `true` if there were any.
    /// Counted in the figures.
    fn heal_orphan_watches(&mut self) -> bool {
        let orphans = self.ceph.orphan_watches();
        if orphans.is_empty() {
            return false;
        }
        for (image, addr) in &orphans {
            step(
                self.t0,
                &format!("  Ceph defect: {image} keeps a watch of the killed client {addr}"),
            );
        }
        self.ceph.clear_orphan_watches();
        step(self.t0, "  cleared by marking the OSDs down (they re-peer)");
        self.orphan_watches += orphans.len();
        true
    }

    /// Checks the content of every converged volume that has no data of the test yet, writes
    /// [`WRITE_LEN`] bytes at its end and records its raw checksum.
    fn write_new_volumes(&mut self) -> usize {
        let mut written = 0;
        for i in 0..self.model.vols.len() {
            let v = &self.model.vols[i];
            if v.deleted || v.sha.is_some() {
                continue;
            }
            let image = format!("img_{}", v.id);
            match v.kind {
                Kind::Os(n) => {
                    let e = self.ceph.export(&image, ROOTFS_LEN);
                    assert!(
                        e.head == self.os[n].rootfs_sha,
                        "OS volume {} does not start with the rootfs of OS image {n} ({}): {}",
                        v.id,
                        self.os[n].digest,
                        self.explain_os(&image, n)
                    );
                    assert!(
                        e.tail_zero,
                        "OS volume {} is not zero behind the rootfs",
                        v.id
                    );
                }
                Kind::Restore => {
                    let sid = v.from.as_deref().expect("restore source");
                    let want = &self.model.snap(sid).sha;
                    let got = self.ceph.export(&image, 0).whole;
                    assert_eq!(
                        &got, want,
                        "restore {} does not read exactly snapshot {sid}",
                        v.id
                    );
                }
                Kind::Plain | Kind::Encrypted | Kind::EncryptedOs(_) => {}
            }
            let size = self.ceph.info(&image).expect("image of a converged volume")["size"]
                .as_u64()
                .expect("rbd size");
            let seed = self.rng.gen::<u64>();
            self.ceph
                .write_pattern(&image, size - WRITE_LEN, WRITE_LEN, seed);
            let sha = self.ceph.export(&image, 0).whole;
            self.model.vols[i].sha = Some(sha);
            written += 1;
        }
        written
    }
}

impl Chaos {
    /// Which rootfs blocks of OS volume `image` differ, and what they hold (zeroes, the data of
    /// the OS image's `@v1`, something else); the parent and the OS snapshot's record.
    fn explain_os(&self, image: &str, n: usize) -> String {
        let os_image = format!("snap_{}", self.os[n].digest);
        let got = self.ceph.export_blocks(image);
        let v1 = self.ceph.export_blocks(&format!("{os_image}@v1"));
        let mut lines = vec![
            format!(
                "parent {:?}, OS snapshot record {:?}",
                self.ceph.parent(image),
                self.ceph.record(SNAPSHOTS, &self.os[n].digest)
            ),
            format!("rbd info {image}: {:?}", self.ceph.info(image)),
            format!("rbd info {os_image}: {:?}", self.ceph.info(&os_image)),
            format!(
                "rbd snap ls {os_image}: {:?}",
                self.ceph.try_run(
                    "rbd",
                    &[
                        "snap",
                        "ls",
                        "--all",
                        "--format",
                        "json",
                        &self.ceph.spec(&os_image)
                    ]
                )
            ),
        ];
        for (i, want) in self.os[n].rootfs_blocks.iter().enumerate() {
            let (sha, zero) = got.get(i).cloned().unwrap_or_default();
            let in_v1 = v1.get(i).map(|(s, _)| s.as_str());
            let what = if sha == *want {
                "ok".to_string()
            } else if zero {
                "zeroes".to_string()
            } else if in_v1 == Some(sha.as_str()) {
                "the data of @v1 (which differs from the rootfs)".to_string()
            } else {
                "other data".to_string()
            };
            lines.push(format!(
                "block {i}: {what}; @v1 block {}",
                if in_v1 == Some(want.as_str()) {
                    "ok"
                } else {
                    "differs"
                }
            ));
        }
        lines.join("\n  ")
    }
}

/// Where the rbd snapshot of volume snapshot `sid` lives (its record's `volumeImageId`: the
/// volume's image, or `img_<sid>` once re-homed).
fn snapshot_home(ceph: &Ceph, sid: &str) -> String {
    let rec = ceph.record(SNAPSHOTS, sid).expect("snapshot record");
    let vol = rec["source"]["volumeImageId"].as_str().unwrap_or("");
    assert!(
        !vol.is_empty(),
        "snapshot {sid} has no volumeImageId: {rec}"
    );
    format!("img_{vol}")
}

/// The events ListEvents shows about object `id` (diagnostics).
async fn events_of(c: &mut Clients, id: &str) -> String {
    let events = c
        .runtime
        .list_events(pb::ListEventsRequest {
            filter: Some(pb::EventFilter {
                id: id.into(),
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner().events)
        .unwrap_or_default();
    events
        .into_iter()
        .filter_map(|e| e.spec)
        .map(|s| format!("  event {} {}: {}", s.r#type, s.reason, s.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What was in the pool before the test.
struct Baseline {
    images: BTreeSet<String>,
    volumes: BTreeSet<String>,
    snapshots: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph: cargo xtask integration"]
async fn sigkills_at_random_moments_lose_nothing_and_leave_nothing_behind() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((mut flags, pool)) = daemon_flags(dir.path()) else {
        return;
    };
    let kills: usize = var("CEPHVOL_CHAOS_KILLS")
        .map(|k| k.parse().expect("CEPHVOL_CHAOS_KILLS: a number"))
        .unwrap_or(5);
    let seed: u64 = var("CEPHVOL_CHAOS_SEED")
        .map(|s| s.parse().expect("CEPHVOL_CHAOS_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    eprintln!("chaos: seed {seed} (CEPHVOL_CHAOS_SEED={seed} replays it), {kills} kills");
    let ceph = Ceph { pool: pool.clone() };
    ceph.assert_consistent("before the test (left over by an earlier run or suite?)");
    let baseline = Baseline {
        images: ceph.images(),
        volumes: ceph.omap_keys(VOLUMES),
        snapshots: ceph.omap_keys(SNAPSHOTS),
    };

    // Two OS images.
    let reg = TestRegistry::start();
    let mut os = Vec::new();
    for (n, tag) in ["1", "2"].into_iter().enumerate() {
        let rootfs = pattern(ROOTFS_LEN as usize, seed ^ (0x05_1000 + n as u64));
        let rootfs_sha = hex::encode(Sha256::digest(&rootfs));
        let rootfs_blocks = rootfs
            .chunks(BLOCK as usize)
            .map(|b| hex::encode(Sha256::digest(b)))
            .collect();
        let pushed = reg
            .pusher()
            .push_image("os/chaos", tag, &IronImage::rootfs(rootfs))
            .await;
        os.push(Os {
            reference: reg.reference("os/chaos", tag),
            digest: pushed.manifest_digest.clone(),
            rootfs_sha,
            rootfs_blocks,
        });
    }
    step(t0, "registry up with two OS images");

    let classes = dir.path().join("classes.json");
    std::fs::write(
        &classes,
        format!(r#"[{{"name":"{CLASS}","capabilities":{{"tps":0,"iops":0}}}}]"#),
    )
    .expect("classes");
    flags.extend([
        format!("--supported-volume-classes={}", classes.display()),
        // Small copy buffers: populates and fills take long enough to be hit by a kill.
        "--populator-buffer-size=131072".to_string(),
        "--populate-queue-depth=1".to_string(),
        // Deletions re-home snapshots and flatten clones (the Go provider's policy); the
        // deferred policy has its own real-cluster test (`e2e_ceph_delete.rs`).
        "--delete-policy=flatten".to_string(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let mut chaos = Chaos {
        ceph: ceph.clone(),
        rng: StdRng::seed_from_u64(seed),
        os,
        model: Model::default(),
        leftovers: Leftovers::new(&ceph),
        t0,
        orphan_watches: 0,
    };
    for o in &chaos.os {
        chaos.leftovers.snapshot(&o.digest);
    }

    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let mut keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_chaos");
    let mut c = d.clients().await;
    step(t0, "daemon up");

    // A first set of volumes with data, so that the first round has something to snapshot.
    for _ in 0..2 {
        let id = ops::create(&mut c, volume_req(CLASS, VOLUME_SIZE as i64, &[])).await;
        chaos.leftovers.volume(&id);
        chaos.model.vols.push(Vol {
            id,
            kind: Kind::Plain,
            from: None,
            size: VOLUME_SIZE,
            sha: None,
            deleted: false,
        });
    }
    (d, c) = converge(&mut chaos, d, c, &flags, &baseline).await;
    chaos.write_new_volumes();

    let mut converge_times: Vec<(usize, Duration)> = Vec::new();
    let mut unwaited = 0;
    for round in 1..=kills {
        let n = chaos.rng.gen_range(3..=6);
        step(t0, &format!("round {round}/{kills}: {n} request(s)"));
        let mut done = 0;
        let mut tries = 0;
        while done < n && tries < 20 {
            tries += 1;
            if chaos.act(&mut c).await {
                done += 1;
            }
        }
        let delay = Duration::from_millis(chaos.rng.gen_range(0..=MAX_KILL_DELAY_MS));
        tokio::time::sleep(delay).await;
        drop(c);
        let status = d
            .stop_with(rustix::process::Signal::KILL, Duration::from_secs(30))
            .await;
        assert!(!status.success(), "the daemon was killed: {status}");
        step(
            t0,
            &format!(
                "kill {round}: SIGKILL {} ms after the requests",
                delay.as_millis()
            ),
        );
        let dir = d.into_dir_after_exit();
        drop(keep_log);
        d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
        keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_chaos");
        c = d.clients().await;
        // Sometimes the next kill hits the recovery itself (never after the last kill).
        if round < kills && chaos.rng.gen_bool(0.3) {
            unwaited += 1;
            step(t0, "restarted; next round without waiting");
            continue;
        }
        let t_converge = Instant::now();
        (d, c) = converge(&mut chaos, d, c, &flags, &baseline).await;
        let took = t_converge.elapsed();
        converge_times.push((round, took));
        let written = chaos.write_new_volumes();
        step(
            t0,
            &format!(
                "restarted; converged in {:.1}s; {written} new volume(s) checked and written",
                took.as_secs_f64()
            ),
        );
    }

    // Everything stays converged for a while after the last restart.
    let t_stable = Instant::now();
    while t_stable.elapsed() < STABLE {
        (d, c) = converge(&mut chaos, d, c, &flags, &baseline).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    step(t0, &format!("stayed converged for {STABLE:?}"));

    // Final checks: every checksum, no leak, the records are what the test kept.
    let mut problems = Vec::new();
    let mut checked_vols = 0;
    for v in chaos.model.live_vols() {
        let want = v
            .sha
            .as_deref()
            .expect("written after the last convergence");
        let got = ceph.export(&format!("img_{}", v.id), 0).whole;
        if got != want {
            problems.push(format!(
                "volume {} ({:?}): sha256 {got} instead of {want}",
                v.id, v.kind
            ));
        }
        checked_vols += 1;
    }
    let mut checked_snaps = 0;
    for s in chaos.model.live_snaps() {
        let home = snapshot_home(&ceph, &s.id);
        let got = ceph.export(&format!("{home}@{}", s.id), 0).whole;
        if got != s.sha {
            problems.push(format!(
                "snapshot {} (on {home}, taken of volume {}): sha256 {got} instead of {}",
                s.id, s.volume, s.sha
            ));
        }
        checked_snaps += 1;
    }
    let mut t_settle = Instant::now();
    let mut orphan_check = OrphanCheck::start();
    let mut bad = ceph.inconsistencies();
    while !bad.is_empty() && t_settle.elapsed() < SETTLE {
        // Work the socket does not show (e.g. removing the leftovers of an internal image) can
        // wait on a watch the OSD never expires, as a convergence can: the same remedy.
        if orphan_check.healed(&mut chaos) {
            // Its failure backoff may have grown long meanwhile: a restart retries at once.
            (d, c) = restart_with_clients(d, c, &flags).await;
            t_settle = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        bad = ceph.inconsistencies();
    }
    problems.extend(bad.into_iter().map(|b| format!("leak: {b}")));
    let live_vols: BTreeSet<String> = chaos.model.live_vols().map(|v| v.id.clone()).collect();
    let live_snaps: BTreeSet<String> = chaos.model.live_snaps().map(|s| s.id.clone()).collect();
    let digests: BTreeSet<String> = chaos.os.iter().map(|o| o.digest.clone()).collect();
    for key in ceph.omap_keys(VOLUMES).difference(&baseline.volumes) {
        // Live volumes, and the images of re-homed snapshots.
        if !live_vols.contains(key) && !live_snaps.contains(key) {
            problems.push(format!(
                "leak: Image record {key} of nothing the test keeps"
            ));
        }
    }
    for key in ceph.omap_keys(SNAPSHOTS).difference(&baseline.snapshots) {
        if !live_snaps.contains(key) && !digests.contains(key) {
            problems.push(format!(
                "leak: Snapshot record {key} of nothing the test keeps"
            ));
        }
    }
    step(
        t0,
        &format!(
            "final: {checked_vols} volume(s) and {checked_snaps} snapshot(s) read back, {} \
             problem(s)",
            problems.len()
        ),
    );
    assert!(
        problems.is_empty(),
        "after {kills} SIGKILLs (seed {seed}):\n  {}",
        problems.join("\n  ")
    );

    // Clean-up through the daemon: every volume and snapshot; then the cached OS images.
    for v in chaos.model.live_vols() {
        ops::delete(&mut c, &v.id).await;
    }
    for s in chaos.model.live_snaps() {
        ops::delete_snapshot(&mut c, &s.id).await;
    }
    for v in chaos.model.vols.iter_mut() {
        v.deleted = true;
    }
    for s in chaos.model.snaps.iter_mut() {
        s.deleted = true;
    }
    let t_clean = Instant::now();
    let mut orphan_check = OrphanCheck::start();
    loop {
        let vols = ops::list(&mut c).await.len();
        let snaps = ops::list_snapshots(&mut c).await.len();
        let images = ceph.images();
        let ours = images
            .iter()
            .filter(|i| !baseline.images.contains(*i) && i.starts_with("img_"))
            .count();
        if vols <= baseline.volumes.len() && snaps <= baseline.snapshots.len() && ours == 0 {
            break;
        }
        if orphan_check.healed(&mut chaos) {
            (d, c) = restart_with_clients(d, c, &flags).await;
        }
        assert!(
            t_clean.elapsed() < CLEANUP,
            "clean-up did not finish within {CLEANUP:?}: {vols} volume(s), {snaps} snapshot(s), \
             {ours} img_ image(s) left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(c);
    let status = d.terminate().await;
    assert!(status.success(), "daemon exit {status}:\n{}", d.logs());
    for o in &chaos.os {
        let image = format!("snap_{}", o.digest);
        if ceph.info(&image).is_some() {
            let v1 = ceph.spec(&format!("{image}@v1"));
            if ceph.snaps(&image).iter().any(|(n, _, p)| n == "v1" && *p) {
                ceph.run("rbd", &["snap", "unprotect", &v1]);
            }
            if ceph.snaps(&image).iter().any(|(n, _, _)| n == "v1") {
                ceph.run("rbd", &["snap", "rm", "--no-progress", &v1]);
            }
            ceph.run("rbd", &["rm", "--no-progress", &ceph.spec(&image)]);
        }
        if ceph.omap_keys(SNAPSHOTS).contains(&o.digest) {
            ceph.run("rados", &["-p", &pool, "rmomapkey", SNAPSHOTS, &o.digest]);
        }
    }
    ceph.assert_consistent("after the clean-up");
    assert_eq!(
        ceph.images(),
        baseline.images,
        "rbd images as before the test"
    );
    assert_eq!(
        ceph.omap_keys(VOLUMES),
        baseline.volumes,
        "Image records as before"
    );
    assert_eq!(
        ceph.omap_keys(SNAPSHOTS),
        baseline.snapshots,
        "Snapshot records as before"
    );
    chaos.leftovers.volumes.lock().expect("lock").clear();
    chaos.leftovers.snapshots.lock().expect("lock").clear();
    drop(keep_log);

    let max = converge_times
        .iter()
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    let times: Vec<String> = converge_times
        .iter()
        .map(|(r, d)| format!("#{r} {:.1}s", d.as_secs_f64()))
        .collect();
    eprintln!(
        "chaos: seed {seed}\nchaos: kills {kills} ({unwaited} restarted without waiting, hit again \
         during recovery)\nchaos: objects {} volume(s) ({} kept), {} snapshot(s) ({} kept); read \
         back {checked_vols} volume(s), {checked_snaps} snapshot(s)\nchaos: converge after restart: \
         {}\nchaos: converge max {:.1}s\nchaos: orphan watches of killed clients cleared (Ceph \
         defect): {}\nchaos: total {:.1}s",
        chaos.model.vols.len(),
        live_vols.len(),
        chaos.model.snaps.len(),
        live_snaps.len(),
        times.join(", "),
        max.as_secs_f64(),
        chaos.orphan_watches,
        t0.elapsed().as_secs_f64()
    );
}

/// [`Chaos::converge`], restarting the daemon each time it cleared orphan watches (its retries of
/// the blocked work have backed off meanwhile; a restart retries at once).
async fn converge(
    chaos: &mut Chaos,
    mut d: Daemon,
    mut c: Clients,
    flags: &[&str],
    baseline: &Baseline,
) -> (Daemon, Clients) {
    loop {
        // Dropped before `d` when a check panics (the caller's guard comes too late: by then `d`
        // and its directory are gone).
        let keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_chaos");
        let converged = chaos.converge(&mut c, baseline).await.is_some();
        drop(keep_log);
        if converged {
            return (d, c);
        }
        (d, c) = restart_with_clients(d, c, flags).await;
    }
}

/// Stops the daemon gracefully (SIGTERM) and starts it again on the same directory.
async fn restart(mut d: Daemon, flags: &[&str]) -> Daemon {
    let status = d.terminate().await;
    assert!(status.success(), "daemon exit {status}:\n{}", d.logs());
    let dir = d.into_dir_after_exit();
    Daemon::start_in(cephvol_bin!(), dir, flags).await
}

/// [`restart`], with the old clients dropped first and new ones connected.
async fn restart_with_clients(d: Daemon, c: Clients, flags: &[&str]) -> (Daemon, Clients) {
    drop(c);
    let d = restart(d, flags).await;
    let c = d.clients().await;
    (d, c)
}

/// The one look a wait takes for watches the OSD never expires, after it has waited
/// [`ORPHAN_CHECK_AFTER`]: a convergence, the final settling and the clean-up each have one.
struct OrphanCheck {
    since: Instant,
    done: bool,
}

impl OrphanCheck {
    fn start() -> OrphanCheck {
        OrphanCheck {
            since: Instant::now(),
            done: false,
        }
    }

    /// Whether this wait found and cleared such watches now ([`Chaos::heal_orphan_watches`]):
    /// looked for once, when [`ORPHAN_CHECK_AFTER`] has passed.
    fn healed(&mut self, chaos: &mut Chaos) -> bool {
        if self.done || self.since.elapsed() < ORPHAN_CHECK_AFTER {
            return false;
        }
        self.done = true;
        chaos.heal_orphan_watches()
    }
}
