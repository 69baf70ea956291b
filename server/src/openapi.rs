//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json` and
//! printed by `tally openapi`.
//!
//! It is generated, not written: every handler in `routes` carries a
//! `#[utoipa::path]` with its summary, role, parameters and responses, and
//! request bodies and query strings derive their schemas where they are
//! declared. Handlers build their answers with `json!`, so the answer shapes
//! are written here, as `ToSchema` structs that mirror those `json!` calls
//! field for field. `Conventions` adds what every route shares instead of
//! repeating it on each: the bearer scheme, the role sentence, problem+json
//! bodies, and the answers of the layers around the handlers (401/403/429,
//! 413/415).
//!
//! The tests keep the document in step with the router in `app.rs`, with the
//! roles the handlers require, with itself (no dangling `$ref`), and with
//! the committed `docs/openapi.json`.

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::path::{Operation, PathItem, Paths};
use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Header, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::routes::{Consistency, admin, bulk, bundles, items, ledger, ops, reservations, states, stream};

/// The name of the one security scheme.
const API_KEY: &str = "api_key";
/// The extension naming the role an operation needs (`read`, `reserve`,
/// `admin`); operations without it need no key.
const ROLE_EXTENSION: &str = "x-tally-role";
const PROBLEM_JSON: &str = "application/problem+json";

/// The 503 of a route that reads a shard: what `Problem::read` and the
/// request timeout answer.
pub const READ_UNAVAILABLE: &str = "`unavailable`: the shard has no reachable leader (retry after `Retry-After`); \
    `shard_stopped`: the shard stopped on this node (storage failure or broken invariant; `shard`, `cause`), \
    another node may serve it; `shutting_down`; `timeout`.";
/// The 503 of a route that writes through a shard's log: what
/// `Problem::submit` and the request timeout answer.
pub const WRITE_UNAVAILABLE: &str = "`unavailable`, `overloaded`: retry after `Retry-After`; `outcome_unknown`: \
    the change may or may not have applied (also a write in flight when its shard stopped); `shard_stopped`: the \
    shard stopped on this node (storage failure or broken invariant; `shard`, `cause`), nothing was applied, \
    another node may serve it; `shutting_down`; `timeout`.";

/// The API description.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|error| {
        // Serialising plain structs to a `Value` has no failure path; say so if it ever does.
        serde_json::json!({ "openapi": "3.1.0", "error": error.to_string() })
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        version = env!("CARGO_PKG_VERSION"),
        description = "Tally's HTTP API: stock per SKU and warehouse, reservations that hold it, \
            live events. Every failure is `application/problem+json` with a stable `code`.",
    ),
    paths(
        items::list_items,
        items::get_sku,
        items::put_sku,
        items::put_item,
        items::get_item,
        crate::routes::products::delete_item,
        crate::routes::products::delete_sku,
        items::adjust,
        states::move_quantity,
        items::history,
        items::transfer,
        items::availability,
        bundles::list_bundles,
        bundles::get_bundle,
        bundles::put_bundle,
        bundles::delete_bundle,
        bulk::import,
        bulk::list_imports,
        bulk::get_import,
        bulk::export,
        reservations::create,
        reservations::batch,
        reservations::get,
        reservations::confirm,
        reservations::release,
        reservations::extend,
        reservations::get_order,
        reservations::order_confirm,
        reservations::order_release,
        reservations::order_extend,
        stream::events,
        stream::alerts,
        ledger::ledger,
        ops::cluster,
        ops::digests,
        ops::set_clock,
        admin::start_backup,
        admin::backup_status,
        admin::add_learner,
        admin::change_voters,
        admin::add_node,
        admin::nodes,
        admin::remove_node,
        ops::metrics,
        ops::openapi,
        ops::healthz,
        ops::readyz,
    ),
    components(schemas(Problem, ShortLine, Event, LaggedNotice, Sku, Warehouse, ReservationId, Quantity)),
    modifiers(&Conventions),
    security(("api_key" = [])),
    tags(
        (name = "items", description = "Stock of one SKU in one warehouse: levels, history, transfers."),
        (name = "reservations", description = "Holds on stock: create, confirm (the sale), release, extend."),
        (name = "bundles", description = "Kits: a SKU made of other SKUs, held all or none, its availability computed from its components."),
        (name = "orders", description = "The reservation an `order_id` made, by that order id."),
        (name = "events", description = "Live stock changes, threshold crossings and expiries; recent alerts."),
        (name = "ledger", description = "Every stock movement, with who, why, the caller's references and the levels around it."),
        (name = "operations", description = "Health, readiness, cluster status, metrics and this document."),
    ),
)]
struct ApiDoc;

/// What every operation shares, added once here.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("API key")
            .description(Some(
                "An API key as `Authorization: Bearer <key>`. Each key has a role: `read` < `reserve` < \
                 `admin`, each including the ones before. With no keys configured the server is open \
                 (loopback only); with `auth.anonymous_read`, requests without a key may read.",
            ))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(API_KEY, SecurityScheme::Http(scheme));
        merge_flattened(&mut components.schemas);
        alias_delete_release(&mut openapi.paths);
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                describe_role(operation);
                add_layer_responses(operation);
                add_problem_bodies(operation);
            }
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
}

fn role_of(operation: &Operation) -> Option<&str> {
    operation.extensions.as_ref()?.get(ROLE_EXTENSION)?.as_str()
}

/// The router serves `reservations::release` at two routes; one
/// `#[utoipa::path]` describes it, so the DELETE route is its copy.
fn alias_delete_release(paths: &mut Paths) {
    let Some(mut operation) = paths.paths.get("/v1/reservations/{id}/release").and_then(|item| item.post.clone())
    else {
        return;
    };
    operation.operation_id = Some("release_by_delete".to_owned());
    operation.description = Some(format!(
        "The same as `POST /v1/reservations/{{id}}/release`.\n\n{}",
        operation.description.as_deref().unwrap_or_default()
    ));
    paths.paths.entry("/v1/reservations/{id}".to_owned()).or_default().delete = Some(operation);
}

