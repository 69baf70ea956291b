//! `tally-bench`: holds per second and latency of Tally side by side with
//! Redis and PostgreSQL on one machine in one run, with oversell and
//! lost-write checks after every workload, and against the machine's HTTP
//! limit (`http-floor`). See `bench/README.md`.

pub mod backup;
pub mod cpu;
pub mod expiry;
pub mod floor;
pub mod import;
pub mod load;
pub mod peers;
pub mod plot;
pub mod report;
pub mod results;
pub mod roll;
pub mod runner;
pub mod scale;
pub mod tally;
pub mod target;
pub mod workload;
