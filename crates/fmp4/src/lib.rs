//! A fragmented MP4 (ISO BMFF / CMAF) writer.
//!
//! [`InitTrack::from_params`] turns a track's codec parameters into what the `moov` needs;
//! [`init_segment`] writes `ftyp` + `moov`, and [`fragment`] writes one `moof` + `mdat` holding
//! any number of samples of any number of tracks. Fragments are independent of each other, so
//! a writer can emit one per frame (CMAF chunks, for low latency) or one per second; callers
//! decide, nothing here knows about HLS.
//!
//! Only what live streaming needs is written: no sample tables in `moov` (every sample is in a
//! fragment), no edit lists, 64-bit `tfdt`, signed composition offsets (`trun` version 1).

mod boxes;

use bytes::{BufMut, Bytes, BytesMut};
use tidegate_codec::{aac, av1, h264, h265, vp9};
use tidegate_core::CodecParams;

use boxes::{full_box, mp4_box};

/// Why a track cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fmp4Error {
    #[error("codec {0} cannot be carried in fMP4 by this writer")]
    Unsupported(&'static str),
    #[error("bad codec parameters: {0}")]
    Codec(#[from] tidegate_codec::CodecError),
    #[error("VP9 track has not sent a key frame yet")]
    NeedKeyFrame,
}

/// The codec-specific part of a track's sample description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SampleEntry {
    Avc {
        avcc: Bytes,
    },
    Hevc {
        hvcc: Bytes,
    },
    Av1 {
        av1c: Bytes,
    },
    Vp9 {
        info: vp9::KeyFrameInfo,
    },
    Aac {
        config: Bytes,
        channels: u8,
    },
    Opus {
        channels: u8,
    },
    Vp8,
    /// MPEG-1/2 Audio (MP3) in `mp4a` with object type 0x6B.
    Mp3 {
        channels: u8,
    },
    /// AC-3 with its `dac3` fields.
    Ac3 {
        dac3: [u8; 3],
        channels: u8,
    },
    /// G.711 as it arrived, in a QuickTime `ulaw` / `alaw` entry (ffmpeg and GStreamer read it).
    G711 {
        alaw: bool,
        channels: u8,
    },
}

/// One track of an init segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitTrack {
    /// 1-based `track_ID`, used again in fragments.
    pub id: u32,
    /// Ticks per second of every timestamp and duration of this track.
    pub timescale: u32,
    pub width: u32,
    pub height: u32,
    pub sample_rate: u32,
    pub entry: SampleEntry,
    /// The RFC 6381 codec string (for HLS `CODECS`, DASH, MSE).
    pub codec: String,
}

/// The timescale of video tracks.
pub const VIDEO_TIMESCALE: u32 = 90_000;

impl InitTrack {
    /// Describes a track with `params` for an init segment. `first_frame` is needed by VP9 (whose dimensions
    /// and profile are only in key frames).
    pub fn from_params(
        id: u32,
        params: &CodecParams,
        first_frame: Option<&[u8]>,
    ) -> Result<InitTrack, Fmp4Error> {
        let video = |entry, codec, width, height| InitTrack {
            id,
            timescale: VIDEO_TIMESCALE,
            width,
            height,
            sample_rate: 0,
            entry,
            codec,
        };
        Ok(match params {
            CodecParams::H264 { sps, pps } => {
                let info = h264::parse_sps(sps)?;
                let avcc = h264::AvcConfig::build(sps, pps)?;
                video(
                    SampleEntry::Avc { avcc },
                    info.codec_string(),
                    info.width,
                    info.height,
                )
            }
            CodecParams::H265 { vps, sps, pps } => {
                let info = h265::parse_sps(sps)?;
                let hvcc = h265::HevcConfig::build(vps, sps, pps)?;
                video(
                    SampleEntry::Hevc { hvcc },
                    info.codec_string(),
                    info.width,
                    info.height,
                )
            }
            CodecParams::Av1 { sequence_header } => {
                let info = av1::parse_sequence_header(sequence_header)?;
                let av1c = av1::build_av1c(sequence_header)?;
                video(
                    SampleEntry::Av1 { av1c },
                    info.codec_string(),
                    info.max_width,
                    info.max_height,
                )
            }
            CodecParams::Vp9 => {
                let frame = first_frame.ok_or(Fmp4Error::NeedKeyFrame)?;
                let info = vp9::parse_keyframe(frame)?.ok_or(Fmp4Error::NeedKeyFrame)?;
                video(
                    SampleEntry::Vp9 { info },
                    info.codec_string(),
                    info.width,
                    info.height,
                )
            }
            CodecParams::Aac { config } => {
                let asc = aac::AudioSpecificConfig::parse(config)?;
                InitTrack {
                    id,
                    timescale: asc.sample_rate,
                    width: 0,
                    height: 0,
                    sample_rate: asc.sample_rate,
                    entry: SampleEntry::Aac {
                        config: config.clone(),
                        channels: asc.channels.max(1),
                    },
                    codec: asc.codec_string(),
                }
            }
            CodecParams::Opus { channels } => InitTrack {
                id,
                timescale: 48_000,
                width: 0,
                height: 0,
                sample_rate: 48_000,
                entry: SampleEntry::Opus {
                    channels: (*channels).clamp(1, 2),
                },
                codec: "opus".to_string(),
            },
            other => return Err(Fmp4Error::Unsupported(other.codec().name())),
        })
    }