/// `#[serde(flatten)]` derives as an `allOf` of objects, and a flattened
/// struct that denies unknown fields then refuses the other branches'
/// members. Serde reads one object, so the document says one object, closed
/// if any part was.
fn merge_flattened(schemas: &mut BTreeMap<String, RefOr<Schema>>) {
    for schema in schemas.values_mut() {
        let RefOr::T(Schema::AllOf(all_of)) = schema else { continue };
        let objects: Option<Vec<&Object>> = all_of
            .items
            .iter()
            .map(|item| match item {
                RefOr::T(Schema::Object(object)) => Some(object),
                _ => None,
            })
            .collect();
        let Some((first, others)) = objects.as_deref().and_then(<[&Object]>::split_first) else { continue };
        let mut merged = (*first).clone();
        for other in others {
            merged.properties.extend(other.properties.clone());
            merged.required.extend(other.required.iter().cloned());
            if matches!(other.additional_properties.as_deref(), Some(AdditionalProperties::FreeForm(false))) {
                merged.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
        merged.description = all_of.description.clone().or(merged.description);
        *schema = RefOr::T(Schema::Object(merged));
    }
}

/// Opens the description with the role the operation needs.
fn describe_role(operation: &mut Operation) {
    let Some(role) = role_of(operation).map(str::to_owned) else {
        return;
    };
    let rest = operation.description.take().unwrap_or_default();
    operation.description = Some(format!("Needs the `{role}` role.\n\n{rest}").trim_end().to_owned());
}

/// Answers that come from the layers around a handler, not from it: the
/// key check and rate limit (`auth::authenticate`), the role check every
/// keyed handler starts with, and the JSON body extractor.
fn add_layer_responses(operation: &mut Operation) {
    let (keyed, with_body) = (role_of(operation).is_some(), operation.request_body.is_some());
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, description: &str| {
        responses.entry(status.to_owned()).or_insert_with(|| RefOr::T(Response::new(description)));
    };
    if keyed {
        add("401", "No API key, or an unknown one: `unauthorized`.");
        add("403", "The key's role is below the one this route needs: `forbidden`.");
        add(
            "429",
            "The key is over its rate limit, or the client address failed authentication too often \
             (`auth.failure_rate_per_second`): `rate_limited`. Retry after `Retry-After` seconds.",
        );
    }
    if with_body {
        add("413", "The body is larger than `server.body_bytes_max`: `body_too_large`.");
        add("415", "The body is not sent as `Content-Type: application/json`: `unsupported_media_type`.");
    }
}

/// Every 4xx and 5xx answer is a `Problem`; 429 and 503 say when to retry.
fn add_problem_bodies(operation: &mut Operation) {
    for (status, response) in &mut operation.responses.responses {
        let RefOr::T(response) = response else { continue };
        if !status.parse::<u16>().is_ok_and(|status| status >= 400) {
            continue;
        }
        if response.content.is_empty() {
            response
                .content
                .insert(PROBLEM_JSON.to_owned(), RefOr::T(Content::new(Some(Ref::from_schema_name("Problem")))));
        }
        if status == "429" || status == "503" {
            let mut header = Header::new(<u64 as PartialSchema>::schema());
            header.description = Some("Seconds to wait before retrying.".to_owned());
            response.headers.entry("Retry-After".to_owned()).or_insert(RefOr::T(header));
        }
    }
}

// ---------------------------------------------------------------------------
// Request vocabulary: identifiers and quantities as the engine checks them.

/// A SKU: 1 to 64 bytes of ASCII; the first a letter or digit, the rest
/// letters, digits or `.` `_` `:` `-`.
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]*$", min_length = 1, max_length = 64)]
pub struct Sku(pub String);

/// A warehouse: 1 to 32 bytes of ASCII; the first a letter or digit, the
/// rest letters, digits or `.` `_` `:` `-`.
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]*$", min_length = 1, max_length = 32)]
pub struct Warehouse(pub String);

/// A reservation id: 32 hex digits.
#[derive(ToSchema)]
#[schema(pattern = "^[0-9A-Fa-f]{32}$")]
pub struct ReservationId(pub String);

/// A number of units: 1 to 10^15.
#[derive(ToSchema)]
#[schema(minimum = 1, maximum = 1_000_000_000_000_000_u64)]
pub struct Quantity(pub u64);

/// Why stock was adjusted.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum AdjustReason {
    Receive,
    Return,
    Damage,
    Loss,
    Count,
    Sale,
    Correction,
}

// ---------------------------------------------------------------------------
// Answers, mirroring the `json!` of the handlers.

/// Derived from `available` and `low_stock_threshold`: `OUT_OF_STOCK` at 0,
/// `LOW_STOCK` at or below the threshold, else `IN_STOCK`.
#[derive(ToSchema)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ItemStatus {
    InStock,
    LowStock,
    OutOfStock,
}

/// One SKU in one warehouse (`routes::item_json`). Its ETag is `version` in
/// quotes.
#[derive(ToSchema)]
pub struct Item {
    pub sku: String,
    pub warehouse: String,
    /// Units on the shelf, reserved ones included.
    pub on_hand: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// `on_hand - reserved - safety_stock - damaged - quality_control`: what
    /// can still be reserved.
    pub available: u64,
    pub low_stock_threshold: u64,
    pub status: ItemStatus,
    /// Moves on every change of the item.
    pub version: u64,
    pub updated_at_ms: u64,
    #[schema(required = true)]
    pub name: Option<String>,
    /// Unit price in minor units (cents).
    #[schema(required = true)]
    pub unit_price_minor: Option<u64>,
    /// Units on hand kept back as a buffer: never available.
    pub safety_stock: u64,
    /// Units on hand found broken: not available.
    pub damaged: u64,
    /// Units on hand waiting for inspection: not available.
    pub quality_control: u64,
    /// Units ordered or in transit: not on hand yet.
    pub incoming: u64,
    /// When the incoming units are expected, RFC 3339 UTC; `null`: not set.
    #[schema(required = true)]
    pub incoming_expected_at: Option<String>,
    /// `incoming_expected_at` in Unix milliseconds.
    #[schema(required = true)]
    pub incoming_expected_at_ms: Option<u64>,
    /// Units holds may take beyond stock (backorders, preorders).
    pub backorder_limit: u64,
    /// Units held beyond stock by live reservations, waiting for stock.
    pub backordered: u64,
}

