//! One HTTP/1.1 request to an auth server or a JWKS URL, over hyper's client connection, with
//! TLS (`https://`) through the shared rustls client (Web PKI, or a pinned fingerprint). The
//! whole exchange is bounded in time and the answer's body in size; nothing here blocks a
//! runtime thread.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Answers larger than this are refused (a JWKS or an error text is far smaller).
pub const MAX_BODY: usize = 128 * 1024;

/// An answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// The `Location` header, when there is one (a WHEP session's resource).
    pub location: Option<String>,
}

/// Sends `method url` with `body` (JSON when not empty); the whole exchange within `limit`.
pub async fn request(
    method: &str,
    url: &str,
    body: Vec<u8>,
    fingerprint: &str,
    limit: Duration,
) -> Result<Answer, String> {
    request_as(method, url, body, fingerprint, limit, None).await
}

/// [`request`] with an `Authorization` header.
pub async fn request_as(
    method: &str,
    url: &str,
    body: Vec<u8>,
    fingerprint: &str,
    limit: Duration,
    authorization: Option<String>,
) -> Result<Answer, String> {
    let headers = authorization
        .map(|a| vec![(hyper::header::AUTHORIZATION.as_str().to_string(), a)])
        .unwrap_or_default();
    request_with(method, url, body, fingerprint, limit, headers).await
}

/// [`request`] with headers of the caller's (webhooks' signature).
pub async fn request_with(
    method: &str,
    url: &str,
    body: Vec<u8>,
    fingerprint: &str,
    limit: Duration,
    headers: Vec<(String, String)>,
) -> Result<Answer, String> {
    request_dumped(method, url, body, fingerprint, limit, headers, None).await
}

/// [`request_with`], its connection dumped as `<dump>_<ns>_<id>.pcapng` while `dumpPackets` is
/// on (a WHEP source's `whep_source_conn`, say).
pub async fn request_dumped(
    method: &str,
    url: &str,
    body: Vec<u8>,
    fingerprint: &str,
    limit: Duration,
    headers: Vec<(String, String)>,
    dump: Option<&str>,
) -> Result<Answer, String> {
    tokio::time::timeout(
        limit,
        exchange(method, url, body, fingerprint, limit, headers, dump),
    )
    .await
    .map_err(|_| format!("no answer within {limit:?}"))?
}

async fn exchange(
    method: &str,
    url: &str,
    body: Vec<u8>,
    fingerprint: &str,
    limit: Duration,
    headers: Vec<(String, String)>,
    dump: Option<&str>,
) -> Result<Answer, String> {
    let u = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    let host = u.host_str().ok_or("the URL has no host")?.to_string();
    let port = u.port_or_known_default().ok_or("the URL has no port")?;
    let mut target = u.path().to_string();
    if let Some(q) = u.query() {
        target.push('?');
        target.push_str(q);
    }
    let authority = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let mut req = hyper::Request::builder();
    let typed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if !typed {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .method(method)
        .uri(target)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "Tidegate")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match u.scheme() {
        "http" => {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            match dump {
                Some(prefix) => send(tidegate_core::dump::tcp_client(tcp, prefix), req).await,
                None => send(tcp, req).await,
            }
        }
        "https" => {
            let tls = tidegate_core::tls::connect(&host, port, fingerprint, limit)
                .await
                .map_err(|e| e.to_string())?;
            match dump {
                Some(prefix) => send(tidegate_core::dump::tls_client(tls, prefix), req).await,
                None => send(tls, req).await,
            }
        }
        other => Err(format!("unsupported scheme {other}")),
    }
}

async fn send<S>(io: S, req: hyper::Request<Full<Bytes>>) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            body,
            location,
        })
    }
    .await;
    driver.abort();
    result
}
