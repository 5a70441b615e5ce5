//! Our own RTSP client, for pulled cameras that retina cannot read: multicast
//! (`rtspTransport: multicast`; retina has none), SRTP over UDP from `rtsps://` cameras
//! (retina has no SRTP), and UDP from any source port (`rtspAnyPort`; retina connects its UDP
//! sockets to the announced ports). retina stays the client for everything else, where it
//! copes with more camera quirks than this one does.
//!
//! It speaks what cameras and gst-rtsp-server need: DESCRIBE (Basic or Digest on a 401),
//! SETUP per track, PLAY, keep-alives, TEARDOWN; over TCP or TLS (`rtsps://`, with
//! `sourceFingerprint`). SRTP keys come from the SDP's `a=key-mgmt` (MIKEY). Packets become
//! frames through the same [`InTrack`] as RTSP publishers' do.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tidegate_core::dump::DumpedUdp;

use bytes::Bytes;
use tidegate_core::relay::RelayStatus;
use tidegate_core::PathManager;
use tidegate_rtp::RtpPacket;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ingest::AbortOnDrop;
use crate::ingest::InTrack;
use crate::message::{self, Input, Parser, Response};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The RTSP connection: requests out, responses in (interleaved data skipped).
struct Conn {
    io: Box<dyn Io>,
    /// The crate's one RTSP parser (`message`), here for responses.
    parser: Parser,
    cseq: u32,
    session: Option<String>,
    creds: Option<(String, String)>,
    /// The 401 challenges, answered on every later request.
    challenges: Vec<String>,
}

impl Conn {
    fn new(io: Box<dyn Io>, creds: Option<(String, String)>) -> Conn {
        Conn {
            io,
            parser: Parser::default(),
            cseq: 0,
            session: None,
            creds,
            challenges: Vec::new(),
        }
    }

    async fn send(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, String)],
    ) -> Result<(), String> {
        self.send_body(method, uri, extra, b"").await
    }

    async fn send_body(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Result<(), String> {
        self.cseq += 1;
        let mut headers = vec![("User-Agent", "Tidegate".to_string())];
        if let Some(s) = &self.session {
            headers.push(("Session", s.clone()));
        }
        if let Some((user, pass)) = &self.creds {
            let ch: Vec<&str> = self.challenges.iter().map(String::as_str).collect();
            if let Some(a) = crate::auth::authorization(&ch, method, uri, user, pass) {
                headers.push(("Authorization", a));
            }
        }
        headers.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let req = message::request(method, uri, self.cseq, &headers, body);
        tokio::time::timeout(IO_TIMEOUT, self.io.write_all(&req))
            .await
            .map_err(|_| format!("{method}: the camera accepted nothing for 10 s"))?
            .map_err(|e| format!("{method}: {e}"))
    }

    async fn response(&mut self, method: &str) -> Result<Response, String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut chunk = [0u8; 4096];
        loop {
            // Interleaved data before the answer is skipped, and so is a request from the
            // server (RTSP 1.0 servers may send GET_PARAMETER; nothing here needs one).
            loop {
                match self.parser.poll() {
                    Ok(Some(Input::Response(r))) => return Ok(r),
                    Ok(Some(Input::Interleaved { .. } | Input::Request(_))) => {}
                    Ok(None) => break,
                    Err(e) => return Err(format!("{method}: {e}")),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.io.read(&mut chunk))
                .await
                .map_err(|_| format!("{method}: no response within 10 s"))?
                .map_err(|e| format!("{method}: {e}"))?;
            if n == 0 {
                return Err(format!("{method}: the camera closed the connection"));
            }
            self.parser.feed(&chunk[..n]);
        }
    }

    /// A request and its response; a 401 is answered once with the URL's credentials.
    async fn request(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, String)],
    ) -> Result<Response, String> {
        self.request_body(method, uri, extra, b"").await
    }

    async fn request_body(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response, String> {
        self.send_body(method, uri, extra, body).await?;
        let mut r = self.response(method).await?;
        if r.status == 401 && self.creds.is_some() && self.challenges.is_empty() {
            self.challenges = r.all("WWW-Authenticate").map(str::to_string).collect();
            self.send_body(method, uri, extra, body).await?;
            r = self.response(method).await?;
        }
        if r.status != 200 {
            return Err(format!("{method}: the camera answered {}", r.status));
        }
        if let Some(s) = r.header("Session") {
            self.session = Some(s.split(';').next().unwrap_or("").trim().to_string());
        }
        Ok(r)
    }
}