/// Every warehouse of a SKU, with totals (`GET /v1/items/{sku}`).
#[derive(ToSchema)]
pub struct SkuItems {
    pub sku: String,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    /// Units one customer may hold and buy; `null`: no limit.
    #[schema(required = true)]
    pub limit_per_customer: Option<u64>,
    /// How long a sale counts against the limit; `null`: while the limit is set.
    #[schema(required = true)]
    pub limit_window_seconds: Option<u64>,
    /// The SKU's warehouse order for `priority` allocation, most preferred
    /// first; empty: none.
    pub warehouse_priority: Vec<String>,
    pub warehouses: Vec<Item>,
    pub consistency: Consistency,
    /// With `?customer_id=`: what that customer has of the SKU.
    pub customer: Option<CustomerUsage>,
    /// The SKU's product record; `null`: none.
    #[schema(required = true)]
    pub product: Option<Product>,
}

/// A SKU's product record (`PUT /v1/items/{sku}` with product fields).
#[derive(ToSchema)]
pub struct Product {
    pub sku: String,
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(required = true)]
    pub description: Option<String>,
    #[schema(required = true)]
    pub category: Option<String>,
    /// Major units with two decimals, e.g. `"19.99"`.
    #[schema(required = true)]
    pub price: Option<String>,
    /// The same price in minor units, e.g. `1999`.
    #[schema(required = true)]
    pub price_minor: Option<u64>,
    /// ISO 4217 code.
    #[schema(required = true)]
    pub currency: Option<String>,
    #[schema(required = true)]
    pub image_url: Option<String>,
    /// Starts at 1, grows by one on every change.
    pub version: u64,
    /// Log time (RFC 3339) of the change that created the record.
    pub created_at: String,
    pub created_at_ms: u64,
    /// Log time (RFC 3339) of its latest change.
    pub updated_at: String,
    pub updated_at_ms: u64,
}

/// One customer's units of a SKU under its limit per customer.
#[derive(ToSchema)]
pub struct CustomerUsage {
    pub customer_id: String,
    /// Units in the customer's live holds (counted while the limit is set).
    pub held: u64,
    /// Units confirmed within the window.
    pub sold: u64,
    /// What the customer may still hold; `null` when the SKU has no limit.
    #[schema(required = true)]
    pub remaining: Option<u64>,
}

/// A page of items in shard order (`GET /v1/items`).
#[derive(ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Pass as `cursor` for the next page; `null` on the last page. A page
    /// may be short (or empty) and still have a next one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    pub consistency: Consistency,
}

/// Why stock moved.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum MovementReason {
    Receive,
    Return,
    Damage,
    Loss,
    Count,
    Sale,
    Correction,
    Set,
    TransferIn,
    TransferOut,
    Confirmed,
}

/// One change of `on_hand`.
#[derive(ToSchema)]
pub struct Movement {
    pub at_ms: u64,
    pub reason: MovementReason,
    pub delta: i64,
    pub on_hand_before: u64,
    pub on_hand_after: u64,
    /// The API key's name, a reservation id, or `system`.
    pub by: String,
}

/// Recent movements of an item, newest first.
#[derive(ToSchema)]
pub struct History {
    pub sku: String,
    pub warehouse: String,
    pub movements: Vec<Movement>,
}

/// Both items after a transfer.
#[derive(ToSchema)]
pub struct TransferResult {
    pub from: Item,
    pub to: Item,
    pub quantity: u64,
    /// The request's `reason`, echoed.
    #[schema(required = true)]
    pub reason: Option<String>,
}

/// One line of an availability answer, in request order.
#[derive(ToSchema)]
pub struct AvailabilityLine {
    pub sku: String,
    /// `null`: the SKU's total over its warehouses.
    #[schema(required = true)]
    pub warehouse: Option<String>,
    pub quantity: u64,
    pub available: u64,
    pub exists: bool,
    /// `available` covers this line and every other line asking for the
    /// same item (or the same SKU without a warehouse).
    pub enough: bool,
}

#[derive(ToSchema)]
pub struct Availability {
    /// Every line is `enough`.
    pub all_available: bool,
    pub lines: Vec<AvailabilityLine>,
    pub consistency: Consistency,
}

/// `HELD` until confirmed (sold), released, or expired at its deadline.
#[derive(ToSchema)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationState {
    Held,
    Confirmed,
    Released,
    Expired,
}

#[derive(ToSchema)]
pub struct ReservationLine {
    pub sku: String,
    pub warehouse: String,
    pub quantity: u64,
    /// Units of `quantity` held beyond stock (a backorder or preorder),
    /// waiting for stock; 0 when filled from stock. Stock that arrives fills
    /// them, oldest reservation first (`reservation.backorder_filled`); the
    /// reservation confirms once none waits (409 `backorder_unfilled` before).
    pub backordered: u64,
}

/// One shard's part of a reservation whose lines span shards.
#[derive(ToSchema)]
pub struct ReservationPart {
    pub state: ReservationState,
    /// Lines held in this part.
    pub lines: u64,
}

