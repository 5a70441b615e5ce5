//! Packetize once per stream: every RTSP reader of a path sends the same RTP packets (same
//! sequence numbers, timestamps and SSRC per track), made by one task.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tidegate_core::{rescale, Egress, Frame, Muxer, Stream};
use tidegate_rtp::pack::{PackKind, Packetizer};

use crate::sdp::{self, Outgoing};

pub struct RtpMux {
    pub sdp: String,
    pub tracks: Vec<Outgoing>,
    /// Per track, the SSRC of its packets.
    pub ssrcs: Vec<u32>,
    /// The packetizers, kept with the stream (not with one egress) so that a muxer started
    /// again after its last reader left goes on with the same SSRCs and sequence numbers.
    state: Arc<Mutex<Packers>>,
    mpegts: bool,
}

struct Packers {
    /// Per track: packetizer, the input clock rate, the RTP timestamp offset.
    packers: Vec<(Packetizer, u32, u32)>,
    last_sr: Vec<Option<std::time::Instant>>,
    /// The wall-clock time and media time (s) of the first frame: every track's sender
    /// reports map media time to NTP time through this one point, so that they agree with
    /// each other (from each frame's arrival time they would differ by the publisher's
    /// interleaving jitter, and a reader that syncs by them, as ffmpeg does, would see its
    /// timestamps jump).
    sr_base: Option<(std::time::SystemTime, f64)>,
}

/// Sender reports go out with the first frame of a track, then this often.
pub const SR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl RtpMux {
    /// `mpegts`: the stream came as MPEG-TS over RTP, and goes out so (one MP2T track, the
    /// stream's tracks muxed into TS once per stream).
    pub fn new(desc: &tidegate_core::StreamDesc, mpegts: bool) -> RtpMux {
        let mpegts = mpegts && !tidegate_mpegts::mux::Muxer::new(desc).is_empty();
        let (sdp, tracks) = if mpegts {
            sdp::build_mpegts()
        } else {
            sdp::build(desc)
        };
        let packers: Vec<(Packetizer, u32, u32)> = tracks
            .iter()
            .map(|t| {
                let r = tidegate_core::text::random_u64();
                let mut p = Packetizer::new(
                    t.kind,
                    t.pt,
                    r as u32,
                    (r >> 32) as u16,
                    tidegate_core::udp::max_payload(),
                );
                if let Some(tr) = desc.track(t.track) {
                    p.set_params(&tr.params);
                }
                let clock_in = desc.track(t.track).map_or(t.clock, |tr| tr.clock_rate);
                (p, clock_in, (r >> 48) as u32)
            })
            .collect();
        let ssrcs = packers.iter().map(|(p, _, _)| p.ssrc).collect();
        RtpMux {
            sdp,
            tracks,
            ssrcs,
            state: Arc::new(Mutex::new(Packers {
                last_sr: vec![None; packers.len()],
                sr_base: None,
                packers,
            })),
            mpegts,
        }
    }

    /// The stream's RTP egress (the fan-out engine's): each frame's packets already framed for
    /// TCP-interleaved readers with the usual channel layout (track *i*: RTP on channel 2*i*,
    /// RTCP on 2*i*+1): `$ channel length packet`..., with an RTCP sender report per track
    /// every [`SR_INTERVAL`]. Such readers write these bytes as they are; the others take them
    /// apart with [`split`]. None when no track can travel over RTP.
    pub fn egress(&self, source: &Arc<Stream>) -> Option<Arc<Egress>> {
        if self.tracks.is_empty() {
            return None;
        }
        let muxer = RtpMuxer {
            source: Arc::downgrade(source),
            state: self.state.clone(),
            tracks: self.tracks.clone(),
            ts: self.mpegts.then(|| {
                (
                    tidegate_mpegts::mux::Muxer::new(&source.desc()),
                    std::time::Instant::now(),
                )
            }),
        };
        Some(source.egress(move |_| muxer))
    }
}

struct RtpMuxer {
    /// The stream muxed (weak: the stream holds its egresses).
    source: std::sync::Weak<Stream>,
    state: Arc<Mutex<Packers>>,
    tracks: Vec<Outgoing>,
    /// MP2T out: the TS muxer, and the time its RTP clock counts from (TS packets carry their
    /// own PCR and PTS; the RTP time follows arrival so that it never goes back).
    ts: Option<(tidegate_mpegts::mux::Muxer, std::time::Instant)>,
}

