//! The RTSP server: one task per TCP connection, UDP RTP/RTCP on two shared sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tidegate_core::{
    Action, AuthRequest, ConnGuard, CoreError, Credentials, Frame, Grant, PathManager, Publisher,
    Reader, SessionInfo, Stream,
};
use tidegate_rtp::srtp;
use tidegate_rtp::RtpPacket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Given};
use crate::ingest::InTrack;
use crate::message::{interleaved, response, Input, Parser, Request};
use crate::mux::{count_rtp, split, RtpMux, SrtpMux};
use crate::sdp;
use crate::session::{uri_query, Channel, Policy, Role, Session, Step, Tr, TransportReq};
use tidegate_core::dump::DumpedUdp;
use tidegate_core::handover;
use tidegate_core::{SharedTcp, SharedTls, Sink, SinkLimits, SinkStatus, Transport};

#[derive(Clone, Debug)]
pub struct RtspConfig {
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `rtspAuthMethods`.
    pub auth_methods: auth::Methods,
    /// `rtspTransports` has `tcp` (UDP is allowed when the listener has UDP sockets).
    pub allow_tcp: bool,
    /// `rtspTransports` has `multicast`: the groups to hand out.
    pub multicast: Option<Arc<crate::multicast::Groups>>,
    /// `rtspTrustedProxies`: connections from these start with a PROXY protocol header that
    /// names the client.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
}

/// A packet from a session's UDP peer: the track, whether it came in on the RTCP socket, the
/// bytes.
type UdpIn = (usize, bool, Bytes);
type Route = (mpsc::Sender<UdpIn>, usize);

/// What `/v3/rtspsessions` shows of a session beyond the common fields.
#[derive(Default, Debug)]
pub struct RtspStats {
    transport: Mutex<&'static str>,
    /// The session sends or receives SRTP (`RTP/SAVP`).
    pub srtp: std::sync::atomic::AtomicBool,
    /// SRTP packets that failed authentication or were replays.
    pub srtp_packets_refused: AtomicU64,
    pub rtp_packets_received: AtomicU64,
    pub rtp_packets_sent: AtomicU64,
    pub rtp_packets_lost: AtomicU64,
    /// RTCP packets from the peer that were read (a reader's receiver reports).
    pub rtcp_packets_received: AtomicU64,
    /// A reader's interarrival jitter from its receiver reports, in microseconds (the mean
    /// over its tracks).
    pub jitter_us: AtomicU64,
}

impl RtspStats {
    /// `UDP`, `TCP` or empty before SETUP.
    pub fn transport(&self) -> &'static str {
        *self.transport.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sessions of one listener (RTSP or RTSPS), for the API.
pub type RtspConns = tidegate_core::ConnRegistry<RtspStats>;

/// The UDP side: RTP and RTCP sockets shared by every session, and where what comes in goes,
/// by source address: RTP from UDP publishers, RTCP receiver reports from UDP readers.
pub struct Udp {
    pub rtp: Arc<DumpedUdp>,
    pub rtcp: Arc<DumpedUdp>,
    routes: Mutex<HashMap<SocketAddr, Route>>,
}

impl Udp {
    /// `dump_prefix` names the sockets' `dumpPackets` files (`rtsp_server_packet_conn`).
    pub async fn bind(
        rtp: SocketAddr,
        rtcp: SocketAddr,
        dump_prefix: &'static str,
    ) -> std::io::Result<Arc<Udp>> {
        let open = |s: UdpSocket| DumpedUdp::new(tuned(s), dump_prefix).map(Arc::new);
        Ok(Arc::new(Udp {
            rtp: open(handover::udp(&format!("{dump_prefix} RTP"), rtp).await?)?,
            rtcp: open(handover::udp(&format!("{dump_prefix} RTCP"), rtcp).await?)?,
            routes: Mutex::new(HashMap::new()),
        }))
    }

    pub fn ports(&self) -> (u16, u16) {
        let p = |s: &DumpedUdp| s.local_addr().map(|a| a.port()).unwrap_or(0);
        (p(&self.rtp), p(&self.rtcp))
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A datagram to the session whose peer sent it, if any (else dropped: a publisher's sender
    /// reports, strays).
    fn route(&self, from: SocketAddr, rtcp: bool, data: &[u8]) {
        let route = self.routes().get(&from).cloned();
        if let Some((tx, idx)) = route {
            let _ = tx.try_send((idx, rtcp, Bytes::copy_from_slice(data)));
        }
    }

    async fn receive(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 2048];
        // An upgrade: every UDP session's peer addresses get connected twins of both sockets,
        // then the shared sockets are left to the new process (read no more; still sent from).
        let mut twins = handover::Twins::default();
        loop {
            let reading = twins.reading();
            let (from, rtcp, n) = tokio::select! {
                _ = shutdown.cancelled() => return,
                peers = twins.changed(|| self.routes().keys().copied().collect::<Vec<_>>()) => {
                    for peer in peers {
                        self.clone().twin(peer, &shutdown);
                    }
                    continue;
                }
                r = self.rtp.recv_from(&mut buf), if reading => {
                    let Ok((n, from)) = r else { continue };
                    (from, false, n)
                }
                r = self.rtcp.recv_from(&mut rtcp_buf), if reading => {
                    let Ok((n, from)) = r else { continue };
                    (from, true, n)
                }
            };
            self.route(from, rtcp, if rtcp { &rtcp_buf[..n] } else { &buf[..n] });
            if self.routes().contains_key(&from) && twins.newly_heard(from) {
                self.clone().twin(from, &shutdown);
            }
        }
    }

    /// Connected twins of the RTP and RTCP sockets for `peer` (an upgrade is under way): its
    /// datagrams reach its session here, whichever process reads the shared sockets, until the
    /// session lets go of the address.
    fn twin(self: Arc<Self>, peer: SocketAddr, shutdown: &CancellationToken) {
        for rtcp in [false, true] {
            let shared: &DumpedUdp = if rtcp { &self.rtcp } else { &self.rtp };
            let socket = match handover::connected_twin(&**shared, peer) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("[upgrade] RTSP UDP peer {peer}: no connected socket ({e})");
                    continue;
                }
            };
            let (me, shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut check = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = check.tick() => {
                            if !me.routes().contains_key(&peer) {
                                return;
                            }
                        }
                        r = socket.recv(&mut buf) => {
                            if let Ok(n) = r {
                                me.route(peer, rtcp, &buf[..n]);
                            }
                        }
                    }
                }
            });
        }
    }
}

