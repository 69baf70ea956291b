//! Reservations: hold stock for a shopper, confirm the sale, give it back,
//! extend; by id or by order; one at a time or in batches.
//!
//! A reservation whose lines all live on one shard is one `Hold` command:
//! atomic in the shard's actor (the fast path). Lines on several shards
//! follow the saga of DESIGN §4: hold on each shard with one shared
//! deadline; if any part is refused, release the others and answer 409 with
//! every short line. A crash mid-saga leaves parts that expire on their own.
//!
//! Reservation ids (32 hex digits) carry their home shard in the first two
//! bytes (so confirm and release route without a lookup) and, in the third,
//! whether the reservation spans shards (then its parts are found on every
//! shard). The rest is random, or — when the request has an
//! `Idempotency-Key` or an `order_id` — a hash of it, so a retry makes the
//! same id and the engine answers it with the first outcome instead of
//! holding twice.
//!
//! A line with no warehouse is allocated from the SKU's warehouses, most
//! available first (ties by warehouse name), split across warehouses when
//! none has enough alone. The stock is read first and then held, so a
//! concurrent hold can take it in between: the hold is still atomic (it never
//! oversells) and allocation is retried `api.allocation_attempts_max` times
//! before answering 409.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::cmd::{Allocation, Confirm, Deadline, Extend, Hold, HoldLine, Release};
use engine::ids::{IdempotencyKey, Quantity, ReservationId, Sku, Warehouse};
use engine::outcome::{ReservationSummary, ReservationView, ShortLine};
use engine::reservation::ReservationState;
use engine::{Command, Outcome, Refusal, shard_of};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::items::ReadQuery;
use super::{JsonBody, PathParams, QueryParams, read_shard, rfc3339_ms};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// Third byte of an id: the reservation's parts live on several shards.
const SPANS_SHARDS: u8 = 1;
/// Prefix of the engine idempotency key that names an order.
const ORDER_KEY_PREFIX: &str = "order:";

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
    /// answers the first. At most 122 printable ASCII characters (`!` to `~`).
    pub order_id: Option<String>,
    /// Confirm at once: hold and sell in one request.
    #[serde(default)]
    pub commit: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    #[schema(value_type = crate::openapi::Sku)]
    pub sku: String,
    /// Absent: allocated from the SKU's warehouses, most available first,
    /// split across warehouses when none has enough alone.
    #[schema(value_type = Option<crate::openapi::Warehouse>)]
    pub warehouse: Option<String>,
    #[schema(value_type = crate::openapi::Quantity)]
    pub quantity: u64,
}

/// One line as held: always with its warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// Index of the request line it came from.
    request_line: usize,
    sku: Sku,
    warehouse: Warehouse,
    quantity: u64,
}

/// What creating a reservation answered.
#[derive(Debug)]
pub struct Created {
    pub body: Value,
    pub replayed: bool,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to time and a counter, still unique per process.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed = Sha256::digest(format!("{nanos}-{count}").as_bytes());
        for (slot, byte) in bytes.iter_mut().zip(seed.iter().cycle()) {
            *slot = *byte;
        }
    }
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

fn spans_shards(id: &ReservationId) -> bool {
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

fn reservation_json(view: &ReservationView, order_id: Option<&str>) -> Value {
    let summary = &view.summary;
    let order_id = order_id.map(str::to_owned).or_else(|| {
        view.idempotency_key.as_deref().and_then(|key| key.strip_prefix(ORDER_KEY_PREFIX)).map(str::to_owned)
    });
    // Built field by field: `json!` would copy every nested value through
    // the serializer again, and this is on the path of every hold.
    let lines = view
        .lines
        .iter()
        .map(|l| {
            object([
                ("sku", Value::String(l.sku.to_string())),
                ("warehouse", Value::String(l.warehouse.to_string())),
                ("quantity", Value::from(l.quantity)),
            ])
        })
        .collect();
    object([
        ("id", Value::String(summary.id.to_string())),
        ("state", Value::from(summary.state.as_str())),
        ("lines", Value::Array(lines)),
        ("created_at_ms", Value::from(summary.created_at_ms)),
        ("expires_at_ms", Value::from(summary.deadline_ms)),
        ("expires_at", Value::String(rfc3339_ms(summary.deadline_ms))),
        ("ended_at_ms", summary.ended_at_ms.map_or(Value::Null, Value::from)),
        ("order_id", order_id.map_or(Value::Null, Value::String)),
    ])
}

/// A JSON object of the fields, moved in (no copy).
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(key, value)| (key.to_owned(), value)).collect())
}

