//! The tokio driver: accepts connections, runs the session state machine, and connects
//! publishers and players to the path registry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidegate_core::{
    Action, AuthRequest, CodecParams, CoreError, Credentials, PathManager, SessionInfo, StreamDesc,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::amf0::{encode_all, Amf0};
use crate::chunk::write_message;
use crate::flv;
use crate::mux::RtmpMuxer;
use crate::session::{
    Event, ServerSession, CSID_DATA, MEDIA_STREAM_ID, MSG_AUDIO, MSG_DATA_AMF0, MSG_VIDEO,
    OUT_CHUNK_SIZE,
};
use crate::RtmpError;
use tidegate_core::{
    ConnGuard, ConnRegistry, ConnState, SharedTcp, SharedTls, Sink, SinkLimits, SinkStatus,
    Transport,
};

#[derive(Clone, Debug)]
pub struct RtmpConfig {
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `rtmpTrustedProxies`: connections from these start with a PROXY protocol header that
    /// names the client.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
}

/// One listener: plain RTMP, or RTMPS when `tls` is set.
pub struct RtmpListener {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub conns: Arc<ConnRegistry>,
    /// Stops accepting (a reload moved the listener); connections go on until `shutdown`.
    pub stop: CancellationToken,
}

/// Runs one RTMP connection over any byte stream (RTMPT's tunnel), as the listener runs its
/// TCP connections: registered in `conns` (the API lists it), ended by `shutdown`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_conn<S: Transport + Sync>(
    socket: S,
    remote: SocketAddr,
    kind: &'static str,
    conns: &Arc<ConnRegistry>,
    paths: PathManager,
    config: RtmpConfig,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let id = paths.new_session_id();
    let span = tracing::info_span!("rtmp", conn = id, remote = %remote, tunnel = "http");
    let guard = conns.add(id, remote);
    tasks.spawn(
        async move {
            tracing::debug!("connection opened");
            match Conn::new(socket, remote, id, kind, paths, config, shutdown, guard)
                .run()
                .await
            {
                Ok(()) => tracing::info!("connection closed"),
                Err(e) => tracing::info!("connection closed: {e}"),
            }
        }
        .instrument(span),
    );
}

/// Accepts RTMP connections until `shutdown`.
pub async fn serve(
    l: RtmpListener,
    paths: PathManager,
    config: RtmpConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let kind = if l.tls.is_some() {
        "rtmpsConn"
    } else {
        "rtmpConn"
    };
    let name = if l.tls.is_some() { "RTMPS" } else { "RTMP" };
    let mut backoff = tidegate_core::guard::AcceptBackoff::new(name);
    let limiter = tidegate_core::guard::ConnLimiter::new(name);
    loop {
        let (socket, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = l.stop.cancelled() => return,
            r = l.listener.accept() => match r {
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
            // RTMP has no answer before its handshake: the connection is closed.
            continue;
        };
        let _ = socket.set_nodelay(true);
        let id = paths.new_session_id();
        let paths = paths.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        let tls = l.tls.clone();
        let conns = l.conns.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let mut socket = socket;
            let mut remote = remote;
            let local = socket.local_addr().ok();
            // Behind a trusted proxy: the client's address is in the PROXY header.
            if tidegate_core::proxy_protocol::trusted(&config.trusted_proxies, remote.ip()) {
                let header = tokio::time::timeout(
                    config.read_timeout,
                    tidegate_core::proxy_protocol::read_header(&mut socket),
                )
                .await;
                match header {
                    Ok(Ok(Some(client))) => remote = client,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::info!(conn = id, %remote, "[RTMP] closed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(conn = id, %remote, "[RTMP] closed: no PROXY header in time");
                        return;
                    }
                }
            }
            let span =
                tracing::info_span!("rtmp", conn = id, remote = %remote, tls = tls.is_some());
            let guard = conns.add(id, remote);
            async move {
                tracing::debug!("connection opened");
                let result = match tls {
                    None => {
                        // Shared, so that a stream's fan-out writer can write to it directly.
                        let socket = tidegate_core::dump::Dumped::new(
                            SharedTcp::new(socket),
                            "rtmp_server_conn",
                            local,
                            remote,
                            true,
                        );
                        Conn::new(socket, remote, id, kind, paths, config, shutdown, guard)
                            .run()
                            .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(config.read_timeout, acceptor.accept(socket))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                // Its record layer shared with the fan-out writer.
                                let tls = tidegate_core::dump::Dumped::new(
                                    SharedTls::new(tls),
                                    "rtmps_server_conn",
                                    local,
                                    remote,
                                    true,
                                );
                                Conn::new(tls, remote, id, kind, paths, config, shutdown, guard)
                                    .run()
                                    .await
                            }
                            Ok(Err(e)) => Err(ConnError::Tls(e.to_string())),
                            Err(_) => Err(ConnError::Tls("handshake timed out".into())),
                        }
                    }
                };
                match result {
                    Ok(()) => tracing::info!("connection closed"),
                    Err(e) => tracing::info!("connection closed: {e}"),
                }
            }
            .instrument(span)
            .await
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Rtmp(#[from] RtmpError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no data for {0:?}")]
    ReadTimeout(Duration),
    #[error("no publish or play within {0:?} of connecting")]
    Setup(Duration),
    #[error("client accepted no data for {0:?}")]
    WriteTimeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("kicked")]
    Kicked,
}

