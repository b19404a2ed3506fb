//! The command line besides `run`: `check` tries an application's
//! credentials without a cluster, `renew` asks for immediate refreshes.

pub mod check;
pub mod renew;
