//! Demuxing fMP4 (CMAF) from anyone into the packet model: an init section (`ftyp` + `moov`)
//! gives the tracks and their codec parameters, and each fragment (`moof` + `mdat`: an HLS
//! segment or LL-HLS part) gives frames. Used by the HLS source (`source: http(s)://…m3u8`).
//!
//! Every size and offset comes from the input and is checked against it before use.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tidegate_codec::aac::AudioSpecificConfig;
use tidegate_core::{CodecParams, Frame, StreamDesc, Track};

use crate::read::{be32, child, children, parse_moof, traks};
use crate::RecordError;

/// Video tracks are carried on a 90 kHz clock whatever their `mdhd` timescale.
const VIDEO_CLOCK: u32 = 90_000;

/// A track of an init section.
#[derive(Clone, Debug, PartialEq)]
pub struct InitTrack {
    pub id: u32,
    pub timescale: u32,
    /// The sample entry's type (`avc1`, `mp4a`, …).
    pub entry: [u8; 4],
    /// The track in the packet model; None when its codec is not carried (named in `entry`).
    pub track: Option<Track>,
    /// H.264/H.265: bytes in each NAL length prefix (4 is the packet model's).
    length_size: u8,
}

/// The tracks of an init section (`ftyp` and `moov`, as an HLS `EXT-X-MAP` gives it).
pub fn parse_init(data: &[u8]) -> Result<Vec<InitTrack>, RecordError> {
    let moov = child(data, b"moov")?.ok_or(RecordError::Format("init without moov"))?;
    let mut out = Vec::new();
    for t in traks(moov)? {
        let (id, timescale) = (t.id, t.timescale);
        if timescale == 0 {
            return Err(RecordError::Format("mdhd timescale 0"));
        }
        let stsd = t.stsd.ok_or(RecordError::Format("trak without stsd"))?;
        // stsd: version and flags, entry count, then the entries (boxes).
        let entries = children(stsd.get(8..).ok_or(RecordError::Format("stsd too short"))?)?;
        let Some((entry, body)) = entries.first().copied() else {
            return Err(RecordError::Format("stsd without entries"));
        };
        let (params, length_size) = sample_entry(&entry, body).unwrap_or((None, 4));
        let track = params.map(|params| {
            let clock_rate = match &params {
                p if p.codec().is_video() => VIDEO_CLOCK,
                CodecParams::Opus { .. } => 48_000,
                CodecParams::Aac { config } => AudioSpecificConfig::parse(config)
                    .map(|c| c.sample_rate)
                    .unwrap_or(timescale),
                _ => timescale,
            };
            Track {
                id,
                params,
                clock_rate,
            }
        });
        out.push(InitTrack {
            id,
            timescale,
            entry,
            track,
            length_size,
        });
    }
    if out.is_empty() {
        return Err(RecordError::Format("moov without tracks"));
    }
    Ok(out)
}

/// The codec parameters of a sample entry, and the NAL length size of H.264/H.265.
fn sample_entry(kind: &[u8; 4], body: &[u8]) -> Option<(Option<CodecParams>, u8)> {
    // Visual sample entries have 78 bytes of fields before their boxes, audio ones 28.
    let boxes = |skip: usize| children(body.get(skip..)?).ok();
    match kind {
        b"avc1" | b"avc3" => {
            let b = boxes(78)?;
            let avcc = b.iter().find(|(k, _)| k == b"avcC")?.1;
            let c = tidegate_codec::h264::AvcConfig::parse(avcc).ok()?;
            let params = CodecParams::H264 {
                sps: c.sps.first()?.clone(),
                pps: c.pps.first()?.clone(),
            };
            Some((Some(params), c.length_size))
        }
        b"hvc1" | b"hev1" => {
            let b = boxes(78)?;
            let hvcc = b.iter().find(|(k, _)| k == b"hvcC")?.1;
            let c = tidegate_codec::h265::HevcConfig::parse(hvcc).ok()?;
            let params = CodecParams::H265 {
                vps: c.vps.first()?.clone(),
                sps: c.sps.first()?.clone(),
                pps: c.pps.first()?.clone(),
            };
            Some((Some(params), c.length_size))
        }
        b"av01" => {
            let b = boxes(78)?;
            let av1c = b.iter().find(|(k, _)| k == b"av1C")?.1;
            let sequence_header = tidegate_codec::av1::sequence_header_of_av1c(av1c).ok()?;
            Some((Some(CodecParams::Av1 { sequence_header }), 4))
        }
        b"vp09" => Some((Some(CodecParams::Vp9), 4)),
        b"mp4a" => {
            let b = boxes(28)?;
            let esds = b.iter().find(|(k, _)| k == b"esds")?.1;
            Some((esds_params(esds), 4))
        }
        b"Opus" => {
            let b = boxes(28)?;
            let dops = b.iter().find(|(k, _)| k == b"dOps")?.1;
            let channels = *dops.get(1)?;
            Some((Some(CodecParams::Opus { channels }), 4))
        }
        _ => Some((None, 4)),
    }
}

