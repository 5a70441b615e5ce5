//! One HTTP/1.1 + HTTP/2 server loop (hyper-util's auto builder) for the protocol routers that
//! face clients (HLS, WebRTC), plain or over TLS (ALPN `h2`, `http/1.1`). Each request carries
//! the client's address as axum's `ConnectInfo`, for credentials by IP and the logs.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `router` on `listener` until `shutdown`; every connection is a task on `tasks`.
pub async fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (sock, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("[{name}] accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let _ = sock.set_nodelay(true);
        tasks.spawn(connection(
            name,
            sock,
            remote,
            router.clone(),
            tls.clone(),
            shutdown.clone(),
        ));
    }
}

async fn connection(
    name: &'static str,
    sock: tokio::net::TcpStream,
    remote: SocketAddr,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        let mut r = router.clone();
        async move {
            use tower_service::Service;
            r.call(req.map(Body::new)).await
        }
    });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
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
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => r,
                _ = shutdown.cancelled() => Ok(()),
            }
        }
        None => {
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
            tokio::select! {
                r = conn => r,
                _ = shutdown.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!("[{name}] connection from {remote}: {e}");
    }
}
