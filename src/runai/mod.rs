//! Talking to Run:ai: the token client and the reading of its answers, the
//! URLs credentials may be sent to, and the shared token exchange. No call
//! to the Kubernetes API is made here.

pub mod allowed_urls;
pub mod client;
pub mod exchange;
