//! Reading our fMP4 segments back: the init, and each part's samples, without reading the
//! media itself. Also recovery: a file cut in the middle of a part (the process was killed,
//! the power went) is read up to its last whole part, and can be trimmed there.
//!
//! Every size comes from the file, so each is checked against what is left of its box and
//! against fixed limits before anything is allocated.

use std::io::{Read, Seek, SeekFrom};

use crate::RecordError;
use bytes::Bytes;

/// Largest `moov` read (ours are a few hundred bytes).
pub const MAX_MOOV: u64 = 4 << 20;
/// Largest `moof` read: 16 bytes per sample, so about a million samples.
pub const MAX_MOOF: u64 = 16 << 20;

/// One `traf` of a `moof`: a track's run of samples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traf {
    pub track_id: u32,
    pub base_decode_time: u64,
    /// Where the first sample's data starts, relative to the start of the `moof`.
    pub data_offset: u64,
    pub samples: Vec<SampleInfo>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleInfo {
    pub duration: u32,
    pub size: u32,
    pub flags: u32,
    pub composition_offset: i32,
}

impl SampleInfo {
    pub fn is_sync(&self) -> bool {
        self.flags & 0x0001_0000 == 0
    }
}

/// A track of the init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: u32,
    pub timescale: u32,
    pub video: bool,
    /// The sample entry's type (`avc1`, `mp4a`, …).
    pub entry: [u8; 4],
}

impl TrackInfo {
    /// The codec's name as the API shows it.
    pub fn codec_name(&self) -> &'static str {
        match &self.entry {
            b"avc1" | b"avc3" => "H264",
            b"hvc1" | b"hev1" => "H265",
            b"av01" => "AV1",
            b"vp09" => "VP9",
            b"vp08" => "VP8",
            b"mp4a" => "MPEG-4 Audio",
            b"Opus" => "Opus",
            b"ac-3" => "AC3",
            b"ulaw" | b"alaw" => "G711",
            _ => "unknown",
        }
    }
}

/// A whole part found in a file.
#[derive(Clone, Debug)]
pub struct PartInfo {
    /// File offset of the `moof`.
    pub offset: u64,
    pub trafs: Vec<Traf>,
    /// File offset just past the `mdat`.
    pub end: u64,
}

/// What a segment file holds.
#[derive(Clone, Debug)]
pub struct Scan {
    /// `ftyp` + `moov`, as in the file.
    pub init: Bytes,
    pub tracks: Vec<TrackInfo>,
    pub parts: Vec<PartInfo>,
    /// Where the last whole box ends; past it is a cut part.
    pub valid_len: u64,
    pub file_len: u64,
}

impl Scan {
    fn timescale(&self, id: u32) -> u32 {
        self.tracks
            .iter()
            .find(|t| t.id == id)
            .map_or(90_000, |t| t.timescale.max(1))
    }

    /// Start of `part` (seconds from the start of the segment): its earliest track.
    pub fn part_start(&self, part: &PartInfo) -> f64 {
        part.trafs
            .iter()
            .map(|t| t.base_decode_time as f64 / f64::from(self.timescale(t.track_id)))
            .fold(f64::INFINITY, f64::min)
    }

    /// End of the media (seconds from the start of the segment): the latest end of any track.
    pub fn duration(&self) -> f64 {
        let mut end: f64 = 0.0;
        for p in &self.parts {
            for t in &p.trafs {
                let d: u64 = t.samples.iter().map(|s| u64::from(s.duration)).sum();
                let e = t.base_decode_time.saturating_add(d) as f64
                    / f64::from(self.timescale(t.track_id));
                end = end.max(e);
            }
        }
        end
    }
}

pub(crate) fn be32(b: &[u8], at: usize) -> Result<u32, RecordError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(RecordError::Format("box too short"))
}

pub(crate) fn be64(b: &[u8], at: usize) -> Result<u64, RecordError> {
    Ok((u64::from(be32(b, at)?) << 32) | u64::from(be32(b, at + 4)?))
}

/// A box: its type and content.
type Child<'a> = ([u8; 4], &'a [u8]);

/// The child boxes of `body`.
pub(crate) fn children(mut body: &[u8]) -> Result<Vec<Child<'_>>, RecordError> {
    let mut v = Vec::new();
    while body.len() >= 8 {
        let size = u64::from(be32(body, 0)?);
        let kind = [body[4], body[5], body[6], body[7]];
        let (header, size) = match size {
            0 => (8, body.len() as u64),
            1 => (16, be64(body, 8)?),
            s => (8, s),
        };
        if size < header as u64 || size > body.len() as u64 {
            return Err(RecordError::Format("box size past its parent"));
        }
        v.push((kind, &body[header..size as usize]));
        body = &body[size as usize..];
    }
    Ok(v)
}

pub(crate) fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, RecordError> {
    Ok(children(body)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, b)| b))
}