struct Conn<S> {
    socket: S,
    remote: SocketAddr,
    id: u64,
    kind: &'static str,
    paths: PathManager,
    config: RtmpConfig,
    session: ServerSession,
    shutdown: CancellationToken,
    guard: ConnGuard,
}

/// What `name?query` carries: the name, `user`, `pass`, and a token (`token` or `jwt`).
struct Split<'a> {
    name: &'a str,
    query: &'a str,
    user: Option<String>,
    pass: Option<String>,
    token: Option<String>,
}

/// Splits `name?query` and reads `user`, `pass` and `token` (or `jwt`) from the query.
fn split_query(s: &str) -> Split<'_> {
    let (name, query) = s.split_once('?').unwrap_or((s, ""));
    let mut out = Split {
        name,
        query,
        user: None,
        pass: None,
        token: None,
    };
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("user", v)) => out.user = Some(v.to_string()),
            Some(("pass", v)) => out.pass = Some(v.to_string()),
            Some(("token" | "jwt", v)) => {
                out.token = Some(tidegate_core::text::percent_decode(v, false))
            }
            _ => {}
        }
    }
    out
}

impl<S: Transport> Conn<S> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        socket: S,
        remote: SocketAddr,
        id: u64,
        kind: &'static str,
        paths: PathManager,
        config: RtmpConfig,
        shutdown: CancellationToken,
        guard: ConnGuard,
    ) -> Conn<S> {
        Conn {
            socket,
            remote,
            id,
            kind,
            paths,
            config,
            session: ServerSession::new(0),
            shutdown,
            guard,
        }
    }

    /// Resolves when the server shuts down (Ok) or the API kicks this connection (Err).
    async fn stopped(
        shutdown: CancellationToken,
        kick: CancellationToken,
    ) -> Result<(), ConnError> {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            _ = kick.cancelled() => Err(ConnError::Kicked),
        }
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        let out = self.session.take_output();
        if !out.is_empty() {
            self.write(&out).await?;
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let limit = self.config.write_timeout;
        let mut fut = std::pin::pin!(self.socket.write_all(data));
        // Fast path: the socket buffer takes the data at once (the common case for a player
        // keeping up), so no timer is armed per message; only a blocked write gets a deadline.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
        let result = match first {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| ConnError::WriteTimeout(limit))?,
        };
        result?;
        self.guard
            .counters
            .sent
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Reads once from the socket into the session. Returns false on EOF.
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<bool, ConnError> {
        let n = match tokio::time::timeout(self.config.read_timeout, self.socket.read(buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::ReadTimeout(self.config.read_timeout)),
        };
        if n == 0 {
            return Ok(false);
        }
        self.received(n);
        self.session.feed(&buf[..n])?;
        Ok(true)
    }

    fn received(&self, n: usize) {
        self.guard
            .counters
            .received
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads once into the session and sends its replies. Returns whether the connection is
    /// still open; ends early on shutdown, an API kick, or `replaced` (another publisher took
    /// the path).
    async fn step(
        &mut self,
        buf: &mut [u8],
        replaced: &CancellationToken,
    ) -> Result<bool, ConnError> {
        let (shutdown, kick) = (self.shutdown.clone(), self.guard.kick.clone());
        let open = tokio::select! {
            r = Self::stopped(shutdown, kick) => return r.map(|()| false),
            _ = replaced.cancelled() => {
                return Err(ConnError::Refused("replaced by another publisher, or kicked".into()))
            }
            r = self.read_some(buf) => r?,
        };
        self.flush().await?;
        Ok(open)
    }

    async fn run(mut self) -> Result<(), ConnError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut app = String::new();
        let mut tc_url = String::new();
        let mut fourccs = Vec::new();
        let never = CancellationToken::new();
        // The handshake and the commands up to `publish` or `play` have `readTimeout` in all:
        // a client that trickles them a byte at a time (slowloris) is closed.
        let limit = self.config.read_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let open = tokio::time::timeout_at(deadline, self.step(&mut buf, &never))
                .await
                .map_err(|_| ConnError::Setup(limit))??;
            while let Some(ev) = self.session.poll_event() {
                match ev {
                    Event::Connect {
                        app: a,
                        tc_url: t,
                        fourccs: f,
                    } => {
                        app = a;
                        tc_url = t;
                        fourccs = f;
                    }
                    Event::Publish { name } => {
                        return self.publish(&app, &tc_url, &name, buf).await
                    }
                    Event::Play { name } => {
                        let opus = fourccs.iter().any(|f| f == "Opus" || f == "*");
                        return self.play(&app, &tc_url, &name, opus, buf).await;
                    }
                    _ => {}
                }
            }
            if !open {
                return Ok(());
            }
        }
    }

    /// The path and the authorization request for `action`: credentials from the stream
    /// name's query, else the app's, else the tcUrl's.
    fn resolve(&self, app: &str, tc_url: &str, name: &str, action: Action) -> AuthRequest {
        let n = split_query(name);
        let a = split_query(app);
        let t = split_query(tc_url);
        let path = match (a.name.trim_matches('/'), n.name.trim_matches('/')) {
            ("", n) => n.to_string(),
            (a, "") => a.to_string(),
            (a, n) => format!("{a}/{n}"),
        };
        let query = [n.query, a.query, t.query]
            .into_iter()
            .find(|q| !q.is_empty())
            .unwrap_or("");
        let mut creds = Credentials::new(
            n.user.or(a.user).or(t.user),
            n.pass.or(a.pass).or(t.pass),
            self.remote.ip(),
        );
        creds.token = n.token.or(a.token).or(t.token);
        AuthRequest::new(action, &path, "rtmp", creds)
            .with_query(query)
            .with_id(self.id)
    }

    async fn refuse(&mut self, code: &str, err: CoreError) -> Result<(), ConnError> {
        tracing::warn!("{err}");
        self.session.reject(code, &err.to_string());
        self.flush().await?;
        Err(ConnError::Refused(err.to_string()))
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id,
            kind: self.kind,
            remote: Some(self.remote),
            query: String::new(),
        }
    }

    async fn publish(
        mut self,
        app: &str,
        tc_url: &str,
        name: &str,
        mut buf: Vec<u8>,
    ) -> Result<(), ConnError> {
        let mut req = self.resolve(app, tc_url, name, Action::Publish);
        let authorized = self.paths.authorize_path(&mut req).await;
        let path = req.path.clone();
        let publisher = match authorized {
            Ok((_, grant)) => match self
                .paths
                .publish(&path, self.info().with_query(&req.query))
            {
                Ok(p) => {
                    grant.enforce(
                        self.guard.kick.clone(),
                        format!("[RTMP] publisher of '{path}'"),
                    );
                    p
                }
                Err(e) => return self.refuse("NetStream.Publish.BadName", e).await,
            },
            Err(e) => return self.refuse("NetStream.Publish.BadName", e).await,
        };
        tracing::info!(path, "is publishing");
        self.guard.set(ConnState::Publish, &path, &req.query);
        self.session.accept_publish();
        self.flush().await?;
        let kicked = publisher.kicked();
        let mut ingest = crate::ingest::Ingest::new(publisher);
        // The publisher's reads: one stop future and one read deadline for the whole session,
        // the deadline pushed later after each read (a compare-and-swap in tokio's timer),
        // rather than a timer and three cancellation futures set up and torn down per read.
        let limit = self.config.read_timeout;
        let stopped = Self::stopped(self.shutdown.clone(), self.guard.kick.clone());
        let replaced = kicked.cancelled_owned();
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(stopped, replaced, deadline);
        loop {
            let n = tokio::select! {
                biased;
                r = &mut stopped => return r,
                () = &mut replaced => {
                    return Err(ConnError::Refused("replaced by another publisher, or kicked".into()))
                }
                () = &mut deadline => return Err(ConnError::ReadTimeout(limit)),
                r = self.socket.read(&mut buf) => r?,
            };
            let open = n > 0;
            if open {
                deadline.as_mut().reset(tokio::time::Instant::now() + limit);
                self.received(n);
                self.session.feed(&buf[..n])?;
                self.flush().await?;
            }
            while let Some(ev) = self.session.poll_event() {
                match ev {
                    Event::Media {
                        type_id,
                        timestamp,
                        payload,
                    } => ingest.on_message(type_id, timestamp, payload)?,
                    Event::Stop => return Ok(()),
                    _ => {}
                }
            }
            if !open {
                return Ok(());
            }
        }
    }

    /// `takes_opus`: the player listed Opus among its Enhanced RTMP codecs; other players
    /// get a stream's Opus as AAC (the audio bridge) where the path allows it.
    async fn play(
        mut self,
        app: &str,
        tc_url: &str,
        name: &str,
        takes_opus: bool,
        buf: Vec<u8>,
    ) -> Result<(), ConnError> {
        let mut req = self.resolve(app, tc_url, name, Action::Read);
        let authorized = self.paths.authorize_path(&mut req).await;
        let path = req.path.clone();
        let reader = match authorized {
            Ok((_, grant)) => match self
                .paths
                .read_or_demand(&path, self.info().with_query(&req.query))
                .await
            {
                Ok(r) => {
                    grant.enforce(
                        self.guard.kick.clone(),
                        format!("[RTMP] reader of '{path}'"),
                    );
                    r
                }
                Err(e) => return self.refuse("NetStream.Play.StreamNotFound", e).await,
            },
            Err(e) => return self.refuse("NetStream.Play.StreamNotFound", e).await,
        };
        tracing::info!(path, "is reading");
        self.guard.set(ConnState::Read, &path, &req.query);
        let (view, bridged) = if takes_opus {
            (None, None)
        } else {
            bridge_opus(&reader)
        };
        let source = view
            .as_ref()
            .map_or_else(|| reader.stream().clone(), |v| v.stream().clone());
        let egress = source.egress(|s| RtmpMuxer::new(&s.desc()));
        let desc = source.desc();
        let mut carriage = tidegate_core::Carriage::sort(&desc, |t| crate::flv::why_not(&t.params));
        if view.is_some() {
            for c in &mut carriage.carried {
                if *c == tidegate_core::Codec::Aac.name() {
                    *c = "Opus → MPEG-4 Audio";
                }
            }
        }
        if let Some(why) = bridged {
            tracing::info!(path, "Opus is sent as Enhanced RTMP Opus: {why}");
        }
        self.guard.counters.set_carriage(carriage);
        self.session.accept_play();
        let mut head = self.session.take_output();
        start_of_stream(&desc, &mut head);
        // Both transports this server runs on (SharedTcp, SharedTls) let the engine write.
        let Some((io, tcp)) = self.socket.sink_io() else {
            return Err(ConnError::Refused(
                "this transport cannot be read from".into(),
            ));
        };
        self.play_push(io, tcp, head, &egress, &reader, buf).await
    }

    /// A player: the stream's fan-out writer writes the media to the socket itself (sealed in
    /// TLS records for RTMPS); this task reads the player's messages, sends the session's
    /// answers through the same sink (so they never split a media message), and drains the
    /// sink's queue when the socket was full.
    async fn play_push(
        &mut self,
        io: Arc<dyn tidegate_core::SinkIo>,
        tcp: Arc<dyn tidegate_core::Writable>,
        head: BytesMut,
        egress: &Arc<tidegate_core::Egress>,
        reader: &tidegate_core::Reader,
        mut buf: Vec<u8>,
    ) -> Result<(), ConnError> {
        // A player sends only small messages (acknowledgements) from now on: a small buffer
        // keeps an idle player cheap.
        buf.truncate(4096);
        buf.shrink_to_fit();
        let limits = SinkLimits {
            max_frames: reader.stream().config().ring_capacity,
            max_bytes: reader.stream().config().gop_cache_max_bytes,
        };
        let sink = Arc::new(Sink::new(io, limits).counting(reader.bytes_sent_counter()));
        // The connection's bytes sent are read from the sink (nothing added per write).
        let _counted = self.guard.counters.count_sink(&sink);
        sink.send_control(head.freeze());
        let probe: Arc<dyn tidegate_core::ReaderProbe> = sink.clone();
        self.guard.counters.set_reader(Arc::downgrade(&probe));
        let _attached = egress.attach(sink.clone());
        let stopped = Self::stopped(self.shutdown.clone(), self.guard.kick.clone());
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                r = &mut stopped => return r,
                s = sink.wanted() => match s {
                    SinkStatus::Backlog => self.drain(tcp.as_ref(), &sink).await?,
                    SinkStatus::Ended => {
                        self.session.end_of_stream();
                        sink.send_control(self.session.take_output().freeze());
                        self.drain(tcp.as_ref(), &sink).await?;
                        return Ok(());
                    }
                    SinkStatus::Failed(kind) => return Err(std::io::Error::from(kind).into()),
                    SinkStatus::Idle => {}
                },
                r = read_bounded(&mut self.socket, &mut buf) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.received(n);
                    self.session.feed(&buf[..n])?;
                    sink.send_control(self.session.take_output().freeze());
                    while let Some(ev) = self.session.poll_event() {
                        if ev == Event::Stop {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Writes the sink's queue as the socket takes it, within the write timeout.
    async fn drain(&self, tcp: &dyn tidegate_core::Writable, sink: &Sink) -> Result<(), ConnError> {
        match sink.drain_within(tcp, self.config.write_timeout).await? {
            None => Ok(()),
            Some(limit) => Err(ConnError::WriteTimeout(limit)),
        }
    }
}

/// A player may send nothing for a long time (only acknowledgements): no read timeout here;
/// a dead player is caught by the write timeout.
/// The audio bridge for an RTMP player that did not list Opus: the stream's Opus as AAC-LC
/// (once per stream), or None with why not when the path turns it off or it cannot run.
pub(crate) fn bridge_opus(
    reader: &tidegate_core::Reader,
) -> (Option<Arc<tidegate_core::Transcoded>>, Option<String>) {
    let desc = reader.desc();
    let Some(track) = desc
        .tracks
        .iter()
        .find(|t| matches!(t.params, tidegate_core::CodecParams::Opus { .. }))
    else {
        return (None, None);
    };
    let conf = reader.conf();
    if !conf.audio_transcode {
        return (None, Some("audioTranscode is off for this path".into()));
    }
    if let Some(why) = tidegate_transcode::why_not_aac(track) {
        return (None, Some(format!("it cannot be transcoded to AAC: {why}")));
    }
    match tidegate_transcode::opus_to_aac(reader.stream(), conf.audio_transcode_bitrate) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(format!("it cannot be transcoded to AAC: {e}"))),
    }
}

