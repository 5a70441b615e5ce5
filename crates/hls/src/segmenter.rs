//! The sans-IO segmenter: frames in, segment and part events out.
//!
//! Segments start on a key frame of the key track (video, or the audio track of an audio-only
//! stream) once the current one has lasted `segment_duration`. With parts enabled, a part ends
//! before the sample whose end would take it past `part_duration`, so no part is longer than
//! the advertised part target (as long as one frame fits in it). Each video frame is written
//! as its own fMP4 fragment (a CMAF chunk) as soon as its duration is known, that is when the
//! next frame of its track arrives, so a part being written can be streamed to players.

use bytes::{Bytes, BytesMut};
use tidegate_core::{rescale, CodecParams, Frame, StreamDesc, TrackId};
use tidegate_fmp4::{InitTrack, Sample, TrackRun, VIDEO_TIMESCALE};
use tidegate_mpegts::mux::Muxer as TsMuxer;

/// How segments are packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// fMP4 segments made of parts, with LL-HLS tags.
    LowLatency,
    /// fMP4 segments, no parts.
    Fmp4,
    /// MPEG-TS segments.
    MpegTs,
}

#[derive(Clone, Debug)]
pub struct SegmenterConfig {
    pub variant: Variant,
    pub segment_duration: f64,
    pub part_duration: f64,
    /// `hlsSegmentMaxSize`: an open segment that holds this many bytes is cut at the key
    /// track's next frame, keyframe or not (memory stays bounded under a GOP without end).
    /// 0: no bound.
    pub max_segment_bytes: u64,
}

/// One track of an init segment, alone (DASH serves each track as its own representation).
#[derive(Clone, Debug, PartialEq)]
pub struct TrackInit {
    /// The fMP4 `track_ID` its fragments carry.
    pub id: u32,
    pub video: bool,
    /// An init segment with this track only.
    pub init: Bytes,
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub sample_rate: u32,
}

/// What the segmenter produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new init segment (fMP4 variants): the tracks or their parameters changed.
    Init {
        data: Bytes,
        codecs: Vec<String>,
        resolution: Option<(u32, u32)>,
        /// The same tracks, one init segment each.
        tracks: Vec<TrackInit>,
    },
    /// A segment starts at `start` seconds of the muxer's timeline.
    SegmentStart { start: f64, discontinuity: bool },
    /// Bytes for the open part (and segment), with the fMP4 `track_ID` they carry (a CMAF
    /// chunk: one `moof` and `mdat` of one track); 0 for MPEG-TS, which mixes tracks.
    Chunk(Bytes, u32),
    /// The open part is complete.
    PartEnd { duration: f64, independent: bool },
    /// The open segment is complete (its last part ended just before).
    SegmentEnd { duration: f64 },
}

struct Pending {
    dts: i64,
    pts: i64,
    keyframe: bool,
    data: Bytes,
}

struct TrackState {
    source: TrackId,
    clock_rate: u32,
    timescale: u32,
    mp4_id: u32,
    video: bool,
    params: CodecParams,
    pending: Option<Pending>,
    ready: Vec<Sample>,
    ready_base: i64,
    last_duration: u32,
}

/// Turns the frames of one stream into segment events.
pub struct Segmenter {
    cfg: SegmenterConfig,
    tracks: Vec<TrackState>,
    /// Index in `tracks` of the track that decides cuts.
    key: Option<usize>,
    /// Source timestamp (90 kHz) that maps to `offset` on the muxer timeline.
    origin: Option<i64>,
    /// Where this stream starts on the muxer timeline, in seconds.
    offset: f64,
    /// The first segment of this stream follows another stream.
    discontinuity: bool,
    seg_start: Option<f64>,
    part_start: f64,
    part_has_samples: bool,
    part_independent: bool,
    fragment_seq: u32,
    ts: Option<TsMuxer>,
    /// End of the last sample written, on the muxer timeline.
    end: f64,
    /// End of the last sample of the key track.
    key_end: f64,
    need_init: bool,
    /// Bytes in the open segment so far.
    seg_bytes: u64,
    /// Segments cut by size, not by a keyframe.
    pub cut_by_size: u64,
    /// The stream has no track this variant can carry.
    pub unsupported: Option<String>,
}

impl Segmenter {
    /// Whether the stream has no track this variant can carry.
    pub fn carries_nothing(&self) -> bool {
        self.tracks.is_empty()
    }