/// A reservation. One that spans shards shows the state of the whole (a
/// part that did not complete wins) and lists its `parts`.
#[derive(ToSchema)]
pub struct Reservation {
    pub id: String,
    pub state: ReservationState,
    /// Every line as held, each with its warehouse (allocated if the request
    /// named none).
    pub lines: Vec<ReservationLine>,
    pub created_at_ms: u64,
    /// The deadline: a `HELD` reservation expires then.
    pub expires_at_ms: u64,
    /// `expires_at_ms` as RFC 3339 (UTC, milliseconds).
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// When it left `HELD`.
    #[schema(required = true)]
    pub ended_at_ms: Option<u64>,
    #[schema(required = true)]
    pub order_id: Option<String>,
    /// Only for a reservation whose lines span shards.
    #[schema(nullable = false)]
    pub parts: Option<Vec<ReservationPart>>,
    /// Only in the answer of a create (not of reads, confirms, releases or
    /// extensions): each request line, in request order, with where its
    /// units came from. For a replay (or a reservation confirmed at once),
    /// recomputed from the stored lines: the same units per warehouse, and
    /// the same per line unless the request has several lines without a
    /// warehouse of one SKU.
    #[schema(nullable = false)]
    pub request_lines: Option<Vec<ReservationRequestLine>>,
    /// Only in the answer to a request with bundle lines (`/v1/bundles`):
    /// each such request line and the components it became; `lines` then
    /// list the components as held. Reads show the components only.
    #[schema(nullable = false)]
    pub bundles: Option<Vec<ReservationBundle>>,
}

/// A request line that named a bundle.
#[derive(ToSchema)]
pub struct ReservationBundle {
    /// Index of the request line.
    pub line: u32,
    pub sku: String,
    /// The line's warehouse, if it named one: every component is held there.
    #[schema(nullable = false)]
    pub warehouse: Option<String>,
    /// Bundles held.
    pub quantity: u64,
    /// Units of each component per bundle.
    pub components: Vec<crate::routes::bundles::ComponentBody>,
}

/// A request line as a create answers it.
#[derive(ToSchema)]
pub struct ReservationRequestLine {
    /// Its index in the request.
    pub line: u64,
    pub sku: String,
    /// As the request named it; `null`: allocated.
    #[schema(required = true)]
    pub warehouse: Option<String>,
    pub quantity: u64,
    /// Where its units are held, one entry per warehouse, in the order of
    /// the reservation's `lines`.
    pub allocations: Vec<LineAllocation>,
}

/// Units of a request line held in one warehouse.
#[derive(ToSchema)]
pub struct LineAllocation {
    pub warehouse: String,
    pub quantity: u64,
}

/// One request of a batch that was held.
#[derive(ToSchema)]
pub struct BatchHeld {
    /// Always 201.
    pub status: u16,
    /// The request repeated an earlier one (same key or order) and this is
    /// that reservation.
    pub replayed: bool,
    pub reservation: Reservation,
}

/// One request of a batch that was refused.
#[derive(ToSchema)]
pub struct BatchRefused {
    /// The status the request alone would have answered.
    pub status: u16,
    pub problem: Problem,
}

/// One request of a batch that was held, with `?view=compact`.
#[derive(ToSchema)]
pub struct BatchHeldCompact {
    /// Always 201.
    pub status: u16,
    pub id: ReservationId,
    pub state: ReservationState,
    /// Present (and true) only when the request repeated an earlier one.
    #[schema(nullable = false)]
    pub replayed: Option<bool>,
}

/// One request of a batch that was refused, with `?view=compact`.
#[derive(ToSchema)]
pub struct BatchRefusedCompact {
    /// The status the request alone would have answered.
    pub status: u16,
    /// The problem's stable `code`.
    pub code: String,
}

/// A batch result: `BatchHeld` or `BatchRefused`, or with `?view=compact`
/// `BatchHeldCompact` or `BatchRefusedCompact`.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum BatchOutcome {
    Held(BatchHeld),
    Refused(BatchRefused),
    HeldCompact(BatchHeldCompact),
    RefusedCompact(BatchRefusedCompact),
}

/// One result per request, in request order.
#[derive(ToSchema)]
pub struct BatchResult {
    /// Requests held.
    pub held: u64,
    pub results: Vec<BatchOutcome>,
}

