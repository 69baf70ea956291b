//! Reservations: hold stock for a shopper, confirm the sale, give it back,
//! extend; by id or by order; one at a time or in batches.
//!
//! A reservation whose lines all live on one shard is one `Hold` command:
//! atomic in the shard's actor (the fast path). Lines on several shards
//! are the parts of the saga in `cluster::saga` (DESIGN §4): hold on each
//! shard for the same TTL, counted on each shard's own log time (so parts
//! may end a few milliseconds apart; the reservation shows the earliest);
//! if any part is refused, release the others and answer 409 with every
//! short line.
//!
//! A line with no warehouse is sent as such: the engine allocates it inside
//! the hold (`api.allocation`, most available first by default, split across
//! warehouses when none has enough alone), so there is no read before the
//! hold and no retry. The answer is built from the hold's outcome, which
//! carries the lines as held, for a first write and a replay alike.
//!
//! Every write answers from its own outcomes, never from a read after it:
//! confirm, release and extend outcomes carry the summary, the lines and the
//! idempotency key of each part; a hold's key is the request's. One function
//! (`reservation_out`) turns parts into the body, for reads and writes
//! alike, so a write answers the bytes a read after it would show.
//!
//! Reservation ids (32 hex digits) carry their home shard in the first two
//! bytes (so confirm and release route without a lookup) and, in the third,
//! whether the reservation spans shards (then its parts are found on every
//! shard). The rest is random, or — when the request has an
//! `Idempotency-Key` or an `order_id` — a hash of it and the caller's API
//! key name, so a retry makes the same id and the engine answers it with the
//! first outcome instead of holding twice.
//!
//! Idempotency keys and order ids are the caller's: the engine key is scoped
//! to the API key and the kind (`crate::idempotency`), so another API key's
//! same key or order is another reservation, and `/v1/orders/{order_id}`
//! finds the caller's order only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cluster::{SagaOutcome, SagaPart};
use engine::cmd::{Confirm, ConfirmLine, ConfirmPart, Deadline, Extend, Hold, HoldLine, Release};
use engine::ids::{CustomerId, IdempotencyKey, Quantity, ReservationId, Sku, Warehouse};
use engine::outcome::{ReservationView, ShortLine};
use engine::read::Query;
use engine::reservation::ReservationState;
use engine::{Command, Outcome, Refusal, shard_of};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::items::ReadQuery;
use super::{JsonBody, OptionalJsonBody, PathParams, QueryParams, read_shard, rfc3339_ms};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::idempotency::{self, Kind};
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// Third byte of an id: the reservation's parts live on several shards.
const SPANS_SHARDS: u8 = 1;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationBody {
    /// 1 to `engine.lines_per_hold_max` lines (64 by default).
    pub lines: Vec<RequestLine>,
    /// How long to hold: 1 to `api.ttl_seconds_max` (86400 by default);
    /// `api.ttl_seconds_default` (600) if absent.
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<u64>,
    /// The order the reservation is for: one reservation per order, found
    /// again under `/v1/orders/{order_id}`; a retry with the same order id
    /// answers the first. 1 to 128 printable ASCII characters (`!` to `~`).
    /// Scoped to the API key: another key's same order id is another order.
    pub order_id: Option<String>,
    /// Confirm at once: hold and sell in one request.
    #[serde(default)]
    pub commit: bool,
    /// The shopper: 1 to 128 printable ASCII characters (`!` to `~`), e.g.
    /// an account id or e-mail address. Required for SKUs with a
    /// `limit_per_customer` (`PUT /v1/items/{sku}`); their units count
    /// against this customer's limit. Not scoped to the API key.
    pub customer_id: Option<String>,
    /// How lines without a warehouse are allocated: `most_available` (most
    /// available warehouse first) or `priority` (`warehouse_priority`'s
    /// order, else the SKU's, then the rest most available first). Absent:
    /// `priority` if `warehouse_priority` is given, else the server's
    /// `api.allocation` (`most_available` by default).
    pub allocation: Option<super::allocation::AllocationName>,
    /// The warehouse order for `priority`, most preferred first; overrides
    /// each SKU's own list. Names that do not stock a line's SKU are skipped
    /// for it. At most `api.warehouse_priority_max` (32) names, none twice.
    #[schema(value_type = Option<Vec<crate::openapi::Warehouse>>)]
    pub warehouse_priority: Option<Vec<String>>,
    /// Whether a line without a warehouse may be filled from several
    /// warehouses. Default `true`. `false`: each line comes whole from one
    /// warehouse (the first in allocation order that has enough), or is
    /// short (409 `insufficient_stock`, `available` the most one warehouse
    /// has for it).
    pub split: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    /// A SKU, or a bundle's SKU (`PUT /v1/bundles/{sku}`): then every
    /// component is held, `quantity` times its units per bundle, all or
    /// none.
    #[schema(value_type = crate::openapi::Sku)]
    pub sku: String,
    /// Absent: allocated from the SKU's warehouses by the request's
    /// `allocation` (most available first by default), split across
    /// warehouses when none has enough alone unless `split` is false.
    #[schema(value_type = Option<crate::openapi::Warehouse>)]
    pub warehouse: Option<String>,
    #[schema(value_type = crate::openapi::Quantity)]
    pub quantity: u64,
}

/// One request line as sent to its shard. With no warehouse, the engine
/// allocates it (`Hold::allocation`) in the same step as the hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// Index of the request line it came from.
    request_line: usize,
    sku: Sku,
    warehouse: Option<Warehouse>,
    quantity: Quantity,
}

/// What creating a reservation answered.
#[derive(Debug)]
pub struct Created {
    pub body: ReservationOut,
    pub replayed: bool,
}

/// A request's checked settings.
struct Checked {
    /// Who asks: the API key's name, recorded with the hold.
    principal: Option<engine::ids::Principal>,
    ttl_ms: u64,
    /// The engine's idempotency key: the order or the caller's key, scoped
    /// to the caller (`crate::idempotency`).
    engine_key: Option<IdempotencyKey>,
    /// What the reservation id is derived from, when the request can be
    /// retried.
    seed: Option<String>,
}

/// What one try at a reservation came to.
enum Attempt {
    Done(Created),
    /// The request's bundle lines (request line, components), to expand.
    Bundles(Vec<(usize, Vec<engine::bundle::Component>)>),
}

/// The request line of each of a part's lines.
fn line_origins(lines: &[Line]) -> Vec<usize> {
    lines.iter().map(|line| line.request_line).collect()
}

/// A reservation's part on one shard: one `Hold` of the request's lines
/// that live there.
struct PartHold {
    shard: u32,
    command: Command,
    lines: Vec<Line>,
}

/// A request made ready to submit: its id, the engine's idempotency key
/// its parts carry, and one part per shard, in shard order.
struct Prepared {
    id: ReservationId,
    key: Option<IdempotencyKey>,
    parts: Vec<PartHold>,
}

/// A batch request whose lines all live on one shard: one command of that
/// shard's list.
struct Listed {
    /// Its index in the batch.
    index: usize,
    id: ReservationId,
    key: Option<IdempotencyKey>,
    part: PartHold,
}

