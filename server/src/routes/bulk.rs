//! Bulk import and export of items: `POST /v1/items:import` streams NDJSON
//! or CSV rows into upserts, `GET /v1/items:export` streams every item out,
//! and `GET /v1/imports[/{id}]` shows the progress of recent imports.
//!
//! An import is not one write: each row is an upsert of its own (absolute
//! levels and attributes, `Expect::Any`), so importing the same rows again
//! leaves the same items — an import cut short is finished by sending it
//! again. Rows are grouped per shard, `import.rows_per_batch` to a proposal,
//! with at most `import.batches_in_flight_max` proposals in flight; the body
//! is read no faster than they commit. A row that is bad, or that its shard
//! refuses, is reported with its number and a stable code, and the import
//! goes on. The answer comes when every row has been applied or refused.
//!
//! A row is one line: CSV fields may be quoted (`"a, b"`, `""` for a
//! quote) but may not span lines. An export is a valid import (its
//! read-only columns are accepted and ignored).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cluster::SubmitError;
use engine::cmd::{Expect, UpsertItem};
use engine::ids::{ItemName, Principal as PrincipalName, Sku, Warehouse};
use engine::outcome::ItemView;
use engine::query::{ItemFilter, ItemPage};
use engine::read::Query;
use engine::{Command, Outcome, shard_of};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::items::{attr, nullable};
use super::{Consistency, PathParams, QueryParams, item_json, read_shard};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::{ImportConfig, Role};
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// The columns an import sets; `sku` and `warehouse` are required.
const WRITABLE: [&str; 6] = ["sku", "warehouse", "on_hand", "low_stock_threshold", "name", "unit_price_minor"];
/// Columns of an export that an import accepts and ignores.
const READ_ONLY: [&str; 5] = ["reserved", "available", "status", "version", "updated_at_ms"];
/// Every column of an export, in order.
const EXPORT_COLUMNS: [&str; 11] = [
    "sku",
    "warehouse",
    "on_hand",
    "reserved",
    "available",
    "low_stock_threshold",
    "status",
    "version",
    "updated_at_ms",
    "name",
    "unit_price_minor",
];

/// One NDJSON row.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    sku: String,
    warehouse: String,
    on_hand: Option<u64>,
    low_stock_threshold: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    unit_price_minor: Option<Option<u64>>,
    // An export's read-only members, accepted so an export imports as is.
    #[serde(default, rename = "reserved")]
    _reserved: serde::de::IgnoredAny,
    #[serde(default, rename = "available")]
    _available: serde::de::IgnoredAny,
    #[serde(default, rename = "status")]
    _status: serde::de::IgnoredAny,
    #[serde(default, rename = "version")]
    _version: serde::de::IgnoredAny,
    #[serde(default, rename = "updated_at_ms")]
    _updated_at_ms: serde::de::IgnoredAny,
    // Quantity states (`routes/states.rs`) an NDJSON export carries; an
    // import does not set them (yet), so they are accepted and ignored.
    #[serde(default, rename = "safety_stock")]
    _safety_stock: serde::de::IgnoredAny,
    #[serde(default, rename = "damaged")]
    _damaged: serde::de::IgnoredAny,
    #[serde(default, rename = "quality_control")]
    _quality_control: serde::de::IgnoredAny,
    #[serde(default, rename = "incoming")]
    _incoming: serde::de::IgnoredAny,
    #[serde(default, rename = "incoming_expected_at")]
    _incoming_expected_at: serde::de::IgnoredAny,
    #[serde(default, rename = "incoming_expected_at_ms")]
    _incoming_expected_at_ms: serde::de::IgnoredAny,
    #[serde(default, rename = "backorder_limit")]
    _backorder_limit: serde::de::IgnoredAny,
    #[serde(default, rename = "backordered")]
    _backordered: serde::de::IgnoredAny,
}

/// The body's format, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Ndjson,
    Csv,
}

impl Format {
    fn of_content_type(headers: &HeaderMap) -> Option<Format> {
        let mime = headers.get(header::CONTENT_TYPE)?.to_str().ok()?.split(';').next()?.trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/jsonlines" => {
                Some(Format::Ndjson)
            }
            "text/csv" => Some(Format::Csv),
            _ => None,
        }
    }

    fn parse(text: &str) -> ApiResult<Format> {
        match text {
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            _ => Err(Problem::bad_request("invalid_format", "format is ndjson or csv")),
        }
    }
}

/// A row that could not be imported.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RowError {
    /// The data row, counting from 1 (a CSV header is not a row).
    pub row: u64,
    /// The line of the body, counting from 1.
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    /// A stable code: the engine's refusal (`below_reserved`, `shard_full`,
    /// ...), an input error (`field_too_long`, ...), `invalid_row`,
    /// `line_too_long`, or the cluster's (`unavailable`, `shard_stopped`).
    pub code: String,
    pub detail: String,
}