/// Merges the parts of a reservation (one per shard) into one view. The
/// state is the parts' common state; parts that disagree (a saga cut short)
/// show as the least advanced non-held state, with each part listed.
fn merge_parts(parts: Vec<ReservationView>) -> Option<(ReservationView, Vec<Value>)> {
    let first = parts.first()?.clone();
    let mut merged = first.clone();
    merged.lines = parts.iter().flat_map(|part| part.lines.clone()).collect();
    let states: Vec<ReservationState> = parts.iter().map(|part| part.summary.state).collect();
    if let Some(other) = states.iter().find(|state| **state != first.summary.state) {
        // Mixed: report a terminal state that is not CONFIRMED first, as the
        // reservation as a whole did not complete.
        merged.summary.state =
            if first.summary.state == ReservationState::Confirmed { *other } else { first.summary.state };
    }
    merged.summary.deadline_ms = parts.iter().map(|p| p.summary.deadline_ms).min().unwrap_or(0);
    let part_states =
        parts.iter().map(|p| json!({ "state": p.summary.state.as_str(), "lines": p.lines.len() })).collect();
    Some((merged, part_states))
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
            return Err(Problem::not_found("reservation_not_found", "no such reservation"));
        }
        Ok(shards)
    }

    /// Reads every part of a reservation, in shard order.
    async fn reservation_parts(&self, id: ReservationId, read: super::Consistency) -> ApiResult<Vec<ReservationView>> {
        let shards = self.part_shards(id)?;
        let reads = shards.into_iter().map(|shard| read_shard(self, shard, read, move |s| s.reservation(&id)));
        let mut parts = Vec::new();
        for answer in futures_util::future::join_all(reads).await {
            parts.extend(answer?);
        }
        Ok(parts)
    }

    async fn reservation_body(&self, id: ReservationId, read: super::Consistency) -> ApiResult<Value> {
        let parts = self.reservation_parts(id, read).await?;
        let (merged, part_states) =
            merge_parts(parts).ok_or_else(|| Problem::not_found("reservation_not_found", "no such reservation"))?;
        let mut body = reservation_json(&merged, None);
        if spans_shards(&id) {
            body["parts"] = Value::Array(part_states);
        }
        Ok(body)
    }

    /// The body of a reservation this request has just written (held,
    /// confirmed, released, extended): the write is done, so no read after
    /// it may turn the answer into an error. A 503 `unavailable` would tell
    /// the client nothing was applied (chaos FINDINGS.md #2). It is read
    /// linearizably when it can be, else from this node's replica with the
    /// write's own summaries (state, deadline) laid over it.
    async fn written_body(&self, id: ReservationId, written: &[ReservationSummary]) -> Value {
        let error = match self.reservation_body(id, super::Consistency::Linearizable).await {
            Ok(body) => return body,
            Err(error) => error,
        };
        tracing::warn!(%id, code = error.code, "the read after a write failed; answering from this replica");
        let parts = self.reservation_parts(id, super::Consistency::Stale).await.unwrap_or_default();
        let mut view = match (merge_parts(parts), written.first()) {
            (Some((merged, _)), _) => merged,
            (None, Some(summary)) => ReservationView { summary: *summary, lines: Vec::new(), idempotency_key: None },
            (None, None) => ReservationView {
                summary: ReservationSummary {
                    id,
                    state: ReservationState::Held,
                    created_at_ms: 0,
                    deadline_ms: 0,
                    ended_at_ms: None,
                },
                lines: Vec::new(),
                idempotency_key: None,
            },
        };
        if let Some(first) = written.first() {
            view.summary.state = first.state;
            view.summary.ended_at_ms = first.ended_at_ms;
            view.summary.deadline_ms = written.iter().map(|w| w.deadline_ms).min().unwrap_or(first.deadline_ms);
        }
        reservation_json(&view, None)
    }

    /// Resolves the lines' warehouses, allocating lines that name none.
    async fn allocate(&self, lines: &[RequestLine]) -> ApiResult<Vec<Line>> {
        let shards = self.node.shard_count();
        let mut resolved = Vec::with_capacity(lines.len());
        let mut open: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
        for (index, line) in lines.iter().enumerate() {
            let sku = Sku::new(line.sku.clone())?;
            Quantity::new(line.quantity)?;
            match &line.warehouse {
                Some(warehouse) => resolved.push(Line {
                    request_line: index,
                    sku,
                    warehouse: Warehouse::new(warehouse.clone())?,
                    quantity: line.quantity,
                }),
                None => open.entry(line.sku.clone()).or_default().push((index, line.quantity)),
            }
        }
        let mut short = Vec::new();
        for (sku_name, wanted) in open {
            let shard = shard_of(&sku_name, shards);
            let name = sku_name.clone();
            let view = read_shard(self, shard, super::Consistency::Linearizable, move |s| s.sku_items(&name)).await?;
            // Most available first, then by name: a documented, stable order.
            let mut stock: Vec<(String, u64)> =
                view.items.iter().map(|item| (item.warehouse.clone(), item.available)).collect();
            stock.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            for (index, mut quantity) in wanted {
                let requested = quantity;
                for (warehouse, available) in &mut stock {
                    if quantity == 0 {
                        break;
                    }
                    let take = quantity.min(*available);
                    if take == 0 {
                        continue;
                    }
                    *available -= take;
                    quantity -= take;
                    resolved.push(Line {
                        request_line: index,
                        sku: Sku::new(sku_name.clone())?,
                        warehouse: Warehouse::new(warehouse.clone())?,
                        quantity: take,
                    });
                }
                if quantity > 0 {
                    let available = requested - quantity;
                    short.push((
                        index,
                        sku_name.clone(),
                        ShortLine { line: 0, requested, available, exists: !view.items.is_empty() },
                    ));
                }
            }
        }
        if !short.is_empty() {
            let short: Vec<(usize, &str, &str, ShortLine)> =
                short.iter().map(|(index, sku, line)| (*index, sku.as_str(), "", *line)).collect();
            return Err(short_lines_problem(&short));
        }
        Ok(resolved)
    }

    /// Creates a reservation: the one path of `POST /v1/reservations`, the
    /// batch endpoint and orders.
    pub async fn create_reservation(&self, body: &ReservationBody, key: Option<&str>) -> ApiResult<Created> {
        let ttl_ms = self.ttl_ms(body.ttl_seconds)?;
        if body.lines.is_empty() {
            return Err(Problem::bad_request("no_lines", "a reservation needs at least one line"));
        }
        let max = self.config.engine.lines_per_hold_max as usize;
        if body.lines.len() > max {
            return Err(Problem::bad_request("too_many_lines", format!("a reservation has at most {max} lines")));
        }
        let engine_key = match (&body.order_id, key) {
            (Some(order), _) => Some(IdempotencyKey::new(format!("{ORDER_KEY_PREFIX}{order}"))?),
            (None, Some(key)) => Some(IdempotencyKey::new(key.to_owned())?),
            (None, None) => None,
        };
        let seed = key.map(|k| format!("key\0{k}")).or_else(|| body.order_id.as_ref().map(|o| format!("order\0{o}")));
        let shards = self.node.shard_count();
        let home = shard_of(&body.lines[0].sku, shards);
        // A keyed retry whose lines need allocating may allocate differently
        // the second time: answer it from the reservation the key made.
        let needs_allocation = body.lines.iter().any(|line| line.warehouse.is_none());
        if needs_allocation && let Some(seed) = &seed {
            for spans in [false, true] {
                let id = make_id(home, spans, Some(seed));
                if let Ok(existing) = self.reservation_body(id, super::Consistency::Linearizable).await {
                    return Ok(Created { body: existing, replayed: true });
                }
            }
        }
        let attempts = if needs_allocation { self.config.api.allocation_attempts_max } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lines = self.allocate(&body.lines).await?;
            match self.hold_lines(body, &lines, home, seed.as_deref(), engine_key.as_ref(), ttl_ms).await {
                Err(problem) if problem.code == "insufficient_stock" && attempt < attempts => continue,
                other => return other,
            }
        }
    }

    async fn hold_lines(
        &self,
        body: &ReservationBody,
        lines: &[Line],
        home: u32,
        seed: Option<&str>,
        key: Option<&IdempotencyKey>,
        ttl_ms: u64,
    ) -> ApiResult<Created> {
        let shards = self.node.shard_count();
        let mut by_shard: BTreeMap<u32, Vec<&Line>> = BTreeMap::new();
        for line in lines {
            by_shard.entry(shard_of(line.sku.as_str(), shards)).or_default().push(line);
        }
        let spans = by_shard.len() > 1;
        let id = make_id(home, spans, seed);
        let hold = |lines: &[&Line], deadline: Deadline, confirm: bool| -> ApiResult<Command> {
            Ok(Command::Hold(Hold {
                id,
                lines: lines
                    .iter()
                    .map(|line| {
                        Ok(HoldLine {
                            sku: line.sku.clone(),
                            warehouse: Some(line.warehouse.clone()),
                            quantity: Quantity::new(line.quantity)?,
                        })
                    })
                    .collect::<Result<_, engine::InputError>>()?,
                deadline,
                idempotency_key: key.cloned(),
                confirm,
                allocation: Allocation::MostAvailable,
            }))
        };
        if !spans {
            let (shard, shard_lines) = by_shard
                .into_iter()
                .next()
                .ok_or_else(|| Problem::bad_request("no_lines", "a reservation needs at least one line"))?;
            let command = hold(&shard_lines, Deadline::AfterMs(ttl_ms), body.commit)?;
            let outcome = self.node.submit_to(shard, command).await?;
            return self.held(outcome, lines, body.order_id.as_deref(), id).await;
        }
        // The saga: every part gets the same absolute deadline.
        let deadline = Deadline::AtMs(self.node.clock().now_ms().saturating_add(ttl_ms));
        let mut submits = Vec::with_capacity(by_shard.len());
        for (shard, shard_lines) in &by_shard {
            let command = hold(shard_lines, deadline, false)?;
            submits.push(async move { (*shard, self.node.submit_to(*shard, command).await) });
        }
        let answers = futures_util::future::join_all(submits).await;
        let mut short: Vec<(usize, &str, &str, ShortLine)> = Vec::new();
        let mut failure: Option<Problem> = None;
        let mut held_shards = Vec::new();
        let mut written = Vec::new();
        let mut replayed = true;
        for (shard, answer) in answers {
            match answer {
                Ok(Outcome::Held { replayed: again, reservation, .. }) => {
                    held_shards.push(shard);
                    written.push(reservation);
                    replayed &= again;
                }
                Ok(Outcome::Refused(Refusal::InsufficientStock { lines: shorts })) => {
                    let shard_lines = &by_shard[&shard];
                    for line in shorts {
                        if let Some(original) = shard_lines.get(line.line as usize) {
                            short.push((
                                original.request_line,
                                original.sku.as_str(),
                                original.warehouse.as_str(),
                                line,
                            ));
                        }
                    }
                }
                Ok(Outcome::Refused(refusal)) => failure = Some(Problem::refusal(&refusal)),
                Ok(other) => failure = Some(self.unexpected(&other)),
                Err(error) => {
                    // The part may or may not be held: release it too.
                    held_shards.push(shard);
                    failure = Some(Problem::from(error));
                }
            }
        }
        if !short.is_empty() || failure.is_some() {
            self.release_parts(id, &held_shards).await;
            return Err(if short.is_empty() {
                failure.unwrap_or_else(|| self.unexpected(&Outcome::Ticked))
            } else {
                short.sort_by_key(|(line, ..)| *line);
                short_lines_problem(&short)
            });
        }
        let body = if body.commit {
            self.end_on(id, &held_shards, || Command::Confirm(Confirm { id })).await?
        } else {
            self.written_body(id, &written).await
        };
        Ok(Created { body, replayed })
    }

    async fn release_parts(&self, id: ReservationId, shards: &[u32]) {
        let releases = shards.iter().map(|&shard| self.node.submit_to(shard, Command::Release(Release { id })));
        for answer in futures_util::future::join_all(releases).await {
            if let Err(error) = answer {
                // The part expires at its deadline anyway.
                tracing::warn!(%id, %error, "could not release a saga part; it will expire");
            }
        }
    }

    async fn held(
        &self,
        outcome: Outcome,
        lines: &[Line],
        order_id: Option<&str>,
        id: ReservationId,
    ) -> ApiResult<Created> {
        match outcome {
            Outcome::Held { reservation, replayed, .. } | Outcome::Confirmed { reservation, replayed, .. } => {
                if replayed {
                    // Answer with the reservation as stored (it may name other lines).
                    let body = self.written_body(reservation.id, std::slice::from_ref(&reservation)).await;
                    return Ok(Created { body, replayed });
                }
                let view = ReservationView {
                    summary: reservation,
                    lines: lines
                        .iter()
                        .map(|line| engine::outcome::LineView {
                            sku: line.sku.as_str().to_owned(),
                            warehouse: line.warehouse.as_str().to_owned(),
                            quantity: line.quantity,
                        })
                        .collect(),
                    idempotency_key: None,
                };
                debug_assert_eq!(reservation.id, id);
                Ok(Created { body: reservation_json(&view, order_id), replayed })
            }
            Outcome::Refused(Refusal::InsufficientStock { lines: shorts }) => {
                let short: Vec<(usize, &str, &str, ShortLine)> = shorts
                    .iter()
                    .filter_map(|s| {
                        lines.get(s.line as usize).map(|l| (l.request_line, l.sku.as_str(), l.warehouse.as_str(), *s))
                    })
                    .collect();
                Err(short_lines_problem(&short))
            }
            Outcome::Refused(refusal) => Err(Problem::refusal(&refusal)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Confirms, releases or extends every part of a reservation.
    async fn end(&self, id: ReservationId, make: impl Fn() -> Command) -> ApiResult<Value> {
        self.end_on(id, &self.part_shards(id)?, make).await
    }

    /// Confirms, releases or extends the parts of a reservation on `shards`.
    async fn end_on(&self, id: ReservationId, shards: &[u32], make: impl Fn() -> Command) -> ApiResult<Value> {
        let submits = shards.iter().map(|&shard| self.node.submit_to(shard, make()));
        let mut found = false;
        let mut refusal: Option<Refusal> = None;
        let mut written = Vec::new();
        for answer in futures_util::future::join_all(submits).await {
            match answer? {
                Outcome::Confirmed { reservation, .. }
                | Outcome::Released { reservation, .. }
                | Outcome::Extended { reservation, .. } => {
                    found = true;
                    written.push(reservation);
                }
                Outcome::Refused(Refusal::ReservationNotFound) => {}
                Outcome::Refused(other) => {
                    found = true;
                    refusal.get_or_insert(other);
                }
                other => return Err(self.unexpected(&other)),
            }
        }
        if let Some(refusal) = refusal {
            return Err(Problem::refusal(&refusal));
        }
        if !found {
            return Err(Problem::not_found("reservation_not_found", "no such reservation"));
        }
        Ok(self.written_body(id, &written).await)
    }

    /// Moves every part's deadline to now + `ttl_seconds`.
    async fn extend_by(&self, id: ReservationId, ttl_seconds: u64) -> ApiResult<Response> {
        let ttl_ms = self.ttl_ms(Some(ttl_seconds))?;
        let deadline = if spans_shards(&id) {
            Deadline::AtMs(self.node.clock().now_ms().saturating_add(ttl_ms))
        } else {
            Deadline::AfterMs(ttl_ms)
        };
        Ok(axum::Json(self.end(id, || Command::Extend(Extend { id, deadline })).await?).into_response())
    }

    /// The reservation an order made: its key is on every part.
    async fn order_reservation(&self, order_id: &str) -> ApiResult<ReservationId> {
        let key = IdempotencyKey::new(format!("{ORDER_KEY_PREFIX}{order_id}"))?;
        let reads = (0..self.node.shard_count()).map(|shard| {
            let key = key.clone();
            read_shard(self, shard, super::Consistency::Linearizable, move |s| {
                s.reservation_by_key(&key).map(|view| view.summary.id)
            })
        });
        for answer in futures_util::future::join_all(reads).await {
            if let Some(id) = answer? {
                return Ok(id);
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
            IdempotencyKey::new(text.to_owned())?;
            Ok(Some(text.to_owned()))
        }
    }
}

fn created_response(created: Created) -> Response {
    let mut response = (StatusCode::CREATED, axum::Json(created.body)).into_response();
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
        A line without a warehouse is allocated from the SKU's warehouses. With an `Idempotency-Key` or \
        an `order_id`, a retry answers the first reservation and never holds twice.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            description = "Makes the request safe to retry: 1 to 128 printable ASCII characters (`!` to `~`)."),
    ),
    request_body = ReservationBody,
    responses(
        (status = 201, description = "Held (or, with `commit`, confirmed).", body = crate::openapi::Reservation,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this answers an earlier request with the same key or order."))),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_idempotency_key`, `ttl_out_of_range`, \
            `no_lines`, `too_many_lines`, `field_empty`, `field_too_long`, `field_bad_character` (sku, warehouse, \
            Idempotency-Key, order_id), `quantity_zero`, `quantity_too_large`."),
        (status = 409, description = "`insufficient_stock`: the problem's `lines` lists every short line; \
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
    Ok(created_response(state.create_reservation(&body, key.as_deref()).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to `api.batch_requests_max` requests (1024 by default).
    pub requests: Vec<BatchRequest>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[serde(flatten)]
    #[schema(inline)]
    pub reservation: ReservationBody,
    /// As the `Idempotency-Key` header of `POST /v1/reservations`.
    pub idempotency_key: Option<String>,
}

/// `POST /v1/reservations/batch` (reserve): independent reservations, one
/// result each (`status` and `body`, or a problem), in request order.
#[utoipa::path(
    post,
    path = "/v1/reservations/batch",
    tag = "reservations",
    summary = "Make many independent reservations in one request",
    description = "Each request is made as by `POST /v1/reservations`, independently of the others; \
        the answer has one result per request, in request order: the reservation, or the problem that \
        request alone would have answered.",
    extensions(("x-tally-role" = json!("reserve"))),
    request_body = BatchBody,
    responses(
        (status = 200, description = "One result per request.", body = crate::openapi::BatchResult),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_batch_size`."),
        (status = 503, description = "`timeout`."),
    ),
)]
pub async fn batch(
    State(state): Shared,
    principal: Principal,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let max = state.config.api.batch_requests_max;
    if body.requests.is_empty() || body.requests.len() > max {
        return Err(Problem::bad_request("invalid_batch_size", format!("send 1 to {max} requests")));
    }
    let runs = body.requests.iter().map(|request| {
        let state = Arc::clone(&state);
        async move {
            if let Some(key) = &request.idempotency_key {
                IdempotencyKey::new(key.clone())?;
            }
            state.create_reservation(&request.reservation, request.idempotency_key.as_deref()).await
        }
    });
    let results: Vec<Value> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|result| match result {
            Ok(created) => object([
                ("status", Value::from(201)),
                ("replayed", Value::Bool(created.replayed)),
                ("reservation", created.body),
            ]),
            Err(problem) => object([("status", Value::from(problem.status.as_u16())), ("problem", problem.body())]),
        })
        .collect();
    let held = results.iter().filter(|r| r["status"] == 201).count();
    Ok(axum::Json(object([("held", Value::from(held)), ("results", Value::Array(results))])).into_response())
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
    Ok(axum::Json(state.reservation_body(id, query.consistency).await?).into_response())
}

/// `POST /v1/reservations/{id}/confirm` (reserve): the sale.
#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/confirm",
    tag = "reservations",
    summary = "Confirm a reservation: the sale",
    description = "Sells the held units. Confirming again answers the same. Every part of a reservation that \
        spans shards is confirmed.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("id" = crate::openapi::ReservationId, Path, description = "The reservation's id.")),
    responses(
        (status = 200, description = "The reservation, `CONFIRMED`.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `invalid_reservation_id`."),
        (status = 404, description = "`reservation_not_found`."),
        (status = 409, description = "`reservation_released`, `reservation_expired`."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn confirm(
    State(state): Shared,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = parse_id(&id)?;
    Ok(axum::Json(state.end(id, || Command::Confirm(Confirm { id })).await?).into_response())
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
    Ok(axum::Json(state.end(id, || Command::Release(Release { id })).await?).into_response())
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
    state.extend_by(id, body.ttl_seconds).await
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
    let id = state.order_reservation(&order_id).await?;
    Ok(axum::Json(state.reservation_body(id, super::Consistency::Linearizable).await?).into_response())
}

/// `POST /v1/orders/{order_id}/confirm`.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/confirm",
    tag = "orders",
    summary = "Confirm an order's reservation: the sale",
    description = "Sells the held units. Confirming again answers the same. Every part of a reservation that \
        spans shards is confirmed.",
    extensions(("x-tally-role" = json!("reserve"))),
    params(("order_id" = String, Path, description = "The `order_id` the reservation was made with.")),
    responses(
        (status = 200, description = "The reservation, `CONFIRMED`.", body = crate::openapi::Reservation),
        (status = 400, description = "`invalid_path`, `field_too_long`, `field_bad_character` (the order id)."),
        (status = 404, description = "`order_not_found`, `reservation_not_found`."),
        (status = 409, description = "`reservation_released`, `reservation_expired`."),
        (status = 503, description = crate::openapi::WRITE_UNAVAILABLE),
    ),
)]
pub async fn order_confirm(
    State(state): Shared,
    principal: Principal,
    PathParams(order_id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Reserve)?;
    let id = state.order_reservation(&order_id).await?;
    Ok(axum::Json(state.end(id, || Command::Confirm(Confirm { id })).await?).into_response())
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
    let id = state.order_reservation(&order_id).await?;
    Ok(axum::Json(state.end(id, || Command::Release(Release { id })).await?).into_response())
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
    let id = state.order_reservation(&order_id).await?;
    state.extend_by(id, body.ttl_seconds).await
}
