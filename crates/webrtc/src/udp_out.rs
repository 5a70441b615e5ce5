//! Batched UDP sends for the sessions on the shared socket.
//!
//! A session collects what its `Rtc` gives out in one turn (a video frame is several packets of
//! one size and a shorter last one, an audio frame one more) and sends it here: consecutive
//! datagrams to one address leave in one `sendmsg` (one buffer per datagram, no copy), cut into
//! datagrams by the kernel (UDP GSO, `UDP_SEGMENT`) where it can. Where it cannot (an old kernel,
//! or a device without checksum offload answers EIO), GSO is switched off for the process and
//! each datagram goes on its own, as before.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams in one GSO send at most (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const MAX_SEGMENTS: usize = 64;
/// Bytes in one GSO send at most (a UDP datagram's limit, with room for headers).
const MAX_GSO_BYTES: usize = 60_000;

static GSO_OFF: AtomicBool = AtomicBool::new(false);

/// Datagrams waiting for one flush, in the order they were given.
#[derive(Default)]
pub(crate) struct Outbox {
    items: Vec<(SocketAddr, Vec<u8>)>,
}

impl Outbox {
    pub fn push(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.items.push((to, data));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything, in order; returns the number of `sendmsg` calls made.
    pub async fn flush(&mut self, sock: &UdpSocket) -> usize {
        let mut calls = 0;
        let items = std::mem::take(&mut self.items);
        let mut i = 0;
        while i < items.len() {
            let n = if GSO_OFF.load(Ordering::Relaxed) {
                1
            } else {
                run_len(&items[i..])
            };
            let run = &items[i..i + n];
            calls += 1;
            if let Err(e) = send(sock, run).await {
                if n > 1 && matches!(e.raw_os_error(), Some(errno) if is_gso_refusal(errno)) {
                    if !GSO_OFF.swap(true, Ordering::Relaxed) {
                        tracing::info!("[WebRTC] UDP segmentation offload refused ({e}): sending datagrams one by one");
                    }
                    continue;
                }
                tracing::debug!("[WebRTC] UDP send to {}: {e}", run[0].0);
            }
            i += n;
        }
        // Keep the allocation for the next turn.
        self.items = items;
        self.items.clear();
        calls
    }
}

/// EIO: the device cannot checksum a GSO datagram; EINVAL/ENOPROTOOPT: no UDP_SEGMENT here.
fn is_gso_refusal(errno: i32) -> bool {
    errno == nix::errno::Errno::EIO as i32
        || errno == nix::errno::Errno::EINVAL as i32
        || errno == nix::errno::Errno::ENOPROTOOPT as i32
}

/// How many datagrams from the start of `items` can leave in one GSO send: same address, all
/// of the first one's size but the last, which may be shorter.
fn run_len(items: &[(SocketAddr, Vec<u8>)]) -> usize {
    let (to, first) = (&items[0].0, items[0].1.len());
    let mut n = 1;
    let mut bytes = first;
    while n < items.len() && n < MAX_SEGMENTS {
        let (a, d) = (&items[n].0, items[n].1.len());
        if a != to || d > first || d == 0 || bytes + d > MAX_GSO_BYTES {
            break;
        }
        n += 1;
        bytes += d;
        if d < first {
            break;
        }
    }
    n
}

async fn send(sock: &UdpSocket, run: &[(SocketAddr, Vec<u8>)]) -> io::Result<()> {
    let to = SockaddrStorage::from(run[0].0);
    let iov: Vec<IoSlice<'_>> = run.iter().map(|(_, d)| IoSlice::new(d)).collect();
    let seg = run[0].1.len().min(usize::from(u16::MAX)) as u16;
    loop {
        let r = sock.try_io(Interest::WRITABLE, || {
            let gso = [ControlMessage::UdpGsoSegments(&seg)];
            let cmsgs: &[ControlMessage<'_>] = if run.len() > 1 { &gso } else { &[] };
            sendmsg(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), Some(&to))
                .map(|_| ())
                .map_err(io::Error::from)
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(sizes: &[(u16, usize)]) -> Vec<(SocketAddr, Vec<u8>)> {
        sizes
            .iter()
            .map(|(port, n)| (SocketAddr::from(([127, 0, 0, 1], *port)), vec![0u8; *n]))
            .collect()
    }

    #[test]
    fn runs_are_one_address_one_size_and_a_shorter_last() {
        let v = items(&[
            (1, 1200),
            (1, 1200),
            (1, 700),
            (1, 1200),
            (2, 1200),
            (2, 90),
        ]);
        assert_eq!(run_len(&v), 3);
        assert_eq!(run_len(&v[3..]), 1);
        assert_eq!(run_len(&v[4..]), 2);
        // A longer datagram starts a new run.
        let v = items(&[(1, 100), (1, 1200)]);
        assert_eq!(run_len(&v), 1);
        // Bounded in count and bytes.
        let v = items(&vec![(1, 100); 100]);
        assert_eq!(run_len(&v), MAX_SEGMENTS);
        let v = items(&vec![(1, 1400); 60]);
        assert_eq!(run_len(&v), MAX_GSO_BYTES / 1400);
    }

    #[tokio::test]
    async fn a_flush_delivers_every_datagram_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx2 = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (a, b) = (
            rx.local_addr().expect("addr"),
            rx2.local_addr().expect("addr"),
        );
        let mut out = Outbox::default();
        let mut sent = Vec::new();
        for (i, (to, len)) in [
            (a, 1200),
            (a, 1200),
            (a, 1200),
            (a, 333),
            (b, 80),
            (a, 1200),
        ]
        .into_iter()
        .enumerate()
        {
            let d = vec![i as u8; len];
            sent.push((to, d.clone()));
            out.push(to, d);
        }
        let calls = out.flush(&tx).await;
        assert!(out.is_empty());
        assert!(
            calls <= 3 || GSO_OFF.load(Ordering::Relaxed),
            "{calls} sends"
        );
        let mut buf = vec![0u8; 65536];
        for (to, d) in &sent {
            let sock = if *to == a { &rx } else { &rx2 };
            let (n, _) =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
                    .await
                    .expect("in time")
                    .expect("received");
            assert_eq!(&buf[..n], &d[..]);
        }
    }
}