/// One RTSP or RTSPS listener and what its sessions share.
pub struct RtspListener {
    pub listener: TcpListener,
    /// RTSPS when set. Its UDP sockets (`srtpAddress`, `srtcpAddress`) carry SRTP only: RTP
    /// in the clear is refused over UDP, and TCP interleaved travels inside the TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub udp: Option<Arc<Udp>>,
    pub conns: Arc<RtspConns>,
    /// Stops accepting (a reload moved the listener); sessions go on until `shutdown`.
    pub stop: CancellationToken,
    /// Whether this call starts the UDP sockets' receiver (once per server, not per rebind).
    pub receive_udp: bool,
}

/// Serves RTSP (or RTSPS) sessions until `shutdown`.
pub async fn serve(
    l: RtspListener,
    paths: PathManager,
    config: RtspConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let RtspListener {
        listener,
        tls,
        udp,
        conns,
        stop,
        receive_udp,
    } = l;
    if let (Some(u), true) = (&udp, receive_udp) {
        tasks.spawn(u.clone().receive(shutdown.clone()));
    }
    let tunnels = std::sync::Arc::new(crate::tunnel::Tunnels::default());
    let name = if tls.is_some() { "RTSPS" } else { "RTSP" };
    let mut backoff = tidegate_core::guard::AcceptBackoff::new(name);
    let limiter = tidegate_core::guard::ConnLimiter::new(name);
    loop {
        let (sock, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
        };
        backoff.accepted();
        let per_ip = !tidegate_core::proxy_protocol::trusted(&config.trusted_proxies, remote.ip());
        let Some(permit) = limiter.admit(remote.ip(), per_ip) else {
            // Over a limit: 503 without reading a request (a plain client reads it; a TLS one
            // sees the connection close), then closed.
            if tls.is_none() {
                let _ = sock.try_write(
                    b"RTSP/1.0 503 Service Unavailable\r\nCSeq: 0\r\nContent-Length: 0\r\n\r\n",
                );
            }
            continue;
        };
        let _ = sock.set_nodelay(true);
        let id = paths.new_session_id();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let tunnels = tunnels.clone();
        let (paths, config, udp, conns) =
            (paths.clone(), config.clone(), udp.clone(), conns.clone());
        // One span per connection: protocol, connection id, address; the path once known.
        let span = tracing::info_span!(
            "rtsp",
            conn = id,
            remote = %remote,
            tls = tls.is_some(),
            path = tracing::field::Empty
        );
        tasks.spawn(tracing::Instrument::instrument(async move {
            let _permit = permit;
            let mut sock = sock;
            let mut remote = remote;
            let local = sock.local_addr().ok();
            // Behind a trusted proxy: the client's address is in the PROXY header.
            if tidegate_core::proxy_protocol::trusted(&config.trusted_proxies, remote.ip()) {
                let header = tokio::time::timeout(
                    config.read_timeout,
                    tidegate_core::proxy_protocol::read_header(&mut sock),
                )
                .await;
                match header {
                    Ok(Ok(Some(client))) => {
                        remote = client;
                        // The session's lines name the client, not the proxy.
                        tracing::Span::current().record("remote", tracing::field::display(remote));
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::info!(conn = id, %remote, "[RTSP] closed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(conn = id, %remote, "[RTSP] closed: no PROXY header in time");
                        return;
                    }
                }
            }
            let guard = conns.add(id, remote);
            let conn = Conn::new(id, remote, paths, config, udp, guard, tls.is_some());
            let name = if tls.is_some() { "RTSPS" } else { "RTSP" };
            tracing::info!(conn = id, "[{name}] {remote} connected");
            let r = match tls {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(sock)).await {
                        Ok(Ok(s)) => {
                            // RTSP, or RTSP over HTTP inside TLS (ffmpeg's `https` transport).
                            let mut s = SharedTls::new(s);
                            let (kind, first) = crate::tunnel::read_kind(&mut s).await;
                            let s = crate::tunnel::Prefixed::new(first, s);
                            let s = tidegate_core::dump::Dumped::new(
                                s,
                                "rtsps_server_conn",
                                local,
                                remote,
                                true,
                            );
                            serve_kind(kind, s, conn, &tunnels, shutdown).await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
                // RTSP over HTTP: a GET waits for its POST, which carries the session.
                None => {
                    let kind = crate::tunnel::classify(&sock).await;
                    let s = tidegate_core::dump::Dumped::new(
                        SharedTcp::new(sock),
                        "rtsp_server_conn",
                        local,
                        remote,
                        true,
                    );
                    serve_kind(kind, s, conn, &tunnels, shutdown).await
                }
            };
            if r.is_err() && r.as_ref().err().is_some_and(String::is_empty) {
                return;
            }
            match r {
                Ok(()) => tracing::info!(conn = id, "[RTSP] {remote} closed"),
                Err(e) => tracing::info!(conn = id, "[RTSP] {remote} closed: {e}"),
            }
        }, span));
    }
}

/// Serves a connection by what it speaks: RTSP, or one half of an HTTP tunnel (a GET is
/// kept for its POST: `Err("")`, nothing to log; a POST runs the tunnelled connection).
async fn serve_kind<S: Transport>(
    kind: crate::tunnel::Kind,
    sock: S,
    conn: Conn,
    tunnels: &crate::tunnel::Tunnels,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let (id, remote) = (conn.id, conn.remote);
    match kind {
        crate::tunnel::Kind::Rtsp => conn.run(sock, shutdown).await,
        crate::tunnel::Kind::HttpGet => {
            let mut sock = sock;
            let (head, rest) = match crate::tunnel::read_head(&mut sock).await {
                Ok(h) => h,
                Err(e) => return Err(format!("HTTP tunnel: {e}")),
            };
            if crate::ws::is_upgrade(&head) {
                // RTSP over WebSocket: the connection itself, framed.
                let answer = match crate::ws::handshake_answer(&head) {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        return Err(format!("WebSocket: {e}"));
                    }
                };
                sock.write_all(answer.as_bytes())
                    .await
                    .map_err(|e| format!("WebSocket: {e}"))?;
                tracing::info!(conn = id, "[RTSP] {remote}: over WebSocket");
                return conn
                    .run(crate::ws::WsStream::new(sock, false, &rest), shutdown)
                    .await;
            }
            drop(conn);
            match tunnels.get_with_head(sock, &head, remote).await {
                Ok(()) => Err(String::new()),
                Err(e) => Err(format!("HTTP tunnel: {e}")),
            }
        }
        crate::tunnel::Kind::HttpPost => match tunnels.post(sock).await {
            Ok(t) => {
                tracing::info!(conn = id, "[RTSP] {remote}: tunnelled over HTTP");
                conn.run(t, shutdown).await
            }
            Err(e) => Err(format!("HTTP tunnel: {e}")),
        },
    }
}

struct PubTrack {
    t: InTrack,
    control: String,
    /// The publisher's MIKEY key from ANNOUNCE (`a=key-mgmt`), for `RTP/SAVP`.
    key_mgmt: Option<String>,
}

struct Conn {
    id: u64,
    remote: SocketAddr,
    paths: PathManager,
    config: RtspConfig,
    udp: Option<Arc<Udp>>,
    /// The protocol's state, without I/O (`session.rs`).
    session: Session,
    pubs: Vec<PubTrack>,
    /// `useAbsoluteTimestamp` of the path published.
    absolute: crate::ingest::Absolute,
    publisher: Option<Publisher>,
    stream: Option<Arc<Stream>>,
    started: Instant,
    mux: Option<Arc<RtpMux>>,
    reader: Option<Reader>,
    playing: Option<tidegate_core::EgressReader>,
    /// Plain TCP: every write goes through this sink, so that a stream's fan-out writer can
    /// write the media of a reader on the usual channels to the socket itself.
    sink: Option<Arc<Sink>>,
    /// Such a reader's place in the stream's RTP egress.
    attached: Option<tidegate_core::Attached>,
    /// The egress to attach to once the PLAY answer is written.
    attach_after_reply: Option<Arc<tidegate_core::Egress>>,
    /// What of the sink's byte and packet counts was already added to the connection's.
    sink_counted: (u64, u64),
    /// A reader whose tracks are all unicast UDP: served by the stream's UDP fan-out task.
    fan: Option<crate::fanout::Membership>,
    /// What of the fan-out's counts was already added to the connection's.
    fan_counted: (u64, u64),
    udp_rx: Option<mpsc::Receiver<UdpIn>>,
    udp_tx: Option<mpsc::Sender<UdpIn>>,
    routes: Vec<SocketAddr>,
    last_activity: Instant,
    close: bool,
    guard: ConnGuard<RtspStats>,
    lost_reported: u64,
    /// Access units the depacketisers dropped, as already counted on the stream.
    dropped_reported: u64,
    /// Counted as a multicast reader of the stream while playing.
    multicast: Option<crate::multicast::Member>,
    /// An RTSPS connection.
    tls: bool,
    /// The stream's SRTP packets (RTSPS), sealed once for every `RTP/SAVP` reader.
    sealer: Option<Arc<Option<SrtpMux>>>,
    /// Per track: SRTP for what a publisher sends, or for a reader's SRTCP reports.
    srtp_in: Vec<Option<srtp::Context>>,
    srtp_refused: u64,
    /// Per track read: the reader's last receiver report on it.
    reports: Vec<Option<tidegate_rtp::rtcp::ReportBlock>>,
}

/// A 302 to `to`: an `rtsp(s)://` URL as it is, or `/name` on the server and scheme the
/// client asked (MediaMTX's `sourceRedirect` and `fallback`).
fn redirect(cseq: &str, uri: &str, to: &str, path: &str) -> Bytes {
    let location = if to.starts_with('/') {
        let scheme_end = uri.find("://").map(|i| i + 3).unwrap_or(0);
        let host_end = uri[scheme_end..]
            .find('/')
            .map(|i| scheme_end + i)
            .unwrap_or(uri.len());
        format!("{}{to}", &uri[..host_end])
    } else {
        to.to_string()
    };
    tracing::info!(path, location, "[RTSP] reader redirected");
    response(302, "Found", cseq, &[("Location", location)], b"")
}

impl Conn {
    fn new(
        id: u64,
        remote: SocketAddr,
        paths: PathManager,
        config: RtspConfig,
        udp: Option<Arc<Udp>>,
        guard: ConnGuard<RtspStats>,
        tls: bool,
    ) -> Conn {
        let policy = Policy {
            tls,
            tcp: config.allow_tcp,
            udp: udp.is_some(),
            multicast: config.multicast.is_some(),
        };
        let session = Session::new(
            tidegate_core::text::secret_hex(16),
            format!(
                "{:016x}{:016x}",
                tidegate_core::text::random_u64(),
                tidegate_core::text::random_u64()
            ),
            policy,
            remote.ip(),
        );
        Conn {
            id,
            remote,
            paths,
            config,
            udp,
            session,
            pubs: Vec::new(),
            absolute: crate::ingest::Absolute::new(false),
            publisher: None,
            stream: None,
            started: Instant::now(),
            mux: None,
            reader: None,
            playing: None,
            sink: None,
            attached: None,
            attach_after_reply: None,
            sink_counted: (0, 0),
            fan: None,
            fan_counted: (0, 0),
            multicast: None,
            udp_rx: None,
            udp_tx: None,
            routes: Vec::new(),
            last_activity: Instant::now(),
            close: false,
            guard,
            lost_reported: 0,
            dropped_reported: 0,
            tls,
            sealer: None,
            srtp_in: Vec::new(),
            srtp_refused: 0,
            reports: Vec::new(),
        }
    }

    fn info(&self, kind: &'static str) -> SessionInfo {
        SessionInfo {
            id: self.id,
            kind,
            remote: Some(self.remote),
            query: String::new(),
        }
    }

    async fn run<S: Transport>(
        mut self,
        sock: S,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let mut tcp = None;
        if let Some((io, socket)) = sock.sink_io() {
            let c = self.paths.stream_config();
            let limits = SinkLimits {
                max_frames: c.ring_capacity,
                max_bytes: c.gop_cache_max_bytes,
            };
            self.sink = Some(Arc::new(Sink::new(io, limits)));
            tcp = Some(socket);
        }
        let (mut rd, mut wr) = tokio::io::split(sock);
        let mut parser = Parser::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Since when a request has been arriving without completing (slowloris).
        let mut partial: Option<Instant> = None;
        let result = loop {
            let mut out = BytesMut::new();
            let mut direct: Option<Bytes> = None;
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = self.guard.kick.cancelled() => break Err("kicked".into()),
                r = rd.read(&mut buf) => {
                    let n = match r {
                        Ok(0) => break Ok(()),
                        Ok(n) => n,
                        Err(e) => break Err(format!("read: {e}")),
                    };
                    self.last_activity = Instant::now();
                    self.guard.counters.received.fetch_add(n as u64, Ordering::Relaxed);
                    parser.feed(&buf[..n]);
                    loop {
                        match parser.poll() {
                            Ok(Some(Input::Request(req))) => {
                                let resp = self.handle(&req).await;
                                out.extend_from_slice(&resp);
                            }
                            Ok(Some(Input::Interleaved { channel, data })) => self.on_interleaved(channel, data),
                            // We send no requests, so a response answers nothing.
                            Ok(Some(Input::Response(_))) => {}
                            Ok(None) => {
                                partial = match partial {
                                    Some(t) if parser.partial_request() => Some(t),
                                    _ if parser.partial_request() => Some(Instant::now()),
                                    _ => None,
                                };
                                break;
                            }
                            Err(e) => {
                                let bad = response(400, "Bad Request", "0", &[], b"");
                                match &self.sink {
                                    Some(sink) => sink.send_control(bad),
                                    None => { let _ = wr.write_all(&bad).await; }
                                }
                                return Err(format!("bad request: {e}"));
                            }
                        }
                    }
                }
                f = recv_playing(&mut self.playing) => match f {
                    // The usual TCP layout: the shared bytes go out as they are, no copy.
                    Some(frame) if self.session.direct() => direct = Some(frame.data.clone()),
                    Some(frame) => self.send_packets(&frame, &mut out).await,
                    None => break Err("the publisher left".into()),
                },
                u = recv_udp(&mut self.udp_rx) => {
                    if let Some((idx, rtcp, data)) = u {
                        self.last_activity = Instant::now();
                        self.guard.counters.received.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if rtcp && self.publisher.is_some() {
                            self.on_publisher_rtcp(idx, &data);
                        } else if rtcp {
                            self.on_reader_rtcp(idx, &data);
                        } else {
                            self.on_rtp(idx, &data);
                        }
                    }
                }
                _ = fan_ended(&self.fan) => break Err("the publisher left".into()),
                st = sink_wanted(&self.sink) => match st {
                    SinkStatus::Backlog => {
                        if let Err(e) = self.drain_sink(tcp.as_ref()).await {
                            break Err(e);
                        }
                    }
                    SinkStatus::Failed(kind) => break Err(format!("write: {}", std::io::Error::from(kind))),
                    SinkStatus::Ended => break Err("the publisher left".into()),
                    SinkStatus::Idle => {}
                },
                _ = tick.tick() => {
                    self.count_fan();
                    if self.playing.is_none() && self.fan.is_none() && self.attached.is_none() && self.last_activity.elapsed() > self.config.read_timeout {
                        break Err(format!("nothing received for {:?}", self.config.read_timeout));
                    }
                    if partial.is_some_and(|t| t.elapsed() > self.config.read_timeout) {
                        break Err(format!("a request took longer than {:?} to arrive", self.config.read_timeout));
                    }
                    if let Some(p) = &self.publisher {
                        if p.kicked().is_cancelled() {
                            break Err("kicked".into());
                        }
                    }
                }
            }
            if let (Some(d), Some(sink)) = (&direct, &self.sink) {
                self.guard
                    .extra
                    .rtp_packets_sent
                    .fetch_add(count_rtp(d), Ordering::Relaxed);
                sink.send_control(d.clone());
            } else if let Some(d) = direct {
                match tokio::time::timeout(self.config.write_timeout, wr.write_all(&d)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(format!("write: {e}")),
                    Err(_) => break Err("write timed out".into()),
                }
                if let Some(r) = &self.reader {
                    r.add_bytes_sent(d.len() as u64);
                }
                self.guard
                    .counters
                    .sent
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                self.guard
                    .extra
                    .rtp_packets_sent
                    .fetch_add(count_rtp(&d), Ordering::Relaxed);
            }
            if let (false, Some(sink)) = (out.is_empty(), &self.sink) {
                sink.send_control(out.freeze());
            } else if !out.is_empty() {
                match tokio::time::timeout(self.config.write_timeout, wr.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(format!("write: {e}")),
                    Err(_) => break Err("write timed out".into()),
                }
                if let Some(r) = &self.reader {
                    r.add_bytes_sent(out.len() as u64);
                }
                self.guard
                    .counters
                    .sent
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            // A reader on the usual channels joins the egress's writer once its PLAY answer
            // is on its way (the answer goes first).
            if let (Some(e), Some(sink)) = (self.attach_after_reply.take(), &self.sink) {
                let probe: Arc<dyn tidegate_core::ReaderProbe> = sink.clone();
                self.guard.counters.set_reader(Arc::downgrade(&probe));
                self.attached = Some(e.attach(sink.clone()));
            }
            self.count_sink();
            if self.close {
                break Ok(());
            }
        };
        // What was queued (a TEARDOWN answer) goes out if the socket takes it now.
        self.attached = None;
        if let Some(sink) = &self.sink {
            let _ = sink.drain();
        }
        self.count_sink();
        self.count_fan();
        if let Some(udp) = &self.udp {
            let mut routes = udp.routes();
            for r in &self.routes {
                routes.remove(r);
            }
        }
        result
    }

    fn unauthorized(&self, cseq: &str, why: &str) -> Bytes {
        tracing::info!("[RTSP] {} refused: {why}", self.remote);
        response(
            401,
            "Unauthorized",
            cseq,
            &auth::challenges(self.config.auth_methods, &self.session.nonce)
                .into_iter()
                .map(|c| ("WWW-Authenticate", c))
                .collect::<Vec<_>>(),
            b"",
        )
    }

    /// Checks the request's credentials for `action` on `path`; Err is the response to send.
    /// Basic gives user and password; Digest gives a proof checked against each candidate's
    /// plain password; `?token=` / `?jwt=` in the URL gives a token.
    /// Ok is the grant and the path name to use (a `streamKeyInPath` name loses its key).
    async fn authorize(
        &self,
        req: &Request,
        path: &str,
        action: Action,
    ) -> Result<(Grant, String), Bytes> {
        let cseq = req.cseq();
        let methods = self.config.auth_methods;
        let mut creds = Credentials::new(None, None, self.remote.ip());
        match auth::parse(req.header("Authorization")) {
            Given::None => {}
            // A scheme that rtspAuthMethods leaves out counts as no credentials.
            Given::Basic { .. } if !methods.basic => {}
            Given::Digest(_) if !methods.digest => {}
            Given::Basic { user, pass } => {
                creds.user = Some(user);
                creds.pass = Some(pass);
            }
            Given::Digest(d) => {
                let fresh = d.nonce == self.session.nonce;
                let method = req.method.clone();
                creds.user = Some(d.user.clone());
                creds.proof = Some(std::sync::Arc::new(move |user: &str, pass: &str| {
                    fresh && d.user == user && auth::digest_ok(&method, pass, &d)
                }));
            }
        }
        let query = uri_query(&req.uri);
        creds.token = query
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some(("token" | "jwt", v)) => Some(tidegate_core::text::percent_decode(v, false)),
                _ => None,
            });
        let mut ask = AuthRequest::new(action, path, "rtsp", creds)
            .with_query(query)
            .with_id(self.id);
        match self.paths.authorize_path(&mut ask).await {
            Ok((_, grant)) => Ok((grant, ask.path)),
            Err(CoreError::Auth(e)) => Err(self.unauthorized(cseq, &e.to_string())),
            Err(e) => Err(response(
                404,
                "Not Found",
                cseq,
                &[],
                format!("{e}\n").as_bytes(),
            )),
        }
    }

    async fn handle(&mut self, req: &Request) -> Bytes {
        let cseq = req.cseq().to_string();
        match self.session.request(req) {
            Step::Reply(answer) => answer,
            Step::Describe { path } => self.describe(req, &path).await,
            Step::Announce { path } => self.announce(req, &path).await,
            Step::DescribeFirst { path } => {
                let mut fake = req.clone();
                fake.uri = format!("rtsp://x/{path}");
                let answer = self.describe(&fake, &path).await;
                if self.session.role() != Role::Reader {
                    return answer;
                }
                match self.session.request(req) {
                    Step::Setup { idx, t } => self.setup(req, idx, t),
                    Step::Reply(answer) => answer,
                    _ => response(500, "Internal Server Error", &cseq, &[], b""),
                }
            }
            Step::Setup { idx, t } => self.setup(req, idx, t),
            Step::Play => self.play(req),
            Step::Record => self.record(req),
            Step::Pause => {
                self.playing = None;
                self.attached = None;
                self.attach_after_reply = None;
                self.count_fan();
                self.fan = None;
                self.session.ok(&cseq, &[])
            }
            Step::Teardown => {
                self.close = true;
                self.session.ok(&cseq, &[])
            }
        }
    }

    async fn describe(&mut self, req: &Request, path: &str) -> Bytes {
        let cseq = req.cseq();
        let (grant, path) = match self.authorize(req, path, Action::Read).await {
            Ok(g) => g,
            Err(r) => return r,
        };
        let conf = self.paths.find(&path).ok().map(|m| m.conf);
        if let Some(c) = conf.as_ref().filter(|c| c.source == "redirect") {
            // `source: redirect`: readers are sent to `sourceRedirect` (MediaMTX answers 302).
            return redirect(cseq, &req.uri, &c.source_redirect, &path);
        }
        let reader = match self
            .paths
            .read_or_demand(
                &path,
                self.info("rtspSession").with_query(uri_query(&req.uri)),
            )
            .await
        {
            Ok(r) => {
                grant.enforce(
                    self.guard.kick.clone(),
                    format!("[RTSP] reader of '{path}'"),
                );
                r
            }
            Err(e) => {
                // The deprecated `fallback`: RTSP readers of a path with no stream go there.
                let fallback = conf.as_ref().map(|c| c.fallback.as_str()).unwrap_or("");
                if matches!(e, tidegate_core::CoreError::NoOnePublishing(_)) && !fallback.is_empty()
                {
                    return redirect(cseq, &req.uri, fallback, &path);
                }
                return response(404, "Not Found", cseq, &[], format!("{e}\n").as_bytes());
            }
        };
        let source = reader.stream().clone();
        // Asked before `extension`, whose initialiser runs under the extensions' lock.
        let mpegts = source.has_extension::<crate::ingest::PublishedAsMpegts>();
        let mux = source.extension(|| RtpMux::new(&source.desc(), mpegts));
        if mux.tracks.is_empty() {
            return response(
                415,
                "Unsupported Media Type",
                cseq,
                &[],
                b"no track of this stream can travel over RTSP\n",
            );
        }
        tracing::info!(path, "[RTSP] is reading");
        self.guard
            .counters
            .set_carriage(tidegate_core::Carriage::sort(&source.desc(), |t| {
                (!mux.tracks.iter().any(|o| o.track == t.id)).then(|| {
                    format!(
                        "RTSP here carries H.264, H.265, VP8, VP9, AAC, Opus, MP3 and G.711, not {}",
                        t.codec().name()
                    )
                })
            }));
        self.session.reading(path.clone(), mux.tracks.len());
        self.srtp_in = (0..mux.tracks.len()).map(|_| None).collect();
        self.reports = vec![None; mux.tracks.len()];
        let mut sdp = mux.sdp.clone();
        self.mux = Some(mux);
        self.reader = Some(reader);
        if self.tls {
            // RTSPS: the media are offered as SRTP with the stream's key (RFC 4567); a client
            // that SETUPs plain RTP/AVP over TCP gets it inside the TLS instead.
            let Some(sealer) = self.sealer() else {
                return response(500, "Internal Server Error", cseq, &[], b"no randomness\n");
            };
            sdp = sdp::secure(&sdp, |i| mikey_of(&sealer, i));
        }
        tracing::Span::current().record("path", path.as_str());
        let base = format!("{}/", req.uri.trim_end_matches('/'));
        response(
            200,
            "OK",
            cseq,
            &[
                ("Content-Base", base),
                ("Content-Type", "application/sdp".into()),
            ],
            sdp.as_bytes(),
        )
    }

    async fn announce(&mut self, req: &Request, path: &str) -> Bytes {
        let cseq = req.cseq();
        let (grant, path) = match self.authorize(req, path, Action::Publish).await {
            Ok(g) => g,
            Err(r) => return r,
        };
        grant.enforce(
            self.guard.kick.clone(),
            format!("[RTSP] publisher of '{path}'"),
        );
        let text = String::from_utf8_lossy(&req.body);
        let medias = match sdp::parse(&text) {
            Ok(m) if !m.is_empty() => m,
            Ok(_) => return response(400, "Bad Request", cseq, &[], b"no media in the SDP\n"),
            Err(e) => return response(400, "Bad Request", cseq, &[], format!("{e}\n").as_bytes()),
        };
        let mut pubs = Vec::new();
        for (i, m) in medias.iter().enumerate() {
            match sdp::incoming(m) {
                Ok(inc) => pubs.push(PubTrack {
                    t: InTrack::new(inc),
                    control: m.control.clone().unwrap_or_else(|| format!("trackID={i}")),
                    key_mgmt: m.key_mgmt.clone(),
                }),
                Err(e) => {
                    return response(
                        415,
                        "Unsupported Media Type",
                        cseq,
                        &[],
                        format!("{e}\n").as_bytes(),
                    )
                }
            }
        }
        if pubs.len() > 1 && pubs.iter().any(|p| p.t.is_mpegts()) {
            return response(
                415,
                "Unsupported Media Type",
                cseq,
                &[],
                b"MPEG-TS over RTP (MP2T) must be the only media of a publish\n",
            );
        }
        let publisher = match self.paths.publish(
            &path,
            self.info("rtspSession").with_query(uri_query(&req.uri)),
        ) {
            Ok(p) => p,
            Err(e @ CoreError::Busy(_)) => {
                return response(409, "Conflict", cseq, &[], format!("{e}\n").as_bytes())
            }
            Err(e) => return response(403, "Forbidden", cseq, &[], format!("{e}\n").as_bytes()),
        };
        self.absolute = crate::ingest::Absolute::new(
            publisher.conf().use_absolute_timestamp && !pubs.iter().any(|p| p.t.is_mpegts()),
        );
        self.publisher = Some(publisher);
        self.srtp_in = pubs.iter().map(|_| None).collect();
        self.session.publishing(
            path.clone(),
            pubs.iter().map(|p| p.control.clone()).collect(),
        );
        self.pubs = pubs;
        tracing::Span::current().record("path", path.as_str());
        self.session.ok(cseq, &[])
    }

    /// SETUP of track `idx` as `t` asks, its checks passed (`Session::request`): SRTP keys,
    /// the transport (a multicast group is the stream's), UDP routes.
    fn setup(&mut self, req: &Request, idx: usize, t: TransportReq) -> Bytes {
        let cseq = req.cseq();
        let publishing = self.publisher.is_some();
        let profile = if t.savp { "RTP/SAVP" } else { "RTP/AVP" };
        let mut key_mgmt = None;
        if t.savp {
            self.guard.extra.srtp.store(true, Ordering::Relaxed);
            if publishing {
                match self.publisher_srtp(req, idx) {
                    Ok(ctx) => self.srtp_in[idx] = Some(ctx),
                    Err(why) => {
                        return response(
                            400,
                            "Bad Request",
                            cseq,
                            &[],
                            format!("{why}\n").as_bytes(),
                        )
                    }
                }
            } else {
                // The reader's own key, for the SRTCP reports it sends (RFC 4567).
                self.srtp_in[idx] = req
                    .header("KeyMgmt")
                    .and_then(crate::mikey::key_mgmt_header_data)
                    .and_then(|k| crate::mikey::parse_base64(k).ok())
                    .map(|k| srtp::Context::new(&k));
                // The stream's key again, for a client that did not DESCRIBE (RFC 4567).
                let Some(sealer) = self.sealer() else {
                    return response(500, "Internal Server Error", cseq, &[], b"no randomness\n");
                };
                key_mgmt = Some(format!(
                    "prot=mikey; uri=\"{}\"; data=\"{}\"",
                    req.uri,
                    mikey_of(&sealer, idx)
                ));
            }
        }
        let (tr, header) = if t.multicast {
            let (Some(groups), Some(reader)) = (&self.config.multicast, &self.reader) else {
                return response(461, "Unsupported Transport", cseq, &[], b"");
            };
            let sg = crate::multicast::stream_groups(reader.stream(), t.savp);
            let group = sg.group(groups, idx, self.session.transports.len());
            (
                Tr::Multicast,
                format!(
                    "{profile};multicast;destination={group};port={}-{};ttl=16",
                    groups.conf.rtp_port, groups.conf.rtcp_port
                ),
            )
        } else {
            let ports = self.udp.as_ref().map_or((0, 0), |u| u.ports());
            self.session.unicast(idx, &t, ports)
        };
        *self
            .guard
            .extra
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = if t.multicast {
            "UDP-multicast"
        } else if t.tcp {
            "TCP"
        } else {
            "UDP"
        };
        // What comes in over UDP: a publisher's RTP and RTCP (its sender reports), a reader's
        // RTCP.
        if let (Tr::Udp { rtp, rtcp }, Some(udp)) = (tr, &self.udp) {
            let tx = self
                .udp_tx
                .get_or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(4096);
                    self.udp_rx = Some(rx);
                    tx
                })
                .clone();
            let from: &[SocketAddr] = if publishing { &[rtp, rtcp] } else { &[rtcp] };
            for &from in from {
                udp.routes().insert(from, (tx.clone(), idx));
                self.routes.push(from);
            }
        }
        self.session.set_up(idx, tr);
        let mut headers = vec![("Transport", header), self.session.header()];
        if let Some(k) = key_mgmt {
            headers.push(("KeyMgmt", k));
        }
        response(200, "OK", cseq, &headers, b"")
    }

    /// The SRTP context of a publisher's `RTP/SAVP` SETUP: its key from its `KeyMgmt` header
    /// or its ANNOUNCE SDP, with the rollover counters it announces.
    fn publisher_srtp(&mut self, req: &Request, idx: usize) -> Result<srtp::Context, String> {
        let given = req
            .header("KeyMgmt")
            .and_then(crate::mikey::key_mgmt_header_data)
            .map(str::to_string)
            .or_else(|| self.pubs.get(idx).and_then(|p| p.key_mgmt.clone()))
            .ok_or("RTP/SAVP needs the publisher's MIKEY key (KeyMgmt or a=key-mgmt)")?;
        let (key, sessions) = crate::mikey::parse_base64_with_sessions(&given)
            .map_err(|e| format!("KeyMgmt: {e}"))?;
        let mut ctx = srtp::Context::new(&key);
        for cs in sessions {
            let _ = ctx.set_roc(cs.ssrc, cs.roc);
        }
        Ok(ctx)
    }

    /// The stream's SRTP sealer, made by the first RTSPS reader of the stream (None only
    /// without randomness for a key).
    fn sealer(&mut self) -> Option<Arc<Option<SrtpMux>>> {
        if self.sealer.is_none() {
            let mux = self.mux.as_ref()?;
            let source = self.reader.as_ref()?.stream();
            self.sealer = Some(source.extension(|| SrtpMux::new(mux)));
        }
        self.sealer.clone().filter(|s| s.is_some())
    }

    fn play(&mut self, req: &Request) -> Bytes {
        let cseq = req.cseq();
        let savp = self.session.savp == Some(true);
        // The fan-out engine's RTP egress of the stream (sealed for SRTP readers), held while
        // this reader plays.
        let plain = match (&self.mux, &self.reader) {
            (Some(m), Some(r)) => m.egress(r.stream()),
            _ => None,
        };
        let packets = match (plain, savp) {
            (Some(p), true) => self
                .sealer
                .as_ref()
                .and_then(|s| s.as_ref().as_ref().map(|s| s.egress(&p))),
            (p, _) => p,
        };
        let Some(packets) = packets else {
            return response(455, "Method Not Valid in This State", cseq, &[], b"");
        };
        let udp_only = self
            .session
            .transports
            .iter()
            .all(|t| matches!(t, Some(Tr::Udp { .. })));
        match (self.udp.clone(), udp_only) {
            (Some(udp), true) => {
                let dests = self
                    .session
                    .transports
                    .iter()
                    .map(|t| match t {
                        Some(Tr::Udp { rtp, rtcp }) => Some((*rtp, *rtcp)),
                        _ => None,
                    })
                    .collect();
                let fanout = packets
                    .output()
                    .extension(crate::fanout::UdpFanout::default);
                self.count_fan();
                self.fan_counted = (0, 0);
                self.fan = Some(fanout.join(
                    crate::fanout::Member::new(dests),
                    &packets,
                    udp.rtp.clone(),
                    udp.rtcp.clone(),
                ));
            }
            // The usual channel layout on plain TCP: the egress writes to the socket itself.
            _ if self.sink.is_some() && self.session.direct() => {
                self.attach_after_reply = Some(packets.clone());
            }
            _ => self.playing = Some(packets.subscribe()),
        }
        if self.session.transports.contains(&Some(Tr::Multicast)) && self.multicast.is_none() {
            if let (Some(groups), Some(reader)) = (&self.config.multicast, &self.reader) {
                let sg = crate::multicast::stream_groups(reader.stream(), savp);
                self.multicast = Some(sg.join(&packets, &groups.conf));
            }
        }
        let path = self.session.path.clone().unwrap_or_default();
        self.guard.set(tidegate_core::ConnState::Read, &path, "");
        self.session.ok(cseq, &[("Range", "npt=0.000-".into())])
    }

    fn record(&mut self, req: &Request) -> Bytes {
        let cseq = req.cseq();
        tracing::info!("[RTSP] is publishing");
        self.started = Instant::now();
        let path = self.session.path.clone().unwrap_or_default();
        self.guard.set(tidegate_core::ConnState::Publish, &path, "");
        self.try_start();
        self.session.ok(cseq, &[])
    }

    /// Starts the stream once every track's parameters are known.
    fn try_start(&mut self) {
        if self.stream.is_some() {
            return;
        }
        let Some(publisher) = self.publisher.as_mut() else {
            return;
        };
        if let Some(desc) = crate::ingest::desc(self.pubs.iter().map(|p| &p.t)) {
            let stream = publisher.start(desc);
            let tracks: Vec<&crate::ingest::InTrack> = self.pubs.iter().map(|p| &p.t).collect();
            crate::ingest::mark_mpegts(&tracks, &stream);
            self.stream = Some(stream);
        }
    }

    fn on_interleaved(&mut self, channel: u8, data: Bytes) {
        match (self.publisher.is_some(), self.session.channel(channel)) {
            (true, Some(Channel::Rtp(idx))) => self.on_rtp(idx, &data),
            // Its RTCP, on the channel after its RTP.
            (true, Some(Channel::Rtcp(idx))) => self.on_publisher_rtcp(idx, &data),
            // A reader's RTCP, on the channel after its track's RTP.
            (false, Some(Channel::Rtcp(idx))) => self.on_reader_rtcp(idx, &data),
            _ => {}
        }
    }

    /// RTCP of track `idx` in the clear: as it came, or SRTCP opened with the peer's key
    /// (None when it does not open, or came under a key the peer never sent).
    fn plain_rtcp<'a>(&mut self, idx: usize, data: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
        match (
            self.session.savp == Some(true),
            self.srtp_in.get_mut(idx).and_then(Option::as_mut),
        ) {
            (false, _) => Some(std::borrow::Cow::Borrowed(data)),
            (true, Some(ctx)) => ctx.unprotect_rtcp(data).ok().map(std::borrow::Cow::Owned),
            (true, None) => None,
        }
    }

    /// A reader's RTCP on track `idx`: its receiver report says what it lost and the jitter it
    /// sees. SRTCP is read with the reader's own key (from its SETUP's `KeyMgmt`).
    fn on_reader_rtcp(&mut self, idx: usize, data: &[u8]) {
        if self.publisher.is_some() || idx >= self.reports.len() {
            return;
        }
        let Some(data) = self.plain_rtcp(idx, data) else {
            return;
        };
        let data = &data[..];
        let Ok(blocks) = tidegate_rtp::rtcp::report_blocks(data) else {
            return;
        };
        let stats = &self.guard.extra;
        // One RTP session per track, one source in it: the block is about this track.
        let Some(block) = blocks.first() else {
            // No report block yet (nothing received).
            stats.rtcp_packets_received.fetch_add(1, Ordering::Release);
            return;
        };
        self.reports[idx] = Some(*block);
        let lost: i64 = self
            .reports
            .iter()
            .flatten()
            .map(|b| i64::from(b.packets_lost.max(0)))
            .sum();
        stats.rtp_packets_lost.store(lost as u64, Ordering::Relaxed);
        let clocks = self.mux.as_ref().map(|m| &m.tracks);
        let jitters: Vec<u64> = self
            .reports
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let clock = u64::from(clocks?.get(i)?.clock.max(1));
                Some(u64::from(b.as_ref()?.jitter) * 1_000_000 / clock)
            })
            .collect();
        if !jitters.is_empty() {
            let mean = jitters.iter().sum::<u64>() / jitters.len() as u64;
            stats.jitter_us.store(mean, Ordering::Relaxed);
        }
        // Counted last: whoever sees the count sees the report's figures.
        stats.rtcp_packets_received.fetch_add(1, Ordering::Release);
    }

    fn on_rtp(&mut self, idx: usize, data: &[u8]) {
        let plain;
        let data = match self.srtp_in.get_mut(idx).and_then(Option::as_mut) {
            Some(ctx) => match ctx.unprotect_rtp(data) {
                Ok(v) => {
                    plain = v;
                    &plain[..]
                }
                Err(e) => {
                    self.srtp_refused += 1;
                    self.guard
                        .extra
                        .srtp_packets_refused
                        .store(self.srtp_refused, Ordering::Relaxed);
                    if self.srtp_refused.is_power_of_two() {
                        tracing::warn!(
                            refused = self.srtp_refused,
                            "[RTSP] SRTP packet refused: {e}"
                        );
                    }
                    return;
                }
            },
            None => data,
        };
        let Ok(p) = RtpPacket::parse(data) else {
            return;
        };
        let Some(t) = self.pubs.get_mut(idx) else {
            return;
        };
        let frames = t.t.push(idx, &p, self.started);
        let stats = &self.guard.extra;
        stats.rtp_packets_received.fetch_add(1, Ordering::Relaxed);
        let lost: u64 = self.pubs.iter().map(|p| p.t.inc.depack.packets_lost).sum();
        if lost != self.lost_reported {
            stats.rtp_packets_lost.store(lost, Ordering::Relaxed);
            self.lost_reported = lost;
        }
        let dropped: u64 = self.pubs.iter().map(|p| p.t.inc.depack.units_dropped).sum();
        if dropped != self.dropped_reported {
            if let Some(stream) = &self.stream {
                stream
                    .stats()
                    .frames_in_error
                    .fetch_add(dropped - self.dropped_reported, Ordering::Relaxed);
            }
            self.dropped_reported = dropped;
        }
        for f in frames {
            self.try_start();
            if let Some(stream) = &self.stream {
                if self.absolute.admits(f.track as usize, stream) {
                    stream.write(f);
                }
            }
        }
    }

    /// A publisher's RTCP on track `idx`: its sender reports give absolute times
    /// (`useAbsoluteTimestamp`).
    fn on_publisher_rtcp(&mut self, idx: usize, data: &[u8]) {
        if !self.absolute.enabled() {
            return;
        }
        let Some(data) = self.plain_rtcp(idx, data) else {
            return;
        };
        if let Some(t) = self.pubs.get(idx) {
            self.absolute.on_rtcp(idx, &t.t, &data);
        }
    }

    async fn send_packets(&mut self, frame: &Frame, out: &mut BytesMut) {
        // A frame's RTP packets to UDP readers leave in one `sendmmsg` at the end.
        let mut batch: Vec<(Bytes, SocketAddr)> = Vec::new();
        for (ch, pkt) in split(frame.data.clone()) {
            let (idx, rtcp) = (usize::from(ch / 2), ch % 2 == 1);
            let Some(tr) = self.session.transports.get(idx).copied().flatten() else {
                continue;
            };
            if !rtcp {
                self.guard
                    .extra
                    .rtp_packets_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            match tr {
                Tr::Multicast => {}
                Tr::Tcp { ch } => interleaved(ch + u8::from(rtcp), &pkt, out),
                Tr::Udp {
                    rtp,
                    rtcp: rtcp_addr,
                } => {
                    if !rtcp {
                        batch.push((pkt, rtp));
                    } else if let Some(udp) = &self.udp {
                        if udp.rtcp.send_to(&pkt, rtcp_addr).await.is_ok() {
                            self.count_sent(pkt.len() as u64);
                        }
                    }
                }
            }
        }
        if let (false, Some(udp)) = (batch.is_empty(), &self.udp) {
            let sent = tidegate_core::udp_batch::send_all_dumped(&udp.rtp, &batch).await;
            self.count_sent(sent);
        }
    }

    /// Adds what the fan-out sent since the last call to the connection's counts.
    fn count_fan(&mut self) {
        let Some(m) = self.fan.as_ref().map(|f| f.member().clone()) else {
            return;
        };
        let (bytes, pkts) = (
            m.bytes.load(Ordering::Relaxed),
            m.rtp_packets.load(Ordering::Relaxed),
        );
        let (b0, p0) = self.fan_counted;
        self.fan_counted = (bytes, pkts);
        self.count_sent(bytes.saturating_sub(b0));
        self.guard
            .extra
            .rtp_packets_sent
            .fetch_add(pkts.saturating_sub(p0), Ordering::Relaxed);
    }

    /// Adds what the sink wrote since the last call to the connection's and the path's counts.
    fn count_sink(&mut self) {
        let Some(sink) = &self.sink else {
            return;
        };
        let (bytes, pkts) = (sink.bytes_sent(), sink.units_sent());
        let (b0, p0) = self.sink_counted;
        self.sink_counted = (bytes, pkts);
        self.count_sent(bytes.saturating_sub(b0));
        self.guard
            .extra
            .rtp_packets_sent
            .fetch_add(pkts.saturating_sub(p0), Ordering::Relaxed);
    }

    /// Writes the sink's queue as the socket takes it, within the write timeout.
    async fn drain_sink(
        &self,
        tcp: Option<&Arc<dyn tidegate_core::Writable>>,
    ) -> Result<(), String> {
        let (Some(sink), Some(tcp)) = (&self.sink, tcp) else {
            return Ok(());
        };
        match sink
            .drain_within(tcp.as_ref(), self.config.write_timeout)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("write timed out".into()),
            Err(e) => Err(format!("write: {e}")),
        }
    }

    fn count_sent(&self, bytes: u64) {
        self.guard.counters.sent.fetch_add(bytes, Ordering::Relaxed);
        if let Some(r) = &self.reader {
            r.add_bytes_sent(bytes);
        }
    }
}

/// Track `idx`'s MIKEY message of a stream's sealer (`sealer()` only returns made ones).
fn mikey_of(sealer: &Option<SrtpMux>, idx: usize) -> String {
    sealer.as_ref().map_or_else(String::new, |s| s.mikey(idx))
}

async fn sink_wanted(s: &Option<Arc<Sink>>) -> SinkStatus {
    match s {
        Some(s) => s.wanted().await,
        None => std::future::pending().await,
    }
}

async fn recv_playing(r: &mut Option<tidegate_core::EgressReader>) -> Option<Arc<Frame>> {
    match r {
        Some(r) => r.recv().await.ok(),
        None => std::future::pending().await,
    }
}

/// Resolves when the stream a fan-out reader plays has ended.
async fn fan_ended(f: &Option<crate::fanout::Membership>) {
    match f {
        Some(f) => f.member().ended.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn recv_udp(r: &mut Option<mpsc::Receiver<UdpIn>>) -> Option<UdpIn> {
    match r {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A UDP listener with `udpReadBufferSize` applied.
fn tuned(s: UdpSocket) -> UdpSocket {
    tidegate_core::udp::tune(&s);
    s
}
