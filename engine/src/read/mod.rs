//! Reads as values: a `Query` names one read of a shard, an `Answer`
//! carries its result, and `ShardState::query` runs one against the state.
//!
//! A closure cannot cross the network; a query can. Both types derive
//! rkyv, the peer protocol's format: a node that does not serve a shard
//! itself asks one that does (`cluster::Node::query`, docs/SCALE-OUT.md §7
//! step 2).
//!
//! One query is one consistent view of the shard: a route that needs
//! several things at once (a SKU's items, limit, usage, product and
//! priority) asks one query, answered between two applies, never several.
//!
//! The views themselves are computed by the readers in `query.rs` (and
//! `bundle`, `customer`, `product`); this file only names them and, for
//! availability of lines with and without a warehouse, combines them.
//!
//! Queries carry what the caller bounded: listing limits and scan budgets,
//! line counts (`availability_lines_max`), SKU counts (the components of one
//! bundle, the lines of one hold). A node that answers a peer's query
//! checks those bounds on receipt (`Query::check`, `bounds.rs`).

use rkyv::{Archive, Deserialize, Serialize};

use crate::bundle::Component;
use crate::config::Limits;
use crate::customer::{CustomerLimit, CustomerUsage};
use crate::error::Corrupt;
use crate::ids::{IdempotencyKey, ReservationId};
use crate::outcome::{ItemView, MovementView, ReservationView};
use crate::product::ProductView;
use crate::query::{AvailabilityLine, ItemFilter, ItemPage, LineAvailability, SkuView};
use crate::raft_log::LogId;
use crate::state::{ShardState, ShardStats};

mod bounds;
#[cfg(test)]
mod tests;

pub use bounds::QueryBounds;

/// One read of one shard.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Query {
    /// The engine limits in force (replicated). Answer: `Limits`.
    Limits,
    /// One item. Answer: `Item` (`None`: no such item).
    Item { sku: String, warehouse: String },
    /// A SKU as `GET /v1/items/{sku}` shows it, in one view: every
    /// warehouse with totals, its limit per customer, its warehouse
    /// priority, its product, and with `customer` that customer's usage.
    /// Answer: `Sku`.
    Sku { sku: String, customer: Option<String> },
    /// Every warehouse of each SKU, with totals. Answer: `Skus`, one view
    /// per SKU in the order asked (empty for an unknown SKU).
    Skus(Vec<String>),
    /// A page of items. Answer: `Items`.
    Items(ItemFilter),
    /// An item's most recent movements, newest first, at most `limit`.
    /// Answer: `History` (`None`: no such item).
    History { sku: String, warehouse: String, limit: u32 },
    /// This shard's part of a reservation. Answer: `Reservation`.
    Reservation(ReservationId),
    /// The reservation this shard holds under an idempotency key (an
    /// order's). Answer: `Reservation`.
    ReservationByKey(IdempotencyKey),
    /// Whether each line could be held now. Answer: `Availability`, one per
    /// line in the order asked.
    Availability(Vec<AvailabilityAsk>),
    /// The bundle definition of each SKU. Answer: `BundlesOf`, one per SKU
    /// in the order asked (`None`: not a bundle).
    BundlesOf(Vec<String>),
    /// Bundle definitions by SKU, from `after` (exclusive), at most `limit`.
    /// Answer: `Bundles`.
    Bundles { after: Option<String>, limit: u32 },
    /// The bundles that list this SKU as a component, by SKU. Answer:
    /// `BundlesContaining`.
    BundlesContaining(String),
    /// Counts of the shard (items, live holds, ...). Answer: `Stats`.
    Stats,
    /// The state's digest with the applied index. Answer: `Digest`.
    Digest,
    /// The last applied log id (what an online backup copies up to).
    /// Answer: `Applied`.
    Applied,
}

/// One line of `Query::Availability`. Without a warehouse the line asks
/// for the SKU's units over all its warehouses.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AvailabilityAsk {
    pub sku: String,
    pub warehouse: Option<String>,
    pub quantity: u64,
}

/// What `Query::Sku` answers: one consistent view of a SKU.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SkuAnswer {
    pub view: SkuView,
    pub limit: Option<CustomerLimit>,
    /// The asked customer's usage; `None` when no customer was named.
    pub usage: Option<CustomerUsage>,
    pub product: Option<ProductView>,
    /// Warehouses in `priority` allocation order (empty: none set).
    pub warehouse_priority: Vec<String>,
}

/// An answer whose kind is not the one the caller asked for: a bug here,
/// or a peer that answers another query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a query answered {got} where {wanted} was expected")]
pub struct Mismatch {
    pub wanted: &'static str,
    pub got: &'static str,
}

/// A payload that one kind of `Answer` carries, taken out of it.
pub trait FromAnswer: Sized {
    fn from_answer(answer: Answer) -> Result<Self, Mismatch>;
}

