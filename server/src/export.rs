//! `tally ledger export`: pages `GET /v1/ledger` of a running node and
//! writes every entry as a JSON line or a CSV row.
//!
//! It talks HTTP to the node (`--url`, `TALLY_URL`; the key from
//! `--api-key` or `TALLY_API_KEY`, any role), so it never opens a data
//! directory a node is using. Plain `http://` only, as the webhooks.

use std::io::{self, Write};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How the entries are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line, as `GET /v1/ledger` answers each entry.
    #[default]
    Jsonl,
    /// A header row, then one row per entry (RFC 4180 quoting).
    Csv,
}

/// What to export.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ExportArgs {
    /// The node's HTTP address.
    #[arg(long, env = "TALLY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API key (any role); none for an open node.
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    #[arg(long)]
    pub sku: Option<String>,
    #[arg(long)]
    pub warehouse: Option<String>,
    /// A movement kind (`adjust`, `hold`, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// RFC 3339, inclusive.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    #[arg(long)]
    pub until: Option<String>,
    /// Entries per request (at most the node's `ledger.page_limit_max`).
    #[arg(long, default_value_t = 1000)]
    pub page_limit: usize,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// CSV columns, in order.
pub const CSV_COLUMNS: [&str; 17] = [
    "id",
    "at",
    "kind",
    "sku",
    "warehouse",
    "quantity",
    "on_hand_before",
    "on_hand_after",
    "reserved_before",
    "reserved_after",
    "principal",
    "reason",
    "note",
    "order_id",
    "reservation_id",
    "document",
    "gap_to_index",
];

/// Runs the export; the count of entries written, or what went wrong.
pub async fn export(args: &ExportArgs) -> Result<u64, String> {
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        )),
        None => Box::new(io::BufWriter::new(io::stdout().lock())),
    };
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    if args.format == Format::Csv {
        writeln!(out, "{}", CSV_COLUMNS.join(",")).map_err(|e| e.to_string())?;
    }
    let mut cursor: Option<String> = None;
    let mut written = 0u64;
    loop {
        let page = fetch(&client, args, cursor.as_deref()).await?;
        let entries = page.get("entries").and_then(Value::as_array).ok_or("the answer has no entries")?;
        for entry in entries {
            match args.format {
                Format::Jsonl => writeln!(out, "{entry}"),
                Format::Csv => writeln!(out, "{}", csv_row(entry)),
            }
            .map_err(|e| e.to_string())?;
            written += 1;
        }
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(written)
}

async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    args: &ExportArgs,
    cursor: Option<&str>,
) -> Result<Value, String> {
    let mut query = vec![("limit", args.page_limit.to_string())];
    for (name, value) in [
        ("sku", &args.sku),
        ("warehouse", &args.warehouse),
        ("kind", &args.kind),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor.to_owned()));
    }
    let query: Vec<String> = query.iter().map(|(name, value)| format!("{name}={}", percent_encode(value))).collect();
    let url = format!("{}/v1/ledger?{}", args.url.trim_end_matches('/'), query.join("&"));
    let uri: Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
    let mut request = Request::builder().method(Method::GET).uri(uri);
    if let Some(key) = &args.api_key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| "the API key is not a header value")?;
        request = request.header(AUTHORIZATION, value);
    }
    let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(request))
        .await
        .map_err(|_| format!("{url}: no answer in 60 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: {status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}

/// One entry as a CSV row, in `CSV_COLUMNS` order.
pub fn csv_row(entry: &Value) -> String {
    let field = |path: &[&str]| -> String {
        let mut value = entry;
        for name in path {
            match value.get(name) {
                Some(inner) => value = inner,
                None => return String::new(),
            }
        }
        match value {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    };
    let columns = [
        field(&["id"]),
        field(&["at"]),
        field(&["kind"]),
        field(&["sku"]),
        field(&["warehouse"]),
        field(&["quantity"]),
        field(&["on_hand_before"]),
        field(&["on_hand_after"]),
        field(&["reserved_before"]),
        field(&["reserved_after"]),
        field(&["principal"]),
        field(&["reason"]),
        field(&["note"]),
        field(&["reference", "order_id"]),
        field(&["reference", "reservation_id"]),
        field(&["reference", "document"]),
        field(&["gap", "to_index"]),
    ];
    columns.iter().map(|text| csv_quote(text)).collect::<Vec<_>>().join(",")
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_quote(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_csv_row_quotes_what_needs_it_and_flattens_the_reference() {
        let entry = json!({
            "id": "0-5-1", "at": "2026-12-06T17:00:00.000Z", "kind": "adjust", "sku": "S-1", "warehouse": "w1",
            "quantity": -3, "on_hand_before": 10, "on_hand_after": 7, "reserved_before": 0, "reserved_after": 0,
            "principal": "ops", "reason": "damage", "note": "crushed, \"badly\"",
            "reference": { "order_id": null, "reservation_id": null, "document": "DN-7" },
        });
        assert_eq!(
            csv_row(&entry),
            "0-5-1,2026-12-06T17:00:00.000Z,adjust,S-1,w1,-3,10,7,0,0,ops,damage,\"crushed, \"\"badly\"\"\",,,DN-7,"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("2026-12-06T18:00:00+01:00"), "2026-12-06T18%3A00%3A00%2B01%3A00");
    }
}