/// Pushes `path` to `url` (`forward: rtsp://…` or `rtsps://…`) while it has a publisher, until
/// `cancel`: ANNOUNCE with the stream's SDP, SETUP of each track over TCP interleaved
/// (`mode=record`), RECORD, then the stream's RTP egress (the bytes its TCP readers get,
/// packetized once per stream) as it comes. Credentials from the URL (Basic or Digest).
pub async fn push(
    url: String,
    fingerprint: String,
    paths: PathManager,
    path: String,
    status: std::sync::Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    tidegate_core::relay::with_backoff("push", &path, &status, &cancel, || {
        push_once(&url, &fingerprint, &paths, &path, &status, &cancel)
    })
    .await;
}

async fn push_once(
    url: &str,
    fingerprint: &str,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let reader = match paths.read(
        path,
        tidegate_core::SessionInfo {
            id: paths.new_session_id(),
            kind: "rtspPush",
            remote: None,
            query: String::new(),
        },
    ) {
        Ok(r) => r,
        // The stream ended: the next publish starts a new push.
        Err(tidegate_core::CoreError::NoOnePublishing(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let source = reader.stream().clone();
    let mpegts = source.has_extension::<crate::ingest::PublishedAsMpegts>();
    let mux = source.extension(|| crate::mux::RtpMux::new(&source.desc(), mpegts));
    let egress = mux
        .egress(&source)
        .ok_or("no track of this stream can travel over RTSP")?;
    status.set_state("connecting");
    let mut url = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    let creds = take_credentials(&mut url);
    let (io, _) = connect(&url, fingerprint).await?;
    let mut c = Conn::new(io, creds);
    let url_s = url.to_string();
    c.request_body(
        "ANNOUNCE",
        &url_s,
        &[("Content-Type", "application/sdp".into())],
        mux.sdp.as_bytes(),
    )
    .await?;
    for i in 0..mux.tracks.len() {
        c.request(
            "SETUP",
            &format!("{}/trackID={i}", url_s.trim_end_matches('/')),
            &[(
                "Transport",
                format!(
                    "RTP/AVP/TCP;unicast;interleaved={}-{};mode=record",
                    2 * i,
                    2 * i + 1
                ),
            )],
        )
        .await?;
    }
    c.request("RECORD", &url_s, &[("Range", "npt=0.000-".into())])
        .await?;
    status.set_state("running");
    tracing::info!(path, url = status.url, "pushing");
    // From the stream's last keyframe on (its GOP cache), then live.
    let mut sub = egress.subscribe();
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = c.send("TEARDOWN", &url_s, &[]).await;
                return Ok(());
            }
            f = sub.recv() => match f {
                Ok(frame) => {
                    tokio::time::timeout(IO_TIMEOUT, c.io.write_all(&frame.data))
                        .await
                        .map_err(|_| "the destination accepted nothing for 10 s".to_string())?
                        .map_err(|e| format!("write: {e}"))?;
                    status
                        .bytes
                        .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
                }
                Err(tidegate_core::RecvError::Closed) => {
                    let _ = c.send("TEARDOWN", &url_s, &[]).await;
                    return Ok(());
                }
            },
            // Receiver reports and keep-alive answers are read and dropped.
            r = c.io.read(&mut chunk) => match r {
                Ok(0) => return Err("the destination closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            },
        }
    }
}

/// For the fuzz target: the response parser on arbitrary bytes.
#[doc(hidden)]
pub fn fuzz_response(data: &[u8]) {
    let mut p = Parser::default();
    p.feed(data);
    while let Ok(Some(i)) = p.poll() {
        if let Input::Response(r) = i {
            assert!(r.body.len() <= message::MAX_BODY);
        }
    }
    let _ = multicast_target(&String::from_utf8_lossy(data));
}

/// A track's control URL against the session's base.
fn control_url(base: &str, control: Option<&str>) -> String {
    match control {
        None | Some("*") => base.trim_end_matches('/').to_string(),
        Some(c) if c.starts_with("rtsp://") || c.starts_with("rtsps://") => c.to_string(),
        Some(c) => format!(
            "{}/{}",
            base.trim_end_matches('/'),
            c.trim_start_matches('/')
        ),
    }
}

/// `destination` and the RTP and RTCP ports of a multicast `Transport` answer (RTCP on the
/// next port unless `port=` names it).
fn multicast_target(transport: &str) -> Option<(Ipv4Addr, u16, u16)> {
    let mut group: Option<Ipv4Addr> = None;
    let mut ports: Option<(u16, u16)> = None;
    for part in transport.split(';').map(str::trim) {
        if let Some(d) = part.strip_prefix("destination=") {
            group = d.parse().ok();
        } else if let Some(p) = part.strip_prefix("port=") {
            let mut it = p.split('-').map(|n| n.trim().parse::<u16>().ok());
            if let Some(Some(rtp)) = it.next() {
                let rtcp = it.next().flatten().unwrap_or(rtp.saturating_add(1));
                ports = Some((rtp, rtcp));
            }
        }
    }
    let (rtp, rtcp) = ports?;
    Some((group?, rtp, rtcp)).filter(|(g, ..)| g.is_multicast())
}

/// A socket bound to `group:port` (so that another group on the same port is not mixed in),
/// joined on every interface, shareable with other readers of the group.
fn join(group: Ipv4Addr, port: u16) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    // Other receivers of the group on this host (the camera's own RTCP socket, when the
    // camera is local) may hold the port with SO_REUSEPORT.
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((group, port)).into())?;
    s.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// How our client asks for RTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `RTP/AVP;multicast` (or `RTP/SAVP` with `srtp`): the groups the camera names.
    Multicast { srtp: bool },
    /// `RTP/AVP;unicast` (or `RTP/SAVP` with `srtp`) to a port pair of ours; with `any_port`,
    /// packets from any port of the camera's address are taken, not only its `server_port`.
    Udp { srtp: bool, any_port: bool },
}

