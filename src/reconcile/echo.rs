//! The controller's own writes to Secrets, to know their echoes: a watch
//! event that only shows what the controller itself just wrote triggers no
//! reconciliation. One rule for both kinds; each kind keeps its own record,
//! as both watch the same Secrets.

use std::{collections::HashMap, sync::Mutex};

use crate::runai::exchange::{Exchange, Member};

/// The controller's own write to a Secret, to know its echo.
#[derive(Debug)]
enum OwnWrite {
    /// Under way; the version of an event that arrived meanwhile.
    InFlight { seen: Option<String> },
    /// Done; the version written.
    Done(String),
}

/// The writes of one kind, by Secret (namespace, name).
#[derive(Debug, Default)]
pub struct OwnWrites(Mutex<HashMap<(String, String), OwnWrite>>);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl OwnWrites {
    /// Whether a Secret event is the echo of an own write to it: one that
    /// arrives while the write is in flight (its version is checked once the
    /// write returns), or one of the version last written (then forgotten: a
    /// later change has another version).
    pub fn is_echo(&self, namespace: &str, name: &str, resource_version: Option<&str>) -> bool {
        let mut writes = lock(&self.0);
        let key = (namespace.to_owned(), name.to_owned());
        match (writes.get_mut(&key), resource_version) {
            (Some(OwnWrite::InFlight { seen }), Some(version)) => {
                *seen = Some(version.to_owned());
                true
            }
            (Some(OwnWrite::Done(written)), Some(version)) if written == version => {
                writes.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Whether a write to this Secret is in flight or its echo has not
    /// arrived yet: the Secret watch may not have seen it.
    pub fn pending(&self, namespace: &str, name: &str) -> bool {
        lock(&self.0).contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    /// Records that a write to the Secret `name` in `namespace` begins, for
    /// `member`. The record lives as long as the returned guard: a
    /// reconciliation abandoned mid-write (its deadline, a shutdown) drops
    /// it, and the Secret's events are no longer taken for echoes.
    pub fn begin<'w>(
        &'w self,
        exchange: &'w Exchange,
        namespace: &str,
        name: &str,
        member: Member,
    ) -> OwnWriteGuard<'w> {
        let key = (namespace.to_owned(), name.to_owned());
        lock(&self.0).insert(key.clone(), OwnWrite::InFlight { seen: None });
        OwnWriteGuard {
            writes: self,
            exchange,
            key,
            member,
            ended: false,
        }
    }

    /// Records the end of a write (the version written, `None` when it
    /// failed or was abandoned). Whether an event swallowed while it was in
    /// flight was not its echo (then `member` must look again).
    fn end(&self, key: &(String, String), written: Option<String>) -> bool {
        let mut writes = lock(&self.0);
        let seen = match writes.remove(key) {
            Some(OwnWrite::InFlight { seen }) => seen,
            _ => None,
        };
        if let Some(w) = &written
            && seen.as_ref() != Some(w)
        {
            writes.insert(key.clone(), OwnWrite::Done(w.clone()));
        }
        seen.is_some_and(|s| written.as_deref() != Some(s.as_str()))
    }

    /// Forgets the finished writes whose echo has not come: called when a
    /// Secret watch starts a new list, which may skip their versions (a
    /// watch delivers every version otherwise). The next event of those
    /// Secrets is then looked at, as any.
    pub fn forget_unechoed(&self) {
        lock(&self.0).retain(|_, write| matches!(write, OwnWrite::InFlight { .. }));
    }
}

/// A write to a Secret under way (see [`OwnWrites::begin`]).
pub struct OwnWriteGuard<'w> {
    writes: &'w OwnWrites,
    exchange: &'w Exchange,
    key: (String, String),
    /// Who looks again when an event that was not the echo was swallowed.
    member: Member,
    ended: bool,
}

impl OwnWriteGuard<'_> {
    /// The write returned: the version written, `None` when it failed.
    pub fn end(mut self, written: Option<String>) {
        self.ended = true;
        self.finish(written);
    }

    fn finish(&self, written: Option<String>) {
        if self.writes.end(&self.key, written) {
            self.exchange.nudge(vec![self.member.clone()]);
        }
    }
}

impl Drop for OwnWriteGuard<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(None);
        }
    }
}