/// One `trak` of a `moov`: its id, its media timescale, its `hdlr` and its `stsd` (if any).
pub(crate) struct Trak<'a> {
    pub id: u32,
    pub timescale: u32,
    pub hdlr: &'a [u8],
    pub stsd: Option<&'a [u8]>,
    /// The sample table (progressive files index their samples there).
    pub stbl: Option<&'a [u8]>,
}

/// The `trak`s of a `moov` (its content, without the box header).
pub(crate) fn traks(moov: &[u8]) -> Result<Vec<Trak<'_>>, RecordError> {
    let mut out = Vec::new();
    for (kind, trak) in children(moov)? {
        if &kind != b"trak" {
            continue;
        }
        let tkhd = child(trak, b"tkhd")?.ok_or(RecordError::Format("trak without tkhd"))?;
        let id = if tkhd.first() == Some(&1) {
            be32(tkhd, 20)?
        } else {
            be32(tkhd, 12)?
        };
        let mdia = child(trak, b"mdia")?.ok_or(RecordError::Format("trak without mdia"))?;
        let mdhd = child(mdia, b"mdhd")?.ok_or(RecordError::Format("mdia without mdhd"))?;
        let timescale = if mdhd.first() == Some(&1) {
            be32(mdhd, 20)?
        } else {
            be32(mdhd, 12)?
        };
        let hdlr = child(mdia, b"hdlr")?.ok_or(RecordError::Format("mdia without hdlr"))?;
        let stbl = child(mdia, b"minf")?
            .map(|m| child(m, b"stbl"))
            .transpose()?
            .flatten();
        let stsd = stbl.map(|s| child(s, b"stsd")).transpose()?.flatten();
        out.push(Trak {
            id,
            timescale,
            hdlr,
            stsd,
            stbl,
        });
    }
    if out.is_empty() {
        return Err(RecordError::Format("moov without tracks"));
    }
    Ok(out)
}

/// The tracks of a `moov` (its content, without the box header).
pub fn parse_moov(moov: &[u8]) -> Result<Vec<TrackInfo>, RecordError> {
    Ok(traks(moov)?
        .into_iter()
        .map(|t| {
            let mut entry = [0u8; 4];
            if let Some(e) = t.stsd.and_then(|s| s.get(12..16)) {
                entry.copy_from_slice(e);
            }
            TrackInfo {
                id: t.id,
                timescale: t.timescale,
                video: t.hdlr.get(8..12) == Some(b"vide"),
                entry,
            }
        })
        .collect())
}

/// The runs of a `moof` given from its header on (anything after the box is ignored).
pub fn parse_moof(data: &[u8]) -> Result<Vec<Traf>, RecordError> {
    let size = be32(data, 0)? as usize;
    if data.get(4..8) != Some(b"moof") || size < 8 || size > data.len() {
        return Err(RecordError::Format("not a moof"));
    }
    let mut trafs = Vec::new();
    for (kind, traf) in children(&data[8..size])? {
        if &kind != b"traf" {
            continue;
        }
        let mut t = Traf::default();
        let mut default_duration = 0;
        let mut default_size = 0;
        let mut default_flags = 0;
        let mut base_offset: u64 = 0;
        for (kind, b) in children(traf)? {
            match &kind {
                b"tfhd" => {
                    let flags = be32(b, 0)? & 0x00ff_ffff;
                    t.track_id = be32(b, 4)?;
                    let mut at = 8;
                    if flags & 0x01 != 0 {
                        base_offset = be64(b, at)?;
                        at += 8;
                    }
                    if flags & 0x02 != 0 {
                        at += 4;
                    }
                    if flags & 0x08 != 0 {
                        default_duration = be32(b, at)?;
                        at += 4;
                    }
                    if flags & 0x10 != 0 {
                        default_size = be32(b, at)?;
                        at += 4;
                    }
                    if flags & 0x20 != 0 {
                        default_flags = be32(b, at)?;
                    }
                }
                b"tfdt" => {
                    t.base_decode_time = if b.first() == Some(&1) {
                        be64(b, 4)?
                    } else {
                        u64::from(be32(b, 4)?)
                    };
                }
                b"trun" => {
                    let version = b.first().copied().unwrap_or(0);
                    let flags = be32(b, 0)? & 0x00ff_ffff;
                    let count = be32(b, 4)? as usize;
                    let mut at = 8;
                    if flags & 0x01 != 0 {
                        let off = be32(b, at)? as i32;
                        t.data_offset =
                            (base_offset as i64).saturating_add(i64::from(off)).max(0) as u64;
                        at += 4;
                    }
                    let first_flags = if flags & 0x04 != 0 {
                        at += 4;
                        Some(be32(b, at - 4)?)
                    } else {
                        None
                    };
                    let per = [0x100, 0x200, 0x400, 0x800]
                        .iter()
                        .filter(|f| flags & **f != 0)
                        .count()
                        * 4;
                    if count.saturating_mul(per) > b.len().saturating_sub(at) {
                        return Err(RecordError::Format("trun sample count past its box"));
                    }
                    t.samples.reserve(count);
                    for i in 0..count {
                        let mut s = SampleInfo {
                            duration: default_duration,
                            size: default_size,
                            flags: if i == 0 {
                                first_flags.unwrap_or(default_flags)
                            } else {
                                default_flags
                            },
                            composition_offset: 0,
                        };
                        if flags & 0x100 != 0 {
                            s.duration = be32(b, at)?;
                            at += 4;
                        }
                        if flags & 0x200 != 0 {
                            s.size = be32(b, at)?;
                            at += 4;
                        }
                        if flags & 0x400 != 0 {
                            s.flags = be32(b, at)?;
                            at += 4;
                        }
                        if flags & 0x800 != 0 {
                            let v = be32(b, at)?;
                            s.composition_offset = if version == 0 {
                                v.min(i32::MAX as u32) as i32
                            } else {
                                v as i32
                            };
                            at += 4;
                        }
                        t.samples.push(s);
                    }
                }
                _ => {}
            }
        }
        trafs.push(t);
    }
    Ok(trafs)
}

