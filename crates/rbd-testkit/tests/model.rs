//! Property: random sequences of backend operations give the same results (Ok or the same error
//! kind) and the same images, snapshots, parents, children and bytes on the backends as on a
//! small, obviously-correct reference model.
//!
//! The model keeps every image and snapshot as a plain `Vec<u8>`; a clone is a copy of its parent
//! snapshot's bytes plus a parent link (which is what read-through must look like from outside),
//! and flatten drops the links of the clone and of its snapshots (Ceph Pacific).
//! Case counts come from `PROPTEST_CASES` (proptest's default config); the local-directory
//! backend runs a twentieth of them because every step touches files.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rbd::local::LocalBackend;
use rbd::{no_progress, BlockBackend, CancellationToken, RbdError};
use rbd_testkit::fake::MemoryBackend;

const IMAGES: [&str; 4] = ["a", "b", "c", "snap_sha256:d"];
const SNAPS: [&str; 2] = ["s1", "s2"];
/// Object size of the fake under test: images of up to 2 KiB span several objects.
const CHUNK: u64 = 256;

/// A generated step: selectors are resolved against the model's current state (mostly picking
/// existing images and snapshots, sometimes any name) so that deep sequences (clone of a protected
/// snapshot of a written image, then shrink and grow the clone, ...) are common.
#[derive(Debug, Clone)]
enum Gen {
    Create {
        img: u8,
        size: u64,
    },
    Write {
        img: u8,
        off: u16,
        len: u16,
        byte: u8,
    },
    /// Even `change`: shrink to `change/2 % (size+1)`; odd: grow by `change/2 % 1024`.
    Resize {
        img: u8,
        change: u16,
    },
    Snap {
        img: u8,
        snap: u8,
    },
    Protect {
        img: u8,
        snap: u8,
    },
    Unprotect {
        img: u8,
        snap: u8,
    },
    RemoveSnap {
        img: u8,
        snap: u8,
    },
    Clone {
        src: u8,
        child: u8,
    },
    Flatten {
        img: u8,
    },
    RemoveImage {
        img: u8,
    },
}

/// A concrete step, run on the model and on the backend.
#[derive(Debug, Clone)]
enum Cmd {
    Create {
        img: String,
        size: u64,
    },
    Write {
        img: String,
        off: u64,
        len: u64,
        byte: u8,
    },
    Resize {
        img: String,
        size: u64,
    },
    Snap {
        img: String,
        snap: String,
    },
    Protect {
        img: String,
        snap: String,
    },
    Unprotect {
        img: String,
        snap: String,
    },
    RemoveSnap {
        img: String,
        snap: String,
    },
    Clone {
        img: String,
        snap: String,
        child: String,
    },
    Flatten {
        img: String,
    },
    RemoveImage {
        img: String,
    },
}

fn gen() -> impl Strategy<Value = Gen> {
    let sel = any::<u8>;
    let size = prop_oneof![Just(0u64), 1..2048u64, Just(CHUNK), Just(4 * CHUNK)];
    prop_oneof![
        2 => (sel(), size.clone()).prop_map(|(img, size)| Gen::Create { img, size }),
        4 => (sel(), any::<u16>(), any::<u16>(), 1..=255u8)
            .prop_map(|(img, off, len, byte)| Gen::Write { img, off, len, byte }),
        3 => (sel(), any::<u16>()).prop_map(|(img, change)| Gen::Resize { img, change }),
        3 => (sel(), sel()).prop_map(|(img, snap)| Gen::Snap { img, snap }),
        3 => (sel(), sel()).prop_map(|(img, snap)| Gen::Protect { img, snap }),
        2 => (sel(), sel()).prop_map(|(img, snap)| Gen::Unprotect { img, snap }),
        2 => (sel(), sel()).prop_map(|(img, snap)| Gen::RemoveSnap { img, snap }),
        4 => (sel(), sel()).prop_map(|(src, child)| Gen::Clone { src, child }),
        2 => sel().prop_map(|img| Gen::Flatten { img }),
        2 => sel().prop_map(|img| Gen::RemoveImage { img }),
    ]
}

/// Selectors below this value pick among existing things (when there are any).
const BIAS: u8 = 200;

// ------------------------------------------------------------------------------------------------
// The reference model

type Link = Option<(String, String)>;

#[derive(Debug, Clone)]
struct RSnap {
    name: String,
    data: Vec<u8>,
    protected: bool,
    parent: Link,
}

