//! The SRT listener: stream ids and passphrases decide, per connection, between publishing
//! (TS in → frames) and reading (frames → TS once per stream → every reader).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, StreamExt};
use srt_protocol::access::ServerRejectReason;
use srt_protocol::options::Passphrase;
use srt_protocol::settings::{ConnInitSettings, KeySettings};
use std::sync::atomic::{AtomicU64, Ordering};
use tidegate_core::{
    Action, AuthRequest, ConnGuard, ConnRegistry, ConnState, CoreError, Credentials, PathManager,
    SessionInfo, Stream,
};
use tidegate_mpegts::mux::Muxer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::io::{Incoming, LinkStats, RejectReason, SrtConn};
use crate::streamid::{self, Mode};

/// What `publish` and `read` need of a connection (an [`SrtConn`], the listener's or a
/// caller's).
pub(crate) trait DataSocket:
    futures::Stream<Item = std::io::Result<(Instant, Bytes)>>
    + Sink<(Instant, Bytes), Error = std::io::Error>
    + Unpin
{
}

impl<T> DataSocket for T where
    T: futures::Stream<Item = std::io::Result<(Instant, Bytes)>>
        + Sink<(Instant, Bytes), Error = std::io::Error>
        + Unpin
{
}

#[derive(Clone, Debug)]
pub struct SrtConfig {
    /// A publisher that sends nothing for this long is dropped.
    pub read_timeout: Duration,
}

/// SRT statistics of one connection, refreshed every second, for the API (MediaMTX's names).
#[derive(Default, Debug)]
pub struct SrtStats {
    /// Smoothed RTT, in microseconds.
    rtt_us: AtomicU64,
    /// Receive buffer: the time span of what is buffered (µs), the packets in it (from the
    /// receiver's last full ACK), the receiver's data rate (bytes/s).
    receive_buf_us: AtomicU64,
    receive_buf_packets: AtomicU64,
    receive_rate: AtomicU64,
    /// Send buffer: time span (µs), packets, bytes.
    send_buf_us: AtomicU64,
    send_buf_packets: AtomicU64,
    send_buf_bytes: AtomicU64,
    /// The latencies agreed in the handshake (µs).
    receive_latency_us: AtomicU64,
    send_latency_us: AtomicU64,
    packets_received: AtomicU64,
    packets_sent: AtomicU64,
    packets_received_loss: AtomicU64,
    packets_retrans: AtomicU64,
    packets_received_retrans: AtomicU64,
    packets_received_drop: AtomicU64,
    packets_send_drop: AtomicU64,
    packets_sent_nak: AtomicU64,
    packets_received_nak: AtomicU64,
}

/// One figure of a connection, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Figure {
    Count(u64),
    Float(f64),
}

impl SrtStats {
    /// (name, value) pairs as the API shows them.
    pub fn snapshot(&self) -> Vec<(&'static str, Figure)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ms = |a: &AtomicU64| Figure::Float(g(a) as f64 / 1000.0);
        let mut v = vec![
            ("msRTT", ms(&self.rtt_us)),
            ("msReceiveBuf", ms(&self.receive_buf_us)),
            (
                "packetsReceiveBuf",
                Figure::Count(g(&self.receive_buf_packets)),
            ),
            (
                "mbpsReceiveRate",
                Figure::Float(g(&self.receive_rate) as f64 * 8.0 / 1e6),
            ),
            ("msSendBuf", ms(&self.send_buf_us)),
            ("packetsSendBuf", Figure::Count(g(&self.send_buf_packets))),
            ("bytesSendBuf", Figure::Count(g(&self.send_buf_bytes))),
            ("msReceiveTsbPdDelay", ms(&self.receive_latency_us)),
            ("msSendTsbPdDelay", ms(&self.send_latency_us)),
        ];
        let counts = vec![
            ("packetsReceived", g(&self.packets_received)),
            ("packetsSent", g(&self.packets_sent)),
            ("packetsReceivedLoss", g(&self.packets_received_loss)),
            ("packetsRetrans", g(&self.packets_retrans)),
            ("packetsReceivedRetrans", g(&self.packets_received_retrans)),
            ("packetsReceivedDrop", g(&self.packets_received_drop)),
            ("packetsSendDrop", g(&self.packets_send_drop)),
            ("packetsSentNAK", g(&self.packets_sent_nak)),
            ("packetsReceivedNAK", g(&self.packets_received_nak)),
        ];
        v.extend(counts.into_iter().map(|(k, n)| (k, Figure::Count(n))));
        v
    }
}

