//! `tally backup --to DIR`: asks a running node for a backup over its
//! HTTP API (`POST /v1/admin/backup`), plain HTTP. When the request times
//! out on the node's side (`server.request_timeout_ms`) the backup goes
//! on there: the command then polls `GET /v1/admin/backup` until it ends.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Pause between two status polls of a backup still running.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Polls before the command gives up waiting (the backup goes on).
const POLLS_MAX: u32 = 7_200;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) async fn call(
    client: &HttpClient,
    base: &str,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let uri: Uri = format!("{}{path}", base.trim_end_matches('/')).parse().map_err(|e| format!("bad --url: {e}"))?;
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| "bad --api-key".to_owned())?;
        request = request.header(AUTHORIZATION, value);
    }
    let payload = match body {
        Some(body) => {
            request = request.header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(payload)).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "body": String::from_utf8_lossy(&bytes) }));
    Ok((status, value))
}

/// Asks the node at `base` for a backup into `to`; returns the finished
/// backup's status (what `GET /v1/admin/backup` shows).
pub async fn request_backup(base: &str, key: Option<&str>, to: &str) -> Result<Value, String> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let (status, body) = call(&client, base, Method::POST, "/v1/admin/backup", key, Some(&json!({ "to": to }))).await?;
    if status == 200 {
        return Ok(body);
    }
    if !(status == 503 && body.get("code").and_then(Value::as_str) == Some("timeout")) {
        return Err(format!("{status}: {body}"));
    }
    for _ in 0..POLLS_MAX {
        tokio::time::sleep(POLL_INTERVAL).await;
        let (status, body) = call(&client, base, Method::GET, "/v1/admin/backup", key, None).await?;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        match body.get("state").and_then(Value::as_str) {
            Some("running") => continue,
            Some("done") => return Ok(body),
            _ => return Err(format!("the backup failed: {body}")),
        }
    }
    Err("the backup is still running; see GET /v1/admin/backup".into())
}
