//! `--wait`: one polling loop for every command that waits (a volume to be available or resized, a
//! snapshot to be ready, an object to be deleted), parameterised by what is polled and what counts
//! as done, with the progress line on stderr fed from cephvol's `Progress` extension service
//! (providers without it: state only). Sends no mutating RPC.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;
use tonic::Code;

use crate::client::Clients;
use crate::output;
use crate::{list_snapshots, list_volumes, parse_duration};
use crate::{Error, Result};
use iri::cephvol::v1alpha1 as pbp;
use iri::volume_v1 as pb;

/// `--wait` and `--timeout` of the commands that can wait.
#[derive(Debug, Clone, Args)]
pub(crate) struct WaitArgs {
    /// Wait until the object is ready, showing progress.
    #[arg(short = 'w', long)]
    pub(crate) wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

/// The kind of object waited for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Volume,
    Snapshot,
}

impl Kind {
    /// How messages name the kind.
    fn noun(self) -> &'static str {
        match self {
            Kind::Volume => "volume",
            Kind::Snapshot => "volume snapshot",
        }
    }

    fn progress_kind(self) -> pbp::ObjectKind {
        match self {
            Kind::Volume => pbp::ObjectKind::Volume,
            Kind::Snapshot => pbp::ObjectKind::VolumeSnapshot,
        }
    }
}

/// Shows progress lines on stderr: rewritten in place on a terminal, else printed when they change.
struct ProgressLine {
    tty: bool,
    last: String,
    last_print: Instant,
    dirty: bool,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
            last_print: Instant::now(),
            dirty: false,
        }
    }

    fn show(&mut self, line: String) {
        if line == self.last {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.dirty = true;
        } else {
            // Without a terminal, print at most every 2 s unless the phase changed.
            let phase = |s: &str| s.split(" (").next().unwrap_or("").to_string();
            if phase(&line) == phase(&self.last)
                && self.last_print.elapsed() < Duration::from_secs(2)
            {
                return;
            }
            let _ = writeln!(err, "{line}");
            self.last_print = Instant::now();
        }
        let _ = err.flush();
        self.last = line;
    }

    fn finish(&mut self) {
        if self.tty && self.dirty {
            let _ = writeln!(std::io::stderr());
            self.dirty = false;
        }
    }
}

fn describe(state: &str, p: Option<&pbp::GetProgressResponse>) -> String {
    let Some(p) = p else { return state.to_string() };
    let mut s = if p.state.is_empty() {
        state.to_string()
    } else {
        p.state.clone()
    };
    if !p.phase.is_empty() {
        s.push_str(": ");
        s.push_str(&p.phase);
    }
    if p.total > 0 {
        let pct = (p.done as f64 / p.total as f64 * 100.0).min(100.0);
        s.push_str(&format!(
            " ({} / {}, {pct:.0}%)",
            output::bytes(p.done as i64),
            output::bytes(p.total as i64)
        ));
    } else if p.done > 0 {
        s.push_str(&format!(" ({})", output::bytes(p.done as i64)));
    }
    if !p.message.is_empty() {
        s.push_str(&format!(" — {}", p.message));
    }
    s
}

async fn progress(
    c: &mut Clients,
    kind: Kind,
    id: &str,
    enabled: &mut bool,
) -> Option<pbp::GetProgressResponse> {
    if !*enabled {
        return None;
    }
    match c
        .progress
        .get_progress(pbp::GetProgressRequest {
            kind: kind.progress_kind() as i32,
            id: id.to_string(),
        })
        .await
    {
        Ok(r) => Some(r.into_inner()),
        Err(s) if s.code() == Code::Unimplemented => {
            *enabled = false;
            None
        }
        Err(_) => None,
    }
}

const POLL: Duration = Duration::from_millis(500);

/// What one look at the awaited object found.
pub(crate) enum Seen<T> {
    /// The wait is over, with this result.
    Done(T),
    /// Not yet: the object's state as the progress line names it.
    Pending(String),
    /// The object ended in its error state (named so).
    Failed(String),
}

/// What ends a wait (it words the timeout).
#[derive(Clone, Copy)]
enum Goal {
    /// The object reaches a state.
    Ready,
    /// The object is gone.
    Deleted,
}

/// One wait: the object, how long, and the phase to show when the provider reports none.
struct Wait<'a> {
    kind: Kind,
    id: &'a str,
    timeout: Duration,
    activity: &'a str,
    goal: Goal,
}

impl Wait<'_> {
    fn failed(&self, shown: &str) -> Error {
        Error::Cli(format!("{} {} failed: {shown}", self.kind.noun(), self.id))
    }

    fn timed_out(&self, shown: &str) -> Error {
        Error::Cli(match self.goal {
            Goal::Ready => format!(
                "timed out waiting for {} {} ({shown})",
                self.kind.noun(),
                self.id
            ),
            Goal::Deleted => format!("timed out waiting for {} to be deleted", self.id),
        })
    }
}

