//! The sans-IO recording muxer: frames in, segments made of parts out.
//!
//! A segment starts on a key frame of the key track (the first video track, else the first
//! track) once the open one has lasted `segment_duration`, so consecutive segments meet
//! exactly: one ends where the next begins. A part ends before the sample of the key track
//! that starts `part_duration` after it, or before a sample that would take it past
//! `max_part_size`. In fMP4 each part is one `moof` + `mdat` holding the samples of every
//! track, with decode times counted from the start of its segment, so each file plays from
//! zero on its own. In MPEG-TS a part is the packets of its frames, timestamps as received.

use bytes::{Bytes, BytesMut};
use tidegate_core::{rescale, CodecParams, Frame, StreamDesc, TrackId};
use tidegate_fmp4::{InitTrack, Sample, TrackRun, VIDEO_TIMESCALE};
use tidegate_mpegts::mux::Muxer as TsMuxer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Fmp4,
    MpegTs,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "fmp4" => Some(Format::Fmp4),
            "mpegts" => Some(Format::MpegTs),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Fmp4 => "mp4",
            Format::MpegTs => "ts",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Fmp4 => "fmp4",
            Format::MpegTs => "mpegts",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MuxConfig {
    pub format: Format,
    /// 90 kHz ticks.
    pub part_duration: i64,
    pub max_part_size: u64,
    /// 90 kHz ticks.
    pub segment_duration: i64,
}

/// What the muxer produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// A segment starts. `start` is its first sample's decode time (90 kHz, source timeline);
    /// `init` is what the file begins with (fMP4: `ftyp` + `moov`; MPEG-TS: nothing).
    SegmentStart {
        start: i64,
        init: Bytes,
        codecs: Vec<String>,
    },
    /// A whole part of the open segment; `duration` in seconds.
    Part { data: Bytes, duration: f64 },
    /// The open segment is complete; `duration` in seconds.
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
    params: CodecParams,
    pending: Option<Pending>,
    ready: Vec<Sample>,
    /// Decode time of `ready[0]` (track timescale, source timeline).
    ready_base: i64,
    last_duration: u32,
}

impl TrackState {
    fn to_90k(&self, t: i64) -> i64 {
        rescale(t, self.timescale, 90_000)
    }
}

pub struct RecordMuxer {
    cfg: MuxConfig,
    tracks: Vec<TrackState>,
    key: Option<usize>,
    /// Start of the open segment (90 kHz), if one is open.
    seg_start: Option<i64>,
    part_start: i64,
    part_bytes: u64,
    part_has_samples: bool,
    fragment_seq: u32,
    init: Option<(Bytes, Vec<String>)>,
    ts: Option<TsMuxer>,
    ts_desc: StreamDesc,
    ts_buf: BytesMut,
    /// End of the last sample written (90 kHz).
    end: i64,
    /// Tracks left out, by codec name, for the log.
    pub skipped: Vec<&'static str>,
}

fn carried(format: Format, p: &CodecParams) -> bool {
    match format {
        // fMP4 holds every codec of the packet model.
        Format::Fmp4 => true,
        Format::MpegTs => matches!(
            p,
            CodecParams::H264 { .. }
                | CodecParams::H265 { .. }
                | CodecParams::Aac { .. }
                | CodecParams::Opus { .. }
                | CodecParams::Mp3
                | CodecParams::Ac3 { .. }
        ),
    }
}

