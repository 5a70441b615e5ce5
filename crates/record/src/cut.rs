//! Cutting recorded fMP4 segments into one stream for `/get`: from the key frame at or
//! before the asked start to the asked end, across segment boundaries, one `moof` + `mdat`
//! out per part in. Only the segments' boxes are read up front; media is read part by part
//! as the output is sent, so memory stays at about one part whatever the window.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use bytes::Bytes;
use tidegate_fmp4::{Sample, TrackRun};

use crate::index::Segment;
use crate::read::{scan, Scan};
use crate::RecordError;

/// Consecutive segments further apart than this are not joined: the output stops at a gap.
pub const MAX_GAP_US: i64 = 1_000_000;

/// Largest part read into memory at once.
pub const MAX_PART: u64 = 256 << 20;

/// What `/get` sends: the init, then fragments made by [`Cut::next_fragment`].
pub struct Cut {
    pub init: Bytes,
    segments: Vec<(Segment, Scan)>,
    /// Where the output's time zero is, in µs since the epoch (the key frame).
    origin_us: i64,
    /// Where the window ends, µs since the epoch.
    end_us: i64,
    /// Position: segment, part.
    seg: usize,
    part: usize,
    file: Option<File>,
    seq: u32,
    /// Time of the first sample sent, µs since the epoch.
    pub first_us: i64,
    /// The first segment's init as recorded, and how far the asked start is past the key
    /// frame (for `format=mp4`).
    source_init: Bytes,
    skip_us: i64,
}

/// Most samples a `format=mp4` answer may hold: its tables are built before the first byte.
pub const MAX_MP4_SAMPLES: usize = 4_000_000;

/// One run of samples of one track, contiguous in a segment file: a chunk of the MP4.
struct Chunk {
    seg: usize,
    track_id: u32,
    first_dts: u64,
    samples: Vec<crate::read::SampleInfo>,
    offset: u64,
    len: u64,
}

fn sample_times(scan: &Scan, traf: &crate::read::Traf) -> (u32, Vec<u64>) {
    let ts = scan
        .tracks
        .iter()
        .find(|t| t.id == traf.track_id)
        .map_or(90_000, |t| t.timescale.max(1));
    let mut t = traf.base_decode_time;
    let mut v = Vec::with_capacity(traf.samples.len());
    for s in &traf.samples {
        v.push(t);
        t = t.saturating_add(u64::from(s.duration));
    }
    (ts, v)
}

/// Ticks to µs, saturating (sizes come from files).
fn ticks_to_us(t: u64, ts: u32) -> i64 {
    (i128::from(t) * 1_000_000 / i128::from(ts.max(1))).min(i128::from(i64::MAX / 4)) as i64
}

