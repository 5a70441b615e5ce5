//! Frames between str0m and the packet model: what a WHIP publisher sends becomes
//! [`Frame`]s on its path (with tracks announced once every negotiated medium has shown its
//! codec and parameters), and a path's frames become what a WHEP viewer's writer takes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use str0m::format::Codec as RtcCodec;

use str0m::media::{MediaData, MediaTime, Mid, Rid};
use tidegate_codec::{av1, h264, h265, nal, vp9};
use tidegate_core::{
    CodecParams, Frame, G711Law, Muxer, Publisher, Stream, StreamDesc, Track, TrackId,
};
use tidegate_rtp::pack::{PackKind, Packetizer};

/// Frames held while the tracks are not all known yet.
const MAX_PENDING: usize = 512;
/// How long the first medium waits for the others before the stream starts without them.
const START_GRACE: Duration = Duration::from_millis(1500);

struct InTrack {
    mid: Mid,
    id: TrackId,
    codec: RtcCodec,
    clock: u32,
    params: Option<CodecParams>,
    /// Per simulcast layer (None without simulcast): (first RTP time, its pts), so that every
    /// track and layer starts at its arrival time (layers have their own RTP clocks).
    bases: HashMap<Option<Rid>, (i64, i64)>,
    waiting_key: bool,
    last_seq: Option<u64>,
    /// Simulcast: the layer taken (the largest picture seen in a keyframe) and its pixels.
    layer: Option<(Rid, u64)>,
    /// When the layer taken last gave a frame (a layer the encoder stops is left).
    layer_seen: Option<Instant>,
    /// `useAbsoluteTimestamp`: the NTP time of the last sender report read, and the
    /// (pts, absolute time) it gave that the stream has not taken yet.
    sr_seen: Option<std::time::SystemTime>,
    absolute: Option<(i64, std::time::SystemTime)>,
    /// Whether the stream knows this track's absolute time.
    anchored: bool,
}

/// A simulcast layer that has sent nothing for this long is given up for another one.
const LAYER_STALE: Duration = Duration::from_secs(1);

/// A WHIP publisher's media on its way into the path.
pub(crate) struct Ingest {
    pub publisher: Publisher,
    pub stream: Option<Arc<Stream>>,
    epoch: Instant,
    /// Media the publisher sends (counted as the offer's m-lines are accepted).
    pub expected: usize,
    /// Where to send keyframe requests.
    pub video_mids: Vec<Mid>,
    tracks: Vec<InTrack>,
    pending: VecDeque<Frame>,
    first_data: Option<Instant>,
    /// RTP packets never recovered (gaps in the sequence numbers of delivered frames).
    pub packets_lost: u64,
    /// The simulcast layer just taken, for the session to show (taken once read).
    pub layer_taken: Option<String>,
    absolute_warned: bool,
}

/// What the session should do after a frame came in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IngestAction {
    None,
    /// The decoder state was lost (loss, or no parameters yet): ask the publisher for a keyframe.
    RequestKeyframe,
}

impl Ingest {
    pub fn new(publisher: Publisher, expected: usize) -> Ingest {
        Ingest {
            publisher,
            stream: None,
            epoch: Instant::now(),
            expected,
            video_mids: Vec::new(),
            tracks: Vec::new(),
            pending: VecDeque::new(),
            first_data: None,
            packets_lost: 0,
            layer_taken: None,
            absolute_warned: false,
        }
    }

