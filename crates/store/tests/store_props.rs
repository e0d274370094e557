//! Property: random store operation sequences keep the version, finalizer and event invariants, checked against
//! a small reference model.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use store::{
    keys, Image, ImageSpec, ListOptions, MemoryBackend, Store, StoreError, StoreOptions, Watch,
    WatchEvent,
};

const IDS: u8 = 3;
const SEL: (&str, &str) = ("sel", "yes");

#[derive(Debug, Clone)]
enum Change {
    Nothing,
    ToggleSelected,
    SetSize(u8),
    AddFinalizer,
    DropFinalizer,
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        id: u8,
        finalizer: bool,
        selected: bool,
    },
    Update {
        id: u8,
        stale: bool,
        change: Change,
    },
    Delete {
        id: u8,
    },
    Get {
        id: u8,
    },
    OpenWatch,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::Nothing),
        Just(Change::ToggleSelected),
        any::<u8>().prop_map(Change::SetSize),
        Just(Change::AddFinalizer),
        Just(Change::DropFinalizer),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..IDS, any::<bool>(), any::<bool>())
            .prop_map(|(id, finalizer, selected)| Op::Create { id, finalizer, selected }),
        5 => (0..IDS, proptest::bool::weighted(0.2), change())
            .prop_map(|(id, stale, change)| Op::Update { id, stale, change }),
        2 => (0..IDS).prop_map(|id| Op::Delete { id }),
        1 => (0..IDS).prop_map(|id| Op::Get { id }),
        1 => Just(Op::OpenWatch),
    ]
}

/// What the model knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct M {
    rv: u64,
    finalizer: bool,
    deleted: bool,
    selected: bool,
    size: u8,
}

impl M {
    fn of(img: &Image) -> M {
        M {
            rv: img.metadata.resource_version,
            finalizer: img.metadata.has_finalizer(keys::IMAGE_FINALIZER),
            deleted: img.metadata.is_deleted(),
            selected: img.metadata.labels.get(SEL.0).map(String::as_str) == Some(SEL.1),
            size: u8::try_from(img.status.size).expect("sizes fit u8"),
        }
    }
}

/// An event reduced to what the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum E {
    Created(String, M),
    Updated(String, M),
    Deleted(String, M),
    Resync,
}

fn reduce(ev: WatchEvent<Image>) -> E {
    match ev {
        WatchEvent::Created(o) => E::Created(o.metadata.id.clone(), M::of(&o)),
        WatchEvent::Updated(o) => E::Updated(o.metadata.id.clone(), M::of(&o)),
        WatchEvent::Deleted(o) => E::Deleted(o.metadata.id.clone(), M::of(&o)),
        WatchEvent::Resync => E::Resync,
    }
}

fn drain(w: &mut Watch<Image>) -> Vec<E> {
    std::iter::from_fn(|| w.try_recv()).map(reduce).collect()
}

fn name(id: u8) -> String {
    format!("id-{id}")
}

fn image(id: u8, finalizer: bool, selected: bool) -> Image {
    let mut img = Image::new(
        name(id),
        ImageSpec {
            size: 1,
            ..ImageSpec::default()
        },
    );
    if finalizer {
        img.metadata.add_finalizer(keys::IMAGE_FINALIZER);
    }
    if selected {
        img.metadata.labels.insert(SEL.0.into(), SEL.1.into());
    }
    img
}

/// What a bounded watcher that was never drained holds after `events` were dispatched to it.
fn bounded(events: &[E], capacity: usize) -> Vec<E> {
    if events.len() <= capacity {
        events.to_vec()
    } else {
        vec![E::Resync]
    }
}