/// How an import stands; the body of `GET /v1/imports/{id}` and of the
/// import's own answer.
#[derive(Debug)]
pub struct ImportProgress {
    id: String,
    format: Format,
    principal: String,
    started_at_ms: u64,
    started: Instant,
    bytes: AtomicU64,
    rows: AtomicU64,
    created: AtomicU64,
    updated: AtomicU64,
    unchanged: AtomicU64,
    failed: AtomicU64,
    end: Mutex<Option<ImportEnd>>,
    errors: Mutex<Vec<RowError>>,
    errors_reported_max: usize,
}

#[derive(Clone, Debug)]
struct ImportEnd {
    /// `done`, or why it stopped early (`body_too_large`, `body_error`,
    /// `timeout`, `invalid_header`).
    state: &'static str,
    elapsed_ms: u64,
}

impl ImportProgress {
    fn fail(&self, error: RowError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if errors.len() < self.errors_reported_max {
            errors.push(error);
        }
    }

    fn finish(&self, state: &'static str) {
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        *self.end.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ImportEnd { state, elapsed_ms });
    }

    fn json(&self, with_errors: bool) -> Value {
        let end = self.end.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let failed = self.failed.load(Ordering::Relaxed);
        let mut body = json!({
            "id": self.id,
            "format": self.format,
            "principal": self.principal,
            "started_at": super::rfc3339_ms(self.started_at_ms),
            "state": end.as_ref().map_or("running", |end| end.state),
            "elapsed_ms": end.as_ref().map_or_else(
                || u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                |end| end.elapsed_ms,
            ),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "rows": self.rows.load(Ordering::Relaxed),
            "created": self.created.load(Ordering::Relaxed),
            "updated": self.updated.load(Ordering::Relaxed),
            "unchanged": self.unchanged.load(Ordering::Relaxed),
            "failed": failed,
        });
        if with_errors {
            let errors = self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            body["errors_truncated"] = json!(failed > errors.len() as u64);
            body["errors"] = json!(errors);
        }
        body
    }
}

/// The most recent imports, running or ended, newest last.
#[derive(Debug, Default)]
pub struct Imports {
    recent: Mutex<VecDeque<Arc<ImportProgress>>>,
    made: AtomicU64,
}

impl Imports {
    /// Registers a new import; 409 `import_running` if one with this id runs.
    fn begin(&self, progress: ImportProgress, recent_max: usize) -> ApiResult<Arc<ImportProgress>> {
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let running = |other: &Arc<ImportProgress>| {
            other.id == progress.id && other.end.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none()
        };
        if recent.iter().any(running) {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "import_running",
                format!("an import with id {} is running", progress.id),
            ));
        }
        recent.retain(|other| other.id != progress.id);
        let progress = Arc::new(progress);
        recent.push_back(Arc::clone(&progress));
        while recent.len() > recent_max {
            recent.pop_front();
        }
        Ok(progress)
    }

    fn find(&self, id: &str) -> Option<Arc<ImportProgress>> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().rev().find(|p| p.id == id).cloned()
    }

    /// An id for an import that brought none: `import-<wall ms>-<n>`.
    fn new_id(&self) -> String {
        format!("import-{}-{}", super::unix_ms(), self.made.fetch_add(1, Ordering::Relaxed))
    }

    fn all(&self) -> Vec<Arc<ImportProgress>> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }
}

/// An import id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn check_import_id(text: &str) -> ApiResult<()> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request("invalid_import_id", "Import-Id is 1 to 64 of A-Z a-z 0-9 . _ -"))
    }
}

/// A parsed row, ready to submit, with where it came from.
struct Row {
    row: u64,
    line: u64,
    upsert: UpsertItem,
}

/// Which CSV column holds which member (`None`: ignored).
#[derive(Debug)]
struct CsvHeader {
    columns: Vec<Option<usize>>,
}

impl CsvHeader {
    fn parse(fields: &[String]) -> ApiResult<CsvHeader> {
        let mut columns = Vec::with_capacity(fields.len());
        let mut seen = [false; WRITABLE.len()];
        for field in fields {
            let name = field.trim();
            if let Some(at) = WRITABLE.iter().position(|column| *column == name) {
                if seen[at] {
                    return Err(Problem::bad_request("invalid_header", format!("column {name} appears twice")));
                }
                seen[at] = true;
                columns.push(Some(at));
            } else if READ_ONLY.contains(&name) {
                columns.push(None);
            } else {
                return Err(Problem::bad_request(
                    "invalid_header",
                    format!(
                        "unknown column {name:?}; columns are {} (and an export's {})",
                        WRITABLE.join(", "),
                        READ_ONLY.join(", ")
                    ),
                ));
            }
        }
        if !seen[0] || !seen[1] {
            return Err(Problem::bad_request("invalid_header", "the header must name the sku and warehouse columns"));
        }
        Ok(CsvHeader { columns })
    }
}

