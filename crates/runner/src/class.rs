//! Owns operation classes: their configuration ([`ClassConfig`]), how shares become reserved
//! running slots ([`reserved_slots`]), and the scheduling rule that decides which class may take a
//! free slot and which waiting operation gets it ([`Classes::may_start`], [`Classes::choose`]).
//! The rule works on plain counts so it can be read (and tested) apart from the runner's locking;
//! it touches no queue and runs no operation.
//!
//! Hand-written: the rule (reservations, one kept slot per idle class, aging) is this crate's own
//! contract, stated in the crate docs; no scheduling crate implements it.

use std::time::Duration;

use tokio::time::Instant;

/// The name of the class that class-less submissions ([`Runner::try_submit`](crate::Runner::try_submit)
/// and friends) use when [`RunnerConfig::classes`](crate::RunnerConfig::classes) is empty.
pub const DEFAULT_CLASS: &str = "default";

/// One operation class of a [`Runner`](crate::Runner): a name, a share of the running slots and an
/// optional bound on its waiting operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClassConfig {
    /// The name submissions use ([`Runner::try_submit_in`](crate::Runner::try_submit_in)).
    pub name: String,
    /// The class's weight in `max_running` (0 is treated as 1). The runner turns the shares into
    /// reserved slots that add up to `max_running` (see [`reserved_slots`]): shares 5/3/2 with
    /// `max_running` 10 reserve exactly 5, 3 and 2 slots.
    pub share: usize,
    /// At most this many operations of the class wait (on top of the runner-wide
    /// `max_waiting`); `None`: only the runner-wide bound applies.
    pub max_waiting: Option<usize>,
}

impl ClassConfig {
    /// A class named `name` with weight `share` and no bound of its own on waiting operations.
    pub fn new(name: impl Into<String>, share: usize) -> Self {
        ClassConfig {
            name: name.into(),
            share,
            max_waiting: None,
        }
    }

    /// The same class with at most `max_waiting` waiting operations of its own.
    #[must_use]
    pub fn with_max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = Some(max_waiting);
        self
    }
}

/// The running slots each class reserves, given `max_running` (0 is treated as 1) and the classes'
/// shares in configuration order (0 is treated as 1). The result adds up to `max_running`.
///
/// 1. Proportional, by largest remainder: each class gets `floor(max_running * share / total)`;
///    the slots left go one each to the classes with the largest remainders (ties: the earlier
///    class).
/// 2. If there are at least as many slots as classes, every class reserves at least one: a class
///    left with none takes one from the class with the most (ties: the later class). With fewer
///    slots than classes, some classes reserve none.
///
/// Shares that already add up to `max_running` are kept as they are. Shares 5/3/2 give, for
/// `max_running` 1 to 10: 1/0/0, 1/1/0, 1/1/1, 2/1/1, 3/1/1, 3/2/1, 4/2/1, 4/2/2, 4/3/2, 5/3/2.
pub fn reserved_slots(max_running: usize, shares: &[usize]) -> Vec<usize> {
    let slots_total = max_running.max(1);
    let weights: Vec<u128> = shares.iter().map(|&s| s.max(1) as u128).collect();
    let total: u128 = weights.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let n = slots_total as u128;
    let mut slots: Vec<usize> = weights
        .iter()
        .map(|&w| usize::try_from(n * w / total).expect("a part of max_running fits"))
        .collect();
    let mut remainders: Vec<u128> = weights.iter().map(|&w| n * w % total).collect();
    // The fractional parts add up to the slots left, each below one: at least that many classes
    // have a non-zero remainder, and each gets at most one more slot.
    let mut left = slots_total - slots.iter().sum::<usize>();
    while left > 0 {
        let (best, _) =
            remainders
                .iter()
                .enumerate()
                .fold((None, 0u128), |(best, max), (i, &r)| {
                    if r > max {
                        (Some(i), r)
                    } else {
                        (best, max)
                    }
                });
        let best = best.expect("a class with a remainder is left");
        slots[best] += 1;
        remainders[best] = 0;
        left -= 1;
    }
    if slots_total >= slots.len() {
        for i in 0..slots.len() {
            if slots[i] == 0 {
                // Some class has two or more: the slots add up to at least the number of classes.
                let richest = (0..slots.len())
                    .rev()
                    .max_by_key(|&j| (slots[j], std::cmp::Reverse(j)))
                    .expect("classes exist");
                slots[richest] -= 1;
                slots[i] = 1;
            }
        }
    }
    slots
}

