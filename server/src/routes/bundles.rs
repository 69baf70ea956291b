//! Bundles (kits): a SKU sold as a set of other SKUs. Define, read (with
//! the availability its components allow), list and remove them; and the
//! reservation routes' expansion of a bundle line into its components.
//!
//! The definition lives on the bundle SKU's shard (`engine::bundle`). A
//! hold naming a bundle is refused there with the bundle's components
//! (`Refusal::BundleLines`), before it touches stock or its idempotency
//! key; `expand` then replaces each bundle line by its components, times the
//! line's quantity and in the line's warehouse if it names one, and the
//! reservation routes hold that instead: one `Hold` when the components
//! live on one shard, else the saga. Either way the components are held
//! all or none. A hold that names no bundle costs nothing more.
//!
//! A bundle's availability is computed at read time from its components'
//! items: `available` is how many bundles a hold without a warehouse could
//! get (each component's units across its warehouses, divided by what one
//! bundle needs, the least of these), `warehouses` how many one warehouse
//! could fill alone. Components on several shards are read one shard at a
//! time, so the figures are not one atomic cut.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engine::bundle::Component;
use engine::cmd::SetBundle;
use engine::ids::{QUANTITY_MAX, Quantity, Sku};
use engine::outcome::BundleLine;
use engine::query::SkuView;
use engine::read::Query;
use engine::{Command, Outcome, shard_of};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::items::ReadQuery;
use super::reservations::{RequestLine, ReservationBody};
use super::{Consistency, JsonBody, PathParams, QueryParams, limit_within, one_each, read_shard};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// Units of one SKU in one bundle.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentBody {
    #[schema(value_type = crate::openapi::Sku)]
    pub sku: String,
    /// Units of the component in one bundle: 1 to 10^15.
    #[schema(value_type = crate::openapi::Quantity)]
    pub quantity: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBundle {
    /// 1 to `engine.bundle_components_max` (16) components, distinct SKUs
    /// other than the bundle, none itself a bundle.
    pub components: Vec<ComponentBody>,
}

fn components_json(components: &[Component]) -> Vec<ComponentBody> {
    components.iter().map(|c| ComponentBody { sku: c.sku.as_str().to_owned(), quantity: c.quantity.get() }).collect()
}

/// The SKUs among `skus` that are bundles, read from their shards.
async fn bundles_among(state: &AppState, skus: &[String]) -> ApiResult<Vec<String>> {
    let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for sku in skus {
        by_shard.entry(shard_of(sku, state.node.shard_count())).or_default().push(sku.clone());
    }
    let mut found = Vec::new();
    for (shard, skus) in by_shard {
        let query = Query::BundlesOf(skus.clone());
        let definitions: Vec<Option<Vec<Component>>> =
            read_shard(state, shard, Consistency::Linearizable, query).await?;
        let definitions = one_each(skus.len(), definitions)?;
        found.extend(
            skus.into_iter().zip(definitions).filter(|(_, definition)| definition.is_some()).map(|(sku, _)| sku),
        );
    }
    Ok(found)
}

/// The bundles (on any shard) that list `sku` as a component.
async fn bundles_containing(state: &AppState, sku: &str) -> ApiResult<Vec<String>> {
    let mut found = Vec::new();
    for shard in 0..state.node.shard_count() {
        let query = Query::BundlesContaining(sku.to_owned());
        let bundles: Vec<String> = read_shard(state, shard, Consistency::Linearizable, query).await?;
        found.extend(bundles);
    }
    Ok(found)
}

fn nested(detail: String, skus: Vec<String>) -> Problem {
    Problem::new(StatusCode::CONFLICT, "bundle_nested", detail).with_extra(json!({ "skus": skus }))
}

