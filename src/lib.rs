//! runai-token-sync: keeps Run:ai API access tokens fresh in Kubernetes Secrets.
//!
//! A [`RunaiCredential`](resource::RunaiCredential) names a Run:ai URL and a
//! Secret with client credentials; the controller requests tokens and writes
//! them into a target Secret, refreshing them before they expire.

pub mod controller;
pub mod error;
pub mod exchange;
pub mod fuzzing;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod proxy;
pub mod reconcile;
pub mod resource;
pub mod schedule;
pub mod server;
pub mod status;
pub mod target_secret;
pub mod telemetry;
pub mod token_client;
pub mod trust;

pub use error::Error;
pub use resource::{RunaiCredential, RunaiCredentialSpec, RunaiCredentialStatus};