/// What changed the stock.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Cause {
    Upsert,
    Receive,
    Return,
    Damage,
    Loss,
    Count,
    Sale,
    Correction,
    TransferIn,
    TransferOut,
    Hold,
    Confirm,
    Release,
    Expire,
    Move,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum StockChangedType {
    StockChanged,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ThresholdCrossedType {
    ThresholdCrossed,
}

/// The type of a reservation event.
#[derive(ToSchema)]
pub enum ReservationEventType {
    #[schema(rename = "reservation.held")]
    Held,
    #[schema(rename = "reservation.refused")]
    Refused,
    #[schema(rename = "reservation.confirmed")]
    Confirmed,
    #[schema(rename = "reservation.released")]
    Released,
    #[schema(rename = "reservation.expired")]
    Expired,
    #[schema(rename = "reservation.backorder_filled")]
    BackorderFilled,
}

/// An item's levels changed.
#[derive(ToSchema)]
pub struct StockChangedEvent {
    /// `<shard>-<index>-<position>`: the same on every node.
    pub id: String,
    #[schema(rename = "type", inline)]
    pub kind: StockChangedType,
    pub at_ms: u64,
    pub sku: String,
    pub warehouse: String,
    pub cause: Cause,
    /// The reservation, for `hold`, `confirm`, `release` and `expire`.
    #[schema(required = true)]
    pub reservation: Option<String>,
    pub on_hand_before: u64,
    pub on_hand_after: u64,
    pub reserved_before: u64,
    pub reserved_after: u64,
    pub available_before: u64,
    pub available_after: u64,
}

/// An item's status changed (an alert).
#[derive(ToSchema)]
pub struct ThresholdCrossedEvent {
    /// `<shard>-<index>-<position>`: the same on every node.
    pub id: String,
    #[schema(rename = "type", inline)]
    pub kind: ThresholdCrossedType,
    pub at_ms: u64,
    pub sku: String,
    pub warehouse: String,
    pub from: ItemStatus,
    pub to: ItemStatus,
    pub available: u64,
    pub low_stock_threshold: u64,
}

/// A reservation was held, refused for stock, confirmed, released or
/// expired: what an order service waits for (InventoryReserved,
/// InventoryReservationFailed). A reservation across shards has one event
/// per part, each with that part's lines.
#[derive(ToSchema)]
pub struct ReservationEvent {
    /// `<shard>-<index>-<position>`: the same on every node.
    pub id: String,
    #[schema(rename = "type")]
    pub kind: ReservationEventType,
    pub at_ms: u64,
    /// `null` (a reservation event names its items in `lines`), but for
    /// `reservation.backorder_filled`: the item whose stock filled it.
    #[schema(required = true)]
    pub sku: Option<String>,
    /// As `sku`.
    #[schema(required = true)]
    pub warehouse: Option<String>,
    pub reservation: String,
    /// The caller's `order_id`, if the reservation was made with one.
    #[schema(required = true)]
    pub order_id: Option<String>,
    /// The API key name that acted; `null` for an expiry.
    #[schema(required = true)]
    pub principal: Option<String>,
    /// The reservation's lines; for `reservation.refused`, every short line
    /// with what was `available`.
    pub lines: Vec<ReservationEventLine>,
    /// `reservation.held` and `reservation.expired`: the deadline (log time).
    pub deadline_ms: Option<u64>,
    /// `reservation.backorder_filled`: units of the item now reserved from
    /// stock.
    pub units: Option<u64>,
    /// `reservation.backorder_filled`: units of the item still waiting.
    pub backordered: Option<u64>,
}

#[derive(ToSchema)]
pub struct ReservationEventLine {
    pub sku: String,
    /// `null` for a refused line that named no warehouse.
    #[schema(required = true)]
    pub warehouse: Option<String>,
    pub quantity: u64,
    /// Refused lines only.
    pub available: Option<u64>,
}

/// One page of `GET /v1/ledger`.
#[derive(ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntry>,
    /// Pass as `cursor` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One movement of the ledger.
#[derive(ToSchema)]
pub struct LedgerEntry {
    /// `<shard>-<index>-<position>`: the event that made it, the same on every node.
    pub id: String,
    /// Log time, RFC 3339 UTC.
    pub at: String,
    pub at_ms: u64,
    pub kind: LedgerKind,
    /// `null` for a gap.
    #[schema(required = true)]
    pub sku: Option<String>,
    #[schema(required = true)]
    pub warehouse: Option<String>,
    /// Signed change of `on_hand`, or of `reserved` for holds, releases and expiries.
    pub quantity: i64,
    pub on_hand_before: u64,
    pub on_hand_after: u64,
    pub reserved_before: u64,
    pub reserved_after: u64,
    /// The API key name that made it; `null` for expiries.
    #[schema(required = true)]
    pub principal: Option<String>,
    /// An adjustment's reason code.
    #[schema(required = true)]
    pub reason: Option<AdjustReason>,
    /// The caller's note (a transfer's `reason`).
    #[schema(required = true)]
    pub note: Option<String>,
    pub reference: LedgerReference,
    /// Gaps only: the log indexes of the shard this node could not record.
    pub gap: Option<LedgerGap>,
    /// Moves only: the quantity states the units went between.
    #[serde(rename = "move")]
    pub moved: Option<LedgerMove>,
}

/// A move between quantity states, in the ledger.
#[derive(ToSchema)]
pub struct LedgerMove {
    pub from: QuantityState,
    pub to: QuantityState,
    /// Units moved.
    pub quantity: u64,
}

/// A quantity state of an item.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum QuantityState {
    Available,
    SafetyStock,
    Damaged,
    QualityControl,
    Incoming,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum LedgerKind {
    Upsert,
    Adjust,
    TransferOut,
    TransferIn,
    Hold,
    Extend,
    Confirm,
    Release,
    Expire,
    Gap,
    Move,
}

#[derive(ToSchema)]
pub struct LedgerReference {
    #[schema(required = true)]
    pub order_id: Option<String>,
    #[schema(required = true)]
    pub reservation_id: Option<String>,
    /// The caller's document reference.
    #[schema(required = true)]
    pub document: Option<String>,
}

#[derive(ToSchema)]
pub struct LedgerGap {
    pub shard: u32,
    pub from_index: u64,
    pub to_index: u64,
}

/// One event (`events::event_json`): the `data:` of an SSE message on
/// `/v1/events`, whose `event:` is the `type` and `id:` the `id`.
#[derive(ToSchema)]
#[serde(untagged)]
#[schema(discriminator(property_name = "type", mapping(
    ("stock_changed" = "#/components/schemas/StockChangedEvent"),
    ("threshold_crossed" = "#/components/schemas/ThresholdCrossedEvent"),
    ("reservation.held" = "#/components/schemas/ReservationEvent"),
    ("reservation.refused" = "#/components/schemas/ReservationEvent"),
    ("reservation.confirmed" = "#/components/schemas/ReservationEvent"),
    ("reservation.released" = "#/components/schemas/ReservationEvent"),
    ("reservation.expired" = "#/components/schemas/ReservationEvent"),
    ("reservation.backorder_filled" = "#/components/schemas/ReservationEvent"),
)))]
pub enum Event {
    StockChanged(StockChangedEvent),
    ThresholdCrossed(ThresholdCrossedEvent),
    Reservation(ReservationEvent),
}

/// The `data:` of the last SSE message to a subscriber that fell behind
/// (`event: lagged`); the stream then ends. Reconnect with `Last-Event-ID`.
#[derive(ToSchema)]
pub struct LaggedNotice {
    /// Events the subscriber missed.
    pub missed: u64,
}