/// `PUT /v1/bundles/{sku}`: define or change a bundle (admin).
#[utoipa::path(
    put,
    path = "/v1/bundles/{sku}",
    tag = "bundles",
    summary = "Define a bundle (kit): a SKU made of other SKUs",
    description = "A reservation line naming the bundle holds every component, `quantity` per bundle times \
        the line's quantity (in the line's warehouse, if it names one), all or none: atomically on one shard \
        or through the saga across shards. The bundle SKU has no stock of its own. Holds already made keep \
        the components they hold when the definition changes.",
    extensions(("x-tally-role" = json!("admin"))),
    params(("sku" = crate::openapi::Sku, Path, description = "The bundle's SKU.")),
    request_body = PutBundle,
    responses(
        (status = 200, description = "The definition now: `sku` and `components`.", body = Value),
        (status = 400, description = "`invalid_path`, `invalid_json`, `invalid_body`, `invalid_bundle` (no \
            components, too many, one listed twice, the bundle itself), `field_empty`, `field_too_long`, \
            `field_bad_character` (sku), `quantity_zero`, `quantity_too_large`."),
        (status = 409, description = "`bundle_nested`: a component is a bundle, or a bundle lists this SKU \
            (`skus`); `sku_has_items`: the SKU has stock of its own; `shard_full`: \
            `engine.bundles_per_shard_max`."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn put_bundle(
    State(state): Shared,
    principal: Principal,
    PathParams(sku): PathParams<String>,
    JsonBody(body): JsonBody<PutBundle>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let sku = Sku::new(sku)?;
    let components = body
        .components
        .into_iter()
        .map(|c| Ok(Component { sku: Sku::new(c.sku)?, quantity: Quantity::new(c.quantity)? }))
        .collect::<ApiResult<Vec<_>>>()?;
    engine::bundle::validate(&sku, &components, state.config.engine.bundle_components_max)?;
    // Bundles do not nest. The shards check what they can (a bundle has no
    // items); this checks the rest, at definition. A race with another
    // definition is caught when a hold reaches the nested bundle.
    let names: Vec<String> = components.iter().map(|c| c.sku.as_str().to_owned()).collect();
    let inner = bundles_among(&state, &names).await?;
    if !inner.is_empty() {
        return Err(nested(format!("{} is a bundle; bundles do not nest", inner.join(", ")), inner));
    }
    let outer = bundles_containing(&state, sku.as_str()).await?;
    if !outer.is_empty() {
        return Err(nested(format!("{} lists {} as a component; bundles do not nest", outer.join(", "), sku), outer));
    }
    let command = SetBundle { sku, components: Some(components) };
    match state.submit(Command::SetBundle(command)).await? {
        Outcome::BundleSet { sku, components: Some(components) } => {
            Ok(axum::Json(json!({ "sku": sku, "components": components_json(&components) })).into_response())
        }
        other => Err(state.unexpected(&other)),
    }
}

/// `DELETE /v1/bundles/{sku}`: remove a bundle's definition (admin).
#[utoipa::path(
    delete,
    path = "/v1/bundles/{sku}",
    tag = "bundles",
    summary = "Remove a bundle's definition",
    description = "Live holds made through the bundle keep their components.",
    extensions(("x-tally-role" = json!("admin"))),
    params(("sku" = crate::openapi::Sku, Path, description = "The bundle's SKU.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "`invalid_path`, `field_empty`, `field_too_long`, `field_bad_character` (sku)."),
        (status = 404, description = "`bundle_not_found`: the SKU is not a bundle."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn delete_bundle(
    State(state): Shared,
    principal: Principal,
    PathParams(sku): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let command = SetBundle { sku: Sku::new(sku)?, components: None };
    match state.submit(Command::SetBundle(command)).await? {
        Outcome::BundleSet { components: None, .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(state.unexpected(&other)),
    }
}

/// One component's share of a bundle's availability.
#[derive(Debug, Serialize)]
struct ComponentStock {
    sku: String,
    quantity: u64,
    /// The component's available units, all warehouses.
    available: u64,
    /// Bundles these units make: `available / quantity`.
    bundles: u64,
}

/// A bundle, what its components allow, and where.
async fn bundle_body(
    state: &AppState,
    sku: &str,
    components: &[Component],
    consistency: Consistency,
) -> ApiResult<Value> {
    // Each component's available units per warehouse.
    let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for c in components {
        by_shard.entry(shard_of(c.sku.as_str(), state.node.shard_count())).or_default().push(c.sku.as_str().to_owned());
    }
    let mut stock: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (shard, skus) in by_shard {
        let views: Vec<SkuView> = read_shard(state, shard, consistency, Query::Skus(skus.clone())).await?;
        let views = one_each(skus.len(), views)?;
        for (sku, view) in skus.into_iter().zip(views) {
            stock.insert(sku, view.items.into_iter().map(|item| (item.warehouse, item.available)).collect());
        }
    }
    let per_component: Vec<ComponentStock> = components
        .iter()
        .map(|c| {
            let available = stock.get(c.sku.as_str()).map_or(0, |levels| levels.values().sum());
            let quantity = c.quantity.get();
            ComponentStock { sku: c.sku.as_str().to_owned(), quantity, available, bundles: available / quantity }
        })
        .collect();
    let available = per_component.iter().map(|c| c.bundles).min().unwrap_or(0);
    // A warehouse fills a bundle alone only if it stocks every component.
    let mut warehouses: BTreeMap<&str, u64> = BTreeMap::new();
    if let Some(first) = components.first().and_then(|c| stock.get(c.sku.as_str())) {
        for warehouse in first.keys() {
            let bundles = components
                .iter()
                .map(|c| {
                    let units = stock.get(c.sku.as_str()).and_then(|levels| levels.get(warehouse)).copied();
                    units.unwrap_or(0) / c.quantity.get()
                })
                .min()
                .unwrap_or(0);
            let stocked =
                components.iter().all(|c| stock.get(c.sku.as_str()).is_some_and(|l| l.contains_key(warehouse)));
            if stocked {
                warehouses.insert(warehouse, bundles);
            }
        }
    }
    Ok(json!({
        "sku": sku,
        "components": per_component,
        "available": available,
        "warehouses": warehouses
            .into_iter()
            .map(|(warehouse, available)| json!({ "warehouse": warehouse, "available": available }))
            .collect::<Vec<_>>(),
        "consistency": consistency.as_str(),
    }))
}

/// `GET /v1/bundles/{sku}`: a bundle and the availability its components
/// allow.
#[utoipa::path(
    get,
    path = "/v1/bundles/{sku}",
    tag = "bundles",
    summary = "Read a bundle and how many are available",
    description = "`available`: bundles a reservation line without a warehouse could hold now (per \
        component, its available units over all warehouses divided by its `quantity`; the least of these). \
        `warehouses`: bundles one warehouse could fill alone, for each warehouse that stocks every \
        component. `components` shows each one's share. Components on several shards are read shard by \
        shard, not as one atomic cut.",
    extensions(("x-tally-role" = json!("read"))),
    params(("sku" = crate::openapi::Sku, Path, description = "The bundle's SKU."), ReadQuery),
    responses(
        (status = 200, description = "`sku`, `components` (`sku`, `quantity`, `available`, `bundles`), \
            `available`, `warehouses` (`warehouse`, `available`), `consistency`.", body = Value),
        (status = 400, description = "`invalid_path`, `invalid_query`, `field_empty`, `field_too_long`, \
            `field_bad_character` (sku)."),
        (status = 404, description = "`bundle_not_found`: the SKU is not a bundle."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn get_bundle(
    State(state): Shared,
    principal: Principal,
    PathParams(sku): PathParams<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let sku = Sku::new(sku)?;
    let shard = shard_of(sku.as_str(), state.node.shard_count());
    let query_one = Query::BundlesOf(vec![sku.as_str().to_owned()]);
    let definitions: Vec<Option<Vec<Component>>> = read_shard(&state, shard, query.consistency, query_one).await?;
    let components = one_each(1, definitions)?.into_iter().next().flatten();
    let components = components.ok_or_else(|| Problem::not_found("bundle_not_found", "the SKU is not a bundle"))?;
    Ok(axum::Json(bundle_body(&state, sku.as_str(), &components, query.consistency).await?).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListBundlesQuery {
    /// Most bundles to answer: 1 to `api.list_limit_max` (1000); 100 if absent.
    pub limit: Option<u32>,
    /// The last SKU of the previous page (`next_cursor`).
    pub cursor: Option<String>,
    #[serde(default)]
    pub consistency: Consistency,
}

/// `GET /v1/bundles`: every bundle's definition, by SKU.
#[utoipa::path(
    get,
    path = "/v1/bundles",
    tag = "bundles",
    summary = "List bundles and their components, by SKU",
    extensions(("x-tally-role" = json!("read"))),
    params(ListBundlesQuery),
    responses(
        (status = 200, description = "`bundles` (`sku`, `components`) in SKU order, and `next_cursor` \
            (null on the last page).", body = Value),
        (status = 400, description = "`invalid_query`, `invalid_limit`, `field_empty`, `field_too_long`, \
            `field_bad_character` (cursor)."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn list_bundles(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<ListBundlesQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let asked = limit_within(query.limit, 100, state.config.api.list_limit_max)?;
    let limit = asked as usize;
    let after = query.cursor.map(Sku::new).transpose()?.map(|sku| sku.as_str().to_owned());
    let mut page: Vec<(String, Vec<Component>)> = Vec::new();
    for shard in 0..state.node.shard_count() {
        let list = Query::Bundles { after: after.clone(), limit: asked.saturating_add(1) };
        let bundles: Vec<(String, Vec<Component>)> = read_shard(&state, shard, query.consistency, list).await?;
        page.extend(bundles);
    }
    page.sort_by(|a, b| a.0.cmp(&b.0));
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = if more { page.last().map(|(sku, _)| sku.clone()) } else { None };
    let bundles: Vec<Value> =
        page.iter().map(|(sku, components)| json!({ "sku": sku, "components": components_json(components) })).collect();
    Ok(axum::Json(json!({ "bundles": bundles, "next_cursor": next_cursor })).into_response())
}

/// How a bundle line of a request was held: the components it became.
#[derive(Debug, Clone, Serialize)]
pub struct BundleOut {
    /// The request line.
    line: usize,
    sku: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    warehouse: Option<String>,
    quantity: u64,
    /// Each component's units per bundle.
    components: Vec<ComponentBody>,
}

/// A request with its bundle lines replaced by their components, and for
/// each line of it, the request line it came from.
pub struct Expanded {
    pub body: ReservationBody,
    pub origin: Vec<usize>,
    pub bundles: Vec<BundleOut>,
}

/// Replaces each bundle line of `body` (`found`: request line and its
/// components) by one line per component, `quantity` per bundle times the
/// line's, in the line's warehouse. Lines keep their order. 400
/// `too_many_lines` when the result has more than `lines_max` lines.
pub fn expand(body: &ReservationBody, found: &[(usize, Vec<Component>)], lines_max: u32) -> ApiResult<Expanded> {
    let mut lines = Vec::new();
    let mut origin = Vec::new();
    let mut bundles = Vec::new();
    for (index, line) in body.lines.iter().enumerate() {
        let Some((_, components)) = found.iter().find(|(at, _)| *at == index) else {
            lines.push(line.clone());
            origin.push(index);
            continue;
        };
        for component in components {
            let quantity = component.quantity.get().checked_mul(line.quantity).filter(|q| *q <= QUANTITY_MAX);
            let quantity = quantity.ok_or_else(|| {
                Problem::input(&engine::InputError::TooLarge {
                    field: engine::Field::Quantity,
                    value: component.quantity.get().saturating_mul(line.quantity),
                    max: QUANTITY_MAX,
                })
            })?;
            lines.push(RequestLine {
                sku: component.sku.as_str().to_owned(),
                warehouse: line.warehouse.clone(),
                quantity,
            });
            origin.push(index);
        }
        bundles.push(BundleOut {
            line: index,
            sku: line.sku.clone(),
            warehouse: line.warehouse.clone(),
            quantity: line.quantity,
            components: components_json(components),
        });
    }
    if lines.len() > lines_max as usize {
        return Err(Problem::bad_request(
            "too_many_lines",
            format!("with its bundles expanded the reservation has {} lines; the maximum is {lines_max}", lines.len()),
        ));
    }
    Ok(Expanded { body: ReservationBody { lines, ..body.clone() }, origin, bundles })
}

/// The request lines (with components) a part's bundle refusal names:
/// `part_lines[i]` is the request line of the part's line `i`.
pub fn found_lines(refused: &[BundleLine], part_lines: &[usize]) -> Vec<(usize, Vec<Component>)> {
    refused.iter().filter_map(|line| Some((*part_lines.get(line.line as usize)?, line.components.clone()))).collect()
}

/// An `insufficient_stock` problem of an expanded request, with each short
/// line numbered as the request numbered it and, for a component, the
/// bundle it is part of (`bundle`).
pub fn renumber(mut problem: Problem, expanded: &Expanded) -> Problem {
    if problem.code != "insufficient_stock" {
        return problem;
    }
    if let Some(lines) = problem.extra.as_mut().and_then(|extra| extra.get_mut("lines")).and_then(Value::as_array_mut) {
        for line in lines {
            let Some(at) = line.get("line").and_then(Value::as_u64).and_then(|at| usize::try_from(at).ok()) else {
                continue;
            };
            let Some(&request_line) = expanded.origin.get(at) else { continue };
            line["line"] = json!(request_line);
            if let Some(bundle) = expanded.bundles.iter().find(|b| b.line == request_line) {
                line["bundle"] = json!(bundle.sku);
            }
        }
    }
    problem
}