    pub fn is_video(&self) -> bool {
        matches!(
            self.entry,
            SampleEntry::Avc { .. }
                | SampleEntry::Hevc { .. }
                | SampleEntry::Av1 { .. }
                | SampleEntry::Vp9 { .. }
                | SampleEntry::Vp8
        )
    }

    /// As [`InitTrack::from_params`], plus the codecs whose timescale is the track's clock
    /// (VP8, MP3, AC-3, G.711: for recordings, which keep every codec the format allows).
    /// `first_frame` is a frame of the track if one is known (VP8 needs a key frame for its
    /// size; MP3 takes its channel count from a frame header).
    pub fn from_track(
        id: u32,
        params: &CodecParams,
        clock_rate: u32,
        first_frame: Option<&[u8]>,
    ) -> Result<InitTrack, Fmp4Error> {
        let audio = |entry, codec: &str, sample_rate: u32| InitTrack {
            id,
            timescale: clock_rate.max(1),
            width: 0,
            height: 0,
            sample_rate,
            entry,
            codec: codec.to_string(),
        };
        Ok(match params {
            CodecParams::Vp8 => {
                let frame = first_frame.ok_or(Fmp4Error::NeedKeyFrame)?;
                let (width, height) = vp8_size(frame).ok_or(Fmp4Error::NeedKeyFrame)?;
                InitTrack {
                    id,
                    timescale: VIDEO_TIMESCALE,
                    width,
                    height,
                    sample_rate: 0,
                    entry: SampleEntry::Vp8,
                    codec: "vp08.00.10.08".to_string(),
                }
            }
            CodecParams::Mp3 => {
                let (rate, channels) = first_frame.and_then(mp3_header).unwrap_or((44_100, 2));
                audio(SampleEntry::Mp3 { channels }, "mp4a.6B", rate)
            }
            CodecParams::Ac3 {
                sample_rate,
                channels,
            } => audio(
                SampleEntry::Ac3 {
                    dac3: dac3(*sample_rate, *channels),
                    channels: (*channels).max(1),
                },
                "ac-3",
                *sample_rate,
            ),
            CodecParams::G711 {
                law,
                sample_rate,
                channels,
            } => {
                let alaw = *law == tidegate_core::G711Law::ALaw;
                audio(
                    SampleEntry::G711 {
                        alaw,
                        channels: (*channels).max(1),
                    },
                    if alaw { "alaw" } else { "ulaw" },
                    *sample_rate,
                )
            }
            other => InitTrack::from_params(id, other, first_frame)?,
        })
    }
}

/// Writes `ftyp` + `moov` for `tracks`.
pub fn init_segment(tracks: &[InitTrack]) -> Bytes {
    let mut out = BytesMut::with_capacity(1024);
    mp4_box(&mut out, b"ftyp", |b| {
        b.put_slice(b"iso5");
        b.put_u32(512);
        for brand in [b"iso5", b"iso6", b"mp41", b"cmfc"] {
            b.put_slice(brand);
        }
    });
    mp4_box(&mut out, b"moov", |b| {
        full_box(b, b"mvhd", 0, 0, |b| {
            b.put_u32(0); // creation time
            b.put_u32(0); // modification time
            b.put_u32(1000);
            b.put_u32(0); // duration: unknown (fragmented)
            b.put_u32(0x0001_0000); // rate 1.0
            b.put_u16(0x0100); // volume 1.0
            b.put_bytes(0, 10);
            put_matrix(b);
            b.put_bytes(0, 24);
            b.put_u32(tracks.iter().map(|t| t.id).max().unwrap_or(0) + 1);
        });
        for t in tracks {
            write_trak(b, t);
        }
        mp4_box(b, b"mvex", |b| {
            for t in tracks {
                full_box(b, b"trex", 0, 0, |b| {
                    b.put_u32(t.id);
                    b.put_u32(1); // sample description index
                    b.put_u32(0); // default duration
                    b.put_u32(0); // default size
                    b.put_u32(0); // default flags
                });
            }
        });
    });
    out.freeze()
}