    /// A segmenter for `desc` whose timeline starts at `offset` seconds; `discontinuity` marks
    /// its first segment (a new publisher after another).
    pub fn new(
        desc: &StreamDesc,
        cfg: SegmenterConfig,
        offset: f64,
        discontinuity: bool,
    ) -> Segmenter {
        let mut tracks = Vec::new();
        let mut skipped = Vec::new();
        for t in &desc.tracks {
            let carried = match cfg.variant {
                Variant::MpegTs => matches!(
                    t.params,
                    CodecParams::H264 { .. }
                        | CodecParams::H265 { .. }
                        | CodecParams::Aac { .. }
                        | CodecParams::Opus { .. }
                ),
                _ => matches!(
                    t.params,
                    CodecParams::H264 { .. }
                        | CodecParams::H265 { .. }
                        | CodecParams::Av1 { .. }
                        | CodecParams::Vp9
                        | CodecParams::Aac { .. }
                        | CodecParams::Opus { .. }
                ),
            };
            let video = t.codec().is_video();
            // One video and one audio track at most: players expect that of HLS.
            if !carried || tracks.iter().any(|x: &TrackState| x.video == video) {
                skipped.push(t.codec().name());
                continue;
            }
            let timescale = match &t.params {
                _ if video => VIDEO_TIMESCALE,
                CodecParams::Aac { config } => {
                    tidegate_codec::aac::AudioSpecificConfig::parse(config)
                        .map(|a| a.sample_rate)
                        .unwrap_or(t.clock_rate)
                }
                CodecParams::Opus { .. } => 48_000,
                _ => t.clock_rate,
            };
            tracks.push(TrackState {
                source: t.id,
                clock_rate: t.clock_rate.max(1),
                timescale: timescale.max(1),
                mp4_id: tracks.len() as u32 + 1,
                video,
                params: t.params.clone(),
                pending: None,
                ready: Vec::new(),
                ready_base: 0,
                last_duration: 0,
            });
        }
        // Video first in the init segment and in fragments.
        tracks.sort_by_key(|t| !t.video);
        for (i, t) in tracks.iter_mut().enumerate() {
            t.mp4_id = i as u32 + 1;
        }
        let key = tracks
            .iter()
            .position(|t| t.video)
            .or(if tracks.is_empty() { None } else { Some(0) });
        let unsupported = match (tracks.is_empty(), skipped.is_empty()) {
            (true, _) => Some(format!(
                "no track can be carried by HLS ({})",
                desc.codec_names().join(", ")
            )),
            (false, false) => Some(format!("tracks left out of HLS: {}", skipped.join(", "))),
            _ => None,
        };
        let ts = (cfg.variant == Variant::MpegTs).then(|| {
            let sub = StreamDesc {
                tracks: desc
                    .tracks
                    .iter()
                    .filter(|t| tracks.iter().any(|x| x.source == t.id))
                    .cloned()
                    .collect(),
            };
            TsMuxer::new(&sub)
        });
        Segmenter {
            cfg,
            tracks,
            key,
            origin: None,
            offset,
            discontinuity,
            seg_start: None,
            part_start: offset,
            part_has_samples: false,
            part_independent: false,
            fragment_seq: 0,
            ts,
            end: offset,
            key_end: offset,
            need_init: true,
            seg_bytes: 0,
            cut_by_size: 0,
            unsupported,
        }
    }

    /// Whether the stream has at least one track this variant can carry.
    pub fn is_usable(&self) -> bool {
        !self.tracks.is_empty()
    }

    /// Where the last sample written ends, on the muxer timeline (seconds).
    pub fn end(&self) -> f64 {
        self.end
    }

    /// The open segment reached `max_segment_bytes`: it is cut here (counted, and logged the
    /// first time for this stream).
    fn too_big(&mut self) -> bool {
        let max = self.cfg.max_segment_bytes;
        if max == 0 || self.seg_bytes < max {
            return false;
        }
        if self.cut_by_size == 0 {
            tracing::warn!(
                "an HLS segment reached hlsSegmentMaxSize ({max} bytes) without a keyframe: \
                 it is cut here (raise hlsSegmentMaxSize or shorten the publisher's GOP)"
            );
        }
        self.cut_by_size += 1;
        true
    }

    fn parts(&self) -> bool {
        self.cfg.variant == Variant::LowLatency
    }