/// Splits one CSV line into fields (RFC 4180 quoting, no line breaks
/// inside a field).
fn csv_fields(line: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = csv_core::Reader::new();
    let mut fields = Vec::new();
    let mut input = line;
    let mut field = Vec::with_capacity(64);
    let mut out = [0u8; 1024];
    loop {
        let (result, read, written) = reader.read_field(input, &mut out);
        input = &input[read..];
        field.extend_from_slice(&out[..written]);
        match result {
            csv_core::ReadFieldResult::InputEmpty => {
                if input.is_empty() {
                    // Tell the reader the line is over.
                    let (result, _, written) = reader.read_field(&[], &mut out);
                    field.extend_from_slice(&out[..written]);
                    if matches!(result, csv_core::ReadFieldResult::Field { .. }) {
                        fields.push(std::mem::take(&mut field));
                    }
                    break;
                }
            }
            csv_core::ReadFieldResult::OutputFull => {}
            csv_core::ReadFieldResult::Field { record_end } => {
                fields.push(std::mem::take(&mut field));
                if record_end {
                    break;
                }
            }
            csv_core::ReadFieldResult::End => break,
        }
    }
    fields.into_iter().map(|bytes| String::from_utf8(bytes).map_err(|_| "a field is not UTF-8".to_owned())).collect()
}

/// The upsert a row asks for, or its error (code, detail).
fn upsert_of(
    sku: String,
    warehouse: String,
    on_hand: Option<u64>,
    low_stock_threshold: Option<u64>,
    name: Option<Option<String>>,
    unit_price_minor: Option<Option<u64>>,
    principal: Option<PrincipalName>,
) -> Result<UpsertItem, (String, String)> {
    let input = |error: engine::InputError| (error.code().to_owned(), error.to_string());
    let name = match name {
        Some(Some(name)) => Some(Some(ItemName::new(name).map_err(input)?)),
        Some(None) => Some(None),
        None => None,
    };
    let upsert = UpsertItem {
        sku: Sku::new(sku).map_err(input)?,
        warehouse: Warehouse::new(warehouse).map_err(input)?,
        on_hand,
        low_stock_threshold,
        name: attr(name),
        unit_price_minor: attr(unit_price_minor),
        expect: Expect::Any,
        principal,
    };
    upsert.validate().map_err(input)?;
    Ok(upsert)
}

fn number(column: &str, text: &str) -> Result<Option<u64>, (String, String)> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>().map(Some).map_err(|_| {
        ("invalid_row".to_owned(), format!("{column} must be a whole number of at most 10^15, not {text:?}"))
    })
}

/// Reads one data line into an upsert.
fn parse_row(
    format: Format,
    header: Option<&CsvHeader>,
    line: &[u8],
    principal: Option<&PrincipalName>,
) -> Result<UpsertItem, (Option<String>, Option<String>, String, String)> {
    let principal = principal.cloned();
    match (format, header) {
        (Format::Csv, Some(header)) => {
            let fields = csv_fields(line).map_err(|detail| (None, None, "invalid_row".to_owned(), detail))?;
            if fields.len() != header.columns.len() {
                return Err((
                    None,
                    None,
                    "invalid_row".to_owned(),
                    format!("{} fields where the header has {}", fields.len(), header.columns.len()),
                ));
            }
            let mut values: [Option<String>; WRITABLE.len()] = Default::default();
            for (field, column) in fields.into_iter().zip(&header.columns) {
                if let Some(at) = column {
                    values[*at] = Some(field);
                }
            }
            let [sku, warehouse, on_hand, threshold, name, price] = values;
            let (sku, warehouse) = (sku.unwrap_or_default(), warehouse.unwrap_or_default());
            let named = |(code, detail)| (Some(sku.clone()), Some(warehouse.clone()), code, detail);
            let on_hand = number("on_hand", on_hand.as_deref().unwrap_or_default()).map_err(named)?;
            let threshold = number("low_stock_threshold", threshold.as_deref().unwrap_or_default()).map_err(named)?;
            let price = number("unit_price_minor", price.as_deref().unwrap_or_default()).map_err(named)?;
            // In CSV an empty cell keeps the attribute; only NDJSON's null clears.
            let name = name.filter(|name| !name.is_empty()).map(Some);
            upsert_of(sku.clone(), warehouse.clone(), on_hand, threshold, name, price.map(Some), principal)
                .map_err(named)
        }
        _ => {
            let row: JsonRow = serde_json::from_slice(line)
                .map_err(|error| (None, None, "invalid_row".to_owned(), format!("not a row object: {error}")))?;
            let (sku, warehouse) = (row.sku.clone(), row.warehouse.clone());
            upsert_of(
                row.sku,
                row.warehouse,
                row.on_hand,
                row.low_stock_threshold,
                row.name,
                row.unit_price_minor,
                principal,
            )
            .map_err(|(code, detail)| (Some(sku), Some(warehouse), code, detail))
        }
    }
}

