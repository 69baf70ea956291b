//! HTTPS on the HTTP port (issue 15 item 1, the HTTP part): with
//! `server.tls_cert` and `tls_key` the API is served over TLS, with a
//! self-signed certificate generated here; plain HTTP and silent clients
//! on that port are closed; bad TLS files stop the start with the path.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// Longest wait for anything the server should do on its own.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// A self-signed certificate for `localhost` and 127.0.0.1, written as
/// PEM files in `dir`; answers a client that trusts it.
fn self_signed(dir: &Path) -> TlsConnector {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).unwrap_or_else(|e| panic!("generating a cert: {e}"));
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap_or_else(|e| panic!("trusting the cert: {e}"));
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// One request over a new TLS connection: status and JSON body (`Err` says
/// why there was none).
async fn https(
    tls: &TlsConnector,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let stream = tls.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(b"http/1.1".as_slice()) {
            return Err(format!("ALPN: {:?}", session.alpn_protocol()));
        }
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header("host", "localhost");
        let bytes = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    };
    tokio::time::timeout(WAIT_MAX, exchange).await.unwrap_or_else(|_| Err("no answer".into()))
}

/// Starts a node serving HTTPS with the certificate in `dir`; waits for
/// `/readyz` over HTTPS.
async fn start_https(dir: &Path, tls: &TlsConnector) -> TallyProcess {
    let path = |name: &str| serde_json::to_string(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
    let options = options()
        .shards(1)
        .set("server", "tls_cert", &path("cert.pem"))
        .set("server", "tls_key", &path("key.pem"))
        .set("server", "header_read_timeout_ms", "1000");
    let mut node = TallyProcess::start_unprobed(options);
    let deadline = Instant::now() + READY_WAIT_MAX;
    loop {
        if !node.is_running() {
            node.print_logs();
            panic!("the HTTPS node exited before it was ready");
        }
        if let Ok((StatusCode::OK, _)) = https(tls, node.http_addr, Method::GET, "/readyz", None).await {
            return node;
        }
        assert!(Instant::now() < deadline, "the HTTPS node was not ready within {READY_WAIT_MAX:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let tls = self_signed(dir.path());
    let node = start_https(dir.path(), &tls).await;
    let addr = node.http_addr;

    let put = https(&tls, addr, Method::PUT, &item_path("tls-sku", "w1"), Some(json!({ "on_hand": 5 }))).await;
    assert_eq!(put.as_ref().map(|(status, _)| *status), Ok(StatusCode::CREATED), "{put:?}");
    let hold = json!({ "lines": [{ "sku": "tls-sku", "warehouse": "w1", "quantity": 2 }] });
    let held = https(&tls, addr, Method::POST, "/v1/reservations", Some(hold)).await;
    assert_eq!(held.as_ref().map(|(status, _)| *status), Ok(StatusCode::CREATED), "{held:?}");
    let item = https(&tls, addr, Method::GET, &item_path("tls-sku", "w1"), None).await;
    let (status, body) = item.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((status, u64_of(&body, "reserved")), (StatusCode::OK, 2), "{body}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let _ = plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT_MAX, plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the plain connection was closed");
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "served plain HTTP: {:?}", String::from_utf8_lossy(&answer));

    // A client that connects and never starts the handshake is closed after
    // the header timeout (1 s here), not before.
    let connected = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT_MAX, silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the silent connection was closed: {read:?}");
    assert!(connected.elapsed() >= Duration::from_secs(1), "closed after {:?}", connected.elapsed());

    let raw = raw_metrics(&tls, addr).await;
    let handshakes = raw
        .lines()
        .find_map(|line| line.strip_prefix("tally_http_connections_closed_total{reason=\"tls_handshake\"} "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(handshakes >= 2.0, "the plain and the silent connection are counted: {handshakes}");
}

/// `/metrics` over HTTPS, as text.
async fn raw_metrics(tls: &TlsConnector, addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let name = ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
    let mut stream = tls.connect(name, tcp).await.unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut text = Vec::new();
    let _ = tokio::time::timeout(WAIT_MAX, stream.read_to_end(&mut text)).await;
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_bad_tls_file_stops_the_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap_or_else(|e| panic!("{e}"));
    for (cert, key, named) in
        [("missing.pem", "missing-key.pem", "missing.pem"), ("garbage.pem", "garbage.pem", "garbage.pem")]
    {
        let path = |name: &str| serde_json::to_string(&dir.path().join(name)).unwrap_or_else(|e| panic!("{e}"));
        let options = options().shards(1).set("server", "tls_cert", &path(cert)).set("server", "tls_key", &path(key));
        let mut node = TallyProcess::start_unprobed(options);
        let deadline = Instant::now() + READY_WAIT_MAX;
        while node.is_running() {
            assert!(Instant::now() < deadline, "a node with bad TLS files kept running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs = node.logs();
        assert!(logs.contains("server.tls_cert") && logs.contains(named), "the error names the file: {logs}");
    }
}