/// AAC from an `esds` box: its DecoderSpecificInfo (the AudioSpecificConfig).
fn esds_params(esds: &[u8]) -> Option<CodecParams> {
    // Version and flags, then descriptors: tag, length (1 to 4 bytes of 7 bits), body.
    fn descriptor(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let mut len = 0usize;
        let mut at = 1;
        for _ in 0..4 {
            let c = *b.get(at)?;
            at += 1;
            len = (len << 7) | usize::from(c & 0x7f);
            if c & 0x80 == 0 {
                break;
            }
        }
        let body = b.get(at..at.checked_add(len)?)?;
        Some((tag, body, &b[at + len..]))
    }
    let (tag, es, _) = descriptor(esds.get(4..)?)?;
    if tag != 0x03 {
        return None;
    }
    let flags = *es.get(2)?;
    let mut at = 3;
    if flags & 0x80 != 0 {
        at += 2;
    }
    if flags & 0x40 != 0 {
        at += 1 + usize::from(*es.get(at)?);
    }
    if flags & 0x20 != 0 {
        at += 2;
    }
    let (tag, dc, _) = descriptor(es.get(at..)?)?;
    if tag != 0x04 || *dc.first()? != 0x40 {
        return None; // not MPEG-4 Audio
    }
    let (tag, asc, _) = descriptor(dc.get(13..)?)?;
    if tag != 0x05 || asc.is_empty() {
        return None;
    }
    AudioSpecificConfig::parse(asc).ok()?;
    Some(CodecParams::Aac {
        config: Bytes::copy_from_slice(asc),
    })
}

/// The packet model's description of the carried tracks.
pub fn stream_desc(tracks: &[InitTrack]) -> StreamDesc {
    StreamDesc {
        tracks: tracks.iter().filter_map(|t| t.track.clone()).collect(),
    }
}

/// The frames of the fragments in `data` (one or more `moof` + `mdat`, as a segment or a
/// part holds them), for the carried tracks, in file order per track.
pub fn fragment_frames(tracks: &[InitTrack], data: &Bytes) -> Result<Vec<Frame>, RecordError> {
    let received = Instant::now();
    let mut frames = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= 8 {
        let size = be32(data, at)? as usize;
        let kind = &data[at + 4..at + 8];
        if size < 8 || size > data.len() - at {
            return Err(RecordError::Format("box size past the data"));
        }
        if kind == b"moof" {
            for traf in parse_moof(&data[at..])? {
                let Some(t) = tracks.iter().find(|t| t.id == traf.track_id) else {
                    continue;
                };
                let Some(track) = &t.track else { continue };
                let mut offset = at as u64 + traf.data_offset;
                let mut dts = traf.base_decode_time as i64;
                for s in &traf.samples {
                    let start = usize::try_from(offset).unwrap_or(usize::MAX);
                    let end = start.saturating_add(s.size as usize);
                    if end > data.len() {
                        return Err(RecordError::Format("sample past the data"));
                    }
                    let sample = data.slice(start..end);
                    let video = track.codec().is_video();
                    let rescale = |v: i64| tidegate_core::rescale(v, t.timescale, track.clock_rate);
                    frames.push(Frame {
                        track: track.id,
                        dts: rescale(dts),
                        pts: rescale(dts + i64::from(s.composition_offset)),
                        keyframe: !video || s.is_sync(),
                        data: if t.length_size == 4
                            || !matches!(
                                track.params,
                                CodecParams::H264 { .. } | CodecParams::H265 { .. }
                            ) {
                            sample
                        } else {
                            prefix4(&sample, t.length_size)
                        },
                        received,
                        params: None,
                    });
                    offset += u64::from(s.size);
                    dts += i64::from(s.duration);
                }
            }
        }
        at += size;
    }
    Ok(frames)
}

