//! `dumpPackets`: what every TCP connection and UDP socket of the servers and sources carries,
//! written to disk as it goes, for debugging, in pcapng files Wireshark and tshark open (MediaMTX's feature and file
//! names: `<proto>_server_conn_<unix ns>_<id>.pcapng` in the working directory).
//!
//! Each connection gets a file of its own. Its bytes are written as TCP segments between the
//! two real addresses (a synthesised handshake first, sequence numbers that follow the bytes,
//! checksums right, raw IPv4 or IPv6 packets: link type 101), so that Wireshark's "Follow TCP
//! stream" and its RTMP/RTSP/HTTP dissectors read them as a capture. What is dumped is what the
//! protocol code reads and writes, so for RTMPS, RTSPS and HTTPS it is the plain text inside
//! TLS (no keys needed to read it). The stream's fan-out writer's bytes are dumped too (the
//! [`SinkIo`] it writes to is wrapped).
//!
//! One thread writes every file; connections hand it copies through a bounded queue (8 192
//! entries, 64 MiB) and never wait: when it is full, entries are dropped and counted ([`dropped`]);
//! the file then lacks those bytes.
//!
//! UDP sockets ([`DumpedUdp`]) get one file each, their datagrams as IP/UDP packets between the
//! socket's address and each peer's.

use std::collections::HashMap;
use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::fanout::{SharedTcp, SinkIo, Transport, Writable};

const QUEUE: usize = 8192;
/// The most bytes of copies waiting for the writer.
const QUEUE_BYTES: usize = 64 << 20;
/// The most payload one synthesised TCP segment carries.
const SEGMENT: usize = 32 << 10;

struct Global {
    enabled: AtomicBool,
    dir: Mutex<PathBuf>,
    tx: OnceLock<SyncSender<Msg>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    queued_bytes: std::sync::atomic::AtomicUsize,
    /// Connections whose close did not fit in the queue: closed at the writer's next turn.
    orphans: Mutex<Vec<u64>>,
}

fn global() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| Global {
        enabled: AtomicBool::new(false),
        dir: Mutex::new(PathBuf::from(".")),
        tx: OnceLock::new(),
        next_id: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
        queued_bytes: std::sync::atomic::AtomicUsize::new(0),
        orphans: Mutex::new(Vec::new()),
    })
}

/// Turns dumping on or off (`dumpPackets`) for connections opened from now on; files go to
/// `dir` (the working directory in MediaMTX).
pub fn configure(enabled: bool, dir: PathBuf) {
    let g = global();
    *g.dir.lock().unwrap_or_else(|e| e.into_inner()) = dir;
    g.enabled.store(enabled, Ordering::Release);
}

/// Whether new connections are dumped.
pub fn enabled() -> bool {
    global().enabled.load(Ordering::Acquire)
}

/// Entries dropped because the writer fell behind (since start).
pub fn dropped() -> u64 {
    global().dropped.load(Ordering::Relaxed)
}

enum Msg {
    Open {
        id: u64,
        file: PathBuf,
        local: SocketAddr,
        remote: SocketAddr,
        server_side: bool,
        /// A UDP socket's file: datagrams, no handshake.
        udp: bool,
        at: SystemTime,
    },
    Data {
        id: u64,
        inbound: bool,
        /// A datagram's other end (UDP); None on a TCP connection.
        peer: Option<SocketAddr>,
        data: Vec<u8>,
        at: SystemTime,
    },
    Close {
        id: u64,
        at: SystemTime,
    },
}

fn sender() -> &'static SyncSender<Msg> {
    global().tx.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
        let _ = std::thread::Builder::new()
            .name("dump-packets".into())
            .spawn(move || writer(rx));
        tx
    })
}

/// One dumped TCP connection; its file is closed when this is dropped.
pub struct TcpDump {
    id: u64,
}

impl TcpDump {
    /// A new dump for a connection between `local` and `remote` (`server_side`: the remote
    /// opened it), or None when dumping is off. `prefix` names the file, e.g.
    /// `rtmp_server_conn`.
    pub fn open(
        prefix: &str,
        local: SocketAddr,
        remote: SocketAddr,
        server_side: bool,
    ) -> Option<Arc<TcpDump>> {
        if !enabled() {
            return None;
        }
        let id = open_file(prefix, local, remote, server_side, false);
        Some(Arc::new(TcpDump { id }))
    }

    /// Bytes the connection read.
    pub fn inbound(&self, data: &[u8]) {
        self.data(true, data);
    }