async fn read_bounded<S: AsyncRead + Unpin>(
    socket: &mut S,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    socket.read(buf).await
}

/// onMetaData and the sequence headers a player needs before the first frame, as messages
/// (type, body).
pub(crate) fn stream_head(desc: &StreamDesc) -> Vec<(u8, Bytes)> {
    let mut meta: Vec<(&str, Amf0)> = Vec::new();
    for t in &desc.tracks {
        match &t.params {
            CodecParams::H264 { sps, .. } => {
                meta.push(("videocodecid", Amf0::Number(7.0)));
                if let Ok(i) = tidegate_codec::h264::parse_sps(sps) {
                    meta.push(("width", Amf0::Number(f64::from(i.width))));
                    meta.push(("height", Amf0::Number(f64::from(i.height))));
                }
            }
            CodecParams::H265 { sps, .. } => {
                meta.push((
                    "videocodecid",
                    Amf0::Number(f64::from(u32::from_be_bytes(*b"hvc1"))),
                ));
                if let Ok(i) = tidegate_codec::h265::parse_sps(sps) {
                    meta.push(("width", Amf0::Number(f64::from(i.width))));
                    meta.push(("height", Amf0::Number(f64::from(i.height))));
                }
            }
            CodecParams::Av1 { sequence_header } => {
                meta.push((
                    "videocodecid",
                    Amf0::Number(f64::from(u32::from_be_bytes(*b"av01"))),
                ));
                if let Ok(i) = tidegate_codec::av1::parse_sequence_header(sequence_header) {
                    meta.push(("width", Amf0::Number(f64::from(i.max_width))));
                    meta.push(("height", Amf0::Number(f64::from(i.max_height))));
                }
            }
            CodecParams::Vp9 => meta.push((
                "videocodecid",
                Amf0::Number(f64::from(u32::from_be_bytes(*b"vp09"))),
            )),
            CodecParams::Aac { .. } => meta.push(("audiocodecid", Amf0::Number(10.0))),
            CodecParams::Opus { .. } => meta.push((
                "audiocodecid",
                Amf0::Number(f64::from(u32::from_be_bytes(*b"Opus"))),
            )),
            _ => {}
        }
    }
    let props = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let body = encode_all(&[Amf0::string("onMetaData"), Amf0::EcmaArray(props)]);
    let mut out = vec![(MSG_DATA_AMF0, body.freeze())];
    for t in &desc.tracks {
        if let Some(seq) = flv::sequence_header(&t.params) {
            let type_id = if t.codec().is_video() {
                MSG_VIDEO
            } else {
                MSG_AUDIO
            };
            out.push((type_id, seq));
        }
    }
    out
}

fn start_of_stream(desc: &StreamDesc, out: &mut BytesMut) {
    for (type_id, body) in stream_head(desc) {
        let csid = match type_id {
            MSG_VIDEO => crate::session::CSID_VIDEO,
            MSG_AUDIO => crate::session::CSID_AUDIO,
            _ => CSID_DATA,
        };
        write_message(
            out,
            csid,
            0,
            type_id,
            MEDIA_STREAM_ID,
            &body,
            OUT_CHUNK_SIZE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_credentials() {
        let s = split_query("stream?user=a&pass=b&x=1&jwt=t%2Bk");
        assert_eq!(
            (s.name, s.query, s.user.as_deref(), s.pass.as_deref()),
            (
                "stream",
                "user=a&pass=b&x=1&jwt=t%2Bk",
                Some("a"),
                Some("b")
            )
        );
        assert_eq!(s.token.as_deref(), Some("t+k"));
        let s = split_query("stream");
        assert_eq!(
            (s.name, s.user, s.pass, s.token),
            ("stream", None, None, None)
        );
    }
}