/// 13 unpredictable bytes for a reservation id without a system call per
/// hold: SipHash, keyed once per process from the OS's randomness (std's
/// `RandomState`), of a process-wide counter, twice with two keys.
fn random_bytes() -> [u8; 13] {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: OnceLock<[std::collections::hash_map::RandomState; 2]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let keys = KEYS.get_or_init(|| [std::collections::hash_map::RandomState::new(), Default::default()]);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut wide = [0u8; 16];
    for (half, key) in wide.chunks_exact_mut(8).zip(keys) {
        let mut hasher = key.build_hasher();
        hasher.write_u64(count);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    let mut bytes = [0u8; 13];
    bytes.copy_from_slice(&wide[..13]);
    bytes
}

fn make_id(home: u32, spans_shards: bool, seed: Option<&str>) -> ReservationId {
    let mut unique = [0u8; 14];
    unique[0] = if spans_shards { SPANS_SHARDS } else { 0 };
    let rest: [u8; 13] = match seed {
        Some(seed) => {
            let digest = Sha256::digest(format!("tally-reservation\0{seed}").as_bytes());
            let mut rest = [0u8; 13];
            rest.copy_from_slice(&digest[..13]);
            rest
        }
        None => random_bytes(),
    };
    unique[1..].copy_from_slice(&rest);
    ReservationId::from_parts(u16::try_from(home).unwrap_or(0), unique)
}

pub(crate) fn spans_shards(id: &ReservationId) -> bool {
    id.as_bytes()[2] == SPANS_SHARDS
}

pub fn parse_id(text: &str) -> ApiResult<ReservationId> {
    text.parse::<ReservationId>()
        .map_err(|_| Problem::bad_request("invalid_reservation_id", "a reservation id is 32 hex digits"))
}

fn short_lines_problem(short: &[(usize, &str, &str, ShortLine)]) -> Problem {
    let lines: Vec<Value> = short
        .iter()
        .map(|(request_line, sku, warehouse, line)| {
            json!({
                "line": request_line,
                "sku": sku,
                "warehouse": warehouse,
                "requested": line.requested,
                "available": line.available,
                "exists": line.exists,
            })
        })
        .collect();
    Problem::new(StatusCode::CONFLICT, "insufficient_stock", format!("{} line(s) short", lines.len()))
        .with_extra(json!({ "lines": lines }))
}

/// A reservation as the API answers it (`openapi::Reservation`), serialized
/// straight to bytes: no `serde_json::Value` tree on the path of every hold.
#[derive(Debug, Clone, Serialize)]
pub struct ReservationOut {
    id: HexId,
    state: &'static str,
    lines: Vec<LineOut>,
    created_at_ms: u64,
    expires_at_ms: u64,
    expires_at: String,
    ended_at_ms: Option<u64>,
    order_id: Option<String>,
    /// Only for a reservation whose parts live on several shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<PartOut>>,
    /// Only in the answer to a request with bundle lines: the components
    /// each became (`lines` are the components as held).
    #[serde(skip_serializing_if = "Option::is_none")]
    bundles: Option<Vec<super::bundles::BundleOut>>,
    /// Only in the answer of a create: each request line, in request order,
    /// with where its units came from (`routes::allocation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    request_lines: Option<Vec<super::allocation::RequestLineOut>>,
}

#[derive(Debug, Clone, Serialize)]
struct LineOut {
    sku: String,
    warehouse: String,
    quantity: u64,
    /// Units of `quantity` held beyond stock, waiting for it (0: filled
    /// from stock).
    backordered: u64,
}

impl From<engine::outcome::LineView> for LineOut {
    fn from(line: engine::outcome::LineView) -> Self {
        Self { sku: line.sku, warehouse: line.warehouse, quantity: line.quantity, backordered: line.backordered }
    }
}

/// One shard's part of a reservation that spans shards.
#[derive(Debug, Clone, Serialize)]
struct PartOut {
    state: &'static str,
    lines: usize,
}

/// A reservation id as its 32 hex digits.
#[derive(Debug, Clone, Copy)]
struct HexId(ReservationId);

impl Serialize for HexId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl ReservationOut {
    /// The body of one merged view; `parts` is for `reservation_out` to set.
    fn new(view: ReservationView) -> Self {
        let summary = view.summary;
        let order_id = view
            .idempotency_key
            .as_deref()
            .and_then(|key| idempotency::caller_key(Kind::Order, key))
            .map(str::to_owned);
        Self {
            id: HexId(summary.id),
            state: summary.state.as_str(),
            lines: view.lines.into_iter().map(LineOut::from).collect(),
            created_at_ms: summary.created_at_ms,
            expires_at_ms: summary.deadline_ms,
            expires_at: rfc3339_ms(summary.deadline_ms),
            ended_at_ms: summary.ended_at_ms,
            order_id,
            parts: None,
            bundles: None,
            request_lines: None,
        }
    }

    /// The JSON response with `status`.
    fn respond(&self, status: StatusCode) -> Response {
        json_response(status, self)
    }
}

/// `value` as a JSON response, serialized straight to bytes.
fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    const JSON: HeaderValue = HeaderValue::from_static("application/json");
    match serde_json::to_vec(value) {
        Ok(bytes) => (status, [(axum::http::header::CONTENT_TYPE, JSON)], bytes).into_response(),
        // Strings, integers and values only: serializing cannot fail.
        Err(error) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()).into_response(),
    }
}

/// A part's lines as its `Hold` command has them.
fn hold_lines(lines: &[Line]) -> Vec<HoldLine> {
    lines
        .iter()
        .map(|line| HoldLine { sku: line.sku.clone(), warehouse: line.warehouse.clone(), quantity: line.quantity })
        .collect()
}

/// A part's request lines with where their units came from.
fn part_request_lines(
    lines: &[Line],
    held: &[engine::outcome::LineView],
    allocations: &[engine::outcome::Allocated],
) -> Vec<super::allocation::RequestLineOut> {
    let request_line = |index: usize| lines.get(index).map_or(index, |line| line.request_line);
    super::allocation::request_lines(request_line, &hold_lines(lines), held, allocations)
}

/// The engine's short lines (indexes into a part's lines) as the request's.
fn short_lines<'a>(lines: &'a [Line], shorts: &[ShortLine]) -> Vec<(usize, &'a str, &'a str, ShortLine)> {
    shorts
        .iter()
        .filter_map(|short| {
            lines.get(short.line as usize).map(|line| {
                let warehouse = line.warehouse.as_ref().map_or("", |w| w.as_str());
                (line.request_line, line.sku.as_str(), warehouse, *short)
            })
        })
        .collect()
}

