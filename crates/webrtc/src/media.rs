//! Frames between str0m and the packet model: what a WHIP publisher sends becomes
//! [`Frame`]s on its path (with tracks announced once every negotiated medium has shown its
//! codec and parameters), and a path's frames become what a WHEP viewer's writer takes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::collections::HashMap;
use str0m::format::Codec as RtcCodec;

use str0m::media::{MediaData, MediaTime, Mid, Rid};
use tidegate_codec::{av1, h264, h265, nal, vp9};
use tidegate_core::{CodecParams, Frame, G711Law, Publisher, Stream, StreamDesc, Track, TrackId};

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
                });
                self.tracks.len() - 1
            }
        };
        self.first_data.get_or_insert(d.network_time);
        let epoch = self.epoch;
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

/// A frame as a WHEP writer takes it: H.264/H.265 in Annex-B with the parameter sets before
/// every keyframe (a viewer joins on one), other codecs as they are.
pub(crate) fn egress_payload(frame: &Frame, params: &CodecParams) -> Option<Bytes> {
    match params {
        CodecParams::H264 { sps, pps } => {
            let nals = nal::split_length_prefixed(&frame.data, 4).ok()?;
            let has_sps = nals.iter().any(|n| !n.is_empty() && h264::nal_type(n) == 7);
            Some(annexb(frame.keyframe && !has_sps, &[sps, pps], &nals))
        }
        CodecParams::H265 { vps, sps, pps } => {
            let nals = nal::split_length_prefixed(&frame.data, 4).ok()?;
            let has_sps = nals.iter().any(|n| n.len() >= 2 && h265::nal_type(n) == 33);
            Some(annexb(frame.keyframe && !has_sps, &[vps, sps, pps], &nals))
        }
        _ => Some(frame.data.clone()),
    }
}

fn annexb(with_params: bool, params: &[&Bytes], nals: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(nals.iter().map(|n| n.len() + 4).sum::<usize>() + 64);
    if with_params {
        for p in params.iter().filter(|p| !p.is_empty()) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(p);
        }
    }
    for n in nals {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(n);
    }
    Bytes::from(out)
}

/// WHEP payloads made once per stream, not once per viewer: the viewers of a stream write the
/// same frames moments apart, so the last few are kept, keyed by the frame itself (held, so
/// that its address cannot be reused while it is a key).
#[derive(Default)]
pub(crate) struct EgressCache {
    recent: std::sync::Mutex<VecDeque<Made>>,
}

/// A frame and the payload made of it.
type Made = (Arc<Frame>, Arc<[u8]>);

const EGRESS_CACHE: usize = 16;

impl EgressCache {
    pub fn payload(&self, frame: &Arc<Frame>, params: &CodecParams) -> Option<Arc<[u8]>> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = recent.iter().find(|(f, _)| Arc::ptr_eq(f, frame)) {
            return Some(p.clone());
        }
        let p: Arc<[u8]> = Arc::from(&egress_payload(frame, params)?[..]);
        if recent.len() >= EGRESS_CACHE {
            recent.pop_front();
        }
        recent.push_back((frame.clone(), p.clone()));
        Some(p)
    }
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
        // Back out: a keyframe that already has its SPS is not given a second copy.
        let frame = Frame {
            track: 0,
            pts: 0,
            dts: 0,
            keyframe: true,
            data,
            received: Instant::now(),
            params: None,
        };
        let out = egress_payload(&frame, &p).expect("payload");
        assert_eq!(nal::split_annexb(&out).len(), 3);
        // A keyframe without parameter sets gets them.
        let bare = Frame {
            data: nal::to_length_prefixed([&idr[..]]),
            ..frame
        };
        let out = egress_payload(&bare, &p).expect("payload");
        let nals = nal::split_annexb(&out);
        assert_eq!(nals.len(), 3);
        assert_eq!(h264::nal_type(nals[0]), 7);
    }

    #[test]
    fn media_time_rescales_to_the_rtp_clock() {
        let t = media_time(1000, 1000, RtcCodec::H264);
        assert_eq!(t.numer(), 90_000);
        let t = media_time(960, 48_000, RtcCodec::Opus);
        assert_eq!(t.numer(), 960);
    }
}
