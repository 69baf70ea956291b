//! Outcomes: the typed answer `apply` gives each command, and the views reads
//! return.
//!
//! Outcomes are decided at apply time, on the one replica order, and carried
//! back to the waiting request (possibly across the cluster, hence rkyv). A
//! refusal changes nothing: every check runs before the first write.

use rkyv::{Archive, Deserialize, Serialize};

use crate::customer::OverLimit;
use crate::error::InputError;
use crate::ids::{IdempotencyKey, ReservationId};
use crate::item::{MovementReason, Status};
use crate::reservation::ReservationState;

/// An item as a caller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ItemView {
    pub sku: String,
    pub warehouse: String,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub low_stock_threshold: u64,
    pub status: Status,
    pub version: u64,
    pub updated_at_ms: u64,
    pub name: Option<String>,
    pub unit_price_minor: Option<u64>,
    /// Safety stock, damaged, quality control and incoming (`states.rs`).
    pub states: crate::states::StateLevels,
}

/// A reservation without its lines. Write outcomes carry the lines beside
/// it (`Vec<LineView>`), reads inside `ReservationView`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ReservationSummary {
    pub id: ReservationId,
    pub state: ReservationState,
    pub created_at_ms: u64,
    pub deadline_ms: u64,
    /// When it left `HELD`, if it has.
    pub ended_at_ms: Option<u64>,
}

/// One line of a reservation as stored: units held of one item. A
/// reservation has one per item, summed, with allocated lines already
/// resolved to their warehouses.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LineView {
    pub sku: String,
    pub warehouse: String,
    pub quantity: u64,
    /// Units of `quantity` held beyond stock, waiting for it (0 when
    /// filled from stock).
    pub backordered: u64,
}

/// Units of one request line (`line`, its index in the hold) taken from the
/// item of the outcome's `lines[held]`. Only lines without a warehouse are
/// listed; a line with one takes its own quantity from its own warehouse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Allocated {
    pub line: u32,
    pub held: u32,
    pub quantity: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ReservationView {
    pub summary: ReservationSummary,
    pub lines: Vec<LineView>,
    pub idempotency_key: Option<String>,
}

/// One movement of an item's stock, newest first in a history.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MovementView {
    pub at_ms: u64,
    pub reason: MovementReason,
    pub delta: i64,
    pub on_hand_before: u64,
    pub on_hand_after: u64,
    /// A principal's name, a reservation id, or "system".
    pub who: String,
}

/// A line a hold could not take: the request's line (the first, when the
/// same item appeared twice and was summed), what it asked, what there was.
/// For a line without a warehouse: its own quantity, what allocation found
/// for it, and whether the SKU has any item on the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ShortLine {
    pub line: u32,
    pub requested: u64,
    pub available: u64,
    /// False when no such item exists on the shard (then `available` is 0).
    pub exists: bool,
}