#[derive(Debug, Clone)]
struct RImage {
    data: Vec<u8>,
    parent: Link,
    snaps: Vec<RSnap>,
}

#[derive(Debug, Default)]
struct Model {
    images: BTreeMap<String, RImage>,
}

/// Error kinds compared between model and backend (messages may differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotFound,
    Exists,
    Busy,
    InvalidArgument,
}

type Outcome = Result<(), Kind>;

fn kind(e: &RbdError) -> Result<Kind, String> {
    match e {
        RbdError::NotFound(_) => Ok(Kind::NotFound),
        RbdError::Exists(_) => Ok(Kind::Exists),
        RbdError::Busy(_) => Ok(Kind::Busy),
        RbdError::InvalidArgument(_) => Ok(Kind::InvalidArgument),
        other => Err(format!("unexpected error kind: {other}")),
    }
}

impl Model {
    fn pick_image(&self, sel: u8) -> String {
        let existing: Vec<&String> = self.images.keys().collect();
        if sel < BIAS && !existing.is_empty() {
            existing[usize::from(sel) % existing.len()].clone()
        } else {
            IMAGES[usize::from(sel) % IMAGES.len()].to_string()
        }
    }

    fn pick_free_image(&self, sel: u8) -> String {
        let free: Vec<&str> = IMAGES
            .iter()
            .copied()
            .filter(|n| !self.images.contains_key(*n))
            .collect();
        if sel < BIAS && !free.is_empty() {
            free[usize::from(sel) % free.len()].to_string()
        } else {
            IMAGES[usize::from(sel) % IMAGES.len()].to_string()
        }
    }

    fn pick_snap(&self, img: &str, sel: u8) -> String {
        let existing: Vec<&RSnap> = self
            .images
            .get(img)
            .map_or(vec![], |i| i.snaps.iter().collect());
        if sel < BIAS && !existing.is_empty() {
            existing[usize::from(sel) % existing.len()].name.clone()
        } else {
            SNAPS[usize::from(sel) % SNAPS.len()].to_string()
        }
    }

    /// Turns a generated step into a concrete one for the current state.
    fn resolve(&self, g: &Gen) -> Cmd {
        match *g {
            Gen::Create { img, size } => Cmd::Create {
                img: self.pick_free_image(img),
                size,
            },
            Gen::Write {
                img,
                off,
                len,
                byte,
            } => {
                let img = self.pick_image(img);
                let size = self.images.get(&img).map_or(0, |i| i.data.len() as u64);
                // Mostly in range, sometimes (high bits set) anywhere.
                let (off, len) = if off < 0xE000 {
                    let off = u64::from(off) % (size + 1);
                    (off, u64::from(len) % (size - off + 1))
                } else {
                    (u64::from(off) % 2100, u64::from(len) % 600)
                };
                Cmd::Write {
                    img,
                    off,
                    len,
                    byte,
                }
            }
            Gen::Resize { img, change } => {
                let img = self.pick_image(img);
                let size = self.images.get(&img).map_or(0, |i| i.data.len() as u64);
                let amount = u64::from(change / 2);
                let size = if change % 2 == 0 {
                    amount % (size + 1)
                } else {
                    size + amount % 1024
                };
                Cmd::Resize { img, size }
            }
            Gen::Snap { img, snap } => {
                let img = self.pick_image(img);
                // Mostly a new name.
                let snap = SNAPS[usize::from(snap) % SNAPS.len()].to_string();
                Cmd::Snap { img, snap }
            }
            Gen::Protect { img, snap } => {
                let img = self.pick_image(img);
                let snap = self.pick_snap(&img, snap);
                Cmd::Protect { img, snap }
            }
            Gen::Unprotect { img, snap } => {
                let img = self.pick_image(img);
                let snap = self.pick_snap(&img, snap);
                Cmd::Unprotect { img, snap }
            }
            Gen::RemoveSnap { img, snap } => {
                let img = self.pick_image(img);
                let snap = self.pick_snap(&img, snap);
                Cmd::RemoveSnap { img, snap }
            }
            Gen::Clone { src, child } => {
                let protected: Vec<(String, String)> = self
                    .images
                    .iter()
                    .flat_map(|(i, img)| {
                        img.snaps
                            .iter()
                            .filter(|s| s.protected)
                            .map(move |s| (i.clone(), s.name.clone()))
                    })
                    .collect();
                let (img, snap) = if src < BIAS && !protected.is_empty() {
                    protected[usize::from(src) % protected.len()].clone()
                } else {
                    let img = self.pick_image(src);
                    let snap = self.pick_snap(&img, src.rotate_left(3));
                    (img, snap)
                };
                Cmd::Clone {
                    img,
                    snap,
                    child: self.pick_free_image(child),
                }
            }
            Gen::Flatten { img } => Cmd::Flatten {
                img: self.pick_image(img),
            },
            Gen::RemoveImage { img } => Cmd::RemoveImage {
                img: self.pick_image(img),
            },
        }
    }

