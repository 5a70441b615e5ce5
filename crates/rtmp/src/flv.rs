//! FLV tag bodies (what RTMP audio and video messages carry) to and from the packet model,
//! with Enhanced RTMP (FourCC) video and audio.

use std::sync::Arc;
use std::time::Instant;

use crate::RtmpError;
use bytes::{BufMut, Bytes, BytesMut};
use tidegate_codec::aac::AudioSpecificConfig;
use tidegate_codec::h264::AvcConfig;
use tidegate_codec::h265::HevcConfig;
use tidegate_codec::opus::OpusHead;
use tidegate_codec::{h264, h265, nal};
use tidegate_core::{CodecParams, Frame, G711Law, TrackId};

pub const VIDEO_TRACK: TrackId = 0;
pub const AUDIO_TRACK: TrackId = 1;
pub const VIDEO_CLOCK: u32 = 90_000;

/// What one RTMP audio or video message turned into.
#[derive(Debug)]
pub enum Parsed {
    /// New decoder parameters (sequence header).
    Params(CodecParams),
    /// A coded frame, timestamps in ms (pts = dts + composition offset).
    Frame {
        dts_ms: i64,
        cts_ms: i64,
        keyframe: bool,
        data: Bytes,
    },
    /// Nothing to forward (end of sequence, metadata, unsupported packet types we tolerate).
    Nothing,
}

fn si24(b: &[u8]) -> i64 {
    let v = (i32::from(b[0]) << 16) | (i32::from(b[1]) << 8) | i32::from(b[2]);
    i64::from((v << 8) >> 8)
}

/// Per-publisher video state: the NAL length size of the current configuration.
#[derive(Debug, Default, Clone)]
pub struct VideoState {
    params: Option<CodecParams>,
    length_size: usize,
}

impl VideoState {
    pub fn params(&self) -> Option<&CodecParams> {
        self.params.as_ref()
    }

    /// Parses a video tag body.
    pub fn parse(&mut self, ts_ms: i64, body: &Bytes) -> Result<Parsed, RtmpError> {
        let b0 = *body.first().ok_or(RtmpError::FlvTruncated("video"))?;
        if b0 & 0x80 != 0 {
            return self.parse_enhanced(ts_ms, body);
        }
        let frame_type = b0 >> 4;
        if frame_type == 5 {
            return Ok(Parsed::Nothing); // video info/command frame
        }
        match b0 & 0x0f {
            7 => {
                let hdr = body.get(1..5).ok_or(RtmpError::FlvTruncated("AVC video"))?;
                let cts = si24(&hdr[1..4]);
                let data = body.slice(5..);
                match hdr[0] {
                    0 => self.configure_avc(&data),
                    1 => self.frame(ts_ms, cts, data, false),
                    _ => Ok(Parsed::Nothing),
                }
            }
            12 => {
                // HEVC with the non-standard codec id 12 (pre-Enhanced-RTMP forks).
                let hdr = body
                    .get(1..5)
                    .ok_or(RtmpError::FlvTruncated("HEVC video"))?;
                let cts = si24(&hdr[1..4]);
                let data = body.slice(5..);
                match hdr[0] {
                    0 => self.configure_hevc(&data),
                    1 => self.frame(ts_ms, cts, data, true),
                    _ => Ok(Parsed::Nothing),
                }
            }
            id => Err(RtmpError::FlvUnsupported(format!("video codec id {id}"))),
        }
    }

