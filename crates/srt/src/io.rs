//! The listener's I/O: srt-protocol's sans-IO multiplexing listener and connections, driven by
//! our own tokio tasks instead of srt-tokio's. srt-tokio's connection loop never asks
//! srt-protocol to refresh its buffer figures and never records the round-trip time, so the
//! API could not show either (docs/srt.md). Driving the same state machines ourselves, each
//! connection refreshes them every second and reads RTT, the receiver's free buffer and its
//! receive rate off the full ACKs it sends (publishers) or receives (readers).
//!
//! One task per listener (the UDP socket, handshakes, access control by [`Incoming`]) and one
//! per connection (its packets handed over on a bounded channel). Callers ([`call`]) use the
//! same connection loop on a socket of their own.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use futures::{Sink, SinkExt, Stream, StreamExt};
use srt_protocol::connection::{Connection, ConnectionSettings, DuplexConnection};
use srt_protocol::listener::{
    AccessControlRequest, AccessControlResponse, Action, Input, MultiplexListener,
    NextInputContext, ResultOf, SessionId,
};
use srt_protocol::packet::{
    Acknowledgement, ControlPacket, ControlTypes, Packet, ReceivePacketError, ShakeType, SocketId,
};
use srt_protocol::settings::{ConnInitSettings, KeySettings};
use srt_protocol::statistics::SocketStatistics;
use tidegate_core::udp::QuietUdp;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use srt_protocol::access::RejectReason;
pub use srt_protocol::options::KeySize;

/// Packets queued for one connection before the listener drops more (SRT recovers them).
const CONNECTION_QUEUE: usize = 1024;
/// Data queued between a connection's task and its user, each way.
const DATA_QUEUE: usize = 128;
/// The largest UDP datagram read (SRT packets are at most 1500 bytes).
const MAX_DATAGRAM: usize = 65_536;
/// The most bytes one serialised SRT packet takes (a 1500-byte MTU's payload, and room).
const MAX_PACKET: usize = 1600;
/// A connection's send buffer grows by this much at a time; each packet of a turn is a slice
/// of it (a frame of a few Mbit/s fits; its space is reused once the turn's packets are sent).
const BATCH_BYTES: usize = 16 * 1024;
/// The most inputs of one kind a connection takes in one turn before it sends.
const DRAIN: usize = 64;
/// How long the listener keeps a handshake that was answered but not concluded (libsrt's
/// callers give up after 3 s by default; ffmpeg's `connect_timeout` is often set higher).
const HANDSHAKE_TTL: Duration = Duration::from_secs(10);
/// The most handshakes kept at once; past it the oldest are forgotten (a flood of inductions
/// from many addresses costs bounded memory).
const MAX_HANDSHAKES: usize = 16_384;

/// What a connection knows of its link, refreshed every second.
#[derive(Clone, Debug, Default)]
pub struct LinkStats {
    /// srt-protocol's counters, with the buffer figures refreshed.
    pub socket: SocketStatistics,
    /// Smoothed round-trip time, from the last full ACK (ours when receiving, the peer's when
    /// sending).
    pub rtt: Option<Duration>,
    /// Our free receive buffer, in packets, from the last full ACK we sent.
    pub receive_buffer_available: Option<u32>,
    /// Our receive rate in bytes/s, from the same ACK.
    pub receive_rate: Option<u32>,
    /// The latencies both sides agreed on in the handshake.
    pub recv_latency: Duration,
    pub send_latency: Duration,
    /// The receive buffer's size, in packets.
    pub receive_buffer_size: u32,
}

impl LinkStats {
    /// A full ACK's figures: the RTT always; the buffer and rate only from an ACK we send
    /// (`ours`), as they describe the receiving side, which is then us.
    fn observe(&mut self, packet: &Packet, ours: bool) {
        if let Packet::Control(c) = packet {
            if let ControlTypes::Ack(ack @ Acknowledgement::Full(..)) = &c.control_type {
                if let Some(s) = ack.statistics() {
                    let micros = u64::try_from(s.rtt.mean().as_micros()).unwrap_or(0);
                    self.rtt = Some(Duration::from_micros(micros));
                    if ours {
                        self.receive_buffer_available = Some(s.buffer_available);
                        self.receive_rate = s.data_receive_rate;
                    }
                }
            }
        }
    }
}

/// An open SRT connection: a stream of what the peer sent and a sink for what to send, as
/// srt-tokio's socket offers (data stamped with its source time).
pub struct SrtConn {
    received: mpsc::Receiver<(Instant, Bytes)>,
    to_send: mpsc::Sender<(Instant, Bytes)>,
    stats: watch::Receiver<LinkStats>,
}