/// Copies the connection's statistics into its entry until the connection ends.
fn watch_statistics(socket: &SrtConn, guard: &ConnGuard<SrtStats>) -> tokio::task::JoinHandle<()> {
    let mut stats = socket.statistics();
    let (extra, counters) = (guard.extra.clone(), guard.counters.clone());
    tokio::spawn(async move {
        loop {
            let link: LinkStats = stats.borrow_and_update().clone();
            let s = &link.socket;
            let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
            let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            set(&extra.rtt_us, link.rtt.map_or(0, us));
            set(&extra.receive_buf_us, us(s.rx_acknowledged_time));
            set(
                &extra.receive_buf_packets,
                link.receive_buffer_available.map_or(0, |free| {
                    u64::from(link.receive_buffer_size.saturating_sub(free))
                }),
            );
            set(
                &extra.receive_rate,
                u64::from(link.receive_rate.unwrap_or(0)),
            );
            set(&extra.send_buf_us, us(s.tx_buffered_time));
            set(&extra.send_buf_packets, s.tx_buffered_data);
            set(&extra.send_buf_bytes, s.tx_buffered_bytes);
            set(&extra.receive_latency_us, us(link.recv_latency));
            set(&extra.send_latency_us, us(link.send_latency));
            set(&extra.packets_received, s.rx_data);
            set(&extra.packets_sent, s.tx_data);
            set(&extra.packets_received_loss, s.rx_loss_data);
            set(&extra.packets_retrans, s.tx_retransmit_data);
            set(&extra.packets_received_retrans, s.rx_retransmit_data);
            set(&extra.packets_received_drop, s.rx_dropped_data);
            set(&extra.packets_send_drop, s.tx_dropped_data);
            set(&extra.packets_sent_nak, s.tx_nak);
            set(&extra.packets_received_nak, s.rx_nak);
            set(&counters.received, s.rx_bytes);
            set(&counters.sent, s.tx_bytes);
            if stats.changed().await.is_err() {
                break;
            }
        }
    })
}

/// A bound listener, ready to serve.
pub struct SrtServer {
    socket: tokio::net::UdpSocket,
    settings: ConnInitSettings,
    pub local: SocketAddr,
}

/// Binds the UDP port (so that start-up can fail cleanly before anything is served).
pub async fn bind(addr: SocketAddr) -> std::io::Result<SrtServer> {
    let socket = tidegate_core::handover::udp("SRT", addr).await?;
    tidegate_core::udp::tune(&socket);
    let local = socket.local_addr()?;
    let settings = crate::io::settings(local)?;
    Ok(SrtServer {
        socket,
        settings,
        local,
    })
}

/// How long a caller has to finish its handshake once accepted.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// libsrt's default live payload: 7 TS packets.
const PAYLOAD: usize = 1316;