    pub fn on_media(&mut self, d: &MediaData) -> IngestAction {
        let codec = d.params.spec().codec;
        let idx = match self.tracks.iter().position(|t| t.mid == d.mid) {
            Some(i) => i,
            None => {
                if self.stream.is_some() {
                    // Tracks are fixed once the stream started.
                    return IngestAction::None;
                }
                self.tracks.push(InTrack {
                    mid: d.mid,
                    id: self.tracks.len() as TrackId,
                    codec,
                    clock: d.params.spec().clock_rate.get(),
                    params: None,
                    bases: HashMap::new(),
                    waiting_key: true,
                    last_seq: None,
                    layer: None,
                    layer_seen: None,
                    sr_seen: None,
                    absolute: None,
                    anchored: false,
                });
                self.tracks.len() - 1
            }
        };
        self.first_data.get_or_insert(d.network_time);
        let epoch = self.epoch;
        let use_absolute = self.publisher.conf().use_absolute_timestamp;
        let t = &mut self.tracks[idx];
        if t.codec != codec {
            // A payload type switch mid-session: not supported, keep the first codec.
            return IngestAction::None;
        }
        let rtp = d.time.numer() as i64;
        let arrival = d.network_time.saturating_duration_since(epoch);
        let clock = t.clock;
        let (base_rtp, base_pts) = *t.bases.entry(d.rid).or_insert_with(|| {
            let pts = (arrival.as_micros() as i64).saturating_mul(i64::from(clock)) / 1_000_000;
            (rtp, pts)
        });
        let converted = convert(codec, &d.data);
        if let Some(rid) = d.rid {
            // Simulcast: keep one layer, the largest picture a keyframe has shown; move to a
            // larger one at its keyframe.
            let pixels = match &converted {
                Some((data, true, params)) => picture_pixels(data, params.as_ref()),
                _ => 0,
            };
            let key = matches!(&converted, Some((_, true, _)));
            // The first layer to show a keyframe is taken even when its size cannot be read.
            let stale = t
                .layer_seen
                .is_some_and(|seen| d.network_time.saturating_duration_since(seen) > LAYER_STALE);
            let better = key
                && match t.layer {
                    None => true,
                    // Up to a larger layer, or to any layer when the one taken went quiet.
                    Some((r, px)) => r != rid && (pixels > px || stale),
                };
            if better {
                tracing::info!("[WebRTC] simulcast: taking layer {rid} ({pixels} pixels)");
                self.layer_taken = Some(rid.to_string());
                t.layer = Some((rid, pixels));
                t.last_seq = None;
                t.waiting_key = true;
            }
            if t.layer.map(|(r, _)| r) != Some(rid) {
                return IngestAction::None;
            }
            t.layer_seen = Some(d.network_time);
        }
        let (first, last) = (**d.seq_range.start(), **d.seq_range.end());
        if let Some(prev) = t.last_seq {
            if first > prev + 1 {
                self.packets_lost += first - prev - 1;
            }
        }
        t.last_seq = Some(last);
        let is_video = matches!(
            codec,
            RtcCodec::H264 | RtcCodec::H265 | RtcCodec::Vp8 | RtcCodec::Vp9 | RtcCodec::Av1
        );
        if is_video && !d.contiguous && !t.waiting_key {
            t.waiting_key = true;
            return IngestAction::RequestKeyframe;
        }
        let Some((data, keyframe, params)) = converted else {
            return IngestAction::None;
        };
        let mut changed = None;
        if let Some(p) = params {
            if t.params.as_ref() != Some(&p) {
                if t.params.is_some() {
                    changed = Some(Arc::new(p.clone()));
                }
                t.params = Some(p);
            }
        }
        if t.waiting_key {
            if !keyframe || t.params.is_none() {
                return IngestAction::RequestKeyframe;
            }
            t.waiting_key = false;
        }
        let pts = rtp - base_rtp + base_pts;
        if use_absolute {
            // The publisher's sender reports (as MediaMTX: frames wait for the first one).
            if let Some(si) = &d.last_sender_info {
                if t.sr_seen != Some(si.ntp_time) {
                    t.sr_seen = Some(si.ntp_time);
                    let delta = (si.rtp_time.numer() as u32).wrapping_sub(rtp as u32) as i32;
                    t.absolute = Some((pts + i64::from(delta), si.ntp_time));
                }
            }
            if let (Some(s), Some((at_pts, at))) = (&self.stream, t.absolute.take()) {
                s.set_absolute_time(t.id, at_pts, at);
                t.anchored = true;
            }
            if !t.anchored && t.absolute.is_none() {
                if !std::mem::replace(&mut self.absolute_warned, true) {
                    tracing::warn!(
                        "[WebRTC] received RTP packets without absolute time (no RTCP sender \
                         report yet): skipping them (useAbsoluteTimestamp)"
                    );
                }
                return IngestAction::None;
            }
        }
        let frame = Frame {
            track: t.id,
            pts,
            dts: pts,
            keyframe,
            data,
            received: d.network_time,
            params: changed,
        };
        match &self.stream {
            Some(s) => s.write(frame),
            None => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back(frame);
                self.maybe_start(d.network_time);
            }
        }
        IngestAction::None
    }

    fn maybe_start(&mut self, now: Instant) {
        let ready = self.tracks.iter().filter(|t| t.params.is_some()).count();
        let all = ready >= self.expected;
        let waited = self
            .first_data
            .is_some_and(|f| now.saturating_duration_since(f) >= START_GRACE);
        if ready == 0 || !(all || waited) {
            return;
        }
        let mut order: Vec<&InTrack> = self.tracks.iter().collect();
        // Video first, as every other ingest announces its tracks.
        order.sort_by_key(|t| {
            !matches!(t.params.as_ref().map(|p| p.codec().is_video()), Some(true))
        });
        let tracks: Vec<Track> = order
            .into_iter()
            .filter_map(|t| {
                Some(Track {
                    id: t.id,
                    params: t.params.clone()?,
                    clock_rate: t.clock,
                })
            })
            .collect();
        let desc = StreamDesc { tracks };
        let stream = self.publisher.start(desc.clone());
        // Absolute times read before the stream started (useAbsoluteTimestamp).
        for t in &mut self.tracks {
            if let Some((pts, at)) = t.absolute.take() {
                stream.set_absolute_time(t.id, pts, at);
                t.anchored = true;
            }
        }
        for f in self.pending.drain(..) {
            if desc.track(f.track).is_some() {
                stream.write(f);
            }
        }
        self.stream = Some(stream);
    }

    /// Called on a timer too, so that a publisher with one silent medium still starts. Returns
    /// the simulcast layers to ask for a keyframe: every layer of a track whose layer taken
    /// went quiet, so that another can take over at once.
    pub fn tick(&mut self, now: Instant) -> Vec<(Mid, Rid)> {
        if self.stream.is_none() {
            self.maybe_start(now);
        }
        let mut want = Vec::new();
        for t in &self.tracks {
            let quiet = t
                .layer_seen
                .is_some_and(|seen| now.saturating_duration_since(seen) > LAYER_STALE);
            if quiet {
                want.extend(t.bases.keys().flatten().map(|rid| (t.mid, *rid)));
            }
        }
        want
    }
}