impl SrtConn {
    /// The link's figures, refreshed every second while the connection lives.
    pub fn statistics(&self) -> watch::Receiver<LinkStats> {
        self.stats.clone()
    }
}

impl Stream for SrtConn {
    type Item = io::Result<(Instant, Bytes)>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.received.poll_next_unpin(cx).map(|o| o.map(Ok))
    }
}

fn closed(_: mpsc::SendError) -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the SRT connection is closed")
}

impl Sink<(Instant, Bytes)> for SrtConn {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.to_send.poll_ready_unpin(cx).map_err(closed)
    }

    fn start_send(mut self: Pin<&mut Self>, item: (Instant, Bytes)) -> io::Result<()> {
        self.to_send.start_send_unpin(item).map_err(closed)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.to_send.poll_flush_unpin(cx).map_err(closed)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.to_send.poll_close_unpin(cx).map_err(closed)
    }
}

/// A caller asking to connect: accept it (with the keys to use) or refuse it with a reason.
pub struct Incoming {
    request: AccessControlRequest,
    session: SessionId,
    responses: mpsc::Sender<(SessionId, AccessControlResponse)>,
    opened: oneshot::Receiver<SrtConn>,
}

impl Incoming {
    pub fn remote(&self) -> SocketAddr {
        self.request.remote
    }

    pub fn stream_id(&self) -> Option<String> {
        self.request.stream_id.as_ref().map(|s| s.to_string())
    }

    pub fn key_size(&self) -> KeySize {
        self.request.key_size
    }

    /// Accepts, and waits for the handshake to finish.
    pub async fn accept(mut self, keys: Option<KeySettings>) -> io::Result<SrtConn> {
        self.responses
            .send((self.session, AccessControlResponse::Accepted(keys)))
            .await
            .map_err(closed)?;
        self.opened.await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the handshake did not complete",
            )
        })
    }

    pub async fn reject(mut self, reason: RejectReason) {
        let _ = self
            .responses
            .send((self.session, AccessControlResponse::Rejected(reason)))
            .await;
    }
}

/// The sessions a listener holds: open connections, and requests not yet opened.
#[derive(Debug, Default)]
pub struct Sessions {
    pub open: std::sync::atomic::AtomicUsize,
    pub pending: std::sync::atomic::AtomicUsize,
    /// Handshakes answered and not yet concluded (nor forgotten).
    pub handshakes: std::sync::atomic::AtomicUsize,
}

