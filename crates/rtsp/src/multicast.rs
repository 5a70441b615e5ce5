//! UDP multicast for RTSP readers (`multicastIPRange`, `multicastRTPPort`, `multicastRTCPPort`):
//! each track of a stream gets a group address; one task per stream sends the packets made
//! once per stream (the same RTP every reader gets) to the groups, while at least one
//! multicast reader plays it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tidegate_core::Stream;
use tokio_util::sync::CancellationToken;

use crate::mux::split;

/// The configured range and ports.
#[derive(Clone, Debug)]
pub struct MulticastConf {
    /// First address and size of `multicastIPRange` (e.g. 224.1.0.0/16).
    pub base: Ipv4Addr,
    pub size: u32,
    pub rtp_port: u16,
    pub rtcp_port: u16,
}

/// Hands out group addresses from the range, round robin.
#[derive(Debug)]
pub struct Groups {
    pub conf: MulticastConf,
    next: AtomicU32,
}

impl Groups {
    pub fn new(conf: MulticastConf) -> Groups {
        Groups {
            conf,
            next: AtomicU32::new(1),
        }
    }

    fn take(&self) -> Ipv4Addr {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.conf.size.max(1);
        Ipv4Addr::from(u32::from(self.conf.base).wrapping_add(n))
    }
}

/// A stream's groups (one per track) and its sender, shared by its multicast readers.
#[derive(Default)]
pub struct StreamGroups {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    addrs: Vec<Ipv4Addr>,
    readers: usize,
    sender: Option<CancellationToken>,
}

impl StreamGroups {
    /// The group of track `idx` of `tracks`, allocated on first use.
    pub fn group(&self, groups: &Groups, idx: usize, tracks: usize) -> Ipv4Addr {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.addrs.len() < tracks {
            let a = groups.take();
            s.addrs.push(a);
        }
        s.addrs.get(idx).copied().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// A reader starts playing: the first one starts the sender over `packets` (the stream's
    /// framed RTP/RTCP). Returns the guard that stops being counted when dropped.
    pub fn join(
        self: &Arc<Self>,
        packets: &Arc<tidegate_core::Egress>,
        conf: &MulticastConf,
    ) -> Member {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.readers += 1;
        if s.sender.is_none() {
            let token = CancellationToken::new();
            s.sender = Some(token.clone());
            let addrs = s.addrs.clone();
            let mut sub = packets.subscribe_from_next_keyframe();
            let (rtp_port, rtcp_port) = (conf.rtp_port, conf.rtcp_port);
            tokio::spawn(async move {
                let sock = match tokio::net::UdpSocket::bind("0.0.0.0:0")
                    .await
                    .and_then(|s| tidegate_core::dump::DumpedUdp::new(s, "rtsp_server_packet_conn"))
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("[RTSP] multicast socket: {e}");
                        return;
                    }
                };
                let _ = sock.get_ref().set_multicast_ttl_v4(16);
                loop {
                    let frame = tokio::select! {
                        f = sub.recv() => match f {
                            Ok(f) => f,
                            Err(_) => return,
                        },
                        _ = token.cancelled() => return,
                    };
                    for (ch, pkt) in split(frame.data.clone()) {
                        let Some(group) = addrs.get(usize::from(ch / 2)) else {
                            continue;
                        };
                        let port = if ch % 2 == 1 { rtcp_port } else { rtp_port };
                        let _ = sock.send_to(&pkt, SocketAddr::from((*group, port))).await;
                    }
                }
            });
        }
        Member {
            groups: self.clone(),
        }
    }
}

/// The groups of `stream` for readers of one profile: SRTP (`savp`) readers get groups of
/// their own, carrying the sealed packets.
pub fn stream_groups(stream: &Arc<Stream>, savp: bool) -> Arc<StreamGroups> {
    /// The SRTP readers' groups, kept apart from the plain ones on the stream.
    #[derive(Default)]
    struct Sealed(Arc<StreamGroups>);
    if savp {
        stream.extension(Sealed::default).0.clone()
    } else {
        stream.extension(StreamGroups::default)
    }
}

/// One multicast reader; the last one to leave stops the sender.
pub struct Member {
    groups: Arc<StreamGroups>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut s = self.groups.state.lock().unwrap_or_else(|e| e.into_inner());
        s.readers = s.readers.saturating_sub(1);
        if s.readers == 0 {
            if let Some(t) = s.sender.take() {
                t.cancel();
            }
        }
    }
}
