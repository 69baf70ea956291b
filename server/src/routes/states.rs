//! Quantity states of an item: `POST /v1/items/{sku}/{warehouse}/moves`
//! moves units between `available`, `safety_stock`, `damaged`,
//! `quality_control` and out of `incoming` (Shopify's
//! `inventoryMoveQuantities`). Safety stock and incoming are also set
//! outright by the item's PUT. The rules live in the engine
//! (`engine/src/cmd/move_quantity.rs`); this handler parses and maps.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use engine::cmd::MoveQuantity;
use engine::ids::{Quantity, Reference, Sku, Warehouse};
use engine::states::QuantityState;
use engine::{Command, Outcome};
use serde::Deserialize;
use serde_json::json;

use super::items::{item_response, note_of, principal_name};
use super::{JsonBody, PathParams};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The state the units leave.
    #[schema(value_type = crate::openapi::QuantityState)]
    pub from: String,
    /// The state the units go to; never `incoming`, never `from`.
    #[schema(value_type = crate::openapi::QuantityState)]
    pub to: String,
    /// Units to move: 1 to 10^15.
    pub quantity: u64,
    /// Free text recorded in the ledger: 1 to `api.note_bytes_max` bytes
    /// (256 by default), no control characters.
    pub note: Option<String>,
    /// The caller's document (inspection report, delivery note), recorded
    /// in the ledger: 1 to 128 bytes, no control characters.
    pub reference: Option<String>,
}

fn parse_state(text: &str, field: &str) -> ApiResult<QuantityState> {
    text.parse().map_err(|()| {
        let names: Vec<&str> = QuantityState::ALL.iter().map(|s| s.as_str()).collect();
        Problem::bad_request("invalid_state", format!("{field} is one of {}", names.join(", ")))
            .with_extra(json!({ "field": field }))
    })
}

/// `POST /v1/items/{sku}/{warehouse}/moves` (admin).
#[utoipa::path(
    post,
    path = "/v1/items/{sku}/{warehouse}/moves",
    tag = "items",
    summary = "Move units between quantity states",
    description = "`available → damaged` (found broken), `quality_control → available` (passed inspection), \
        `available → safety_stock`, and out of `incoming` into any on-hand state (received: on_hand grows). \
        Between on-hand states on_hand does not change; `available` is on_hand less reserved, safety stock, \
        damaged and quality control. Every move is a `move` entry in the ledger. Write damaged units off \
        with an adjustment.",
    extensions(("x-tally-role" = json!("admin"))),
    params(
        ("sku" = crate::openapi::Sku, Path, description = "The SKU."),
        ("warehouse" = crate::openapi::Warehouse, Path, description = "The warehouse."),
    ),
    request_body = MoveBody,
    responses(
        (status = 200, description = "The item after the move.", body = crate::openapi::Item,
            headers(("ETag" = String, description = "The item's `version` in quotes."))),
        (status = 400, description = "`invalid_path`, `invalid_json`, `invalid_body`, `invalid_state` (an \
            unknown state, a move to the same state or into `incoming`), `quantity_zero`, `quantity_too_large`, \
            `field_empty`, `field_too_long`, `field_bad_character`."),
        (status = 404, description = "`item_not_found`."),
        (status = 409, description = "`insufficient_stock`: the source state has fewer units (`has`)."),
        (status = 422, description = "`quantity_overflow`: on_hand would exceed 10^15."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn move_quantity(
    State(state): Shared,
    principal: Principal,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<MoveBody>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let from = parse_state(&body.from, "from")?;
    let to = parse_state(&body.to, "to")?;
    let note = note_of(&state, body.note, "note")?;
    let command = MoveQuantity {
        sku: Sku::new(sku)?,
        warehouse: Warehouse::new(warehouse)?,
        from,
        to,
        quantity: Quantity::new(body.quantity)?,
        principal: principal_name(&principal),
        note,
        reference: body.reference.map(Reference::new).transpose()?,
    };
    command.validate()?;
    match state.submit(Command::MoveQuantity(command)).await? {
        Outcome::Moved { item } => Ok(item_response(StatusCode::OK, &item, None)),
        other => Err(state.unexpected(&other)),
    }
}