/// Recent threshold crossings, newest first.
#[derive(ToSchema)]
pub struct AlertList {
    pub alerts: Vec<ThresholdCrossedEvent>,
}

/// A Raft role, as the node sees itself in one shard's group.
#[derive(ToSchema)]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
    /// The shard stopped on this node (`stopped` says why).
    Stopped,
}

/// Why a shard stopped on this node. It stays stopped until a restart.
#[derive(ToSchema)]
pub struct StoppedShard {
    /// `fsync_error`, `no_space`, `too_many_open_files`, `io_error` (its
    /// storage failed), `invariant_broken` (a check of its state or of its
    /// answers failed), `raft_stopped` (its Raft core stopped otherwise).
    pub cause: String,
    /// What failed, in the words of the check or the operating system.
    pub detail: String,
    /// When, on this node's clock (Unix ms).
    pub at_unix_ms: u64,
}

/// One shard's Raft group, as this node sees it.
#[derive(ToSchema)]
pub struct ShardStatus {
    pub shard: u32,
    #[schema(required = true)]
    pub leader: Option<u64>,
    pub role: RaftRole,
    pub term: u64,
    #[schema(required = true)]
    pub last_log_index: Option<u64>,
    #[schema(required = true)]
    pub committed_index: Option<u64>,
    #[schema(required = true)]
    pub applied_index: Option<u64>,
    #[schema(required = true)]
    pub snapshot_index: Option<u64>,
    #[schema(required = true)]
    pub purged_index: Option<u64>,
    /// On the leader: entries each follower (by node id) is behind.
    pub lag: BTreeMap<String, u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The term of the leader that wrote the group's membership in force
    /// (0 for the initial one).
    pub membership_term: u64,
    /// Why the shard stopped on this node; `null` while it runs.
    #[schema(required = true)]
    pub stopped: Option<StoppedShard>,
}

/// Where one shard lives.
#[derive(ToSchema)]
pub struct PlacedShard {
    pub shard: u32,
    /// The nodes the placement rule gave the shard.
    pub voters: Vec<u64>,
    /// The one of them leaders move to (`cluster.rebalance_interval_ms`)
    /// when it is caught up; the rule spreads these within one per node.
    pub preferred_leader: u64,
    /// Whether this node has a group of the shard.
    pub hosted: bool,
    /// For a shard this node does not host: the leader it last heard of
    /// from a peer (`null` if none yet).
    #[schema(required = true)]
    pub leader_hint: Option<u64>,
}

/// One shard's state digest on this node.
#[derive(ToSchema)]
pub struct ShardDigest {
    pub shard: u32,
    /// The last log index this node applied to the shard.
    #[schema(required = true)]
    pub applied_index: Option<u64>,
    /// 128-bit hash of the shard's state, 32 lowercase hex digits.
    pub digest: String,
}

#[derive(ToSchema)]
pub struct Digests {
    /// This node.
    pub node_id: u64,
    pub shards: Vec<ShardDigest>,
}

#[derive(ToSchema)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: u64,
    /// Every node in any group's membership: node id to address.
    pub nodes: BTreeMap<String, String>,
    /// The groups of the shards this node hosts (every shard unless
    /// `replication_factor` places them on fewer nodes than there are).
    pub shards: Vec<ShardStatus>,
    /// Nodes each shard lives on (`cluster.replication_factor`, capped at
    /// the member count; every member when 0).
    pub replication_factor: u32,
    /// Where every shard lives: the nodes the placement rule gave it when
    /// this node started, whether this node hosts it, and (for a shard it
    /// does not) the leader it last heard of. A group's voters in `shards`
    /// are the truth; they differ from these only after a membership
    /// change.
    pub placement: Vec<PlacedShard>,
    /// The last or running node addition or removal started on this node
    /// (as in `GET /v1/admin/nodes`); `null` if none since it started.
    #[schema(required = true)]
    pub membership_change: Option<crate::routes::admin::MembershipChangeStatus>,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
}

#[derive(ToSchema)]
pub struct Health {
    #[schema(inline)]
    pub status: HealthStatus,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ReadyStatus {
    Ready,
}

#[derive(ToSchema)]
pub struct Ready {
    #[schema(inline)]
    pub status: ReadyStatus,
    pub node_id: u64,
}

/// `/readyz` when not ready: a problem (`shard_stopped` or `not_ready`) that
/// names what is wrong.
#[derive(ToSchema)]
pub struct NotReady {
    #[schema(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// `shard_stopped` while any shard stopped on this node, else `not_ready`.
    pub code: String,
    pub detail: String,
    /// This node (absent on `timeout`, as the next two).
    #[schema(nullable = false)]
    pub node_id: Option<u64>,
    /// Each shard stopped on this node, with its cause.
    #[schema(nullable = false)]
    pub stopped_shards: Option<Vec<ReadyStoppedShard>>,
    /// Shards with no leader this node knows (stopped ones not included).
    #[schema(nullable = false)]
    pub leaderless_shards: Option<Vec<u32>>,
}

/// A shard stopped on this node, as `/readyz` names it.
#[derive(ToSchema)]
pub struct ReadyStoppedShard {
    pub shard: u32,
    /// See `StoppedShard.cause`.
    pub cause: String,
    pub detail: String,
    pub at_unix_ms: u64,
}

/// A line a hold could not take (`insufficient_stock`).
#[derive(ToSchema)]
pub struct ShortLine {
    /// Index of the request line.
    pub line: u64,
    pub sku: String,
    /// Empty when the request line named no warehouse and no allocation
    /// covered it.
    pub warehouse: String,
    pub requested: u64,
    pub available: u64,
    pub exists: bool,
}

/// A failure (RFC 9457), sent as `application/problem+json`. `code` is
/// stable and machine-readable; each operation lists the codes it may
/// answer per status. Some codes add members.
#[derive(ToSchema)]
pub struct Problem {
    /// `https://tally.dev/problems/<code>`.
    #[schema(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    pub code: String,
    /// What went wrong, for people.
    pub detail: String,
    /// Input errors (`field_*`, `quantity_*`, `no_lines`, ...): the field at fault.
    #[schema(nullable = false)]
    pub field: Option<String>,
    /// `item_exists`: the item's version. `version_mismatch`: its version,
    /// `null` if it does not exist.
    pub version: Option<u64>,
    /// `version_mismatch`: the version `If-Match` named (absent when it named
    /// none, e.g. `"abc"`, or several).
    #[schema(nullable = false)]
    pub expected_version: Option<u64>,
    /// `below_reserved`: the current on hand.
    #[schema(nullable = false)]
    pub on_hand: Option<u64>,
    /// `below_reserved`: the units reserved.
    #[schema(nullable = false)]
    pub reserved: Option<u64>,
    /// `insufficient_stock`: every short line.
    #[schema(nullable = false)]
    pub lines: Option<Vec<ShortLine>>,
    /// `shard_stopped`: the shard that stopped on this node.
    #[schema(nullable = false)]
    pub shard: Option<u32>,
    /// `shard_stopped`: why (`fsync_error`, `no_space`, `too_many_open_files`,
    /// `io_error`, `invariant_broken`, `raft_stopped`).
    #[schema(nullable = false)]
    pub cause: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

