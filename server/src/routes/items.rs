//! Items (SKU × warehouse): create or set, read with an ETag, list by
//! status, adjust, history, transfers between warehouses, and availability.
//!
//! The ETag of an item is its `version` in quotes. `If-Match` makes a write
//! conditional on it (412 `version_mismatch` if it moved, or if the ETags it
//! lists are well formed but none is a version, such as `"abc"`: RFC 9110
//! §13.1.1), `If-None-Match: *` makes a PUT create-only (412 `item_exists`).
//! A header that is not an ETag list at all is 400 `invalid_precondition`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::cmd::{Adjust, AdjustReason, AttrUpdate, Expect, SetStates, Transfer, UpsertItem};
use engine::ids::{CustomerId, ItemName, Note, Principal as PrincipalName, Quantity, Reference, Sku, Warehouse};
use engine::outcome::ItemView;
use engine::outcome::MovementView;
use engine::query::{ItemFilter, ItemPage, LineAvailability};
use engine::read::{AvailabilityAsk, Query, SkuAnswer};
use engine::{Command, Outcome, shard_of};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{Consistency, JsonBody, PathParams, QueryParams, item_json, limit_within, one_each, read_shard};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// `Some(None)` for an explicit `null` (clear), `None` when absent (keep).
pub(super) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutItem {
    /// Units on the shelf, reserved ones included; at most 10^15. Absent:
    /// unchanged (0 for a new item).
    pub on_hand: Option<u64>,
    /// Available units at or below which the item is `LOW_STOCK`; at most
    /// 10^15. Absent: unchanged (0 for a new item).
    pub low_stock_threshold: Option<u64>,
    /// Display name: 1 to 200 bytes, no control characters. `null` clears
    /// it; absent keeps it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// Unit price in minor units (cents), at most 10^15. `null` clears it;
    /// absent keeps it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub unit_price_minor: Option<Option<u64>>,
    /// Units on hand kept back, never available (Shopify's safety stock);
    /// at most 10^15. Reserved plus safety stock, damaged and quality
    /// control may not pass on_hand (409 `below_unsellable`). Absent:
    /// unchanged (0 for a new item).
    pub safety_stock: Option<u64>,
    /// Units ordered or in transit, not on hand yet; at most 10^15. Absent:
    /// unchanged. Receive them with a move from `incoming`.
    pub incoming: Option<u64>,
    /// When the incoming units are expected, RFC 3339. `null` clears it;
    /// absent keeps it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub incoming_expected_at: Option<Option<String>>,
    /// Units reservations may hold beyond stock (backorders, preorders);
    /// at most 10^15. A hold line takes what is available and backorders
    /// the rest up to this limit. Absent: unchanged (0 for a new item).
    pub backorder_limit: Option<u64>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// `linearizable` (the default) reads through the shard's leader;
    /// `stale` answers from this node's replica, which may lag.
    #[serde(default)]
    pub consistency: Consistency,
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

pub(super) fn item_response(status: StatusCode, item: &ItemView, consistency: Option<Consistency>) -> Response {
    let mut response = (status, axum::Json(item_json(item))).into_response();
    response.headers_mut().insert(header::ETAG, etag(item.version));
    if let Some(consistency) = consistency {
        response.headers_mut().insert("x-tally-consistency", HeaderValue::from_static(consistency.as_str()));
    }
    response
}

pub(crate) fn principal_name(principal: &Principal) -> Option<PrincipalName> {
    PrincipalName::new(principal.name.clone()).ok()
}

/// A caller's note, bounded by `api.note_bytes_max` (`field` names it in the
/// problem: a transfer calls it `reason`).
pub(super) fn note_of(state: &AppState, text: Option<String>, field: &str) -> ApiResult<Option<Note>> {
    let Some(text) = text else { return Ok(None) };
    let max = state.config.api.note_bytes_max;
    if text.len() > max {
        return Err(Problem::bad_request("field_too_long", format!("{field} is at most {max} bytes")));
    }
    Ok(Some(Note::new(text)?))
}

/// Most entity tags one `If-Match` may list.
const IF_MATCH_ETAGS_MAX: usize = 64;

/// What a PUT's conditional headers ask, before the item is looked at.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Precondition {
    /// Decided by the engine when the command applies.
    Expect(Expect),
    /// `If-Match` listed several versions: the item must be at one of them.
    AnyVersion(Vec<u64>),
    /// `If-Match` listed well-formed ETags, none of them a version (`"abc"`):
    /// no item can match, so the answer is 412 (RFC 9110 §13.1.1).
    Never,
}

