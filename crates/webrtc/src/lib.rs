//! WebRTC for Tidegate: WHIP ingest (RFC 9725) and WHEP egress, every session multiplexed on
//! one UDP port.
//!
//! Each session is a str0m [`str0m::Rtc`] (sans-IO: ICE-lite, DTLS-SRTP, RTCP, NACK, packetizing)
//! owned by one task. One receive loop reads the shared UDP socket and routes each datagram: by
//! source address once a session has claimed it, otherwise by the USERNAME of a STUN binding
//! request, whose first half is the ufrag we gave that session in its answer.
//!
//! Frames cross to the rest of Tidegate only as [`tidegate_core::Frame`]s: a WHIP session
//! publishes on its path, a WHEP session reads one.

pub mod forward;
mod http;
mod media;
mod session;
pub mod source;
pub mod stun;
mod udp_out;
mod writer;

/// Entry points for the fuzz targets (`fuzz/fuzz_targets/webrtc_*.rs`).
pub mod fuzzing {
    /// What the WHIP/WHEP handler does with an offer before any session exists: str0m parses
    /// it, we read its codecs, an ICE-lite `Rtc` answers it, and the answer is completed.
    pub fn offer(text: &str) {
        crate::session::fuzz_offer(text)
    }
}

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate_core::{ConnRegistry, PathManager};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An ICE server announced to clients (`webrtcICEServers2`), in `Link` headers and the pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceServer {
    pub url: String,
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug)]
pub struct WebRtcConfig {
    /// `webrtcAdditionalHosts`: more host candidates (IPs or names) on the UDP port.
    pub additional_hosts: Vec<String>,
    /// `webrtcIPsFromInterfaces`: announce the machine's interface addresses when the UDP
    /// socket listens on every address.
    pub ips_from_interfaces: bool,
    /// `webrtcHandshakeTimeout`: a session that has not connected by then is closed.
    pub handshake_timeout: Duration,
    /// `webrtcAllowOrigins`.
    pub allow_origins: Vec<String>,
    /// `webrtcIPsFromInterfacesList`: only these interfaces (by name); empty: all.
    pub interfaces: Vec<String>,
    /// `webrtcICEServers2`.
    pub ice_servers: Vec<IceServer>,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            additional_hosts: Vec::new(),
            ips_from_interfaces: true,
            handshake_timeout: Duration::from_secs(10),
            allow_origins: vec!["*".into()],
            interfaces: Vec::new(),
            ice_servers: Vec::new(),
        }
    }
}

/// What the control API shows of a session, beyond the common connection fields.
#[derive(Default, Debug)]
pub struct WebRtcStats {
    pub peer_connection_established: std::sync::atomic::AtomicBool,
    pub rtp_packets_received: AtomicU64,
    pub rtp_packets_sent: AtomicU64,
    pub rtp_packets_lost: AtomicU64,
    /// NACKs: sent to a publisher, received from a viewer (each asks for retransmissions).
    pub nacks: AtomicU64,
    /// Round-trip time in microseconds (0 until measured).
    pub rtt_us: AtomicU64,
    notes: Mutex<SessionNotes>,
}

#[derive(Default, Debug, Clone)]
pub struct SessionNotes {
    pub local_candidate: String,
    pub remote_candidate: String,
    /// The simulcast layer (rid) a WHIP publisher's video is taken from, if it sends layers.
    pub simulcast_layer: String,
    /// Why a track is not carried (e.g. AAC audio on WHEP), for the API and logs.
    pub warnings: Vec<String>,
}

