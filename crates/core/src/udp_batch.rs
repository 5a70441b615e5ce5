//! Sending datagrams in as few system calls as possible, instead of one `sendto` per packet:
//! a frame's RTP packets to an RTSP reader over UDP, or one SRT connection's packets of a turn. A run of packets of one size (a video frame's fragments; the last
//! may be shorter) goes as one UDP GSO send (`UDP_SEGMENT`: the kernel cuts it into datagrams
//! late, so the stack runs once per run rather than once per packet); the rest go in one
//! `sendmmsg`. Through nix's safe wrappers (the workspace forbids `unsafe`). Where GSO is
//! refused (an old kernel, a device without it), the socket falls back to `sendmmsg` for good.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dump::DumpedUdp;
use nix::sys::socket::{
    sendmmsg, sendmsg, sendto, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::udp::QuietUdp;

/// A socket the batched sends go out of: tokio's (registered for writing, so its sends wait
/// for the runtime's word that there is room) or a [`QuietUdp`] (registered for reading only:
/// a full buffer is retried a millisecond later).
pub trait UdpOut: AsRawFd + Sync {
    /// One attempt at a send that must not block (`WouldBlock` when the buffer is full).
    fn try_send<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R>;
    /// Until a send may find room.
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl UdpOut for UdpSocket {
    fn try_send<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        self.try_io(Interest::WRITABLE, f)
    }
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        self.writable()
    }
}

impl UdpOut for QuietUdp {
    fn try_send<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        f()
    }
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        self.writable()
    }
}

/// At most this many datagrams per system call.
const MAX_BATCH: usize = 64;
/// A GSO send carries at most this many bytes (the kernel's limit is 64 KiB of UDP payload).
const MAX_GSO_BYTES: usize = 60_000;

/// Cleared the first time the kernel refuses a GSO send: from then on, `sendmmsg` only.
static GSO: AtomicBool = AtomicBool::new(true);

/// Where the run of same-size packets to one place that starts at `from` ends (exclusive):
/// every packet as long as the first, but the last, which may be shorter; at most
/// [`MAX_BATCH`] packets and [`MAX_GSO_BYTES`]. `key` gives a packet's place (its address, or
/// its channel) and its length.
fn run_end_by<T, K: PartialEq>(pkts: &[T], from: usize, key: impl Fn(&T) -> (K, usize)) -> usize {
    let (to, size) = key(&pkts[from]);
    let mut end = from + 1;
    let mut bytes = size;
    let mut last = size;
    while end < pkts.len() && end - from < MAX_BATCH {
        let (place, len) = key(&pkts[end]);
        if place != to || last != size || len > size || bytes + len > MAX_GSO_BYTES {
            break;
        }
        bytes += len;
        last = len;
        end += 1;
    }
    end
}

/// [`run_end_by`] for packets with their addresses.
fn run_end<B: AsRef<[u8]>>(pkts: &[(B, SocketAddr)], from: usize) -> usize {
    run_end_by(pkts, from, |(b, a)| (*a, b.as_ref().len()))
}

/// One GSO send of a run: the kernel sends each `segment` bytes as a datagram.
fn send_gso<B: AsRef<[u8]>>(sock: &impl UdpOut, run: &[(B, SocketAddr)]) -> std::io::Result<usize> {
    let segment = run[0].0.as_ref().len() as u16;
    let iov: Vec<IoSlice<'_>> = run.iter().map(|(b, _)| IoSlice::new(b.as_ref())).collect();
    let to = SockaddrStorage::from(run[0].1);
    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
    Ok(sendmsg(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        Some(&to),
    )?)
}