/// The body of a reservation from its parts, one per shard it was found on,
/// in shard order: what a read found, or what the writes answered. Reads and
/// writes both answer through here, so a write answers the bytes a read
/// after it would show. Lines are the parts' lines in shard order; the
/// deadline is the earliest (parts share one); id, creation, end and key are
/// the first part's. The state is the parts' common state; parts that
/// disagree (a saga cut short) show as the least advanced non-held state.
/// A reservation whose id says it spans shards lists each part (`parts`).
/// `None` when there is no part.
fn reservation_out(id: ReservationId, parts: impl IntoIterator<Item = ReservationView>) -> Option<ReservationOut> {
    let spans = spans_shards(&id);
    let part_out = |part: &ReservationView| PartOut { state: part.summary.state.as_str(), lines: part.lines.len() };
    let mut parts = parts.into_iter();
    let mut merged = parts.next()?;
    let mut part_states = if spans { vec![part_out(&merged)] } else { Vec::new() };
    let first_state = merged.summary.state;
    let mut other_state = None;
    for part in parts {
        if spans {
            part_states.push(part_out(&part));
        }
        if part.summary.state != first_state {
            other_state.get_or_insert(part.summary.state);
        }
        merged.summary.deadline_ms = merged.summary.deadline_ms.min(part.summary.deadline_ms);
        merged.lines.extend(part.lines);
    }
    // Mixed: report a terminal state that is not CONFIRMED first, as the
    // reservation as a whole did not complete.
    if first_state == ReservationState::Confirmed
        && let Some(other) = other_state
    {
        merged.summary.state = other;
    }
    let mut out = ReservationOut::new(merged);
    out.parts = spans.then_some(part_states);
    Some(out)
}

fn reservation_not_found() -> Problem {
    Problem::not_found("reservation_not_found", "no such reservation")
}

impl AppState {
    fn ttl_ms(&self, ttl_seconds: Option<u64>) -> ApiResult<u64> {
        let api = &self.config.api;
        let ttl = ttl_seconds.unwrap_or(api.ttl_seconds_default);
        if ttl == 0 || ttl > api.ttl_seconds_max {
            return Err(Problem::bad_request(
                "ttl_out_of_range",
                format!("ttl_seconds must be in 1..={}", api.ttl_seconds_max),
            ));
        }
        Ok(ttl * 1000)
    }

    /// The shards a reservation's parts may live on: its home, or every
    /// shard if it spans shards.
    fn part_shards(&self, id: ReservationId) -> ApiResult<Vec<u32>> {
        let shards: Vec<u32> =
            if spans_shards(&id) { (0..self.node.shard_count()).collect() } else { vec![u32::from(id.home_shard())] };
        if shards.iter().any(|&shard| shard >= self.node.shard_count()) {
            return Err(reservation_not_found());
        }
        Ok(shards)
    }

    /// Reads every part of a reservation, in shard order.
    async fn reservation_parts(&self, id: ReservationId, read: super::Consistency) -> ApiResult<Vec<ReservationView>> {
        let shards = self.part_shards(id)?;
        let reads = shards.into_iter().map(|shard| read_shard(self, shard, read, Query::Reservation(id)));
        let mut parts = Vec::new();
        for answer in futures_util::future::join_all(reads).await {
            let part: Option<ReservationView> = answer?;
            parts.extend(part);
        }
        Ok(parts)
    }

    async fn reservation_body(&self, id: ReservationId, read: super::Consistency) -> ApiResult<ReservationOut> {
        let parts = self.reservation_parts(id, read).await?;
        reservation_out(id, parts).ok_or_else(reservation_not_found)
    }

    /// Creates a reservation: the one path of `POST /v1/reservations`, the
    /// batch endpoint and orders. Lines on one shard are one `Hold` command
    /// (allocation included, atomic in the shard); lines on several shards
    /// are the saga's parts. The answer comes from the write's outcomes.
    ///
    /// A request naming bundles is made twice: the shard of a bundle
    /// refuses the first with its components, before it holds anything or
    /// reads the key; the second holds the components (`routes::bundles`).
    pub async fn create_reservation(
        &self,
        body: &ReservationBody,
        principal: &Principal,
        key: Option<&str>,
    ) -> ApiResult<Created> {
        let found = match self.create_once(body, principal, key).await? {
            Attempt::Done(created) => return Ok(created),
            Attempt::Bundles(found) => found,
        };
        self.create_expanded(body, &found, principal, key).await
    }

    /// `body` with the bundle lines `found` replaced by their components.
    async fn create_expanded(
        &self,
        body: &ReservationBody,
        found: &[(usize, Vec<engine::bundle::Component>)],
        principal: &Principal,
        key: Option<&str>,
    ) -> ApiResult<Created> {
        let expanded = super::bundles::expand(body, found, self.config.engine.lines_per_hold_max)?;
        match self.create_once(&expanded.body, principal, key).await {
            Ok(Attempt::Done(mut created)) => {
                // Component lines name the request line of their bundle.
                for line in created.body.request_lines.iter_mut().flatten() {
                    line.line = expanded.origin.get(line.line).copied().unwrap_or(line.line);
                }
                created.body.bundles = Some(expanded.bundles);
                Ok(created)
            }
            // A component is a bundle itself (defined after its bundle).
            Ok(Attempt::Bundles(inner)) => {
                let lines: Vec<usize> =
                    inner.iter().map(|(line, _)| expanded.origin.get(*line).copied().unwrap_or(*line)).collect();
                let skus: Vec<&str> = inner
                    .iter()
                    .filter_map(|(line, _)| expanded.body.lines.get(*line))
                    .map(|l| l.sku.as_str())
                    .collect();
                Err(Problem::new(
                    StatusCode::CONFLICT,
                    "bundle_nested",
                    format!("bundle components {} are bundles themselves; bundles do not nest", skus.join(", ")),
                )
                .with_extra(json!({ "lines": lines, "skus": skus })))
            }
            Err(problem) => Err(super::bundles::renumber(problem, &expanded)),
        }
    }