    /// Bytes the connection wrote.
    pub fn outbound(&self, data: &[u8]) {
        self.data(false, data);
    }

    fn data(&self, inbound: bool, data: &[u8]) {
        if !data.is_empty() {
            queue_data(self.id, inbound, None, data);
        }
    }

    fn outbound_vectored(&self, bufs: &[IoSlice<'_>], mut n: usize) {
        let mut data = Vec::with_capacity(n);
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = b.len().min(n);
            data.extend_from_slice(&b[..take]);
            n -= take;
        }
        self.outbound(&data);
    }
}

impl Drop for TcpDump {
    fn drop(&mut self) {
        close_file(self.id);
    }
}

/// Opens a file (on the writer thread) and returns its id.
fn open_file(
    prefix: &str,
    local: SocketAddr,
    remote: SocketAddr,
    server_side: bool,
    udp: bool,
) -> u64 {
    let g = global();
    let id = g.next_id.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    let ns = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = g.dir.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let file = dir.join(format!(
        "{prefix}_{ns}_{}.pcapng",
        crate::text::secret_hex(8)
    ));
    send(Msg::Open {
        id,
        file,
        local,
        remote,
        server_side,
        udp,
        at: now,
    });
    id
}

/// A copy of `data` for file `id`, unless the queue holds too many bytes already.
fn queue_data(id: u64, inbound: bool, peer: Option<SocketAddr>, data: &[u8]) {
    let g = global();
    if g.queued_bytes.fetch_add(data.len(), Ordering::AcqRel) + data.len() > QUEUE_BYTES {
        g.queued_bytes.fetch_sub(data.len(), Ordering::AcqRel);
        g.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    send(Msg::Data {
        id,
        inbound,
        peer,
        data: data.to_vec(),
        at: SystemTime::now(),
    });
}

fn close_file(id: u64) {
    let close = Msg::Close {
        id,
        at: SystemTime::now(),
    };
    if sender().try_send(close).is_err() {
        global()
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
    }
}

/// One dumped UDP socket (MediaMTX's `<proto>_server_packet_conn`, `…_source_packet_conn`): its
/// datagrams, both ways, in one file while `dumpPackets` is on. The file opens with the first
/// datagram after dumping is turned on and closes when it is turned off (a reload) or the
/// socket goes.
pub struct UdpDump {
    prefix: &'static str,
    local: SocketAddr,
    /// The open file's id; 0: none.
    id: AtomicU64,
}

impl UdpDump {
    pub fn new(prefix: &'static str, local: SocketAddr) -> UdpDump {
        UdpDump {
            prefix,
            local,
            id: AtomicU64::new(0),
        }
    }

    /// The file to write to now, opened or closed as `dumpPackets` says.
    fn file(&self) -> Option<u64> {
        let id = self.id.load(Ordering::Acquire);
        if !enabled() {
            if id != 0
                && self
                    .id
                    .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                close_file(id);
            }
            return None;
        }
        if id != 0 {
            return Some(id);
        }
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let new = open_file(self.prefix, self.local, unspecified, false, true);
        match self
            .id
            .compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Some(new),
            Err(theirs) => {
                close_file(new);
                Some(theirs)
            }
        }
    }

    /// A datagram `peer` sent to the socket.
    pub fn inbound(&self, peer: SocketAddr, data: &[u8]) {
        if let Some(id) = self.file() {
            queue_data(id, true, Some(peer), data);
        }
    }

    /// A datagram the socket sent to `peer`.
    pub fn outbound(&self, peer: SocketAddr, data: &[u8]) {
        if let Some(id) = self.file() {
            queue_data(id, false, Some(peer), data);
        }
    }
}

impl Drop for UdpDump {
    fn drop(&mut self) {
        let id = *self.id.get_mut();
        if id != 0 {
            close_file(id);
        }
    }
}

/// A UDP socket whose datagrams are dumped while `dumpPackets` is on. It derefs to the socket,
/// whose `recv_from`/`send_to`/`recv`/`send_to` it shadows with dumping ones; datagrams sent
/// another way (`sendmmsg` batches) are passed to [`UdpDump::outbound`] by their sender.
pub struct DumpedUdp {
    sock: crate::udp::QuietUdp,
    pub dump: UdpDump,
}

