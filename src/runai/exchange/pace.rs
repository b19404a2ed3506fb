//! One pace per Run:ai application (issue "One application, one pace"):
//! the requests of all groups that ask for the same application (same URL
//! and client ID, whatever the secret, trusted CAs or token API) go one at
//! a time, and once the application answered 429 or 503 with
//! `Retry-After`:
//!
//! - every request for it is held back until then, not only the group's;
//! - after a 429 (a rate limit; a 503 is an outage, which only holds), its
//!   requests are spread: one per `spacing`, where the spacing is the
//!   `Retry-After` window shared among the requests that succeeded within
//!   that window just before (an estimate of what the limit lets through),
//!   with a margin, at most [`MAX_SPACING`], for at most [`MAX_PACED`]. So
//!   a rate limit is met once, not once per group, and not again when the
//!   held requests resume.
//!
//! Only applications that were rate limited keep a pace; the others keep
//! nothing once their request ends. The successes that the estimate counts
//! are the last [`RECENT_SUCCESSES`] of all applications.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::error::Error;

/// How many recent successful requests (of all applications) are kept to
/// estimate what a rate limit lets through.
pub const RECENT_SUCCESSES: usize = 512;

/// The margin on the spacing of requests after a rate limit: a quarter
/// more than the estimate.
const SPACING_MARGIN: f64 = 1.25;

/// How many `Retry-After` windows an application stays paced after its
/// last rate limit (at most [`MAX_PACED`]).
const PACED_WINDOWS: u32 = 20;

/// The longest an application stays paced after its last rate limit.
pub const MAX_PACED: Duration = Duration::from_secs(10 * 60);

/// The widest spacing of a paced application's requests: a long
/// `Retry-After` with little let through before must not starve its
/// credentials for hours.
pub const MAX_SPACING: Duration = Duration::from_secs(30);

/// The longest a request waits for its turn in a paced application;
/// beyond that it is held back (a failed attempt, retried at its turn).
pub const MAX_TURN_WAIT: Duration = Duration::from_secs(30);

/// Identifies a Run:ai application: a hash of its URL and client ID (the
/// client ID is not a secret, but is not kept as text either).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppKey(u64);

impl AppKey {
    /// The application of `client_id` at `url` (`spec.url`, as validated).
    #[must_use]
    pub fn new(url: &str, client_id: &str) -> Self {
        use std::hash::BuildHasher as _;
        static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        AppKey(
            KEYS.get_or_init(Default::default)
                .hash_one((url.trim_end_matches('/'), client_id)),
        )
    }
}

#[derive(Debug, Default)]
struct PaceState {
    /// No request before this (a `Retry-After`).
    hold_until: Option<Instant>,
    /// The time between two requests while paced.
    spacing: Duration,
    /// The earliest time of the next request while paced.
    next_slot: Option<Instant>,
    /// Paced until then.
    paced_until: Option<Instant>,
}

impl PaceState {
    fn paced(&self, now: Instant) -> bool {
        self.paced_until.is_some_and(|until| until > now)
            || self.hold_until.is_some_and(|until| until > now)
    }
}

#[derive(Debug, Default)]
struct App {
    /// Held while a request of the application is in flight.
    turn: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<PaceState>,
}

/// The paces of all applications.
#[derive(Debug, Default)]
pub struct Paces {
    apps: Mutex<HashMap<AppKey, Arc<App>>>,
    recent: Mutex<VecDeque<(AppKey, Instant)>>,
}