/// One received frame in canonical form: (data, keyframe, parameters found in it).
fn convert(codec: RtcCodec, data: &[u8]) -> Option<(Bytes, bool, Option<CodecParams>)> {
    match codec {
        RtcCodec::H264 => {
            let nals: Vec<&[u8]> = nal::split_annexb(data)
                .into_iter()
                .filter(|n| !n.is_empty() && h264::nal_type(n) != 9)
                .collect();
            if nals.is_empty() {
                return None;
            }
            let params =
                h264::find_params(nals.iter().copied()).map(|(sps, pps)| CodecParams::H264 {
                    sps: Bytes::copy_from_slice(sps),
                    pps: Bytes::copy_from_slice(pps),
                });
            let key = h264::is_keyframe(nals.iter().copied());
            Some((nal::to_length_prefixed(nals), key, params))
        }
        RtcCodec::H265 => {
            let nals: Vec<&[u8]> = nal::split_annexb(data)
                .into_iter()
                .filter(|n| n.len() >= 2 && h265::nal_type(n) != 35)
                .collect();
            if nals.is_empty() {
                return None;
            }
            let params =
                h265::find_params(nals.iter().copied()).map(|(vps, sps, pps)| CodecParams::H265 {
                    vps: Bytes::copy_from_slice(vps),
                    sps: Bytes::copy_from_slice(sps),
                    pps: Bytes::copy_from_slice(pps),
                });
            let key = h265::is_keyframe(nals.iter().copied());
            Some((nal::to_length_prefixed(nals), key, params))
        }
        RtcCodec::Av1 => {
            // str0m gives low-overhead OBUs with sizes, our canonical form. A temporal unit
            // with a sequence header starts a coded video sequence (browsers send one with
            // every keyframe).
            let mut pos = 0;
            let mut seq = None;
            while pos < data.len() {
                let obu = av1::parse_obu(&data[pos..]).ok()?;
                if obu.obu_type == av1::OBU_SEQUENCE_HEADER {
                    seq = Some(Bytes::copy_from_slice(&data[pos..pos + obu.len]));
                }
                pos += obu.len;
            }
            let key = seq.is_some();
            let params = seq.map(|sequence_header| CodecParams::Av1 { sequence_header });
            Some((Bytes::copy_from_slice(data), key, params))
        }
        RtcCodec::Vp8 => {
            let key = data.first().is_some_and(|b| b & 1 == 0);
            Some((Bytes::copy_from_slice(data), key, Some(CodecParams::Vp8)))
        }
        RtcCodec::Vp9 => {
            let key = matches!(vp9::parse_keyframe(data), Ok(Some(_)));
            Some((Bytes::copy_from_slice(data), key, Some(CodecParams::Vp9)))
        }
        RtcCodec::Opus => Some((
            Bytes::copy_from_slice(data),
            true,
            Some(CodecParams::Opus { channels: 2 }),
        )),
        RtcCodec::PCMU | RtcCodec::PCMA => Some((
            Bytes::copy_from_slice(data),
            true,
            Some(CodecParams::G711 {
                law: if codec == RtcCodec::PCMU {
                    G711Law::MuLaw
                } else {
                    G711Law::ALaw
                },
                sample_rate: 8000,
                channels: 1,
            }),
        )),
        _ => None,
    }
}

