//! The reference model of the runner: plain lists, no concurrency, the class rule written out
//! (which class may take a free slot, which waiting operation gets it).

use std::collections::VecDeque;
use std::time::Duration;

use runner::{reserved_slots, Outcome, SubmitError, Submitted};
use tokio::time::Instant;

use crate::Config;

#[derive(Debug, Clone)]
pub(crate) struct ModelOp {
    pub(crate) id: usize,
    pub(crate) key: String,
    pub(crate) class: usize,
    pub(crate) obeys: bool,
    pub(crate) cancelled: bool,
    /// Acceptance order and time (set when accepted).
    pub(crate) seq: u64,
    pub(crate) accepted_at: Option<Instant>,
}

/// The reference model: plain lists, no concurrency, the class rule written out.
pub(crate) struct Model {
    pub(crate) max_running: usize,
    pub(crate) max_waiting: usize,
    pub(crate) class_max_waiting: Vec<usize>,
    pub(crate) reserved: Vec<usize>,
    pub(crate) aging: Duration,
    pub(crate) running: Vec<ModelOp>,
    pub(crate) waiting: Vec<VecDeque<ModelOp>>,
    pub(crate) blocked: Option<ModelOp>,
    pub(crate) closed: bool,
    pub(crate) deadline: Option<Instant>,
    pub(crate) next_seq: u64,
    pub(crate) accepted: Vec<u64>,
    pub(crate) deduplicated: Vec<u64>,
    pub(crate) completed: Vec<u64>,
    // Expectations of the current step.
    pub(crate) starts: Vec<usize>,
    pub(crate) completions: Vec<(String, Outcome)>,
    pub(crate) blocked_answer: Option<Result<Submitted, SubmitError>>,
}

impl Model {
    pub(crate) fn new(cfg: &Config) -> Self {
        let shares: Vec<usize> = cfg.classes.iter().map(|c| c.0).collect();
        let k = cfg.classes.len();
        Model {
            max_running: cfg.max_running,
            max_waiting: cfg.max_waiting,
            class_max_waiting: cfg
                .classes
                .iter()
                .map(|c| c.1.unwrap_or(usize::MAX))
                .collect(),
            reserved: reserved_slots(cfg.max_running, &shares),
            aging: Duration::from_secs(cfg.aging_secs),
            running: Vec::new(),
            waiting: vec![VecDeque::new(); k],
            blocked: None,
            closed: false,
            deadline: None,
            next_seq: 0,
            accepted: vec![0; k],
            deduplicated: vec![0; k],
            completed: vec![0; k],
            starts: Vec::new(),
            completions: Vec::new(),
            blocked_answer: None,
        }
    }

    pub(crate) fn classes(&self) -> usize {
        self.reserved.len()
    }

    /// Whether a slot is kept free for each class with nothing running.
    pub(crate) fn guards(&self) -> bool {
        self.max_running >= self.classes()
    }

    pub(crate) fn has(&self, key: &str) -> Option<Submitted> {
        if self.running.iter().any(|op| op.key == key) {
            Some(Submitted::AlreadyRunning)
        } else if self.waiting.iter().flatten().any(|op| op.key == key) {
            Some(Submitted::AlreadyWaiting)
        } else {
            None
        }
    }

    pub(crate) fn running_in(&self, class: usize) -> usize {
        self.running.iter().filter(|op| op.class == class).count()
    }

    pub(crate) fn waiting_total(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    /// The class rule: a slot is free and, with guards, one stays free for every other class
    /// with nothing running.
    pub(crate) fn may_start(&self, class: usize) -> bool {
        let free = self.max_running - self.running.len();
        if free == 0 {
            return false;
        }
        if !self.guards() {
            return true;
        }
        let idle_others = (0..self.classes())
            .filter(|&c| c != class && self.running_in(c) == 0)
            .count();
        free > idle_others
    }

    /// Starts waiting operations while one may start: aged heads first, then classes below
    /// their share (or with nothing running), then any; oldest first within a rank.
    pub(crate) fn promote(&mut self) {
        loop {
            let now = Instant::now();
            let best = (0..self.classes())
                .filter(|&c| self.may_start(c))
                .filter_map(|c| {
                    let head = self.waiting[c].front()?;
                    let accepted_at = head.accepted_at.expect("accepted");
                    let rank = if now - accepted_at >= self.aging {
                        0
                    } else if self.running_in(c) < self.reserved[c].max(1) {
                        1
                    } else {
                        2
                    };
                    Some((rank, head.seq, c))
                })
                .min();
            let Some((_, _, class)) = best else { return };
            let op = self.waiting[class].pop_front().expect("a head");
            self.starts.push(op.id);
            self.running.push(op);
        }
    }

    /// The answer to a submission; `None` means "no room" (Busy, or wait in `submit`).
    pub(crate) fn admit(&mut self, mut op: ModelOp) -> Option<Result<Submitted, SubmitError>> {
        if self.closed {
            return Some(Err(SubmitError::ShuttingDown));
        }
        if let Some(dup) = self.has(&op.key) {
            self.deduplicated[op.class] += 1;
            return Some(Ok(dup));
        }
        let class = op.class;
        let start = self.waiting[class].is_empty() && self.may_start(class);
        let queue = self.waiting_total() < self.max_waiting
            && self.waiting[class].len() < self.class_max_waiting[class];
        if !start && !queue {
            return None;
        }
        op.seq = self.next_seq;
        op.accepted_at = Some(Instant::now());
        self.next_seq += 1;
        self.accepted[class] += 1;
        if start {
            self.starts.push(op.id);
            self.running.push(op);
        } else {
            self.waiting[class].push_back(op);
        }
        Some(Ok(Submitted::Accepted))
    }

    pub(crate) fn complete(&mut self, op: &ModelOp, outcome: Outcome) {
        self.completed[op.class] += 1;
        self.completions.push((op.key.clone(), outcome));
    }

    /// A running operation ended: its slot goes to the chosen waiting operation, then a blocked
    /// submitter may get in.
    pub(crate) fn end_running(&mut self, index: usize, outcome: Outcome) {
        let op = self.running.remove(index);
        self.complete(&op, outcome);
        self.promote();
        self.unblock();
    }

    pub(crate) fn unblock(&mut self) {
        if let Some(op) = self.blocked.take() {
            match self.admit(op.clone()) {
                Some(answer) => self.blocked_answer = Some(answer),
                None => self.blocked = Some(op),
            }
        }
    }

    /// Completes every waiting operation as cancelled, in acceptance order.
    pub(crate) fn cancel_waiting(&mut self) {
        let mut all: Vec<ModelOp> = self.waiting.iter_mut().flat_map(|q| q.drain(..)).collect();
        all.sort_by_key(|op| op.seq);
        for op in all {
            self.complete(&op, Outcome::Cancelled);
        }
    }

    /// Cancels every running operation's token; the obedient ones end.
    pub(crate) fn cancel_running(&mut self) {
        for op in &mut self.running {
            op.cancelled = true;
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].obeys {
                let op = self.running.remove(i);
                self.complete(&op, Outcome::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty() && self.waiting_total() == 0
    }
}
