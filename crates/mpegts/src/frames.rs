//! PES units to frames of the packet model: Annex-B to length-prefixed NAL units with
//! parameter sets taken from the stream, ADTS split into raw AAC frames, the TS Opus framing
//! removed. The tracks are declared once every stream's parameters are known.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tidegate_codec::aac::{split_adts, AudioSpecificConfig};
use tidegate_codec::opus::packet_samples;
use tidegate_codec::{h264, h265, nal};
use tidegate_core::{rescale, CodecParams, Frame, StreamDesc, Track, TrackId};

use crate::demux::{DemuxEvent, Pes};
use crate::psi::EsInfo;
use crate::stream_type;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    H264,
    H265,
    Aac,
    Opus,
    Mp3,
    Ac3,
}

struct TrackIn {
    pid: u16,
    kind: Kind,
    params: Option<CodecParams>,
    clock: u32,
    /// New parameters to attach to the next frame (after the stream started).
    changed: bool,
}

/// What the converter produced.
#[derive(Debug)]
pub enum Output {
    /// The tracks: every stream's parameters are known (or the wait was too long).
    Tracks(StreamDesc),
    Frame(Frame),
}

/// Frames held until the tracks are known; past this the stream starts with what it has.
const MAX_PENDING: usize = 300;

#[derive(Default)]
pub struct TsToFrames {
    tracks: Vec<TrackIn>,
    started: bool,
    pending: Vec<Frame>,
    /// Streams of the program that Tidegate cannot carry (KLV, private data): for the log.
    pub ignored: Vec<EsInfo>,
}

fn kind_of(es: &EsInfo) -> Option<Kind> {
    match es.stream_type {
        stream_type::H264 => Some(Kind::H264),
        stream_type::H265 => Some(Kind::H265),
        stream_type::AAC_ADTS => Some(Kind::Aac),
        stream_type::MPEG1_AUDIO | stream_type::MPEG2_AUDIO => Some(Kind::Mp3),
        stream_type::AC3 => Some(Kind::Ac3),
        stream_type::PRIVATE_DATA if es.registration == Some(*b"Opus") => Some(Kind::Opus),
        stream_type::PRIVATE_DATA if es.ac3 => Some(Kind::Ac3),
        _ => None,
    }
}

impl TsToFrames {
    pub fn on_event(&mut self, ev: DemuxEvent) -> Vec<Output> {
        match ev {
            DemuxEvent::Program(streams) => {
                self.tracks.clear();
                self.ignored.clear();
                self.started = false;
                self.pending.clear();
                for es in streams {
                    match kind_of(&es) {
                        Some(kind) => self.tracks.push(TrackIn {
                            pid: es.pid,
                            kind,
                            params: None,
                            clock: 90_000,
                            changed: false,
                        }),
                        None => self.ignored.push(es),
                    }
                }
                Vec::new()
            }
            DemuxEvent::Pes(pes) => self.on_pes(pes),
        }
    }

