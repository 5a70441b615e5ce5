//! Process-wide UDP settings (`udpReadBufferSize`, `udpMaxPayloadSize`), read by every
//! protocol crate when it opens a UDP socket or sizes a datagram.

use std::sync::atomic::{AtomicUsize, Ordering};

static READ_BUFFER: AtomicUsize = AtomicUsize::new(0);
static MAX_PAYLOAD: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_PAYLOAD);

/// Ethernet's 1500-byte MTU less IPv6 (40) and UDP (8) headers, MediaMTX's default.
pub const DEFAULT_MAX_PAYLOAD: usize = 1452;

/// Sets both; `read_buffer` 0 keeps the system's default.
pub fn configure(read_buffer: usize, max_payload: usize) {
    READ_BUFFER.store(read_buffer, Ordering::Relaxed);
    MAX_PAYLOAD.store(max_payload.max(576), Ordering::Relaxed);
}

/// The largest UDP payload to send.
pub fn max_payload() -> usize {
    MAX_PAYLOAD.load(Ordering::Relaxed)
}

/// Applies `udpReadBufferSize` to a socket just opened (a failure is logged: the socket
/// still works with the system's buffer).
pub fn tune(socket: &tokio::net::UdpSocket) {
    let size = READ_BUFFER.load(Ordering::Relaxed);
    if size == 0 {
        return;
    }
    if let Err(e) = socket2::SockRef::from(socket).set_recv_buffer_size(size) {
        tracing::warn!("udpReadBufferSize: cannot set {size} bytes: {e}");
    }
}

/// The receive buffer the kernel gives `socket` (Linux reports twice what was asked).
pub fn read_buffer(socket: &tokio::net::UdpSocket) -> std::io::Result<usize> {
    socket2::SockRef::from(socket).recv_buffer_size()
}

/// A UDP socket watched for reading only: what a server's busy shared socket (WebRTC's) needs.
///
/// Tokio registers its `UdpSocket` for reading and writing. Linux then reports the socket
/// writable again each time one of its sent datagrams is freed, which on a socket that sends
/// thousands of datagrams a second wakes the runtime's idle worker thousands of times a second
/// for nothing (measured: 1 900 wake-ups a second with 100 WHEP viewers, docs/performance.md).
/// A UDP send does not wait for the peer, so a full send buffer is rare and short: a send that
/// finds it full retries after [`QuietUdp::writable`]'s millisecond.
pub struct QuietUdp {
    fd: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
}

/// How long a send that found the socket's buffer full waits before it tries again.
const FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

impl QuietUdp {
    /// Takes over a socket from tokio (which then no longer watches it).
    pub fn new(socket: tokio::net::UdpSocket) -> std::io::Result<QuietUdp> {
        let std = socket.into_std()?;
        std.set_nonblocking(true)?;
        // The safe constructor (deprecated for types that may hand out another descriptor
        // later; the successor is `unsafe`, which the workspace forbids). A
        // `std::net::UdpSocket` owns its one descriptor until the `AsyncFd` drops it, which is
        // what the successor's contract asks.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::with_interest(std, tokio::io::Interest::READABLE)?;
        Ok(QuietUdp { fd })
    }

    /// The socket itself (for its options, and for sends that must not wait).
    pub fn get_ref(&self) -> &std::net::UdpSocket {
        self.fd.get_ref()
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.get_ref().local_addr()
    }

    /// The next datagram and where it came from.
    pub async fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, std::net::SocketAddr)> {
        loop {
            let mut ready = self.fd.readable().await?;
            if let Ok(r) = ready.try_io(|s| s.get_ref().recv_from(buf)) {
                return r;
            }
        }
    }

    /// One datagram to `to`, waiting while the send buffer is full.
    pub async fn send_to(&self, buf: &[u8], to: std::net::SocketAddr) -> std::io::Result<usize> {
        loop {
            match self.get_ref().send_to(buf, to) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.writable().await?,
                r => return r,
            }
        }
    }

    /// Waits a moment for room in the send buffer (not watched: see the type's note).
    pub async fn writable(&self) -> std::io::Result<()> {
        tokio::time::sleep(FULL_RETRY).await;
        Ok(())
    }
}

impl std::os::fd::AsFd for QuietUdp {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.get_ref().as_fd()
    }
}

impl std::os::fd::AsRawFd for QuietUdp {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.get_ref().as_raw_fd()
    }
}
