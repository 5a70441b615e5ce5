//! UDP readers of a stream served by one task: each frame is split once, and each run of its
//! same-size RTP packets goes to every reader in one `sendmmsg` of GSO messages (the same
//! packets, one message per reader, the kernel cutting each into datagrams), instead of every
//! reader's task waking for the frame and making its own system call.
//!
//! A reader joins at PLAY when every track it set up is unicast UDP. The task keeps the frames
//! since the last key frame (as the stream's GOP cache does) and sends them to a reader that
//! joins before adding it to the live ones, so a reader starts on a key frame at once, in
//! order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tidegate_core::dump::DumpedUdp;
use tidegate_core::{Egress, Frame};
use tokio_util::sync::CancellationToken;

use crate::mux::split;

/// The most frames kept for a joining reader (a GOP longer than this is not replayed).
const MAX_GOP_FRAMES: usize = 1024;

/// One UDP reader of the stream.
pub struct Member {
    /// Per track: where its RTP and RTCP go (None: the track is not set up).
    pub dests: Vec<Option<(SocketAddr, SocketAddr)>>,
    /// Bytes and RTP packets sent to it.
    pub bytes: AtomicU64,
    pub rtp_packets: AtomicU64,
    /// Cancelled when the stream ends.
    pub ended: CancellationToken,
    /// Set when its session leaves (checked when a joiner becomes live).
    left: std::sync::atomic::AtomicBool,
}