/// The picture size of a keyframe (0 when it cannot be read), to compare simulcast layers.
fn picture_pixels(data: &Bytes, params: Option<&CodecParams>) -> u64 {
    let dims = match params {
        Some(CodecParams::H264 { sps, .. }) => {
            h264::parse_sps(sps).ok().map(|i| (i.width, i.height))
        }
        Some(CodecParams::H265 { sps, .. }) => {
            h265::parse_sps(sps).ok().map(|i| (i.width, i.height))
        }
        Some(CodecParams::Av1 { sequence_header }) => av1::parse_sequence_header(sequence_header)
            .ok()
            .map(|i| (i.max_width, i.max_height)),
        Some(CodecParams::Vp9) => vp9::parse_keyframe(data)
            .ok()
            .flatten()
            .map(|i| (i.width, i.height)),
        Some(CodecParams::Vp8) if data.len() >= 10 && data[3..6] == [0x9d, 0x01, 0x2a] => {
            let w = u32::from(u16::from_le_bytes([data[6], data[7]]) & 0x3fff);
            let h = u32::from(u16::from_le_bytes([data[8], data[9]]) & 0x3fff);
            Some((w, h))
        }
        _ => None,
    };
    dims.map_or(0, |(w, h)| u64::from(w) * u64::from(h))
}

