//! Allocation options of a reservation request (issue 17 item 5), and the
//! `request_lines` its answer lists: what each request line took from
//! which warehouse.
//!
//! The engine decides (`engine::cmd::allocation`, which says how the two
//! orders follow Saleor's strategies); this file turns the request's
//! `allocation`, `warehouse_priority` and `split` into the engine's rule,
//! and the engine's per-line allocations back into request lines.
//!
//! * `allocation`: `most_available` or `priority`; absent: `priority` when
//!   the request names a `warehouse_priority`, else `api.allocation`.
//! * `warehouse_priority`: the request's warehouse order, overriding each
//!   SKU's own (names that do not stock a SKU are skipped for it); at most
//!   `api.warehouse_priority_max` names, none twice; only with `priority`.
//! * `split`: default true (a line may be filled from several warehouses,
//!   as before); false fills each line from one warehouse or refuses it.

use engine::cmd::{Allocation, AllocationOrder, AllocationRule, HoldLine};
use engine::ids::Warehouse;
use engine::outcome::{Allocated, LineView};
use serde::{Deserialize, Serialize};

use crate::config::ApiConfig;
use crate::problem::{ApiResult, Problem};

/// `allocation` of a reservation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllocationName {
    /// Most available warehouse first, ties by name (Saleor's
    /// `prioritize_high_stock`).
    MostAvailable,
    /// The request's `warehouse_priority`, else the SKU's, then the other
    /// warehouses most available first (Saleor's `prioritize_sorting_order`).
    Priority,
}

/// A warehouse priority list as sent: checked for length and names (the
/// engine checks duplicates again as it applies).
pub fn priority_list(names: &[String], api: &ApiConfig) -> ApiResult<Vec<Warehouse>> {
    if names.len() > api.warehouse_priority_max {
        return Err(Problem::bad_request(
            "invalid_warehouse_priority",
            format!(
                "warehouse_priority names {} warehouses; the maximum is {}",
                names.len(),
                api.warehouse_priority_max
            ),
        ));
    }
    let mut list: Vec<Warehouse> = Vec::with_capacity(names.len());
    for name in names {
        let warehouse = Warehouse::new(name.clone())?;
        if list.contains(&warehouse) {
            return Err(Problem::bad_request(
                "invalid_warehouse_priority",
                format!("warehouse {name} is listed twice in warehouse_priority"),
            ));
        }
        list.push(warehouse);
    }
    Ok(list)
}

/// The engine's rule for a request's options (module docs). A request that
/// names none gets `api.allocation` as it is, so nothing that worked
/// before changes.
pub fn rule(
    allocation: Option<AllocationName>,
    warehouse_priority: Option<&[String]>,
    split: Option<bool>,
    api: &ApiConfig,
) -> ApiResult<Allocation> {
    if allocation.is_none() && warehouse_priority.is_none() && split.is_none() {
        return Ok(api.allocation.engine());
    }
    let order = match (allocation, warehouse_priority) {
        (Some(AllocationName::MostAvailable), Some(_)) => {
            return Err(Problem::bad_request(
                "invalid_warehouse_priority",
                "warehouse_priority needs allocation \"priority\"",
            ));
        }
        (Some(AllocationName::MostAvailable), None) => AllocationOrder::MostAvailable,
        (Some(AllocationName::Priority), _) | (None, Some(_)) => AllocationOrder::Priority,
        (None, None) => api.allocation.order(),
    };
    let warehouse_priority = priority_list(warehouse_priority.unwrap_or_default(), api)?;
    Ok(Allocation::Rule(AllocationRule { order, warehouse_priority, split: split.unwrap_or(true) }))
}

/// One request line as a create answer lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLineOut {
    /// Its index in the request.
    pub line: usize,
    pub sku: String,
    /// As the request named it (null: allocated).
    pub warehouse: Option<String>,
    pub quantity: u64,
    /// Where its units are held: one entry per warehouse, in the order of
    /// the reservation's `lines`.
    pub allocations: Vec<AllocationOut>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocationOut {
    pub warehouse: String,
    pub quantity: u64,
}

/// The request lines of one part (one shard's hold): `request_line` maps a
/// part line to its index in the request; `lines` are the part's lines as
/// held and `allocations` what its lines without a warehouse took of them.
pub fn request_lines(
    request_line: impl Fn(usize) -> usize,
    hold: &[HoldLine],
    lines: &[LineView],
    allocations: &[Allocated],
) -> Vec<RequestLineOut> {
    hold.iter()
        .enumerate()
        .map(|(index, line)| {
            let allocations = match &line.warehouse {
                Some(warehouse) => {
                    vec![AllocationOut { warehouse: warehouse.as_str().to_owned(), quantity: line.quantity.get() }]
                }
                None => allocations
                    .iter()
                    .filter(|allocated| allocated.line as usize == index)
                    .filter_map(|allocated| {
                        let held = lines.get(allocated.held as usize)?;
                        Some(AllocationOut { warehouse: held.warehouse.clone(), quantity: allocated.quantity })
                    })
                    .collect(),
            };
            RequestLineOut {
                line: request_line(index),
                sku: line.sku.as_str().to_owned(),
                warehouse: line.warehouse.as_ref().map(|w| w.as_str().to_owned()),
                quantity: line.quantity.get(),
                allocations,
            }
        })
        .collect()
}