/// Submits one shard's batch, retrying while the shard is between leaders
/// or busy (rows are absolute, so a retry writes the same), and counts
/// every row's outcome.
async fn submit_batch(state: Arc<AppState>, progress: Arc<ImportProgress>, shard: u32, rows: Vec<Row>) {
    let commands: Vec<Command> = rows.iter().map(|row| Command::UpsertItem(row.upsert.clone())).collect();
    let retry_until = Instant::now() + Duration::from_millis(state.config.import.retry_ms);
    let answer = loop {
        match state.submit_many_to(shard, commands.clone()).await {
            Ok(outcomes) => break Ok(outcomes),
            Err(
                error @ (SubmitError::Unavailable { retry_after_ms, .. }
                | SubmitError::Overloaded { retry_after_ms, .. }),
            ) => {
                if Instant::now() >= retry_until {
                    break Err(error);
                }
                tokio::time::sleep(Duration::from_millis(retry_after_ms.clamp(10, 1000))).await;
            }
            Err(error @ SubmitError::Unknown { .. }) if Instant::now() < retry_until => {
                tracing::debug!(%error, shard, "import batch outcome unknown; sending it again");
            }
            Err(error) => break Err(error),
        }
    };
    match answer {
        Ok(outcomes) => {
            debug_assert_eq!(outcomes.len(), rows.len(), "one outcome per command");
            for (row, outcome) in rows.iter().zip(outcomes) {
                let code = outcome.refusal().map_or("ok", engine::Refusal::code);
                state.metrics.observe_outcome(code);
                match outcome {
                    Outcome::Upserted { created: true, .. } => progress.created.fetch_add(1, Ordering::Relaxed),
                    Outcome::Upserted { changed: true, .. } => progress.updated.fetch_add(1, Ordering::Relaxed),
                    Outcome::Upserted { .. } => progress.unchanged.fetch_add(1, Ordering::Relaxed),
                    other => {
                        let problem = match other.refusal() {
                            Some(refusal) => Problem::refusal(refusal),
                            None => state.unexpected(&other),
                        };
                        progress.fail(row_error(row, problem.code, problem.detail));
                        0
                    }
                };
            }
        }
        Err(error) => {
            let problem = Problem::submit(&error);
            for row in &rows {
                progress.fail(row_error(row, problem.code, problem.detail.clone()));
            }
        }
    }
}

fn row_error(row: &Row, code: &str, detail: String) -> RowError {
    RowError {
        row: row.row,
        line: row.line,
        sku: Some(row.upsert.sku.as_str().to_owned()),
        warehouse: Some(row.upsert.warehouse.as_str().to_owned()),
        code: code.to_owned(),
        detail,
    }
}

/// Reads the body line by line and feeds the batches.
struct Importer {
    state: Arc<AppState>,
    progress: Arc<ImportProgress>,
    principal: Option<PrincipalName>,
    limits: ImportConfig,
    header: Option<CsvHeader>,
    line: u64,
    row: u64,
    pending: Vec<Vec<Row>>,
    in_flight: FuturesUnordered<tokio::task::JoinHandle<()>>,
}

impl Importer {
    /// One complete line (without its line break).
    async fn line(&mut self, line: &[u8]) -> ApiResult<()> {
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if self.progress.format == Format::Csv && self.header.is_none() {
            let fields = csv_fields(line).map_err(|detail| Problem::bad_request("invalid_header", detail))?;
            self.header = Some(CsvHeader::parse(&fields)?);
            return Ok(());
        }
        self.row += 1;
        self.progress.rows.fetch_add(1, Ordering::Relaxed);
        match parse_row(self.progress.format, self.header.as_ref(), line, self.principal.as_ref()) {
            Ok(upsert) => {
                let shard = shard_of(upsert.sku.as_str(), self.state.node.shard_count());
                let batch = &mut self.pending[shard as usize];
                batch.push(Row { row: self.row, line: self.line, upsert });
                if batch.len() >= self.limits.rows_per_batch {
                    let rows = std::mem::take(batch);
                    self.dispatch(shard, rows).await;
                }
            }
            Err((sku, warehouse, code, detail)) => {
                self.progress.fail(RowError { row: self.row, line: self.line, sku, warehouse, code, detail });
            }
        }
        Ok(())
    }