    /// Feeds one frame.
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<Event>) {
        let Some(idx) = self.tracks.iter().position(|t| t.source == frame.track) else {
            return;
        };
        if let Some(p) = &frame.params {
            if **p != self.tracks[idx].params {
                self.tracks[idx].params = (**p).clone();
                if self.seg_start.is_some() && self.ts.is_none() {
                    // New parameters need a new init segment: close what is open, and mark
                    // the next segment as a discontinuity.
                    self.flush_pending(out);
                    self.close_segment(self.end, out);
                    self.discontinuity = true;
                    self.need_init = true;
                }
            }
        }
        let key = self.key == Some(idx);
        if self.origin.is_none() {
            // Start on a key frame of the key track; drop what comes before.
            if !(key && frame.keyframe) {
                return;
            }
            self.origin = Some(rescale(frame.dts, self.tracks[idx].clock_rate, 90_000));
        }
        if self.need_init && self.ts.is_none() && !(key && frame.keyframe) {
            return;
        }
        if self.need_init && self.ts.is_none() && !self.write_init(frame, out) {
            return;
        }
        let origin = self.origin.unwrap_or(0);
        let t = &mut self.tracks[idx];
        let offset_ticks = (self.offset * f64::from(t.timescale)).round() as i64;
        let base = rescale(origin, 90_000, t.timescale);
        let mut dts = rescale(frame.dts, t.clock_rate, t.timescale) - base + offset_ticks;
        let pts = rescale(frame.pts, t.clock_rate, t.timescale) - base + offset_ticks;
        if dts < offset_ticks && self.seg_start.is_none() {
            return;
        }
        if self.ts.is_some() {
            self.push_ts(idx, frame, dts, out);
            return;
        }
        if let Some(prev) = &t.pending {
            if dts <= prev.dts {
                dts = prev.dts + 1;
            }
        }
        let next = Pending {
            dts,
            pts: pts.max(dts),
            keyframe: frame.keyframe,
            data: frame.data.clone(),
        };
        if let Some(prev) = t.pending.replace(next) {
            self.commit(idx, prev, dts, out);
        }
    }

    fn write_init(&mut self, frame: &Frame, out: &mut Vec<Event>) -> bool {
        let mut inits = Vec::new();
        for t in &self.tracks {
            let first = (t.source == frame.track).then_some(&frame.data[..]);
            match InitTrack::from_params(t.mp4_id, &t.params, first) {
                Ok(i) => inits.push(i),
                Err(e) => {
                    tracing::debug!("cannot write an init segment yet: {e}");
                    return false;
                }
            }
        }
        let resolution = inits
            .iter()
            .find(|i| i.is_video())
            .map(|i| (i.width, i.height));
        let tracks = inits
            .iter()
            .map(|i| TrackInit {
                id: i.id,
                video: i.is_video(),
                init: tidegate_fmp4::init_segment(std::slice::from_ref(i)),
                codec: i.codec.clone(),
                width: i.width,
                height: i.height,
                sample_rate: i.sample_rate,
            })
            .collect();
        out.push(Event::Init {
            data: tidegate_fmp4::init_segment(&inits),
            codecs: inits.iter().map(|i| i.codec.clone()).collect(),
            resolution,
            tracks,
        });
        self.need_init = false;
        true
    }

    fn push_ts(&mut self, idx: usize, frame: &Frame, dts: i64, out: &mut Vec<Event>) {
        let t = &self.tracks[idx];
        let time = dts as f64 / f64::from(t.timescale);
        if self.key == Some(idx) && frame.keyframe {
            match self.seg_start {
                None => self.open_segment(time, out),
                Some(start) if time - start >= self.cfg.segment_duration - 1e-6 => {
                    self.close_segment(time, out);
                    self.open_segment(time, out);
                }
                _ => {}
            }
        } else if self.key == Some(idx) && self.seg_start.is_some() && self.too_big() {
            self.close_segment(time, out);
            self.open_segment(time, out);
        }
        if self.seg_start.is_none() {
            return;
        }
        if let Some(ts) = self.ts.as_mut() {
            let mut buf = BytesMut::new();
            ts.write(frame, &mut buf);
            self.seg_bytes += buf.len() as u64;
            if !buf.is_empty() {
                out.push(Event::Chunk(buf.freeze(), 0));
            }
        }
        self.part_has_samples = true;
        self.end = self.end.max(time);
    }

    fn open_segment(&mut self, start: f64, out: &mut Vec<Event>) {
        out.push(Event::SegmentStart {
            start,
            discontinuity: std::mem::take(&mut self.discontinuity),
        });
        self.seg_start = Some(start);
        self.seg_bytes = 0;
        self.part_start = start;
        self.part_has_samples = false;
        self.part_independent = false;
    }

    fn close_part(&mut self, at: f64, out: &mut Vec<Event>) {
        self.flush(out);
        if self.part_has_samples {
            out.push(Event::PartEnd {
                duration: (at - self.part_start).max(0.0),
                independent: self.part_independent,
            });
        }
        self.part_start = at;
        self.part_has_samples = false;
        self.part_independent = false;
    }

    fn close_segment(&mut self, at: f64, out: &mut Vec<Event>) {
        let Some(start) = self.seg_start.take() else {
            return;
        };
        self.close_part(at, out);
        out.push(Event::SegmentEnd {
            duration: (at - start).max(0.0),
        });
    }

    /// Adds a sample whose duration is now known (`next_dts` is where the next one starts).
    fn commit(&mut self, idx: usize, s: Pending, next_dts: i64, out: &mut Vec<Event>) {
        let ts = f64::from(self.tracks[idx].timescale);
        let start = s.dts as f64 / ts;
        let end = next_dts as f64 / ts;
        if self.key == Some(idx) {
            let too_big = self.seg_start.is_some() && self.too_big();
            match self.seg_start {
                None => {
                    if !s.keyframe {
                        return;
                    }
                    self.open_segment(start, out);
                }
                Some(seg) if s.keyframe && start - seg >= self.cfg.segment_duration - 1e-6 => {
                    self.close_segment(start, out);
                    self.open_segment(start, out);
                }
                Some(_) if too_big => {
                    self.flush(out);
                    self.close_segment(start, out);
                    self.open_segment(start, out);
                }
                Some(_) => {
                    if self.parts()
                        && self.part_has_samples
                        && end - self.part_start > self.cfg.part_duration + 1e-6
                    {
                        self.close_part(start, out);
                    }
                }
            }
            if !self.part_has_samples && s.keyframe {
                self.part_independent = true;
            }
        } else if self.seg_start.is_none() {
            return;
        }
        let t = &mut self.tracks[idx];
        let duration = (next_dts - s.dts).clamp(1, i64::from(u32::MAX)) as u32;
        t.last_duration = duration;
        if t.ready.is_empty() {
            t.ready_base = s.dts;
        }
        t.ready.push(Sample {
            duration,
            composition_offset: (s.pts - s.dts).clamp(0, i64::from(i32::MAX)) as i32,
            keyframe: s.keyframe,
            data: s.data,
        });
        self.part_has_samples = true;
        self.end = self.end.max(end);
        if self.key == Some(idx) {
            self.key_end = end;
        }
        if self.key == Some(idx) && (t.video || !self.parts()) {
            self.flush(out);
        }
    }

    /// Writes the ready samples of each track as a fragment of its own (a CMAF chunk), video
    /// first: HLS serves them one after the other in the part, DASH each track's apart.
    fn flush(&mut self, out: &mut Vec<Event>) {
        for t in &mut self.tracks {
            if t.ready.is_empty() {
                continue;
            }
            self.fragment_seq = self.fragment_seq.wrapping_add(1);
            let data = tidegate_fmp4::fragment(
                self.fragment_seq,
                &[TrackRun {
                    track_id: t.mp4_id,
                    base_decode_time: t.ready_base.max(0) as u64,
                    samples: &t.ready,
                }],
            );
            t.ready.clear();
            self.seg_bytes += data.len() as u64;
            out.push(Event::Chunk(data, t.mp4_id));
        }
    }

    /// Commits the samples still waiting for a successor (with the last duration seen).
    fn flush_pending(&mut self, out: &mut Vec<Event>) {
        for idx in 0..self.tracks.len() {
            if let Some(p) = self.tracks[idx].pending.take() {
                let d = i64::from(self.tracks[idx].last_duration.max(1));
                let next = p.dts + d;
                self.commit(idx, p, next, out);
            }
        }
    }

    /// The stream ended: writes everything pending and closes the open segment.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if self.ts.is_none() {
            self.flush_pending(out);
        }
        // The last part ends with the key track, as every other part does.
        let at = if self.ts.is_none() {
            self.key_end
        } else {
            self.end
        };
        self.close_segment(at, out);
    }
}