/// Whether a unicast packet from `from` is the camera's: its address, and its announced RTP
/// port unless any port is allowed.
fn from_camera(
    from: SocketAddr,
    camera: std::net::IpAddr,
    server_port: Option<u16>,
    any_port: bool,
) -> bool {
    from.ip() == camera && (any_port || server_port.is_none_or(|p| p == from.port()))
}

/// The SRTP context for a camera's media `m` (its key, and the rollover counters of a stream
/// that has wrapped its sequence numbers, from the SDP's MIKEY), and our own key for the
/// receiver reports we might send, added to the SETUP's `headers` as RFC 4567 has it.
fn camera_srtp(
    m: &crate::sdp::Media,
    uri: &str,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<tidegate_rtp::srtp::Context, String> {
    let theirs = m
        .key_mgmt
        .as_deref()
        .ok_or("the camera offers no SRTP key (a=key-mgmt) for RTSPS over UDP")?;
    let (key, sessions) =
        crate::mikey::parse_base64_with_sessions(theirs).map_err(|e| format!("a=key-mgmt: {e}"))?;
    let ours = tidegate_rtp::srtp::random_master().ok_or("no randomness")?;
    headers.push((
        "KeyMgmt",
        format!(
            "prot=mikey; uri=\"{uri}\"; data=\"{}\"",
            crate::mikey::build_base64(&ours)
        ),
    ));
    let mut ctx = tidegate_rtp::srtp::Context::new(&key);
    for cs in sessions {
        let _ = ctx.set_roc(cs.ssrc, cs.roc);
    }
    Ok(ctx)
}

/// What a pull asks of the camera's PLAY and where its UDP ports are: MediaMTX's
/// `rtspRangeType`/`rtspRangeStart` (a `Range` header), `rtspScale` (a `Scale` header) and
/// `rtspUDPSourcePortRange` (our RTP/RTCP ports, where the camera's packets come to and ours
/// leave from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayOptions {
    /// The `Range` header's value, e.g. `npt=10.5-` (`npt=0.000-` when None).
    pub range: Option<String>,
    pub scale: Option<String>,
    /// Inclusive; the system's choice when it is the default `(32768, 60999)`.
    pub ports: (u16, u16),
    /// `useAbsoluteTimestamp`: frames take their absolute time from the camera's RTCP sender
    /// reports (and wait for the first one).
    pub absolute: bool,
}

