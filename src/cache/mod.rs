//! What the watches saw, kept where decisions can read it without a request:
//! filled by the runtime's watches, read by the reconciler.

pub mod ca_bundles;
pub mod index;
pub mod known_secrets;