/// Reads a box header at the reader's position: (type, header length, total size).
fn header(r: &mut impl Read, left: u64) -> Result<Option<([u8; 4], u64, u64)>, RecordError> {
    if left < 8 {
        return Ok(None);
    }
    let mut h = [0u8; 16];
    r.read_exact(&mut h[..8])?;
    let kind = [h[4], h[5], h[6], h[7]];
    let size = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
    Ok(Some(match size {
        0 => (kind, 8, left),
        1 => {
            if left < 16 {
                return Ok(None);
            }
            r.read_exact(&mut h[8..16])?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[8..16]);
            (kind, 16, u64::from_be_bytes(b))
        }
        s => (kind, 8, s),
    }))
}

/// Scans a segment: its init, and every whole part. A cut trailing box ends the scan without
/// an error; a file without a usable init is an error.
pub fn scan<R: Read + Seek>(r: &mut R) -> Result<Scan, RecordError> {
    let file_len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut pos = 0u64;
    let mut init = Vec::new();
    let mut tracks = None;
    let mut parts = Vec::new();
    let mut valid_len = 0;
    while let Some((kind, hlen, size)) = header(r, file_len - pos)? {
        if size < hlen || size > file_len - pos {
            break; // cut short
        }
        match &kind {
            b"ftyp" | b"moov" if tracks.is_none() => {
                if size > MAX_MOOV {
                    return Err(RecordError::Format("init box too large"));
                }
                let mut b = vec![0u8; size as usize];
                r.seek(SeekFrom::Start(pos))?;
                r.read_exact(&mut b)?;
                if &kind == b"moov" {
                    tracks = Some(parse_moov(&b[hlen as usize..])?);
                }
                init.extend_from_slice(&b);
            }
            b"moof" => {
                if size > MAX_MOOF {
                    return Err(RecordError::Format("moof too large"));
                }
                let mut b = vec![0u8; size as usize];
                r.seek(SeekFrom::Start(pos))?;
                r.read_exact(&mut b)?;
                let trafs = parse_moof(&b)?;
                // The mdat must follow, whole.
                let mdat_at = pos + size;
                r.seek(SeekFrom::Start(mdat_at))?;
                let Some((k, mh, ms)) = header(r, file_len - mdat_at)? else {
                    break;
                };
                if &k != b"mdat" || ms < mh || ms > file_len - mdat_at {
                    break;
                }
                let end = mdat_at + ms;
                // Every sample must lie inside this part.
                let inside = trafs.iter().all(|t| {
                    let len: u64 = t.samples.iter().map(|s| u64::from(s.size)).sum();
                    pos.saturating_add(t.data_offset).saturating_add(len) <= end
                });
                if !inside {
                    return Err(RecordError::Format("sample data outside its mdat"));
                }
                parts.push(PartInfo {
                    offset: pos,
                    trafs,
                    end,
                });
                pos = end;
                valid_len = end;
                r.seek(SeekFrom::Start(pos))?;
                continue;
            }
            _ => {}
        }
        pos += size;
        valid_len = pos;
        r.seek(SeekFrom::Start(pos))?;
    }
    let tracks = tracks.ok_or(RecordError::Format("no moov"))?;
    Ok(Scan {
        init: Bytes::from(init),
        tracks,
        parts,
        valid_len,
        file_len,
    })
}

/// Scans `path` and, when its end is a cut part, trims the file to its last whole box so
/// every player reads it cleanly. Returns the scan (after trimming).
pub fn recover(path: &std::path::Path) -> Result<Scan, RecordError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut s = scan(&mut f)?;
    if s.valid_len < s.file_len {
        tracing::warn!(
            "recording {}: trimmed a cut part ({} bytes) after its last whole part",
            path.display(),
            s.file_len - s.valid_len
        );
        f.set_len(s.valid_len)?;
        f.sync_all()?;
        s.file_len = s.valid_len;
    }
    Ok(s)
}

/// For fuzzing: everything the scanner reads, from memory.
pub fn scan_bytes(data: &[u8]) -> Result<Scan, RecordError> {
    scan(&mut std::io::Cursor::new(data))
}