impl Muxer for RtpMuxer {
    fn egress_name(&self) -> &'static str {
        "rtsp"
    }

    fn mux(&mut self, frame: &Frame) -> Option<Bytes> {
        let mut ts_bytes = None;
        let idx = match &mut self.ts {
            Some((muxer, t0)) => {
                let mut b = BytesMut::new();
                muxer.write(frame, &mut b);
                if b.is_empty() {
                    return None;
                }
                ts_bytes = Some((b.freeze(), frame.received.saturating_duration_since(*t0)));
                0
            }
            None => self.tracks.iter().position(|t| t.track == frame.track)?,
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        let (p, clock_in, offset) = &mut st.packers[idx];
        let mut pkts = Vec::new();
        let ts = match &ts_bytes {
            Some((data, since)) => {
                let ts = ((since.as_micros() as u64 * 9 / 100) as u32).wrapping_add(*offset);
                p.packetize(data, ts, frame.keyframe, &mut pkts);
                ts
            }
            None => {
                if let Some(params) = &frame.params {
                    p.set_params(params);
                }
                let ts = (rescale(frame.pts, *clock_in, self.tracks[idx].clock) as u32)
                    .wrapping_add(*offset);
                p.packetize(&frame.data, ts, frame.keyframe, &mut pkts);
                ts
            }
        };
        let mut b = BytesMut::with_capacity(pkts.iter().map(|x| x.len() + 4).sum::<usize>() + 32);
        let ch = 2 * idx as u8;
        let video = matches!(
            self.tracks[idx].kind,
            PackKind::H264 | PackKind::H265 | PackKind::Vp8 | PackKind::Vp9 | PackKind::Av1
        );
        let clock_in = f64::from(st.packers[idx].1.max(1));
        // Readers join on a video keyframe (the shared output's join point): it carries a
        // report for every track, so a joiner maps all its tracks to one clock from its first
        // packet (ffmpeg's timestamps jump when a track's first report comes later). Besides,
        // each track reports every SR_INTERVAL.
        let due: Vec<usize> = if frame.keyframe && video && ts_bytes.is_none() {
            (0..st.packers.len()).collect()
        } else if st.last_sr[idx].is_none_or(|t| t.elapsed() >= SR_INTERVAL) {
            vec![idx]
        } else {
            Vec::new()
        };
        if !due.is_empty() {
            // The frame's absolute time: the source's (useAbsoluteTimestamp), else its arrival.
            let arrived = match self.source.upgrade() {
                Some(s) => s.wall_time(frame),
                None => std::time::SystemTime::now()
                    .checked_sub(frame.received.elapsed())
                    .unwrap_or_else(std::time::SystemTime::now),
            };
            let media = frame.pts as f64 / clock_in;
            // The NTP time of this frame: its arrival for MP2T (one track); for the others,
            // one mapping from media time for every track.
            let wall = if ts_bytes.is_some() {
                arrived
            } else {
                let (w0, m0) = *st.sr_base.get_or_insert((arrived, media));
                let d = std::time::Duration::from_secs_f64((media - m0).abs().min(1e9));
                if media >= m0 {
                    w0.checked_add(d)
                } else {
                    w0.checked_sub(d)
                }
                .unwrap_or(arrived)
            };
            for i in due {
                st.last_sr[i] = Some(std::time::Instant::now());
                let (p, _, offset) = &st.packers[i];
                let rtp_ts = if i == idx {
                    ts
                } else {
                    // The RTP time of `media` on track i's clock.
                    let clock = f64::from(self.tracks[i].clock);
                    ((media * clock).floor() as i64 as u32).wrapping_add(*offset)
                };
                let sr = tidegate_rtp::rtcp::sender_report(
                    p.ssrc,
                    tidegate_rtp::rtcp::ntp(wall),
                    rtp_ts,
                    p.packets,
                    p.octets,
                );
                crate::message::interleaved(2 * i as u8 + 1, &sr, &mut b);
            }
        }
        for pk in pkts {
            crate::message::interleaved(ch, &pk, &mut b);
        }
        (!b.is_empty()).then(|| b.freeze())
    }

    fn coalesce(&self) -> bool {
        true
    }

    fn units(data: &Bytes) -> u64 {
        count_rtp(data)
    }
}

