//! Errors of the engine crate, each with a stable `code` the HTTP layer shows.
//!
//! `InputError` is bad input: it is found before anything changes, so a refused
//! command never writes half of itself. Refusals decided by the state (not
//! enough stock, wrong version) are outcomes, not errors: see `outcome.rs`.

use std::fmt;
use std::path::PathBuf;

use rkyv::{Archive, Deserialize, Serialize};

/// The field a piece of bad input was found in, named as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Field {
    Sku,
    Warehouse,
    FromWarehouse,
    ToWarehouse,
    Principal,
    IdempotencyKey,
    ReservationId,
    Name,
    Quantity,
    OnHand,
    LowStockThreshold,
    UnitPriceMinor,
    Delta,
    TtlMs,
    DeadlineMs,
    Lines,
    RequestId,
    CustomerId,
    LimitPerCustomer,
    LimitWindowMs,
    Note,
    Reference,
    Description,
    Category,
    Price,
    Currency,
    ImageUrl,
    SafetyStock,
    Incoming,
    /// A move's `from` and `to` quantity states.
    States,
    BackorderLimit,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Sku => "sku",
            Field::Warehouse => "warehouse",
            Field::FromWarehouse => "from_warehouse",
            Field::ToWarehouse => "to_warehouse",
            Field::Principal => "principal",
            Field::IdempotencyKey => "idempotency_key",
            Field::ReservationId => "reservation_id",
            Field::Name => "name",
            Field::Quantity => "quantity",
            Field::OnHand => "on_hand",
            Field::LowStockThreshold => "low_stock_threshold",
            Field::UnitPriceMinor => "unit_price_minor",
            Field::Delta => "delta",
            Field::TtlMs => "ttl_ms",
            Field::DeadlineMs => "deadline_ms",
            Field::Lines => "lines",
            Field::RequestId => "request_id",
            Field::CustomerId => "customer_id",
            Field::LimitPerCustomer => "limit_per_customer",
            Field::LimitWindowMs => "limit_window_ms",
            Field::Note => "note",
            Field::Reference => "reference",
            Field::Description => "description",
            Field::Category => "category",
            Field::Price => "price",
            Field::Currency => "currency",
            Field::ImageUrl => "image_url",
            Field::SafetyStock => "safety_stock",
            Field::Incoming => "incoming",
            Field::States => "to",
            Field::BackorderLimit => "backorder_limit",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Input that breaks a documented rule. Found before any state changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum InputError {
    #[error("{field} is empty")]
    Empty { field: Field },
    #[error("{field} is {len} bytes long; the maximum is {max}")]
    TooLong { field: Field, len: usize, max: usize },
    #[error("{field} is {len} characters long; it must be {expected}")]
    BadLength { field: Field, len: usize, expected: usize },
    #[error("{field} has a character that is not allowed at byte {position}")]
    BadCharacter { field: Field, position: usize },
    #[error("{field} must be at least 1")]
    Zero { field: Field },
    #[error("{field} is {value}; the maximum is {max}")]
    TooLarge { field: Field, value: u64, max: u64 },
    #[error("a hold needs at least one line")]
    NoLines,
    #[error("a hold has {count} lines; the maximum is {max}")]
    TooManyLines { count: usize, max: usize },
    #[error("a transfer needs two different warehouses")]
    SameWarehouse,
    #[error("the SKU belongs to shard {owner}, not to shard {shard}")]
    WrongShard { owner: u32, shard: u32 },
    #[error("limits are not valid: {reason}")]
    BadLimits { reason: String },
    #[error("the bundle is not valid: {reason}")]
    BadBundle { reason: String },
    /// A move between quantity states that is not allowed: to the state it
    /// comes from, or into `incoming` (units arrive; they are not sent back
    /// into transit).
    #[error("units cannot move from {from} to {to}")]
    BadMove { from: crate::states::QuantityState, to: crate::states::QuantityState },
}

impl InputError {
    /// A stable, machine-readable code for this kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Empty { .. } => "field_empty",
            InputError::TooLong { .. } => "field_too_long",
            InputError::BadLength { .. } => "field_bad_length",
            InputError::BadCharacter { .. } => "field_bad_character",
            InputError::Zero { .. } => "quantity_zero",
            InputError::TooLarge { .. } => "quantity_too_large",
            InputError::NoLines => "no_lines",
            InputError::TooManyLines { .. } => "too_many_lines",
            InputError::SameWarehouse => "same_warehouse",
            InputError::WrongShard { .. } => "wrong_shard",
            InputError::BadLimits { .. } => "bad_limits",
            InputError::BadBundle { .. } => "invalid_bundle",
            InputError::BadMove { .. } => "invalid_state",
        }
    }

    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<Field> {
        match self {
            InputError::Empty { field }
            | InputError::TooLong { field, .. }
            | InputError::BadLength { field, .. }
            | InputError::BadCharacter { field, .. }
            | InputError::Zero { field }
            | InputError::TooLarge { field, .. } => Some(*field),
            InputError::NoLines | InputError::TooManyLines { .. } => Some(Field::Lines),
            InputError::SameWarehouse => Some(Field::ToWarehouse),
            InputError::WrongShard { .. } => Some(Field::Sku),
            InputError::BadLimits { .. } | InputError::BadBundle { .. } => None,
            InputError::BadMove { .. } => Some(Field::States),
        }
    }
}