    /// One routed (method, path) and the handler behind it (`module::fn`).
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    struct Route {
        method: String,
        path: String,
        handler: String,
    }

    /// The routes `app.rs` builds: every `.route("<path>", <method>(<handler>)
    /// [.<method>(<handler>)...])`. Anything else in a route's method list
    /// fails loudly, so the scan never silently misses a route.
    fn routed() -> Vec<Route> {
        let source: String = include_str!("app.rs")
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut routes = Vec::new();
        let mut rest = source.as_str();
        while let Some(start) = rest.find(".route(") {
            let call = &rest[start + ".route(".len()..];
            let inside = &call[..closing_paren(call)];
            rest = &call[inside.len()..];
            let inside = inside.trim_start();
            let Some(after_quote) = inside.strip_prefix('"') else {
                panic!("a .route( whose path is not a string literal: {inside}");
            };
            let path_end = after_quote.find('"').unwrap_or_else(|| panic!("unterminated path in {inside}"));
            let path = &after_quote[..path_end];
            let mut methods = after_quote[path_end + 1..].trim_start();
            methods = methods.strip_prefix(',').unwrap_or_else(|| panic!("no method router for {path}")).trim();
            while !methods.is_empty() {
                methods = methods.strip_prefix('.').unwrap_or(methods).trim_start();
                let open = methods.find('(').unwrap_or_else(|| panic!("cannot read `{methods}` for {path}"));
                let method = methods[..open].trim();
                assert!(METHODS.contains(&method), "route {path}: `{method}` is not a method this scan knows");
                let arguments = &methods[open + 1..];
                let close = closing_paren(arguments);
                let handler = arguments[..close].trim().to_owned();
                routes.push(Route { method: method.to_owned(), path: path.to_owned(), handler });
                methods = arguments[close + 1..].trim_start();
            }
        }
        routes
    }

    /// Index of the `)` that closes the text (which starts just inside a `(`).
    fn closing_paren(text: &str) -> usize {
        let mut depth = 0usize;
        let mut in_string = false;
        for (index, character) in text.char_indices() {
            match character {
                '"' => in_string = !in_string,
                '(' if !in_string => depth += 1,
                ')' if !in_string && depth == 0 => return index,
                ')' if !in_string => depth -= 1,
                _ => {}
            }
        }
        panic!("unbalanced parentheses in app.rs near: {}", &text[..text.len().min(80)])
    }