impl Cut {
    /// Plans the cut of `[start_us, start_us + duration_us)` from `segments` (time order).
    pub fn new(
        segments: Vec<Segment>,
        start_us: i64,
        duration_us: i64,
    ) -> Result<Cut, RecordError> {
        let end_us = start_us.saturating_add(duration_us.max(0));
        let mut chosen: Vec<(Segment, Scan)> = Vec::new();
        for s in segments {
            if s.format != crate::Format::Fmp4 {
                continue;
            }
            if s.start >= end_us {
                break;
            }
            if let Some((prev, prev_scan)) = chosen.last() {
                let prev_end = prev
                    .start
                    .saturating_add((prev_scan.duration() * 1e6) as i64);
                // A gap, or tracks that differ: the output stops here.
                if s.start - prev_end > MAX_GAP_US {
                    break;
                }
            }
            let f = File::open(&s.file).map_err(RecordError::Io)?;
            let sc = scan(&mut BufReader::new(f))?;
            if let Some((_, first)) = chosen.first() {
                if first.tracks != sc.tracks {
                    break;
                }
            }
            if sc.parts.is_empty() {
                continue;
            }
            chosen.push((s, sc));
        }
        // Drop leading segments that end before the window.
        while chosen.len() > 1 {
            let (s, sc) = &chosen[0];
            if s.start.saturating_add((sc.duration() * 1e6) as i64) <= start_us {
                chosen.remove(0);
            } else {
                break;
            }
        }
        let Some((first, sc)) = chosen.first() else {
            return Err(RecordError::Nothing);
        };
        // The key track: the first video track, else the first track.
        let key = sc
            .tracks
            .iter()
            .find(|t| t.video)
            .or(sc.tracks.first())
            .map(|t| t.id)
            .ok_or(RecordError::Nothing)?;
        // The last sync sample of the key track at or before start (else the first).
        let mut origin_us = None;
        'parts: for p in &sc.parts {
            for traf in p.trafs.iter().filter(|t| t.track_id == key) {
                let (ts, times) = sample_times(sc, traf);
                for (s, t) in traf.samples.iter().zip(times) {
                    let at = first.start.saturating_add(ticks_to_us(t, ts));
                    if at > start_us && origin_us.is_some() {
                        break 'parts;
                    }
                    if s.is_sync() {
                        origin_us = Some(at);
                    }
                }
            }
        }
        let origin_us = origin_us.ok_or(RecordError::Nothing)?;
        if origin_us >= end_us {
            return Err(RecordError::Nothing);
        }
        // Presentation starts at the asked time; decoding at the key frame before it.
        let skip = (start_us - origin_us).max(0);
        let source_init = sc.init.clone();
        Ok(Cut {
            init: with_edit_list(&source_init, skip, end_us - origin_us - skip),
            segments: chosen,
            origin_us,
            end_us,
            seg: 0,
            part: 0,
            file: None,
            seq: 0,
            first_us: origin_us,
            source_init,
            skip_us: skip,
        })
    }

    /// The next fragment, or `None` when the window is sent. Blocking (reads the file).
    pub fn next_fragment(&mut self) -> Result<Option<Bytes>, RecordError> {
        loop {
            let Some((seg, sc)) = self.segments.get(self.seg) else {
                return Ok(None);
            };
            let Some(part) = sc.parts.get(self.part) else {
                self.seg += 1;
                self.part = 0;
                self.file = None;
                continue;
            };
            self.part += 1;
            if self.file.is_none() {
                self.file = Some(File::open(&seg.file).map_err(RecordError::Io)?);
            }
            // Skip whole parts outside the window.
            let part_start = seg.start.saturating_add((sc.part_start(part) * 1e6) as i64);
            if part_start >= self.end_us {
                self.segments.truncate(self.seg + 1);
                self.part = usize::MAX;
                continue;
            }
            let mut any_in = false;
            let mut runs_meta = Vec::new();
            for traf in &part.trafs {
                let (ts, times) = sample_times(sc, traf);
                let last = times.last().copied().unwrap_or(0)
                    + u64::from(traf.samples.last().map_or(0, |s| s.duration));
                if seg.start.saturating_add(ticks_to_us(last, ts)) > self.origin_us {
                    any_in = true;
                }
                runs_meta.push((traf, ts, times));
            }
            if !any_in {
                continue;
            }
            let len = part.end - part.offset;
            if len > MAX_PART {
                return Err(RecordError::Format("part too large"));
            }
            let mut buf = vec![0u8; len as usize];
            let f = self.file.as_mut().ok_or(RecordError::Nothing)?;
            f.seek(SeekFrom::Start(part.offset))
                .map_err(RecordError::Io)?;
            f.read_exact(&mut buf).map_err(RecordError::Io)?;
            let buf = Bytes::from(buf);
            let mut runs: Vec<(u32, u64, Vec<Sample>)> = Vec::new();
            for (traf, ts, times) in runs_meta {
                let mut offset = traf.data_offset;
                let mut samples = Vec::new();
                let mut base = None;
                for (s, t) in traf.samples.iter().zip(times) {
                    let at = seg.start.saturating_add(ticks_to_us(t, ts));
                    let range = offset as usize..(offset + u64::from(s.size)) as usize;
                    offset += u64::from(s.size);
                    if at < self.origin_us || at >= self.end_us {
                        continue;
                    }
                    let Some(data) = buf.get(range.clone()).map(|_| buf.slice(range)) else {
                        return Err(RecordError::Format("sample outside its part"));
                    };
                    if base.is_none() {
                        // Output time: from the key frame, in this track's ticks.
                        let out_us = at - self.origin_us;
                        base = Some((i128::from(out_us) * i128::from(ts) / 1_000_000) as u64);
                    }
                    samples.push(Sample {
                        duration: s.duration,
                        composition_offset: s.composition_offset,
                        keyframe: s.is_sync(),
                        data,
                    });
                }
                if let Some(b) = base {
                    runs.push((traf.track_id, b, samples));
                }
            }
            if runs.is_empty() {
                continue;
            }
            self.seq = self.seq.wrapping_add(1);
            let track_runs: Vec<TrackRun<'_>> = runs
                .iter()
                .map(|(id, b, s)| TrackRun {
                    track_id: *id,
                    base_decode_time: *b,
                    samples: s,
                })
                .collect();
            return Ok(Some(tidegate_fmp4::fragment(self.seq, &track_runs)));
        }
    }
}