impl DumpedUdp {
    /// `prefix` names the file, e.g. `rtsp_server_packet_conn`. The socket is watched for
    /// reading only ([`crate::udp::QuietUdp`]).
    pub fn new(sock: tokio::net::UdpSocket, prefix: &'static str) -> io::Result<DumpedUdp> {
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(DumpedUdp {
            sock: crate::udp::QuietUdp::new(sock)?,
            dump: UdpDump::new(prefix, local),
        })
    }

    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.sock.recv_from(buf).await?;
        self.dump.inbound(from, &buf[..n]);
        Ok((n, from))
    }

    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let n = self.sock.send_to(buf, to).await?;
        self.dump.outbound(to, &buf[..n]);
        Ok(n)
    }

    /// A send that does not wait (`WouldBlock` when the buffer is full).
    pub fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let n = self.sock.get_ref().send_to(buf, to)?;
        self.dump.outbound(to, &buf[..n]);
        Ok(n)
    }
}

impl std::ops::Deref for DumpedUdp {
    type Target = crate::udp::QuietUdp;
    fn deref(&self) -> &crate::udp::QuietUdp {
        &self.sock
    }
}

fn send(m: Msg) {
    match sender().try_send(m) {
        Ok(()) => {}
        Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => {
            let g = global();
            g.dropped.fetch_add(1, Ordering::Relaxed);
            if let Msg::Data { data, .. } = m {
                g.queued_bytes.fetch_sub(data.len(), Ordering::AcqRel);
            }
        }
    }
}

/// One open dump file.
struct ConnFile {
    out: io::BufWriter<std::fs::File>,
    local: SocketAddr,
    remote: SocketAddr,
    /// Next sequence numbers: ours (local) and theirs (remote).
    seq_local: u32,
    seq_remote: u32,
    udp: bool,
}

fn writer(rx: Receiver<Msg>) {
    let mut files: HashMap<u64, ConnFile> = HashMap::new();
    let mut failed_once = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            handle(m, &mut files, &mut failed_once);
            next = rx.try_recv().ok();
        }
        let orphans =
            std::mem::take(&mut *global().orphans.lock().unwrap_or_else(|e| e.into_inner()));
        for id in orphans {
            let at = SystemTime::now();
            handle(Msg::Close { id, at }, &mut files, &mut failed_once);
        }
        for f in files.values_mut() {
            let _ = f.out.flush();
        }
    }
}

fn handle(m: Msg, files: &mut HashMap<u64, ConnFile>, failed_once: &mut bool) {
    match m {
        Msg::Open {
            id,
            file,
            local,
            remote,
            server_side,
            udp,
            at,
        } => {
            let f = match std::fs::File::create(&file) {
                Ok(f) => f,
                Err(e) => {
                    if !std::mem::replace(failed_once, true) {
                        tracing::warn!("[dumpPackets] cannot create {}: {e}", file.display());
                    }
                    return;
                }
            };
            let mut c = ConnFile {
                out: io::BufWriter::new(f),
                local,
                remote,
                seq_local: if server_side { 2000 } else { 1000 },
                seq_remote: if server_side { 1000 } else { 2000 },
                udp,
            };
            let _ = c.out.write_all(&section_header());
            let _ = c.out.write_all(&interface_description());
            if udp {
                files.insert(id, c);
                return;
            }
            // The handshake, from whoever opened the connection.
            let (client_local, syn) = (!server_side, 0x02);
            c.segment(at, client_local, syn, &[]);
            c.advance(client_local, 1);
            c.segment(at, !client_local, syn | 0x10, &[]);
            c.advance(!client_local, 1);
            c.segment(at, client_local, 0x10, &[]);
            files.insert(id, c);
        }
        Msg::Data {
            id,
            inbound,
            peer,
            data,
            at,
        } => {
            global()
                .queued_bytes
                .fetch_sub(data.len(), Ordering::AcqRel);
            if let (Some(c), Some(peer)) = (files.get_mut(&id), peer) {
                let (src, dst) = if inbound {
                    (peer, c.local)
                } else {
                    (c.local, peer)
                };
                // A socket bound to every address: the peer's family, unspecified.
                let unspecified = |a: SocketAddr, other: SocketAddr| {
                    if a.ip().is_unspecified() && a.is_ipv4() != other.is_ipv4() {
                        SocketAddr::new(other.ip(), a.port())
                    } else {
                        a
                    }
                };
                let (src, dst) = (unspecified(src, dst), unspecified(dst, src));
                let _ = c
                    .out
                    .write_all(&enhanced_packet(at, &ip_udp(src, dst, &data)));
            } else if let Some(c) = files.get_mut(&id) {
                for piece in data.chunks(SEGMENT) {
                    c.segment(at, !inbound, 0x18, piece);
                    c.advance(!inbound, piece.len() as u32);
                }
            }
        }
        Msg::Close { id, at } => {
            if let Some(mut c) = files.remove(&id) {
                if !c.udp {
                    c.segment(at, true, 0x11, &[]);
                }
                let _ = c.out.flush();
            }
        }
    }
}