fn put_matrix(b: &mut BytesMut) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        b.put_u32(v);
    }
}

fn write_trak(b: &mut BytesMut, t: &InitTrack) {
    let video = t.is_video();
    mp4_box(b, b"trak", |b| {
        full_box(b, b"tkhd", 0, 3, |b| {
            b.put_u32(0);
            b.put_u32(0);
            b.put_u32(t.id);
            b.put_u32(0);
            b.put_u32(0); // duration
            b.put_bytes(0, 8);
            b.put_u16(0); // layer
            b.put_u16(0); // alternate group
            b.put_u16(if video { 0 } else { 0x0100 });
            b.put_u16(0);
            put_matrix(b);
            b.put_u32(t.width << 16);
            b.put_u32(t.height << 16);
        });
        mp4_box(b, b"mdia", |b| {
            full_box(b, b"mdhd", 0, 0, |b| {
                b.put_u32(0);
                b.put_u32(0);
                b.put_u32(t.timescale);
                b.put_u32(0);
                b.put_u16(0x55c4); // 'und'
                b.put_u16(0);
            });
            full_box(b, b"hdlr", 0, 0, |b| {
                b.put_u32(0);
                b.put_slice(if video { b"vide" } else { b"soun" });
                b.put_bytes(0, 12);
                b.put_slice(if video {
                    b"VideoHandler\0".as_slice()
                } else {
                    b"SoundHandler\0".as_slice()
                });
            });
            mp4_box(b, b"minf", |b| {
                if video {
                    full_box(b, b"vmhd", 0, 1, |b| b.put_bytes(0, 8));
                } else {
                    full_box(b, b"smhd", 0, 0, |b| b.put_u32(0));
                }
                mp4_box(b, b"dinf", |b| {
                    full_box(b, b"dref", 0, 0, |b| {
                        b.put_u32(1);
                        full_box(b, b"url ", 0, 1, |_| {});
                    });
                });
                mp4_box(b, b"stbl", |b| {
                    full_box(b, b"stsd", 0, 0, |b| {
                        b.put_u32(1);
                        write_sample_entry(b, t);
                    });
                    full_box(b, b"stts", 0, 0, |b| b.put_u32(0));
                    full_box(b, b"stsc", 0, 0, |b| b.put_u32(0));
                    full_box(b, b"stsz", 0, 0, |b| {
                        b.put_u32(0);
                        b.put_u32(0);
                    });
                    full_box(b, b"stco", 0, 0, |b| b.put_u32(0));
                });
            });
        });
    });
}

fn visual_entry(
    b: &mut BytesMut,
    kind: &[u8; 4],
    t: &InitTrack,
    config: impl FnOnce(&mut BytesMut),
) {
    mp4_box(b, kind, |b| {
        b.put_bytes(0, 6);
        b.put_u16(1); // data reference index
        b.put_bytes(0, 16); // pre_defined, reserved
        b.put_u16(t.width.min(0xffff) as u16);
        b.put_u16(t.height.min(0xffff) as u16);
        b.put_u32(0x0048_0000);
        b.put_u32(0x0048_0000);
        b.put_u32(0);
        b.put_u16(1); // frame count
        b.put_bytes(0, 32); // compressor name
        b.put_u16(0x0018);
        b.put_i16(-1);
        config(b);
    });
}

fn audio_entry(
    b: &mut BytesMut,
    kind: &[u8; 4],
    t: &InitTrack,
    channels: u8,
    config: impl FnOnce(&mut BytesMut),
) {
    mp4_box(b, kind, |b| {
        b.put_bytes(0, 6);
        b.put_u16(1);
        b.put_bytes(0, 8);
        b.put_u16(u16::from(channels));
        b.put_u16(16);
        b.put_u32(0);
        b.put_u32(if t.sample_rate <= 0xffff {
            t.sample_rate << 16
        } else {
            0
        });
        config(b);
    });
}

