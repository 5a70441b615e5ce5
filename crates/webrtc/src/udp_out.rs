//! Batched UDP sends for the sessions on the shared socket.
//!
//! A session collects what its `Rtc` gives out in one turn (a video frame is several packets of
//! one size and a shorter last one, an audio frame one more) and sends it here, through the
//! project's one batched UDP sender ([`tidegate_core::udp_batch`]): consecutive datagrams to
//! one address leave in one `sendmsg` (one buffer per datagram, no copy), cut into datagrams by
//! the kernel (UDP GSO, `UDP_SEGMENT`) where it can; where it cannot, by `sendmmsg`.

use std::net::SocketAddr;

/// Datagrams waiting for one flush, in the order they were given.
#[derive(Default)]
pub(crate) struct Outbox {
    items: Vec<(Vec<u8>, SocketAddr)>,
}

impl Outbox {
    pub fn push(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.items.push((data, to));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything, in order (a datagram the kernel refuses is lost, as a failed `sendto`
    /// would lose it; SRTP's receivers see a loss), and keeps the allocation for the next turn.
    pub async fn flush(&mut self, sock: &impl tidegate_core::udp_batch::UdpOut) {
        tidegate_core::udp_batch::send_all(sock, &self.items).await;
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UdpSocket;

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
        out.flush(&tx).await;
        assert!(out.is_empty());
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