impl ConnFile {
    fn advance(&mut self, from_local: bool, n: u32) {
        if from_local {
            self.seq_local = self.seq_local.wrapping_add(n);
        } else {
            self.seq_remote = self.seq_remote.wrapping_add(n);
        }
    }

    /// Writes one TCP segment (`flags`: FIN 0x01, SYN 0x02, PSH 0x08, ACK 0x10).
    fn segment(&mut self, at: SystemTime, from_local: bool, flags: u8, payload: &[u8]) {
        let (src, dst, seq, ack) = if from_local {
            (self.local, self.remote, self.seq_local, self.seq_remote)
        } else {
            (self.remote, self.local, self.seq_remote, self.seq_local)
        };
        let ack = if flags & 0x10 != 0 { ack } else { 0 };
        let packet = ip_tcp(src, dst, seq, ack, flags, payload);
        let _ = self.out.write_all(&enhanced_packet(at, &packet));
    }
}

/// pcapng Section Header Block (little-endian, no options).
pub fn section_header() -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&0x0A0D_0D0Au32.to_le_bytes());
    b.extend_from_slice(&28u32.to_le_bytes());
    b.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(-1i64).to_le_bytes());
    b.extend_from_slice(&28u32.to_le_bytes());
    b
}

/// pcapng Interface Description Block: raw IP packets (link type 101), no snap length.
pub fn interface_description() -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&20u32.to_le_bytes());
    b.extend_from_slice(&101u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&20u32.to_le_bytes());
    b
}

