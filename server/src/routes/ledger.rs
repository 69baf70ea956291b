//! `GET /v1/ledger`: the movement ledger of this node (`cluster::ledger`),
//! every shard merged in one stable order (log time, shard, index,
//! position), paged by an opaque cursor.
//!
//! The ledger is built by every replica from the same log, so any node
//! answers the same entries (but for `gap` entries, where a node's own log
//! was already compacted when it caught up). Reads come from this node's
//! files for the shards it serves, and from a node that serves the shard
//! for the others (a node of a placed cluster: `Node::ledger_page`): a
//! node that lags shows fewer of the newest entries.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cluster::ledger::{LedgerEntry, LedgerFilter, LedgerKey};
use engine::ids::{Sku, Warehouse};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{QueryParams, limit_within};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::idempotency;
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// Every `kind` an entry may have, in the order of a movement's life.
pub const KINDS: [&str; 12] = [
    "upsert",
    "adjust",
    "transfer_out",
    "transfer_in",
    "hold",
    "extend",
    "confirm",
    "release",
    "expire",
    "delete",
    "gap",
    "move",
];

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    /// Only this SKU's movements (and gaps).
    pub sku: Option<String>,
    /// Only this warehouse's movements (and gaps).
    pub warehouse: Option<String>,
    /// Only movements of this kind: `upsert`, `adjust`, `transfer_out`,
    /// `transfer_in`, `hold`, `extend`, `confirm`, `release`, `expire`,
    /// `delete` (an item deleted: on hand to 0), `gap`, `move`.
    pub kind: Option<String>,
    /// RFC 3339 time, inclusive: movements at or after it (log time).
    pub since: Option<String>,
    /// RFC 3339 time, exclusive: movements before it.
    pub until: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Entries per page: 1 to `ledger.page_limit_max` (1000 by default); 100 if absent.
    #[param(minimum = 1)]
    pub limit: Option<usize>,
}

/// `GET /v1/ledger` (read).
#[utoipa::path(
    get,
    path = "/v1/ledger",
    tag = "ledger",
    summary = "Page the movement ledger: every stock movement with who, why and the levels around it",
    description = "Upserts, adjustments (reason code, note, reference), transfers (both sides), holds, \
        extensions, confirmations, releases, expiries and deletes (an item's on hand to 0), in log-time order over every shard. A short page \
        may still have a `next_cursor` (a page reads at most `ledger.page_scan_max` entries per shard); the \
        last page has none. `gap` entries mark log indexes this node could no longer record. A node that \
        does not hold a shard (`cluster.replication_factor` below the node count) reads that shard's entries \
        from a node that does.",
    extensions(("x-tally-role" = json!("read"))),
    params(LedgerQuery),
    responses(
        (status = 200, description = "A page of the ledger.", body = crate::openapi::LedgerPage),
        (status = 400, description = "`invalid_query`, `invalid_limit`, `invalid_kind`, `invalid_time`, \
            `invalid_cursor`, `field_empty`, `field_too_long`, `field_bad_character`."),
        (status = 404, description = "`ledger_disabled`: `ledger.enabled` is off on this node."),
        (status = 503, description = "`ledger_unavailable`: the ledger's files could not be read, or no node \
            that holds a shard answered (or it has the ledger off)."),
    ),
)]
pub async fn ledger(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<LedgerQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let Some(ledger) = state.node.ledger().cloned() else {
        return Err(Problem::not_found("ledger_disabled", "the ledger is off on this node (ledger.enabled)"));
    };
    let limit = limit_within(query.limit, 100, ledger.config().page_limit_max)?;
    let filter = filter_of(&query)?;
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    // Every shard's entries: this node's for the shards it serves, a host's
    // for the others (a node of a placed cluster).
    let page = state.node.ledger_page(&filter, after, limit).await.map_err(|error| {
        Problem::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable", error.to_string())
    })?;
    let entries: Vec<Value> = page.entries.iter().map(entry_json).collect();
    Ok(axum::Json(json!({ "entries": entries, "next_cursor": page.next.map(cursor_text) })).into_response())
}

fn filter_of(query: &LedgerQuery) -> ApiResult<LedgerFilter> {
    let sku = query.sku.clone().map(Sku::new).transpose()?.map(|sku| sku.as_str().to_owned());
    let warehouse = query.warehouse.clone().map(Warehouse::new).transpose()?.map(|w| w.as_str().to_owned());
    if let Some(kind) = &query.kind
        && !KINDS.contains(&kind.as_str())
    {
        return Err(Problem::bad_request("invalid_kind", format!("kind is one of {}", KINDS.join(", "))));
    }
    let time = |text: &Option<String>, name: &str| -> ApiResult<Option<u64>> {
        text.as_deref()
            .map(|text| {
                parse_rfc3339_ms(text).ok_or_else(|| {
                    Problem::bad_request(
                        "invalid_time",
                        format!("{name} is an RFC 3339 time, e.g. 2026-12-06T17:00:00Z"),
                    )
                })
            })
            .transpose()
    };
    Ok(LedgerFilter {
        sku,
        warehouse,
        kind: query.kind.clone(),
        since_ms: time(&query.since, "since")?,
        until_ms: time(&query.until, "until")?,
    })
}