/// Runs the listener on `socket` until `shutdown`: handshakes are answered here, connection
/// requests go to `incoming`, open connections get their packets from here. `sessions` follows
/// how many it holds.
pub async fn listen(
    socket: UdpSocket,
    settings: ConnInitSettings,
    incoming: mpsc::Sender<Incoming>,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
) {
    let socket = match QuietUdp::new(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("[SRT] listener socket: {e}");
            return;
        }
    };
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let ipv6 = local.is_ipv6();
    let mut listener = MultiplexListener::new(Instant::now(), local, settings);
    let (responses, mut response_rx) = mpsc::channel(100);
    let mut incoming = incoming;
    let mut pending: HashMap<SessionId, oneshot::Sender<SrtConn>> = HashMap::new();
    let mut open: HashMap<SessionId, mpsc::Sender<(Packet, SocketAddr)>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = BytesMut::with_capacity(1500);
    let mut input = Input::Timer;
    let mut given_up = std::collections::HashSet::new();
    // An upgrade: sessions get connected twins, then the shared socket is left to the new
    // process (read no more; still sent from).
    let mut twins = tidegate_core::handover::Twins::default();
    let mut handshakes = Handshakes::default();
    loop {
        sessions.open.store(open.len(), Ordering::Relaxed);
        sessions.pending.store(pending.len(), Ordering::Relaxed);
        sessions
            .handshakes
            .store(handshakes.by_session.len(), Ordering::Relaxed);
        let now = Instant::now();
        if let Input::Packet(Ok((packet, from))) = &input {
            let session = SessionId(*from);
            if let Some(id) = induction_from(packet) {
                if !pending.contains_key(&session)
                    && !open.contains_key(&session)
                    && handshakes.induction(session, id, now)
                {
                    // A new caller from the address of an earlier, unfinished handshake (a
                    // restarted encoder, or a port reused after a flood): srt-protocol would
                    // answer it with the earlier caller's saved answer, which the new one
                    // ignores, and it would never get in.
                    forget(&mut listener, session, now);
                }
                forget_expired(&mut listener, &mut handshakes, &pending, &open, now);
            }
        }
        let action = listener.handle_input(now, input);
        let next = NextInputContext::for_action(&action);
        input = match action {
            Action::SendPacket((packet, to)) => {
                next.input_from(send(&socket, &mut out, &packet, to).await)
            }
            Action::RequestAccess(session, request) => {
                let (tx, opened) = oneshot::channel();
                let req = Incoming {
                    request,
                    session,
                    responses: responses.clone(),
                    opened,
                };
                // Waits while the server is behind on requests, as srt-tokio's listener does.
                let r = incoming.send(req).await;
                if r.is_ok() {
                    pending.insert(session, tx);
                }
                next.input_from(r)
            }
            Action::RejectConnection(session, packet) => {
                pending.remove(&session);
                let r = match packet {
                    Some((p, to)) => send(&socket, &mut out, &p, to).await.map(|_| ()),
                    None => Ok(()),
                };
                next.input_from(r)
            }
            Action::OpenConnection(session, conn) => {
                let (packet, connection) = *conn;
                let r = match pending.remove(&session) {
                    Some(tx) => {
                        let (packets, conn) = spawn_connection(socket.clone(), connection);
                        if twins.newly_heard(session.0) {
                            twin(&socket, session, &packets, ipv6);
                        }
                        open.insert(session, packets);
                        // A caller that gave up waiting just leaves the connection to time out.
                        let _ = tx.send(conn);
                        match packet {
                            Some((p, to)) => send(&socket, &mut out, &p, to).await.map(|_| ()),
                            None => Ok(()),
                        }
                    }
                    None => Err(io::Error::other("no pending request")),
                };
                next.input_from(r)
            }
            Action::DelegatePacket(session, packet) => {
                let r = match open.get_mut(&session) {
                    // Full: dropped, and SRT's retransmission recovers it. Closed: the
                    // connection ended, and the listener forgets the session.
                    Some(tx) => match tx.try_send(packet) {
                        Err(e) if e.is_disconnected() => Err(()),
                        _ => Ok(()),
                    },
                    None => Ok(()),
                };
                next.input_from(r)
            }
            Action::DropConnection(session) => {
                open.remove(&session);
                pending.remove(&session);
                next.input_from(Ok::<(), ()>(()))
            }
            Action::UpdateStatistics(_) => next.input_from(Ok::<(), ()>(())),
            Action::WaitForInput => tokio::select! {
                _ = shutdown.cancelled() => break,
                peers = twins.changed(|| open.keys().map(|s| s.0).collect::<Vec<_>>()) => {
                    for peer in peers {
                        let session = SessionId(peer);
                        if let Some(packets) = open.get(&session) {
                            twin(&socket, session, packets, ipv6);
                        }
                    }
                    Input::Timer
                }
                r = socket.recv_from(&mut buf), if twins.reading() => Input::Packet(match r {
                    Ok((n, from)) => parse_datagram(&buf[..n], ipv6).map(|p| (p, from)),
                    Err(e) => Err(ReceivePacketError::Io(e)),
                }),
                r = response_rx.next() => Input::AccessResponse(r),
                _ = tick.tick() => {
                    let now = Instant::now();
                    forget_expired(&mut listener, &mut handshakes, &pending, &open, now);
                    match ended(&open, &pending, &mut given_up) {
                        // Forgotten as a failed delivery would be: the listener drops the
                        // session.
                        Some(session) => Input::Failure(ResultOf::DelegatePacket(session)),
                        None => Input::Timer,
                    }
                },
            },
            Action::Close => break,
        };
    }
    // Dropping the packet senders ends every connection's task.
}

/// The socket id of an SRT induction handshake's caller.
fn induction_from(packet: &Packet) -> Option<SocketId> {
    match packet {
        Packet::Control(ControlPacket {
            control_type: ControlTypes::Handshake(shake),
            ..
        }) if shake.shake_type == ShakeType::Induction => Some(shake.socket_id),
        _ => None,
    }
}

/// Makes srt-protocol's listener forget what it holds for `session`. It has no timer for
/// handshakes; a dropped session's success is what removes one.
fn forget(listener: &mut MultiplexListener, session: SessionId, now: Instant) {
    let _ = listener.handle_input(now, Input::Success(ResultOf::DropConnection(session)));
}