/// pcapng Enhanced Packet Block with a microsecond timestamp.
pub fn enhanced_packet(at: SystemTime, packet: &[u8]) -> Vec<u8> {
    let us = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let padded = packet.len().div_ceil(4) * 4;
    let total = (32 + padded) as u32;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&((us >> 32) as u32).to_le_bytes());
    b.extend_from_slice(&(us as u32).to_le_bytes());
    b.extend_from_slice(&(packet.len() as u32).to_le_bytes());
    b.extend_from_slice(&(packet.len() as u32).to_le_bytes());
    b.extend_from_slice(packet);
    b.resize(b.len() + padded - packet.len(), 0);
    b.extend_from_slice(&total.to_le_bytes());
    b
}

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// An IPv4 (both addresses v4) or IPv6 packet carrying one TCP segment, checksums computed.
pub fn ip_tcp(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push(5 << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&65535u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    ip_packet(src.ip(), dst.ip(), 6, tcp, 16)
}

/// An IPv4 or IPv6 packet carrying one UDP datagram, checksums computed.
pub fn ip_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    // A datagram larger than an IP packet holds (never from a socket) is cut.
    let len = (8 + payload.len()).min(65_507);
    udp.extend_from_slice(&(len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload[..len - 8]);
    ip_packet(src.ip(), dst.ip(), 17, udp, 6)
}

/// `l4` (a TCP or UDP header and payload, its checksum at `sum_at` zero) in an IP header, the
/// checksums computed: IPv4 when both addresses are, else IPv6.
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, sum_at: usize) -> Vec<u8> {
    let len = l4.len();
    let finish = |c: u16| if proto == 17 && c == 0 { 0xffff } else { c };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
            let c = finish(fold(sum16(sum16(0, &pseudo), &l4)));
            l4[sum_at..sum_at + 2].copy_from_slice(&c.to_be_bytes());
            let mut ip = Vec::with_capacity(20 + len);
            ip.extend_from_slice(&[0x45, 0]);
            ip.extend_from_slice(&((20 + len) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = fold(sum16(0, &ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            ip.extend_from_slice(&l4);
            ip
        }
        (s, d) => {
            let (s, d) = (v6(s), v6(d));
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s);
            pseudo.extend_from_slice(&d);
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            let c = finish(fold(sum16(sum16(0, &pseudo), &l4)));
            l4[sum_at..sum_at + 2].copy_from_slice(&c.to_be_bytes());
            let mut ip = Vec::with_capacity(40 + len);
            ip.extend_from_slice(&[0x60, 0, 0, 0]);
            ip.extend_from_slice(&(len as u16).to_be_bytes());
            ip.extend_from_slice(&[proto, 64]);
            ip.extend_from_slice(&s);
            ip.extend_from_slice(&d);
            ip.extend_from_slice(&l4);
            ip
        }
    }
}

/// A transport whose bytes, both ways, are dumped when `dumpPackets` was on when it opened.
pub struct Dumped<S> {
    inner: S,
    dump: Option<Arc<TcpDump>>,
}

impl<S> Dumped<S> {
    /// `prefix` names the file (`rtsp_server_conn`); `local`/`remote` are the connection's
    /// addresses, `server_side` whether the remote opened it.
    pub fn new(
        inner: S,
        prefix: &str,
        local: Option<SocketAddr>,
        remote: SocketAddr,
        server_side: bool,
    ) -> Dumped<S> {
        let local = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Dumped {
            dump: TcpDump::open(prefix, local, remote, server_side),
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// A connection Tidegate opened (a pulled source, a forward) over TCP, dumped as
/// `<prefix>_<unix ns>_<id>.pcapng` when `dumpPackets` is on.
pub fn tcp_client(s: tokio::net::TcpStream, prefix: &str) -> Dumped<tokio::net::TcpStream> {
    let (local, remote) = (s.local_addr().ok(), s.peer_addr());
    match remote {
        Ok(remote) => Dumped::new(s, prefix, local, remote, false),
        Err(_) => Dumped {
            inner: s,
            dump: None,
        },
    }
}

/// As [`tcp_client`], for a TLS connection (its plain text is dumped).
pub fn tls_client(
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    prefix: &str,
) -> Dumped<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = s.get_ref().0;
    let (local, remote) = (tcp.local_addr().ok(), tcp.peer_addr());
    match remote {
        Ok(remote) => Dumped::new(s, prefix, local, remote, false),
        Err(_) => Dumped {
            inner: s,
            dump: None,
        },
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Dumped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(d)) = (&r, &self.dump) {
            d.inbound(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Dumped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(d)) = (&r, &self.dump) {
            d.outbound(&buf[..*n]);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(d)) = (&r, &self.dump) {
            d.outbound_vectored(bufs, *n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the fan-out engine writes to, dumped.
struct DumpedSink {
    inner: Arc<dyn SinkIo>,
    dump: Arc<TcpDump>,
}

impl SinkIo for DumpedSink {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.inner.try_write_vectored(bufs)?;
        self.dump.outbound_vectored(bufs, n);
        Ok(n)
    }

    fn pending(&self) -> bool {
        self.inner.pending()
    }

    fn flush(&self) -> io::Result<bool> {
        self.inner.flush()
    }
}

impl<S: Transport> Transport for Dumped<S> {
    fn shared_tcp(&self) -> Option<SharedTcp> {
        // Whoever writes to the bare socket would bypass the dump.
        if self.dump.is_some() {
            None
        } else {
            self.inner.shared_tcp()
        }
    }

    fn sink_io(&self) -> Option<(Arc<dyn SinkIo>, Arc<dyn Writable>)> {
        let (io, w) = self.inner.sink_io()?;
        match &self.dump {
            Some(d) => Some((
                Arc::new(DumpedSink {
                    inner: io,
                    dump: d.clone(),
                }) as Arc<dyn SinkIo>,
                w,
            )),
            None => Some((io, w)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let p = ip_tcp(
            "127.0.0.1:1935".parse().unwrap(),
            "127.0.0.1:40000".parse().unwrap(),
            1000,
            2000,
            0x18,
            b"hello",
        );
        assert_eq!(p.len(), 20 + 20 + 5);
        assert_eq!(fold(sum16(0, &p[..20])), 0, "IPv4 header checksum");
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 25]);
        assert_eq!(fold(sum16(sum16(0, &pseudo), &p[20..])), 0, "TCP checksum");
        let p6 = ip_tcp(
            "[::1]:554".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
            1,
            0,
            0x02,
            b"",
        );
        assert_eq!(p6[0] >> 4, 6);
        assert_eq!(p6.len(), 60);
        let u = ip_udp(
            "127.0.0.1:8000".parse().unwrap(),
            "127.0.0.1:40000".parse().unwrap(),
            b"rtp!",
        );
        assert_eq!(u.len(), 20 + 8 + 4);
        assert_eq!(fold(sum16(0, &u[..20])), 0, "IPv4 header checksum");
        let mut pseudo = u[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 17, 0, 12]);
        assert_eq!(fold(sum16(sum16(0, &pseudo), &u[20..])), 0, "UDP checksum");
        let b = enhanced_packet(SystemTime::UNIX_EPOCH, &p);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(&b[4..8], &(b.len() as u32).to_le_bytes());
    }
}