fn write_sample_entry(b: &mut BytesMut, t: &InitTrack) {
    match &t.entry {
        SampleEntry::Avc { avcc } => visual_entry(b, b"avc1", t, |b| {
            mp4_box(b, b"avcC", |b| b.put_slice(avcc));
        }),
        SampleEntry::Hevc { hvcc } => visual_entry(b, b"hvc1", t, |b| {
            mp4_box(b, b"hvcC", |b| b.put_slice(hvcc));
        }),
        SampleEntry::Av1 { av1c } => visual_entry(b, b"av01", t, |b| {
            mp4_box(b, b"av1C", |b| b.put_slice(av1c));
        }),
        SampleEntry::Vp9 { info } => visual_entry(b, b"vp09", t, |b| {
            full_box(b, b"vpcC", 1, 0, |b| {
                b.put_u8(info.profile);
                b.put_u8(41);
                b.put_u8(
                    (info.bit_depth << 4)
                        | (info.chroma_subsampling << 1)
                        | u8::from(info.full_range),
                );
                b.put_u8(2); // colour primaries: unspecified
                b.put_u8(2);
                b.put_u8(2);
                b.put_u16(0);
            });
        }),
        SampleEntry::Aac { config, channels } => audio_entry(b, b"mp4a", t, *channels, |b| {
            full_box(b, b"esds", 0, 0, |b| write_esds(b, t.id, 0x40, config));
        }),
        SampleEntry::Mp3 { channels } => audio_entry(b, b"mp4a", t, *channels, |b| {
            full_box(b, b"esds", 0, 0, |b| write_esds(b, t.id, 0x6b, &[]));
        }),
        SampleEntry::Ac3 { dac3, channels } => audio_entry(b, b"ac-3", t, *channels, |b| {
            mp4_box(b, b"dac3", |b| b.put_slice(dac3));
        }),
        SampleEntry::G711 { alaw, channels } => audio_entry(
            b,
            if *alaw { b"alaw" } else { b"ulaw" },
            t,
            *channels,
            |_| {},
        ),
        SampleEntry::Vp8 => visual_entry(b, b"vp08", t, |b| {
            full_box(b, b"vpcC", 1, 0, |b| {
                b.put_u8(0); // profile
                b.put_u8(10); // level
                b.put_u8((8 << 4) | (1 << 1)); // 8 bits, 4:2:0 colocated, limited range
                b.put_u8(2);
                b.put_u8(2);
                b.put_u8(2);
                b.put_u16(0);
            });
        }),
        SampleEntry::Opus { channels } => audio_entry(b, b"Opus", t, *channels, |b| {
            mp4_box(b, b"dOps", |b| {
                b.put_u8(0); // version
                b.put_u8(*channels);
                b.put_u16(3840); // pre-skip: 80 ms, libopus' default
                b.put_u32(48_000);
                b.put_i16(0);
                b.put_u8(0); // channel mapping family 0: mono or stereo
            });
        }),
    }
}

/// MPEG-4 descriptors with one-byte sizes (every descriptor here is shorter than 128 bytes,
/// AudioSpecificConfigs are at most 5 bytes as [`aac`] writes them, a few more as encoders do).
fn write_esds(b: &mut BytesMut, es_id: u32, object_type: u8, asc: &[u8]) {
    let asc = &asc[..asc.len().min(64)];
    let dsi_len = asc.len();
    let dcd_len = 13 + if dsi_len > 0 { 2 + dsi_len } else { 0 };
    let es_len = 3 + 2 + dcd_len + 3;
    b.put_u8(0x03);
    b.put_u8(es_len as u8);
    b.put_u16(es_id.min(0xffff) as u16);
    b.put_u8(0);
    b.put_u8(0x04);
    b.put_u8(dcd_len as u8);
    b.put_u8(object_type); // 0x40 AAC (ISO/IEC 14496-3), 0x6B MPEG-1 Audio
    b.put_u8(0x15); // audio stream
    b.put_uint(0, 3); // buffer size
    b.put_u32(0); // max bitrate
    b.put_u32(0); // average bitrate
    if dsi_len > 0 {
        b.put_u8(0x05);
        b.put_u8(dsi_len as u8);
        b.put_slice(asc);
    }
    b.put_u8(0x06);
    b.put_u8(1);
    b.put_u8(0x02);
}