/// The str0m codec that carries a track, if WebRTC can carry it.
pub(crate) fn rtc_codec(params: &CodecParams) -> Option<RtcCodec> {
    match params {
        CodecParams::H264 { .. } => Some(RtcCodec::H264),
        CodecParams::H265 { .. } => Some(RtcCodec::H265),
        CodecParams::Vp8 => Some(RtcCodec::Vp8),
        CodecParams::Vp9 => Some(RtcCodec::Vp9),
        CodecParams::Av1 { .. } => Some(RtcCodec::Av1),
        CodecParams::Opus { .. } => Some(RtcCodec::Opus),
        CodecParams::G711 {
            law: G711Law::MuLaw,
            sample_rate: 8000,
            channels: 1,
        } => Some(RtcCodec::PCMU),
        CodecParams::G711 {
            law: G711Law::ALaw,
            sample_rate: 8000,
            channels: 1,
        } => Some(RtcCodec::PCMA),
        _ => None,
    }
}

/// The RTP clock of a codec on WebRTC.
pub(crate) fn rtc_clock(codec: RtcCodec) -> u32 {
    match codec {
        RtcCodec::Opus => 48_000,
        RtcCodec::PCMU | RtcCodec::PCMA => 8_000,
        _ => 90_000,
    }
}

/// Payload bytes in one WHEP RTP packet at most: with the RTP header, its extensions (mid,
/// abs-send-time, transport-cc: 24 bytes at most as str0m writes them) and the SRTP tag, a
/// datagram stays under 1200 bytes, as str0m's own packetizers keep it.
pub(crate) const WHEP_PAYLOAD: usize = 1100;

/// The codecs whose WHEP packets are cut once per stream (the fan-out engine's [`RtcMuxer`])
/// and written to each viewer's `Rtc` as RTP (str0m's RTP mode). A viewer of other codecs
/// (VP8, VP9, AV1) gets frames cut by its own `Rtc`.
pub(crate) fn shared_packer(codec: RtcCodec) -> Option<PackKind> {
    match codec {
        RtcCodec::H264 => Some(PackKind::H264),
        RtcCodec::H265 => Some(PackKind::H265),
        RtcCodec::Opus | RtcCodec::PCMU | RtcCodec::PCMA => Some(PackKind::Frame),
        _ => None,
    }
}

/// WHEP's muxer on the fan-out engine: every frame of a track WebRTC carries, cut into RTP
/// payloads once for all the stream's viewers. Its bytes are the payloads in order, each as
/// `length (u16) | marker (u8) | payload`; each viewer's `Rtc` adds its own header (SSRC,
/// sequence number, extensions) and SRTP.
pub(crate) struct RtcMuxer {
    tracks: Vec<(TrackId, bool, Packetizer)>,
    /// The stream's WHEP viewers now (kept by its writer).
    viewers: Arc<AtomicUsize>,
}

/// From this many WHEP viewers of a stream on, its audio waits for the next video frame
/// (`audioCoalesce`): a viewer's turn in the writer (str0m's timer sweep, its sends) then
/// serves both, 14 % less CPU per viewer at 100 viewers (docs/performance.md). Fewer viewers
/// (a call, a monitor) get each audio frame at once, as before.
pub(crate) const HOLD_FROM_VIEWERS: usize = 10;

impl RtcMuxer {
    pub fn new(desc: &StreamDesc, viewers: Arc<AtomicUsize>) -> RtcMuxer {
        let mut tracks = Vec::new();
        for t in &desc.tracks {
            let Some(kind) = rtc_codec(&t.params).and_then(shared_packer) else {
                continue;
            };
            let mut p = Packetizer::new(kind, 0, 0, 0, WHEP_PAYLOAD + 12);
            p.set_params(&t.params);
            tracks.push((t.id, t.codec().is_video(), p));
        }
        RtcMuxer { tracks, viewers }
    }
}

