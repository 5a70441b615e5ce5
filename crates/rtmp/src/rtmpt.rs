//! RTMPT: RTMP tunnelled over HTTP, the fallback for networks that let only HTTP out (Flash
//! clients, ffmpeg's `rtmpt://`, Red5 and Wowza serve it). Four POST requests carry the
//! connection (the protocol as Red5 and ffmpeg's `rtmphttp.c` speak it):
//!
//! - `POST /open/1`: a new session; the answer is its id and a newline.
//! - `POST /send/<id>/<seq>`: the body is client-to-server RTMP bytes; the answer is one byte
//!   (the polling interval the client may wait before its next request) and whatever
//!   server-to-client bytes are waiting.
//! - `POST /idle/<id>/<seq>`: the same with nothing to send (the client polls).
//! - `POST /close/<id>/<seq>`: the session ends.
//!
//! Each session feeds an ordinary RTMP connection (the same state machine, auth and fan-out
//! as TCP, listed in `/v3/rtmpconns`): client bytes through an in-memory pipe, and the
//! connection's output (its answers and, for a player, what the stream's fan-out writer
//! writes without a task per frame) into the session's buffer that each answer empties. An idle poll with nothing to answer
//! waits up to 100 ms for data, so a player gets its frames without busy polling. Limits: a
//! request body of 4 MiB, 1 MiB waiting per session before the connection is made to wait,
//! 10 000 sessions, and a session no request has touched for `readTimeout` is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use bytes::BytesMut;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tidegate_core::{ConnRegistry, PathManager};

use tidegate_core::{SinkIo, Transport, Writable};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::{spawn_conn, RtmpConfig};

const MAX_BODY: usize = 4 << 20;
const MAX_WAITING: usize = 1 << 20;
const MAX_SESSIONS: usize = 10_000;
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long a request's small body may take after its head.
const BODY_WAIT: Duration = Duration::from_secs(5);
const CONTENT_TYPE: &str = "application/x-fcs";

/// The RTMPT service: its sessions and what their RTMP connections need.
pub struct Rtmpt {
    sessions: Mutex<HashMap<String, Arc<Tunnel>>>,
    conns: Arc<ConnRegistry>,
    paths: PathManager,
    config: RtmpConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

struct Tunnel {
    to_conn: tokio::sync::Mutex<DuplexStream>,
    out: Arc<Out>,
    last_request: Mutex<Instant>,
}

/// The connection's output waiting for the client's next request.
struct Out {
    waiting: Mutex<BytesMut>,
    /// Signalled when bytes arrive (an idle poll waits for them) and when the connection ends.
    arrived: Notify,
    /// Signalled when a request took the waiting bytes (a full buffer has room again).
    drained: Notify,
    /// The connection's task waiting in `poll_write` for room.
    writer: Mutex<Option<Waker>>,
    closed: CancellationToken,
}

impl Out {
    fn lock(&self) -> std::sync::MutexGuard<'_, BytesMut> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what waits (for an answer) and lets writers go on.
    fn take(&self) -> BytesMut {
        let data = std::mem::take(&mut *self.lock());
        self.drained.notify_waiters();
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
        data
    }