pub async fn serve(
    server: SrtServer,
    paths: PathManager,
    config: SrtConfig,
    conns: Arc<ConnRegistry<SrtStats>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let SrtServer {
        socket, settings, ..
    } = server;
    let (tx, mut incoming) = futures::channel::mpsc::channel(100);
    tasks.spawn(crate::io::listen(
        socket,
        settings,
        tx,
        Arc::new(crate::io::Sessions::default()),
        shutdown.clone(),
    ));
    let limiter = tidegate_core::guard::ConnLimiter::new("SRT");
    loop {
        let req = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = incoming.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        // `maxConnections`/`maxConnectionsPerIP`: SRT's own busy answer (SRT_REJX_OVERLOAD).
        let Some(permit) = limiter.admit(req.remote().ip(), true) else {
            tasks.spawn(async move {
                req.reject(RejectReason::Server(ServerRejectReason::Overload))
                    .await
            });
            continue;
        };
        let id = paths.new_session_id();
        let span = tracing::info_span!("srt", conn = id, remote = %req.remote());
        let (paths, config, shutdown) = (paths.clone(), config.clone(), shutdown.clone());
        let guard = conns.add(id, req.remote());
        tasks.spawn(
            async move {
                let _permit = permit;
                match handle(req, id, paths, config, guard, shutdown).await {
                    Ok(()) => tracing::info!("connection closed"),
                    Err(e) => tracing::info!("connection closed: {e}"),
                }
            }
            .instrument(span),
        );
    }
}

async fn reject(req: Incoming, reason: ServerRejectReason, why: String) -> Result<(), String> {
    tracing::warn!("refused ({reason:?}): {why}");
    req.reject(RejectReason::Server(reason)).await;
    Err(why)
}

async fn handle(
    req: Incoming,
    id: u64,
    paths: PathManager,
    config: SrtConfig,
    guard: ConnGuard<SrtStats>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let Some(raw) = req.stream_id() else {
        return reject(req, ServerRejectReason::BadRequest, "no stream id".into()).await;
    };
    let sid = match streamid::parse(&raw) {
        Ok(s) => s,
        Err(e) => return reject(req, ServerRejectReason::BadRequest, e.to_string()).await,
    };
    let action = match sid.mode {
        Mode::Publish => Action::Publish,
        Mode::Read => Action::Read,
    };
    let creds = Credentials::new(sid.user.clone(), sid.pass.clone(), req.remote().ip());
    let mut ask = AuthRequest::new(action, &sid.path, "srt", creds).with_id(id);
    let authorized = paths.authorize_path(&mut ask).await;
    let sid = streamid::StreamId {
        path: ask.path.clone(),
        ..sid
    };
    let (found, grant) = match authorized {
        Ok(m) => m,
        Err(e @ CoreError::Auth(_)) => {
            return reject(req, ServerRejectReason::Unauthorized, e.to_string()).await
        }
        Err(e) => return reject(req, ServerRejectReason::Notfound, e.to_string()).await,
    };
    let passphrase = match sid.mode {
        Mode::Publish => &found.conf.srt_publish_passphrase,
        Mode::Read => &found.conf.srt_read_passphrase,
    };
    // The caller's own key size, Unspecified included: a fixed size would make srt-protocol
    // panic on a caller that sent a passphrase without pbkeylen (PEERS.md §3b).
    let keys = (!passphrase.is_empty()).then(|| KeySettings {
        key_size: req.key_size(),
        passphrase: Passphrase::from(passphrase.as_str()),
    });
    let session = SessionInfo {
        id,
        kind: "srtConn",
        remote: Some(req.remote()),
        query: String::new(),
    };
    match sid.mode {
        Mode::Publish => {
            let publisher = match paths.publish(&sid.path, session) {
                Ok(p) => p,
                Err(e @ CoreError::Busy(_)) => {
                    return reject(req, ServerRejectReason::Conflict, e.to_string()).await
                }
                Err(e) => return reject(req, ServerRejectReason::Forbidden, e.to_string()).await,
            };
            let socket = accept(req, keys).await?;
            grant.enforce(
                guard.kick.clone(),
                format!("[SRT] publisher of '{}'", sid.path),
            );
            tracing::info!(path = sid.path, "is publishing");
            guard.set(ConnState::Publish, &sid.path, &raw);
            let stats = watch_statistics(&socket, &guard);
            let r = publish(
                socket,
                publisher,
                config.read_timeout,
                &guard.kick,
                shutdown,
            )
            .await;
            stats.abort();
            r
        }
        Mode::Read => {
            let reader = match paths.read_or_demand(&sid.path, session).await {
                Ok(r) => r,
                Err(e) => return reject(req, ServerRejectReason::Notfound, e.to_string()).await,
            };
            let source = reader.stream().clone();
            guard
                .counters
                .set_carriage(tidegate_core::Carriage::sort(&source.desc(), |t| {
                    tidegate_mpegts::mux::why_not(&t.params)
                }));
            let Some(egress) = TsMuxer::egress(&source) else {
                return reject(
                    req,
                    ServerRejectReason::NotSupMedia,
                    "no track of this stream can travel in MPEG-TS".into(),
                )
                .await;
            };
            let socket = accept(req, keys).await?;
            grant.enforce(
                guard.kick.clone(),
                format!("[SRT] reader of '{}'", sid.path),
            );
            tracing::info!(path = sid.path, "is reading");
            guard.set(ConnState::Read, &sid.path, &raw);
            let stats = watch_statistics(&socket, &guard);
            let figures = Arc::new(tidegate_core::PullFigures::default());
            let probe: Arc<dyn tidegate_core::ReaderProbe> = figures.clone();
            guard.counters.set_reader(Arc::downgrade(&probe));
            let r = read(
                socket,
                reader,
                &egress,
                &guard.kick,
                shutdown,
                Some(figures),
            )
            .await;
            stats.abort();
            r
        }
    }
}