/// A class as the runner uses it: its normalised configuration and reserved slots.
#[derive(Debug)]
pub(crate) struct ClassSpec {
    pub(crate) name: String,
    pub(crate) share: usize,
    pub(crate) reserved: usize,
    pub(crate) max_waiting: usize,
}

/// The counts the scheduling rule reads, kept by the runner under its state lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Operations running, all classes.
    pub(crate) running: usize,
    /// Classes with no running operation.
    pub(crate) idle: usize,
}

/// What the rule knows about one class when choosing who gets a free slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    /// Running operations of the class.
    pub(crate) running: usize,
    /// When the oldest waiting operation of the class was accepted.
    pub(crate) accepted_at: Instant,
    /// Its acceptance number (runner-wide, increasing).
    pub(crate) seq: u64,
}

/// The classes of one runner and the scheduling rule (see the crate docs, "Operation classes").
#[derive(Debug)]
pub(crate) struct Classes {
    pub(crate) specs: Vec<ClassSpec>,
    max_running: usize,
    /// Whether a slot is kept free for each idle class: only when every class reserves one.
    guards: bool,
    aging: Duration,
}

impl Classes {
    /// Normalises the configuration: no classes means one class named [`DEFAULT_CLASS`]; a name
    /// given again is ignored (the first one counts).
    pub(crate) fn new(
        max_running: usize,
        max_waiting: usize,
        configs: &[ClassConfig],
        aging: Duration,
    ) -> Self {
        let max_running = max_running.max(1);
        let mut unique: Vec<&ClassConfig> = Vec::with_capacity(configs.len());
        for c in configs {
            if !unique.iter().any(|u| u.name == c.name) {
                unique.push(c);
            }
        }
        let default = ClassConfig::new(DEFAULT_CLASS, 1);
        if unique.is_empty() {
            unique.push(&default);
        }
        let shares: Vec<usize> = unique.iter().map(|c| c.share.max(1)).collect();
        let reserved = reserved_slots(max_running, &shares);
        let specs: Vec<ClassSpec> = unique
            .iter()
            .zip(shares.iter().zip(&reserved))
            .map(|(c, (&share, &reserved))| ClassSpec {
                name: c.name.clone(),
                share,
                reserved,
                max_waiting: c.max_waiting.unwrap_or(max_waiting).min(max_waiting),
            })
            .collect();
        Classes {
            guards: max_running >= specs.len(),
            specs,
            max_running,
            aging,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.specs.len()
    }

    /// The index of the class named `name`, if configured.
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Whether an operation of a class with `class_running` running operations may take a free
    /// slot now: a slot is free, and taking it leaves one free slot for every *other* class with
    /// nothing running (when guards apply).
    pub(crate) fn may_start(&self, load: Load, class_running: usize) -> bool {
        let free = self.max_running - load.running;
        if free == 0 {
            return false;
        }
        if !self.guards {
            return true;
        }
        // `load.idle` counts this class too when it has nothing running. After the start,
        // `free - 1` slots must stay for the other idle classes.
        let other_idle = load.idle - usize::from(class_running == 0);
        free > other_idle
    }

    /// Which class's head gets the free slot, among the heads of classes that may start: an aged
    /// head first (waited at least `aging`), then a class below its share (fewer running than
    /// it reserves, or none running), then any; the oldest head first within each rank.
    pub(crate) fn choose(
        &self,
        load: Load,
        now: Instant,
        heads: impl Iterator<Item = (usize, Option<Head>)>,
    ) -> Option<usize> {
        let mut best: Option<(u8, u64, usize)> = None;
        for (class, head) in heads {
            let Some(head) = head else { continue };
            if !self.may_start(load, head.running) {
                continue;
            }
            let rank = if now.saturating_duration_since(head.accepted_at) >= self.aging {
                0
            } else if head.running < self.specs[class].reserved.max(1) {
                1
            } else {
                2
            };
            let candidate = (rank, head.seq, class);
            if best.is_none_or(|b| candidate < b) {
                best = Some(candidate);
            }
        }
        best.map(|(_, _, class)| class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_five_three_two_scale_to_every_small_total() {
        let expected: [&[usize]; 10] = [
            &[1, 0, 0],
            &[1, 1, 0],
            &[1, 1, 1],
            &[2, 1, 1],
            &[3, 1, 1],
            &[3, 2, 1],
            &[4, 2, 1],
            &[4, 2, 2],
            &[4, 3, 2],
            &[5, 3, 2],
        ];
        for (n, want) in (1..=10).zip(expected) {
            assert_eq!(reserved_slots(n, &[5, 3, 2]), want, "max_running {n}");
        }
        assert_eq!(reserved_slots(20, &[5, 3, 2]), [10, 6, 4]);
        assert_eq!(reserved_slots(100, &[5, 3, 2]), [50, 30, 20]);
    }

    #[test]
    fn shares_that_add_up_to_the_total_are_kept() {
        assert_eq!(reserved_slots(10, &[7, 2, 1]), [7, 2, 1]);
        assert_eq!(reserved_slots(4, &[1, 1, 1, 1]), [1, 1, 1, 1]);
    }

    #[test]
    fn every_class_reserves_a_slot_when_there_are_enough() {
        assert_eq!(reserved_slots(3, &[100, 1, 1]), [1, 1, 1]);
        assert_eq!(reserved_slots(4, &[100, 1, 1]), [2, 1, 1]);
        assert_eq!(reserved_slots(2, &[100, 1, 1]), [2, 0, 0]);
    }

    #[test]
    fn zero_totals_and_zero_shares_count_as_one() {
        assert_eq!(reserved_slots(0, &[0]), [1]);
        assert_eq!(reserved_slots(2, &[0, 0]), [1, 1]);
        assert!(reserved_slots(5, &[]).is_empty());
    }

    #[test]
    fn reserved_slots_always_add_up_to_the_total() {
        for n in 1..40 {
            for shares in [
                &[1usize][..],
                &[3, 1],
                &[5, 3, 2],
                &[1, 9, 1, 4],
                &[2, 2, 2, 2, 2],
            ] {
                let slots = reserved_slots(n, shares);
                assert_eq!(slots.iter().sum::<usize>(), n, "{n} {shares:?}");
                if n >= shares.len() {
                    assert!(slots.iter().all(|&s| s >= 1), "{n} {shares:?}: {slots:?}");
                }
            }
        }
    }

    fn classes(max_running: usize, shares: &[usize]) -> Classes {
        let configs: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(i, &s)| ClassConfig::new(format!("c{i}"), s))
            .collect();
        Classes::new(max_running, 100, &configs, Duration::from_secs(60))
    }

    #[test]
    fn a_busy_class_never_takes_the_last_slot_free_for_an_idle_class() {
        let c = classes(4, &[2, 2]);
        // Class 0 runs 3, class 1 none: one slot free, kept for class 1.
        let load = Load {
            running: 3,
            idle: 1,
        };
        assert!(!c.may_start(load, 3));
        assert!(c.may_start(load, 0));
    }

    #[test]
    fn with_fewer_slots_than_classes_no_slot_is_kept() {
        let c = classes(1, &[1, 1]);
        let load = Load {
            running: 0,
            idle: 2,
        };
        assert!(c.may_start(load, 0));
    }

    #[test]
    fn duplicate_names_are_ignored_and_no_classes_means_the_default_class() {
        let c = Classes::new(
            4,
            10,
            &[
                ClassConfig::new("a", 1),
                ClassConfig::new("a", 3).with_max_waiting(2),
            ],
            Duration::ZERO,
        );
        assert_eq!(c.len(), 1);
        assert_eq!((c.specs[0].reserved, c.specs[0].max_waiting), (4, 10));
        let c = Classes::new(4, 10, &[], Duration::ZERO);
        assert_eq!(c.find(DEFAULT_CLASS), Some(0));
    }
}
