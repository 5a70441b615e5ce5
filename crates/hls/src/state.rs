//! What a muxer has produced so far: init segments, segments and parts, and the playlists
//! made from them. Shared between the muxer task (which applies [`Event`]s) and HTTP handlers.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::segmenter::{Event, TrackInit, Variant};

pub struct Part {
    pub duration: f64,
    pub independent: bool,
    /// Empty once its segment is on disk (`hlsDirectory`): then at `offset` in the file.
    pub data: Bytes,
    pub offset: u64,
    pub len: u64,
}

pub struct Segment {
    pub msn: u64,
    pub start: f64,
    pub duration: f64,
    pub pdt: SystemTime,
    pub discontinuity: bool,
    pub init: u32,
    pub parts: Vec<Arc<Part>>,
    pub complete: bool,
    pub bytes: usize,
    /// The segment's CMAF chunks by fMP4 `track_ID` (DASH serves each track's apart); shared
    /// with the parts' bytes, not copied.
    pub tracks: Vec<(u32, Vec<Bytes>)>,
    /// It started after a DASH client came: `tracks` holds all of it.
    pub dash: bool,
    /// `hlsDirectory`: the complete segment's file; its parts' bytes are read from it.
    pub file: Option<std::path::PathBuf>,
}

impl Segment {
    /// The chunks of track `id` so far.
    pub fn track(&self, id: u32) -> &[Bytes] {
        self.tracks
            .iter()
            .find(|(t, _)| *t == id)
            .map_or(&[][..], |(_, c)| &c[..])
    }
}

pub struct State {
    pub prefix: String,
    pub variant: Variant,
    pub part_target: f64,
    pub segment_count: usize,
    pub inits: Vec<(u32, Bytes)>,
    /// The same init segments, one per track (DASH), by version.
    pub track_inits: Vec<(u32, Vec<TrackInit>)>,
    pub init_version: u32,
    pub codecs: Vec<String>,
    pub resolution: Option<(u32, u32)>,
    pub frame_rate: Option<f64>,
    pub segments: VecDeque<Segment>,
    /// Chunks of the part being written (of the last, open segment).
    pub open_part: Vec<Bytes>,
    pub next_msn: u64,
    pub target_duration: u64,
    pub discontinuity_sequence: u64,
    /// Wall-clock time of timeline 0.
    pub wall0: SystemTime,
    pub max_bitrate: f64,
    /// A DASH client asked for this stream: segments keep their chunks by track from now on.
    pub dash: bool,
    /// Why this stream cannot be served at all (no track the variant carries), for clients.
    pub refused: Option<String>,
    /// `hlsDirectory`: complete segments are kept in files here (the path's own directory)
    /// instead of memory.
    pub directory: Option<std::path::PathBuf>,
}

impl State {
    pub fn new(
        prefix: String,
        variant: Variant,
        segment_duration: f64,
        part_target: f64,
        segment_count: usize,
    ) -> State {
        State {
            prefix,
            variant,
            part_target,
            segment_count,
            inits: Vec::new(),
            track_inits: Vec::new(),
            init_version: 0,
            codecs: Vec::new(),
            resolution: None,
            frame_rate: None,
            segments: VecDeque::new(),
            open_part: Vec::new(),
            next_msn: 0,
            target_duration: segment_duration.ceil().max(1.0) as u64,
            discontinuity_sequence: 0,
            wall0: SystemTime::now(),
            max_bitrate: 0.0,
            dash: false,
            refused: None,
            directory: None,
        }
    }