/// One `sendmmsg` of the first packets of `pkts`: how many the kernel took.
fn send_some<B: AsRef<[u8]>>(
    sock: &impl UdpOut,
    pkts: &[(B, SocketAddr)],
) -> std::io::Result<usize> {
    let n = pkts.len().min(MAX_BATCH);
    let slices: Vec<[IoSlice<'_>; 1]> = pkts[..n]
        .iter()
        .map(|(b, _)| [IoSlice::new(b.as_ref())])
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = pkts[..n]
        .iter()
        .map(|(_, a)| Some(SockaddrStorage::from(*a)))
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
    let cmsgs: [ControlMessage<'_>; 0] = [];
    let sent = sendmmsg(
        sock.as_raw_fd(),
        &mut headers,
        &slices,
        &addrs,
        cmsgs,
        MsgFlags::empty(),
    )?;
    Ok(sent.count())
}

/// [`send_all`] from a socket whose datagrams are dumped (`dumpPackets`).
pub async fn send_all_dumped(sock: &DumpedUdp, pkts: &[(Bytes, SocketAddr)]) -> u64 {
    let sent = send_all(&**sock, pkts).await;
    if crate::dump::enabled() {
        for (p, to) in pkts {
            sock.dump.outbound(*to, p);
        }
    }
    sent
}

/// Sends every packet of `pkts` from `sock`, as few system calls as the kernel allows, waiting
/// while the socket buffer is full. Returns the bytes sent. A packet the kernel refuses (an
/// ICMP error queued for the socket, say) is skipped, as a failed `sendto` would be.
pub async fn send_all<B: AsRef<[u8]>>(sock: &impl UdpOut, pkts: &[(B, SocketAddr)]) -> u64 {
    let mut bytes = 0u64;
    let mut from = 0;
    let mut rest_start = None;
    while from < pkts.len() {
        let end = run_end(pkts, from);
        if end - from >= 2 && GSO.load(Ordering::Relaxed) {
            // Whatever came before this run leaves first, in order.
            if let Some(start) = rest_start.take() {
                bytes += send_mmsg_all(sock, &pkts[start..from]).await;
            }
            match send_run(sock, &pkts[from..end]).await {
                Some(sent) => {
                    bytes += sent;
                    from = end;
                    continue;
                }
                None => GSO.store(false, Ordering::Relaxed),
            }
        }
        rest_start.get_or_insert(from);
        from = end;
    }
    if let Some(start) = rest_start {
        bytes += send_mmsg_all(sock, &pkts[start..]).await;
    }
    bytes
}

/// A run as one GSO send, waiting while the buffer is full. None when the kernel refuses GSO.
async fn send_run<B: AsRef<[u8]>>(sock: &impl UdpOut, run: &[(B, SocketAddr)]) -> Option<u64> {
    loop {
        match sock.try_send(|| send_gso(sock, run)) {
            Ok(_) => return Some(run.iter().map(|(b, _)| b.as_ref().len() as u64).sum()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sock.ready().await.is_err() {
                    return Some(0);
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(code) if code == nix::libc::EINVAL || code == nix::libc::EIO || code == nix::libc::ENOPROTOOPT) =>
            {
                tracing::info!("UDP GSO refused ({e}): batched datagrams go by sendmmsg");
                return None;
            }
            // Another error (an ICMP error queued for the socket): the run is lost, as a failed
            // sendto would lose its packet.
            Err(_) => return Some(0),
        }
    }
}

/// [`run_end_by`] for a frame split by channel.
pub fn same_size_run(pkts: &[(u8, Bytes)], from: usize) -> usize {
    run_end_by(pkts, from, |(ch, b)| (*ch, b.len()))
}

/// One `sendmmsg` of the run to the first addresses of `to` (at most [`MAX_BATCH`]), each as
/// one GSO message: how many the kernel took.
fn gso_to_many(sock: &impl UdpOut, run: &[&Bytes], to: &[SocketAddr]) -> std::io::Result<usize> {
    let n = to.len().min(MAX_BATCH);
    let iov: Vec<IoSlice<'_>> = run.iter().map(|b| IoSlice::new(b)).collect();
    let slices = std::iter::repeat_n(&iov, n);
    let addrs: Vec<Option<SockaddrStorage>> = to[..n]
        .iter()
        .map(|a| Some(SockaddrStorage::from(*a)))
        .collect();
    let segment = run.first().map_or(0, |b| b.len()) as u16;
    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, Some(nix::cmsg_space!(u16)));
    let sent = sendmmsg(
        sock.as_raw_fd(),
        &mut headers,
        slices,
        &addrs,
        cmsg,
        MsgFlags::empty(),
    )?;
    Ok(sent.count())
}

/// A run of same-size packets (the last may be shorter) to every address of `to`: one GSO
/// message per address, [`MAX_BATCH`] addresses per system call; by `sendmmsg` of single
/// datagrams where the kernel refuses GSO. Returns, per address, whether it was sent.
pub async fn send_run_to_many(sock: &impl UdpOut, run: &[&Bytes], to: &[SocketAddr]) -> Vec<bool> {
    let mut sent = vec![false; to.len()];
    if run.is_empty() {
        return sent;
    }
    let mut at = 0;
    while at < to.len() && GSO.load(Ordering::Relaxed) {
        match sock.try_send(|| gso_to_many(sock, run, &to[at..])) {
            Ok(n) => {
                let n = n.max(1).min(to.len() - at);
                sent[at..at + n].iter_mut().for_each(|s| *s = true);
                at += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sock.ready().await.is_err() {
                    return sent;
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(code) if code == nix::libc::EINVAL || code == nix::libc::EIO || code == nix::libc::ENOPROTOOPT) =>
            {
                tracing::info!("UDP GSO refused ({e}): batched datagrams go by sendmmsg");
                GSO.store(false, Ordering::Relaxed);
            }
            // The first destination refused it (an ICMP error queued for the socket): skipped,
            // as a failed sendto would be.
            Err(_) => at += 1,
        }
    }
    if at < to.len() {
        let rest: Vec<(Bytes, SocketAddr)> = to[at..]
            .iter()
            .flat_map(|a| run.iter().map(move |b| ((*b).clone(), *a)))
            .collect();
        send_mmsg_all(sock, &rest).await;
        sent[at..].iter_mut().for_each(|s| *s = true);
    }
    sent
}

/// `pkts` by `sendmmsg`, waiting while the buffer is full.
async fn send_mmsg_all<B: AsRef<[u8]>>(sock: &impl UdpOut, mut pkts: &[(B, SocketAddr)]) -> u64 {
    // A lone datagram (an SRT control packet, say) by plain `sendto`: no headers to build.
    if let [(b, to)] = pkts {
        let to = SockaddrStorage::from(*to);
        loop {
            let sent = sock.try_send(|| {
                Ok(sendto(
                    sock.as_raw_fd(),
                    b.as_ref(),
                    &to,
                    MsgFlags::empty(),
                )?)
            });
            match sent {
                Ok(n) => return n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if sock.ready().await.is_err() {
                        return 0;
                    }
                }
                Err(_) => return 0,
            }
        }
    }
    let mut bytes = 0u64;
    while !pkts.is_empty() {
        match sock.try_send(|| send_some(sock, pkts)) {
            Ok(n) => {
                let n = n.max(1).min(pkts.len());
                bytes += pkts[..n]
                    .iter()
                    .map(|(b, _)| b.as_ref().len() as u64)
                    .sum::<u64>();
                pkts = &pkts[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sock.ready().await.is_err() {
                    break;
                }
            }
            Err(_) => pkts = &pkts[1..],
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_same_size_packets_to_one_address() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let p = |n: usize, to| (Bytes::from(vec![0u8; n]), to);
        let pkts = vec![
            p(30, a),
            p(1400, a),
            p(1400, a),
            p(700, a),
            p(1400, a),
            p(1400, b),
        ];
        assert_eq!(run_end(&pkts, 0), 1, "a short packet, then longer ones");
        assert_eq!(
            run_end(&pkts, 1),
            4,
            "full-size packets and a shorter last one"
        );
        assert_eq!(run_end(&pkts, 4), 5, "another address");
        assert_eq!(run_end(&pkts, 5), 6);
    }

    /// A datagram of each size to `to`, each filled with its index.
    fn numbered(sizes: &[usize], to: SocketAddr) -> Vec<(Bytes, SocketAddr)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (Bytes::from(vec![i as u8; *n]), to))
            .collect()
    }

    #[tokio::test]
    async fn a_quiet_socket_sends_runs_and_singles_and_receives_them_in_order() {
        let bind =
            || async { QuietUdp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap() };
        let (rx, tx) = (bind().await, bind().await);
        let (to, from) = (rx.local_addr().unwrap(), tx.local_addr().unwrap());
        // A run of one size with a shorter last one, then a lone datagram, then a run again.
        let sizes: Vec<usize> = std::iter::repeat_n(1200, 7)
            .chain([400, 90])
            .chain(std::iter::repeat_n(800, 3))
            .collect();
        let pkts = numbered(&sizes, to);
        assert_eq!(
            send_all(&tx, &pkts).await,
            sizes.iter().sum::<usize>() as u64
        );
        assert_eq!(tx.send_to(b"last", to).await.unwrap(), 4);
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        for _ in 0..=sizes.len() {
            let (n, source) =
                tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_from(&mut buf))
                    .await
                    .expect("in time")
                    .expect("received");
            got.push((n, source, buf[0]));
        }
        let want: Vec<(usize, SocketAddr, u8)> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, from, i as u8))
            .chain([(4, from, b'l')])
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_frame_of_runs_arrives_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        // Parameter sets, then fragments of one size and a shorter last one, twice.
        let sizes: Vec<usize> = [40, 20]
            .into_iter()
            .chain(std::iter::repeat_n(1000, 20))
            .chain([300, 50])
            .chain(std::iter::repeat_n(900, 10))
            .chain([10])
            .collect();
        let pkts = numbered(&sizes, to);
        let sent = send_all(&tx, &pkts).await;
        assert_eq!(sent, sizes.iter().sum::<usize>() as u64);
        eprintln!("UDP GSO in use: {}", GSO.load(Ordering::Relaxed));
        let mut buf = vec![0u8; 65536];
        for (i, n) in sizes.iter().enumerate() {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, *n, "datagram {i}");
            assert!(buf[..got].iter().all(|b| *b == i as u8), "datagram {i}");
        }
    }

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        // More than one system call's worth, small enough for the receive buffer.
        let pkts: Vec<(Bytes, SocketAddr)> = (0..70u8)
            .map(|i| (Bytes::from(vec![i; 200 + usize::from(i)]), to))
            .collect();
        let sent = send_all(&tx, &pkts).await;
        assert_eq!(sent, pkts.iter().map(|(b, _)| b.len() as u64).sum::<u64>());
        let mut buf = vec![0u8; 2048];
        for i in 0..70u8 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 200 + usize::from(i));
            assert!(buf[..n].iter().all(|b| *b == i));
        }
    }
}