impl Member {
    pub fn new(dests: Vec<Option<(SocketAddr, SocketAddr)>>) -> Arc<Member> {
        Arc::new(Member {
            dests,
            bytes: AtomicU64::new(0),
            rtp_packets: AtomicU64::new(0),
            ended: CancellationToken::new(),
            left: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// A stream's UDP readers and their sender.
#[derive(Default)]
pub struct UdpFanout {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Copied on change, so the task takes the current list without holding the lock.
    live: Arc<Vec<Arc<Member>>>,
    joining: Vec<Arc<Member>>,
    /// Members, joining ones included: the task stops when none is left.
    count: usize,
    sender: Option<CancellationToken>,
}

/// A reader's place in the fan-out; dropping it leaves.
pub struct Membership {
    fanout: Arc<UdpFanout>,
    member: Arc<Member>,
}

impl Membership {
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut s = self.fanout.lock();
        self.member.left.store(true, Ordering::Relaxed);
        s.count = s.count.saturating_sub(1);
        s.joining.retain(|m| !Arc::ptr_eq(m, &self.member));
        if s.live.iter().any(|m| Arc::ptr_eq(m, &self.member)) {
            let live: Vec<Arc<Member>> = s
                .live
                .iter()
                .filter(|m| !Arc::ptr_eq(m, &self.member))
                .cloned()
                .collect();
            s.live = Arc::new(live);
        }
        if s.count == 0 {
            if let Some(t) = s.sender.take() {
                t.cancel();
            }
        }
    }
}

impl UdpFanout {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `member`; the first one starts the task over `packets` (the stream's framed
    /// RTP/RTCP, plain or sealed), sending from `rtp` and `rtcp`.
    pub fn join(
        self: &Arc<Self>,
        member: Arc<Member>,
        packets: &Arc<Egress>,
        rtp: Arc<DumpedUdp>,
        rtcp: Arc<DumpedUdp>,
    ) -> Membership {
        let mut s = self.lock();
        s.joining.push(member.clone());
        s.count += 1;
        if s.sender.is_none() {
            let token = CancellationToken::new();
            s.sender = Some(token.clone());
            let sub = packets.subscribe();
            let key = packets.output().key_track();
            tokio::spawn(run(self.clone(), sub, key, rtp, rtcp, token));
        }
        Membership {
            fanout: self.clone(),
            member,
        }
    }
}

async fn run(
    fanout: Arc<UdpFanout>,
    mut sub: tidegate_core::EgressReader,
    key: Option<u32>,
    rtp: Arc<DumpedUdp>,
    rtcp: Arc<DumpedUdp>,
    token: CancellationToken,
) {
    let mut gop: Vec<Arc<Frame>> = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = token.cancelled() => return,
            f = sub.recv() => match f {
                Ok(f) => f,
                Err(_) => break,
            },
        };
        if frame.keyframe && key.is_none_or(|k| k == frame.track) {
            gop.clear();
        }
        if gop.len() < MAX_GOP_FRAMES {
            gop.push(frame.clone());
        } else {
            gop.clear(); // too long to replay: joiners wait for the next key frame
        }
        let (live, joining) = {
            let mut s = fanout.lock();
            (s.live.clone(), std::mem::take(&mut s.joining))
        };
        if !joining.is_empty() {
            // The GOP so far (this frame included) to the newcomers alone, then they are live.
            for f in &gop {
                send_frame(&rtp, &rtcp, f, &joining).await;
            }
            let mut s = fanout.lock();
            let mut next: Vec<Arc<Member>> = s.live.iter().cloned().collect();
            // A joiner whose session left during the replay is not added.
            next.extend(
                joining
                    .into_iter()
                    .filter(|m| !m.left.load(Ordering::Relaxed)),
            );
            s.live = Arc::new(next);
        }
        send_frame(&rtp, &rtcp, &frame, &live).await;
    }
    // The stream ended: every reader's session closes.
    let s = fanout.lock();
    for m in s.live.iter().chain(s.joining.iter()) {
        m.ended.cancel();
    }
}

/// One frame to `members`: each run of same-size RTP packets of a track as GSO messages in
/// `sendmmsg` calls, RTCP packets one message per reader.
async fn send_frame(rtp: &DumpedUdp, rtcp: &DumpedUdp, frame: &Frame, members: &[Arc<Member>]) {
    if members.is_empty() {
        return;
    }
    let pkts = split(frame.data.clone());
    let mut from = 0;
    while from < pkts.len() {
        let (ch, _) = pkts[from];
        let track = usize::from(ch / 2);
        if ch % 2 == 1 {
            // RTCP (a sender report): one datagram per reader.
            let to: Vec<(Bytes, SocketAddr)> = members
                .iter()
                .filter_map(|m| m.dests.get(track).copied().flatten())
                .map(|(_, rtcp_addr)| (pkts[from].1.clone(), rtcp_addr))
                .collect();
            tidegate_core::udp_batch::send_all_dumped(rtcp, &to).await;
            from += 1;
            continue;
        }
        let end = tidegate_core::udp_batch::same_size_run(&pkts, from);
        let run: Vec<&Bytes> = pkts[from..end].iter().map(|(_, b)| b).collect();
        let targets: Vec<(&Arc<Member>, SocketAddr)> = members
            .iter()
            .filter_map(|m| Some((m, m.dests.get(track).copied().flatten()?.0)))
            .collect();
        let addrs: Vec<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
        let sent = tidegate_core::udp_batch::send_run_to_many(&**rtp, &run, &addrs).await;
        for (to, _) in addrs.iter().zip(&sent).filter(|(_, ok)| **ok) {
            for p in &run {
                rtp.dump.outbound(*to, p);
            }
        }
        let bytes: u64 = run.iter().map(|b| b.len() as u64).sum();
        for ((m, _), ok) in targets.iter().zip(sent) {
            if ok {
                m.bytes.fetch_add(bytes, Ordering::Relaxed);
                m.rtp_packets.fetch_add(run.len() as u64, Ordering::Relaxed);
            }
        }
        from = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::time::{Duration, Instant};
    use tidegate_core::{CodecParams, Stream, StreamConfig, StreamDesc, Track};
    use tokio::net::UdpSocket;

    fn stream() -> Arc<Stream> {
        let desc = StreamDesc {
            tracks: vec![Track {
                id: 0,
                params: CodecParams::H264 {
                    sps: Bytes::from_static(&[0x67, 0x42, 0, 0x1e]),
                    pps: Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]),
                },
                clock_rate: 90_000,
            }],
        };
        Arc::new(Stream::new(desc, StreamConfig::default()))
    }

    /// Frame `no` of track 0: three RTP-sized packets (1000, 1000 and 300 bytes), each
    /// starting with the frame number and its index in the frame.
    fn frame(no: u8, key: bool) -> Frame {
        let mut b = BytesMut::new();
        for (i, len) in [1000usize, 1000, 300].into_iter().enumerate() {
            let mut p = vec![no; len];
            p[1] = i as u8;
            crate::message::interleaved(0, &p, &mut b);
        }
        Frame {
            track: 0,
            pts: i64::from(no) * 3000,
            dts: i64::from(no) * 3000,
            keyframe: key,
            data: b.freeze(),
            received: Instant::now(),
            params: None,
        }
    }

    /// The next `n` datagrams on `sock` as (frame, index, length), each within 5 s.
    async fn datagrams(sock: &UdpSocket, n: usize) -> Vec<(u8, u8, usize)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let len = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                .await
                .expect("a datagram within 5 s")
                .expect("recv");
            out.push((buf[0], buf[1], len));
        }
        out
    }

    fn expect(frames: &[u8]) -> Vec<(u8, u8, usize)> {
        frames
            .iter()
            .flat_map(|&f| [(f, 0, 1000), (f, 1, 1000), (f, 2, 300)])
            .collect()
    }

    #[tokio::test]
    async fn joiners_get_the_gop_in_order_then_live_frames_and_leavers_nothing() {
        let s = stream();
        let bind = || UdpSocket::bind("127.0.0.1:0");
        let dumped = |s| Arc::new(DumpedUdp::new(s, "test").expect("registered"));
        let (rtp, rtcp) = (dumped(bind().await.unwrap()), dumped(bind().await.unwrap()));
        let (a, b) = (bind().await.unwrap(), bind().await.unwrap());
        let to = |u: &UdpSocket| {
            let addr = u.local_addr().unwrap();
            vec![Some((addr, addr))]
        };
        s.write(frame(1, true));
        s.write(frame(2, false));
        let e = s.egress(|_| |f: &Frame| Some(f.data.clone()));
        let fan = e.output().extension(UdpFanout::default);
        let ma = fan.join(Member::new(to(&a)), &e, rtp.clone(), rtcp.clone());
        s.write(frame(3, false));
        // From the key frame, in order, each packet its own datagram.
        assert_eq!(datagrams(&a, 9).await, expect(&[1, 2, 3]));

        let mb = fan.join(Member::new(to(&b)), &e, rtp.clone(), rtcp.clone());
        s.write(frame(4, false));
        assert_eq!(datagrams(&b, 12).await, expect(&[1, 2, 3, 4]));
        assert_eq!(datagrams(&a, 3).await, expect(&[4]));
        assert_eq!(ma.member().rtp_packets.load(Ordering::Relaxed), 12);
        assert_eq!(ma.member().bytes.load(Ordering::Relaxed), 4 * 2300);

        // A leaver gets nothing more: b's copy of frame 5 is sent after a's would have been.
        drop(ma);
        s.write(frame(5, false));
        assert_eq!(datagrams(&b, 3).await, expect(&[5]));
        let mut buf = [0u8; 2048];
        assert!(a.try_recv(&mut buf).is_err(), "a left but still receives");

        // The stream ends: the remaining reader is told.
        s.close();
        tokio::time::timeout(Duration::from_secs(5), mb.member().ended.cancelled())
            .await
            .expect("told within 5 s");
    }
}