impl WebRtcStats {
    pub fn notes(&self) -> SessionNotes {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn update_notes(&self, f: impl FnOnce(&mut SessionNotes)) {
        f(&mut self.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

pub type WebRtcSessions = ConnRegistry<WebRtcStats>;

pub use tidegate_core::latency::{LatencyHistogram, LATENCY_BUCKETS};

/// One datagram for a session (over UDP, or one RFC 4571 frame of an ICE-TCP connection).
pub(crate) struct Datagram {
    pub tcp: bool,
    pub source: SocketAddr,
    pub data: Bytes,
    pub at: Instant,
}

type SessionKey = u64;

#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, (SessionKey, mpsc::Sender<Datagram>)>,
    by_addr: HashMap<SocketAddr, (SessionKey, mpsc::Sender<Datagram>)>,
}

/// What the HTTP side keeps of a session to PATCH or DELETE it.
pub(crate) struct Resource {
    pub path: String,
    pub role: session::Role,
    pub kick: CancellationToken,
    pub candidates: mpsc::Sender<String>,
}

pub(crate) struct Inner {
    pub paths: PathManager,
    pub config: WebRtcConfig,
    pub socket: Option<Arc<tidegate_core::udp::QuietUdp>>,
    /// UDP host candidates.
    pub candidates: Vec<SocketAddr>,
    /// ICE-TCP passive host candidates (`webrtcLocalTCPAddress`).
    pub tcp_candidates: Vec<SocketAddr>,
    /// Open ICE-TCP connections by remote address: where a session's TCP transmits go.
    tcp_conns: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    routes: Mutex<Routes>,
    pub resources: Mutex<HashMap<String, Resource>>,
    pub sessions: Arc<WebRtcSessions>,
    pub latency: Arc<LatencyHistogram>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// `maxConnections`/`maxConnectionsPerIP` over WHIP and WHEP sessions.
    pub limiter: tidegate_core::guard::ConnLimiter,
}

impl Inner {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn resources(&self) -> MutexGuard<'_, HashMap<String, Resource>> {
        self.resources.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add_route(&self, ufrag: &str, key: SessionKey, tx: mpsc::Sender<Datagram>) {
        self.routes().by_ufrag.insert(ufrag.to_string(), (key, tx));
    }

    pub(crate) fn remove_routes(&self, key: SessionKey) {
        let mut r = self.routes();
        r.by_ufrag.retain(|_, (k, _)| *k != key);
        r.by_addr.retain(|_, (k, _)| *k != key);
    }

    /// An ICE-TCP transmit, framed (RFC 4571) for its connection's writer.
    pub(crate) fn transmit_tcp(&self, t: &str0m::net::Transmit) {
        let tx = self
            .tcp_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&t.destination)
            .cloned();
        if let Some(tx) = tx {
            let len = t.contents.len().min(usize::from(u16::MAX));
            let mut framed = Vec::with_capacity(len + 2);
            framed.extend_from_slice(&(len as u16).to_be_bytes());
            framed.extend_from_slice(&t.contents[..len]);
            // A connection that cannot keep up loses packets, as UDP would.
            let _ = tx.try_send(Bytes::from(framed));
        }
    }

    fn route(&self, source: SocketAddr, data: &[u8]) -> Option<mpsc::Sender<Datagram>> {
        let mut r = self.routes();
        if let Some(ufrag) = stun::local_ufrag(data) {
            // A binding request names its session; it may come from a new address (another
            // candidate pair, or a NAT rebinding), which then belongs to that session.
            let (key, tx) = r.by_ufrag.get(ufrag)?.clone();
            r.by_addr.insert(source, (key, tx.clone()));
            return Some(tx);
        }
        r.by_addr.get(&source).map(|(_, tx)| tx.clone())
    }
}

/// The WebRTC server: the UDP socket, its sessions, and the WHIP/WHEP HTTP routes.
#[derive(Clone)]
pub struct WebRtc {
    inner: Arc<Inner>,
}

/// The crate's one error (its sessions answer with HTTP statuses, `session::Refused`).
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    #[error("cannot listen on UDP {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

impl WebRtc {
    /// Binds the UDP port (`udp_addr`, None for TCP only) and the ICE-TCP port (`tcp_addr`, if
    /// any) and starts their receive loops.
    pub async fn start(
        paths: PathManager,
        udp_addr: Option<SocketAddr>,
        tcp_addr: Option<SocketAddr>,
        config: WebRtcConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<WebRtc, WebRtcError> {
        // One crypto provider for the process (str0m's DTLS and SRTP).
        static CRYPTO: std::sync::Once = std::sync::Once::new();
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());

        let mut socket = None;
        let mut candidates = Vec::new();
        if let Some(addr) = udp_addr {
            let s = tidegate_core::handover::udp("WebRTC UDP", addr)
                .await
                .map_err(|e| WebRtcError::Bind(addr, e))?;
            tidegate_core::udp::tune(&s);
            // Watched for reading only: its sends would otherwise wake the runtime once per
            // datagram sent (docs/performance.md).
            let s = tidegate_core::udp::QuietUdp::new(s).map_err(|e| WebRtcError::Bind(addr, e))?;
            let local = s.local_addr().map_err(|e| WebRtcError::Bind(addr, e))?;
            candidates = host_candidates(local, &config);
            tracing::info!(
                "[WebRTC] UDP listener opened on {local}, host candidates {:?}",
                candidates
            );
            socket = Some(Arc::new(s));
        }
        let mut tcp = None;
        let mut tcp_candidates = Vec::new();
        if let Some(addr) = tcp_addr {
            let l = tidegate_core::handover::tcp("WebRTC ICE-TCP", addr)
                .map_err(|e| WebRtcError::Bind(addr, e))?;
            let local = l.local_addr().map_err(|e| WebRtcError::Bind(addr, e))?;
            tcp_candidates = host_candidates(local, &config);
            tracing::info!(
                "[WebRTC] ICE-TCP listener opened on {local}, host candidates {:?}",
                tcp_candidates
            );
            tcp = Some(l);
        }
        let inner = Arc::new(Inner {
            paths,
            config,
            socket,
            candidates,
            tcp_candidates,
            tcp_conns: Mutex::new(HashMap::new()),
            routes: Mutex::new(Routes::default()),
            resources: Mutex::new(HashMap::new()),
            sessions: Arc::new(WebRtcSessions::default()),
            latency: Arc::new(LatencyHistogram::default()),
            shutdown,
            tasks,
            limiter: tidegate_core::guard::ConnLimiter::new("WebRTC sessions"),
        });
        if inner.socket.is_some() {
            inner.tasks.spawn(receive_loop(inner.clone()));
        }
        if let Some(l) = tcp {
            inner.tasks.spawn(tcp_accept_loop(inner.clone(), l));
        }
        Ok(WebRtc { inner })
    }

    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.inner.socket.as_ref()?.local_addr().ok()
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.inner.tcp_candidates.first().copied()
    }

    /// Frame ingress → packets sent to WHEP viewers.
    pub fn egress_latency(&self) -> Arc<LatencyHistogram> {
        self.inner.latency.clone()
    }

    pub fn sessions(&self) -> Arc<WebRtcSessions> {
        self.inner.sessions.clone()
    }

    /// The WHIP/WHEP endpoints and the built-in pages, for the HTTP listener on `webrtcAddress`.
    pub fn router(&self) -> axum::Router {
        http::router(self.inner.clone())
    }
}

/// Host candidates: the bound address, or every interface address when bound to all of them,
/// plus `webrtcAdditionalHosts`.
fn host_candidates(local: SocketAddr, config: &WebRtcConfig) -> Vec<SocketAddr> {
    let port = local.port();
    let mut out = Vec::new();
    if local.ip().is_unspecified() {
        if config.ips_from_interfaces {
            for iface in if_addrs::get_if_addrs().unwrap_or_default() {
                if !config.interfaces.is_empty() && !config.interfaces.contains(&iface.name) {
                    continue;
                }
                let ip = iface.ip();
                let family_ok = match local.ip() {
                    IpAddr::V4(_) => ip.is_ipv4(),
                    IpAddr::V6(_) => true,
                };
                // Link-local IPv6 needs a scope id that SDP cannot carry.
                let link_local =
                    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                if family_ok && !link_local {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    } else {
        out.push(local);
    }
    for host in &config.additional_hosts {
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .map(|a| a.collect())
                .unwrap_or_else(|e| {
                    tracing::warn!("[WebRTC] webrtcAdditionalHosts: cannot resolve {host}: {e}");
                    Vec::new()
                }),
        };
        for a in resolved {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

async fn receive_loop(inner: Arc<Inner>) {
    let Some(socket) = inner.socket.clone() else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    let mut unrouted: u64 = 0;
    // An upgrade: every session's peer address gets a connected twin, then the shared socket
    // is left to the new process (read no more; still sent from).
    let mut twins = tidegate_core::handover::Twins::default();
    loop {
        let reading = twins.reading();
        let (n, source) = tokio::select! {
            r = socket.recv_from(&mut buf), if reading => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable from a peer that left shows up here on Linux.
                    tracing::debug!("[WebRTC] UDP receive: {e}");
                    continue;
                }
            },
            peers = twins.changed(|| inner.routes().by_addr.keys().copied().collect::<Vec<_>>()) => {
                for peer in peers {
                    let tx = inner.routes().by_addr.get(&peer).map(|(_, tx)| tx.clone());
                    if let Some(tx) = tx {
                        twin(&socket, peer, tx);
                    }
                }
                continue;
            }
            _ = inner.shutdown.cancelled() => return,
        };
        let data = &buf[..n];
        match inner.route(source, data) {
            Some(tx) => {
                // A full queue means the session is not keeping up: drop, as the network would.
                let _ = tx.try_send(Datagram {
                    tcp: false,
                    source,
                    data: Bytes::copy_from_slice(data),
                    at: Instant::now(),
                });
                if twins.newly_heard(source) {
                    twin(&socket, source, tx);
                }
            }
            None => {
                unrouted += 1;
                if unrouted.is_power_of_two() {
                    tracing::debug!(
                        "[WebRTC] {unrouted} datagram(s) for no session, last from {source}"
                    );
                }
            }
        }
    }
}

/// A session's peer address gets a connected twin of the shared socket (an upgrade is under
/// way): its datagrams reach the session there, whichever process reads the shared socket,
/// until the session ends.
fn twin(shared: &tidegate_core::udp::QuietUdp, peer: SocketAddr, tx: mpsc::Sender<Datagram>) {
    let socket = match tidegate_core::handover::connected_twin(shared, peer) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("[upgrade] WebRTC peer {peer}: no connected socket ({e})");
            return;
        }
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let n = tokio::select! {
                r = socket.recv(&mut buf) => match r {
                    Ok(n) => n,
                    Err(_) => continue,
                },
                _ = tx.closed() => return,
            };
            let _ = tx.try_send(Datagram {
                tcp: false,
                source: peer,
                data: Bytes::copy_from_slice(&buf[..n]),
                at: Instant::now(),
            });
        }
    });
}