async fn accept(req: Incoming, keys: Option<KeySettings>) -> Result<SrtConn, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, req.accept(keys)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!(
            "handshake failed (wrong or missing passphrase?): {e}"
        )),
        Err(_) => Err("handshake did not complete within 10 s".into()),
    }
}

/// Demuxes what `socket` receives into `publisher`'s stream until the peer closes, goes
/// silent for `read_timeout`, or `kick` / `shutdown` fires.
pub(crate) async fn publish(
    mut socket: impl DataSocket,
    mut publisher: tidegate_core::Publisher,
    read_timeout: Duration,
    kick: &CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let kicked = publisher.kicked();
    let mut ingest = tidegate_mpegts::ingest::TsIngest::default();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = kicked.cancelled() => return Err("replaced by another publisher, or kicked".into()),
            _ = kick.cancelled() => return Err("kicked".into()),
            r = tokio::time::timeout(read_timeout, socket.next()) => r,
        };
        let data = match next {
            Err(_) => return Err(format!("no data for {read_timeout:?}")),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
            Ok(Some(Ok((_, data)))) => data,
        };
        ingest.feed(&data, &mut publisher, "SRT");
    }
}

/// Sends `chunks` (the path muxed to TS) from its next key frame until the stream ends, the
/// peer goes away, or `kick` / `shutdown` fires.
pub(crate) async fn read(
    mut socket: impl DataSocket,
    reader: tidegate_core::Reader,
    egress: &Arc<tidegate_core::Egress>,
    kick: &CancellationToken,
    shutdown: CancellationToken,
    figures: Option<Arc<tidegate_core::PullFigures>>,
) -> Result<(), String> {
    // From the next keyframe, not from the GOP cache, so the reader joins live.
    let mut sub = egress.subscribe_from_next_keyframe();
    // srt-protocol stamps a packet with its source time minus the connection's start; a time
    // before the start wraps to ~71 minutes ahead, and a libsrt receiver then holds everything
    // behind it. And a connection that starts with a burst loses everything. Both happen when
    // the TS muxer task was created for this reader and replays the GOP cache just after the
    // subscription: frames ingested before the connection was up are therefore skipped, the
    // reader starts on the first key frame ingested after it, and source times never precede
    // the connection.
    let floor = std::time::Instant::now();
    let key = reader.stream().key_track();
    let mut joined = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = kick.cancelled() => break,
            f = sub.recv() => match f {
                Ok(frame) => {
                    if !joined {
                        let is_key = frame.keyframe && key.is_none_or(|k| k == frame.track);
                        if !(is_key && frame.received >= floor) {
                            continue;
                        }
                        joined = true;
                    }
                    let data: &Bytes = &frame.data;
                    let mut pos = 0;
                    while pos < data.len() {
                        let end = (pos + PAYLOAD).min(data.len());
                        socket
                            .send((frame.received.max(floor), data.slice(pos..end)))
                            .await
                            .map_err(|e| format!("send: {e}"))?;
                        pos = end;
                    }
                    reader.add_bytes_sent(data.len() as u64);
                    if let Some(f) = &figures {
                        f.update(sub.behind(), sub.skips(), sub.frames_skipped());
                    }
                }
                Err(_) => break, // the publisher left
            },
            // The receive half is not polled (a reader sends no data). A reader that hangs up
            // is seen as a failed send.
        }
    }
    let _ = socket.close().await;
    Ok(())
}