    fn parse_enhanced(&mut self, ts_ms: i64, body: &Bytes) -> Result<Parsed, RtmpError> {
        let b0 = body[0];
        let packet_type = b0 & 0x0f;
        let frame_type = (b0 >> 4) & 0x07;
        let fourcc = body
            .get(1..5)
            .ok_or(RtmpError::FlvTruncated("Enhanced RTMP video"))?;
        let rest = body.slice(5..);
        if matches!(packet_type, 2 | 4 | 7) || frame_type == 5 {
            return Ok(Parsed::Nothing); // end of sequence, metadata, ModEx, command frames
        }
        match (fourcc, packet_type) {
            (b"avc1", 0) => self.configure_avc(&rest),
            (b"hvc1", 0) => self.configure_hevc(&rest),
            (b"av01", 0) => {
                let seq = tidegate_codec::av1::sequence_header_of_av1c(&rest)?;
                let params = CodecParams::Av1 {
                    sequence_header: seq,
                };
                self.params = Some(params.clone());
                Ok(Parsed::Params(params))
            }
            (b"vp09", 0) => {
                self.params = Some(CodecParams::Vp9);
                Ok(Parsed::Params(CodecParams::Vp9))
            }
            (b"avc1" | b"hvc1", 1) => {
                let cts = si24(rest.get(0..3).ok_or(RtmpError::FlvTruncated("video"))?);
                self.frame(ts_ms, cts, rest.slice(3..), fourcc == b"hvc1")
            }
            (b"avc1" | b"hvc1", 3) => self.frame(ts_ms, 0, rest, fourcc == b"hvc1"),
            // AV1 and VP9 coded frames have no composition offset (no reordering on the wire);
            // the key flag is the frame type of the header.
            (b"av01" | b"vp09", 1 | 3) => {
                if self.params.is_none() {
                    return Err(RtmpError::NoSequenceHeader);
                }
                if fourcc == b"av01" {
                    tidegate_codec::av1::split_obus(&rest)?;
                }
                Ok(Parsed::Frame {
                    dts_ms: ts_ms,
                    cts_ms: 0,
                    keyframe: frame_type == 1,
                    data: rest,
                })
            }
            (b"avc1" | b"hvc1" | b"av01" | b"vp09", t) => Err(RtmpError::FlvUnsupported(format!(
                "Enhanced RTMP video packet type {t}"
            ))),
            (other, _) => Err(RtmpError::FlvUnsupported(format!(
                "Enhanced RTMP video FourCC {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    fn configure_avc(&mut self, record: &[u8]) -> Result<Parsed, RtmpError> {
        let c = AvcConfig::parse(record)?;
        let params = CodecParams::H264 {
            sps: c.sps[0].clone(),
            pps: c.pps[0].clone(),
        };
        self.length_size = usize::from(c.length_size);
        self.params = Some(params.clone());
        Ok(Parsed::Params(params))
    }

    fn configure_hevc(&mut self, record: &[u8]) -> Result<Parsed, RtmpError> {
        let c = HevcConfig::parse(record)?;
        let params = CodecParams::H265 {
            vps: c.vps[0].clone(),
            sps: c.sps[0].clone(),
            pps: c.pps[0].clone(),
        };
        self.length_size = usize::from(c.length_size);
        self.params = Some(params.clone());
        Ok(Parsed::Params(params))
    }

    fn frame(&self, ts_ms: i64, cts: i64, data: Bytes, hevc: bool) -> Result<Parsed, RtmpError> {
        if self.params.is_none() {
            return Err(RtmpError::NoSequenceHeader);
        }
        let nals = nal::split_length_prefixed(&data, self.length_size)?;
        let keyframe = if hevc {
            h265::is_keyframe(nals.iter().copied())
        } else {
            h264::is_keyframe(nals.iter().copied())
        };
        // The canonical form is 4-byte lengths: most encoders already send that, zero-copy.
        let data = if self.length_size == 4 {
            data
        } else {
            nal::to_length_prefixed(nals)
        };
        Ok(Parsed::Frame {
            dts_ms: ts_ms,
            cts_ms: cts,
            keyframe,
            data,
        })
    }
}

/// Per-publisher audio state.
#[derive(Debug, Default, Clone)]
pub struct AudioState {
    params: Option<CodecParams>,
    clock_rate: u32,
}

impl AudioState {
    pub fn params(&self) -> Option<&CodecParams> {
        self.params.as_ref()
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    pub fn parse(&mut self, ts_ms: i64, body: &Bytes) -> Result<Parsed, RtmpError> {
        let b0 = *body.first().ok_or(RtmpError::FlvTruncated("audio"))?;
        let frame = |data: Bytes| Parsed::Frame {
            dts_ms: ts_ms,
            cts_ms: 0,
            keyframe: true,
            data,
        };
        match b0 >> 4 {
            10 => {
                let kind = *body.get(1).ok_or(RtmpError::FlvTruncated("AAC audio"))?;
                let data = body.slice(2..);
                if kind == 0 {
                    let asc = AudioSpecificConfig::parse(&data)?;
                    let params = CodecParams::Aac { config: data };
                    self.clock_rate = asc.sample_rate;
                    self.params = Some(params.clone());
                    return Ok(Parsed::Params(params));
                }
                if self.params.is_none() {
                    return Err(RtmpError::NoSequenceHeader);
                }
                Ok(frame(data))
            }
            2 => {
                if self.params.is_none() {
                    self.clock_rate = 90_000;
                    self.params = Some(CodecParams::Mp3);
                    return Ok(Parsed::Params(CodecParams::Mp3));
                }
                Ok(frame(body.slice(1..)))
            }
            f @ (7 | 8) => {
                if self.params.is_none() {
                    let law = if f == 7 {
                        G711Law::ALaw
                    } else {
                        G711Law::MuLaw
                    };
                    let channels = if b0 & 1 == 1 { 2 } else { 1 };
                    let p = CodecParams::G711 {
                        law,
                        sample_rate: 8000,
                        channels,
                    };
                    self.clock_rate = 8000;
                    self.params = Some(p.clone());
                    return Ok(Parsed::Params(p));
                }
                Ok(frame(body.slice(1..)))
            }
            9 => {
                let packet_type = b0 & 0x0f;
                let fourcc = body
                    .get(1..5)
                    .ok_or(RtmpError::FlvTruncated("Enhanced RTMP audio"))?;
                let rest = body.slice(5..);
                if fourcc != b"Opus" {
                    return Err(RtmpError::FlvUnsupported(format!(
                        "Enhanced RTMP audio FourCC {:?}",
                        String::from_utf8_lossy(fourcc)
                    )));
                }
                match packet_type {
                    0 => {
                        let channels = OpusHead::parse(&rest).map(|h| h.channels).unwrap_or(2);
                        let p = CodecParams::Opus { channels };
                        self.clock_rate = 48_000;
                        self.params = Some(p.clone());
                        Ok(Parsed::Params(p))
                    }
                    1 => {
                        if self.params.is_none() {
                            // The Opus sequence header is optional: default to stereo.
                            self.clock_rate = 48_000;
                            self.params = Some(CodecParams::Opus { channels: 2 });
                        }
                        Ok(frame(rest))
                    }
                    _ => Ok(Parsed::Nothing),
                }
            }
            f => Err(RtmpError::FlvUnsupported(format!("audio sound format {f}"))),
        }
    }
}

/// One tag of an FLV file.
#[derive(Debug, Clone)]
pub struct FileTag {
    /// 8 audio, 9 video, 18 script data.
    pub type_id: u8,
    pub timestamp: u32,
    pub body: Bytes,
}

/// Reads the audio, video and script tags of an FLV file (a truncated last tag is dropped).
pub fn read_file(data: &[u8]) -> Result<Vec<FileTag>, RtmpError> {
    if data.len() < 13 || &data[..3] != b"FLV" {
        return Err(RtmpError::FlvTruncated("file header"));
    }
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut pos = header_len.max(9) + 4;
    let mut tags = Vec::new();
    while let Some(h) = data.get(pos..pos + 11) {
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let ts = (u32::from(h[7]) << 24)
            | (u32::from(h[4]) << 16)
            | (u32::from(h[5]) << 8)
            | u32::from(h[6]);
        let Some(body) = data.get(pos + 11..pos + 11 + size) else {
            break;
        };
        if matches!(h[0] & 0x1f, 8 | 9 | 18) {
            tags.push(FileTag {
                type_id: h[0] & 0x1f,
                timestamp: ts,
                body: Bytes::copy_from_slice(body),
            });
        }
        pos += 11 + size + 4;
    }
    Ok(tags)
}

/// Builds a frame of the packet model from a parsed coded frame.
pub fn to_frame(
    track: TrackId,
    clock: u32,
    dts_ms: i64,
    cts_ms: i64,
    keyframe: bool,
    data: Bytes,
    params: Option<Arc<CodecParams>>,
) -> Frame {
    let dts = tidegate_core::rescale(dts_ms, 1000, clock);
    let pts = tidegate_core::rescale(dts_ms + cts_ms, 1000, clock);
    Frame {
        track,
        pts,
        dts,
        keyframe,
        data,
        received: Instant::now(),
        params,
    }
}

/// Whether RTMP (FLV and Enhanced RTMP) carries the codec, and why not.
pub fn why_not(params: &CodecParams) -> Option<String> {
    match params {
        CodecParams::H264 { .. }
        | CodecParams::H265 { .. }
        | CodecParams::Av1 { .. }
        | CodecParams::Vp9
        | CodecParams::Aac { .. }
        | CodecParams::Opus { .. }
        | CodecParams::Mp3
        | CodecParams::G711 { .. } => None,
        other => Some(format!(
            "RTMP (FLV and Enhanced RTMP) has no {}",
            other.codec().name()
        )),
    }
}

/// The sequence-header tag body for parameters, if RTMP can carry the codec.
pub fn sequence_header(params: &CodecParams) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match params {
        CodecParams::H264 { sps, pps } => {
            out.put_slice(&[0x17, 0, 0, 0, 0]);
            out.put_slice(&AvcConfig::build(sps, pps).ok()?);
        }
        CodecParams::H265 { vps, sps, pps } => {
            out.put_u8(0x80 | (1 << 4)); // ex-header, keyframe, SequenceStart
            out.put_slice(b"hvc1");
            out.put_slice(&HevcConfig::build(vps, sps, pps).ok()?);
        }
        CodecParams::Av1 { sequence_header } => {
            out.put_u8(0x80 | (1 << 4));
            out.put_slice(b"av01");
            out.put_slice(&tidegate_codec::av1::build_av1c(sequence_header).ok()?);
        }
        CodecParams::Vp9 => {
            out.put_u8(0x80 | (1 << 4));
            out.put_slice(b"vp09");
            // vpcC version 1: profile 0, level 3.1, 8-bit 4:2:0, colours unspecified. Decoders
            // take the real values from the VP9 frame headers.
            out.put_slice(&[1, 0, 0, 0, 0, 31, 0x82, 2, 2, 2, 0, 0]);
        }
        CodecParams::Aac { config } => {
            out.put_slice(&[0xaf, 0]);
            out.put_slice(config);
        }
        CodecParams::Opus { channels } => {
            out.put_u8(0x90);
            out.put_slice(b"Opus");
            out.put_slice(&OpusHead::new(*channels).to_bytes());
        }
        _ => return None,
    }
    Some(out.freeze())
}

/// The tag body of a coded frame (timestamps in ms), if RTMP can carry the codec.
pub fn frame_tag(params: &CodecParams, keyframe: bool, cts_ms: i64, data: &[u8]) -> Option<Bytes> {
    let cts = cts_ms.clamp(-(1 << 23), (1 << 23) - 1) as i32;
    let cts = &cts.to_be_bytes()[1..];
    let mut out = BytesMut::with_capacity(data.len() + 8);
    match params {
        CodecParams::H264 { .. } => {
            out.put_u8(if keyframe { 0x17 } else { 0x27 });
            out.put_u8(1);
            out.put_slice(cts);
        }
        CodecParams::H265 { .. } => {
            out.put_u8(0x80 | (if keyframe { 1 } else { 2 } << 4) | 1);
            out.put_slice(b"hvc1");
            out.put_slice(cts);
        }
        CodecParams::Av1 { .. } | CodecParams::Vp9 => {
            out.put_u8(0x80 | (if keyframe { 1 } else { 2 } << 4) | 1);
            out.put_slice(if matches!(params, CodecParams::Vp9) {
                b"vp09"
            } else {
                b"av01"
            });
        }
        CodecParams::Aac { .. } => out.put_slice(&[0xaf, 1]),
        CodecParams::Opus { .. } => {
            out.put_u8(0x91);
            out.put_slice(b"Opus");
        }
        CodecParams::Mp3 => out.put_u8(0x2f),
        CodecParams::G711 { law, channels, .. } => {
            let f = if *law == G711Law::ALaw { 7 } else { 8 };
            out.put_u8((f << 4) | 0x02 | u8::from(*channels == 2));
        }
        _ => return None,
    }
    out.put_slice(data);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H264: &[u8] = include_bytes!("../../codec/tests/fixtures/h264_640x360.h264");
    const H265: &[u8] = include_bytes!("../../codec/tests/fixtures/h265_320x180.hevc");

    #[test]
    fn h264_round_trip() {
        let nals = nal::split_annexb(H264);
        let (sps, pps) = h264::find_params(nals.iter().copied()).unwrap();
        let params = CodecParams::H264 {
            sps: Bytes::copy_from_slice(sps),
            pps: Bytes::copy_from_slice(pps),
        };
        let mut v = VideoState::default();
        assert!(matches!(
            v.parse(
                0,
                &Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41])
            ),
            Err(RtmpError::NoSequenceHeader)
        ));
        match v.parse(0, &sequence_header(&params).unwrap()).unwrap() {
            Parsed::Params(p) => assert_eq!(p, params),
            other => panic!("{other:?}"),
        }
        let idr: Vec<&[u8]> = nals
            .iter()
            .copied()
            .filter(|n| h264::nal_type(n) == h264::NAL_IDR)
            .take(1)
            .collect();
        let data = nal::to_length_prefixed(idr);
        let tag = frame_tag(&params, true, 40, &data).unwrap();
        match v.parse(1000, &tag).unwrap() {
            Parsed::Frame {
                dts_ms,
                cts_ms,
                keyframe,
                data: d,
            } => {
                assert_eq!((dts_ms, cts_ms, keyframe), (1000, 40, true));
                assert_eq!(d, data);
            }
            other => panic!("{other:?}"),
        }
        let f = to_frame(VIDEO_TRACK, VIDEO_CLOCK, 1000, 40, true, data, None);
        assert_eq!((f.dts, f.pts), (90_000, 93_600));
    }

    #[test]
    fn hevc_enhanced_round_trip() {
        let nals = nal::split_annexb(H265);
        let (vps, sps, pps) = h265::find_params(nals.iter().copied()).unwrap();
        let params = CodecParams::H265 {
            vps: Bytes::copy_from_slice(vps),
            sps: Bytes::copy_from_slice(sps),
            pps: Bytes::copy_from_slice(pps),
        };
        let mut v = VideoState::default();
        assert!(
            matches!(v.parse(0, &sequence_header(&params).unwrap()).unwrap(), Parsed::Params(p) if p == params)
        );
        let irap: Vec<&[u8]> = nals
            .iter()
            .copied()
            .filter(|n| h265::is_irap(h265::nal_type(n)))
            .take(1)
            .collect();
        let tag = frame_tag(&params, true, -5, &nal::to_length_prefixed(irap)).unwrap();
        assert!(matches!(
            v.parse(0, &tag).unwrap(),
            Parsed::Frame {
                keyframe: true,
                cts_ms: -5,
                ..
            }
        ));
    }

    #[test]
    fn aac_and_opus() {
        let mut a = AudioState::default();
        let params = CodecParams::Aac {
            config: Bytes::from_static(&[0x11, 0x90]),
        };
        assert!(matches!(
            a.parse(0, &sequence_header(&params).unwrap()).unwrap(),
            Parsed::Params(_)
        ));
        assert_eq!(a.clock_rate(), 48_000);
        let tag = frame_tag(&params, true, 0, b"raw").unwrap();
        assert!(matches!(
            a.parse(21, &tag).unwrap(),
            Parsed::Frame { dts_ms: 21, .. }
        ));

        let mut o = AudioState::default();
        let opus = CodecParams::Opus { channels: 2 };
        assert!(
            matches!(o.parse(0, &sequence_header(&opus).unwrap()).unwrap(), Parsed::Params(p) if p == opus)
        );
        let tag = frame_tag(&opus, true, 0, &[0xfc, 1, 2]).unwrap();
        assert!(matches!(o.parse(20, &tag).unwrap(), Parsed::Frame { .. }));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut v = VideoState::default();
        let mut a = AudioState::default();
        for body in [
            &[][..],
            &[0x17],
            &[0x17, 0],
            &[0x17, 0, 0, 0, 0, 1],
            &[0x90, b'x'],
            &[0x80, b'a', b'v', b'c'],
            &[0x37],
        ] {
            let b = Bytes::copy_from_slice(body);
            assert!(v.parse(0, &b).is_err(), "{body:?}");
        }
        for body in [&[][..], &[0xaf], &[0xaf, 0, 0xff], &[0x90, b'O'], &[0x50]] {
            let b = Bytes::copy_from_slice(body);
            assert!(a.parse(0, &b).is_err(), "{body:?}");
        }
    }
}