impl RecordMuxer {
    pub fn new(desc: &StreamDesc, cfg: MuxConfig) -> RecordMuxer {
        let mut tracks = Vec::new();
        let mut skipped = Vec::new();
        for t in &desc.tracks {
            if !carried(cfg.format, &t.params) {
                skipped.push(t.codec().name());
                continue;
            }
            let video = t.codec().is_video();
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
                mp4_id: 0,
                params: t.params.clone(),
                pending: None,
                ready: Vec::new(),
                ready_base: 0,
                last_duration: 0,
            });
        }
        // Video first, as players expect.
        tracks.sort_by_key(|t| !t.params.codec().is_video());
        for (i, t) in tracks.iter_mut().enumerate() {
            t.mp4_id = i as u32 + 1;
        }
        let key = (!tracks.is_empty()).then_some(0);
        let ts_desc = StreamDesc {
            tracks: desc
                .tracks
                .iter()
                .filter(|t| tracks.iter().any(|x| x.source == t.id))
                .cloned()
                .collect(),
        };
        RecordMuxer {
            cfg,
            tracks,
            key,
            seg_start: None,
            part_start: 0,
            part_bytes: 0,
            part_has_samples: false,
            fragment_seq: 0,
            init: None,
            ts: None,
            ts_desc,
            ts_buf: BytesMut::new(),
            end: 0,
            skipped,
        }
    }

    /// Whether any track of the stream can be recorded in this format.
    pub fn is_usable(&self) -> bool {
        !self.tracks.is_empty()
    }

    pub fn push(&mut self, frame: &Frame, out: &mut Vec<Out>) {
        let Some(idx) = self.tracks.iter().position(|t| t.source == frame.track) else {
            return;
        };
        if let Some(p) = &frame.params {
            if **p != self.tracks[idx].params {
                self.tracks[idx].params = (**p).clone();
                if self.cfg.format == Format::Fmp4 {
                    // New parameters need a new init: this segment ends here.
                    self.finish(out);
                    self.init = None;
                } else {
                    self.ts = None;
                    self.ts_desc = StreamDesc {
                        tracks: self
                            .ts_desc
                            .tracks
                            .iter()
                            .map(|t| {
                                let mut t = t.clone();
                                if t.id == frame.track {
                                    t.params = (**p).clone();
                                }
                                t
                            })
                            .collect(),
                    };
                }
            }
        }
        if self.cfg.format == Format::MpegTs {
            self.push_ts(idx, frame, out);
            return;
        }
        let t = &mut self.tracks[idx];
        let mut dts = rescale(frame.dts, t.clock_rate, t.timescale);
        let pts = rescale(frame.pts, t.clock_rate, t.timescale);
        if let Some(prev) = &t.pending {
            if dts <= prev.dts {
                dts = prev.dts.saturating_add(1);
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

    fn open_segment(&mut self, start: i64, first: Option<&[u8]>, out: &mut Vec<Out>) -> bool {
        if self.init.is_none() {
            let key_source = self.key.map(|k| self.tracks[k].source);
            let mut inits = Vec::new();
            for t in &self.tracks {
                // A frame of the track, for codecs whose description needs one.
                let data = match (Some(t.source) == key_source, &t.pending) {
                    (true, _) => first,
                    (false, Some(p)) => Some(&p.data[..]),
                    _ => t.ready.first().map(|s| &s.data[..]),
                };
                match InitTrack::from_track(t.mp4_id, &t.params, t.clock_rate, data) {
                    Ok(i) => inits.push(i),
                    Err(e) => {
                        tracing::debug!("cannot write an init yet: {e}");
                        return false;
                    }
                }
            }
            let codecs = self
                .tracks
                .iter()
                .map(|t| t.params.codec().name().to_string())
                .collect();
            self.init = Some((tidegate_fmp4::init_segment(&inits), codecs));
        }
        let (init, codecs) = self.init.clone().unwrap_or_default();
        out.push(Out::SegmentStart {
            start,
            init,
            codecs,
        });
        self.seg_start = Some(start);
        self.part_start = start;
        self.part_bytes = 0;
        self.part_has_samples = false;
        true
    }

    /// Adds a sample whose duration is known now (`next` is where the next one starts).
    fn commit(&mut self, idx: usize, s: Pending, next: i64, out: &mut Vec<Out>) {
        let start = self.tracks[idx].to_90k(s.dts);
        let len = s.data.len() as u64;
        if self.key == Some(idx) {
            match self.seg_start {
                None => {
                    if !s.keyframe || !self.open_segment(start, Some(&s.data), out) {
                        return;
                    }
                }
                Some(seg)
                    if s.keyframe && start.saturating_sub(seg) >= self.cfg.segment_duration =>
                {
                    self.close_segment(start, out);
                    if !self.open_segment(start, Some(&s.data), out) {
                        return;
                    }
                }
                Some(_) => {
                    if self.part_has_samples
                        && (start.saturating_sub(self.part_start) >= self.cfg.part_duration
                            || self.part_bytes + len > self.cfg.max_part_size)
                    {
                        self.flush(start, out);
                    }
                }
            }
        } else {
            match self.seg_start {
                Some(seg) if start >= seg => {}
                _ => return,
            }
        }
        let t = &mut self.tracks[idx];
        let duration = next.saturating_sub(s.dts).clamp(1, i64::from(u32::MAX)) as u32;
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
        self.part_bytes += len;
        self.part_has_samples = true;
        let end = t.to_90k(next);
        self.end = self.end.max(end);
    }

    /// Writes the ready samples that start before `at` as one part; samples of other tracks
    /// that start at or after it wait for the next part.
    fn flush(&mut self, at: i64, out: &mut Vec<Out>) {
        let Some(seg) = self.seg_start else { return };
        let mut carry: Vec<(usize, i64, Vec<Sample>)> = Vec::new();
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let mut dts = t.ready_base;
            let limit = rescale(at, 90_000, t.timescale);
            if let Some(cut) = t.ready.iter().position(|s| {
                let here = dts;
                dts = dts.saturating_add(i64::from(s.duration));
                here >= limit
            }) {
                let base = t.ready_base.saturating_add(
                    t.ready[..cut]
                        .iter()
                        .map(|s| i64::from(s.duration))
                        .sum::<i64>(),
                );
                carry.push((i, base, t.ready.split_off(cut)));
            }
        }
        if self.tracks.iter().any(|t| !t.ready.is_empty()) {
            self.fragment_seq = self.fragment_seq.wrapping_add(1);
            let runs: Vec<TrackRun<'_>> = self
                .tracks
                .iter()
                .map(|t| TrackRun {
                    track_id: t.mp4_id,
                    base_decode_time: t
                        .ready_base
                        .saturating_sub(rescale(seg, 90_000, t.timescale))
                        .max(0) as u64,
                    samples: &t.ready,
                })
                .collect();
            let data = tidegate_fmp4::fragment(self.fragment_seq, &runs);
            out.push(Out::Part {
                data,
                duration: at.saturating_sub(self.part_start).max(0) as f64 / 90_000.0,
            });
        }
        for t in &mut self.tracks {
            t.ready.clear();
        }
        self.part_bytes = 0;
        for (i, base, samples) in carry {
            self.part_bytes += samples.iter().map(|s| s.data.len() as u64).sum::<u64>();
            self.tracks[i].ready_base = base;
            self.tracks[i].ready = samples;
        }
        self.part_has_samples = self.tracks.iter().any(|t| !t.ready.is_empty());
        self.part_start = at;
    }

    fn close_segment(&mut self, at: i64, out: &mut Vec<Out>) {
        let Some(start) = self.seg_start else { return };
        self.flush(at, out);
        self.seg_start = None;
        out.push(Out::SegmentEnd {
            duration: at.saturating_sub(start).max(0) as f64 / 90_000.0,
        });
    }

    fn push_ts(&mut self, idx: usize, frame: &Frame, out: &mut Vec<Out>) {
        let t = &self.tracks[idx];
        let time = rescale(frame.dts, t.clock_rate, 90_000);
        let key = self.key == Some(idx);
        if key && frame.keyframe {
            let rotate = match self.seg_start {
                None => true,
                Some(seg) => time.saturating_sub(seg) >= self.cfg.segment_duration,
            };
            if rotate {
                self.close_ts_segment(time, out);
                // A new muxer per segment: each file starts with its own PAT and PMT.
                self.ts = Some(TsMuxer::new(&self.ts_desc));
                out.push(Out::SegmentStart {
                    start: time,
                    init: Bytes::new(),
                    codecs: self
                        .ts_desc
                        .tracks
                        .iter()
                        .map(|t| t.codec().name().to_string())
                        .collect(),
                });
                self.seg_start = Some(time);
                self.part_start = time;
                self.part_has_samples = false;
            } else if self.part_has_samples
                && (time.saturating_sub(self.part_start) >= self.cfg.part_duration
                    || self.ts_buf.len() as u64 + frame.data.len() as u64 > self.cfg.max_part_size)
            {
                self.flush_ts(time, out);
            }
        } else if key
            && self.part_has_samples
            && time.saturating_sub(self.part_start) >= self.cfg.part_duration
        {
            self.flush_ts(time, out);
        }
        let Some(seg) = self.seg_start else { return };
        if time < seg && !key {
            return;
        }
        if let Some(ts) = self.ts.as_mut() {
            ts.write(frame, &mut self.ts_buf);
            self.part_has_samples = true;
            // The frame lasts until the next one; estimate with the last gap seen.
            let t = &mut self.tracks[idx];
            let prev = t.ready_base;
            if prev != 0 && time > prev {
                t.last_duration = time.saturating_sub(prev).min(i64::from(u32::MAX)) as u32;
            }
            t.ready_base = time;
            self.end = self
                .end
                .max(time.saturating_add(i64::from(t.last_duration)));
        }
    }

    fn flush_ts(&mut self, at: i64, out: &mut Vec<Out>) {
        if !self.ts_buf.is_empty() {
            out.push(Out::Part {
                data: self.ts_buf.split().freeze(),
                duration: at.saturating_sub(self.part_start).max(0) as f64 / 90_000.0,
            });
        }
        self.part_start = at;
        self.part_has_samples = false;
    }

    fn close_ts_segment(&mut self, at: i64, out: &mut Vec<Out>) {
        let Some(start) = self.seg_start.take() else {
            return;
        };
        self.flush_ts(at, out);
        out.push(Out::SegmentEnd {
            duration: at.saturating_sub(start).max(0) as f64 / 90_000.0,
        });
    }

    /// The stream ended: writes what is pending and closes the open segment.
    pub fn finish(&mut self, out: &mut Vec<Out>) {
        if self.cfg.format == Format::MpegTs {
            let end = self.end;
            self.close_ts_segment(end, out);
            return;
        }
        for idx in 0..self.tracks.len() {
            if let Some(p) = self.tracks[idx].pending.take() {
                let next = p
                    .dts
                    .saturating_add(i64::from(self.tracks[idx].last_duration.max(1)));
                self.commit(idx, p, next, out);
            }
        }
        let end = self.end;
        self.close_segment(end, out);
    }
}

#[cfg(test)]
#[path = "mux_tests.rs"]
mod tests;