    /// One try at a reservation: made, or the bundle lines to expand.
    async fn create_once(
        &self,
        body: &ReservationBody,
        principal: &Principal,
        key: Option<&str>,
    ) -> ApiResult<Attempt> {
        let checked = self.check_request(body, principal, key)?;
        let Prepared { id, key, mut parts } = self.prepare(body, checked)?;
        let split = body.split.unwrap_or(true);
        if parts.len() == 1
            && let Some(part) = parts.pop()
        {
            let outcome = self.submit_to(part.shard, part.command).await?;
            if let Outcome::Refused(Refusal::BundleLines { lines }) = &outcome {
                return Ok(Attempt::Bundles(super::bundles::found_lines(lines, &line_origins(&part.lines))));
            }
            return self.held(outcome, &part.lines, key, id, split).map(Attempt::Done);
        }
        // Across shards, bundles are looked for first (on this node's
        // copies), so that no part holds, or takes the key, for a request
        // that is then made again expanded. A bundle defined since is
        // refused by its shard below, which the saga undoes.
        let found = self.bundle_lines_of(&parts).await?;
        if !found.is_empty() {
            return Ok(Attempt::Bundles(found));
        }
        let (saga_parts, part_lines): (Vec<SagaPart>, Vec<Vec<Line>>) =
            parts.into_iter().map(|part| (SagaPart { shard: part.shard, hold: part.command }, part.lines)).unzip();
        let saga = self.node.reserve_across_shards(id, saga_parts, body.commit).await?;
        match &saga {
            SagaOutcome::Held { holds, confirms } => {
                holds.iter().chain(confirms.iter().flatten().flatten()).for_each(|outcome| self.count(outcome));
            }
            SagaOutcome::Undone { holds } => holds.iter().flatten().for_each(|outcome| self.count(outcome)),
        }
        match saga {
            SagaOutcome::Held { holds, confirms } => {
                let replayed = holds.iter().all(|hold| matches!(hold, Outcome::Held { replayed: true, .. }));
                // Each part's hold says what its lines took (a confirm's
                // outcome does not), so the request lines come from holds.
                let mut request_lines = Vec::with_capacity(body.lines.len());
                for (lines, hold) in part_lines.iter().zip(&holds) {
                    if let Outcome::Held { lines: held, allocations, .. } = hold {
                        request_lines.extend(part_request_lines(lines, held, allocations));
                    }
                }
                request_lines.sort_by_key(|line| line.line);
                let parts = match confirms {
                    // Confirmed at once: the confirms answer the parts as they ended.
                    Some(confirms) => self.ended(confirms)?,
                    None => holds
                        .into_iter()
                        .filter_map(|hold| match hold {
                            Outcome::Held { reservation, lines, .. } => Some(ReservationView {
                                summary: reservation,
                                lines,
                                idempotency_key: key.clone().map(IdempotencyKey::into_string),
                            }),
                            _ => None,
                        })
                        .collect(),
                };
                let mut body = reservation_out(id, parts).ok_or_else(|| self.unexpected(&Outcome::Ticked))?;
                body.request_lines = Some(request_lines);
                Ok(Attempt::Done(Created { body, replayed }))
            }
            SagaOutcome::Undone { holds } => {
                let mut short: Vec<(usize, &str, &str, ShortLine)> = Vec::new();
                let mut failure: Option<Problem> = None;
                let mut found = Vec::new();
                for (lines, answer) in part_lines.iter().zip(holds) {
                    match answer {
                        Ok(Outcome::Refused(Refusal::BundleLines { lines: refused })) => {
                            found.extend(super::bundles::found_lines(&refused, &line_origins(lines)));
                        }
                        Ok(Outcome::Held { reservation, .. }) if reservation.id == id => {}
                        // The part's shard knew the key: it made another
                        // reservation (the saga undid this one).
                        Ok(Outcome::Held { .. }) => failure = Some(Problem::refusal(&Refusal::ReservationIdInUse)),
                        Ok(Outcome::Refused(Refusal::InsufficientStock { lines: shorts })) => {
                            short.extend(short_lines(lines, &shorts));
                        }
                        Ok(Outcome::Refused(refusal)) => failure = Some(Problem::refusal(&refusal)),
                        Ok(other) => failure = Some(self.unexpected(&other)),
                        Err(error) => failure = Some(Problem::from(error)),
                    }
                }
                if !found.is_empty() {
                    found.sort_by_key(|(line, _)| *line);
                    return Ok(Attempt::Bundles(found));
                }
                Err(if short.is_empty() {
                    failure.unwrap_or_else(|| self.unexpected(&Outcome::Ticked))
                } else {
                    short.sort_by_key(|(line, ..)| *line);
                    short_lines_problem(&short)
                })
            }
        }
    }

    /// The lines of `parts` that name a bundle, by request line, from this
    /// node's copies of their shards.
    async fn bundle_lines_of(&self, parts: &[PartHold]) -> ApiResult<Vec<(usize, Vec<engine::bundle::Component>)>> {
        let mut found = Vec::new();
        for part in parts {
            let skus: Vec<String> = part.lines.iter().map(|line| line.sku.as_str().to_owned()).collect();
            let query = Query::BundlesOf(skus);
            let definitions: Vec<Option<Vec<engine::bundle::Component>>> =
                read_shard(self, part.shard, super::Consistency::Stale, query).await?;
            let definitions = super::one_each(part.lines.len(), definitions)?;
            let lines = part.lines.iter().map(|line| line.request_line);
            found.extend(lines.zip(definitions).filter_map(|(at, definition)| Some((at, definition?))));
        }
        found.sort_by_key(|(line, _)| *line);
        Ok(found)
    }

    /// What every reservation request is checked for before anything is
    /// submitted.
    fn check_request(&self, body: &ReservationBody, principal: &Principal, key: Option<&str>) -> ApiResult<Checked> {
        let ttl_ms = self.ttl_ms(body.ttl_seconds)?;
        if body.lines.is_empty() {
            return Err(Problem::bad_request("no_lines", "a reservation needs at least one line"));
        }
        let max = self.config.engine.lines_per_hold_max as usize;
        if body.lines.len() > max {
            return Err(Problem::bad_request("too_many_lines", format!("a reservation has at most {max} lines")));
        }
        let key = key.map(|key| idempotency::engine_key(Kind::Key, principal, key).map(|_| key)).transpose()?;
        let order = body.order_id.as_deref();
        let engine_key = match (order, key) {
            (Some(order), _) => Some(idempotency::engine_key(Kind::Order, principal, order)?),
            (None, Some(key)) => Some(idempotency::engine_key(Kind::Key, principal, key)?),
            (None, None) => None,
        };
        let seed = key
            .map(|key| idempotency::id_seed(Kind::Key, principal, key))
            .or_else(|| order.map(|order| idempotency::id_seed(Kind::Order, principal, order)));
        Ok(Checked { ttl_ms, engine_key, seed, principal: super::items::principal_name(principal) })
    }

    /// The request's id and its parts, one `Hold` per shard its lines live
    /// on. Each part of a reservation across shards is held for the TTL from
    /// when its shard applies it; the reservation shows the earliest.
    fn prepare(&self, body: &ReservationBody, checked: Checked) -> ApiResult<Prepared> {
        let shards = self.node.shard_count();
        let mut by_shard: BTreeMap<u32, Vec<Line>> = BTreeMap::new();
        for (index, line) in body.lines.iter().enumerate() {
            let sku = Sku::new(line.sku.clone())?;
            let warehouse = line.warehouse.clone().map(Warehouse::new).transpose()?;
            let quantity = Quantity::new(line.quantity)?;
            let shard = shard_of(sku.as_str(), shards);
            by_shard.entry(shard).or_default().push(Line { request_line: index, sku, warehouse, quantity });
        }
        let spans = by_shard.len() > 1;
        let home = shard_of(&body.lines[0].sku, shards);
        let id = make_id(home, spans, checked.seed.as_deref());
        // Each part's deadline counts from its own shard's log time: shards
        // keep their own (cluster `clock`), and a deadline taken off another
        // clock could be ahead of the part's shard and end it early.
        let deadline = Deadline::AfterMs(checked.ttl_ms);
        let allocation =
            super::allocation::rule(body.allocation, body.warehouse_priority.as_deref(), body.split, &self.config.api)?;
        let customer = body.customer_id.clone().map(CustomerId::new).transpose()?;
        let parts = by_shard
            .into_iter()
            .map(|(shard, lines)| {
                let command = Command::Hold(Hold {
                    principal: checked.principal.clone(),
                    id,
                    lines: lines
                        .iter()
                        .map(|line| HoldLine {
                            sku: line.sku.clone(),
                            warehouse: line.warehouse.clone(),
                            quantity: line.quantity,
                        })
                        .collect(),
                    deadline,
                    idempotency_key: checked.engine_key.clone(),
                    // Parts of a saga are confirmed once every part holds.
                    confirm: body.commit && !spans,
                    allocation: allocation.clone(),
                    customer: customer.clone(),
                });
                PartHold { shard, command, lines }
            })
            .collect();
        Ok(Prepared { id, key: checked.engine_key, parts })
    }