/// Forgets the handshakes that expired, except those that became connection requests or
/// connections since.
fn forget_expired(
    listener: &mut MultiplexListener,
    handshakes: &mut Handshakes,
    pending: &HashMap<SessionId, oneshot::Sender<SrtConn>>,
    open: &HashMap<SessionId, mpsc::Sender<(Packet, SocketAddr)>>,
    now: Instant,
) {
    for session in handshakes.expired(now) {
        if !pending.contains_key(&session) && !open.contains_key(&session) {
            forget(listener, session, now);
        }
    }
}

/// The handshakes srt-protocol's listener was asked to answer, by caller address: which
/// caller (socket id) and since when. It keeps each until it is forgotten, so a flood of
/// inductions would cost memory for good, and a caller from the address of an earlier
/// unfinished handshake would get that one's answer. Entries here outlive their handshake's
/// success; the listener loop skips those that became connections.
#[derive(Debug, Default)]
struct Handshakes {
    by_session: HashMap<SessionId, (SocketId, Instant)>,
    /// When each entry began, oldest first (entries replaced since are stale here).
    order: VecDeque<(Instant, SessionId)>,
}

impl Handshakes {
    /// An induction from caller `id` at `session`: true when an earlier caller's handshake
    /// from that address is held (to be forgotten before this one is answered).
    fn induction(&mut self, session: SessionId, id: SocketId, now: Instant) -> bool {
        let earlier = match self.by_session.get_mut(&session) {
            // The same caller again (a retransmission): its handshake keeps its start.
            Some((known, _)) if *known == id => return false,
            Some(entry) => {
                *entry = (id, now);
                true
            }
            None => {
                self.by_session.insert(session, (id, now));
                false
            }
        };
        self.order.push_back((now, session));
        earlier
    }

    /// The sessions to forget: those whose handshake began `HANDSHAKE_TTL` ago, and the
    /// oldest past `MAX_HANDSHAKES`.
    fn expired(&mut self, now: Instant) -> Vec<SessionId> {
        let mut gone = Vec::new();
        while let Some(&(since, session)) = self.order.front() {
            if now.duration_since(since) < HANDSHAKE_TTL && self.order.len() <= MAX_HANDSHAKES {
                break;
            }
            self.order.pop_front();
            if self.by_session.get(&session).is_some_and(|e| e.1 == since) {
                self.by_session.remove(&session);
                gone.push(session);
            }
        }
        gone
    }
}

/// A session whose connection task has ended, or whose caller stopped waiting for its
/// handshake: the listener would otherwise keep it until the peer sends again. A pending one
/// is only given up on the tick after it was first seen abandoned, so that a refusal sent just
/// before its request was dropped is processed first.
fn ended(
    open: &HashMap<SessionId, mpsc::Sender<(Packet, SocketAddr)>>,
    pending: &HashMap<SessionId, oneshot::Sender<SrtConn>>,
    given_up: &mut std::collections::HashSet<SessionId>,
) -> Option<SessionId> {
    if let Some((s, _)) = open.iter().find(|(_, tx)| tx.is_closed()) {
        return Some(*s);
    }
    let abandoned: std::collections::HashSet<SessionId> = pending
        .iter()
        .filter(|(_, tx)| tx.is_canceled())
        .map(|(s, _)| *s)
        .collect();
    let found = abandoned.intersection(given_up).next().copied();
    *given_up = abandoned;
    found
}

/// srt-protocol's packet parser, guarded: on some truncated control packets it reads past the
/// end of the datagram (a panic in `bytes`, found by the `srt_listener` fuzz target), which
/// must cost that datagram, not the listener every SRT connection goes through.
/// The panic prints no message per datagram (a flood anyone could trigger): it is counted and
/// logged at most every 10 s ([`tidegate_core::guard::contain`]).
pub fn parse_datagram(data: &[u8], ipv6: bool) -> Result<Packet, ReceivePacketError> {
    match tidegate_core::guard::contain("srt-protocol's packet parser", || {
        Packet::parse(&mut &data[..], ipv6)
    }) {
        Some(r) => r.map_err(ReceivePacketError::Parse),
        None => Err(ReceivePacketError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed SRT packet",
        ))),
    }
}

async fn send(
    socket: &QuietUdp,
    out: &mut BytesMut,
    packet: &Packet,
    to: SocketAddr,
) -> io::Result<usize> {
    out.clear();
    packet.serialize(out);
    socket.send_to(out, to).await
}