    /// A line longer than `line_bytes_max`: reported, not read.
    fn too_long(&mut self) {
        self.line += 1;
        self.row += 1;
        self.progress.rows.fetch_add(1, Ordering::Relaxed);
        self.progress.fail(RowError {
            row: self.row,
            line: self.line,
            sku: None,
            warehouse: None,
            code: "line_too_long".to_owned(),
            detail: format!("a row is at most {} bytes (import.line_bytes_max)", self.limits.line_bytes_max),
        });
    }

    async fn dispatch(&mut self, shard: u32, rows: Vec<Row>) {
        while self.in_flight.len() >= self.limits.batches_in_flight_max {
            self.in_flight.next().await;
        }
        let task = submit_batch(Arc::clone(&self.state), Arc::clone(&self.progress), shard, rows);
        self.in_flight.push(tokio::spawn(task));
    }

    /// Sends what is left and waits for every batch.
    async fn drain(&mut self) {
        for shard in 0..self.pending.len() {
            let rows = std::mem::take(&mut self.pending[shard]);
            if !rows.is_empty() {
                self.dispatch(u32::try_from(shard).unwrap_or(u32::MAX), rows).await;
            }
        }
        while self.in_flight.next().await.is_some() {}
    }
}

/// Reads the whole body through the importer. `Err` stops the import early
/// (the rows read so far are still applied and counted).
async fn read_body(importer: &mut Importer, body: Body) -> ApiResult<()> {
    let limits = importer.limits.clone();
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::with_capacity(limits.line_bytes_max.min(64 * 1024));
    // Inside a line that was too long: skip to its end.
    let mut skipping = false;
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes =
            chunk.map_err(|error| Problem::bad_request("body_error", format!("reading the body: {error}")))?;
        total += chunk.len() as u64;
        importer.progress.bytes.store(total, Ordering::Relaxed);
        if total > limits.bytes_max {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "an import is at most {} bytes (import.bytes_max); the rows before were imported",
                    limits.bytes_max
                ),
            ));
        }
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            let end = rest.iter().position(|byte| *byte == b'\n');
            let (part, tail) = match end {
                Some(at) => (&rest[..at], Some(&rest[at + 1..])),
                None => (rest, None),
            };
            if !skipping {
                if buffer.len() + part.len() > limits.line_bytes_max {
                    buffer.clear();
                    skipping = true;
                    importer.too_long();
                } else {
                    buffer.extend_from_slice(part);
                }
            }
            match tail {
                Some(tail) => {
                    if !skipping {
                        let line = std::mem::take(&mut buffer);
                        importer.line(&line).await?;
                        buffer = line;
                        buffer.clear();
                    }
                    skipping = false;
                    rest = tail;
                }
                None => rest = &[],
            }
        }
    }
    if !skipping && !buffer.is_empty() {
        importer.line(&buffer).await?;
    }
    Ok(())
}