    fn on_pes(&mut self, pes: Pes) -> Vec<Output> {
        let Some(idx) = self.tracks.iter().position(|t| t.pid == pes.pid) else {
            return Vec::new();
        };
        let frames = self.convert(idx, &pes);
        let mut out = Vec::new();
        if self.started {
            out.extend(frames.into_iter().map(Output::Frame));
            return out;
        }
        self.pending.extend(frames);
        let all_known = self.tracks.iter().all(|t| t.params.is_some());
        if all_known || self.pending.len() >= MAX_PENDING {
            let desc = StreamDesc {
                tracks: self
                    .tracks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| {
                        Some(Track {
                            id: i as TrackId,
                            params: t.params.clone()?,
                            clock_rate: t.clock,
                        })
                    })
                    .collect(),
            };
            self.started = true;
            for t in &mut self.tracks {
                t.changed = false;
            }
            out.push(Output::Tracks(desc.clone()));
            out.extend(
                self.pending
                    .drain(..)
                    .filter(|f| desc.track(f.track).is_some())
                    .map(|mut f| {
                        f.params = None;
                        Output::Frame(f)
                    }),
            );
        }
        out
    }

    fn set_params(&mut self, idx: usize, p: CodecParams) {
        let t = &mut self.tracks[idx];
        if t.params.as_ref() != Some(&p) {
            t.changed = t.params.is_some();
            t.params = Some(p);
        }
    }

    fn take_changed(&mut self, idx: usize) -> Option<Arc<CodecParams>> {
        let t = &mut self.tracks[idx];
        if std::mem::take(&mut t.changed) {
            t.params.clone().map(Arc::new)
        } else {
            None
        }
    }

    fn convert(&mut self, idx: usize, pes: &Pes) -> Vec<Frame> {
        let Some(pts) = pes.pts else {
            return Vec::new();
        };
        let dts = pes.dts.unwrap_or(pts);
        let track = idx as TrackId;
        let frame = |pts: i64, dts: i64, keyframe: bool, data: Bytes, params| Frame {
            track,
            pts,
            dts,
            keyframe,
            data,
            received: Instant::now(),
            params,
        };
        match self.tracks[idx].kind {
            Kind::H264 => {
                let nals = nal::split_annexb(&pes.data);
                if let Some((sps, pps)) = h264::find_params(nals.iter().copied()) {
                    self.set_params(
                        idx,
                        CodecParams::H264 {
                            sps: Bytes::copy_from_slice(sps),
                            pps: Bytes::copy_from_slice(pps),
                        },
                    );
                }
                if self.tracks[idx].params.is_none() {
                    return Vec::new(); // nothing decodable before the first SPS/PPS
                }
                let keep: Vec<&[u8]> = nals
                    .iter()
                    .copied()
                    .filter(|n| {
                        !matches!(
                            h264::nal_type(n),
                            h264::NAL_AUD | h264::NAL_SPS | h264::NAL_PPS
                        )
                    })
                    .collect();
                if keep.is_empty() {
                    return Vec::new();
                }
                let key = h264::is_keyframe(keep.iter().copied());
                let params = self.take_changed(idx);
                vec![frame(pts, dts, key, nal::to_length_prefixed(keep), params)]
            }
            Kind::H265 => {
                let nals = nal::split_annexb(&pes.data);
                if let Some((vps, sps, pps)) = h265::find_params(nals.iter().copied()) {
                    self.set_params(
                        idx,
                        CodecParams::H265 {
                            vps: Bytes::copy_from_slice(vps),
                            sps: Bytes::copy_from_slice(sps),
                            pps: Bytes::copy_from_slice(pps),
                        },
                    );
                }
                if self.tracks[idx].params.is_none() {
                    return Vec::new();
                }
                let keep: Vec<&[u8]> = nals
                    .iter()
                    .copied()
                    .filter(|n| {
                        !matches!(
                            h265::nal_type(n),
                            h265::NAL_AUD | h265::NAL_VPS | h265::NAL_SPS | h265::NAL_PPS
                        )
                    })
                    .collect();
                if keep.is_empty() {
                    return Vec::new();
                }
                let key = h265::is_keyframe(keep.iter().copied());
                let params = self.take_changed(idx);
                vec![frame(pts, dts, key, nal::to_length_prefixed(keep), params)]
            }
            Kind::Aac => {
                let Ok(adts) = split_adts(&pes.data) else {
                    return Vec::new();
                };
                let Some(first) = adts.first() else {
                    return Vec::new();
                };
                let asc = AudioSpecificConfig {
                    object_type: first.config.object_type,
                    sample_rate: first.config.sample_rate,
                    channels: first.config.channels,
                };
                let rate = asc.sample_rate;
                self.tracks[idx].clock = rate;
                self.set_params(
                    idx,
                    CodecParams::Aac {
                        config: asc.to_bytes(),
                    },
                );
                let base = rescale(pts, 90_000, rate);
                let mut params = self.take_changed(idx);
                adts.iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let t = base + 1024 * i as i64;
                        frame(t, t, true, Bytes::copy_from_slice(a.payload), params.take())
                    })
                    .collect()
            }
            Kind::Opus => {
                self.tracks[idx].clock = 48_000;
                if self.tracks[idx].params.is_none() {
                    self.set_params(idx, CodecParams::Opus { channels: 2 });
                }
                let mut t = rescale(pts, 90_000, 48_000);
                let mut out = Vec::new();
                let mut rest = &pes.data[..];
                // Access units: 0x7fe0 | trim flags, sizes in 0xff runs, optional trims.
                while rest.len() >= 3 && rest[0] == 0x7f && rest[1] & 0xe0 == 0xe0 {
                    let flags = rest[1];
                    let mut pos = 2;
                    let mut size = 0usize;
                    loop {
                        let Some(&b) = rest.get(pos) else { return out };
                        pos += 1;
                        size += usize::from(b);
                        if b != 0xff {
                            break;
                        }
                    }
                    if flags & 0x10 != 0 {
                        pos += 2; // start trim
                    }
                    if flags & 0x08 != 0 {
                        pos += 2; // end trim
                    }
                    let Some(packet) = rest.get(pos..pos + size) else {
                        return out;
                    };
                    let samples = packet_samples(packet).unwrap_or(960);
                    out.push(frame(t, t, true, Bytes::copy_from_slice(packet), None));
                    t += i64::from(samples);
                    rest = &rest[pos + size..];
                }
                out
            }
            Kind::Mp3 => {
                if self.tracks[idx].params.is_none() {
                    self.set_params(idx, CodecParams::Mp3);
                }
                vec![frame(pts, dts, true, pes.data.clone(), None)]
            }
            Kind::Ac3 => {
                if self.tracks[idx].params.is_none() {
                    self.set_params(
                        idx,
                        CodecParams::Ac3 {
                            sample_rate: 48_000,
                            channels: 2,
                        },
                    );
                }
                vec![frame(pts, dts, true, pes.data.clone(), None)]
            }
        }
    }
}
