//! runai-token-sync: keeps Run:ai API access tokens fresh in Kubernetes Secrets.
//!
//! A [`RunaiCredential`] names a Run:ai URL and a
//! Secret with client credentials; the controller requests tokens and writes
//! them into a target Secret, refreshing them before they expire.
//!
//! Each concern has a folder:
//!
//! - [`api`]: the CRD types, their validation and the generated CRD;
//! - [`runai`]: talking to Run:ai (the HTTP client, reading its answers, TLS,
//!   the allowed URLs, the shared token exchange), no Kubernetes calls;
//! - [`token`]: when a token is refreshed or retried (pure);
//! - [`output`]: the target Secret's shape and the keyed record it carries;
//! - [`cache`]: what the watches saw, kept for decisions (which
//!   RunaiCredentials a Secret concerns, which Secrets exist, one copy of
//!   each CA bundle);
//! - [`metrics`] and [`health`]: what the controller records for Prometheus
//!   and for the probes;
//! - [`reconcile`]: observe → decide (pure) → act, and the status;
//! - [`runtime`]: watches, leader election, the metrics and health server,
//!   telemetry and the API server's proxy;
//! - [`cli`]: the `check` and `renew` commands.

pub mod api;
pub mod cache;
pub mod cli;
pub mod error;
pub mod fuzzing;
pub mod health;
pub mod metrics;
pub mod output;
pub mod reconcile;
pub mod runai;
pub mod runtime;
pub mod token;

pub use api::{RunaiCredential, RunaiCredentialSpec, RunaiCredentialStatus};
pub use error::Error;