/// Which bound a full shard hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Bound {
    ItemsPerShard,
    LiveHoldsPerShard,
    WarehousesPerShard,
    /// (SKU, customer) pairs tracked for per-customer limits.
    CustomerUsagePerShard,
    /// Bundle definitions (`bundle.rs`).
    BundlesPerShard,
    /// SKU product records (`product.rs`).
    ProductsPerShard,
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Refusal {
    /// The command breaks an input rule.
    Invalid(InputError),
    ItemNotFound,
    /// A create-only upsert found the item.
    ItemExists {
        version: u64,
    },
    /// The item's version is not the one the caller expected (`None`: absent).
    VersionMismatch {
        expected: u64,
        actual: Option<u64>,
    },
    /// The change would leave `on_hand` below `reserved`.
    BelowReserved {
        on_hand: u64,
        reserved: u64,
    },
    /// The change would push a level over `QUANTITY_MAX`.
    QuantityOverflow {
        max: u64,
    },
    /// Some lines are short; every short line is listed.
    InsufficientStock {
        lines: Vec<ShortLine>,
    },
    ReservationNotFound,
    /// The id names another reservation (different lines or key).
    ReservationIdInUse,
    AlreadyConfirmed,
    AlreadyReleased,
    AlreadyExpired,
    /// The requested deadline is not after the current log time.
    DeadlineInPast {
        now_ms: u64,
        deadline_ms: u64,
    },
    /// The requested deadline is further than the longest hold allowed.
    DeadlineTooFar {
        deadline_ms: u64,
        latest_ms: u64,
    },
    /// An extension would move the deadline earlier.
    DeadlineEarlier {
        current_ms: u64,
        requested_ms: u64,
    },
    ShardFull {
        bound: Bound,
        max: u64,
    },
    /// The hold would take its customer past the per-customer limit of
    /// these SKUs (every one over is listed).
    CustomerLimit {
        skus: Vec<OverLimit>,
    },
    /// The SKU has a per-customer limit and the hold names no customer.
    CustomerRequired {
        sku: String,
    },
    /// A partial confirm's line (by index) names units the reservation
    /// does not hold there (`held`: what it holds of that item; 0 when it
    /// holds none, or the line is listed twice).
    ConfirmOverHeld {
        line: u32,
        held: u64,
    },
    /// A move's source state has fewer units than it asks (`has`).
    StateShort {
        state: crate::states::QuantityState,
        requested: u64,
        has: u64,
    },
    /// The change would leave `on_hand` below what is reserved plus what
    /// may not be sold (safety stock, damaged, quality control).
    BelowUnsellable {
        on_hand: u64,
        reserved: u64,
        unsellable: u64,
    },
    /// A confirm of a reservation with units still backordered (waiting
    /// for stock): it may be confirmed once they are filled.
    BackorderUnfilled {
        backordered: u64,
    },
    /// A warehouse priority list names a warehouse twice, is too long, or
    /// (a SKU's list) names a warehouse that does not stock the SKU.
    InvalidWarehousePriority {
        reason: String,
    },
    /// A delete names an item that live holds still reserve: how many
    /// holds, and the units they reserve.
    ItemHasHolds {
        holds: u64,
        reserved: u64,
    },
    /// The hold names bundles (`bundle.rs`): each such line with the
    /// bundle's components, for the caller to hold instead.
    BundleLines {
        lines: Vec<BundleLine>,
    },
    /// Items may not be created for a bundle SKU.
    SkuIsBundle,
    /// A bundle may not be defined on a SKU the shard has items of
    /// (`items`: how many).
    SkuHasItems {
        items: u32,
    },
    /// No bundle is defined on the SKU.
    BundleNotFound,
}

/// A hold's line that names a bundle, and what the bundle is made of.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct BundleLine {
    /// Index of the line in the hold.
    pub line: u32,
    pub components: Vec<crate::bundle::Component>,
}

impl Refusal {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid(error) => error.code(),
            Refusal::ItemNotFound => "item_not_found",
            Refusal::ItemExists { .. } => "item_exists",
            Refusal::VersionMismatch { .. } => "version_mismatch",
            Refusal::BelowReserved { .. } => "below_reserved",
            Refusal::QuantityOverflow { .. } => "quantity_overflow",
            Refusal::InsufficientStock { .. } => "insufficient_stock",
            Refusal::ReservationNotFound => "reservation_not_found",
            Refusal::ReservationIdInUse => "reservation_id_in_use",
            Refusal::AlreadyConfirmed => "reservation_confirmed",
            Refusal::AlreadyReleased => "reservation_released",
            Refusal::AlreadyExpired => "reservation_expired",
            Refusal::DeadlineInPast { .. } => "deadline_in_past",
            Refusal::DeadlineTooFar { .. } => "deadline_too_far",
            Refusal::DeadlineEarlier { .. } => "deadline_earlier",
            Refusal::ShardFull { .. } => "shard_full",
            Refusal::CustomerLimit { .. } => "customer_limit",
            Refusal::CustomerRequired { .. } => "customer_id_required",
            Refusal::ConfirmOverHeld { .. } => "confirm_over_held",
            Refusal::BundleLines { .. } => "bundle_not_expanded",
            Refusal::SkuIsBundle => "sku_is_bundle",
            Refusal::SkuHasItems { .. } => "sku_has_items",
            Refusal::BundleNotFound => "bundle_not_found",
            Refusal::ItemHasHolds { .. } => "item_has_holds",
            Refusal::InvalidWarehousePriority { .. } => "invalid_warehouse_priority",
            Refusal::StateShort { .. } => "insufficient_stock",
            Refusal::BelowUnsellable { .. } => "below_unsellable",
            Refusal::BackorderUnfilled { .. } => "backorder_unfilled",
        }
    }
}

