//! What the probes report (`/healthz`, `/readyz`): progress, readiness and
//! leadership, recorded by the controller and read by the listener.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Default of how long the leader may make no progress (no reconciliation
/// succeeds and the API server does not answer) while it has
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

    /// Something moved: a reconciliation succeeded or the API server answered.
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