/// A request's turn in its application: the application's next request
/// waits until it is [finished](Paces::finish).
pub struct Turn {
    app: AppKey,
    entry: Arc<App>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Paces {
    /// Waits for the turn of a request for `app`. An `urgent` request (one
    /// whose still-valid token is about to expire) waits only for the
    /// request in flight, not for a hold or a slot: no `Retry-After` lets a
    /// valid token expire (api.md, Edge cases), whoever it held back.
    ///
    /// # Errors
    ///
    /// How long the application is still held back (by a `Retry-After`, or
    /// because its next turn, or the request in flight, is more than
    /// [`MAX_TURN_WAIT`] away): no request may be made before then.
    pub async fn admit(&self, app: AppKey, urgent: bool) -> Result<Turn, Duration> {
        let entry = lock(&self.apps).entry(app).or_default().clone();
        // Many groups of one application queue here: the wait is bounded
        // like a turn's, so that a reconciliation ends in time.
        let Ok(guard) = tokio::time::timeout(MAX_TURN_WAIT, entry.turn.clone().lock_owned()).await
        else {
            return Err(MAX_TURN_WAIT);
        };
        let now = Instant::now();
        let wait = if urgent {
            Duration::ZERO
        } else {
            let mut state = lock(&entry.state);
            if let Some(until) = state.hold_until.filter(|until| *until > now) {
                return Err(until - now);
            }
            match state.next_slot.filter(|_| state.paced(now)) {
                Some(slot) => {
                    let slot = slot.max(now);
                    if slot - now > MAX_TURN_WAIT {
                        return Err(slot - now);
                    }
                    state.next_slot = Some(slot + state.spacing);
                    slot - now
                }
                None => Duration::ZERO,
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(Turn {
            app,
            entry,
            _guard: guard,
        })
    }

    /// Ends a request's turn with its `result`: a success is counted; a
    /// 429 or 503 with `Retry-After` holds the whole application back until
    /// then and paces it from then on. An application with no pace left is
    /// forgotten.
    pub fn finish<T>(&self, turn: Turn, result: &Result<T, Error>) {
        let now = Instant::now();
        match result {
            Ok(_) => {
                let mut recent = lock(&self.recent);
                if recent.len() == RECENT_SUCCESSES {
                    recent.pop_front();
                }
                recent.push_back((turn.app, now));
            }
            Err(err @ (Error::RateLimited { .. } | Error::Unavailable { .. })) => {
                if let Some(retry_after) = err.retry_after() {
                    let rate_limited = matches!(err, Error::RateLimited { .. });
                    self.slow_down(&turn, retry_after, rate_limited, now);
                }
            }
            Err(_) => {}
        }
        drop(turn);
        // What nobody uses (only the map holds it) and is not paced goes:
        // this one's, and any left by a request that was cancelled.
        lock(&self.apps)
            .retain(|_, entry| Arc::strong_count(entry) > 1 || lock(&entry.state).paced(now));
    }

    /// Holds `turn`'s application back for `retry_after`; after a rate
    /// limit, paces it from then on by what the limit let through in the
    /// window before.
    fn slow_down(&self, turn: &Turn, retry_after: Duration, rate_limited: bool, now: Instant) {
        let until = now + retry_after;
        let mut state = lock(&turn.entry.state);
        state.hold_until = Some(until);
        if !rate_limited {
            return;
        }
        let window = retry_after.max(Duration::from_secs(1));
        let let_through = lock(&self.recent)
            .iter()
            .filter(|(app, at)| *app == turn.app && now.duration_since(*at) <= window)
            .count()
            .max(1);
        let spacing = window.mul_f64(SPACING_MARGIN) / u32::try_from(let_through).unwrap_or(1);
        state.spacing = spacing.min(MAX_SPACING);
        state.next_slot = Some(until);
        state.paced_until = Some(until + (window * PACED_WINDOWS).min(MAX_PACED));
    }

    /// How many applications keep a pace (for tests and memory checks).
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.apps).len()
    }

    /// Whether no application keeps a pace.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(secs: u64) -> Result<(), Error> {
        Err(Error::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
            detail: String::new(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_application_without_a_limit_keeps_nothing() {
        let paces = Paces::default();
        let app = AppKey::new("https://a.run.ai", "app");
        let turn = paces.admit(app, false).await.unwrap();
        assert_eq!(paces.len(), 1, "kept while in flight");
        paces.finish(turn, &Ok::<(), Error>(()));
        assert!(paces.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_holds_back_the_whole_application_and_then_paces_it() {
        let paces = Paces::default();
        let app = AppKey::new("https://a.run.ai/", "app");
        let other = AppKey::new("https://a.run.ai", "another-app");
        // Four requests let through within the second, then a 429 asking
        // for one second.
        for _ in 0..4 {
            let turn = paces.admit(app, false).await.unwrap();
            paces.finish(turn, &Ok::<(), Error>(()));
        }
        let turn = paces.admit(app, false).await.unwrap();
        paces.finish(turn, &limited(1));
        // Held back, whichever group asks (the key ignores a trailing /).
        let held = paces
            .admit(AppKey::new("https://a.run.ai", "app"), false)
            .await
            .err()
            .expect("held back");
        assert!(held <= Duration::from_secs(1) && held > Duration::from_millis(900));
        // Positive control: another application is not held.
        let turn = paces.admit(other, false).await.unwrap();
        paces.finish(turn, &Ok::<(), Error>(()));

        // After the hold: one request per 1.25 s / 4 = 312.5 ms.
        tokio::time::advance(Duration::from_secs(1)).await;
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..5 {
            let turn = paces.admit(app, false).await.unwrap();
            times.push(Instant::now() - start);
            paces.finish(turn, &Ok::<(), Error>(()));
        }
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter()
                .all(|g| *g >= Duration::from_millis(312) && *g <= Duration::from_millis(313)),
            "{gaps:?}"
        );
        assert_eq!(paces.len(), 1, "kept while paced");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_paces_no_slower_than_the_widest_spacing() {
        let paces = Paces::default();
        let app = AppKey::new("https://a.run.ai", "app");
        let turn = paces.admit(app, false).await.unwrap();
        // Nothing let through before an hour-long Retry-After: the spacing
        // would be 75 min; it is 30 s.
        paces.finish(turn, &limited(3600));
        tokio::time::advance(Duration::from_secs(3600)).await;
        let start = Instant::now();
        for _ in 0..3 {
            let turn = paces.admit(app, false).await.unwrap();
            paces.finish(turn, &Ok::<(), Error>(()));
        }
        assert_eq!(Instant::now() - start, MAX_SPACING * 2);
        // And paced no longer than MAX_PACED after the hold.
        tokio::time::advance(MAX_PACED).await;
        let turn = paces.admit(app, false).await.unwrap();
        paces.finish(turn, &Ok::<(), Error>(()));
        assert!(paces.is_empty(), "no pace left");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_holds_but_does_not_pace() {
        let paces = Paces::default();
        let app = AppKey::new("https://a.run.ai", "app");
        let turn = paces.admit(app, false).await.unwrap();
        paces.finish(
            turn,
            &Err::<(), _>(Error::Unavailable {
                retry_after: Some(Duration::from_secs(600)),
                detail: String::new(),
            }),
        );
        assert!(
            paces.admit(app, false).await.is_err(),
            "held for the Retry-After"
        );
        // A token about to expire is not held: its request goes.
        let urgent = paces
            .admit(app, true)
            .await
            .expect("an urgent request goes");
        paces.finish(urgent, &Ok::<(), Error>(()));
        assert!(
            paces.admit(app, false).await.is_err(),
            "the others still wait"
        );
        tokio::time::advance(Duration::from_secs(600)).await;
        let start = Instant::now();
        for _ in 0..3 {
            let turn = paces.admit(app, false).await.unwrap();
            paces.finish(turn, &Ok::<(), Error>(()));
        }
        assert_eq!(Instant::now(), start, "no spacing after an outage");
        assert!(paces.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_for_one_application_is_waited_for_no_longer_than_a_turn() {
        let paces = Arc::new(Paces::default());
        let app = AppKey::new("https://a.run.ai", "app");
        let first = paces.admit(app, false).await.unwrap();
        let second = {
            let paces = paces.clone();
            tokio::spawn(async move { paces.admit(app, false).await.err() })
        };
        tokio::time::advance(MAX_TURN_WAIT + Duration::from_secs(1)).await;
        assert_eq!(second.await.unwrap(), Some(MAX_TURN_WAIT));
        paces.finish(first, &Ok::<(), Error>(()));
        assert!(paces.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_of_one_application_go_one_at_a_time() {
        let paces = Arc::new(Paces::default());
        let app = AppKey::new("https://a.run.ai", "app");
        let first = paces.admit(app, false).await.unwrap();
        let second = {
            let paces = paces.clone();
            tokio::spawn(async move { paces.admit(app, false).await.is_ok() })
        };
        tokio::time::advance(Duration::from_millis(10)).await;
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "waits for the first to end");
        // Positive control: another application is not kept waiting.
        let other = paces
            .admit(AppKey::new("https://a.run.ai", "b"), false)
            .await;
        assert!(other.is_ok());
        paces.finish(first, &Ok::<(), Error>(()));
        assert!(second.await.unwrap());
    }
}