/// The ETags of an `If-Match` list (RFC 9110 §8.8.3: `1#entity-tag`, each
/// `[W/]"opaque"`), as the bytes between the quotes; a bare `7` is taken
/// as `"7"`. `None` when the value is not such a list.
fn entity_tags(value: &[u8]) -> Option<Vec<&[u8]>> {
    let is_ows = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        // Empty list elements are allowed (RFC 9110 §5.6.1).
        while let Some((first, tail)) = rest.split_first()
            && (is_ows(first) || *first == b',')
        {
            rest = tail;
        }
        if rest.is_empty() {
            break;
        }
        if tags.len() == IF_MATCH_ETAGS_MAX {
            return None;
        }
        rest = rest.strip_prefix(b"W/").unwrap_or(rest);
        let (tag, tail) = match rest.strip_prefix(b"\"") {
            Some(quoted) => {
                let end = quoted.iter().position(|byte| *byte == b'"')?;
                let (tag, tail) = quoted.split_at(end);
                // etagc: %x21 / %x23-7E / obs-text.
                if !tag.iter().all(|byte| *byte == 0x21 || (0x23..=0x7e).contains(byte) || *byte >= 0x80) {
                    return None;
                }
                (tag, &tail[1..])
            }
            None => {
                let end = rest.iter().position(|byte| !byte.is_ascii_digit()).unwrap_or(rest.len());
                if end == 0 {
                    return None;
                }
                rest.split_at(end)
            }
        };
        tags.push(tag);
        rest = tail;
        while let Some((first, tail)) = rest.split_first()
            && is_ows(first)
        {
            rest = tail;
        }
        match rest.split_first() {
            None => break,
            Some((b',', tail)) => rest = tail,
            Some(_) => return None,
        }
    }
    (!tags.is_empty()).then_some(tags)
}

/// What `If-Match` asks: the versions it names, or never (only ETags that
/// are not versions). A value that is not a list of ETags is 400.
pub(super) fn parse_if_match(value: &HeaderValue) -> ApiResult<Precondition> {
    let tags = entity_tags(value.as_bytes()).ok_or_else(|| {
        Problem::bad_request(
            "invalid_precondition",
            format!("If-Match must be an ETag such as \"7\", or a list of at most {IF_MATCH_ETAGS_MAX}"),
        )
    })?;
    let mut versions: Vec<u64> = Vec::new();
    for tag in tags {
        let version = std::str::from_utf8(tag).ok().filter(|text| text.bytes().all(|b| b.is_ascii_digit()));
        if let Some(version) = version.and_then(|text| text.parse::<u64>().ok())
            && !versions.contains(&version)
        {
            versions.push(version);
        }
    }
    Ok(match versions.as_slice() {
        [] => Precondition::Never,
        [version] => Precondition::Expect(Expect::Version(*version)),
        _ => Precondition::AnyVersion(versions),
    })
}

fn precondition(headers: &HeaderMap) -> ApiResult<Precondition> {
    let if_match = headers.get(header::IF_MATCH);
    let if_none_match = headers.get(header::IF_NONE_MATCH);
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => {
            Err(Problem::bad_request("invalid_precondition", "send If-Match or If-None-Match, not both"))
        }
        (Some(value), None) if value.as_bytes() == b"*" => {
            Err(Problem::bad_request("invalid_precondition", "If-Match: * is not supported; send the item's ETag"))
        }
        (Some(value), None) => parse_if_match(value),
        (None, Some(value)) if value.as_bytes() == b"*" => Ok(Precondition::Expect(Expect::Absent)),
        (None, Some(_)) => Err(Problem::bad_request("invalid_precondition", "If-None-Match on a PUT must be *")),
        (None, None) => Ok(Precondition::Expect(Expect::Any)),
    }
}

/// The engine's expectation for a precondition. `If-Match` naming several
/// versions reads the item and expects its version if listed (the write
/// still applies only at it); one naming none answers 412 with the item's
/// version, as the engine's `version_mismatch` does.
pub(super) async fn expectation(
    state: &AppState,
    sku: &Sku,
    warehouse: &Warehouse,
    precondition: Precondition,
) -> ApiResult<Expect> {
    let versions = match precondition {
        Precondition::Expect(expect) => return Ok(expect),
        Precondition::AnyVersion(versions) => versions,
        Precondition::Never => Vec::new(),
    };
    let shard = shard_of(sku.as_str(), state.node.shard_count());
    let query = Query::Item { sku: sku.as_str().to_owned(), warehouse: warehouse.as_str().to_owned() };
    let item: Option<ItemView> = read_shard(state, shard, Consistency::Linearizable, query).await?;
    let current = item.map(|item| item.version);
    match current {
        Some(version) if versions.contains(&version) => Ok(Expect::Version(version)),
        _ => Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "version_mismatch",
            match current {
                Some(version) => format!("the item is at version {version}, which If-Match does not name"),
                None => "the item does not exist, so no If-Match ETag matches".to_owned(),
            },
        )
        .with_extra(json!({ "version": current }))),
    }
}

pub(super) fn attr<T>(update: Option<Option<T>>) -> AttrUpdate<T> {
    match update {
        None => AttrUpdate::Keep,
        Some(None) => AttrUpdate::Clear,
        Some(Some(value)) => AttrUpdate::Set(value),
    }
}

