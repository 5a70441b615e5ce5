//! The packet model: codecs and their out-of-band parameters, tracks, and frames.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

/// A codec, without its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    H265,
    Av1,
    Vp8,
    Vp9,
    Opus,
    Aac,
    G711,
    Mp3,
    Ac3,
    G722,
    G726,
    Lpcm,
    Mjpeg,
    Mpeg4Video,
    Mpeg12Video,
}

impl Codec {
    /// The name the control API shows (MediaMTX's names where it has one).
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
            Codec::Av1 => "AV1",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Opus => "Opus",
            Codec::Aac => "MPEG-4 Audio",
            Codec::G711 => "G711",
            Codec::Mp3 => "MPEG-1/2 Audio",
            Codec::Ac3 => "AC3",
            Codec::G722 => "G722",
            Codec::G726 => "G726",
            Codec::Lpcm => "LPCM",
            Codec::Mjpeg => "M-JPEG",
            Codec::Mpeg4Video => "MPEG-4 Video",
            Codec::Mpeg12Video => "MPEG-1/2 Video",
        }
    }

    pub fn is_video(self) -> bool {
        matches!(
            self,
            Codec::H264
                | Codec::H265
                | Codec::Av1
                | Codec::Vp8
                | Codec::Vp9
                | Codec::Mjpeg
                | Codec::Mpeg4Video
                | Codec::Mpeg12Video
        )
    }
}

/// G.711 companding law.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum G711Law {
    MuLaw,
    ALaw,
}

/// What a decoder needs to know about a track, out of band. Parameters may change mid-stream;
/// a change travels in band as [`Frame::params`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecParams {
    /// H.264: one SPS and one PPS (NAL units without start codes or length prefixes).
    H264 {
        sps: Bytes,
        pps: Bytes,
    },
    /// H.265: VPS, SPS and PPS NAL units.
    H265 {
        vps: Bytes,
        sps: Bytes,
        pps: Bytes,
    },
    /// AV1: the sequence header OBU.
    Av1 {
        sequence_header: Bytes,
    },
    Vp8,
    Vp9,
    Opus {
        channels: u8,
    },
    /// AAC: the AudioSpecificConfig.
    Aac {
        config: Bytes,
    },
    G711 {
        law: G711Law,
        sample_rate: u32,
        channels: u8,
    },
    Mp3,
    Ac3 {
        sample_rate: u32,
        channels: u8,
    },
    /// G.722 (16 kHz mono; its RTP clock is 8 kHz, RFC 3551).
    G722,
    /// G.726 ADPCM at 8 kHz mono, `bits` (2 to 5) per sample: 16, 24, 32 or 40 kbit/s.
    /// `big_endian`: samples packed from the most significant bit (`AAL2-G726-*`), else
    /// from the least (`G726-*`, RFC 3551).
    G726 {
        bits: u8,
        big_endian: bool,
    },
    /// Linear PCM, big-endian signed samples of `bits` (16 or 24), interleaved.
    Lpcm {
        bits: u8,
        sample_rate: u32,
        channels: u8,
    },
    /// Motion JPEG: each frame a whole baseline JPEG image.
    Mjpeg,
    /// MPEG-4 Part 2 video: `config` is the visual object sequence header up to the VOL
    /// (empty when it only comes in band).
    Mpeg4Video {
        config: Bytes,
    },
    /// MPEG-1 or MPEG-2 video (sequence headers in band).
    Mpeg12Video,
}

impl CodecParams {
    pub fn codec(&self) -> Codec {
        match self {
            CodecParams::H264 { .. } => Codec::H264,
            CodecParams::H265 { .. } => Codec::H265,
            CodecParams::Av1 { .. } => Codec::Av1,
            CodecParams::Vp8 => Codec::Vp8,
            CodecParams::Vp9 => Codec::Vp9,
            CodecParams::Opus { .. } => Codec::Opus,
            CodecParams::Aac { .. } => Codec::Aac,
            CodecParams::G711 { .. } => Codec::G711,
            CodecParams::Mp3 => Codec::Mp3,
            CodecParams::Ac3 { .. } => Codec::Ac3,
            CodecParams::G722 => Codec::G722,
            CodecParams::G726 { .. } => Codec::G726,
            CodecParams::Lpcm { .. } => Codec::Lpcm,
            CodecParams::Mjpeg => Codec::Mjpeg,
            CodecParams::Mpeg4Video { .. } => Codec::Mpeg4Video,
            CodecParams::Mpeg12Video => Codec::Mpeg12Video,
        }
    }
}