/// Starts a connection's task: returns where the listener hands it packets, and its user's end.
fn spawn_connection(
    socket: Arc<QuietUdp>,
    connection: Connection,
) -> (mpsc::Sender<(Packet, SocketAddr)>, SrtConn) {
    let (packets_tx, packets) = mpsc::channel(CONNECTION_QUEUE);
    let (received_tx, received) = mpsc::channel(DATA_QUEUE);
    let (to_send, to_send_rx) = mpsc::channel(DATA_QUEUE);
    let settings: ConnectionSettings = connection.settings.clone();
    let first = LinkStats {
        recv_latency: settings.recv_tsbpd_latency,
        send_latency: settings.send_tsbpd_latency,
        receive_buffer_size: settings.recv_buffer_size.0 as u32,
        ..LinkStats::default()
    };
    let (stats_tx, stats) = watch::channel(first.clone());
    tokio::spawn(run_connection(
        DuplexConnection::new(connection),
        socket,
        packets,
        to_send_rx,
        received_tx,
        stats_tx,
        first,
    ));
    (
        packets_tx,
        SrtConn {
            received,
            to_send,
            stats,
        },
    )
}

/// One connection's loop, as srt-tokio's, plus the statistics: packets in from the listener,
/// data in from the user, packets out to the socket, data out to the user, timers.
///
/// Each turn takes every input already waiting (a reader's frame arrives as several payloads
/// at once; the listener may hold several packets), then runs the timers, then sends all the
/// packets that produced in one batch ([`tidegate_core::udp_batch`]: a frame's data packets,
/// all of one size but the last, leave as one UDP GSO send): one wake-up and one system call
/// per frame per reader rather than one per packet. srt-protocol paces data by its SND timer
/// (one packet per period, 10 us at its unlimited bandwidth); the periods that passed since
/// the last turn release that many packets at once, so the pacing stays srt-protocol's.
async fn run_connection(
    mut conn: DuplexConnection,
    socket: Arc<QuietUdp>,
    mut packets: mpsc::Receiver<(Packet, SocketAddr)>,
    mut to_send: mpsc::Receiver<(Instant, Bytes)>,
    mut received: mpsc::Sender<(Instant, Bytes)>,
    stats: watch::Sender<LinkStats>,
    mut link: LinkStats,
) {
    let mut out = BytesMut::with_capacity(BATCH_BYTES);
    let mut batch: Vec<(Bytes, SocketAddr)> = Vec::new();
    let mut sending_done = false;
    while conn.is_open() {
        let now = Instant::now();
        if conn.should_update_statistics(now) {
            conn.update_statistics(now);
            link.socket = conn.statistics().clone();
            stats.send_replace(link.clone());
        }
        let wake = conn.check_timers(now);
        while let Some((packet, to)) = conn.next_packet(now) {
            link.observe(&packet, true);
            if out.capacity() - out.len() < MAX_PACKET {
                out.reserve(BATCH_BYTES);
            }
            packet.serialize(&mut out);
            batch.push((out.split().freeze(), to));
        }
        if !batch.is_empty() {
            // A refused send is a lost packet; SRT retransmits it.
            tidegate_core::udp_batch::send_all(&*socket, &batch).await;
            batch.clear();
        }
        while let Some(data) = conn.next_data(now) {
            if !received.is_closed() {
                let _ = received.send(data).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            p = packets.next() => match p {
                Some(first) => {
                    let mut next = Some(first);
                    let mut taken = 0;
                    while let Some(p) = next.take() {
                        link.observe(&p.0, false);
                        conn.handle_packet_input(Instant::now(), Ok(p));
                        taken += 1;
                        if taken < DRAIN {
                            next = packets.try_recv().ok();
                        }
                    }
                }
                // The listener is gone (shutdown).
                None => break,
            },
            d = to_send.next(), if !sending_done => {
                // None: the user closed its end; the connection flushes and shuts down.
                sending_done = d.is_none();
                let now = Instant::now();
                conn.handle_data_input(now, d);
                for _ in 1..DRAIN {
                    if sending_done {
                        break;
                    }
                    match to_send.try_recv() {
                        Ok(d) => conn.handle_data_input(now, Some(d)),
                        Err(_) => break,
                    }
                }
            }
        }
    }
    link.socket = conn.statistics().clone();
    stats.send_replace(link);
    received.close_channel();
}

/// What a caller asks for: the latency both ways, and encryption (key size 0 = the
/// listener's choice; 16, 24 or 32 bytes) with a passphrase of 10 to 79 characters.
#[derive(Clone, Debug, Default)]
pub struct CallSettings {
    pub stream_id: Option<String>,
    pub latency: Option<Duration>,
    pub encryption: Option<(u16, String)>,
}

/// Calls the SRT listener at `remote` (caller mode): srt-protocol's handshake, then the same
/// connection loop as the listener's, on a socket of its own whose datagrams go through the
/// same guarded parser. Fails after `timeout` without an answer, or with the listener's
/// refusal.
pub async fn call(
    remote: SocketAddr,
    how: &CallSettings,
    timeout: Duration,
) -> io::Result<SrtConn> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let mut options = srt_protocol::options::SocketOptions::default();
    if let Some(l) = how.latency {
        options.sender.peer_latency = l;
        options.receiver.latency = l;
    }
    if let Some((size, pass)) = &how.encryption {
        options.encryption.key_size = (*size)
            .try_into()
            .map_err(|_| invalid(format!("key size {size}")))?;
        options.encryption.passphrase = Some(
            pass.clone()
                .try_into()
                .map_err(|_| invalid("a passphrase is 10 to 79 characters".into()))?,
        );
    }
    let options =
        srt_protocol::options::CallerOptions::with(remote, how.stream_id.as_deref(), options)
            .map_err(|e| invalid(e.to_string()))?
            .into_value();
    let local: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = Arc::new(QuietUdp::new(UdpSocket::bind(local).await?)?);
    let ipv6 = remote.is_ipv6();
    let mut connect = srt_protocol::protocol::pending_connection::connect::Connect::new(
        remote,
        options.socket.connect.local.ip(),
        with_send_buffer(options.socket.clone().into()),
        how.stream_id.clone(),
        srt_protocol::packet::SeqNumber::new_truncate(tidegate_core::text::random_u64() as u32),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = BytesMut::with_capacity(1500);
    let deadline = tokio::time::Instant::now() + timeout;
    use srt_protocol::protocol::pending_connection::ConnectionResult as R;
    let connection = loop {
        let result = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer to the SRT handshake"));
            }
            now = tick.tick() => connect.handle_tick(now.into_std()),
            r = socket.recv_from(&mut buf) => {
                let packet = match r {
                    Ok((n, from)) => parse_datagram(&buf[..n], ipv6).map(|p| (p, from)),
                    Err(e) => Err(ReceivePacketError::Io(e)),
                };
                connect.handle_packet(packet, Instant::now())
            }
        };
        match result {
            R::SendPacket((p, to)) => {
                send(&socket, &mut out, &p, to).await?;
            }
            R::Reject(p, why) => {
                if let Some((p, to)) = p {
                    let _ = send(&socket, &mut out, &p, to).await;
                }
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    why.to_string(),
                ));
            }
            R::Connected(p, connection) => {
                if let Some((p, to)) = p {
                    send(&socket, &mut out, &p, to).await?;
                }
                break connection;
            }
            R::Failure(e) => return Err(e),
            R::NotHandled(_) | R::NoAction | R::RequestAccess(_) => {}
        }
    };
    let (packets, conn) = spawn_connection(socket.clone(), connection);
    forward_datagrams(socket, remote, packets, ipv6);
    Ok(conn)
}

