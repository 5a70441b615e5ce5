//! Sending a frame's RTP packets to a UDP reader in one system call (`sendmmsg`), instead of
//! one `sendto` per packet: UDP readers then cost about what TCP readers cost per frame.
//! Through nix's safe wrapper (the workspace forbids `unsafe`).

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// At most this many datagrams per system call.
const MAX_BATCH: usize = 64;

/// One `sendmmsg` of the first packets of `pkts`: how many the kernel took.
fn send_some(sock: &UdpSocket, pkts: &[(Bytes, SocketAddr)]) -> std::io::Result<usize> {
    let n = pkts.len().min(MAX_BATCH);
    let slices: Vec<[IoSlice<'_>; 1]> = pkts[..n].iter().map(|(b, _)| [IoSlice::new(b)]).collect();
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

/// Sends every packet of `pkts` from `sock`, as few system calls as the kernel allows, waiting
/// while the socket buffer is full. Returns the bytes sent. A packet the kernel refuses (an
/// ICMP error queued for the socket, say) is skipped, as a failed `sendto` would be.
pub async fn send_all(sock: &UdpSocket, mut pkts: &[(Bytes, SocketAddr)]) -> u64 {
    let mut bytes = 0u64;
    while !pkts.is_empty() {
        if sock.writable().await.is_err() {
            break;
        }
        match sock.try_io(Interest::WRITABLE, || send_some(sock, pkts)) {
            Ok(n) => {
                let n = n.max(1).min(pkts.len());
                bytes += pkts[..n].iter().map(|(b, _)| b.len() as u64).sum::<u64>();
                pkts = &pkts[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => pkts = &pkts[1..],
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

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