/// Why `apply` refused a log entry as a whole. These are caller bugs (entries
/// out of order) or a corrupt state, never a consequence of what a client
/// sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("entry {got} applied after {last_applied:?}; an entry must never apply twice or go back")]
    OutOfOrder { last_applied: Option<u64>, got: u64 },
    /// A lookup inside the state found it broken while applying the entry:
    /// the shard must stop (commands before it in the entry may have
    /// applied).
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// A lookup inside a shard's state found the state broken: an offset outside
/// its SKU arena, a SKU that is not UTF-8, a warehouse or principal id past
/// its table. Never the consequence of input (every reference is checked
/// when a snapshot loads and after one is built); a bug. The shard must stop
/// rather than answer with a guess such as an empty name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shard state is corrupt: {0}")]
pub struct Corrupt(pub String);

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "WAL corrupt in {path} at byte {offset}: {reason}; refusing to start (restore this shard from a peer or a backup)"
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("WAL append of entry {got} does not follow the last entry {last:?}")]
    NotContiguous { last: Option<u64>, got: u64 },
    #[error("WAL append of entry {index} in term {term} goes back from term {last_term}")]
    TermRegressed { index: u64, term: u64, last_term: u64 },
    #[error("WAL record of {len} bytes is over the limit of {max}")]
    RecordTooLarge { len: usize, max: usize },
    #[error("WAL record failed its check before writing: {0}")]
    Encode(String),
    #[error("WAL is unusable after an earlier failure ({0}); restart the process to recover from disk")]
    Poisoned(WalFailure),
}

/// What kind of storage failure stopped a WAL (or a snapshot write), read off
/// the operating system's error. Operators act differently on each: free
/// space, raise the descriptor limit, or replace a failing disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageFault {
    /// `fsync`/`fdatasync` failed (typically EIO). After that the kernel may
    /// have dropped the dirty pages, so nothing written since the last good
    /// sync may be trusted to be on disk.
    Fsync,
    /// No space left on the device (ENOSPC), or a quota reached (EDQUOT).
    NoSpace,
    /// The process or the system ran out of file descriptors (EMFILE, ENFILE).
    TooManyOpenFiles,
    /// Any other I/O error.
    Io,
}

impl StorageFault {
    /// Classifies `error`; `syncing` says whether it came from an fsync,
    /// which makes an error that is not about space or descriptors an fsync
    /// error.
    pub fn of(error: &std::io::Error, syncing: bool) -> Self {
        let raw = error.raw_os_error();
        let is = |errno: rustix::io::Errno| raw == Some(errno.raw_os_error());
        if is(rustix::io::Errno::NOSPC)
            || is(rustix::io::Errno::DQUOT)
            || matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        {
            StorageFault::NoSpace
        } else if is(rustix::io::Errno::MFILE) || is(rustix::io::Errno::NFILE) {
            StorageFault::TooManyOpenFiles
        } else if syncing {
            StorageFault::Fsync
        } else {
            StorageFault::Io
        }
    }

    /// A stable, machine-readable name (metrics labels, problem bodies).
    pub fn code(self) -> &'static str {
        match self {
            StorageFault::Fsync => "fsync_error",
            StorageFault::NoSpace => "no_space",
            StorageFault::TooManyOpenFiles => "too_many_open_files",
            StorageFault::Io => "io_error",
        }
    }

    /// The `io::ErrorKind` an error of this kind is reported with.
    pub fn kind(self) -> std::io::ErrorKind {
        match self {
            StorageFault::NoSpace => std::io::ErrorKind::StorageFull,
            StorageFault::Fsync | StorageFault::TooManyOpenFiles | StorageFault::Io => std::io::ErrorKind::Other,
        }
    }
}

impl fmt::Display for StorageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageFault::Fsync => "fsync error",
            StorageFault::NoSpace => "no space left",
            StorageFault::TooManyOpenFiles => "too many open files",
            StorageFault::Io => "I/O error",
        })
    }
}

/// The failure that poisoned a WAL: its kind and what failed, with the OS's
/// words. Every later append, flush and vote fails with it until a restart.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{fault}: {detail}")]
pub struct WalFailure {
    pub fault: StorageFault,
    pub detail: String,
}

impl WalFailure {
    /// The failure of `error` in `what` (e.g. "fdatasync of WAL segment 3").
    pub fn new(what: &str, error: &std::io::Error, syncing: bool) -> Self {
        Self { fault: StorageFault::of(error, syncing), detail: format!("{what} failed: {error}") }
    }

    /// As an `io::Error` that keeps this failure inside (`get_ref`), so a
    /// caller that only sees `io::Error` (openraft's callbacks) can still
    /// tell the fault.
    pub fn to_io(&self) -> std::io::Error {
        std::io::Error::new(self.fault.kind(), self.clone())
    }

    /// The failure inside an `io::Error` made by `to_io`, if it is one.
    pub fn inside(error: &std::io::Error) -> Option<&WalFailure> {
        error.get_ref().and_then(|inner| inner.downcast_ref::<WalFailure>())
    }
}

impl From<WalError> for std::io::Error {
    fn from(error: WalError) -> Self {
        match error {
            WalError::Io { source, .. } => std::io::Error::new(source.kind(), source.to_string()),
            WalError::Poisoned(failure) => failure.to_io(),
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// Errors of snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("snapshot is {len} bytes, over the format's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("snapshot could not be encoded: {0}")]
    Encode(String),
}

impl From<SnapshotError> for std::io::Error {
    fn from(error: SnapshotError) -> Self {
        match error {
            SnapshotError::Io { source, .. } => std::io::Error::new(source.kind(), source.to_string()),
            other => std::io::Error::other(other.to_string()),
        }
    }
}
