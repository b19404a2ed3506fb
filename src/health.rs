//! What the probes report (`/healthz`, `/readyz`): progress, readiness and
//! leadership, recorded by the controller and read by the listener.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// When the API server last answered one of the controller's watch
/// requests, shared between the Kubernetes client (which records it) and
/// the liveness probe (which reads it). Each watch request is ended by the
/// API server after at most `WATCH_TIMEOUT_SECONDS` and made again, so a
/// controller whose watches work is answered at least that often; one
/// whose watches are dead or never came back after an outage is not, even
/// while the API server answers other calls.
#[derive(Clone, Debug, Default)]
pub struct WatchPulse(Arc<Mutex<Option<Instant>>>);

impl WatchPulse {
    /// A watch request was answered (its response began) now.
    pub fn beat(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// Time since the last answer (or restart); `None` before either.
    pub fn since_last(&self) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|at| at.elapsed())
    }
}

/// How long the controller's watches may go unanswered before liveness
/// stops counting the API server's answers as progress: two watch requests
/// (2 × 50 s), so that a watch that silently died is replaced (65 s read
/// timeout) and answered again with room to spare, while one that never
/// comes back is noticed.
pub const WATCHES_SILENT_LIMIT: Duration = Duration::from_secs(100);

/// Default of how long the leader may make no progress (the API server does
/// not answer, or the controller's watches are not answered) while it has
/// RunaiCredentials to keep, before `/healthz` fails and the kubelet restarts
/// it: several times the 30 s probe period, so that a short API-server outage
/// is waited out.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(180);

/// What the probes report.
#[derive(Debug)]
pub struct Health {
    /// When the process started; progress is kept as milliseconds since.
    started: Instant,
    /// Milliseconds after `started` of the last progress.
    last_progress_ms: AtomicU64,
    /// The controller has RunaiCredentials to keep.
    has_work: AtomicBool,
    /// How long without progress makes `/healthz` fail.
    stall_limit: Duration,
    /// The controller's watches have synced (or this replica is a follower,
    /// which must not block a rolling update).
    ready: AtomicBool,
    /// This replica holds the leader lease.
    leading: AtomicBool,
    /// The controller loop has ended: the process is about to exit or is stuck.
    stopped: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            has_work: AtomicBool::new(false),
            stall_limit: DEFAULT_STALL_LIMIT,
            ready: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }
}

/// Whether a liveness probe saw progress: the API server answered it, and
/// one of the controller's watches was answered (or started) at most
/// [`WATCHES_SILENT_LIMIT`] ago (`watches_silent`: the time since; `None`
/// before any).
#[must_use]
pub fn is_progress(api_server_answered: bool, watches_silent: Option<Duration>) -> bool {
    api_server_answered && watches_silent.is_some_and(|silent| silent <= WATCHES_SILENT_LIMIT)
}

/// Whether a controller is stuck: it leads, has work, and has made no
/// progress for longer than `limit`.
pub fn is_stalled(
    since_progress: Duration,
    has_work: bool,
    leading: bool,
    limit: Duration,
) -> bool {
    leading && has_work && since_progress > limit
}

impl Health {
    /// Health whose `/healthz` fails after `stall_limit` without progress.
    pub fn with_stall_limit(stall_limit: Duration) -> Self {
        Health {
            stall_limit,
            ..Health::default()
        }
    }

    /// How long without progress makes `/healthz` fail.
    pub fn stall_limit(&self) -> Duration {
        self.stall_limit
    }

    /// Something moved: the watches synced, or the API server answered and
    /// the controller's watches are being answered.
    pub fn record_progress(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.store(ms, Ordering::Release);
    }

    /// Whether the controller has RunaiCredentials to keep.
    pub fn set_has_work(&self, has_work: bool) {
        self.has_work.store(has_work, Ordering::Release);
    }

    /// Time since the last progress.
    pub fn since_progress(&self) -> Duration {
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether `/healthz` must fail for want of progress (see [`is_stalled`]).
    pub fn stalled(&self) -> bool {
        is_stalled(
            self.since_progress(),
            self.has_work.load(Ordering::Acquire),
            self.leading.load(Ordering::Acquire),
            self.stall_limit,
        )
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether this replica holds the leader lease.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Whether the controller loop has ended.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_needs_both_the_api_server_and_answered_watches() {
        let recent = Some(Duration::from_secs(3));
        assert!(is_progress(true, recent));
        assert!(is_progress(true, Some(WATCHES_SILENT_LIMIT)));
        assert!(
            !is_progress(false, recent),
            "the API server does not answer"
        );
        assert!(
            !is_progress(true, Some(WATCHES_SILENT_LIMIT + Duration::from_secs(1))),
            "it answers, but the watches never came back"
        );
        assert!(!is_progress(true, None), "no watch ever answered");
    }

    #[test]
    fn the_pulse_counts_from_its_last_beat() {
        let pulse = WatchPulse::default();
        assert_eq!(pulse.since_last(), None);
        pulse.beat();
        assert!(pulse.since_last().unwrap() < Duration::from_secs(5));
    }
}