/// Most samples a file may index (a sample table is bounded by the file, this by memory).
const MAX_FILE_SAMPLES: usize = 1 << 20;

/// Every frame of an MP4 file held in memory, progressive (`moov` with sample tables) or
/// fragmented (`moof`s), for the carried tracks, in file order per track; and the tracks.
pub fn file_frames(data: &Bytes) -> Result<(Vec<InitTrack>, Vec<Frame>), RecordError> {
    let moov = child(data, b"moov")?.ok_or(RecordError::Format("a file without moov"))?;
    let tracks = parse_init(data)?;
    let mut frames = fragment_frames(&tracks, data)?;
    let received = Instant::now();
    for t in traks(moov)? {
        let Some(init) = tracks.iter().find(|i| i.id == t.id) else {
            continue;
        };
        let (Some(track), Some(stbl)) = (&init.track, t.stbl) else {
            continue;
        };
        let samples = sample_table(stbl)?;
        let video = track.codec().is_video();
        let rescale = |v: i64| tidegate_core::rescale(v, init.timescale, track.clock_rate);
        for s in samples {
            let start = usize::try_from(s.offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(s.size as usize);
            if end > data.len() {
                return Err(RecordError::Format("sample past the end of the file"));
            }
            let sample = data.slice(start..end);
            frames.push(Frame {
                track: track.id,
                dts: rescale(s.dts),
                pts: rescale(s.dts + i64::from(s.cts)),
                keyframe: !video || s.sync,
                data: if init.length_size == 4
                    || !matches!(
                        track.params,
                        CodecParams::H264 { .. } | CodecParams::H265 { .. }
                    ) {
                    sample
                } else {
                    prefix4(&sample, init.length_size)
                },
                received,
                params: None,
            });
        }
    }
    Ok((tracks, frames))
}

/// One sample of a sample table.
struct TableSample {
    offset: u64,
    size: u32,
    dts: i64,
    cts: i32,
    sync: bool,
}

/// The samples a `stbl` indexes: sizes (`stsz`/`stz2` 32-bit only), chunks (`stsc`, `stco`
/// or `co64`), durations (`stts`), composition offsets (`ctts`) and sync samples (`stss`;
/// without it every sample is one).
fn sample_table(stbl: &[u8]) -> Result<Vec<TableSample>, RecordError> {
    let need = |k: &[u8; 4]| -> Result<&[u8], RecordError> {
        child(stbl, k)?.ok_or(RecordError::Format("sample table without a needed box"))
    };
    // Each table: version and flags, then a count, then entries.
    let table = |b: &'_ [u8], at: usize, width: usize| -> Result<usize, RecordError> {
        let n = be32(b, at)? as usize;
        if n > MAX_FILE_SAMPLES || b.len() < at + 4 + n.saturating_mul(width) {
            return Err(RecordError::Format("sample table count past its box"));
        }
        Ok(n)
    };
    let stsz = need(b"stsz")?;
    let fixed = be32(stsz, 4)?;
    let count = be32(stsz, 8)? as usize;
    if count > MAX_FILE_SAMPLES {
        return Err(RecordError::Format("too many samples"));
    }
    let sizes: Vec<u32> = if fixed != 0 {
        vec![fixed; count]
    } else {
        if stsz.len() < 12 + count * 4 {
            return Err(RecordError::Format("stsz shorter than its count"));
        }
        (0..count)
            .map(|i| be32(stsz, 12 + i * 4))
            .collect::<Result<_, _>>()?
    };
    let offsets: Vec<u64> = if let Some(stco) = child(stbl, b"stco")? {
        let n = table(stco, 4, 4)?;
        (0..n)
            .map(|i| be32(stco, 8 + i * 4).map(u64::from))
            .collect::<Result<_, _>>()?
    } else {
        let co64 = need(b"co64")?;
        let n = table(co64, 4, 8)?;
        (0..n)
            .map(|i| crate::read::be64(co64, 8 + i * 8))
            .collect::<Result<_, _>>()?
    };
    let stsc = need(b"stsc")?;
    let runs = table(stsc, 4, 12)?;
    let stsc: Vec<(u32, u32)> = (0..runs)
        .map(|i| Ok((be32(stsc, 8 + i * 12)?, be32(stsc, 12 + i * 12)?)))
        .collect::<Result<_, RecordError>>()?;
    let stts = need(b"stts")?;
    let n = table(stts, 4, 8)?;
    let mut durations = Vec::with_capacity(count);
    for i in 0..n {
        let (c, d) = (be32(stts, 8 + i * 8)?, be32(stts, 12 + i * 8)?);
        for _ in 0..c {
            if durations.len() >= count {
                break;
            }
            durations.push(d);
        }
    }
    let mut cts = vec![0i32; count];
    if let Some(ctts) = child(stbl, b"ctts")? {
        let n = table(ctts, 4, 8)?;
        let mut at = 0usize;
        for i in 0..n {
            let (c, o) = (be32(ctts, 8 + i * 8)?, be32(ctts, 12 + i * 8)? as i32);
            for _ in 0..c {
                if at >= count {
                    break;
                }
                cts[at] = o;
                at += 1;
            }
        }
    }
    let sync: Option<Vec<u32>> = child(stbl, b"stss")?
        .map(|stss| {
            let n = table(stss, 4, 4)?;
            (0..n)
                .map(|i| be32(stss, 8 + i * 4))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let mut out = Vec::with_capacity(count);
    let mut dts = 0i64;
    let mut sample = 0usize;
    for (chunk, &offset) in offsets.iter().enumerate() {
        // The run that covers this chunk (chunks are numbered from 1).
        let per = stsc
            .iter()
            .rev()
            .find(|(first, _)| *first as usize <= chunk + 1)
            .map_or(0, |r| r.1);
        let mut at = offset;
        for _ in 0..per {
            if sample >= count {
                break;
            }
            let size = sizes[sample];
            out.push(TableSample {
                offset: at,
                size,
                dts,
                cts: cts[sample],
                sync: sync
                    .as_ref()
                    .is_none_or(|s| s.binary_search(&(sample as u32 + 1)).is_ok()),
            });
            at += u64::from(size);
            dts += i64::from(durations.get(sample).copied().unwrap_or(0));
            sample += 1;
        }
    }
    Ok(out)
}

/// NAL units with `n`-byte length prefixes (1 or 2) re-prefixed with 4 bytes.
fn prefix4(sample: &[u8], n: u8) -> Bytes {
    let n = usize::from(n);
    let mut out = BytesMut::with_capacity(sample.len() + sample.len() / 4);
    let mut rest = sample;
    while rest.len() >= n {
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        let Some(nal) = rest.get(n..n + len) else {
            break;
        };
        out.put_u32(len as u32);
        out.put_slice(nal);
        rest = &rest[n + len..];
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esds_gives_the_audio_specific_config() {
        // ES_Descriptor (ES_ID 1, no flags) > DecoderConfigDescriptor (0x40, audio) >
        // DecSpecificInfo 0x12 0x10 (AAC-LC 44.1 kHz stereo).
        let mut esds = vec![0, 0, 0, 0];
        let dsi = [0x05, 2, 0x12, 0x10];
        let mut dc = vec![0x04, (13 + dsi.len()) as u8, 0x40, 0x15];
        dc.extend_from_slice(&[0; 11]);
        dc.extend_from_slice(&dsi);
        esds.extend_from_slice(&[0x03, (3 + dc.len()) as u8, 0, 1, 0]);
        esds.extend_from_slice(&dc);
        assert_eq!(
            esds_params(&esds),
            Some(CodecParams::Aac {
                config: Bytes::from_static(&[0x12, 0x10])
            })
        );
        assert_eq!(esds_params(&esds[..esds.len() - 1]), None);
    }

    #[test]
    fn short_length_prefixes_become_four_bytes() {
        let s = [0, 2, 0x65, 0xaa, 0, 1, 0x41];
        assert_eq!(
            &prefix4(&s, 2)[..],
            &[0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 1, 0x41]
        );
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        assert!(parse_init(b"\0\0\0\x08moov").is_err());
        assert!(parse_init(&[0xff; 64]).is_err());
        let frames = fragment_frames(&[], &Bytes::from_static(b"\0\0\0\x10moofxxxxxxxx"));
        assert!(frames.is_err());
    }
}