/// The path `reader` reads, muxed to MPEG-TS as SRT readers get it (the same engine format),
/// written to `out` from the next key frame until the stream ends, `out` fails or `kick`
/// fires: the bridge by which an upgraded process reads the paths published on the one it
/// replaces (docs/deploy.md).
pub async fn write_ts<W>(
    out: W,
    reader: tidegate_core::Reader,
    kick: &CancellationToken,
) -> Result<(), String>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let source = reader.stream().clone();
    let egress = TsMuxer::egress(&source).ok_or("no track of this stream can travel in MPEG-TS")?;
    let sink = Box::pin(futures::sink::unfold(
        out,
        |mut out, (_, data): (Instant, Bytes)| async move {
            tokio::io::AsyncWriteExt::write_all(&mut out, &data).await?;
            Ok::<_, std::io::Error>(out)
        },
    ));
    read(WriteOnly(sink), reader, &egress, kick, kick.clone(), None).await
}

/// A [`DataSocket`] that only sends (its stream never yields).
struct WriteOnly<S>(S);

impl<S: Unpin> futures::Stream for WriteOnly<S> {
    type Item = std::io::Result<(Instant, Bytes)>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Pending
    }
}

impl<S> Sink<(Instant, Bytes)> for WriteOnly<S>
where
    S: Sink<(Instant, Bytes), Error = std::io::Error> + Unpin,
{
    type Error = std::io::Error;

    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.poll_ready_unpin(cx)
    }

    fn start_send(
        mut self: std::pin::Pin<&mut Self>,
        item: (Instant, Bytes),
    ) -> std::io::Result<()> {
        self.0.start_send_unpin(item)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.poll_flush_unpin(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.poll_close_unpin(cx)
    }
}

/// The fan-out engine's MPEG-TS format: one per stream while it has SRT readers or pushes.
pub(crate) struct TsMuxer(Muxer);

impl TsMuxer {
    /// None when no track of the stream can travel in MPEG-TS.
    pub(crate) fn new(desc: &tidegate_core::StreamDesc) -> Option<TsMuxer> {
        let m = Muxer::new(desc);
        (!m.is_empty()).then_some(TsMuxer(m))
    }

    /// The stream's running TS egress, or a new one; None when no track fits in TS.
    pub(crate) fn egress(source: &Arc<Stream>) -> Option<Arc<tidegate_core::Egress>> {
        let muxer = TsMuxer::new(&source.desc())?;
        Some(source.egress(move |_| muxer))
    }
}

impl tidegate_core::Muxer for TsMuxer {
    fn egress_name(&self) -> &'static str {
        "srt"
    }

    fn mux(&mut self, frame: &tidegate_core::Frame) -> Option<Bytes> {
        let mut bytes = BytesMut::new();
        self.0.write(frame, &mut bytes);
        (!bytes.is_empty()).then(|| bytes.freeze())
    }
}