impl Muxer for RtcMuxer {
    fn mux(&mut self, frame: &Frame) -> Option<Bytes> {
        let (_, video, p) = self.tracks.iter_mut().find(|t| t.0 == frame.track)?;
        if let Some(params) = &frame.params {
            p.set_params(params);
        }
        let mut pkts = Vec::new();
        p.packetize(&frame.data, 0, frame.keyframe, &mut pkts);
        let mut b = BytesMut::with_capacity(pkts.iter().map(|x| x.len() - 9).sum());
        for pk in pkts.iter().filter(|pk| pk.len() > 12) {
            let payload = &pk[12..];
            b.put_u16(payload.len() as u16);
            // Audio leaves its marker off (no talkspurts here), video marks a frame's end.
            b.put_u8(u8::from(*video && pk[1] & 0x80 != 0));
            b.put_slice(payload);
        }
        (!b.is_empty()).then(|| b.freeze())
    }

    fn coalesce(&self) -> bool {
        self.viewers.load(Ordering::Relaxed) >= HOLD_FROM_VIEWERS
    }

    fn units(data: &Bytes) -> u64 {
        rtp_payloads(data).count() as u64
    }
}

/// The (marker, payload) packets of one [`RtcMuxer`] frame.
pub(crate) fn rtp_payloads(data: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 3 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let marker = rest[2] != 0;
        let payload = rest.get(3..3 + len)?;
        rest = &rest[3 + len..];
        Some((marker, payload))
    })
}

/// A track's time in the viewer's RTP clock, as the RTP header carries it.
pub(crate) fn rtp_time(pts: i64, from: u32, codec: RtcCodec) -> u32 {
    tidegate_core::rescale(pts, from, rtc_clock(codec)) as u32
}