/// The answer to one command. Item views are boxed: admin answers are rare
/// and large, hold answers are frequent and small, and a vector of outcomes
/// is as wide as its widest variant.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Outcome {
    /// `changed` is false when the upsert matched the item as it was (the
    /// version does not move then).
    Upserted {
        item: Box<ItemView>,
        created: bool,
        changed: bool,
    },
    Adjusted {
        item: Box<ItemView>,
    },
    Transferred {
        from: Box<ItemView>,
        to: Box<ItemView>,
    },
    /// `replayed`: the hold was already there (same id and request, or the
    /// same idempotency key) and this is its current state; nothing was held
    /// twice. `lines` in this and the next three: the reservation's lines as
    /// stored (summed per item, allocated lines resolved to warehouses), for
    /// a fresh write and a replay alike, so a caller can answer from the
    /// outcome without reading after the write.
    ///
    /// No idempotency key here: a hold's is always its command's (a replay
    /// by key found that key, a replay by id requires it), so the caller
    /// has it already, and the most frequent outcome stays without a copy.
    ///
    /// `allocations`: what each line without a warehouse took from which of
    /// `lines` (empty when every line names its warehouse); a replay's are
    /// recomputed from the stored lines (`cmd::attribute`).
    Held {
        reservation: ReservationSummary,
        replayed: bool,
        lines: Vec<LineView>,
        allocations: Vec<Allocated>,
    },
    /// `idempotency_key` in this and the next two: the key the reservation
    /// was held with. Their commands name only the id, so the outcome is
    /// where a caller finds it without reading after the write.
    Confirmed {
        reservation: ReservationSummary,
        replayed: bool,
        lines: Vec<LineView>,
        idempotency_key: Option<IdempotencyKey>,
    },
    Released {
        reservation: ReservationSummary,
        replayed: bool,
        lines: Vec<LineView>,
        idempotency_key: Option<IdempotencyKey>,
    },
    Extended {
        reservation: ReservationSummary,
        lines: Vec<LineView>,
        idempotency_key: Option<IdempotencyKey>,
    },
    LimitsSet,
    /// A SKU's per-customer limit as it now is, and the customers it tracks.
    CustomerLimitSet {
        sku: String,
        limit: Option<crate::customer::CustomerLimit>,
        customers: u64,
    },
    Ticked,
    Refused(Refusal),
    /// A SKU's product record as it now is (`changed` false: it already was).
    ProductSet {
        product: Box<crate::product::ProductView>,
        created: bool,
        changed: bool,
    },
    /// Items deleted, and whether a product record went with them.
    Deleted {
        items: u32,
        product: bool,
    },
    /// A SKU's bundle definition as it now is (`None`: removed).
    BundleSet {
        sku: String,
        components: Option<Vec<crate::bundle::Component>>,
    },
    /// A SKU's warehouse priority as it now is (empty: none).
    WarehousePrioritySet {
        sku: String,
        warehouses: Vec<String>,
    },
    /// Units moved between quantity states: the item after the move.
    Moved {
        item: Box<ItemView>,
    },
}

impl Outcome {
    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::Refused(_))
    }

    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Outcome::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}

impl From<Refusal> for Outcome {
    fn from(refusal: Refusal) -> Self {
        Outcome::Refused(refusal)
    }
}

impl From<InputError> for Outcome {
    fn from(error: InputError) -> Self {
        Outcome::Refused(Refusal::Invalid(error))
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// The dedup window keeps a whole outcome per remembered request id, so
    /// the widest variant sets the memory of every record: 112 bytes since
    /// confirm, release and extend carry the key (88 before).
    #[test]
    fn an_outcome_stays_within_its_size_budget() {
        assert!(std::mem::size_of::<Outcome>() <= 112, "{} bytes", std::mem::size_of::<Outcome>());
    }
}