/// Width and height of a VP8 key frame (RFC 6386 §9.1), or None for an inter frame.
pub fn vp8_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    (w > 0 && h > 0).then_some((w, h))
}

/// Sample rate and channels of an MPEG audio frame header.
pub fn mp3_header(frame: &[u8]) -> Option<(u32, u8)> {
    if frame.len() < 4 || frame[0] != 0xff || frame[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (frame[1] >> 3) & 3; // 0: 2.5, 2: 2, 3: 1
    let base = match (frame[2] >> 2) & 3 {
        0 => 44_100,
        1 => 48_000,
        2 => 32_000,
        _ => return None,
    };
    let rate = match version {
        3 => base,
        2 => base / 2,
        0 => base / 4,
        _ => return None,
    };
    let channels = if frame[3] >> 6 == 3 { 1 } else { 2 };
    Some((rate, channels))
}

/// The `dac3` fields (ETSI TS 102 366 F.4) for a stream of `sample_rate` and `channels`:
/// fscod, bsid 8, bsmod 0, acmod and lfeon from the channel count, bit rate code 448 kbit/s
/// (informational: decoders read each frame's own header).
fn dac3(sample_rate: u32, channels: u8) -> [u8; 3] {
    let fscod: u32 = match sample_rate {
        48_000 => 0,
        44_100 => 1,
        _ => 2,
    };
    let (acmod, lfeon): (u32, u32) = match channels {
        1 => (1, 0),
        3 => (3, 0),
        4 => (6, 0),
        5 => (7, 0),
        6 => (7, 1),
        _ => (2, 0),
    };
    let v = (fscod << 22) | (8 << 17) | (acmod << 11) | (lfeon << 10) | (15 << 5);
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// One sample of a fragment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Ticks of the track's timescale until the next sample.
    pub duration: u32,
    /// Presentation time minus decode time, in ticks.
    pub composition_offset: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// The samples of one track in a fragment.
pub struct TrackRun<'a> {
    pub track_id: u32,
    /// Decode time of the first sample, in ticks of the track's timescale.
    pub base_decode_time: u64,
    pub samples: &'a [Sample],
}

const FLAGS_SYNC: u32 = 0x0200_0000; // sample_depends_on = 2 (independent)
const FLAGS_NON_SYNC: u32 = 0x0101_0000; // depends_on = 1, is_non_sync_sample

/// The `moof` + `mdat` of one fragment. Runs without samples are left out; returns an empty
/// buffer when no run has any.
pub fn fragment(sequence: u32, runs: &[TrackRun<'_>]) -> Bytes {
    let runs: Vec<&TrackRun<'_>> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    if runs.is_empty() {
        return Bytes::new();
    }
    let data_len: usize = runs
        .iter()
        .flat_map(|r| r.samples.iter())
        .map(|s| s.data.len())
        .sum();
    let mut out = BytesMut::with_capacity(
        256 + 16 * runs.iter().map(|r| r.samples.len()).sum::<usize>() + data_len,
    );
    let mut offset_slots = Vec::with_capacity(runs.len());
    mp4_box(&mut out, b"moof", |b| {
        full_box(b, b"mfhd", 0, 0, |b| b.put_u32(sequence));
        for r in &runs {
            mp4_box(b, b"traf", |b| {
                full_box(b, b"tfhd", 0, 0x02_0000, |b| b.put_u32(r.track_id));
                full_box(b, b"tfdt", 1, 0, |b| b.put_u64(r.base_decode_time));
                // data offset, duration, size, flags and composition offset per sample
                full_box(b, b"trun", 1, 0x0f01, |b| {
                    b.put_u32(r.samples.len() as u32);
                    offset_slots.push(b.len());
                    b.put_i32(0);
                    for s in r.samples {
                        b.put_u32(s.duration);
                        b.put_u32(s.data.len() as u32);
                        b.put_u32(if s.keyframe {
                            FLAGS_SYNC
                        } else {
                            FLAGS_NON_SYNC
                        });
                        b.put_i32(s.composition_offset);
                    }
                });
            });
        }
    });
    let moof_len = out.len();
    let mut data_offset = moof_len + 8;
    for (slot, r) in offset_slots.iter().zip(&runs) {
        out[*slot..*slot + 4].copy_from_slice(&(data_offset as i32).to_be_bytes());
        data_offset += r.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    out.put_u32((8 + data_len) as u32);
    out.put_slice(b"mdat");
    for r in &runs {
        for s in r.samples {
            out.put_slice(&s.data);
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests;