/// A track's time as the viewer's RTP clock counts it.
pub(crate) fn media_time(pts: i64, from: u32, codec: RtcCodec) -> MediaTime {
    let to = rtc_clock(codec);
    let v = tidegate_core::rescale(pts, from, to);
    MediaTime::new(
        v.max(0) as u64,
        str0m::media::Frequency::new(to).unwrap_or(str0m::media::Frequency::NINETY_KHZ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_annexb_in_length_prefixed_out_with_params() {
        let sps = [0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0x84];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let idr = [0x65, 0x88, 0x84, 0x00];
        let mut annexb_in = Vec::new();
        for n in [&[0x09u8, 0xf0][..], &sps, &pps, &idr] {
            annexb_in.extend_from_slice(&[0, 0, 0, 1]);
            annexb_in.extend_from_slice(n);
        }
        let (data, key, params) = convert(RtcCodec::H264, &annexb_in).expect("converted");
        assert!(key);
        let p = params.expect("params");
        assert_eq!(
            p,
            CodecParams::H264 {
                sps: Bytes::copy_from_slice(&sps),
                pps: Bytes::copy_from_slice(&pps)
            }
        );
        // The access unit delimiter is dropped; length prefixes replace start codes.
        let nals = nal::split_length_prefixed(&data, 4).expect("length-prefixed");
        assert_eq!(nals.len(), 3);
        // Out to WHEP: cut once into payloads; the keyframe's parameter sets lead.
        let frame = Frame {
            track: 0,
            pts: 0,
            dts: 0,
            keyframe: true,
            data: nal::to_length_prefixed([&idr[..]]),
            received: Instant::now(),
            params: None,
        };
        let desc = StreamDesc {
            tracks: vec![Track {
                id: 0,
                params: p.clone(),
                clock_rate: 90_000,
            }],
        };
        let mut m = RtcMuxer::new(&desc, Default::default());
        let out = m.mux(&frame).expect("muxed");
        let pkts: Vec<(bool, &[u8])> = rtp_payloads(&out).collect();
        assert_eq!(pkts.len(), 3);
        assert_eq!(pkts[0], (false, &sps[..]));
        assert_eq!(pkts[1], (false, &pps[..]));
        assert_eq!(pkts[2], (true, &idr[..]));
        assert_eq!(<RtcMuxer as Muxer>::units(&out), 3);
    }

    #[test]
    fn whep_payloads_of_a_big_frame_are_fragments_under_the_limit_that_come_back_whole() {
        let sps = Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1e]);
        let pps = Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]);
        let desc = StreamDesc {
            tracks: vec![
                Track {
                    id: 0,
                    params: CodecParams::H264 {
                        sps: sps.clone(),
                        pps: pps.clone(),
                    },
                    clock_rate: 90_000,
                },
                Track {
                    id: 1,
                    params: CodecParams::Opus { channels: 2 },
                    clock_rate: 48_000,
                },
            ],
        };
        let mut m = RtcMuxer::new(&desc, Default::default());
        let big: Vec<u8> = std::iter::once(0x41u8)
            .chain((0..9000).map(|i| (i % 253) as u8))
            .collect();
        let frame = Frame {
            track: 0,
            pts: 3000,
            dts: 3000,
            keyframe: false,
            data: nal::to_length_prefixed([&big[..]]),
            received: Instant::now(),
            params: None,
        };
        let out = m.mux(&frame).expect("muxed");
        let pkts: Vec<(bool, &[u8])> = rtp_payloads(&out).collect();
        assert!(pkts.len() >= 9);
        assert!(pkts.iter().all(|(_, p)| p.len() <= WHEP_PAYLOAD));
        // Only the last fragment ends the frame.
        assert!(pkts[..pkts.len() - 1].iter().all(|(m, _)| !m));
        assert!(pkts[pkts.len() - 1].0);
        // FU-A: the NAL comes back from the fragments.
        let mut nal_back = vec![(pkts[0].1[0] & 0xe0) | (pkts[0].1[1] & 0x1f)];
        for (_, p) in &pkts {
            assert_eq!(p[0] & 0x1f, 28);
            nal_back.extend_from_slice(&p[2..]);
        }
        assert_eq!(nal_back, big);
        // An audio frame is one payload, unmarked; a truncated buffer yields what is whole.
        let opus = Frame {
            track: 1,
            data: Bytes::from_static(&[0xfc, 1, 2, 3]),
            ..frame
        };
        let out = m.mux(&opus).expect("muxed");
        assert_eq!(
            rtp_payloads(&out).collect::<Vec<_>>(),
            vec![(false, &[0xfc, 1, 2, 3][..])]
        );
        assert_eq!(rtp_payloads(&out[..5]).count(), 0);
        // A track WebRTC cannot carry is left out.
        let other = Frame { track: 7, ..opus };
        assert!(m.mux(&other).is_none());
    }

    #[test]
    fn rtp_time_rescales_to_the_rtp_clock() {
        assert_eq!(rtp_time(1000, 1000, RtcCodec::H264), 90_000);
        assert_eq!(rtp_time(960, 48_000, RtcCodec::Opus), 960);
    }

    #[test]
    fn media_time_rescales_to_the_rtp_clock() {
        let t = media_time(1000, 1000, RtcCodec::H264);
        assert_eq!(t.numer(), 90_000);
        let t = media_time(960, 48_000, RtcCodec::Opus);
        assert_eq!(t.numer(), 960);
    }

    #[test]
    fn whep_audio_is_held_from_many_viewers_on() {
        let desc = StreamDesc {
            tracks: vec![Track {
                id: 0,
                params: CodecParams::Opus { channels: 2 },
                clock_rate: 48_000,
            }],
        };
        let viewers = Arc::new(AtomicUsize::new(1));
        let m = RtcMuxer::new(&desc, viewers.clone());
        assert!(!m.coalesce(), "one viewer gets audio at once");
        viewers.store(HOLD_FROM_VIEWERS - 1, Ordering::Relaxed);
        assert!(!m.coalesce());
        viewers.store(HOLD_FROM_VIEWERS, Ordering::Relaxed);
        assert!(m.coalesce(), "many viewers: audio waits for video");
        viewers.store(0, Ordering::Relaxed);
        assert!(!m.coalesce());
    }
}