/// ICE-TCP (RFC 6544, passive side): every connection carries RFC 4571 frames (a 16-bit
/// length, then one STUN, DTLS or SRTP packet), routed to sessions like UDP datagrams.
async fn tcp_accept_loop(inner: Arc<Inner>, listener: tokio::net::TcpListener) {
    let mut backoff = tidegate_core::guard::AcceptBackoff::new("WebRTC ICE-TCP");
    let limiter = tidegate_core::guard::ConnLimiter::new("WebRTC ICE-TCP");
    // After an upgrade's handover the new process accepts on this socket.
    let mut stage = tidegate_core::handover::udp_stage();
    loop {
        let (sock, remote) = tokio::select! {
            r = stage.changed() => {
                if r.is_err() || *stage.borrow_and_update() == tidegate_core::handover::UdpStage::Released {
                    return;
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
            _ = inner.shutdown.cancelled() => return,
        };
        backoff.accepted();
        let Some(permit) = limiter.admit(remote.ip(), true) else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            let _permit = permit;
            tcp_conn(inner2, sock, remote).await;
        });
    }
}

async fn tcp_conn(inner: Arc<Inner>, sock: tokio::net::TcpStream, remote: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    inner
        .tcp_conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(remote, tx);
    let writer = async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        let mut len = [0u8; 2];
        let mut routed = false;
        loop {
            // A connection that never names a session is dropped after the handshake timeout.
            let first = if routed {
                rd.read_exact(&mut len).await
            } else {
                match tokio::time::timeout(inner.config.handshake_timeout, rd.read_exact(&mut len))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return,
                }
            };
            if first.is_err() {
                return;
            }
            let n = usize::from(u16::from_be_bytes(len));
            // RFC 4571 frames are at most 65535 bytes: the allocation is bounded by the format.
            let mut data = vec![0u8; n];
            if rd.read_exact(&mut data).await.is_err() {
                return;
            }
            let Some(tx) = inner.route(remote, &data) else {
                if !routed {
                    tracing::debug!("[WebRTC] ICE-TCP {remote}: first frame names no session");
                    return;
                }
                continue;
            };
            routed = true;
            let _ = tx.try_send(Datagram {
                tcp: true,
                source: remote,
                data: Bytes::from(data),
                at: Instant::now(),
            });
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = inner.shutdown.cancelled() => {}
    }
    inner
        .tcp_conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&remote);
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_key() -> SessionKey {
    NEXT_KEY.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_candidates_from_interfaces_and_additional_hosts() {
        let config = WebRtcConfig {
            additional_hosts: vec!["203.0.113.7".into(), "localhost".into()],
            ..WebRtcConfig::default()
        };
        let any: SocketAddr = "0.0.0.0:8189".parse().expect("addr");
        let c = host_candidates(any, &config);
        // The loopback interface is always there; the additional IP is added once.
        assert!(
            c.contains(&"127.0.0.1:8189".parse().expect("addr")),
            "{c:?}"
        );
        assert!(
            c.contains(&"203.0.113.7:8189".parse().expect("addr")),
            "{c:?}"
        );
        assert_eq!(
            c.iter().filter(|a| a.ip().is_loopback()).count(),
            1,
            "{c:?}"
        );
        // A bound address is the only host candidate besides the additional hosts.
        let bound: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let only = host_candidates(bound, &WebRtcConfig::default());
        assert_eq!(only, vec![bound]);
        let off = WebRtcConfig {
            ips_from_interfaces: false,
            ..WebRtcConfig::default()
        };
        assert!(host_candidates(any, &off).is_empty());
        // webrtcIPsFromInterfacesList: only the loopback interface's address.
        let lo = WebRtcConfig {
            interfaces: vec!["lo".into()],
            ..WebRtcConfig::default()
        };
        let c = host_candidates(any, &lo);
        assert!(
            !c.is_empty() && c.iter().all(|a| a.ip().is_loopback()),
            "{c:?}"
        );
    }
}
