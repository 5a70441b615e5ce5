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