/// `PUT /v1/items/{sku}/{warehouse}`: create or set (admin).
#[utoipa::path(
    put,
    path = "/v1/items/{sku}/{warehouse}",
    tag = "items",
    summary = "Create an item, or set its levels and attributes",
    description = "Members left out keep their value. `If-None-Match: *` makes the PUT create-only; \
        `If-Match` applies it only if the item is still at that ETag.",
    extensions(("x-tally-role" = json!("admin"))),
    params(
        ("sku" = crate::openapi::Sku, Path, description = "The SKU."),
        ("warehouse" = crate::openapi::Warehouse, Path, description = "The warehouse."),
        ("If-Match" = Option<String>, Header, nullable = false,
            description = "Apply only at this ETag (`\"7\"`, `W/\"7\"` or `7`), or at one of a list of them \
            (`\"7\", \"8\"`, at most 64). A well-formed ETag that is no version of the item (`\"abc\"`) \
            never matches: 412."),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "`*`: create only."),
    ),
    request_body = PutItem,
    responses(
        (status = 200, description = "Updated (or already so).", body = crate::openapi::Item,
            headers(("ETag" = String, description = "The item's `version` in quotes."))),
        (status = 201, description = "Created.", body = crate::openapi::Item,
            headers(("ETag" = String, description = "The item's `version` in quotes."))),
        (status = 400, description = "`invalid_path`, `invalid_json`, `invalid_body`, `invalid_precondition` \
            (If-Match and If-None-Match together, `If-Match: *`, an If-Match that is not a list of ETags, \
            If-None-Match other than `*`), \
            `field_empty`, `field_too_long`, `field_bad_character` (sku, warehouse, name), `quantity_too_large`, \
            `invalid_time` (incoming_expected_at)."),
        (status = 409, description = "`below_reserved`: on_hand would drop below the units reserved; \
            `below_unsellable`: on_hand would drop below reserved plus safety stock, damaged and quality control; \
            `shard_full`: no room for another item."),
        (status = 412, description = "`item_exists` (If-None-Match: *); `version_mismatch` (If-Match names \
            no ETag the item has, e.g. `\"abc\"`, or the item does not exist)."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn put_item(
    State(state): Shared,
    principal: Principal,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PutItem>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let precondition = precondition(&headers)?;
    let name = match body.name {
        Some(Some(name)) => Some(Some(ItemName::new(name)?)),
        Some(None) => Some(None),
        None => None,
    };
    let mut upsert = UpsertItem {
        sku: Sku::new(sku)?,
        warehouse: Warehouse::new(warehouse)?,
        on_hand: body.on_hand,
        low_stock_threshold: body.low_stock_threshold,
        name: attr(name),
        unit_price_minor: attr(body.unit_price_minor),
        expect: Expect::Any,
        principal: principal_name(&principal),
    };
    let incoming_expected_at_ms = match body.incoming_expected_at {
        None => AttrUpdate::Keep,
        Some(None) => AttrUpdate::Clear,
        Some(Some(text)) => AttrUpdate::Set(super::ledger::parse_rfc3339_ms(&text).ok_or_else(|| {
            Problem::bad_request("invalid_time", "incoming_expected_at is an RFC 3339 time, e.g. 2026-12-24T09:00:00Z")
                .with_extra(json!({ "field": "incoming_expected_at" }))
        })?),
    };
    let states = SetStates {
        safety_stock: body.safety_stock,
        incoming: body.incoming,
        incoming_expected_at_ms,
        backorder_limit: body.backorder_limit,
        ..SetStates::keep(upsert.clone())
    };
    let sets_states = states != SetStates::keep(upsert.clone());
    // Bad input is 400 before any precondition is looked at.
    upsert.validate()?;
    states.validate()?;
    upsert.expect = expectation(&state, &upsert.sku, &upsert.warehouse, precondition).await?;
    // Quantity states travel in their own command, so a PUT without them
    // is the upsert it always was.
    let command = if sets_states {
        Command::SetStates(Box::new(SetStates { upsert, ..states }))
    } else {
        Command::UpsertItem(upsert)
    };
    match state.submit(command).await? {
        Outcome::Upserted { item, created, .. } => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(item_response(status, &item, None))
        }
        other => Err(state.unexpected(&other)),
    }
}

/// `GET /v1/items/{sku}/{warehouse}`.
#[utoipa::path(
    get,
    path = "/v1/items/{sku}/{warehouse}",
    tag = "items",
    summary = "Read an item",
    description = "With `If-None-Match` naming the current ETag, answers 304 without a body.",
    extensions(("x-tally-role" = json!("read"))),
    params(
        ("sku" = crate::openapi::Sku, Path, description = "The SKU."),
        ("warehouse" = crate::openapi::Warehouse, Path, description = "The warehouse."),
        ReadQuery,
        ("If-None-Match" = Option<String>, Header, nullable = false,
            description = "An ETag the caller has: 304 if the item is still at it."),
    ),
    responses(
        (status = 200, description = "The item.", body = crate::openapi::Item, headers(
            ("ETag" = String, description = "The item's `version` in quotes."),
            ("X-Tally-Consistency" = String, description = "The consistency the read had: `linearizable` or `stale`."),
        )),
        (status = 304, description = "The item is still at the ETag sent.",
            headers(("ETag" = String, description = "The item's `version` in quotes."))),
        (status = 400, description = "`invalid_path`, `invalid_query`, `field_empty`, `field_too_long`, \
            `field_bad_character` (sku, warehouse)."),
        (status = 404, description = "`item_not_found`."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn get_item(
    State(state): Shared,
    principal: Principal,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ReadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let sku = Sku::new(sku)?;
    let warehouse = Warehouse::new(warehouse)?;
    let shard = shard_of(sku.as_str(), state.node.shard_count());
    let one = Query::Item { sku: sku.as_str().to_owned(), warehouse: warehouse.as_str().to_owned() };
    let item: Option<ItemView> = read_shard(&state, shard, query.consistency, one).await?;
    let item = item.ok_or_else(|| Problem::not_found("item_not_found", "no such item"))?;
    let tag = etag(item.version);
    if headers.get(header::IF_NONE_MATCH).is_some_and(|value| value == tag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, tag);
        return Ok(response);
    }
    Ok(item_response(StatusCode::OK, &item, Some(query.consistency)))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SkuQuery {
    /// `linearizable` (the default) reads through the shard's leader;
    /// `stale` answers from this node's replica, which may lag.
    #[serde(default)]
    pub consistency: Consistency,
    /// Also show what this customer has of the SKU under its limit per
    /// customer (`customer`).
    pub customer_id: Option<String>,
}

/// Milliseconds to whole seconds, rounding up (limits are set in seconds).
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn limit_json(limit: Option<&engine::customer::CustomerLimit>) -> (Value, Value) {
    match limit {
        Some(limit) => (json!(limit.units), json!(limit.window_ms.map(seconds))),
        None => (Value::Null, Value::Null),
    }
}

/// `GET /v1/items/{sku}`: every warehouse of a SKU, with totals.
#[utoipa::path(
    get,
    path = "/v1/items/{sku}",
    tag = "items",
    summary = "Read every warehouse of a SKU, with totals and its limit per customer",
    description = "`limit_per_customer` and `limit_window_seconds` are the SKU's limit (null: none). \
        `warehouse_priority` is the SKU's warehouse order for `priority` allocation (empty: none). \
        With `customer_id`, `customer` shows what that customer has of the SKU: `held` (live holds), `sold` \
        (confirmed within the window) and `remaining` (null when the SKU has no limit).",
    extensions(("x-tally-role" = json!("read"))),
    params(("sku" = crate::openapi::Sku, Path, description = "The SKU."), SkuQuery),
    responses(
        (status = 200, description = "The SKU's items and their totals.", body = crate::openapi::SkuItems),
        (status = 400, description = "`invalid_path`, `invalid_query`, `field_empty`, `field_too_long`, \
            `field_bad_character` (sku, customer_id)."),
        (status = 404, description = "`item_not_found`: no warehouse stocks this SKU."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn get_sku(
    State(state): Shared,
    principal: Principal,
    PathParams(sku): PathParams<String>,
    QueryParams(query): QueryParams<SkuQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let sku = Sku::new(sku)?;
    let customer = query.customer_id.map(CustomerId::new).transpose()?;
    let shard = shard_of(sku.as_str(), state.node.shard_count());
    let one = Query::Sku { sku: sku.as_str().to_owned(), customer: customer.as_ref().map(|c| c.as_str().to_owned()) };
    let SkuAnswer { view, limit, usage, product, warehouse_priority: priority } =
        read_shard(&state, shard, query.consistency, one).await?;
    if view.items.is_empty() && product.is_none() {
        return Err(Problem::not_found("item_not_found", "no warehouse stocks this SKU and it has no product"));
    }
    let (units, window) = limit_json(limit.as_ref());
    let mut body = json!({
        "sku": sku.as_str(),
        "on_hand": view.on_hand,
        "reserved": view.reserved,
        "available": view.available,
        "limit_per_customer": units,
        "limit_window_seconds": window,
        "warehouse_priority": priority,
        "warehouses": view.items.iter().map(item_json).collect::<Vec<_>>(),
        "product": product.as_ref().map(super::products::product_json),
        "consistency": query.consistency.as_str(),
    });
    if let (Some(customer), Some(usage)) = (customer, usage) {
        body["customer"] = json!({
            "customer_id": customer.as_str(),
            "held": usage.held,
            "sold": usage.sold,
            "remaining": usage.remaining(),
        });
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSku {
    /// Most units of this SKU one customer may hold and buy (live holds plus
    /// confirmed sales), across all its warehouses; 1 to 10^15. `null`
    /// removes the limit (and forgets the sales it counted). Absent:
    /// removed too, unless the body sets only `warehouse_priority` or only
    /// product fields (then it is kept).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    pub limit_per_customer: Option<Option<u64>>,
    /// Sales older than this many seconds no longer count (1 to about ten
    /// years). Absent or `null`: sales count for as long as the limit is set.
    #[schema(minimum = 1)]
    pub limit_window_seconds: Option<u64>,
    /// Product name: 1 to 200 bytes, no control characters. In this and the
    /// next product fields `null` clears, absent keeps.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// Product description: 1 to 4096 bytes; line breaks and tabs allowed.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// Product category: 1 to 200 bytes, no control characters.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub category: Option<Option<String>>,
    /// Price in major units with at most two decimals, as a string
    /// (`"19.99"`) or a number (`19.99`); stored exactly as minor units, at
    /// most 10^15 of them.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, example = "19.99")]
    pub price: Option<Option<Value>>,
    /// ISO 4217 currency code: three uppercase letters.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, example = "EUR")]
    pub currency: Option<Option<String>>,
    /// Image URL: absolute `http://` or `https://`, at most 2048 bytes of
    /// printable ASCII.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub image_url: Option<Option<String>>,
    /// The order `priority` allocation tries the SKU's warehouses in, most
    /// preferred first (warehouses not listed come after, most available
    /// first). Each must stock the SKU; at most `api.warehouse_priority_max`
    /// (32), none twice. `null` or `[]` removes it. Absent: unchanged — and
    /// a body with only this field leaves the limit per customer unchanged.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<crate::openapi::Warehouse>>)]
    pub warehouse_priority: Option<Option<Vec<String>>>,
}

/// `PUT /v1/items/{sku}`: a SKU's settings (admin).
#[utoipa::path(
    put,
    path = "/v1/items/{sku}",
    tag = "items",
    summary = "Set a SKU's product record, or its limit per customer and warehouse priority",
    description = "With any product field (`name`, `description`, `category`, `price`, `currency`, `image_url`) \
        the PUT sets the SKU's product record: `null` clears a field, absent keeps it; it answers 201 with \
        `product` when this created the record, else 200. A SKU may have a product before any warehouse \
        stocks it. `created_at` / `updated_at` are log times of the first and the latest change. \
        Product fields go in a PUT of their own (400 `invalid_body` with limit or priority fields). \
        `warehouse_priority` sets the SKU's warehouse order for `priority` allocation (each \
        warehouse must stock the SKU; 400 `invalid_warehouse_priority` otherwise, or when one is listed twice \
        or the list is too long). A body with `warehouse_priority` and no limit field changes only the list; \
        any other body without product fields sets the limit as it says (absent fields: none). A hold of a limited SKU must name its `customer_id`, and is refused with 409 \
        `customer_limit` if the customer's live holds plus confirmed sales of the SKU (within the window), \
        plus the hold, would pass the limit. Checked and held in one atomic step on the SKU's shard, \
        however many requests of one customer race. The limit counts holds and sales made while it is \
        set; changing it keeps them. The SKU must be stocked in some warehouse.",
    extensions(("x-tally-role" = json!("admin"))),
    params(("sku" = crate::openapi::Sku, Path, description = "The SKU.")),
    request_body = PutSku,
    responses(
        (status = 200, description = "The SKU's limit now: `sku`, `limit_per_customer`, `limit_window_seconds`, \
            and `customers`, the customers it tracks, when the body set it; `warehouse_priority` when the body \
            named it; or, for product fields, `sku` and `product` \
            (see `GET /v1/items/{sku}`).", body = Value),
        (status = 201, description = "Product fields: the product record was created (`sku`, `product`).",
            body = Value),
        (status = 400, description = "`invalid_path`, `invalid_json`, `invalid_body`, `field_empty`, \
            `field_too_long`, `field_bad_character` (sku), `quantity_zero`, `quantity_too_large` \
            (limit_per_customer, limit_window_ms), `window_without_limit`, `invalid_warehouse_priority`, \
            `field_bad_character` (warehouse_priority); for product fields also \
            `field_bad_length` (currency), `invalid_price`, `field_bad_character` (image_url not http/https), \
            and `invalid_body` if limit or priority fields come with them."),
        (status = 404, description = "`item_not_found`: no warehouse stocks this SKU (limit only)."),
        (status = 409, description = "`shard_full`: no room for another product (`products_per_shard_max`)."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn put_sku(
    State(state): Shared,
    principal: Principal,
    PathParams(sku): PathParams<String>,
    JsonBody(body): JsonBody<PutSku>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let sku = Sku::new(sku)?;
    let product = super::products::ProductFields {
        name: body.name,
        description: body.description,
        category: body.category,
        price: body.price,
        currency: body.currency,
        image_url: body.image_url,
    };
    if !product.is_empty() {
        let others = body.limit_per_customer.is_some() || body.limit_window_seconds.is_some();
        if others || body.warehouse_priority.is_some() {
            return Err(Problem::bad_request(
                "invalid_body",
                "set product fields in a PUT of their own, apart from the limit per customer and warehouse priority",
            ));
        }
        let command = super::products::set_product(sku, product, &principal)?;
        return super::products::put_product(&state, command).await;
    }
    let limit = match (body.limit_per_customer.flatten(), body.limit_window_seconds) {
        (Some(units), window) => Some(engine::customer::CustomerLimit {
            units,
            window_ms: window.map(|seconds| seconds.saturating_mul(1000)),
        }),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(Problem::bad_request(
                "window_without_limit",
                "limit_window_seconds needs a limit_per_customer",
            ));
        }
    };
    let sets_limit =
        body.warehouse_priority.is_none() || body.limit_per_customer.is_some() || body.limit_window_seconds.is_some();
    // Both commands are checked before either is submitted.
    let limit_command = sets_limit.then(|| engine::cmd::SetCustomerLimit { sku: sku.clone(), limit });
    if let Some(command) = &limit_command {
        command.validate()?;
    }
    let mut answer = serde_json::Map::new();
    answer.insert("sku".into(), json!(sku.as_str()));
    // The list first: it is the one the shard can refuse for its content,
    // and then nothing of the body is applied.
    if let Some(list) = &body.warehouse_priority {
        let warehouses = super::allocation::priority_list(list.as_deref().unwrap_or_default(), &state.config.api)?;
        let command = engine::cmd::SetWarehousePriority { sku: sku.clone(), warehouses: Some(warehouses) };
        command.validate()?;
        match state.submit(Command::SetWarehousePriority(command)).await? {
            Outcome::WarehousePrioritySet { warehouses, .. } => {
                answer.insert("warehouse_priority".into(), json!(warehouses));
            }
            Outcome::Refused(refusal) => return Err(Problem::refusal(&refusal)),
            other => return Err(state.unexpected(&other)),
        }
    }
    if let Some(command) = limit_command {
        match state.submit(Command::SetCustomerLimit(command)).await? {
            Outcome::CustomerLimitSet { limit, customers, .. } => {
                let (units, window) = limit_json(limit.as_ref());
                answer.insert("limit_per_customer".into(), units);
                answer.insert("limit_window_seconds".into(), window);
                answer.insert("customers".into(), json!(customers));
            }
            other => return Err(state.unexpected(&other)),
        }
    }
    Ok(axum::Json(Value::Object(answer)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only items in this status.
    #[param(value_type = Option<crate::openapi::ItemStatus>)]
    pub status: Option<String>,
    /// Only items in this warehouse.
    pub warehouse: Option<String>,
    /// Items per page: 1 to `api.list_limit_max` (1000 by default); 100 if absent.
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `linearizable` (the default) or `stale`.
    #[serde(default)]
    pub consistency: Consistency,
}

fn parse_status(text: &str) -> ApiResult<engine::item::Status> {
    use engine::item::Status;
    [Status::InStock, Status::LowStock, Status::OutOfStock]
        .into_iter()
        .find(|status| status.as_str() == text)
        .ok_or_else(|| Problem::bad_request("invalid_status", "status is IN_STOCK, LOW_STOCK or OUT_OF_STOCK"))
}

/// A listing cursor: shard and position within it, as `<shard>.<position>`.
fn parse_cursor(text: &str, shards: u32) -> ApiResult<(u32, u32)> {
    let bad = || Problem::bad_request("invalid_cursor", "cursor must come from a previous page's next_cursor");
    let (shard, position) = text.split_once('.').ok_or_else(bad)?;
    let shard: u32 = shard.parse().map_err(|_| bad())?;
    let position: u32 = position.parse().map_err(|_| bad())?;
    if shard >= shards {
        return Err(bad());
    }
    Ok((shard, position))
}

/// `GET /v1/items?status=&warehouse=&limit=&cursor=`: a page in shard order.
#[utoipa::path(
    get,
    path = "/v1/items",
    tag = "items",
    summary = "List items, a page at a time",
    description = "Pages go in shard order. A page may be short, even empty, and still have a \
        `next_cursor`: follow it until it is `null`.",
    extensions(("x-tally-role" = json!("read"))),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of items.", body = crate::openapi::ItemPage),
        (status = 400, description = "`invalid_query`, `invalid_status`, `invalid_limit`, `invalid_cursor`."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn list_items(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let status = query.status.as_deref().map(parse_status).transpose()?;
    let api = &state.config.api;
    let limit = limit_within(query.limit, 100, api.list_limit_max)?;
    let shards = state.node.shard_count();
    let (mut shard, mut position) = match &query.cursor {
        Some(cursor) => parse_cursor(cursor, shards)?,
        None => (0, 0),
    };
    let mut items: Vec<Value> = Vec::new();
    let mut scanned_shards = 0;
    let next_cursor = loop {
        let filter = ItemFilter {
            status,
            warehouse: query.warehouse.clone(),
            cursor: position,
            limit: limit - u32::try_from(items.len()).unwrap_or(limit),
            scan_max: api.list_scan_max,
        };
        let page: ItemPage = read_shard(&state, shard, query.consistency, Query::Items(filter)).await?;
        items.extend(page.items.iter().map(item_json));
        scanned_shards += 1;
        match page.next_cursor {
            // The shard has more: stop here, the page is full or its scan budget spent.
            Some(next) => break Some(format!("{shard}.{next}")),
            None if shard + 1 >= shards => break None,
            None => {
                shard += 1;
                position = 0;
                if items.len() >= limit as usize || scanned_shards >= 4 {
                    break Some(format!("{shard}.0"));
                }
            }
        }
    };
    Ok(axum::Json(json!({
        "items": items,
        "next_cursor": next_cursor,
        "consistency": query.consistency.as_str(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    /// Units to add (positive) or take away (negative); not 0, at most 10^15 either way.
    pub delta: i64,
    /// Why the stock moves.
    #[schema(value_type = crate::openapi::AdjustReason)]
    pub reason: String,
    /// Free text recorded in the ledger: 1 to `api.note_bytes_max` bytes
    /// (256 by default), no control characters.
    pub note: Option<String>,
    /// The caller's document (delivery note, count sheet), recorded in the
    /// ledger: 1 to 128 bytes, no control characters.
    pub reference: Option<String>,
}

/// `POST /v1/items/{sku}/{warehouse}/adjustments` (admin).
#[utoipa::path(
    post,
    path = "/v1/items/{sku}/{warehouse}/adjustments",
    tag = "items",
    summary = "Add to or take from an item's on hand, with a reason",
    description = "Receipts, returns, write-offs, counts and sales made elsewhere. On hand never drops \
        below the units reserved.",
    extensions(("x-tally-role" = json!("admin"))),
    params(
        ("sku" = crate::openapi::Sku, Path, description = "The SKU."),
        ("warehouse" = crate::openapi::Warehouse, Path, description = "The warehouse."),
    ),
    request_body = AdjustBody,
    responses(
        (status = 200, description = "The item after the adjustment.", body = crate::openapi::Item,
            headers(("ETag" = String, description = "The item's `version` in quotes."))),
        (status = 400, description = "`invalid_path`, `invalid_json`, `invalid_body`, `invalid_reason`, \
            `quantity_zero`, `quantity_too_large`, `field_empty`, `field_too_long`, `field_bad_character`."),
        (status = 404, description = "`item_not_found`."),
        (status = 409, description = "`below_reserved`: on_hand would drop below the units reserved; \
            `below_unsellable`: below reserved plus safety stock, damaged and quality control."),
        (status = 422, description = "`quantity_overflow`: on_hand would exceed 10^15."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn adjust(
    State(state): Shared,
    principal: Principal,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<AdjustBody>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let reason: AdjustReason = body.reason.parse().map_err(|()| {
        let names: Vec<&str> = AdjustReason::ALL.iter().map(|r| r.as_str()).collect();
        Problem::bad_request("invalid_reason", format!("reason is one of {}", names.join(", ")))
    })?;
    if body.delta == 0 {
        return Err(Problem::bad_request("quantity_zero", "delta must not be 0"));
    }
    let note = note_of(&state, body.note, "note")?;
    let reference = body.reference.map(Reference::new).transpose()?;
    let command = Command::Adjust(Adjust {
        note,
        reference,
        sku: Sku::new(sku)?,
        warehouse: Warehouse::new(warehouse)?,
        delta: body.delta,
        reason,
        principal: principal_name(&principal),
    });
    match state.submit(command).await? {
        Outcome::Adjusted { item } => Ok(item_response(StatusCode::OK, &item, None)),
        other => Err(state.unexpected(&other)),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Movements to return: 1 to `api.history_limit_max` (255 by default); 50 if absent.
    #[param(minimum = 1)]
    pub limit: Option<usize>,
    /// `linearizable` (the default) or `stale`.
    #[serde(default)]
    pub consistency: Consistency,
}

/// `GET /v1/items/{sku}/{warehouse}/history`: recent movements, newest first.
#[utoipa::path(
    get,
    path = "/v1/items/{sku}/{warehouse}/history",
    tag = "items",
    summary = "Read an item's recent movements, newest first",
    description = "Movements are changes of on hand: adjustments, sets, transfers and confirmed sales. \
        Holds and releases move `reserved` only and are not listed.",
    extensions(("x-tally-role" = json!("read"))),
    params(
        ("sku" = crate::openapi::Sku, Path, description = "The SKU."),
        ("warehouse" = crate::openapi::Warehouse, Path, description = "The warehouse."),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "The item's movements.", body = crate::openapi::History),
        (status = 400, description = "`invalid_path`, `invalid_query`, `invalid_limit`, `field_empty`, \
            `field_too_long`, `field_bad_character`."),
        (status = 404, description = "`item_not_found`."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn history(
    State(state): Shared,
    principal: Principal,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let limit = limit_within(query.limit, 50, state.config.api.history_limit_max)?;
    let sku = Sku::new(sku)?;
    let warehouse = Warehouse::new(warehouse)?;
    let shard = shard_of(sku.as_str(), state.node.shard_count());
    let one = Query::History {
        sku: sku.as_str().to_owned(),
        warehouse: warehouse.as_str().to_owned(),
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
    };
    let movements: Option<Vec<MovementView>> = read_shard(&state, shard, query.consistency, one).await?;
    let movements = movements.ok_or_else(|| Problem::not_found("item_not_found", "no such item"))?;
    let movements: Vec<Value> = movements
        .iter()
        .map(|m| {
            json!({
                "at_ms": m.at_ms,
                "reason": m.reason.as_str(),
                "delta": m.delta,
                "on_hand_before": m.on_hand_before,
                "on_hand_after": m.on_hand_after,
                "by": m.who,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "sku": sku.as_str(), "warehouse": warehouse.as_str(), "movements": movements }))
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    #[schema(value_type = crate::openapi::Sku)]
    pub sku: String,
    /// The warehouse the units leave.
    #[schema(value_type = crate::openapi::Warehouse)]
    pub from: String,
    /// The warehouse the units arrive at (created if the SKU has none there).
    #[schema(value_type = crate::openapi::Warehouse)]
    pub to: String,
    #[schema(value_type = crate::openapi::Quantity)]
    pub quantity: u64,
    /// Why the units move, in the caller's words: recorded in the ledger on
    /// both sides (as `note`), 1 to `api.note_bytes_max` bytes. The item
    /// histories record the movement as `transfer_out` / `transfer_in`.
    pub reason: Option<String>,
    /// The caller's document (a transfer order), recorded on both sides: 1
    /// to 128 bytes, no control characters.
    pub reference: Option<String>,
}

/// `POST /v1/transfers` (admin): atomic, as both items live on one shard.
#[utoipa::path(
    post,
    path = "/v1/transfers",
    tag = "items",
    summary = "Move units of a SKU from one warehouse to another",
    description = "Atomic: both warehouses of a SKU live on one shard. Only available units move.",
    extensions(("x-tally-role" = json!("admin"))),
    request_body = TransferBody,
    responses(
        (status = 200, description = "Both items after the transfer.", body = crate::openapi::TransferResult),
        (status = 400, description = "`invalid_json`, `invalid_body`, `field_empty`, `field_too_long` (also a \
            reason over 256 bytes), `field_bad_character`, `quantity_zero`, `quantity_too_large`, `same_warehouse`."),
        (status = 404, description = "`item_not_found`: the SKU is not stocked in `from`."),
        (status = 409, description = "`insufficient_stock`: `from` has fewer units available; `shard_full`."),
        (status = 422, description = "`quantity_overflow`: `to` would exceed 10^15."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn transfer(
    State(state): Shared,
    principal: Principal,
    JsonBody(body): JsonBody<TransferBody>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let note = note_of(&state, body.reason.clone(), "reason")?;
    let reference = body.reference.map(Reference::new).transpose()?;
    let command = Command::Transfer(Transfer {
        note,
        reference,
        sku: Sku::new(body.sku)?,
        from: Warehouse::new(body.from)?,
        to: Warehouse::new(body.to)?,
        quantity: Quantity::new(body.quantity)?,
        principal: principal_name(&principal),
    });
    match state.submit(command).await? {
        Outcome::Transferred { from, to } => Ok((
            StatusCode::OK,
            axum::Json(json!({
                "from": item_json(&from),
                "to": item_json(&to),
                "quantity": body.quantity,
                "reason": body.reason,
            })),
        )
            .into_response()),
        other => Err(state.unexpected(&other)),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityBody {
    /// 1 to `api.availability_lines_max` lines (1000 by default).
    pub lines: Vec<AvailabilityRequestLine>,
    /// `linearizable` (the default) or `stale`.
    #[serde(default)]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityRequestLine {
    #[schema(value_type = crate::openapi::Sku)]
    pub sku: String,
    /// Absent: any of the SKU's warehouses (their total).
    #[schema(value_type = Option<crate::openapi::Warehouse>)]
    pub warehouse: Option<String>,
    #[schema(value_type = crate::openapi::Quantity)]
    pub quantity: u64,
}

/// `POST /v1/availability`: per line, what is available and whether it is
/// enough (lines naming the same item, or the same SKU without a warehouse,
/// are summed); and whether every line is.
#[utoipa::path(
    post,
    path = "/v1/availability",
    tag = "items",
    summary = "Ask whether lines of stock are available, without holding them",
    description = "Per line: what is available and whether it is enough. Lines naming the same item, or \
        the same SKU without a warehouse, are summed. Nothing is held: a reservation made next may still \
        be short.",
    extensions(("x-tally-role" = json!("read"))),
    request_body = AvailabilityBody,
    responses(
        (status = 200, description = "Each line's availability, in request order.",
            body = crate::openapi::Availability),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_lines`, `field_empty`, \
            `field_too_long`, `field_bad_character`, `quantity_zero`, `quantity_too_large`."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn availability(
    State(state): Shared,
    principal: Principal,
    JsonBody(body): JsonBody<AvailabilityBody>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let max = state.config.api.availability_lines_max;
    if body.lines.is_empty() || body.lines.len() > max {
        return Err(Problem::bad_request("invalid_lines", format!("send 1 to {max} lines")));
    }
    let shards = state.node.shard_count();
    let mut by_shard: BTreeMap<u32, Vec<(usize, AvailabilityRequestLine)>> = BTreeMap::new();
    for (index, line) in body.lines.iter().enumerate() {
        Sku::new(line.sku.clone())?;
        if let Some(warehouse) = &line.warehouse {
            Warehouse::new(warehouse.clone())?;
        }
        Quantity::new(line.quantity)?;
        by_shard.entry(shard_of(&line.sku, shards)).or_default().push((index, line.clone()));
    }
    let reads = by_shard.into_iter().map(|(shard, lines)| {
        let state = Arc::clone(&state);
        async move {
            let asks = lines
                .iter()
                .map(|(_, line)| AvailabilityAsk {
                    sku: line.sku.clone(),
                    warehouse: line.warehouse.clone(),
                    quantity: line.quantity,
                })
                .collect();
            let answers: Vec<LineAvailability> =
                read_shard(&state, shard, body.consistency, Query::Availability(asks)).await?;
            let answers = one_each(lines.len(), answers)?;
            let indexes = lines.iter().map(|(index, _)| *index);
            ApiResult::Ok(
                indexes.zip(answers).map(|(index, a)| (index, a.available, a.exists, a.enough)).collect::<Vec<_>>(),
            )
        }
    });
    let answers = futures_util::future::join_all(reads).await;
    let mut lines = vec![Value::Null; body.lines.len()];
    let mut all_available = true;
    for answer in answers {
        for (index, available, exists, enough) in answer? {
            let line = &body.lines[index];
            all_available &= enough;
            lines[index] = json!({
                "sku": line.sku,
                "warehouse": line.warehouse,
                "quantity": line.quantity,
                "available": available,
                "exists": exists,
                "enough": enough,
            });
        }
    }
    Ok(axum::Json(json!({
        "all_available": all_available,
        "lines": lines,
        "consistency": body.consistency.as_str(),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &'static str) -> Result<Precondition, &'static str> {
        parse_if_match(&HeaderValue::from_static(value)).map_err(|problem| problem.code)
    }

    #[test]
    fn if_match_names_versions_quoted_weak_or_bare() {
        for value in ["\"7\"", "W/\"7\"", "7", " \"7\" ", "\"7\", \"7\""] {
            assert_eq!(parsed(value), Ok(Precondition::Expect(Expect::Version(7))), "{value}");
        }
        assert_eq!(parsed("\"7\", \"abc\", W/\"9\""), Ok(Precondition::AnyVersion(vec![7, 9])));
    }

    #[test]
    fn well_formed_etags_that_are_no_version_never_match() {
        for value in ["\"abc\"", "W/\"abc\"", "\"\"", "\"7a\"", "\"-1\"", "\"99999999999999999999\"", "\"a\", \"b\""] {
            assert_eq!(parsed(value), Ok(Precondition::Never), "{value}");
        }
    }

    #[test]
    fn if_match_that_is_not_an_etag_list_is_invalid_precondition() {
        for value in ["abc", "\"abc", "\"a b\"", "\"7\" \"8\"", "W/", ",", "", "7a", "\"7\";"] {
            assert_eq!(parsed(value), Err("invalid_precondition"), "{value:?}");
        }
        let many = vec!["\"1\""; IF_MATCH_ETAGS_MAX + 1].join(",");
        let value = HeaderValue::from_str(&many).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_if_match(&value).map_err(|p| p.code), Err("invalid_precondition"));
    }
}