/// The ports the system picks from on Linux: MediaMTX's default `rtspUDPSourcePortRange`.
pub const DEFAULT_PORTS: (u16, u16) = (32768, 60999);

impl Default for PlayOptions {
    fn default() -> Self {
        PlayOptions {
            range: None,
            scale: None,
            ports: DEFAULT_PORTS,
            absolute: false,
        }
    }
}

impl PlayOptions {
    /// From the path's `rtspRangeType`, `rtspRangeStart` (MediaMTX's forms: `clock`:
    /// `20230812T120000Z`; `npt` and `smpte`: a duration such as `1.5m` or `300ms`),
    /// `rtspScale` and `rtspUDPSourcePortRange`.
    pub fn new(
        range_type: &str,
        range_start: &str,
        scale: &str,
        ports: (u16, u16),
    ) -> Result<PlayOptions, String> {
        let range = match range_type {
            "" => None,
            "clock" => Some(format!("clock={range_start}-")),
            "npt" | "smpte" => {
                let secs = if range_start.is_empty() {
                    0.0
                } else {
                    tidegate_core::text::go_duration(range_start)
                        .ok_or_else(|| format!("rtspRangeStart: '{range_start}' is not a duration such as 1.5m or 300ms"))?
                        .as_secs_f64()
                };
                Some(if range_type == "npt" {
                    format!("npt={secs:.3}-")
                } else {
                    let whole = secs as u64;
                    format!(
                        "smpte={:02}:{:02}:{:02}-",
                        whole / 3600,
                        whole / 60 % 60,
                        whole % 60
                    )
                })
            }
            other => return Err(format!("rtspRangeType: unknown '{other}'")),
        };
        Ok(PlayOptions {
            range,
            scale: (!scale.is_empty()).then(|| scale.to_string()),
            ports,
            absolute: false,
        })
    }

    /// Whether retina (which sends none of these) cannot do the pull.
    pub fn needs_own_client(&self) -> bool {
        self.range.is_some() || self.scale.is_some() || self.ports != DEFAULT_PORTS
    }
}

/// Two UDP sockets on consecutive ports (RTP even, RTCP odd), as `client_port` expects; in
/// `range` unless it is the default (the system's choice then).
async fn port_pair(
    range: (u16, u16),
) -> Result<(tokio::net::UdpSocket, tokio::net::UdpSocket), String> {
    let (lo, hi) = (range.0.max(1), range.1);
    let span = u32::from(hi.saturating_sub(lo)) + 1;
    for i in 0..64u32 {
        let port = if range == DEFAULT_PORTS {
            0
        } else {
            // A random start, then every even port of the range in turn.
            let start = tidegate_core::text::random_u64() as u32 % span;
            let p = u32::from(lo) + (start + i * 2) % span;
            (p & !1) as u16
        };
        if range != DEFAULT_PORTS && (port < lo || port >= hi) {
            continue;
        }
        let Ok(rtp) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await else {
            continue;
        };
        let port = rtp.local_addr().map_err(|e| format!("UDP: {e}"))?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port + 1)).await {
            return Ok((rtp, rtcp));
        }
    }
    Err(format!(
        "no free UDP port pair (rtspUDPSourcePortRange {}-{})",
        range.0, range.1
    ))
}

/// `server_port`'s RTP port in a unicast `Transport` answer.
fn server_rtp_port(transport: &str) -> Option<u16> {
    transport
        .split(';')
        .find_map(|p| p.trim().strip_prefix("server_port="))
        .and_then(|p| p.split('-').next())
        .and_then(|p| p.parse().ok())
}

/// One pull of `url` into `path` in `mode`, until the camera stops, the data stops for 10 s,
/// or `cancel`. `fingerprint` pins an `rtsps://` camera.
#[allow(clippy::too_many_arguments)]
pub async fn pull(
    mut url: url::Url,
    mode: Mode,
    fingerprint: &str,
    play: &PlayOptions,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
) -> Result<(), String> {
    status.set_state("connecting");
    let creds = take_credentials(&mut url);
    let (io, camera) = connect(&url, fingerprint).await?;
    let mut c = Conn::new(io, creds);
    pull_on(
        url.to_string(),
        &mut c,
        camera,
        mode,
        play,
        paths,
        path,
        status,
        cancel,
    )
    .await
}