/// Hands the datagrams `socket` receives from `remote` to a connection (`packets`), until the
/// connection ends: a caller's own socket, or a listener session's connected twin during an
/// upgrade ([`tidegate_core::handover`]).
fn forward_datagrams(
    socket: Arc<QuietUdp>,
    remote: SocketAddr,
    mut packets: mpsc::Sender<(Packet, SocketAddr)>,
    ipv6: bool,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let r = tokio::select! {
                r = socket.recv_from(&mut buf) => r,
                // The connection may end while the peer is silent.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if packets.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let Ok((n, from)) = r else { return };
            if from != remote {
                continue;
            }
            let Ok(p) = parse_datagram(&buf[..n], ipv6) else {
                continue;
            };
            if packets.send((p, from)).await.is_err() {
                return;
            }
        }
    });
}

/// Gives an open session a connected twin of the listener's socket (an upgrade is under way):
/// its peer's datagrams then reach it there, whichever process reads the shared socket.
fn twin(
    shared: &QuietUdp,
    session: SessionId,
    packets: &mpsc::Sender<(Packet, SocketAddr)>,
    ipv6: bool,
) {
    match tidegate_core::handover::connected_twin(shared, session.0).and_then(QuietUdp::new) {
        Ok(t) => forward_datagrams(Arc::new(t), session.0, packets.clone(), ipv6),
        Err(e) => tracing::warn!(
            "[upgrade] SRT session with {}: no connected socket ({e}); it ends with the handover",
            session.0
        ),
    }
}

/// The listener's settings from srt-tokio's listener options (latency, buffers, defaults).
pub fn settings(local: SocketAddr) -> io::Result<ConnInitSettings> {
    let options = srt_protocol::options::ListenerOptions::new(local)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    Ok(with_send_buffer(ConnInitSettings::from(
        options.into_value().socket,
    )))
}

