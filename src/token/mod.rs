//! The token's schedule: when to refresh, when to retry, what deserves an
//! Event. Pure functions of a token's record and the clock.

pub mod schedule;