    /// Extension of segment files.
    pub fn ext(&self) -> &'static str {
        match self.variant {
            Variant::MpegTs => "ts",
            _ => "mp4",
        }
    }

    pub fn apply(&mut self, ev: Event) {
        match ev {
            Event::Init {
                data,
                codecs,
                resolution,
                tracks,
            } => {
                self.init_version += 1;
                self.inits.push((self.init_version, data));
                self.track_inits.push((self.init_version, tracks));
                self.codecs = codecs;
                self.resolution = resolution;
            }
            Event::SegmentStart {
                start,
                discontinuity,
            } => {
                self.open_part.clear();
                let msn = self.next_msn;
                self.next_msn += 1;
                self.segments.push_back(Segment {
                    msn,
                    start,
                    duration: 0.0,
                    pdt: self.wall0 + Duration::from_secs_f64(start.max(0.0)),
                    discontinuity,
                    init: self.init_version,
                    parts: Vec::new(),
                    complete: false,
                    bytes: 0,
                    tracks: Vec::new(),
                    dash: self.dash && self.variant != Variant::MpegTs,
                    file: None,
                });
            }
            Event::Chunk(b, track) => {
                if let Some(seg) = self.segments.back_mut() {
                    seg.bytes += b.len();
                    if seg.dash {
                        match seg.tracks.iter_mut().find(|(t, _)| *t == track) {
                            Some((_, chunks)) => chunks.push(b.clone()),
                            None => seg.tracks.push((track, vec![b.clone()])),
                        }
                    }
                }
                self.open_part.push(b)
            }
            Event::PartEnd {
                duration,
                independent,
            } => {
                let data = concat(&std::mem::take(&mut self.open_part));
                if let Some(seg) = self.segments.back_mut().filter(|s| !s.complete) {
                    let offset = seg.parts.iter().map(|p| p.len).sum();
                    seg.parts.push(Arc::new(Part {
                        duration,
                        independent,
                        len: data.len() as u64,
                        offset,
                        data,
                    }));
                }
            }
            Event::SegmentEnd { duration } => {
                if let Some(seg) = self.segments.back_mut().filter(|s| !s.complete) {
                    seg.duration = duration;
                    seg.complete = true;
                    self.target_duration =
                        self.target_duration.max(duration.round().max(1.0) as u64);
                    if duration > 0.1 {
                        self.max_bitrate = self.max_bitrate.max(seg.bytes as f64 * 8.0 / duration);
                    }
                }
                self.store_last_segment();
                while self.segments.iter().filter(|s| s.complete).count() > self.segment_count {
                    if let Some(old) = self.segments.pop_front() {
                        if old.discontinuity {
                            self.discontinuity_sequence += 1;
                        }
                        if let Some(f) = &old.file {
                            let _ = std::fs::remove_file(f);
                        }
                    }
                }
                if let Some(first) = self.segments.front().map(|s| s.init) {
                    self.inits.retain(|(v, _)| *v >= first);
                    self.track_inits.retain(|(v, _)| *v >= first);
                }
            }
        }
    }

    /// `hlsDirectory`: the segment just completed goes to its file, and its parts' bytes
    /// leave memory (served from the file). A write that fails keeps it in memory (logged).
    fn store_last_segment(&mut self) {
        let Some(dir) = &self.directory else { return };
        let ext = self.ext();
        let Some(seg) = self
            .segments
            .back_mut()
            .filter(|s| s.complete && s.file.is_none())
        else {
            return;
        };
        let file = dir.join(format!("{}_seg{}.{ext}", self.prefix, seg.msn));
        let data = concat(&seg.parts.iter().map(|p| p.data.clone()).collect::<Vec<_>>());
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, &data)) {
            tracing::warn!("[HLS] hlsDirectory: {}: {e}", file.display());
            return;
        }
        seg.parts = seg
            .parts
            .iter()
            .map(|p| {
                Arc::new(Part {
                    duration: p.duration,
                    independent: p.independent,
                    data: Bytes::new(),
                    offset: p.offset,
                    len: p.len,
                })
            })
            .collect();
        seg.file = Some(file);
    }

    /// Whether a playlist can be served: one segment is complete.
    pub fn ready(&self) -> bool {
        self.segments.iter().any(|s| s.complete)
    }

    pub fn open_segment(&self) -> Option<&Segment> {
        self.segments.back().filter(|s| !s.complete)
    }

    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments.get(msn.checked_sub(first)? as usize)
    }

    /// The last media sequence number the playlist shows (the open segment's, when parts are
    /// listed).
    pub fn last_msn(&self) -> Option<u64> {
        self.segments.back().map(|s| s.msn)
    }

    /// Whether a blocking request for `msn` (and `part`) can be answered.
    pub fn has(&self, msn: u64, part: Option<u64>) -> bool {
        let Some(last) = self.segments.back() else {
            return false;
        };
        if last.msn > msn {
            return true;
        }
        if last.msn < msn {
            return false;
        }
        match part {
            None => last.complete,
            Some(p) => last.complete || (last.parts.len() as u64) > p,
        }
    }

    /// Average bandwidth over the window, bits per second.
    pub fn average_bitrate(&self) -> f64 {
        let (bytes, dur) = self
            .segments
            .iter()
            .filter(|s| s.complete)
            .fold((0usize, 0.0), |(b, d), s| (b + s.bytes, d + s.duration));
        if dur > 0.0 {
            bytes as f64 * 8.0 / dur
        } else {
            0.0
        }
    }

    pub fn multivariant(&self, query: &str) -> String {
        let mut o = String::from("#EXTM3U\n");
        let _ = writeln!(o, "#EXT-X-VERSION:{}", self.version());
        o.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n\n");
        let avg = self.average_bitrate();
        let max = self.max_bitrate.max(avg);
        let _ = write!(
            o,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={}",
            max.ceil() as u64,
            avg.ceil() as u64
        );
        if !self.codecs.is_empty() {
            let _ = write!(o, ",CODECS=\"{}\"", self.codecs.join(","));
        }
        if let Some((w, h)) = self.resolution {
            let _ = write!(o, ",RESOLUTION={w}x{h}");
        }
        if let Some(f) = self.frame_rate {
            let _ = write!(o, ",FRAME-RATE={f:.3}");
        }
        let _ = write!(o, "\nstream.m3u8{query}\n");
        o
    }

    fn version(&self) -> u32 {
        match self.variant {
            Variant::LowLatency => 9,
            Variant::Fmp4 => 7,
            Variant::MpegTs => 3,
        }
    }

    /// The media playlist; `skip` asks for a delta update.
    pub fn media(&self, skip: bool, query: &str) -> String {
        let ll = self.variant == Variant::LowLatency;
        let td = self.target_duration;
        let mut o = String::from("#EXTM3U\n");
        let _ = writeln!(o, "#EXT-X-VERSION:{}", self.version());
        let _ = writeln!(o, "#EXT-X-TARGETDURATION:{td}");
        let skip_until = 6.0 * td as f64;
        if ll {
            let _ = writeln!(
                o,
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={:.1},PART-HOLD-BACK={:.3}",
                skip_until,
                self.part_target * 3.0
            );
            let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={:.3}", self.part_target);
        }
        let first = self.segments.front().map_or(0, |s| s.msn);
        let _ = writeln!(o, "#EXT-X-MEDIA-SEQUENCE:{first}");
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(
                o,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                self.discontinuity_sequence
            );
        }
        // Delta update: skip leading segments while what is left lasts CAN-SKIP-UNTIL.
        let mut skipped = 0;
        if ll && skip {
            let complete: Vec<&Segment> = self.segments.iter().filter(|s| s.complete).collect();
            let mut rest: f64 = self.segments.iter().map(|s| s.duration).sum();
            for s in &complete {
                if rest - s.duration < skip_until {
                    break;
                }
                rest -= s.duration;
                skipped += 1;
            }
            if skipped > 0 {
                let _ = writeln!(o, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
            }
        }
        let end: f64 = self.segments.back().map_or(0.0, |s| {
            s.start
                + s.duration
                + s.parts.iter().map(|p| p.duration).sum::<f64>() * f64::from(u8::from(!s.complete))
        });
        let mut map: Option<u32> = None;
        for s in self.segments.iter().skip(skipped) {
            if s.discontinuity {
                o.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if self.variant != Variant::MpegTs && map != Some(s.init) {
                let _ = writeln!(
                    o,
                    "#EXT-X-MAP:URI=\"{}_init{}.mp4{query}\"",
                    self.prefix, s.init
                );
                map = Some(s.init);
            }
            let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339(s.pdt));
            if ll && (!s.complete || end - (s.start + s.duration) < 3.0 * td as f64) {
                for (i, p) in s.parts.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "#EXT-X-PART:DURATION={:.5},URI=\"{}_part{}_{}.mp4{query}\"{}",
                        p.duration,
                        self.prefix,
                        s.msn,
                        i,
                        if p.independent {
                            ",INDEPENDENT=YES"
                        } else {
                            ""
                        }
                    );
                }
            }
            if s.complete {
                let _ = writeln!(o, "#EXTINF:{:.5},", s.duration);
                let _ = writeln!(o, "{}_seg{}.{}{query}", self.prefix, s.msn, self.ext());
            }
        }
        if ll {
            // The next part: of the open segment, or the first of the next one when the last
            // segment just ended (a publisher left). Always one, so that the client's idea of
            // the segment being written is never a stale one (hls.js 1.7 compares it with the
            // next playlist's and stops on a discontinuity count that differs).
            let next = match self.open_segment() {
                Some(open) => Some((open.msn, open.parts.len())),
                None => self.segments.back().map(|s| (s.msn + 1, 0)),
            };
            if let Some((msn, part)) = next {
                let _ = writeln!(
                    o,
                    "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}_part{msn}_{part}.mp4{query}\"",
                    self.prefix,
                );
            }
        }
        o
    }
}

fn concat(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut b = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for c in many {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    }
}

/// `2026-11-25T14:33:52.123Z`
impl Drop for State {
    /// The muxer's files go with it (the directory too, when nobody else's files are there).
    fn drop(&mut self) {
        for seg in &self.segments {
            if let Some(f) = &seg.file {
                let _ = std::fs::remove_file(f);
            }
        }
        if let Some(dir) = &self.directory {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    // Before 1970 too: a source's absolute times (useAbsoluteTimestamp) may be anything.
    let total_ms: i64 = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    let secs = total_ms.div_euclid(1000);
    let ms = total_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