/// Identifies a track within one publish.
pub type TrackId = u32;

/// One elementary stream of a publish. Frame timestamps of this track are integer ticks of
/// `1 / clock_rate` seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Track {
    pub id: TrackId,
    pub params: CodecParams,
    pub clock_rate: u32,
}

impl Track {
    pub fn codec(&self) -> Codec {
        self.params.codec()
    }
}

/// What an egress carries of a stream for a reader: the tracks it sends and those it leaves
/// out, with why (the API shows it per reader).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carriage {
    pub carried: Vec<&'static str>,
    pub dropped: Vec<(&'static str, String)>,
}

impl Carriage {
    /// Sorts `desc`'s tracks by `why_not` (None: carried; Some(reason): left out).
    pub fn sort(desc: &StreamDesc, why_not: impl Fn(&Track) -> Option<String>) -> Carriage {
        let mut c = Carriage::default();
        for t in &desc.tracks {
            match why_not(t) {
                None => c.carried.push(t.codec().name()),
                Some(reason) => c.dropped.push((t.codec().name(), reason)),
            }
        }
        c
    }
}

/// The tracks of one publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamDesc {
    pub tracks: Vec<Track>,
}

impl StreamDesc {
    pub fn track(&self, id: TrackId) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// The track whose keyframes start a GOP: the first video track, else the first track.
    pub fn key_track(&self) -> Option<TrackId> {
        self.tracks
            .iter()
            .find(|t| t.codec().is_video())
            .or_else(|| self.tracks.first())
            .map(|t| t.id)
    }

    /// Codec names in track order, as the API shows them.
    pub fn codec_names(&self) -> Vec<&'static str> {
        self.tracks.iter().map(|t| t.codec().name()).collect()
    }
}

/// One access unit.
///
/// `data` is in the one canonical form of its codec: H.264/H.265 as 4-byte length-prefixed NAL
/// units, AV1 as low-overhead OBUs with sizes, VP8/VP9 raw frames, AAC raw frames (no ADTS),
/// Opus packets. Cloning is cheap: the payload is shared, never copied per reader.
#[derive(Clone, Debug)]
pub struct Frame {
    pub track: TrackId,
    /// Presentation time in ticks of the track's clock rate.
    pub pts: i64,
    /// Decode time in ticks of the track's clock rate.
    pub dts: i64,
    /// The frame can be decoded without earlier frames (IDR/IRAP for video; every audio frame).
    pub keyframe: bool,
    pub data: Bytes,
    /// When the frame entered the gateway, to measure the latency each egress adds.
    pub received: Instant,
    /// New codec parameters that apply from this frame on, when they changed mid-stream.
    pub params: Option<Arc<CodecParams>>,
}

/// Converts `value` ticks of `1/from` seconds into ticks of `1/to` seconds, rounding toward
/// negative infinity, without overflow for any realistic timestamp.
pub fn rescale(value: i64, from: u32, to: u32) -> i64 {
    if from == to || from == 0 {
        return value;
    }
    let v = i128::from(value) * i128::from(to);
    let d = i128::from(from);
    let q = v.div_euclid(d);
    q.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_converts_between_timebases() {
        assert_eq!(rescale(90_000, 90_000, 1000), 1000);
        assert_eq!(rescale(1, 1000, 90_000), 90);
        assert_eq!(rescale(-1, 90_000, 1000), -1);
        assert_eq!(
            rescale(48_000 * 3600 * 24 * 365, 48_000, 90_000),
            90_000 * 3600 * 24 * 365
        );
        assert_eq!(rescale(i64::MAX, 1, 90_000), i64::MAX);
    }

    #[test]
    fn key_track_prefers_video() {
        let desc = StreamDesc {
            tracks: vec![
                Track {
                    id: 1,
                    params: CodecParams::Opus { channels: 2 },
                    clock_rate: 48_000,
                },
                Track {
                    id: 2,
                    params: CodecParams::Vp8,
                    clock_rate: 90_000,
                },
            ],
        };
        assert_eq!(desc.key_track(), Some(2));
        assert_eq!(desc.codec_names(), vec!["Opus", "VP8"]);
    }
}