/// The stream's packets as SRTP and SRTCP under one key per stream, sealed once for every
/// `RTP/SAVP` reader, unicast and multicast (as MediaMTX does). Every reader gets the same
/// packets (one SSRC and one sequence per track), so a key shared by all of them never
/// encrypts two different packets with the same keystream: the SRTP context lives with the
/// stream, and the packetizers' sequence numbers go on across muxer restarts. Readers learn the
/// key, and per track the SSRC and the rollover counter of the newest packet (MIKEY's SRTP-ID
/// map), in the DESCRIBE's `a=key-mgmt` or the SETUP's `KeyMgmt`.
pub struct SrtpMux {
    key: [u8; tidegate_rtp::srtp::MASTER_LEN],
    ssrcs: Vec<u32>,
    /// Per track: the rollover counter of the newest packet sealed.
    rocs: Arc<Vec<std::sync::atomic::AtomicU32>>,
    ctx: Arc<Mutex<tidegate_rtp::srtp::Context>>,
}

impl SrtpMux {
    /// A key for `mux`'s packets; None without randomness for a key.
    pub fn new(mux: &RtpMux) -> Option<SrtpMux> {
        let key = tidegate_rtp::srtp::random_master()?;
        let ctx = tidegate_rtp::srtp::Context::new(&key);
        let ssrcs = mux.ssrcs.clone();
        let rocs: Arc<Vec<std::sync::atomic::AtomicU32>> =
            Arc::new(ssrcs.iter().map(|_| Default::default()).collect());
        Some(SrtpMux {
            key,
            ssrcs,
            rocs,
            ctx: Arc::new(Mutex::new(ctx)),
        })
    }

    /// The sealed egress over `plain` (framed as [`RtpMux::egress`]'s, for the same readers'
    /// paths); it holds `plain` while it runs.
    pub fn egress(&self, plain: &Arc<Egress>) -> Arc<Egress> {
        let muxer = SrtpMuxer {
            ctx: self.ctx.clone(),
            ssrcs: self.ssrcs.clone(),
            rocs: self.rocs.clone(),
            _plain: plain.clone(),
        };
        plain.output().egress(move |_| muxer)
    }

    /// The base64 MIKEY message for track `idx` (`a=key-mgmt:mikey …`, `KeyMgmt`'s `data=`).
    pub fn mikey(&self, idx: usize) -> String {
        let sessions: Vec<crate::mikey::CryptoSession> = self
            .ssrcs
            .get(idx)
            .zip(self.rocs.get(idx))
            .map(|(ssrc, roc)| crate::mikey::CryptoSession {
                ssrc: *ssrc,
                roc: roc.load(std::sync::atomic::Ordering::Relaxed),
            })
            .into_iter()
            .collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(crate::mikey::build_with_sessions(&self.key, &sessions))
    }
}

struct SrtpMuxer {
    ctx: Arc<Mutex<tidegate_rtp::srtp::Context>>,
    ssrcs: Vec<u32>,
    rocs: Arc<Vec<std::sync::atomic::AtomicU32>>,
    /// The plain egress this one reads, kept running while this one runs.
    _plain: Arc<Egress>,
}

impl Muxer for SrtpMuxer {
    fn mux(&mut self, frame: &Frame) -> Option<Bytes> {
        let mut ctx = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = BytesMut::with_capacity(frame.data.len() + 256);
        for (ch, pkt) in split(frame.data.clone()) {
            let sealed = if ch % 2 == 1 {
                ctx.protect_rtcp(&pkt)
            } else {
                ctx.protect_rtp(&pkt)
            };
            if let Ok(sealed) = sealed {
                crate::message::interleaved(ch, &sealed, &mut b);
            }
            let track = usize::from(ch / 2);
            if let (Some(ssrc), Some(roc)) = (self.ssrcs.get(track), self.rocs.get(track)) {
                if let Some(r) = ctx.roc(*ssrc) {
                    roc.store(r, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        (!b.is_empty()).then(|| b.freeze())
    }

    fn coalesce(&self) -> bool {
        true
    }

    fn units(data: &Bytes) -> u64 {
        count_rtp(data)
    }
}

/// Splits a derived frame back into `(channel, packet)` (channel 2*i*: RTP of track *i*,
/// 2*i*+1: its RTCP).
pub fn split(mut data: Bytes) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    while data.len() >= 4 && data[0] == b'$' {
        let ch = data[1];
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if data.len() < 4 + len {
            break;
        }
        out.push((ch, data.slice(4..4 + len)));
        data = data.slice(4 + len..);
    }
    out
}

/// RTP packets (even channels) in interleaved-framed bytes.
pub fn count_rtp(mut d: &[u8]) -> u64 {
    let mut n = 0;
    while d.len() >= 4 && d[0] == b'$' {
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        n += u64::from(d[1].is_multiple_of(2));
        d = d.get(4 + len..).unwrap_or(&[]);
    }
    n
}