    /// The answer to a one-shard reservation, from its outcome: the lines
    /// as held (allocation and splitting included), for a first write and a
    /// replay alike; `key`, the request's, is the reservation's (a replay by
    /// key found it, a replay by id requires it).
    ///
    /// `split` is the request's: a hold confirmed at once answers the
    /// confirm's outcome, without the hold's allocations, so they are
    /// attributed from its lines as a replay's are (`engine::cmd::attribute`).
    fn held(
        &self,
        outcome: Outcome,
        lines: &[Line],
        key: Option<IdempotencyKey>,
        id: ReservationId,
        split: bool,
    ) -> ApiResult<Created> {
        let (reservation, replayed, held, allocations) = match outcome {
            Outcome::Held { reservation, replayed, lines: held, allocations } => {
                (reservation, replayed, held, allocations)
            }
            Outcome::Confirmed { reservation, replayed, lines: held, .. } => {
                let allocations = engine::cmd::attribute(&hold_lines(lines), &held, split);
                (reservation, replayed, held, allocations)
            }
            Outcome::Refused(Refusal::InsufficientStock { lines: shorts }) => {
                return Err(short_lines_problem(&short_lines(lines, &shorts)));
            }
            Outcome::Refused(refusal) => return Err(Problem::refusal(&refusal)),
            other => return Err(self.unexpected(&other)),
        };
        // A key the shard knows replays its reservation whatever this
        // request asks. One made by a request of another shape (its first
        // line on another shard, or across shards) has another id: the key
        // made a different reservation.
        if reservation.id != id {
            return Err(Problem::refusal(&Refusal::ReservationIdInUse));
        }
        let request_lines = part_request_lines(lines, &held, &allocations);
        let view = ReservationView {
            summary: reservation,
            lines: held,
            idempotency_key: key.map(IdempotencyKey::into_string),
        };
        let mut body = reservation_out(id, [view]).ok_or_else(|| self.unexpected(&Outcome::Ticked))?;
        body.request_lines = Some(request_lines);
        Ok(Created { body, replayed })
    }

    /// Confirms, releases or extends every part of a reservation, and
    /// answers from the parts' outcomes alone. No read after the write: one
    /// could fail once the write is done (a 503 `unavailable` would tell the
    /// client nothing was applied, chaos FINDINGS.md #2) or show a later
    /// write instead of this one.
    async fn end(&self, id: ReservationId, make: impl Fn(u32) -> Command) -> ApiResult<ReservationOut> {
        let submits = self.part_shards(id)?.into_iter().map(|shard| self.submit_to(shard, make(shard)));
        let parts = self.ended(futures_util::future::join_all(submits).await)?;
        reservation_out(id, parts).ok_or_else(reservation_not_found)
    }

    /// Confirms a reservation, in full or (`body.lines`) in part. Lines go
    /// to the shard of their SKU. A reservation across shards is read first
    /// and its lines checked, so a line over what is held, or a part with
    /// units still backordered, is refused before any part sells (each
    /// shard checks again as it applies).
    async fn confirm_reservation(
        &self,
        id: ReservationId,
        who: Option<engine::ids::Principal>,
        body: Option<ConfirmBody>,
    ) -> ApiResult<Response> {
        let mut lines: Vec<(u32, ConfirmLine)> = Vec::new();
        for line in body.map(|body| body.lines).unwrap_or_default() {
            let sku = Sku::new(line.sku)?;
            let shard = shard_of(sku.as_str(), self.node.shard_count());
            let warehouse = Warehouse::new(line.warehouse)?;
            if line.quantity > engine::ids::QUANTITY_MAX {
                return Err(Problem::input(&engine::InputError::TooLarge {
                    field: engine::Field::Quantity,
                    value: line.quantity,
                    max: engine::ids::QUANTITY_MAX,
                }));
            }
            lines.push((shard, ConfirmLine { sku, warehouse, quantity: line.quantity }));
        }
        if spans_shards(&id) {
            let parts = self.reservation_parts(id, super::Consistency::Linearizable).await?;
            if !lines.is_empty() {
                check_confirm_lines(&parts, &lines)?;
            }
            // Each shard refuses to confirm a part with units still
            // backordered; checked first so no other part sells meanwhile.
            // A backorder only ever shrinks, so what this read finds filled
            // stays filled.
            let backordered: u64 = parts
                .iter()
                .filter(|part| part.summary.state == engine::reservation::ReservationState::Held)
                .flat_map(|part| &part.lines)
                .map(|line| line.backordered)
                .sum();
            if backordered > 0 {
                return Err(Problem::refusal(&Refusal::BackorderUnfilled { backordered }));
            }
        }
        let out = self
            .end(id, |shard| {
                let part: Vec<ConfirmLine> =
                    lines.iter().filter(|(at, _)| *at == shard).map(|(_, line)| line.clone()).collect();
                if part.is_empty() {
                    Command::Confirm(Confirm { principal: who.clone(), id })
                } else {
                    Command::ConfirmPart(ConfirmPart { principal: who.clone(), id, lines: part })
                }
            })
            .await?;
        Ok(out.respond(StatusCode::OK))
    }

    /// What confirming, releasing or extending the parts of a reservation
    /// answered, in shard order: each part found, as its outcome carries it
    /// (summary, lines, key); or the first refusal; or not found when no
    /// shard knows the reservation.
    fn ended(&self, answers: Vec<Result<Outcome, cluster::SubmitError>>) -> ApiResult<Vec<ReservationView>> {
        let mut refusal: Option<Refusal> = None;
        let mut parts = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer? {
                Outcome::Confirmed { reservation, lines, idempotency_key, .. }
                | Outcome::Released { reservation, lines, idempotency_key, .. }
                | Outcome::Extended { reservation, lines, idempotency_key } => {
                    parts.push(ReservationView {
                        summary: reservation,
                        lines,
                        idempotency_key: idempotency_key.map(IdempotencyKey::into_string),
                    });
                }
                Outcome::Refused(Refusal::ReservationNotFound) => {}
                Outcome::Refused(other) => {
                    refusal.get_or_insert(other);
                }
                other => return Err(self.unexpected(&other)),
            }
        }
        if let Some(refusal) = refusal {
            return Err(Problem::refusal(&refusal));
        }
        if parts.is_empty() {
            return Err(reservation_not_found());
        }
        Ok(parts)
    }

    /// Moves every part's deadline to now + `ttl_seconds`.
    async fn extend_by(&self, id: ReservationId, ttl_seconds: u64, principal: &Principal) -> ApiResult<Response> {
        let ttl_ms = self.ttl_ms(Some(ttl_seconds))?;
        let deadline = Deadline::AfterMs(ttl_ms);
        let who = super::items::principal_name(principal);
        Ok(self
            .end(id, |_| Command::Extend(Extend { principal: who.clone(), id, deadline }))
            .await?
            .respond(StatusCode::OK))
    }

    /// The reservation the caller's order made: its key is on every part.
    /// Another API key's order of the same id is not found.
    async fn order_reservation(&self, principal: &Principal, order_id: &str) -> ApiResult<ReservationId> {
        let key = idempotency::engine_key(Kind::Order, principal, order_id)?;
        let reads = (0..self.node.shard_count()).map(|shard| {
            let key = key.clone();
            read_shard(self, shard, super::Consistency::Linearizable, Query::ReservationByKey(key))
        });
        for answer in futures_util::future::join_all(reads).await {
            let view: Option<ReservationView> = answer?;
            if let Some(view) = view {
                return Ok(view.summary.id);
            }
        }
        Err(Problem::not_found("order_not_found", "no reservation for this order"))
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| Problem::bad_request("invalid_idempotency_key", "Idempotency-Key must be ASCII"))?;
            idempotency::check(Kind::Key, text)?;
            Ok(Some(text.to_owned()))
        }
    }
}

