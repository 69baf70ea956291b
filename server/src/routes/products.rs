//! SKU product records and deletes: the product fields of
//! `PUT /v1/items/{sku}` (name, description, category, price, currency,
//! image URL), their JSON shape in reads, and
//! `DELETE /v1/items/{sku}/{warehouse}` and `DELETE /v1/items/{sku}`.
//!
//! Prices travel in major units with at most two decimals, as a string
//! (`"19.99"`) or a JSON number (`19.99`), and are stored exactly as minor
//! units (1999); responses give both (`"price": "19.99"`,
//! `"price_minor": 1999`). The rules of the record and of a delete live in
//! the engine (`engine/src/product.rs`, `engine/src/cmd/delete.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::cmd::{DeleteItem, DeleteSku, Expect, SetProduct};
use engine::ids::{ItemName, PRICE_MINOR_MAX, Sku, Warehouse};
use engine::product::ProductView;
use engine::{Command, Outcome};
use serde_json::{Value, json};

use super::items::{Precondition, attr, expectation, parse_if_match, principal_name};
use super::{PathParams, rfc3339_ms};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// The product fields of a SKU PUT: `None` absent (keep), `Some(None)`
/// `null` (clear), `Some(Some(_))` set.
#[derive(Debug, Default)]
pub struct ProductFields {
    pub name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub category: Option<Option<String>>,
    pub price: Option<Option<Value>>,
    pub currency: Option<Option<String>>,
    pub image_url: Option<Option<String>>,
}

impl ProductFields {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.category.is_none()
            && self.price.is_none()
            && self.currency.is_none()
            && self.image_url.is_none()
    }
}

/// A price in major units (`"19.99"`, `19.99`, `20`) as minor units:
/// digits, then at most two decimals; no sign, no exponent. 400
/// `invalid_price` otherwise, `quantity_too_large` past the maximum.
pub fn parse_price(value: &Value) -> ApiResult<u64> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => return Err(invalid_price("price must be a decimal string such as \"19.99\" or a number")),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text.as_str(), ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
        return Err(invalid_price(format!("price {text:?} is not a decimal number such as 19.99")));
    }
    // A JSON number may print trailing zeros ("20.0"): only significant
    // decimals count.
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 2 {
        return Err(invalid_price(format!("price {text:?} has more than two decimals")));
    }
    let too_large = || {
        Problem::from(engine::InputError::TooLarge {
            field: engine::Field::Price,
            value: u64::MAX,
            max: PRICE_MINOR_MAX,
        })
    };
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let cents: u64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    let minor = whole.checked_mul(100).and_then(|minor| minor.checked_add(cents)).ok_or_else(too_large)?;
    if minor > PRICE_MINOR_MAX {
        return Err(Problem::from(engine::InputError::TooLarge {
            field: engine::Field::Price,
            value: minor,
            max: PRICE_MINOR_MAX,
        }));
    }
    Ok(minor)
}

fn invalid_price(detail: impl Into<String>) -> Problem {
    Problem::bad_request("invalid_price", detail.into())
}

/// Minor units as major units with two decimals: 1999 → `"19.99"`.
pub fn format_price(minor: u64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

pub fn product_json(product: &ProductView) -> Value {
    json!({
        "sku": product.sku,
        "name": product.name,
        "description": product.description,
        "category": product.category,
        "price": product.price_minor.map(format_price),
        "price_minor": product.price_minor,
        "currency": product.currency,
        "image_url": product.image_url,
        "version": product.version,
        "created_at": rfc3339_ms(product.created_at_ms),
        "created_at_ms": product.created_at_ms,
        "updated_at": rfc3339_ms(product.updated_at_ms),
        "updated_at_ms": product.updated_at_ms,
    })
}

/// Builds the engine command for a SKU PUT's product fields; bad input is
/// 400 before anything is submitted.
pub fn set_product(sku: Sku, fields: ProductFields, principal: &Principal) -> ApiResult<SetProduct> {
    let name = match fields.name {
        Some(Some(name)) => Some(Some(ItemName::new(name)?)),
        Some(None) => Some(None),
        None => None,
    };
    let price = match fields.price {
        Some(Some(value)) => Some(Some(parse_price(&value)?)),
        Some(None) => Some(None),
        None => None,
    };
    let command = SetProduct {
        sku,
        name: attr(name),
        description: attr(fields.description),
        category: attr(fields.category),
        price_minor: attr(price),
        currency: attr(fields.currency),
        image_url: attr(fields.image_url),
        principal: principal_name(principal),
    };
    command.validate()?;
    Ok(command)
}

/// Submits a SKU PUT's product fields: 201 with the product if it was
/// created, 200 otherwise.
pub async fn put_product(state: &AppState, command: SetProduct) -> ApiResult<Response> {
    match state.submit(Command::SetProduct(command)).await? {
        Outcome::ProductSet { product, created, .. } => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, axum::Json(json!({ "sku": product.sku, "product": product_json(&product) }))).into_response())
        }
        other => Err(state.unexpected(&other)),
    }
}