/// The polling loop: `look` every [`POLL`] until it is [`Seen::Done`], the object fails, `look`
/// errs or the timeout passes; shows the progress line meanwhile and ends it before returning.
async fn wait_for<T>(
    c: &mut Clients,
    w: Wait<'_>,
    mut look: impl AsyncFnMut(&mut Clients) -> Result<Seen<T>>,
) -> Result<T> {
    let deadline = Instant::now() + w.timeout;
    let mut line = ProgressLine::new();
    let mut with_progress = true;
    let result = loop {
        let (state, failed) = match look(c).await {
            Ok(Seen::Done(v)) => break Ok(v),
            Ok(Seen::Pending(state)) => (state, false),
            Ok(Seen::Failed(state)) => (state, true),
            Err(e) => break Err(e),
        };
        let mut p = progress(c, w.kind, w.id, &mut with_progress).await;
        if let Some(p) = p
            .as_mut()
            .filter(|p| p.phase.is_empty() && !w.activity.is_empty())
        {
            p.phase = w.activity.to_string();
        }
        let shown = describe(&state, p.as_ref());
        if failed {
            break Err(w.failed(&shown));
        }
        line.show(shown.clone());
        if Instant::now() >= deadline {
            break Err(w.timed_out(&shown));
        }
        tokio::time::sleep(POLL).await;
    };
    line.finish();
    result
}

/// Waits until volume `id` satisfies `done` (VOLUME_ERROR fails the wait); `activity` names the
/// phase when the provider reports none (e.g. "resizing to 2Gi").
pub(crate) async fn wait_volume(
    c: &mut Clients,
    id: &str,
    timeout: Duration,
    activity: &str,
    done: impl Fn(&pb::Volume) -> bool,
) -> Result<pb::Volume> {
    let w = Wait {
        kind: Kind::Volume,
        id,
        timeout,
        activity,
        goal: Goal::Ready,
    };
    wait_for(c, w, async |c: &mut Clients| {
        let Some(v) = list_volumes(c, id, BTreeMap::new())
            .await?
            .into_iter()
            .next()
        else {
            return Err(Error::Cli(format!("volume {id} disappeared")));
        };
        if done(&v) {
            return Ok(Seen::Done(v));
        }
        let state = v.status.as_ref().map(|s| s.state).unwrap_or(0);
        let name = pb::VolumeState::try_from(state)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN")
            .to_string();
        Ok(if state == pb::VolumeState::VolumeError as i32 {
            Seen::Failed(name)
        } else {
            Seen::Pending(name)
        })
    })
    .await
}

/// Waits until snapshot `id` is READY (FAILED fails the wait).
pub(crate) async fn wait_snapshot(
    c: &mut Clients,
    id: &str,
    timeout: Duration,
) -> Result<pb::VolumeSnapshot> {
    let w = Wait {
        kind: Kind::Snapshot,
        id,
        timeout,
        activity: "",
        goal: Goal::Ready,
    };
    wait_for(c, w, async |c: &mut Clients| {
        let Some(s) = list_snapshots(c, id, BTreeMap::new())
            .await?
            .into_iter()
            .next()
        else {
            return Err(Error::Cli(format!("volume snapshot {id} disappeared")));
        };
        let state = s.status.as_ref().map(|s| s.state).unwrap_or(0);
        if state == pb::VolumeSnapshotState::VolumeSnapshotReady as i32 {
            return Ok(Seen::Done(s));
        }
        let name = pb::VolumeSnapshotState::try_from(state)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN")
            .to_string();
        Ok(
            if state == pb::VolumeSnapshotState::VolumeSnapshotFailed as i32 {
                Seen::Failed(name)
            } else {
                Seen::Pending(name)
            },
        )
    })
    .await
}

/// Waits until the object `id` of `kind` is no longer listed.
pub(crate) async fn wait_gone(
    c: &mut Clients,
    kind: Kind,
    id: &str,
    timeout: Duration,
) -> Result<()> {
    let w = Wait {
        kind,
        id,
        timeout,
        activity: "",
        goal: Goal::Deleted,
    };
    wait_for(c, w, async |c: &mut Clients| {
        let present = match kind {
            Kind::Volume => !list_volumes(c, id, BTreeMap::new()).await?.is_empty(),
            Kind::Snapshot => !list_snapshots(c, id, BTreeMap::new()).await?.is_empty(),
        };
        Ok(if present {
            Seen::Pending("deleting".to_string())
        } else {
            Seen::Done(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_described_with_percentages() {
        let p = pbp::GetProgressResponse {
            state: "Pending".into(),
            phase: "populating OS image r@sha256:x".into(),
            done: 512 << 20,
            total: 1 << 30,
            message: String::new(),
        };
        assert_eq!(
            describe("VOLUME_PENDING", Some(&p)),
            "Pending: populating OS image r@sha256:x (512Mi / 1Gi, 50%)"
        );
        assert_eq!(describe("VOLUME_PENDING", None), "VOLUME_PENDING");
    }
}
