//! One HTTP/1.1 + HTTP/2 server loop (hyper-util's auto builder) for the protocol routers that
//! face clients (HLS, WebRTC), plain or over TLS (ALPN `h2`, `http/1.1`). Each request carries
//! the client's address as axum's `ConnectInfo`, for credentials by IP and the logs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a listener serves: TLS, and the proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Default)]
pub struct Options {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `*TrustedProxies`: a request from one of these carries the client's address in
    /// `X-Forwarded-For`; from anyone else that header is ignored.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// Stops accepting (a reload moved the listener); connections go on until `shutdown`.
    pub stop: Option<CancellationToken>,
    /// `readTimeout`: the most a request head may take to arrive.
    pub header_timeout: Duration,
    /// The HLS listener's own HTTP/1.1 lane for players' requests ([`crate::h1`]).
    pub hls_lane: Option<tidegate_hls::Hls>,
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left were
/// written by the client and prove nothing).
pub fn client_address(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> SocketAddr {
    client_address_of(
        peer,
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().ok()),
        trusted,
    )
}

/// [`client_address`] from the `X-Forwarded-For` values in order (None: one that is not
/// text).
pub fn client_address_of<'a>(
    peer: SocketAddr,
    forwarded_for: impl Iterator<Item = Option<&'a str>>,
    trusted: &[ipnet::IpNet],
) -> SocketAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer;
    }
    let mut client = peer;
    for value in forwarded_for {
        let Some(v) = value else { return peer };
        for part in v.rsplit(',') {
            match part.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if is_trusted(&ip) => continue,
                Ok(ip) => {
                    client = SocketAddr::new(ip, 0);
                    break;
                }
                Err(_) => return peer,
            }
        }
    }
    client
}

/// Serves `router` on `listener` until `shutdown`; every connection is a task on `tasks`.
pub async fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    options: Options,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let tls = options.tls.clone();
    let trusted = options.trusted_proxies.clone();
    let stop = options.stop.clone().unwrap_or_else(|| shutdown.clone());
    let mut backoff = tidegate_core::guard::AcceptBackoff::new(name);
    // The control surfaces' connections are not clients': a drain neither waits for nor
    // refuses them (readiness probes and scrapes go on).
    let limiter = match name {
        "API" | "metrics" | "pprof" => tidegate_core::guard::ConnLimiter::control(name),
        _ => tidegate_core::guard::ConnLimiter::new(name),
    };
    loop {
        let (sock, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
            _ = stop.cancelled() => return,
        };
        backoff.accepted();
        let per_ip = !tidegate_core::proxy_protocol::trusted(&trusted, remote.ip());
        let Some(permit) = limiter.admit(remote.ip(), per_ip) else {
            if tls.is_none() {
                let _ = sock.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                      Retry-After: 1\r\nConnection: close\r\n\r\n",
                );
            }
            continue;
        };
        let _ = sock.set_nodelay(true);
        tasks.spawn(connection(
            name,
            sock,
            remote,
            router.clone(),
            (tls.clone(), options.header_timeout, permit),
            (options.hls_lane.clone(), trusted.clone()),
            shutdown.clone(),
        ));
    }
}

async fn connection(
    name: &'static str,
    sock: tokio::net::TcpStream,
    remote: SocketAddr,
    router: axum::Router,
    (tls, header_timeout, _permit): (
        Option<tokio_rustls::TlsAcceptor>,
        Duration,
        tidegate_core::guard::ConnPermit,
    ),
    (lane, trusted): (Option<tidegate_hls::Hls>, Arc<Vec<ipnet::IpNet>>),
    shutdown: CancellationToken,
) {
    let trusted_lane = trusted.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let client = client_address(remote, req.headers(), &trusted);
        req.extensions_mut().insert(ConnectInfo(client));
        let mut r = router.clone();
        async move {
            use tower_service::Service;
            r.call(req.map(Body::new)).await
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // A request head that trickles in (slowloris) is cut off after `readTimeout`.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    // `dumpPackets`: MediaMTX's file names (`hls_server_conn_…`, `api_server_conn_…`).
    let local = sock.local_addr().ok();
    let prefix = format!("{}_server_conn", name.to_ascii_lowercase());
    // Players' HTTP/1.1 requests go through the lane while it takes them; the rest of a
    // connection it hands on goes to hyper.
    macro_rules! serve_io {
        ($io:expr, $lane:expr) => {{
            let io = $io;
            match $lane {
                Some(hls) => {
                    let handed = tokio::select! {
                        r = crate::h1::serve(&hls, io, remote, &trusted_lane, header_timeout) => r,
                        _ = shutdown.cancelled() => None,
                    };
                    match handed {
                        Some(io) => {
                            let conn =
                                builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
                            tokio::select! {
                                r = conn => r,
                                _ = shutdown.cancelled() => Ok(()),
                            }
                        }
                        None => Ok(()),
                    }
                }
                None => {
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
                    tokio::select! {
                        r = conn => r,
                        _ = shutdown.cancelled() => Ok(()),
                    }
                }
            }
        }};
    }
    let result = match tls {
        Some(acc) => {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acc.accept(sock)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("[{name}] TLS handshake with {remote} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            // HTTP/2 (ALPN `h2`) is hyper's.
            let lane = lane.filter(|_| stream.get_ref().1.alpn_protocol() != Some(b"h2"));
            let stream = tidegate_core::dump::Dumped::new(stream, &prefix, local, remote, true);
            serve_io!(stream, lane)
        }
        None => {
            let sock = tidegate_core::dump::Dumped::new(sock, &prefix, local, remote, true);
            serve_io!(sock, lane)
        }
    };
    if let Err(e) = result {
        tracing::debug!("[{name}] connection from {remote}: {e}");
    }
}

/// CORS for the API and metrics (`apiAllowOrigins`, `metricsAllowOrigins`): an `Origin` that
/// matches an entry (`*`, an exact origin, or one wildcard such as `https://*.example.com`)
/// gets `Access-Control-Allow-Origin`; preflights are answered here.
pub async fn cors(
    axum::extract::State(allowed): axum::extract::State<Arc<Vec<String>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue, Method, StatusCode};
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allow = origin.as_deref().and_then(|o| {
        allowed.iter().find_map(|a| match a.as_str() {
            "*" => Some("*".to_string()),
            a if tidegate_core::text::origin_matches(a, o) => Some(o.to_string()),
            _ => None,
        })
    });
    let preflight = req.method() == Method::OPTIONS;
    let mut r = if preflight {
        let mut r = axum::response::Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("OPTIONS, GET, POST, PATCH, DELETE"),
        );
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        );
        r
    } else {
        next.run(req).await
    };
    if let Some(v) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegate_core::text::origin_matches;

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 203.0.113.9, 10.0.0.7".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(
            client_address(proxy, &h, &trusted).ip().to_string(),
            "203.0.113.9"
        );
        assert_eq!(client_address(stranger, &h, &trusted), stranger);
        assert_eq!(client_address(proxy, &h, &[]), proxy);
        h.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(client_address(proxy, &h, &trusted), proxy);
    }

    #[test]
    fn origins() {
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://example.org"
        ));
        assert!(origin_matches(
            "http://localhost:3000",
            "http://localhost:3000"
        ));
        assert!(!origin_matches(
            "http://localhost:3000",
            "http://localhost:3001"
        ));
    }
}