/// The event a watcher selecting `selected == true` objects sees for a change `old → new` (`None` = removed).
fn selective(id: &str, old: Option<&M>, new: Option<&M>, last: &M) -> Option<E> {
    let was = old.is_some_and(|m| m.selected);
    match new {
        None => was.then(|| E::Deleted(id.to_owned(), last.clone())),
        Some(n) => match (was, n.selected) {
            (true, true) => Some(E::Updated(id.to_owned(), n.clone())),
            (false, true) => Some(E::Created(id.to_owned(), n.clone())),
            (true, false) => Some(E::Deleted(id.to_owned(), n.clone())),
            (false, false) => None,
        },
    }
}

fn check_log_invariants(log: &[E]) -> Result<(), TestCaseError> {
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    for e in log {
        match e {
            E::Created(id, m) => {
                prop_assert!(!live.contains_key(id), "Created for a live id {id}");
                prop_assert_eq!(m.rv, 1);
                live.insert(id.clone(), m.rv);
            }
            E::Updated(id, m) => {
                let prev = live.get(id).copied();
                prop_assert!(prev.is_some(), "event for {id} after its final removal");
                prop_assert!(
                    Some(m.rv) > prev,
                    "versions must strictly increase for {id}"
                );
                live.insert(id.clone(), m.rv);
            }
            E::Deleted(id, m) => {
                let prev = live.remove(id);
                prop_assert!(prev.is_some(), "Deleted for an absent id {id}");
                prop_assert!(Some(m.rv) > prev);
                prop_assert!(
                    m.deleted,
                    "the last state of a removed object has deletedAt"
                );
                prop_assert!(!m.finalizer, "removed objects have no finalizers");
            }
            E::Resync => prop_assert!(false, "a fast watcher must never lag"),
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>, capacity: usize) -> Result<(), TestCaseError> {
    let store: Store<Image> = Store::open_with(
        Arc::new(MemoryBackend::new()),
        StoreOptions {
            watch_queue: capacity,
        },
    )
    .await
    .expect("open");
    let mut fast = store.watch(ListOptions::new()).expect("watch");
    let mut sel = store
        .watch(ListOptions::new().label(SEL.0, SEL.1))
        .expect("watch");
    let mut slow = store.watch(ListOptions::new()).expect("watch");
    let mut late: Vec<(usize, Watch<Image>)> = Vec::new();
    let mut model: BTreeMap<String, M> = BTreeMap::new();
    let mut log: Vec<E> = Vec::new();

    for op in ops {
        let mut expected: Option<E> = None;
        let mut expected_sel: Option<E> = None;
        match op {
            Op::OpenWatch => {
                late.push((log.len(), store.watch(ListOptions::new()).expect("watch")));
            }
            Op::Get { id } => {
                let got = store.get(&name(id)).await;
                match model.get(&name(id)) {
                    Some(m) => prop_assert_eq!(&M::of(&got.expect("present")), m),
                    None => prop_assert_eq!(got, Err(StoreError::NotFound(name(id)))),
                }
            }
            Op::Create {
                id,
                finalizer,
                selected,
            } => {
                let res = store.create(image(id, finalizer, selected)).await;
                match model.entry(name(id)) {
                    Entry::Occupied(_) => {
                        prop_assert_eq!(res, Err(StoreError::AlreadyExists(name(id))));
                    }
                    Entry::Vacant(slot) => {
                        let m = M {
                            rv: 1,
                            finalizer,
                            deleted: false,
                            selected,
                            size: 0,
                        };
                        prop_assert_eq!(&M::of(&res.expect("create")), &m);
                        expected = Some(E::Created(name(id), m.clone()));
                        expected_sel = selective(&name(id), None, Some(&m), &m);
                        slot.insert(m);
                    }
                }
            }
            Op::Update { id, stale, change } => {
                let key = name(id);
                let Some(old) = model.get(&key).cloned() else {
                    prop_assert_eq!(
                        store.update(&image(id, false, false)).await,
                        Err(StoreError::NotFound(key))
                    );
                    continue;
                };
                let mut obj = store.get(&key).await.expect("present");
                let mut new = old.clone();
                match change {
                    Change::Nothing => {}
                    Change::ToggleSelected => {
                        new.selected = !new.selected;
                        if new.selected {
                            obj.metadata.labels.insert(SEL.0.into(), SEL.1.into());
                        } else {
                            obj.metadata.labels.remove(SEL.0);
                        }
                    }
                    Change::SetSize(n) => {
                        new.size = n;
                        obj.status.size = u64::from(n);
                    }
                    Change::AddFinalizer => {
                        new.finalizer = true;
                        obj.metadata.add_finalizer(keys::IMAGE_FINALIZER);
                    }
                    Change::DropFinalizer => {
                        new.finalizer = false;
                        obj.metadata.remove_finalizer(keys::IMAGE_FINALIZER);
                    }
                }
                if stale {
                    obj.metadata.resource_version = old.rv - 1;
                    prop_assert_eq!(
                        store.update(&obj).await,
                        Err(StoreError::Conflict {
                            id: key,
                            expected: old.rv - 1,
                            actual: old.rv
                        })
                    );
                    continue;
                }
                let res = store.update(&obj).await.expect("update");
                if new.deleted && !new.finalizer {
                    new.rv += 1;
                    prop_assert_eq!(&M::of(&res), &new);
                    prop_assert_eq!(
                        store.get(&key).await,
                        Err(StoreError::NotFound(key.clone()))
                    );
                    expected = Some(E::Deleted(key.clone(), new.clone()));
                    expected_sel = selective(&key, Some(&old), None, &new);
                    model.remove(&key);
                } else if new == old {
                    prop_assert_eq!(&M::of(&res), &old);
                } else {
                    new.rv += 1;
                    prop_assert_eq!(&M::of(&res), &new);
                    expected = Some(E::Updated(key.clone(), new.clone()));
                    expected_sel = selective(&key, Some(&old), Some(&new), &new);
                    model.insert(key, new);
                }
            }
            Op::Delete { id } => {
                let key = name(id);
                let res = store.delete(&key).await;
                match model.get(&key).cloned() {
                    None => prop_assert_eq!(res, Err(StoreError::NotFound(key))),
                    Some(old) => {
                        res.expect("delete");
                        let mut new = old.clone();
                        if old.deleted && old.finalizer {
                            // already being deleted: no-op
                        } else if !old.finalizer {
                            new.rv += 1;
                            new.deleted = true;
                            expected = Some(E::Deleted(key.clone(), new.clone()));
                            expected_sel = selective(&key, Some(&old), None, &new);
                            model.remove(&key);
                        } else {
                            new.rv += 1;
                            new.deleted = true;
                            expected = Some(E::Updated(key.clone(), new.clone()));
                            expected_sel = selective(&key, Some(&old), Some(&new), &new);
                            model.insert(key, new);
                        }
                    }
                }
            }
        }
        // Every mutation yields exactly one event to a watcher that keeps up; a no-op yields none.
        prop_assert_eq!(
            drain(&mut fast),
            expected.clone().into_iter().collect::<Vec<_>>()
        );
        prop_assert_eq!(
            drain(&mut sel),
            expected_sel.into_iter().collect::<Vec<_>>()
        );
        log.extend(expected);
    }

    check_log_invariants(&log)?;
    prop_assert_eq!(drain(&mut slow), bounded(&log, capacity));
    for (from, mut w) in late {
        prop_assert_eq!(drain(&mut w), bounded(&log[from..], capacity));
    }
    let listed: BTreeMap<String, M> = store
        .list(&ListOptions::new())
        .await
        .expect("list")
        .iter()
        .map(|img| (img.metadata.id.clone(), M::of(img)))
        .collect();
    prop_assert_eq!(listed, model);
    Ok(())
}

proptest! {
    #[test]
    fn random_operation_sequences_keep_version_finalizer_and_event_invariants(
        ops in proptest::collection::vec(op(), 0..40),
        capacity in 1usize..12,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(run(ops, capacity))?;
    }
}