/// `DELETE /v1/items/{sku}/{warehouse}`: delete an item nothing holds (admin).
#[utoipa::path(
    delete,
    path = "/v1/items/{sku}/{warehouse}",
    tag = "items",
    summary = "Delete an item that no live hold reserves",
    description = "Takes the item's `on_hand` to 0 (a ledger movement and a `stock_changed` event with cause \
        `delete`) and removes it from every read, listing, export and availability answer. Reservations that \
        ended still read with its SKU and warehouse. A later PUT creates a fresh item at version 1. \
        Deleting again answers 404. `If-Match` deletes only at that ETag.",
    extensions(("x-tally-role" = json!("admin"))),
    params(
        ("sku" = crate::openapi::Sku, Path, description = "The SKU."),
        ("warehouse" = crate::openapi::Warehouse, Path, description = "The warehouse."),
        ("If-Match" = Option<String>, Header, nullable = false,
            description = "Delete only at this ETag (`\"7\"`), or at one of a list of them."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "`invalid_path`, `invalid_precondition`, `field_empty`, `field_too_long`, \
            `field_bad_character` (sku, warehouse)."),
        (status = 404, description = "`item_not_found` (never existed, or already deleted)."),
        (status = 409, description = "`item_has_holds`: live holds reserve units of the item; `holds` and \
            `reserved` say how many."),
        (status = 412, description = "`version_mismatch`: the item is not at an ETag If-Match names."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn delete_item(
    State(state): Shared,
    principal: Principal,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let sku = Sku::new(sku)?;
    let warehouse = Warehouse::new(warehouse)?;
    if headers.get(header::IF_NONE_MATCH).is_some() {
        return Err(Problem::bad_request("invalid_precondition", "a DELETE takes If-Match, not If-None-Match"));
    }
    let precondition = match headers.get(header::IF_MATCH) {
        None => Precondition::Expect(Expect::Any),
        Some(value) if value.as_bytes() == b"*" => {
            return Err(Problem::bad_request("invalid_precondition", "If-Match: * is not supported; send the ETag"));
        }
        Some(value) => parse_if_match(value)?,
    };
    let expect_version = match expectation(&state, &sku, &warehouse, precondition).await? {
        Expect::Version(version) => Some(version),
        Expect::Any | Expect::Absent => None,
    };
    let command = DeleteItem { sku, warehouse, expect_version, principal: principal_name(&principal) };
    command.validate()?;
    match state.submit(Command::DeleteItem(command)).await? {
        Outcome::Deleted { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(state.unexpected(&other)),
    }
}

/// `DELETE /v1/items/{sku}`: delete a SKU's product and every item (admin).
#[utoipa::path(
    delete,
    path = "/v1/items/{sku}",
    tag = "items",
    summary = "Delete a SKU: its product record and every warehouse's item",
    description = "All or nothing, in one step of the SKU's shard: refused with 409 `item_has_holds` if any \
        live hold reserves units of any of its items. Each item is deleted as \
        `DELETE /v1/items/{sku}/{warehouse}` deletes one. Deleting again answers 404. The SKU's limit per \
        customer, if any, stays.",
    extensions(("x-tally-role" = json!("admin"))),
    params(("sku" = crate::openapi::Sku, Path, description = "The SKU.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "`invalid_path`, `field_empty`, `field_too_long`, `field_bad_character` (sku)."),
        (status = 404, description = "`item_not_found`: the SKU has no item and no product."),
        (status = 409, description = "`item_has_holds`: live holds reserve units of its items."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn delete_sku(
    State(state): Shared,
    principal: Principal,
    PathParams(sku): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let command = DeleteSku { sku: Sku::new(sku)?, principal: principal_name(&principal) };
    command.validate()?;
    match state.submit(Command::DeleteSku(command)).await? {
        Outcome::Deleted { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(state.unexpected(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(value: Value) -> Result<u64, &'static str> {
        parse_price(&value).map_err(|problem| problem.code)
    }

    #[test]
    fn prices_are_exact_minor_units() {
        assert_eq!(price(json!("19.99")), Ok(1999));
        assert_eq!(price(json!(19.99)), Ok(1999));
        assert_eq!(price(json!(20)), Ok(2000));
        assert_eq!(price(json!("0.5")), Ok(50));
        assert_eq!(price(json!(0.1)), Ok(10));
        assert_eq!(price(json!("7")), Ok(700));
        assert_eq!(price(json!(20.0)), Ok(2000));
    }

    #[test]
    fn prices_that_are_not_plain_decimals_are_invalid() {
        for bad in [json!("19.999"), json!("-1"), json!("1e3"), json!(""), json!("1."), json!(".5"), json!(true)] {
            assert_eq!(price(bad.clone()), Err("invalid_price"), "{bad}");
        }
        assert_eq!(price(json!(-2)), Err("invalid_price"));
        assert_eq!(price(json!("99999999999999999999")), Err("quantity_too_large"));
        assert_eq!(price(json!("10000000000000.01")), Err("quantity_too_large"));
    }

    #[test]
    fn prices_print_with_two_decimals() {
        assert_eq!(format_price(1999), "19.99");
        assert_eq!(format_price(5), "0.05");
        assert_eq!(format_price(100), "1.00");
    }
}