/// The URL's user and password (percent-decoded), taken out of it.
fn take_credentials(url: &mut url::Url) -> Option<(String, String)> {
    let creds = (!url.username().is_empty()).then(|| {
        (
            tidegate_core::text::percent_decode(url.username(), false),
            tidegate_core::text::percent_decode(url.password().unwrap_or(""), false),
        )
    });
    let _ = url.set_username("");
    let _ = url.set_password(None);
    creds
}

/// A TCP (or, for `rtsps://`, TLS) connection to the URL's host; and its address.
async fn connect(
    url: &url::Url,
    fingerprint: &str,
) -> Result<(Box<dyn Io>, std::net::IpAddr), String> {
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = url.scheme() == "rtsps";
    let port = url.port().unwrap_or(if tls { 322 } else { 554 });
    Ok(if tls {
        let s = tidegate_core::tls::connect(&host, port, fingerprint, IO_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let camera = s.get_ref().0.peer_addr().map_err(|e| e.to_string())?.ip();
        (
            Box::new(tidegate_core::dump::tls_client(s, "rtsps_source_conn")),
            camera,
        )
    } else {
        let tcp = tokio::time::timeout(
            IO_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let camera = tcp.peer_addr().map_err(|e| e.to_string())?.ip();
        (
            Box::new(tidegate_core::dump::tcp_client(tcp, "rtsp_source_conn")),
            camera,
        )
    })
}

#[allow(clippy::too_many_arguments)]
async fn pull_on(
    url_s: String,
    c: &mut Conn,
    camera: std::net::IpAddr,
    mode: Mode,
    play: &PlayOptions,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let r = c
        .request("DESCRIBE", &url_s, &[("Accept", "application/sdp".into())])
        .await?;
    let base = r
        .header("Content-Base")
        .or_else(|| r.header("Content-Location"))
        .unwrap_or(&url_s)
        .to_string();
    let medias = crate::sdp::parse(&String::from_utf8_lossy(&r.body)).map_err(|e| e.to_string())?;
    // `dumpPackets` names, as MediaMTX's.
    let dump_prefix = if url_s.starts_with("rtsps") {
        "rtsps_source_packet_conn"
    } else {
        "rtsp_source_packet_conn"
    };
    let mut tracks = Vec::new();
    let (tx, mut rx) = mpsc::channel::<(usize, bool, Bytes)>(1024);
    let mut receivers = Vec::new();
    let mut srtp = Vec::new();
    for m in &medias {
        let Ok(inc) = crate::sdp::incoming(m) else {
            continue;
        };
        let idx = tracks.len();
        let uri = control_url(&base, m.control.as_deref());
        let tx = tx.clone();
        match mode {
            Mode::Multicast { srtp: secure } => {
                let mut headers = vec![(
                    "Transport",
                    format!("{};multicast", if secure { "RTP/SAVP" } else { "RTP/AVP" }),
                )];
                let ctx = if secure {
                    Some(camera_srtp(m, &uri, &mut headers)?)
                } else {
                    None
                };
                let r = c.request("SETUP", &uri, &headers).await?;
                let transport = r.header("Transport").unwrap_or("");
                let (group, rtp_port, rtcp_port) = multicast_target(transport)
                    .ok_or_else(|| format!("SETUP: no multicast group in {transport:?}"))?;
                let sock = join(group, rtp_port)
                    .and_then(|s| DumpedUdp::new(s, dump_prefix))
                    .map_err(|e| format!("joining {group}:{rtp_port}: {e}"))?;
                // The group's RTCP: the sender's reports (absolute times). A camera that sends
                // none, or a port we cannot join, only costs those.
                let rtcp = match join(group, rtcp_port).and_then(|s| DumpedUdp::new(s, dump_prefix))
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(
                            path,
                            track = idx,
                            "joining {group}:{rtcp_port} for RTCP: {e}"
                        );
                        None
                    }
                };
                receivers.push(AbortOnDrop(tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    let mut rtcp_buf = vec![0u8; 2048];
                    loop {
                        let (n, is_rtcp) = tokio::select! {
                            r = sock.recv_from(&mut buf) => match r {
                                Ok((n, _)) => (n, false),
                                Err(_) => return,
                            },
                            r = async {
                                match &rtcp {
                                    Some(s) => s.recv_from(&mut rtcp_buf).await,
                                    None => std::future::pending().await,
                                }
                            } => match r {
                                Ok((n, _)) => (n, true),
                                Err(_) => return,
                            },
                        };
                        let data = if is_rtcp { &rtcp_buf[..n] } else { &buf[..n] };
                        if tx
                            .send((idx, is_rtcp, Bytes::copy_from_slice(data)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                })));
                tracing::info!(path, track = idx, %group, port = rtp_port, "[RTSP source] joined");
                srtp.push(ctx);
            }
            Mode::Udp {
                srtp: secure,
                any_port,
            } => {
                let (rtp, rtcp) = port_pair(play.ports).await?;
                let (rtp, rtcp) = (
                    DumpedUdp::new(rtp, dump_prefix).map_err(|e| e.to_string())?,
                    DumpedUdp::new(rtcp, dump_prefix).map_err(|e| e.to_string())?,
                );
                let p = rtp.local_addr().map_err(|e| e.to_string())?.port();
                let mut headers = vec![(
                    "Transport",
                    format!(
                        "{};unicast;client_port={p}-{}",
                        if secure { "RTP/SAVP" } else { "RTP/AVP" },
                        p + 1
                    ),
                )];
                let ctx = if secure {
                    Some(camera_srtp(m, &uri, &mut headers)?)
                } else {
                    None
                };
                let r = c.request("SETUP", &uri, &headers).await?;
                let server_port = server_rtp_port(r.header("Transport").unwrap_or(""));
                tracing::info!(
                    path,
                    track = idx,
                    "RTP from the camera on UDP ports {p}-{}",
                    p + 1
                );
                receivers.push(AbortOnDrop(tokio::spawn(async move {
                    // RTP, and the camera's RTCP (its sender reports: absolute times).
                    let mut buf = vec![0u8; 2048];
                    let mut rtcp_buf = vec![0u8; 2048];
                    loop {
                        let (n, from, is_rtcp) = tokio::select! {
                            r = rtp.recv_from(&mut buf) => match r {
                                Ok((n, from)) => (n, from, false),
                                Err(_) => return,
                            },
                            r = rtcp.recv_from(&mut rtcp_buf) => match r {
                                Ok((n, from)) => (n, from, true),
                                Err(_) => return,
                            },
                        };
                        if is_rtcp {
                            if from.ip() != camera {
                                continue;
                            }
                        } else if !from_camera(from, camera, server_port, any_port) {
                            continue;
                        }
                        let data = if is_rtcp { &rtcp_buf[..n] } else { &buf[..n] };
                        if tx
                            .send((idx, is_rtcp, Bytes::copy_from_slice(data)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                })));
                srtp.push(ctx);
            }
        }
        tracks.push(InTrack::new(inc));
    }
    drop(tx);
    if tracks.is_empty() {
        return Err("the source has no track Tidegate can carry".into());
    }
    let play_uri = base.trim_end_matches('/').to_string();
    let mut headers = vec![(
        "Range",
        play.range.clone().unwrap_or_else(|| "npt=0.000-".into()),
    )];
    if let Some(scale) = &play.scale {
        headers.push(("Scale", scale.clone()));
    }
    c.request("PLAY", &play_uri, &headers).await?;
    status.set_state("running");
    tracing::info!(
        path,
        url = status.url,
        ?mode,
        "pulling with our RTSP client"
    );

    let started = Instant::now();
    let mut publisher = None;
    let mut stream = None;
    let mut absolute =
        crate::ingest::Absolute::new(play.absolute && !tracks.iter().any(InTrack::is_mpegts));
    let mut keepalive = tokio::time::interval(Duration::from_secs(20));
    keepalive.tick().await;
    let mut scratch = [0u8; 4096];
    let end = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = keepalive.tick() => c.send("GET_PARAMETER", &play_uri, &[]).await?,
            // Keep-alive answers and anything else the camera says are read and dropped.
            n = c.io.read(&mut scratch) => match n {
                Ok(0) | Err(_) => break Err("the camera closed the connection".to_string()),
                Ok(_) => {}
            },
            p = tokio::time::timeout(IO_TIMEOUT, rx.recv()) => {
                let (idx, is_rtcp, data) = match p {
                    Err(_) => break Err("no data from the source for 10 s".to_string()),
                    Ok(None) => break Err("the multicast receivers stopped".to_string()),
                    Ok(Some(x)) => x,
                };
                status.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                if is_rtcp {
                    let plain;
                    let data = match srtp[idx].as_mut() {
                        Some(ctx) => match ctx.unprotect_rtcp(&data) {
                            Ok(v) => { plain = v; &plain[..] }
                            Err(_) => continue,
                        },
                        None => &data[..],
                    };
                    absolute.on_rtcp(idx, &tracks[idx], data);
                    continue;
                }
                let plain;
                let data = match srtp[idx].as_mut() {
                    Some(ctx) => match ctx.unprotect_rtp(&data) {
                        Ok(v) => { plain = v; &plain[..] }
                        Err(_) => continue,
                    },
                    None => &data[..],
                };
                let Ok(p) = RtpPacket::parse(data) else { continue };
                let frames = tracks[idx].push(idx, &p, started);
                if stream.is_none() {
                    let Some(desc) = crate::ingest::desc(&tracks) else {
                        if started.elapsed() > IO_TIMEOUT {
                            break Err("the source sent no codec parameters within 10 s".to_string());
                        }
                        continue;
                    };
                    let (p, s) = crate::ingest::publish_camera(paths, path, desc)?;
                    crate::ingest::mark_mpegts(&tracks.iter().collect::<Vec<_>>(), &s);
                    stream = Some(s);
                    publisher = Some(p);
                }
                if publisher.as_ref().is_some_and(|p: &tidegate_core::Publisher| p.kicked().is_cancelled()) {
                    break Err("kicked".to_string());
                }
                if let Some(s) = &stream {
                    for f in frames {
                        if absolute.admits(f.track as usize, s) {
                            s.write(f);
                        }
                    }
                }
            }
        }
    };
    // Leave politely, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(1), c.send("TEARDOWN", &play_uri, &[])).await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cameras_packets_are_taken() {
        let cam: std::net::IpAddr = Ipv4Addr::new(10, 0, 0, 2).into();
        let from = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        assert!(from_camera(
            from([10, 0, 0, 2], 6000),
            cam,
            Some(6000),
            false
        ));
        assert!(!from_camera(
            from([10, 0, 0, 2], 6100),
            cam,
            Some(6000),
            false
        ));
        assert!(
            from_camera(from([10, 0, 0, 2], 6100), cam, Some(6000), true),
            "rtspAnyPort"
        );
        assert!(!from_camera(
            from([10, 0, 0, 9], 6000),
            cam,
            Some(6000),
            true
        ));
        assert!(from_camera(from([10, 0, 0, 2], 6100), cam, None, false));
        assert_eq!(
            server_rtp_port("RTP/AVP;unicast;client_port=1-2;server_port=8000-8001"),
            Some(8000)
        );
    }

    #[test]
    fn control_urls_and_multicast_answers() {
        assert_eq!(
            control_url("rtsp://h/cam/", Some("stream=0")),
            "rtsp://h/cam/stream=0"
        );
        assert_eq!(
            control_url("rtsp://h/cam/", Some("rtsp://h/x")),
            "rtsp://h/x"
        );
        assert_eq!(control_url("rtsp://h/cam/", None), "rtsp://h/cam");
        assert_eq!(
            multicast_target("RTP/AVP;multicast;destination=224.3.0.1;ttl=16;port=5000-5001"),
            Some((Ipv4Addr::new(224, 3, 0, 1), 5000, 5001))
        );
        assert_eq!(
            multicast_target("RTP/AVP;unicast;destination=10.0.0.1;port=5000-5001"),
            None
        );
        assert_eq!(
            multicast_target("RTP/AVP;multicast;destination=239.0.0.9;port=6000"),
            Some((Ipv4Addr::new(239, 0, 0, 9), 6000, 6001))
        );
    }
}
