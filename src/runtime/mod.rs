//! Running the controller: watches and their triggers, leader election, the
//! metrics and health server, telemetry, and the API server's proxy.

pub mod ca_bundles;
pub mod cluster;
pub mod controller;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod telemetry;