fn put_box(out: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
    out.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
}

/// The boxes of `data` as (type, whole box), stopping at anything malformed.
fn split_boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut v = Vec::new();
    while data.len() >= 8 {
        let size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if size < 8 || size > data.len() {
            break;
        }
        v.push(([data[4], data[5], data[6], data[7]], &data[..size]));
        data = &data[size..];
    }
    v
}

fn timescale_of(full_box: &[u8]) -> Option<u32> {
    // mvhd / mdhd: version 0 has 32-bit times (timescale at 20), version 1 64-bit (at 28).
    let at = if full_box.get(8) == Some(&1) { 28 } else { 20 };
    full_box
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The init with an edit list on every track that starts presentation `skip_us` into the
/// media (the output begins on a key frame before the asked start; players begin showing at
/// the asked start) and lasts `duration_us`. Returns the init unchanged if it cannot be read.
pub fn with_edit_list(init: &[u8], skip_us: i64, duration_us: i64) -> Bytes {
    let mut out = Vec::with_capacity(init.len() + 128);
    let top = split_boxes(init);
    let Some(movie_ts) = top
        .iter()
        .find(|(k, _)| k == b"moov")
        .and_then(|(_, moov)| {
            split_boxes(&moov[8..])
                .into_iter()
                .find(|(k, _)| k == b"mvhd")
                .and_then(|(_, b)| timescale_of(b))
        })
    else {
        return Bytes::copy_from_slice(init);
    };
    for (kind, whole) in &top {
        if kind != b"moov" {
            out.extend_from_slice(whole);
            continue;
        }
        let mut moov = Vec::with_capacity(whole.len() + 64);
        for (k, child) in split_boxes(&whole[8..]) {
            if &k != b"trak" {
                moov.extend_from_slice(child);
                continue;
            }
            let parts = split_boxes(&child[8..]);
            let track_ts = parts
                .iter()
                .find(|(k, _)| k == b"mdia")
                .and_then(|(_, m)| {
                    split_boxes(&m[8..])
                        .into_iter()
                        .find(|(k, _)| k == b"mdhd")
                        .and_then(|(_, b)| timescale_of(b))
                })
                .unwrap_or(90_000);
            let mut elst = Vec::with_capacity(32);
            elst.extend_from_slice(&[1, 0, 0, 0]); // version 1, no flags
            elst.extend_from_slice(&1u32.to_be_bytes());
            let seg = i128::from(duration_us.max(0)) * i128::from(movie_ts) / 1_000_000;
            let media = i128::from(skip_us.max(0)) * i128::from(track_ts) / 1_000_000;
            elst.extend_from_slice(&(seg as u64).to_be_bytes());
            elst.extend_from_slice(&(media as i64).to_be_bytes());
            elst.extend_from_slice(&[0, 1, 0, 0]); // rate 1.0
            let mut edts = Vec::with_capacity(48);
            put_box(&mut edts, b"elst", &elst);
            let mut trak = Vec::with_capacity(child.len() + 48);
            for (k, b) in parts {
                if &k == b"edts" {
                    continue;
                }
                trak.extend_from_slice(b);
                if &k == b"tkhd" {
                    put_box(&mut trak, b"edts", &edts);
                }
            }
            put_box(&mut moov, b"trak", &trak);
        }
        put_box(&mut out, b"moov", &moov);
    }
    Bytes::from(out)
}

/// A whole-box writer: type, then the body, size patched in.
fn boxed(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

fn full(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, body: impl FnOnce(&mut Vec<u8>)) {
    boxed(out, kind, |b| {
        b.extend_from_slice(&[version, 0, 0, 0]);
        body(b);
    });
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

/// What a `format=mp4` answer is: the header (`ftyp`, `moov` with every sample table,
/// the `mdat` header), then these file ranges in order.
pub struct Mp4Plan {
    pub header: Bytes,
    pub reads: Vec<(std::path::PathBuf, u64, u64)>,
}

impl Cut {
    /// The samples of the window as chunks (metadata only; nothing of the media is read).
    fn chunks(&self) -> Result<Vec<Chunk>, RecordError> {
        let mut chunks = Vec::new();
        let mut total = 0usize;
        for (si, (seg, sc)) in self.segments.iter().enumerate() {
            for part in &sc.parts {
                if seg.start.saturating_add((sc.part_start(part) * 1e6) as i64) >= self.end_us {
                    break;
                }
                for traf in &part.trafs {
                    let (ts, times) = sample_times(sc, traf);
                    let mut offset = part.offset + traf.data_offset;
                    let mut chunk: Option<Chunk> = None;
                    for (s, t) in traf.samples.iter().zip(times) {
                        let at = seg.start.saturating_add(ticks_to_us(t, ts));
                        let here = offset;
                        offset += u64::from(s.size);
                        if at < self.origin_us || at >= self.end_us {
                            continue;
                        }
                        let c = chunk.get_or_insert_with(|| Chunk {
                            seg: si,
                            track_id: traf.track_id,
                            first_dts: (i128::from(at - self.origin_us) * i128::from(ts)
                                / 1_000_000) as u64,
                            samples: Vec::new(),
                            offset: here,
                            len: 0,
                        });
                        c.samples.push(*s);
                        c.len += u64::from(s.size);
                    }
                    if let Some(c) = chunk {
                        total += c.samples.len();
                        chunks.push(c);
                    }
                }
                if total > MAX_MP4_SAMPLES {
                    return Err(RecordError::Format(
                        "the window is too long for format=mp4 (use fmp4)",
                    ));
                }
            }
        }
        if chunks.is_empty() {
            return Err(RecordError::Nothing);
        }
        Ok(chunks)
    }

    /// Plans a non-fragmented MP4 of the window (`/get?format=mp4`): sample tables for every
    /// track, an edit list at the asked start, media read from the segments in order.
    pub fn mp4(self) -> Result<Mp4Plan, RecordError> {
        let chunks = self.chunks()?;
        let src = split_boxes(&self.source_init);
        let moov_src = src
            .iter()
            .find(|(k, _)| k == b"moov")
            .map(|(_, b)| &b[8..])
            .ok_or(RecordError::Format("no moov"))?;
        let traks: Vec<&[u8]> = split_boxes(moov_src)
            .into_iter()
            .filter(|(k, _)| k == b"trak")
            .map(|(_, b)| b)
            .collect();
        let tracks = &self.segments[0].1.tracks;
        let duration_us = (self.end_us - self.origin_us - self.skip_us).max(0);
        let movie_ts = 1000u32;
        // Everything but the chunk offsets, which need the moov's size: built twice.
        let build = |mdat_start: u64| -> Vec<u8> {
            let mut out = Vec::new();
            boxed(&mut out, b"ftyp", |b| {
                b.extend_from_slice(b"isom");
                put32(b, 512);
                for brand in [b"isom", b"iso2", b"mp41"] {
                    b.extend_from_slice(brand);
                }
            });
            boxed(&mut out, b"moov", |b| {
                full(b, b"mvhd", 0, |b| {
                    put32(b, 0);
                    put32(b, 0);
                    put32(b, movie_ts);
                    put32(b, (duration_us / 1000) as u32);
                    put32(b, 0x0001_0000);
                    b.extend_from_slice(&[1, 0]);
                    b.extend_from_slice(&[0; 10]);
                    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
                        put32(b, v);
                    }
                    b.extend_from_slice(&[0; 24]);
                    put32(b, tracks.iter().map(|t| t.id).max().unwrap_or(0) + 1);
                });
                // Chunk offsets in mdat order.
                let mut offsets = Vec::with_capacity(chunks.len());
                let mut at = mdat_start;
                for c in &chunks {
                    offsets.push(at);
                    at += c.len;
                }
                for trak in &traks {
                    write_trak(
                        b,
                        trak,
                        tracks,
                        &chunks,
                        &offsets,
                        duration_us,
                        self.skip_us,
                    );
                }
            });
            out
        };
        let probe = build(0);
        let mdat_start = probe.len() as u64 + 16;
        let mut header = build(mdat_start);
        let media: u64 = chunks.iter().map(|c| c.len).sum();
        put32(&mut header, 1);
        header.extend_from_slice(b"mdat");
        header.extend_from_slice(&(16 + media).to_be_bytes());
        let reads = chunks
            .iter()
            .map(|c| (self.segments[c.seg].0.file.clone(), c.offset, c.len))
            .collect();
        Ok(Mp4Plan {
            header: Bytes::from(header),
            reads,
        })
    }
}

/// One `trak` of the MP4: the recording's own `tkhd`, `mdhd`, `hdlr` and `stsd`, durations set,
/// an edit list, and sample tables for this track's chunks.
fn write_trak(
    b: &mut Vec<u8>,
    src: &[u8],
    tracks: &[crate::read::TrackInfo],
    chunks: &[Chunk],
    offsets: &[u64],
    duration_us: i64,
    skip_us: i64,
) {
    let parts = split_boxes(&src[8..]);
    let Some(tkhd) = parts.iter().find(|(k, _)| k == b"tkhd").map(|(_, b)| *b) else {
        return;
    };
    let id = if tkhd.get(8) == Some(&1) {
        tkhd.get(28..32)
    } else {
        tkhd.get(20..24)
    }
    .map_or(0, |v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
    let ts = tracks
        .iter()
        .find(|t| t.id == id)
        .map_or(90_000, |t| t.timescale.max(1));
    let mine: Vec<(usize, &Chunk)> = chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.track_id == id)
        .collect();
    let media_ticks: u64 = mine
        .iter()
        .flat_map(|(_, c)| c.samples.iter())
        .map(|s| u64::from(s.duration))
        .sum();
    let movie_ms = (duration_us / 1000).max(0) as u32;
    boxed(b, b"trak", |b| {
        let mut t = tkhd.to_vec();
        if t.get(8) == Some(&0) && t.len() >= 32 {
            t[28..32].copy_from_slice(&movie_ms.to_be_bytes());
        }
        b.extend_from_slice(&t);
        boxed(b, b"edts", |b| {
            full(b, b"elst", 1, |b| {
                put32(b, 1);
                b.extend_from_slice(&u64::from(movie_ms).to_be_bytes());
                let media = (i128::from(skip_us) * i128::from(ts) / 1_000_000) as i64;
                b.extend_from_slice(&media.to_be_bytes());
                b.extend_from_slice(&[0, 1, 0, 0]);
            });
        });
        let Some(mdia) = parts.iter().find(|(k, _)| k == b"mdia").map(|(_, b)| *b) else {
            return;
        };
        boxed(b, b"mdia", |b| {
            for (k, child) in split_boxes(&mdia[8..]) {
                match &k {
                    b"mdhd" => {
                        let mut m = child.to_vec();
                        if m.get(8) == Some(&0) && m.len() >= 28 {
                            m[24..28].copy_from_slice(
                                &(media_ticks.min(u64::from(u32::MAX)) as u32).to_be_bytes(),
                            );
                        }
                        b.extend_from_slice(&m);
                    }
                    b"minf" => boxed(b, b"minf", |b| {
                        for (k, child) in split_boxes(&child[8..]) {
                            if &k != b"stbl" {
                                b.extend_from_slice(child);
                                continue;
                            }
                            let stsd = split_boxes(&child[8..])
                                .into_iter()
                                .find(|(k, _)| k == b"stsd")
                                .map(|(_, b)| b.to_vec())
                                .unwrap_or_default();
                            boxed(b, b"stbl", |b| {
                                b.extend_from_slice(&stsd);
                                sample_tables(b, &mine, offsets);
                            });
                        }
                    }),
                    _ => b.extend_from_slice(child),
                }
            }
        });
    });
}

fn sample_tables(b: &mut Vec<u8>, mine: &[(usize, &Chunk)], offsets: &[u64]) {
    let samples: Vec<&crate::read::SampleInfo> =
        mine.iter().flat_map(|(_, c)| c.samples.iter()).collect();
    // Decode times: each chunk starts where its own first sample says (a gap between
    // segments stays a gap), so the last sample before a chunk is stretched to meet it.
    let mut durations: Vec<u32> = Vec::with_capacity(samples.len());
    for (i, (_, c)) in mine.iter().enumerate() {
        let next_start = mine.get(i + 1).map(|(_, n)| n.first_dts);
        let mut t = c.first_dts;
        for (j, s) in c.samples.iter().enumerate() {
            let last = j + 1 == c.samples.len();
            let d = match (last, next_start) {
                (true, Some(n)) if n > t => (n - t).min(u64::from(u32::MAX)) as u32,
                _ => s.duration,
            };
            durations.push(d);
            t += u64::from(s.duration);
        }
    }
    full(b, b"stts", 0, |b| {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for d in &durations {
            match runs.last_mut() {
                Some((n, v)) if v == d => *n += 1,
                _ => runs.push((1, *d)),
            }
        }
        put32(b, runs.len() as u32);
        for (n, v) in runs {
            put32(b, n);
            put32(b, v);
        }
    });
    if samples.iter().any(|s| s.composition_offset != 0) {
        full(b, b"ctts", 1, |b| {
            let mut runs: Vec<(u32, i32)> = Vec::new();
            for s in &samples {
                match runs.last_mut() {
                    Some((n, v)) if *v == s.composition_offset => *n += 1,
                    _ => runs.push((1, s.composition_offset)),
                }
            }
            put32(b, runs.len() as u32);
            for (n, v) in runs {
                put32(b, n);
                b.extend_from_slice(&v.to_be_bytes());
            }
        });
    }
    if samples.iter().any(|s| !s.is_sync()) {
        full(b, b"stss", 0, |b| {
            let sync: Vec<u32> = samples
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_sync())
                .map(|(i, _)| i as u32 + 1)
                .collect();
            put32(b, sync.len() as u32);
            for n in sync {
                put32(b, n);
            }
        });
    }
    full(b, b"stsc", 0, |b| {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for (i, (_, c)) in mine.iter().enumerate() {
            let n = c.samples.len() as u32;
            if runs.last().is_none_or(|(_, m)| *m != n) {
                runs.push((i as u32 + 1, n));
            }
        }
        put32(b, runs.len() as u32);
        for (first, n) in runs {
            put32(b, first);
            put32(b, n);
            put32(b, 1);
        }
    });
    full(b, b"stsz", 0, |b| {
        put32(b, 0);
        put32(b, samples.len() as u32);
        for s in &samples {
            put32(b, s.size);
        }
    });
    full(b, b"co64", 0, |b| {
        put32(b, mine.len() as u32);
        for (i, _) in mine {
            b.extend_from_slice(&offsets[*i].to_be_bytes());
        }
    });
}