/// `POST /v1/items:import` (admin).
#[utoipa::path(
    post,
    path = "/v1/items:import",
    tag = "items",
    summary = "Import items from NDJSON or CSV, streamed",
    description = "Each row creates or sets one item, as `PUT /v1/items/{sku}/{warehouse}` without \
        preconditions: `sku` and `warehouse`, and any of `on_hand`, `low_stock_threshold`, `name`, \
        `unit_price_minor` (absent keeps the value; in NDJSON `null` clears name or price). \
        NDJSON: one object per line (`Content-Type: application/x-ndjson`). CSV (`text/csv`): a header \
        line naming the columns, then one row per line; an empty cell keeps the value; fields may be \
        quoted but not span lines. The columns of an export that cannot be set (`reserved`, `available`, \
        `status`, `version`, `updated_at_ms`, and in NDJSON the quantity states `safety_stock`, `damaged`, \
        `quality_control`, `incoming`, `incoming_expected_at`, `incoming_expected_at_ms`, `backorder_limit`, \
        `backordered`) are accepted and \
        ignored, so an export imports as is.\n\n\
        Rows are independent writes: a bad or refused row is reported (`errors`, at most \
        `import.errors_reported_max` of them) and the import goes on, and importing the same rows again \
        leaves the same items. `Import-Id` names the import, so `GET /v1/imports/{id}` shows its progress \
        while it runs. The answer comes when every row has been applied or refused.",
    extensions(("x-tally-role" = json!("admin"))),
    params(
        ("Import-Id" = Option<String>, Header, nullable = false,
            description = "A name for this import (1 to 64 of `A-Z a-z 0-9 . _ -`); one is made up if absent."),
    ),
    request_body(
        description = "NDJSON or CSV rows.",
        content(
            (String = "application/x-ndjson", example = json!("{\"sku\":\"tee\",\"warehouse\":\"berlin\",\"on_hand\":40}\n")),
            (String = "text/csv", example = json!("sku,warehouse,on_hand\ntee,berlin,40\n")),
        ),
    ),
    responses(
        (status = 200, description = "Every row was read: counts, and the rows that failed.", body = ImportReport),
        (status = 400, description = "`invalid_header` (CSV header: unknown or repeated column, no sku or \
            warehouse; nothing was imported), `invalid_import_id`, `body_error` (the body broke off; the \
            report in `import` counts what was applied)."),
        (status = 409, description = "`import_running`: an import with this `Import-Id` runs."),
        (status = 413, description = "`body_too_large`: beyond `import.bytes_max`; rows before were applied \
            (the report is in `import`)."),
        (status = 415, description = "`unsupported_media_type`: not NDJSON or CSV."),
    ),
)]
pub async fn import(State(state): Shared, principal: Principal, request: Request) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let (parts, body) = request.into_parts();
    let format = Format::of_content_type(&parts.headers).ok_or_else(|| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send rows as Content-Type: application/x-ndjson or text/csv",
        )
    })?;
    let id = match parts.headers.get("import-id") {
        Some(value) => {
            let text = value.to_str().map_err(|_| Problem::bad_request("invalid_import_id", "Import-Id is ASCII"))?;
            check_import_id(text)?;
            text.to_owned()
        }
        None => state.imports.new_id(),
    };
    let limits = state.config.import.clone();
    let progress = ImportProgress {
        id,
        format,
        principal: principal.name.clone(),
        started_at_ms: super::unix_ms(),
        started: Instant::now(),
        bytes: AtomicU64::new(0),
        rows: AtomicU64::new(0),
        created: AtomicU64::new(0),
        updated: AtomicU64::new(0),
        unchanged: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        end: Mutex::new(None),
        errors: Mutex::new(Vec::new()),
        errors_reported_max: limits.errors_reported_max,
    };
    let progress = state.imports.begin(progress, limits.recent_max)?;
    tracing::info!(id = progress.id, principal = principal.name, ?format, "import started");
    let mut importer = Importer {
        state: Arc::clone(&state),
        progress: Arc::clone(&progress),
        principal: PrincipalName::new(principal.name.clone()).ok(),
        header: None,
        line: 0,
        row: 0,
        pending: (0..state.node.shard_count()).map(|_| Vec::new()).collect(),
        in_flight: FuturesUnordered::new(),
        limits,
    };
    let read = read_body(&mut importer, body).await;
    // Whatever stopped the reading, rows already read are applied and counted.
    importer.drain().await;
    progress.finish(match &read {
        Ok(()) => "done",
        Err(problem) => problem.code,
    });
    let report = progress.json(true);
    tracing::info!(
        id = progress.id,
        rows = report["rows"].as_u64(),
        failed = report["failed"].as_u64(),
        elapsed_ms = report["elapsed_ms"].as_u64(),
        "import ended"
    );
    match read {
        Ok(()) => Ok(axum::Json(report).into_response()),
        Err(problem) => Err(problem.with_extra(json!({ "import": report }))),
    }
}

/// The report of an import (its answer, and `GET /v1/imports/{id}`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub id: String,
    /// `ndjson` or `csv`.
    pub format: String,
    /// The API key that sent it.
    pub principal: String,
    pub started_at: String,
    /// `running`, `done`, or the code that stopped it early (`body_too_large`,
    /// `body_error`, `invalid_header`, `timeout`).
    pub state: String,
    pub elapsed_ms: u64,
    /// Body bytes read so far.
    pub bytes: u64,
    /// Data rows read so far.
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    /// Rows that matched their item as it was.
    pub unchanged: u64,
    pub failed: u64,
    /// More rows failed than `errors` lists.
    pub errors_truncated: bool,
    pub errors: Vec<RowError>,
}

/// `GET /v1/imports` (admin).
#[utoipa::path(
    get,
    path = "/v1/imports",
    tag = "items",
    summary = "Recent imports on this node, with their progress",
    description = "The last `import.recent_max` imports this node ran, oldest first, running ones included \
        (without their row errors: read one import for those).",
    extensions(("x-tally-role" = json!("admin"))),
    responses((status = 200, description = "`imports`: reports without `errors`.", body = Value)),
)]
pub async fn list_imports(State(state): Shared, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let imports: Vec<Value> = state.imports.all().iter().map(|progress| progress.json(false)).collect();
    Ok(axum::Json(json!({ "imports": imports })).into_response())
}

