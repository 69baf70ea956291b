//! Tally's engine: the state of one shard and everything that keeps it.
//!
//! * `state` / `cmd` — items, reservations and `apply`: a pure function of
//!   (state, log entry). One file per command under `cmd/`.
//! * `wheel` — the timer wheel that expires holds on log time.
//! * `dedup` — the window of request ids that makes a retried command apply once.
//! * `wal` — per-shard segment files: the Raft log, with group commit.
//! * `snapshot` — the whole shard state in one checksummed file.
//! * `reshard` — S shards' states rebuilt as N (offline, `tally reshard`).
//! * `actor` — the shard actor that owns a state, on a pool of arbiters.
//! * `read` — reads as values: `Query`, its `Answer`, `ShardState::query`.
//! * `testing` — builders for tests and benchmarks (feature `testing`).
//! * `histogram` — lock-free power-of-two histograms for metrics (fsync
//!   latency here; batch sizes, commit latency, expiry lag in the cluster).
//!
//! The engine knows nothing of networks, HTTP or Raft libraries: the cluster
//! layer converts its log ids and votes field for field.

pub mod actor;
pub mod bundle;
pub mod cmd;
pub mod config;
pub mod customer;
mod dedup;
pub mod error;
pub mod event;
pub mod histogram;
pub mod ids;
pub mod item;
pub mod outcome;
pub mod placement;
pub mod product;
pub mod query;
pub mod raft_log;
pub mod read;
pub mod reservation;
pub mod reshard;
pub mod snapshot;
pub mod state;
pub mod states;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wal;
mod wheel;

pub use cmd::Command;
pub use config::{Limits, WalConfig};
pub use error::{ApplyError, Corrupt, Field, InputError, SnapshotError, WalError};
pub use event::{Event, EventId, EventKind, EventRecord};
pub use outcome::{Outcome, Refusal};
pub use placement::shard_of;
pub use raft_log::{Batch, EntryPayload, LogEntry, LogId, StoredMembership, Vote};
pub use state::{Applied, ShardState, ShardStats};