    fn documented(document: &Value) -> BTreeMap<(String, String), Value> {
        let paths = document["paths"].as_object().unwrap_or_else(|| panic!("the document has no paths"));
        let mut operations = BTreeMap::new();
        for (path, item) in paths {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    operations.insert((method.to_owned(), path.clone()), operation.clone());
                }
            }
        }
        operations
    }

    #[test]
    fn every_routed_method_and_path_is_documented_and_nothing_else() {
        let routes = routed();
        assert!(routes.len() >= 20, "the scan of app.rs found only {routes:?}");
        for open in ["/healthz", "/readyz"] {
            assert!(routes.iter().any(|r| r.method == "get" && r.path == open), "{open} is not routed");
        }
        let routed: BTreeSet<(String, String)> = routes.iter().map(|r| (r.method.clone(), r.path.clone())).collect();
        let documented: BTreeSet<(String, String)> = documented(&document()).into_keys().collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routed in app.rs but not in the document: {undocumented:?}");
        assert!(unrouted.is_empty(), "in the document but not routed in app.rs: {unrouted:?}");
    }

    /// The source of a handler (`module::fn`): its signature and body.
    fn handler_source(handler: &str) -> &'static str {
        let (module, name) = handler.split_once("::").unwrap_or_else(|| panic!("handler {handler} has no module"));
        let source = match module {
            "items" => include_str!("routes/items.rs"),
            "bulk" => include_str!("routes/bulk.rs"),
            "reservations" => include_str!("routes/reservations.rs"),
            "stream" => include_str!("routes/stream.rs"),
            "ops" => include_str!("routes/ops.rs"),
            "admin" => include_str!("routes/admin.rs"),
            "ledger" => include_str!("routes/ledger.rs"),
            "products" => include_str!("routes/products.rs"),
            "states" => include_str!("routes/states.rs"),
            "bundles" => include_str!("routes/bundles.rs"),
            other => panic!("no source known for module {other}"),
        };
        let signature = format!("pub async fn {name}(");
        let start = source.find(&signature).unwrap_or_else(|| panic!("no `{signature}` in routes/{module}.rs"));
        let body = &source[start + signature.len()..];
        // rustfmt closes a top-level fn with `}` in the first column.
        &body[..body.find("\n}").unwrap_or(body.len())]
    }

    #[test]
    fn each_route_documents_its_handler_and_the_role_that_handler_requires() {
        let operations = documented(&document());
        for route in routed() {
            let Some(operation) = operations.get(&(route.method.clone(), route.path.clone())) else {
                panic!("{} {} is routed but not documented", route.method, route.path);
            };
            let name = route.handler.rsplit("::").next().unwrap_or_default();
            let operation_id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                operation_id == name || operation_id == format!("{name}_by_{}", route.method),
                "{} {} is served by {} but documented as {operation_id}",
                route.method,
                route.path,
                route.handler
            );
            let source = handler_source(&route.handler);
            let required = source
                .split_once("principal.require(Role::")
                .map(|(_, rest)| rest.split(')').next().unwrap_or_default().to_lowercase());
            let documented_role = operation.get(ROLE_EXTENSION).and_then(Value::as_str).map(str::to_owned);
            assert_eq!(documented_role, required, "{} {}: documented role vs the handler's", route.method, route.path);
            let description = operation["description"].as_str().unwrap_or_default();
            match &required {
                Some(role) => {
                    assert!(description.contains(&format!("`{role}` role")), "{}: {description}", route.path);
                    assert!(operation.get("security").is_none(), "{} overrides the API key", route.path);
                }
                None => assert_eq!(operation["security"], serde_json::json!([]), "{} needs no key", route.path),
            }
            assert!(operation["summary"].as_str().is_some_and(|s| !s.is_empty() && !s.contains('\n')), "{route:?}");
        }
    }

    fn collect_refs(value: &Value, refs: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, member) in map {
                    match (key.as_str(), member) {
                        ("$ref", Value::String(target)) => {
                            refs.insert(target.clone());
                        }
                        _ => collect_refs(member, refs),
                    }
                }
            }
            Value::Array(values) => values.iter().for_each(|member| collect_refs(member, refs)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let document = document();
        let mut refs = BTreeSet::new();
        collect_refs(&document, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{target} does not point at a component schema"));
            assert!(document["components"]["schemas"].get(name).is_some(), "dangling $ref {target}");
        }
        let schemes = &document["components"]["securitySchemes"];
        for requirement in document["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().into_iter().flatten().map(|(name, _)| name) {
                assert!(schemes.get(scheme).is_some(), "security names an unknown scheme {scheme}");
            }
        }
    }

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let generated = serde_json::to_string_pretty(&document()).unwrap_or_else(|e| panic!("{e}"));
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed.trim_end() == generated.trim_end(),
            "docs/openapi.json is not the document the handlers generate; \
             run `cargo run -p tally-server -- openapi > docs/openapi.json` and commit it"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_at_the_crate_version() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
        let scheme = &document["components"]["securitySchemes"][API_KEY];
        assert_eq!((&scheme["type"], &scheme["scheme"]), (&serde_json::json!("http"), &serde_json::json!("bearer")));
    }

    fn enum_values(document: &Value, schema: &str) -> Vec<String> {
        document["components"]["schemas"][schema]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema} is not an enum schema"))
            .iter()
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn documented_names_are_the_engines() {
        use engine::item::{MovementReason as M, Status};
        use engine::reservation::ReservationState as R;
        let document = document();
        let names = |values: &[&str]| values.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let statuses = [Status::InStock, Status::LowStock, Status::OutOfStock].map(Status::as_str);
        assert_eq!(enum_values(&document, "ItemStatus"), names(&statuses));
        let states = [R::Held, R::Confirmed, R::Released, R::Expired].map(R::as_str);
        assert_eq!(enum_values(&document, "ReservationState"), names(&states));
        let reasons = engine::cmd::AdjustReason::ALL.map(engine::cmd::AdjustReason::as_str);
        assert_eq!(enum_values(&document, "AdjustReason"), names(&reasons));
        let quantity_states = engine::states::QuantityState::ALL.map(engine::states::QuantityState::as_str);
        assert_eq!(enum_values(&document, "QuantityState"), names(&quantity_states));
        // A new movement reason fails to compile here until it is listed (and documented).
        let movements = [
            M::Receive,
            M::Return,
            M::Damage,
            M::Loss,
            M::Count,
            M::Sale,
            M::Correction,
            M::Set,
            M::TransferIn,
            M::TransferOut,
            M::Confirmed,
        ];
        for movement in movements {
            match movement {
                M::Receive
                | M::Return
                | M::Damage
                | M::Loss
                | M::Count
                | M::Sale
                | M::Correction
                | M::Set
                | M::TransferIn
                | M::TransferOut
                | M::Confirmed => {}
            }
        }
        assert_eq!(enum_values(&document, "MovementReason"), names(&movements.map(M::as_str)));
    }

    #[test]
    fn the_item_schema_has_the_members_item_json_writes() {
        let item = engine::outcome::ItemView {
            sku: "SKU-1".into(),
            warehouse: "berlin".into(),
            on_hand: 10,
            reserved: 4,
            available: 6,
            low_stock_threshold: 2,
            status: engine::item::Status::InStock,
            version: 3,
            updated_at_ms: 1000,
            name: None,
            unit_price_minor: None,
            states: engine::states::StateLevels::default(),
        };
        let written: BTreeSet<String> =
            crate::routes::item_json(&item).as_object().into_iter().flatten().map(|(key, _)| key.clone()).collect();
        let schema = &document()["components"]["schemas"]["Item"];
        let properties: BTreeSet<String> =
            schema["properties"].as_object().into_iter().flatten().map(|(key, _)| key.clone()).collect();
        let required: BTreeSet<String> =
            schema["required"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        assert_eq!(properties, written);
        assert_eq!(required, written, "item_json writes every member, null or not");
    }
}