/// `GET /v1/imports/{id}` (admin).
#[utoipa::path(
    get,
    path = "/v1/imports/{id}",
    tag = "items",
    summary = "One import's progress and row errors",
    extensions(("x-tally-role" = json!("admin"))),
    params(("id" = String, Path, description = "The import's id (`Import-Id`, or the one in its report).")),
    responses(
        (status = 200, description = "The import's report so far.", body = ImportReport),
        (status = 404, description = "`import_not_found`: not among this node's recent imports."),
    ),
)]
pub async fn get_import(
    State(state): Shared,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let progress = state
        .imports
        .find(&id)
        .ok_or_else(|| Problem::not_found("import_not_found", "no such import among this node's recent ones"))?;
    Ok(axum::Json(progress.json(true)).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `ndjson` (the default) or `csv`.
    pub format: Option<String>,
    /// `linearizable` (the default): each page is read through its shard's
    /// leader; `stale`: from this node's replica.
    #[serde(default)]
    pub consistency: Consistency,
}

/// A CSV field, quoted when it must be.
fn csv_field(out: &mut Vec<u8>, text: &str) {
    if text.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for byte in text.bytes() {
            if byte == b'"' {
                out.push(b'"');
            }
            out.push(byte);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

fn export_line(out: &mut Vec<u8>, format: Format, item: &ItemView) {
    match format {
        Format::Ndjson => {
            // A Value always serializes.
            let _ = serde_json::to_writer(&mut *out, &item_json(item));
            out.push(b'\n');
        }
        Format::Csv => {
            let numbers = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
            let fields = [
                item.sku.clone(),
                item.warehouse.clone(),
                item.on_hand.to_string(),
                item.reserved.to_string(),
                item.available.to_string(),
                item.low_stock_threshold.to_string(),
                item.status.as_str().to_owned(),
                item.version.to_string(),
                item.updated_at_ms.to_string(),
                item.name.clone().unwrap_or_default(),
                numbers(item.unit_price_minor),
            ];
            for (at, field) in fields.iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                csv_field(out, field);
            }
            out.push(b'\n');
        }
    }
}

/// Where an export stands: the next shard and position to read.
struct ExportCursor {
    state: Arc<AppState>,
    format: Format,
    consistency: Consistency,
    shard: u32,
    position: u32,
    done: bool,
}

/// The next chunk of an export: one page of one shard.
async fn export_page(mut cursor: ExportCursor) -> Option<(Result<Bytes, std::io::Error>, ExportCursor)> {
    if cursor.done {
        return None;
    }
    let state = Arc::clone(&cursor.state);
    let filter = ItemFilter {
        status: None,
        warehouse: None,
        cursor: cursor.position,
        limit: state.config.import.export_page_items,
        scan_max: state.config.import.export_page_items,
    };
    let page: ApiResult<ItemPage> = read_shard(&state, cursor.shard, cursor.consistency, Query::Items(filter)).await;
    let page = match page {
        Ok(page) => page,
        Err(problem) => {
            // The status line is sent: break the body off so the client sees
            // an incomplete export, never a short one that looks whole.
            cursor.done = true;
            tracing::warn!(shard = cursor.shard, code = problem.code, "export stopped: {}", problem.detail);
            return Some((Err(std::io::Error::other(format!("export stopped: {}", problem.detail))), cursor));
        }
    };
    let mut out = Vec::with_capacity(page.items.len() * 160);
    for item in &page.items {
        export_line(&mut out, cursor.format, item);
    }
    match page.next_cursor {
        Some(next) => cursor.position = next,
        None if cursor.shard + 1 < state.node.shard_count() => {
            cursor.shard += 1;
            cursor.position = 0;
        }
        None => cursor.done = true,
    }
    Some((Ok(Bytes::from(out)), cursor))
}

/// `GET /v1/items:export`.
#[utoipa::path(
    get,
    path = "/v1/items:export",
    tag = "items",
    summary = "Export every item, streamed as NDJSON or CSV",
    description = "Items in shard order, `import.export_page_items` per read. NDJSON lines have the \
        members of an item; CSV has a header line, then the columns sku, warehouse, on_hand, reserved, \
        available, low_stock_threshold, status, version, updated_at_ms, name, unit_price_minor. Each page \
        is one consistent read; the export as a whole is not a snapshot of one moment. If a shard cannot \
        be read the body breaks off (no final chunk), so a cut export never looks complete. An export \
        imports as is (`POST /v1/items:import`).",
    extensions(("x-tally-role" = json!("read"))),
    params(ExportQuery),
    responses(
        (status = 200, description = "The items.", content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        )),
        (status = 400, description = "`invalid_query`, `invalid_format`."),
    ),
)]
pub async fn export(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<ExportQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let format = query.format.as_deref().map_or(Ok(Format::Ndjson), Format::parse)?;
    let head = match format {
        Format::Csv => {
            let mut line = EXPORT_COLUMNS.join(",").into_bytes();
            line.push(b'\n');
            Bytes::from(line)
        }
        Format::Ndjson => Bytes::new(),
    };
    let cursor = ExportCursor {
        state: Arc::clone(&state),
        format,
        consistency: query.consistency,
        shard: 0,
        position: 0,
        done: false,
    };
    let pages = futures_util::stream::unfold(cursor, export_page);
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(pages);
    let mut response = Body::from_stream(stream).into_response();
    let content_type = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use engine::cmd::AttrUpdate;

    use super::*;

    #[test]
    fn csv_lines_split_with_quotes() {
        assert_eq!(csv_fields(b"a,b,c").unwrap_or_else(|e| panic!("{e:?}")), ["a", "b", "c"]);
        assert_eq!(
            csv_fields(b"\"a, b\",\"say \"\"hi\"\"\",").unwrap_or_else(|e| panic!("{e:?}")),
            ["a, b", "say \"hi\"", ""]
        );
        assert_eq!(csv_fields(b"x").unwrap_or_else(|e| panic!("{e:?}")), ["x"]);
        let long = "n".repeat(3000);
        assert_eq!(
            csv_fields(format!("{long},1").as_bytes()).unwrap_or_else(|e| panic!("{e:?}")),
            [long.as_str(), "1"]
        );
    }

    #[test]
    fn csv_fields_round_trip_through_the_writer() {
        for text in ["plain", "with, comma", "with \"quotes\"", "", "ünïcode"] {
            let mut out = Vec::new();
            csv_field(&mut out, text);
            out.extend_from_slice(b",end");
            assert_eq!(csv_fields(&out).unwrap_or_else(|e| panic!("{e:?}")), [text, "end"], "{text:?}");
        }
    }

    #[test]
    fn a_csv_header_must_name_sku_and_warehouse_once_and_nothing_unknown() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(CsvHeader::parse(&names(&["sku", "warehouse", "on_hand"])).is_ok());
        assert!(CsvHeader::parse(&names(&EXPORT_COLUMNS)).is_ok());
        for bad in [&["sku", "on_hand"][..], &["sku", "warehouse", "sku"], &["sku", "warehouse", "colour"]] {
            assert_eq!(
                CsvHeader::parse(&names(bad)).err().unwrap_or_else(|| panic!("expected an error")).code,
                "invalid_header",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rows_parse_or_name_their_error() {
        let header = CsvHeader::parse(&["sku".into(), "warehouse".into(), "on_hand".into(), "name".into()])
            .unwrap_or_else(|e| panic!("{e:?}"));
        let row = parse_row(Format::Csv, Some(&header), b"tee,berlin,40,\"Tee, red\"", None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((row.sku.as_str(), row.warehouse.as_str(), row.on_hand), ("tee", "berlin", Some(40)));
        assert_eq!(row.name, AttrUpdate::Set(ItemName::new("Tee, red".to_owned()).unwrap_or_else(|e| panic!("{e:?}"))));
        let kept = parse_row(Format::Csv, Some(&header), b"tee,berlin,,", None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((kept.on_hand, &kept.name), (None, &AttrUpdate::Keep));
        let error = parse_row(Format::Csv, Some(&header), b"tee,berlin,many,", None)
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        assert_eq!((error.0.as_deref(), error.2.as_str()), (Some("tee"), "invalid_row"));
        let error = parse_row(Format::Csv, Some(&header), b"tee,berlin", None)
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        assert_eq!(error.2, "invalid_row");
        let error = parse_row(Format::Csv, Some(&header), b",berlin,1,", None)
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        assert_eq!(error.2, "field_empty");

        let row = parse_row(Format::Ndjson, None, br#"{"sku":"a","warehouse":"w","name":null,"reserved":3}"#, None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(row.name, AttrUpdate::Clear);
        let error = parse_row(Format::Ndjson, None, br#"{"sku":"a","warehouse":"w","colour":1}"#, None)
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        assert_eq!(error.2, "invalid_row");
        let error = parse_row(Format::Ndjson, None, br#"{"sku":"a","warehouse":"w","on_hand":2000000000000000}"#, None)
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        assert_eq!((error.0.as_deref(), error.2.as_str()), (Some("a"), "quantity_too_large"));
    }
}
