//! One HTTP/1.1 keep-alive connection to one node, re-opened after an
//! error: the client of load generators (tally-bench) and fault runs
//! (tally-chaos), where each simulated client owns exactly one connection
//! and says whether a failed request may have been sent. Tests use the
//! pooled [`crate::Http`] instead.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The connection could not be opened or the request not built: it was
    /// never sent, so it certainly did not happen.
    NotSent(String),
    /// Sent, or maybe sent: it may have happened.
    Lost(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::NotSent(why) => write!(f, "not sent: {why}"),
            ConnError::Lost(why) => f.write_str(why),
        }
    }
}

/// One keep-alive connection, opened on the first request.
pub struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Connection {
        Connection { addr, sender: None }
    }

    /// Forgets the connection (after a timeout: its answer may still come).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// Sends one request (`body` as JSON) and reads the whole answer; the
    /// connection is dropped after an error.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ConnError> {
        let content_type = body.is_some().then_some("application/json");
        self.send(method, path, content_type, body.unwrap_or_default()).await
    }

    /// [`Connection::request`] with extra headers, e.g.
    /// `[("idempotency-key", "k1")]` for a write that is retried.
    pub async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ConnError> {
        let content_type = body.is_some().then_some("application/json");
        let result = self.try_send(method, path, content_type, headers, body.unwrap_or_default()).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// Sends one request with `body` of `content_type` (none: no header)
    /// and reads the whole answer; the connection is dropped after an
    /// error.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ConnError> {
        let result = self.try_send(method, path, content_type, &[], body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ConnError> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| ConnError::NotSent(format!("connect {}: {e}", self.addr)))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ConnError::NotSent(e.to_string()))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        let host = self.addr.to_string();
        let sender = self.sender.as_mut().ok_or_else(|| ConnError::NotSent("no connection".to_owned()))?;
        sender.ready().await.map_err(|e| ConnError::NotSent(e.to_string()))?;
        let mut builder = Request::builder().method(method).uri(path).header("host", host);
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body)).map_err(|e| ConnError::NotSent(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| ConnError::Lost(e.to_string()))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| ConnError::Lost(e.to_string()))?.to_bytes();
        Ok((status, bytes))
    }
}

impl From<ConnError> for String {
    fn from(error: ConnError) -> String {
        error.to_string()
    }
}