    fn image(&mut self, img: &str) -> Result<&mut RImage, Kind> {
        self.images.get_mut(img).ok_or(Kind::NotFound)
    }

    fn snap(&mut self, img: &str, snap: &str) -> Result<&mut RSnap, Kind> {
        self.image(img)?
            .snaps
            .iter_mut()
            .find(|s| s.name == snap)
            .ok_or(Kind::NotFound)
    }

    /// Images whose head or one of whose snapshots links to `img@snap` (any snap when `None`).
    fn children(&self, img: &str, snap: Option<&str>) -> Vec<String> {
        let hit = |l: &Link| {
            l.as_ref()
                .is_some_and(|(i, s)| i == img && snap.is_none_or(|want| s == want))
        };
        self.images
            .iter()
            .filter(|(_, m)| hit(&m.parent) || m.snaps.iter().any(|s| hit(&s.parent)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn apply(&mut self, cmd: &Cmd) -> Outcome {
        match cmd {
            Cmd::Create { img, size } => {
                if self.images.contains_key(img) {
                    return Err(Kind::Exists);
                }
                let image = RImage {
                    data: vec![0; *size as usize],
                    parent: None,
                    snaps: vec![],
                };
                self.images.insert(img.clone(), image);
            }
            Cmd::Write {
                img,
                off,
                len,
                byte,
            } => {
                let image = self.image(img)?;
                if off + len > image.data.len() as u64 {
                    return Err(Kind::InvalidArgument);
                }
                image.data[*off as usize..(off + len) as usize].fill(*byte);
            }
            Cmd::Resize { img, size } => self.image(img)?.data.resize(*size as usize, 0),
            Cmd::Snap { img, snap } => {
                let image = self.image(img)?;
                if image.snaps.iter().any(|s| &s.name == snap) {
                    return Err(Kind::Exists);
                }
                let s = RSnap {
                    name: snap.clone(),
                    data: image.data.clone(),
                    protected: false,
                    parent: image.parent.clone(),
                };
                image.snaps.push(s);
            }
            Cmd::Protect { img, snap } => self.snap(img, snap)?.protected = true,
            Cmd::Unprotect { img, snap } => {
                self.snap(img, snap)?;
                if !self.children(img, Some(snap)).is_empty() {
                    return Err(Kind::Busy);
                }
                self.snap(img, snap)?.protected = false;
            }
            Cmd::RemoveSnap { img, snap } => {
                if self.snap(img, snap)?.protected || !self.children(img, Some(snap)).is_empty() {
                    return Err(Kind::Busy);
                }
                self.image(img)?.snaps.retain(|s| &s.name != snap);
            }
            Cmd::Clone { img, snap, child } => {
                let s = self.snap(img, snap)?;
                if !s.protected {
                    return Err(Kind::InvalidArgument);
                }
                let data = s.data.clone();
                if self.images.contains_key(child) {
                    return Err(Kind::Exists);
                }
                let image = RImage {
                    data,
                    parent: Some((img.clone(), snap.clone())),
                    snaps: vec![],
                };
                self.images.insert(child.clone(), image);
            }
            Cmd::Flatten { img } => {
                let image = self.image(img)?;
                image.parent = None;
                for s in &mut image.snaps {
                    s.parent = None;
                }
            }
            Cmd::RemoveImage { img } => {
                if !self.image(img)?.snaps.is_empty() {
                    return Err(Kind::Busy);
                }
                self.images.remove(img);
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Running the same commands on a backend

async fn run(b: &dyn BlockBackend, cmd: &Cmd) -> Result<Outcome, String> {
    let res = match cmd {
        Cmd::Create { img, size } => b.create_image(img, *size).await,
        Cmd::Write {
            img,
            off,
            len,
            byte,
        } => b.write_at(img, *off, &vec![*byte; *len as usize]).await,
        Cmd::Resize { img, size } => b.resize(img, *size).await,
        Cmd::Snap { img, snap } => b.create_snapshot(img, snap).await,
        Cmd::Protect { img, snap } => b.protect_snapshot(img, snap).await,
        Cmd::Unprotect { img, snap } => b.unprotect_snapshot(img, snap).await,
        Cmd::RemoveSnap { img, snap } => b.remove_snapshot(img, snap).await,
        Cmd::Clone { img, snap, child } => b.clone_image(img, snap, child).await,
        Cmd::Flatten { img } => {
            b.flatten(img, no_progress(), CancellationToken::new())
                .await
        }
        Cmd::RemoveImage { img } => b.remove_image(img).await,
    };
    match res {
        Ok(()) => Ok(Ok(())),
        Err(e) => kind(&e).map(Err),
    }
}

/// Everything observable about the pool, from the backend.
async fn observe(b: &dyn BlockBackend) -> Result<String, RbdError> {
    let mut out = String::new();
    for img in b.list_images().await? {
        let info = b.stat(&img).await?;
        let parent = info.parent.map(|p| (p.image, p.snapshot));
        let data = b.read(&img, None, 0, info.size).await?;
        out += &format!(
            "{img} size={} parent={parent:?} data={}\n",
            info.size,
            digest(&data)
        );
        for s in &info.snapshots {
            let data = b.read(&img, Some(&s.name), 0, s.size).await?;
            let kids: Vec<String> = b
                .list_children(&img, Some(&s.name))
                .await?
                .into_iter()
                .map(|c| c.image)
                .collect();
            out += &format!(
                "  @{} size={} protected={} data={} children={kids:?}\n",
                s.name,
                s.size,
                s.protected,
                digest(&data)
            );
        }
        let kids: Vec<String> = b
            .list_children(&img, None)
            .await?
            .into_iter()
            .map(|c| c.image)
            .collect();
        out += &format!("  children={kids:?}\n");
    }
    Ok(out)
}

/// The same picture, from the model.
fn expect(m: &Model) -> String {
    let mut out = String::new();
    for (img, image) in &m.images {
        out += &format!(
            "{img} size={} parent={:?} data={}\n",
            image.data.len(),
            image.parent,
            digest(&image.data)
        );
        for s in &image.snaps {
            out += &format!(
                "  @{} size={} protected={} data={} children={:?}\n",
                s.name,
                s.data.len(),
                s.protected,
                digest(&s.data),
                m.children(img, Some(&s.name))
            );
        }
        out += &format!("  children={:?}\n", m.children(img, None));
    }
    out
}

/// A short, exact rendering of bytes: runs of equal bytes.
fn digest(data: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < data.len() {
        let mut j = i;
        while j < data.len() && data[j] == data[i] {
            j += 1;
        }
        out += &format!("{}x{},", data[i], j - i);
        i = j;
    }
    out
}

async fn agree(b: &dyn BlockBackend, steps: &[Gen]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for (step, g) in steps.iter().enumerate() {
        let cmd = &model.resolve(g);
        let want = model.apply(cmd);
        let got = run(b, cmd).await.map_err(TestCaseError::fail)?;
        prop_assert_eq!(got, want, "step {}: {:?}", step, cmd);
        let seen = observe(b)
            .await
            .map_err(|e| TestCaseError::fail(format!("observing: {e}")))?;
        prop_assert_eq!(seen, expect(&model), "state after step {}: {:?}", step, cmd);
    }
    Ok(())
}

/// A temp dir on tmpfs when there is one: the property only checks semantics, and directory
/// renames on a busy ext4 cost milliseconds each.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("rbd-model").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

proptest! {
    #[test]
    fn memory_backend_agrees_with_the_reference_model(steps in prop::collection::vec(gen(), 1..40)) {
        let backend = MemoryBackend::builder("pool").chunk_size(CHUNK).build();
        runtime().block_on(agree(&backend, &steps))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: (ProptestConfig::default().cases / 20).max(4),
        ..ProptestConfig::default()
    })]
    #[test]
    fn local_backend_agrees_with_the_reference_model(steps in prop::collection::vec(gen(), 1..30)) {
        let dir = scratch_dir();
        let backend = LocalBackend::open(dir.path(), "pool").expect("open").with_sync(false);
        runtime().block_on(agree(&backend, &steps))?;
    }
}