/// `Answer`, one variant per payload type, and `FromAnswer` for each
/// payload: every payload type is distinct, so a caller names the type it
/// wants and gets it or a `Mismatch`.
macro_rules! answers {
    ($($(#[$doc:meta])* $variant:ident($payload:ty)),* $(,)?) => {
        /// The result of one `Query`: a plain value.
        #[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
        pub enum Answer {
            $($(#[$doc])* $variant($payload),)*
        }

        impl Answer {
            /// The variant's name, for errors.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Answer::$variant(_) => stringify!($variant),)*
                }
            }
        }

        $(
            impl FromAnswer for $payload {
                fn from_answer(answer: Answer) -> Result<Self, Mismatch> {
                    match answer {
                        Answer::$variant(payload) => Ok(payload),
                        other => Err(Mismatch { wanted: stringify!($variant), got: other.kind() }),
                    }
                }
            }
        )*
    };
}

answers! {
    Limits(Limits),
    Item(Option<ItemView>),
    Sku(SkuAnswer),
    Skus(Vec<SkuView>),
    Items(ItemPage),
    History(Option<Vec<MovementView>>),
    /// `Query::Reservation` and `Query::ReservationByKey`.
    Reservation(Option<ReservationView>),
    Availability(Vec<LineAvailability>),
    BundlesOf(Vec<Option<Vec<Component>>>),
    Bundles(Vec<(String, Vec<Component>)>),
    BundlesContaining(Vec<String>),
    Stats(ShardStats),
    /// The applied index and the digest.
    Digest((Option<u64>, u128)),
    Applied(Option<LogId>),
}

impl ShardState {
    /// Runs `query` on this state. `Corrupt` when a lookup finds the state
    /// broken: the caller stops the shard, never guesses an answer.
    pub fn query(&self, query: &Query) -> Result<Answer, Corrupt> {
        Ok(match query {
            Query::Limits => Answer::Limits(*self.limits()),
            Query::Item { sku, warehouse } => Answer::Item(self.get_item(sku, warehouse)?),
            Query::Sku { sku, customer } => Answer::Sku(SkuAnswer {
                view: self.sku_items(sku)?,
                limit: self.customer_limit(sku),
                usage: customer.as_ref().map(|customer| self.customer_usage(sku, customer)),
                product: self.product(sku),
                warehouse_priority: self.warehouse_priority(sku).to_vec(),
            }),
            Query::Skus(skus) => Answer::Skus(skus.iter().map(|sku| self.sku_items(sku)).collect::<Result<_, _>>()?),
            Query::Items(filter) => Answer::Items(self.list_items(filter)?),
            Query::History { sku, warehouse, limit } => {
                Answer::History(self.history(sku, warehouse, *limit as usize)?)
            }
            Query::Reservation(id) => Answer::Reservation(self.reservation(id)?),
            Query::ReservationByKey(key) => Answer::Reservation(self.reservation_by_key(key)?),
            Query::Availability(lines) => Answer::Availability(self.availability_of(lines)?),
            Query::BundlesOf(skus) => Answer::BundlesOf(skus.iter().map(|sku| self.bundle(sku)).collect()),
            Query::Bundles { after, limit } => Answer::Bundles(self.bundles(after.as_deref(), *limit as usize)),
            Query::BundlesContaining(sku) => Answer::BundlesContaining(
                self.bundles(None, usize::MAX)
                    .into_iter()
                    .filter(|(_, components)| components.iter().any(|c| c.sku.as_str() == sku))
                    .map(|(bundle, _)| bundle)
                    .collect(),
            ),
            Query::Stats => Answer::Stats(self.stats()),
            Query::Digest => Answer::Digest((self.last_applied().map(|id| id.index), self.digest())),
            Query::Applied => Answer::Applied(self.last_applied()),
        })
    }

    /// Availability of lines with or without a warehouse, one answer per
    /// line. Lines naming a warehouse are summed per item as
    /// `availability` sums them; a line without one is the SKU's units over
    /// all warehouses, enough if every such line of the SKU, summed, fits.
    pub fn availability_of(&self, lines: &[AvailabilityAsk]) -> Result<Vec<LineAvailability>, Corrupt> {
        let exact: Vec<AvailabilityLine> = lines
            .iter()
            .filter_map(|line| {
                line.warehouse.as_ref().map(|warehouse| AvailabilityLine {
                    sku: line.sku.clone(),
                    warehouse: warehouse.clone(),
                    quantity: line.quantity,
                })
            })
            .collect();
        let mut exact_answers = self.availability(&exact).lines.into_iter();
        lines
            .iter()
            .map(|line| {
                if line.warehouse.is_some() {
                    // `availability` answers one per exact line, in order.
                    Ok(exact_answers.next().unwrap_or(LineAvailability { available: 0, exists: false, enough: false }))
                } else {
                    let view = self.sku_items(&line.sku)?;
                    let asked: u64 = lines
                        .iter()
                        .filter(|other| other.sku == line.sku && other.warehouse.is_none())
                        .fold(0u64, |sum, other| sum.saturating_add(other.quantity));
                    let exists = !view.items.is_empty();
                    Ok(LineAvailability {
                        available: view.available,
                        exists,
                        enough: exists && asked <= view.available,
                    })
                }
            })
            .collect()
    }
}