fn created_response(created: Created) -> Response {
    let mut response = created.body.respond(StatusCode::CREATED);
    if created.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `POST /v1/reservations` (reserve).
#[utoipa::path(
    post,
    path = "/v1/reservations",
    tag = "reservations",
    summary = "Hold stock: every line or none",
    description = "Holds every line until the deadline, or none and answers 409 with every short line. \
        A line without a warehouse is allocated from the SKU's warehouses (`allocation`, \
        `warehouse_priority`, `split`); the answer's `request_lines` say where each line's units are held. \
        A line naming a bundle holds its components (the answer's `bundles` shows how). \
        With an `Idempotency-Key` or \
        an `order_id`, a retry answers the first reservation and never holds twice.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            description = "Makes the request safe to retry: 1 to 128 printable ASCII characters (`!` to `~`). \
            Scoped to the API key, and apart from order ids: another key's same Idempotency-Key, or an order \
            whose id is the same text, is another reservation."),
    ),
    request_body = ReservationBody,
    responses(
        (status = 201, description = "Held (or, with `commit`, confirmed).", body = crate::openapi::Reservation,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this answers an earlier request with the same key or order."))),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_idempotency_key`, `ttl_out_of_range`, \
            `no_lines`, `too_many_lines`, `field_empty`, `field_too_long`, `field_bad_character` (sku, warehouse, \
            Idempotency-Key, order_id, customer_id, warehouse_priority), `quantity_zero`, `quantity_too_large`; \
            `customer_id_required`: a line's SKU has a limit per customer (the problem's `sku`); \
            `invalid_warehouse_priority`: the list names a warehouse twice or too many, or comes with \
            `allocation` `most_available`."),
        (status = 409, description = "`insufficient_stock`: the problem's `lines` lists every short line (a \
            bundle's component names its request line and the `bundle`); `bundle_nested`: a bundle's component \
            is a bundle; \
            `customer_limit`: the hold would take the customer past a SKU's limit per customer (the problem's \
            `skus` lists each such SKU with `limit_per_customer`, `used`, `requested` and `remaining`; \
            `remaining` is the first one's); \
            `idempotency_key_reused`: the key or order made a different reservation; `shard_full`; with `commit`, \
            `reservation_released` or `reservation_expired` when a replayed reservation has ended."),
        (status = 503, description = "`unavailable`, `overloaded`: retry after `Retry-After`; `outcome_unknown`: the \
            reservation may or may not have been made, and a retry with the same key or order is safe; \
            `shutting_down`; `timeout`."),
    ),
)]
pub async fn create(
    State(state): Shared,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ReservationBody>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let key = idempotency_key(&headers)?;
    Ok(created_response(state.create_reservation(&body, &principal, key.as_deref()).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to `api.batch_requests_max` requests (1024 by default).
    pub requests: Vec<BatchRequest>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(from = "BatchRequestFields")]
pub struct BatchRequest {
    #[serde(flatten)]
    #[schema(inline)]
    pub reservation: ReservationBody,
    /// As the `Idempotency-Key` header of `POST /v1/reservations`.
    pub idempotency_key: Option<String>,
}

/// A batch request as sent: `ReservationBody`'s fields and the key, read
/// without `serde(flatten)` (which buffers every request in an
/// intermediate tree and was a tenth of a 256-hold batch's parse).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequestFields {
    lines: Vec<RequestLine>,
    ttl_seconds: Option<u64>,
    order_id: Option<String>,
    #[serde(default)]
    commit: bool,
    idempotency_key: Option<String>,
    customer_id: Option<String>,
    allocation: Option<super::allocation::AllocationName>,
    warehouse_priority: Option<Vec<String>>,
    split: Option<bool>,
}

impl From<BatchRequestFields> for BatchRequest {
    fn from(fields: BatchRequestFields) -> Self {
        let BatchRequestFields {
            lines,
            ttl_seconds,
            order_id,
            commit,
            idempotency_key,
            customer_id,
            allocation,
            warehouse_priority,
            split,
        } = fields;
        let reservation = ReservationBody {
            lines,
            ttl_seconds,
            order_id,
            commit,
            customer_id,
            allocation,
            warehouse_priority,
            split,
        };
        Self { reservation, idempotency_key }
    }
}

/// `?view=` of the batch endpoint.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// `full` (the default): each result carries the whole reservation or
    /// problem. `compact`: ids and states only (`id`, `state`, and
    /// `replayed` when true), and a problem's `code`.
    #[serde(default)]
    #[param(inline)]
    pub view: BatchView,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchView {
    #[default]
    Full,
    Compact,
}

/// `POST /v1/reservations/batch` (reserve): independent reservations, one
/// result each (`status` and `body`, or a problem), in request order.
///
/// Requests whose lines all name a warehouse on one shard (the flash-sale
/// shape) are grouped by shard: one list of `Hold` commands per shard,
/// proposed as one entry, applied in request order, each on its own. Every
/// other request (allocation, lines on several shards) is made as by
/// `POST /v1/reservations`, concurrently with the lists.
#[utoipa::path(
    post,
    path = "/v1/reservations/batch",
    tag = "reservations",
    summary = "Make many independent reservations in one request",
    description = "Each request is made as by `POST /v1/reservations`, independently of the others; \
        the answer has one result per request, in request order: the reservation, or the problem that \
        request alone would have answered. Requests on one shard are proposed together as one log entry. \
        `?view=compact` answers ids and states only.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(BatchQuery),
    request_body = BatchBody,
    responses(
        (status = 200, description = "One result per request.", body = crate::openapi::BatchResult),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_batch_size`, `invalid_query`."),
        (status = 429, description = "`rate_limited`: a batch costs one token of the key's rate limit per \
            request in it; nothing was held. Retry after `Retry-After`."),
        (status = 503, description = "`timeout`."),
    ),
)]
pub async fn batch(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<BatchQuery>,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let max = state.config.api.batch_requests_max;
    if body.requests.is_empty() || body.requests.len() > max {
        return Err(Problem::bad_request("invalid_batch_size", format!("send 1 to {max} requests")));
    }
    // One token per hold: the request paid one on arrival (`authenticate`).
    let holds = body.requests.len() as u64;
    if let Err(wait_s) = state.auth.take_tokens(&principal, holds - 1, 1) {
        let detail =
            format!("key {:?} is over its rate limit: a batch costs one token per hold ({holds})", principal.name);
        return Err(Problem::rate_limited(detail, wait_s));
    }
    let results = state.create_batch(&body.requests, &principal).await;
    let held = results.iter().filter(|result| result.is_ok()).count();
    let results: Vec<BatchResultOut> = results
        .into_iter()
        .map(|result| match (result, query.view) {
            (Ok(created), BatchView::Full) => {
                BatchResultOut::Held { status: 201, replayed: created.replayed, reservation: created.body }
            }
            (Ok(created), BatchView::Compact) => BatchResultOut::HeldCompact {
                status: 201,
                id: created.body.id,
                state: created.body.state,
                replayed: created.replayed,
            },
            (Err(problem), BatchView::Full) => {
                BatchResultOut::Failed { status: problem.status.as_u16(), problem: problem.body() }
            }
            (Err(problem), BatchView::Compact) => {
                BatchResultOut::FailedCompact { status: problem.status.as_u16(), code: problem.code }
            }
        })
        .collect();
    Ok(json_response(StatusCode::OK, &BatchOut { held, results }))
}

impl AppState {
    /// The results of a batch's requests, in request order.
    async fn create_batch(&self, requests: &[BatchRequest], principal: &Principal) -> Vec<ApiResult<Created>> {
        let mut results: Vec<Option<ApiResult<Created>>> = requests.iter().map(|_| None).collect();
        let mut lists: BTreeMap<u32, Vec<Listed>> = BTreeMap::new();
        let mut others = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            let key = request.idempotency_key.as_deref();
            let prepared = self
                .check_request(&request.reservation, principal, key)
                .and_then(|checked| self.prepare(&request.reservation, checked));
            match prepared {
                Ok(Prepared { id, key, mut parts }) if parts.len() == 1 => {
                    if let Some(part) = parts.pop() {
                        lists.entry(part.shard).or_default().push(Listed { index, id, key, part });
                    }
                }
                // Across shards: the saga, on its own.
                Ok(_) => others.push(index),
                Err(problem) => results[index] = Some(Err(problem)),
            }
        }
        let lists = lists.into_iter().map(|(shard, holds)| self.hold_list(shard, holds));
        let others = others.into_iter().map(|index| async move {
            let request = &requests[index];
            (index, self.create_reservation(&request.reservation, principal, request.idempotency_key.as_deref()).await)
        });
        let (lists, others) =
            futures_util::future::join(futures_util::future::join_all(lists), futures_util::future::join_all(others))
                .await;
        // Requests naming bundles are made again, expanded, each on its own.
        let mut expand = Vec::new();
        for (index, result) in lists.into_iter().flatten() {
            match result {
                Ok(Attempt::Done(created)) => results[index] = Some(Ok(created)),
                Ok(Attempt::Bundles(found)) => expand.push((index, found)),
                Err(problem) => results[index] = Some(Err(problem)),
            }
        }
        let expanded = expand.into_iter().map(|(index, found)| async move {
            let request = &requests[index];
            let key = request.idempotency_key.as_deref();
            (index, self.create_expanded(&request.reservation, &found, principal, key).await)
        });
        for (index, result) in others.into_iter().chain(futures_util::future::join_all(expanded).await) {
            results[index] = Some(result);
        }
        debug_assert!(results.iter().all(Option::is_some), "every request of a batch has its result");
        results.into_iter().map(|result| result.unwrap_or_else(|| Err(self.unexpected(&Outcome::Ticked)))).collect()
    }

    /// One shard's holds of a batch, proposed as one list.
    async fn hold_list(&self, shard: u32, holds: Vec<Listed>) -> Vec<(usize, ApiResult<Attempt>)> {
        let (holds, commands): (Vec<_>, Vec<_>) = holds
            .into_iter()
            .map(|Listed { index, id, key, part }| ((index, id, key, part.lines), part.command))
            .unzip();
        let outcomes = match self.submit_many_to(shard, commands).await {
            Ok(outcomes) if outcomes.len() == holds.len() => outcomes,
            Ok(outcomes) => {
                let problem = Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("{} outcomes for {} holds", outcomes.len(), holds.len()),
                );
                return holds.into_iter().map(|(index, ..)| (index, Err(problem.clone()))).collect();
            }
            Err(error) => {
                let problem = Problem::from(error);
                return holds.into_iter().map(|(index, ..)| (index, Err(problem.clone()))).collect();
            }
        };
        holds
            .into_iter()
            .zip(outcomes)
            .map(|((index, id, key, lines), outcome)| {
                if let Outcome::Refused(Refusal::BundleLines { lines: refused }) = &outcome {
                    let found = super::bundles::found_lines(refused, &line_origins(&lines));
                    return (index, Ok(Attempt::Bundles(found)));
                }
                // Listed requests name every warehouse: nothing to split.
                (index, self.held(outcome, &lines, key, id, true).map(Attempt::Done))
            })
            .collect()
    }
}

#[derive(Serialize)]
struct BatchOut {
    held: usize,
    results: Vec<BatchResultOut>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchResultOut {
    Held {
        status: u16,
        replayed: bool,
        reservation: ReservationOut,
    },
    HeldCompact {
        status: u16,
        id: HexId,
        state: &'static str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    },
    Failed {
        status: u16,
        problem: Value,
    },
    FailedCompact {
        status: u16,
        code: &'static str,
    },
}

/// `GET /v1/reservations/{id}`.
#[utoipa::path(
    get,
    path = "/v1/reservations/{id}",
    tag = "reservations",
    summary = "Read a reservation",
    extensions(("x-tally-role" = json!("read"))),
    params(("id" = crate::openapi::ReservationId, Path, description = "The reservation's id."), ReadQuery),
    responses(
        (status = 200, description = "The reservation.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `invalid_reservation_id`, `invalid_query`."),
        (status = 404, description = "`reservation_not_found`."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn get(
    State(state): Shared,
    principal: Principal,
    PathParams(id): PathParams<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let id = parse_id(&id)?;
    Ok(state.reservation_body(id, query.consistency).await?.respond(StatusCode::OK))
}

/// `POST /v1/reservations/{id}/confirm` (reserve): the sale.
#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/confirm",
    tag = "reservations",
    summary = "Confirm a reservation: the sale, in full or in part",
    description = "Sells the held units. With a body, `lines` sells fewer: each listed (sku, warehouse) sells the \
        quantity given (0: none), lines not listed sell all they hold, and what is not sold is released in the \
        same step; the reservation then shows the lines as sold. Confirming again answers the same. Every part \
        of a reservation that spans shards is confirmed.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("id" = crate::openapi::ReservationId, Path, description = "The reservation's id.")),
    request_body(content = Option<ConfirmBody>, description = "Optional: a partial confirm."),
    responses(
        (status = 200, description = "The reservation, `CONFIRMED`.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `invalid_reservation_id`, `invalid_json`, `invalid_body`, \
            `field_empty`, `field_too_long`, `field_bad_character` (sku, warehouse), `quantity_too_large`, \
            `quantity_zero` (a partial confirm that sells nothing: release instead)."),
        (status = 404, description = "`reservation_not_found`."),
        (status = 409, description = "`reservation_released`, `reservation_expired`; `confirm_over_held`: a line \
            names units the reservation does not hold there (the problem's `line` and `held`)."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn confirm(
    State(state): Shared,
    principal: Principal,
    PathParams(id): PathParams<String>,
    OptionalJsonBody(body): OptionalJsonBody<ConfirmBody>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = parse_id(&id)?;
    let who = super::items::principal_name(&principal);
    state.confirm_reservation(id, who, body).await
}

/// The body of a partial confirm.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// Units to sell of held lines; lines not listed sell all they hold, and
    /// what is not sold is released in the same step. Quantity 0 sells none
    /// of a line.
    pub lines: Vec<ConfirmRequestLine>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequestLine {
    #[schema(value_type = crate::openapi::Sku)]
    pub sku: String,
    #[schema(value_type = crate::openapi::Warehouse)]
    pub warehouse: String,
    /// 0 to the units held on this line.
    pub quantity: u64,
}

/// Checks a partial confirm of a reservation across shards against its
/// parts as read: every line held, within what it holds, named once, and
/// something sold.
fn check_confirm_lines(parts: &[ReservationView], lines: &[(u32, ConfirmLine)]) -> ApiResult<()> {
    let held: Vec<&engine::outcome::LineView> = parts.iter().flat_map(|part| part.lines.iter()).collect();
    let units: Vec<u64> = held.iter().map(|line| line.quantity).collect();
    let lines: Vec<ConfirmLine> = lines.iter().map(|(_, line)| line.clone()).collect();
    engine::cmd::units_sold(&units, &lines, |line| {
        held.iter().position(|h| h.sku == line.sku.as_str() && h.warehouse == line.warehouse.as_str())
    })
    .map(|_| ())
    .map_err(|refusal| Problem::refusal(&refusal))
}

/// `POST /v1/reservations/{id}/release` and `DELETE /v1/reservations/{id}`.
#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/release",
    tag = "reservations",
    summary = "Release a reservation: give the units back",
    description = "Gives the held units back. Releasing again answers the same.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("id" = crate::openapi::ReservationId, Path, description = "The reservation's id.")),
    responses(
        (status = 200, description = "The reservation, `RELEASED`.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `invalid_reservation_id`."),
        (status = 404, description = "`reservation_not_found`."),
        (status = 409, description = "`reservation_confirmed`, `reservation_expired`."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn release(
    State(state): Shared,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = parse_id(&id)?;
    let who = super::items::principal_name(&principal);
    Ok(state.end(id, |_| Command::Release(Release { principal: who.clone(), id })).await?.respond(StatusCode::OK))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// The new deadline is now + `ttl_seconds`: 1 to `api.ttl_seconds_max` (86400 by default).
    #[schema(minimum = 1)]
    pub ttl_seconds: u64,
}

/// `POST /v1/reservations/{id}/extend` (reserve): the deadline becomes
/// now + `ttl_seconds` (never earlier than it was).
#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/extend",
    tag = "reservations",
    summary = "Move a held reservation's deadline",
    description = "The deadline becomes now + `ttl_seconds`; it never moves earlier.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("id" = crate::openapi::ReservationId, Path, description = "The reservation's id.")),
    request_body = ExtendBody,
    responses(
        (status = 200, description = "The reservation with its new deadline.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `invalid_reservation_id`, `invalid_json`, `invalid_body`, \
            `ttl_out_of_range`."),
        (status = 404, description = "`reservation_not_found`."),
        (status = 409, description = "`reservation_confirmed`, `reservation_released`, `reservation_expired`."),
        (status = 422, description = "`deadline_earlier`: now + ttl_seconds is before the current deadline."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn extend(
    State(state): Shared,
    principal: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<ExtendBody>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = parse_id(&id)?;
    state.extend_by(id, body.ttl_seconds, &principal).await
}

/// `GET /v1/orders/{order_id}`.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}",
    tag = "orders",
    summary = "Read the reservation an order made",
    extensions(("x-tally-role" = json!("read"))),
    params(("order_id" = String, Path, description = "The `order_id` the reservation was made with.")),
    responses(
        (status = 200, description = "The order's reservation.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `field_too_long`, `field_bad_character` (the order id)."),
        (status = 404, description = "`order_not_found`, `reservation_not_found`."),
        (status = 503, description = crate::openapi::READ_UNAVAILABLE),
    ),
)]
pub async fn get_order(
    State(state): Shared,
    principal: Principal,
    PathParams(order_id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let id = state.order_reservation(&principal, &order_id).await?;
    Ok(state.reservation_body(id, super::Consistency::Linearizable).await?.respond(StatusCode::OK))
}

/// `POST /v1/orders/{order_id}/confirm`.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/confirm",
    tag = "orders",
    summary = "Confirm an order's reservation: the sale, in full or in part",
    description = "As `POST /v1/reservations/{id}/confirm`, by the order id: an optional body's `lines` sells \
        fewer units than held and releases the rest in the same step. Confirming again answers the same.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("order_id" = String, Path, description = "The `order_id` the reservation was made with.")),
    request_body(content = Option<ConfirmBody>, description = "Optional: a partial confirm."),
    responses(
        (status = 200, description = "The reservation, `CONFIRMED`.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `field_too_long`, `field_bad_character` (the order id, sku, \
            warehouse), `invalid_json`, `invalid_body`, `field_empty`, `quantity_too_large`, `quantity_zero`."),
        (status = 404, description = "`order_not_found`, `reservation_not_found`."),
        (status = 409, description = "`reservation_released`, `reservation_expired`, `confirm_over_held`."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn order_confirm(
    State(state): Shared,
    principal: Principal,
    PathParams(order_id): PathParams<String>,
    OptionalJsonBody(body): OptionalJsonBody<ConfirmBody>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = state.order_reservation(&principal, &order_id).await?;
    let who = super::items::principal_name(&principal);
    state.confirm_reservation(id, who, body).await
}

/// `POST /v1/orders/{order_id}/release`.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/release",
    tag = "orders",
    summary = "Release an order's reservation",
    description = "Gives the held units back. Releasing again answers the same.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("order_id" = String, Path, description = "The `order_id` the reservation was made with.")),
    responses(
        (status = 200, description = "The reservation, `RELEASED`.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `field_too_long`, `field_bad_character` (the order id)."),
        (status = 404, description = "`order_not_found`, `reservation_not_found`."),
        (status = 409, description = "`reservation_confirmed`, `reservation_expired`."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn order_release(
    State(state): Shared,
    principal: Principal,
    PathParams(order_id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = state.order_reservation(&principal, &order_id).await?;
    let who = super::items::principal_name(&principal);
    Ok(state.end(id, |_| Command::Release(Release { principal: who.clone(), id })).await?.respond(StatusCode::OK))
}

/// `POST /v1/orders/{order_id}/extend`.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/extend",
    tag = "orders",
    summary = "Move the deadline of an order's held reservation",
    description = "The deadline becomes now + `ttl_seconds`; it never moves earlier.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("order_id" = String, Path, description = "The `order_id` the reservation was made with.")),
    request_body = ExtendBody,
    responses(
        (status = 200, description = "The reservation with its new deadline.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `field_too_long`, `field_bad_character` (the order id), \
            `invalid_json`, `invalid_body`, `ttl_out_of_range`."),
        (status = 404, description = "`order_not_found`, `reservation_not_found`."),
        (status = 409, description = "`reservation_confirmed`, `reservation_released`, `reservation_expired`."),
        (status = 422, description = "`deadline_earlier`: now + ttl_seconds is before the current deadline."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn order_extend(
    State(state): Shared,
    principal: Principal,
    PathParams(order_id): PathParams<String>,
    JsonBody(body): JsonBody<ExtendBody>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = state.order_reservation(&principal, &order_id).await?;
    state.extend_by(id, body.ttl_seconds, &principal).await
}