/// libsrt's send buffer (8192 packets) instead of srt-protocol's default of 46 592 bytes,
/// 32 packets: a burst larger than that (a keyframe, a joiner's first GOP) made srt-protocol
/// evict packets it had not sent yet, after which its sender waited for an acknowledgement
/// that could not come and sent nothing more; when the evicted packets' time ran out it went
/// on thousands of sequence numbers further, and libsrt receivers break on such a jump. Only
/// packets waiting to be sent or acknowledged occupy it; they are still dropped once older
/// than the latency allows.
fn with_send_buffer(mut s: ConnInitSettings) -> ConnInitSettings {
    s.send_buffer_size = srt_protocol::options::PacketCount(SEND_BUFFER_PACKETS);
    s
}

const SEND_BUFFER_PACKETS: u64 = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    /// 16 bytes that make srt-protocol 0.4.4's parser read past their end (found by the
    /// `srt_listener` fuzz target): an SRT extension control packet of subtype 7.
    pub const PARSER_PANIC: [u8; 16] = [
        0xff, 0xff, 0x00, 0x07, 0xff, 0xff, 0xff, 0x00, 0, 0, 0, 0, 0, 0x15, 0, 0,
    ];

    /// A listener of ours on an ephemeral loopback port: its address, its connection
    /// requests, what it holds, and its shutdown.
    async fn listener() -> (
        SocketAddr,
        mpsc::Receiver<Incoming>,
        Arc<Sessions>,
        CancellationToken,
    ) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(8);
        let sessions = Arc::new(Sessions::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(listen(
            sock,
            settings(addr).unwrap(),
            tx,
            sessions.clone(),
            shutdown.clone(),
        ));
        (addr, rx, sessions, shutdown)
    }

    /// A caller of ours connects to a listener of ours, data flows, both ends close: the
    /// listener forgets the session (no entry left behind for a peer that never sends again).
    #[tokio::test]
    async fn a_closed_connection_leaves_the_listener() {
        let (addr, mut rx, sessions, shutdown) = listener().await;
        let server = tokio::spawn(async move {
            let req = rx.next().await.unwrap();
            assert_eq!(req.stream_id().as_deref(), Some("publish:x"));
            req.accept(None).await.unwrap()
        });
        let how = CallSettings {
            stream_id: Some("publish:x".into()),
            ..CallSettings::default()
        };
        let mut caller = call(addr, &how, Duration::from_secs(5)).await.unwrap();
        let mut accepted = server.await.unwrap();
        caller
            .send((Instant::now(), Bytes::from_static(b"hello")))
            .await
            .unwrap();
        let (_, got) = tokio::time::timeout(Duration::from_secs(5), accepted.next())
            .await
            .expect("data within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"hello");
        assert_eq!(sessions.open.load(Ordering::Relaxed), 1);

        caller.close().await.unwrap();
        drop((caller, accepted));
        let deadline = Instant::now() + Duration::from_secs(5);
        while sessions.open.load(Ordering::Relaxed) != 0 {
            assert!(
                Instant::now() < deadline,
                "the session is still held after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sessions.pending.load(Ordering::Relaxed), 0);
        shutdown.cancel();
    }

    /// A burst far larger than srt-protocol's default send buffer (32 packets), sent at one
    /// instant by the listener's side to a caller: every piece arrives, in order. With the
    /// default buffer the sender evicted unsent packets and then stalled for good.
    #[tokio::test]
    async fn a_burst_larger_than_the_default_send_buffer_arrives_whole() {
        let (addr, mut rx, _, shutdown) = listener().await;
        let server = tokio::spawn(async move {
            let req = rx.next().await.unwrap();
            req.accept(None).await.unwrap()
        });
        let how = CallSettings {
            stream_id: Some("read:x".into()),
            ..CallSettings::default()
        };
        let mut caller = call(addr, &how, Duration::from_secs(5)).await.unwrap();
        let mut accepted = server.await.unwrap();
        const N: u32 = 400;
        let now = Instant::now();
        for i in 0..N {
            let mut piece = vec![0u8; 1316];
            piece[..4].copy_from_slice(&i.to_be_bytes());
            accepted.send((now, Bytes::from(piece))).await.unwrap();
        }
        let mut next = 0u32;
        while next < N {
            let (_, got) = tokio::time::timeout(Duration::from_secs(5), caller.next())
                .await
                .unwrap_or_else(|_| panic!("piece {next} of {N} did not arrive within 5 s"))
                .unwrap()
                .unwrap();
            let i = u32::from_be_bytes(got[..4].try_into().unwrap());
            assert_eq!(i, next, "pieces out of order or missing");
            next += 1;
        }
        shutdown.cancel();
    }

    /// An SRT induction handshake from caller `id` (HSv4, as libsrt sends it).
    fn induction(id: u32) -> BytesMut {
        use srt_protocol::options::{PacketCount, PacketSize};
        use srt_protocol::packet::{HandshakeControlInfo, HandshakeVsInfo, SeqNumber, SocketType};
        let shake = HandshakeControlInfo {
            init_seq_num: SeqNumber::new_truncate(id),
            max_packet_size: PacketSize(1500),
            max_flow_size: PacketCount(8192),
            shake_type: ShakeType::Induction,
            socket_id: SocketId(id),
            syn_cookie: 0,
            peer_addr: [127, 0, 0, 1].into(),
            info: HandshakeVsInfo::V4(SocketType::Datagram),
        };
        let mut out = BytesMut::new();
        Packet::Control(ControlPacket {
            timestamp: srt_protocol::packet::TimeStamp::from_micros(0),
            dest_sockid: SocketId(0),
            control_type: ControlTypes::Handshake(shake),
        })
        .serialize(&mut out);
        out
    }

    /// Two callers one after the other from one address, the first never concluding (an
    /// encoder restarted on its fixed source port, or a port reused after a flood of
    /// inductions): the second's induction is answered to its own socket id. srt-protocol
    /// alone answered it with the first's saved answer, which libsrt ignores, and the caller
    /// never got in. A retransmitted induction keeps its handshake.
    #[tokio::test]
    async fn a_new_caller_from_an_unfinished_handshakes_address_gets_its_own_answer() {
        let (addr, _rx, sessions, shutdown) = listener().await;
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 1500];
        // The fourth (a retransmission of the third) is answered after the listener counted
        // what the third left: the count below needs no wait.
        for id in [7u32, 7, 9, 9] {
            caller.send_to(&induction(id), addr).await.unwrap();
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), caller.recv_from(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            let answer = parse_datagram(&buf[..n], false).unwrap();
            let Packet::Control(ControlPacket {
                dest_sockid,
                control_type: ControlTypes::Handshake(shake),
                ..
            }) = answer
            else {
                panic!("not a handshake: {answer:?}");
            };
            assert_eq!(dest_sockid, SocketId(id), "answered to another caller");
            assert_eq!(shake.shake_type, ShakeType::Induction);
        }
        assert_eq!(sessions.handshakes.load(Ordering::Relaxed), 1);
        shutdown.cancel();
    }

    /// Handshakes are forgotten `HANDSHAKE_TTL` after they began, and past
    /// `MAX_HANDSHAKES` the oldest go first; a retransmission neither restarts nor renews one.
    #[test]
    fn handshakes_expire_and_are_bounded() {
        let t0 = Instant::now();
        let at = |port: u16| SessionId(SocketAddr::from(([127, 0, 0, 1], port)));
        let mut h = Handshakes::default();
        assert!(!h.induction(at(1), SocketId(1), t0));
        assert!(!h.induction(at(1), SocketId(1), t0 + Duration::from_secs(5)));
        assert!(!h.induction(at(2), SocketId(2), t0 + Duration::from_secs(1)));
        assert!(h.expired(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(h.expired(t0 + HANDSHAKE_TTL), vec![at(1)]);
        // A new caller at 2 restarts its handshake's clock.
        assert!(h.induction(at(2), SocketId(3), t0 + Duration::from_secs(10)));
        assert!(h.expired(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(h.expired(t0 + Duration::from_secs(20)), vec![at(2)]);
        assert!(h.by_session.is_empty() && h.order.is_empty());

        let now = t0 + Duration::from_secs(30);
        for port in 0..(MAX_HANDSHAKES as u16 + 10) {
            h.induction(at(port), SocketId(1), now);
        }
        let gone = h.expired(now);
        assert_eq!(gone, (0..10).map(at).collect::<Vec<_>>());
        assert_eq!(h.by_session.len(), MAX_HANDSHAKES);
    }

    #[test]
    fn a_datagram_that_panics_the_parser_is_an_error() {
        let e = parse_datagram(&PARSER_PANIC, false).unwrap_err();
        assert!(
            matches!(&e, ReceivePacketError::Io(io) if io.kind() == io::ErrorKind::InvalidData),
            "{e:?}"
        );
        assert!(parse_datagram(&[0x80, 0], false).is_err());
    }
}