/// One entry as the API shows it.
pub fn entry_json(entry: &LedgerEntry) -> Value {
    let order_id =
        entry.idempotency_key.as_deref().and_then(|key| idempotency::caller_key(idempotency::Kind::Order, key));
    let mut value = json!({
        "id": format!("{}-{}-{}", entry.shard, entry.index, entry.position),
        "at": format_rfc3339_ms(entry.at_ms),
        "at_ms": entry.at_ms,
        "kind": entry.kind,
        "sku": non_empty(&entry.sku),
        "warehouse": non_empty(&entry.warehouse),
        // Levels are at most 10^15, so a delta always fits.
        "quantity": i64::try_from(entry.quantity()).map_or(Value::Null, Value::from),
        "on_hand_before": entry.on_hand_before,
        "on_hand_after": entry.on_hand_after,
        "reserved_before": entry.reserved_before,
        "reserved_after": entry.reserved_after,
        "principal": entry.principal,
        "reason": entry.reason,
        "note": entry.note,
        "reference": {
            "order_id": order_id,
            "reservation_id": entry.reservation_id,
            "document": entry.document,
        },
    });
    if let (Some(from), Some(to), Some(quantity)) = (&entry.from_state, &entry.to_state, entry.moved) {
        value["move"] = json!({ "from": from, "to": to, "quantity": quantity });
    }
    if let Some(to) = entry.gap_to_index {
        value["gap"] = json!({ "shard": entry.shard, "from_index": entry.index, "to_index": to });
    }
    value
}

fn non_empty(text: &str) -> Value {
    if text.is_empty() { Value::Null } else { Value::String(text.to_owned()) }
}

/// The cursor: the last entry's place in the merged order, opaque to callers.
pub fn cursor_text(key: LedgerKey) -> String {
    format!("{:x}.{:x}.{:x}.{:x}", key.at_ms, key.shard, key.index, key.position)
}

fn parse_cursor(text: &str) -> ApiResult<LedgerKey> {
    let bad = || Problem::bad_request("invalid_cursor", "cursor is the next_cursor of an earlier page");
    let mut parts = text.split('.');
    let mut next = || parts.next().filter(|p| !p.is_empty() && p.len() <= 16).ok_or_else(bad);
    let (at, shard, index, position) = (next()?, next()?, next()?, next()?);
    if parts.next().is_some() {
        return Err(bad());
    }
    let hex = |p: &str| u64::from_str_radix(p, 16).map_err(|_| bad());
    let key = LedgerKey {
        at_ms: hex(at)?,
        shard: u32::try_from(hex(shard)?).map_err(|_| bad())?,
        index: hex(index)?,
        position: u32::try_from(hex(position)?).map_err(|_| bad())?,
    };
    if cursor_text(key) != text {
        return Err(bad());
    }
    Ok(key)
}

/// Milliseconds since the epoch of an RFC 3339 time (`Z` or `±hh:mm`,
/// optional fraction), or `None`. Years 1970 to 9999.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = first3.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && rest.as_bytes()[3] == b':' => {
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_s;
    u64::try_from(seconds * 1000 + millis).ok()
}

/// RFC 3339 in UTC with milliseconds.
pub fn format_rfc3339_ms(ms: u64) -> String {
    let seconds = (ms / 1000) as i64;
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_round_trip_through_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-12-06T17:00:00.250Z"), Some(1_796_576_400_250));
        assert_eq!(parse_rfc3339_ms("2026-12-06T18:00:00+01:00"), Some(1_796_576_400_000));
        assert_eq!(format_rfc3339_ms(1_796_576_400_250), "2026-12-06T17:00:00.250Z");
        for bad in
            ["", "2026-12-06", "2026-13-01T00:00:00Z", "2026-12-06T17:00:00", "yesterday", "1969-12-31T23:59:59Z"]
        {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_cursor_reads_back_only_in_the_form_it_was_written() {
        let key = LedgerKey { at_ms: 1_796_576_400_250, shard: 3, index: 77, position: 2 };
        assert_eq!(parse_cursor(&cursor_text(key)).ok(), Some(key));
        for bad in ["", "1.2.3", "1.2.3.4.5", "0x1.2.3.4", "01.2.3.4", "g.2.3.4", "1.ffffffffff.3.4"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