    fn close(&self) {
        self.closed.cancel();
        self.arrived.notify_waiters();
        self.drained.notify_waiters();
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    /// Appends what fits of `bufs`; 0 when full.
    fn append(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        if self.closed.is_cancelled() {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let mut w = self.lock();
        let mut room = MAX_WAITING.saturating_sub(w.len());
        let mut n = 0;
        for b in bufs {
            if room == 0 {
                break;
            }
            let take = b.len().min(room);
            w.extend_from_slice(&b[..take]);
            room -= take;
            n += take;
        }
        drop(w);
        if n > 0 {
            self.arrived.notify_waiters();
        }
        Ok(n)
    }
}

impl SinkIo for Out {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self.append(bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(std::io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl Writable for Out {
    fn writable(
        &self,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + '_>> {
        Box::pin(async move {
            loop {
                let drained = self.drained.notified();
                if self.closed.is_cancelled() {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                if self.lock().len() < MAX_WAITING {
                    return Ok(());
                }
                drained.await;
            }
        })
    }
}

/// The RTMP connection's side of a session: it reads the client's bytes from the pipe and
/// writes into the session's buffer.
struct TunnelIo {
    input: DuplexStream,
    out: Arc<Out>,
}

impl Drop for TunnelIo {
    fn drop(&mut self) {
        // The connection ended: the client learns it at its next request (404).
        self.out.close();
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Registered before trying, so that a take between the two is not missed.
        *self.out.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        match self.out.append(&[IoSlice::new(buf)]) {
            Ok(0) => Poll::Pending,
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for TunnelIo {
    fn sink_io(&self) -> Option<(Arc<dyn SinkIo>, Arc<dyn Writable>)> {
        Some((
            self.out.clone() as Arc<dyn SinkIo>,
            self.out.clone() as Arc<dyn Writable>,
        ))
    }
}

impl Rtmpt {
    pub fn new(
        conns: Arc<ConnRegistry>,
        paths: PathManager,
        config: RtmpConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Rtmpt> {
        let me = Arc::new(Rtmpt {
            sessions: Mutex::new(HashMap::new()),
            conns,
            paths,
            config,
            shutdown,
            tasks,
        });
        // Sessions nobody polls any more, and those whose connection ended, go.
        let weak = Arc::downgrade(&me);
        let shutdown = me.shutdown.clone();
        me.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let Some(me) = weak.upgrade() else { return };
                let limit = me.config.read_timeout;
                let mut sessions = me.sessions.lock().unwrap_or_else(|e| e.into_inner());
                sessions.retain(|id, t| {
                    let idle = t
                        .last_request
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .elapsed();
                    if idle >= limit && !t.out.closed.is_cancelled() {
                        tracing::info!(
                            session = id,
                            "[RTMPT] session closed: no request for {idle:?}"
                        );
                        t.out.close();
                    }
                    // An ended session is kept a little, so its client gets its last bytes.
                    !(t.out.closed.is_cancelled() && idle >= Duration::from_secs(2))
                });
            }
        });
        me
    }

    /// The routes, for an HTTP listener (the HLS one).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/open/{n}", post(open))
            .route("/send/{id}/{seq}", post(send))
            .route("/idle/{id}/{seq}", post(idle))
            .route("/close/{id}/{seq}", post(close))
            .route("/fcs/ident2", post(ident))
            .with_state(self.clone())
    }

    fn get(&self, id: &str) -> Option<Arc<Tunnel>> {
        let t = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()?;
        *t.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Some(t)
    }
}

fn answer(status: StatusCode, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body.into())
        .unwrap_or_default()
}

/// Reads the small body of an open, an idle, a close or an ident (clients send one byte)
/// before the answer. hyper keeps a connection alive after an answer only if the request's
/// body was read whole; an unread body that had not arrived with the head (a loaded machine)
/// made it close the connection, and ffmpeg, which sends its next request on the same
/// connection, failed with a broken pipe.
/// A body that does not come within `BODY_WAIT` is left unread (the connection then closes).
async fn skip_body(body: Body) {
    let _ = tokio::time::timeout(BODY_WAIT, axum::body::to_bytes(body, 16)).await;
}

/// Flash asks this first; Red5 and FMS answer 404 when there is no edge to name.
async fn ident(body: Body) -> Response {
    skip_body(body).await;
    answer(StatusCode::NOT_FOUND, "")
}

async fn open(
    State(me): State<Arc<Rtmpt>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    skip_body(body).await;
    if me.sessions.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_SESSIONS {
        tracing::warn!(%remote, "[RTMPT] refused: {MAX_SESSIONS} sessions open");
        return answer(StatusCode::SERVICE_UNAVAILABLE, "");
    }
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let id = tidegate_core::text::uuid_v4().replace('-', "");
    let out = Arc::new(Out {
        waiting: Mutex::new(BytesMut::new()),
        arrived: Notify::new(),
        drained: Notify::new(),
        writer: Mutex::new(None),
        closed: CancellationToken::new(),
    });
    let tunnel = Arc::new(Tunnel {
        to_conn: tokio::sync::Mutex::new(ours),
        out: out.clone(),
        last_request: Mutex::new(Instant::now()),
    });
    me.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), tunnel);
    spawn_conn(
        TunnelIo { input: theirs, out },
        remote,
        "rtmpConn",
        &me.conns,
        me.paths.clone(),
        me.config.clone(),
        me.shutdown.clone(),
        &me.tasks,
    );
    tracing::info!(%remote, session = id, "[RTMPT] session opened");
    answer(StatusCode::OK, format!("{id}\n"))
}

/// The answer to a send or an idle: the interval byte, then the waiting bytes. With nothing
/// waiting it waits up to `wait` for some. A session whose connection ended and whose last
/// bytes were taken answers 404.
async fn drain(t: &Tunnel, wait: Duration) -> Response {
    let arrived = t.out.arrived.notified();
    let empty = t.out.lock().is_empty();
    if empty && t.out.closed.is_cancelled() {
        return answer(StatusCode::NOT_FOUND, "");
    }
    if empty && !wait.is_zero() {
        let _ = tokio::time::timeout(wait, arrived).await;
    }
    let data = t.out.take();
    // The interval byte: 1 (poll again soon) when data flows, 3 when idle.
    let mut out = BytesMut::with_capacity(1 + data.len());
    out.extend_from_slice(&[if data.is_empty() { 3 } else { 1 }]);
    out.extend_from_slice(&data);
    answer(StatusCode::OK, out.freeze())
}

async fn send(
    State(me): State<Arc<Rtmpt>>,
    Path((id, _seq)): Path<(String, u64)>,
    body: Body,
) -> Response {
    let Some(t) = me.get(&id) else {
        return answer(StatusCode::NOT_FOUND, "");
    };
    let data = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(d) => d,
        Err(_) => {
            t.out.close();
            return answer(StatusCode::PAYLOAD_TOO_LARGE, "");
        }
    };
    if !data.is_empty() {
        let mut w = t.to_conn.lock().await;
        let wrote = tokio::time::timeout(me.config.read_timeout, w.write_all(&data)).await;
        if !matches!(wrote, Ok(Ok(()))) {
            t.out.close();
            return answer(StatusCode::NOT_FOUND, "");
        }
    }
    drain(&t, Duration::ZERO).await
}

async fn idle(
    State(me): State<Arc<Rtmpt>>,
    Path((id, _seq)): Path<(String, u64)>,
    body: Body,
) -> Response {
    // Clients send a byte with an idle; it is not RTMP data.
    skip_body(body).await;
    let Some(t) = me.get(&id) else {
        return answer(StatusCode::NOT_FOUND, "");
    };
    drain(&t, IDLE_WAIT).await
}

async fn close(
    State(me): State<Arc<Rtmpt>>,
    Path((id, _seq)): Path<(String, u64)>,
    body: Body,
) -> Response {
    skip_body(body).await;
    let t = me
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    match t {
        Some(t) => {
            t.out.close();
            let _ = t.to_conn.lock().await.shutdown().await;
            tracing::info!(session = id, "[RTMPT] session closed by the client");
            answer(StatusCode::OK, Bytes::from_static(&[0]))
        }
        None => answer(StatusCode::NOT_FOUND, ""),
    }
}
