//! `tally-chaos`: a real 3-node Tally cluster under faults, with a checker
//! of the history its clients recorded. See `chaos/README.md`.
//!
//! Work in progress (issue 6): the fault proxy, the cluster harness, the
//! clients and the history exist; the checker, the fault schedule and the
//! `run` command are next.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod proxy;
pub mod run;
pub mod schedule;
