//! H.264: NAL unit types, keyframes, SPS facts, and the AVCDecoderConfigurationRecord
//! (`avcC`, used by FLV/RTMP and MP4).

use bytes::{BufMut, Bytes, BytesMut};
use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::rbsp::{decode_nal, BitReader};

use crate::{invalid, CodecError};

pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

/// The type of an H.264 NAL unit (its first byte's low 5 bits).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Whether an access unit (as NAL units) holds an IDR slice.
pub fn is_keyframe<'a>(nals: impl IntoIterator<Item = &'a [u8]>) -> bool {
    nals.into_iter().any(|n| nal_type(n) == NAL_IDR)
}

/// The SPS and PPS found in an access unit, if both are there.
pub fn find_params<'a>(nals: impl IntoIterator<Item = &'a [u8]>) -> Option<(&'a [u8], &'a [u8])> {
    let (mut sps, mut pps) = (None, None);
    for n in nals {
        match nal_type(n) {
            NAL_SPS if sps.is_none() => sps = Some(n),
            NAL_PPS if pps.is_none() => pps = Some(n),
            _ => {}
        }
    }
    Some((sps?, pps?))
}

/// What the SPS says that a player or playlist needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpsInfo {
    pub width: u32,
    pub height: u32,
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
}

impl SpsInfo {
    /// The RFC 6381 codec string, e.g. `avc1.42C01E`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02X}{:02X}{:02X}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }
}

/// Parses an SPS NAL unit (with its one-byte header).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, CodecError> {
    if nal_type(nal) != NAL_SPS {
        return Err(invalid("H.264 SPS", "not an SPS NAL unit"));
    }
    let rbsp = decode_nal(nal).map_err(|_| invalid("H.264 SPS", "bad emulation prevention"))?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..]))
        .map_err(|_| invalid("H.264 SPS", "does not parse"))?;
    let (width, height) = sps
        .pixel_dimensions()
        .map_err(|_| invalid("H.264 SPS", "bad dimensions"))?;
    Ok(SpsInfo {
        width,
        height,
        profile_idc: sps.profile_idc.into(),
        constraint_flags: sps.constraint_flags.into(),
        level_idc: sps.level_idc,
    })
}

/// An AVCDecoderConfigurationRecord, the `avcC` box body and FLV's AVC sequence header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvcConfig {
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    /// Bytes in each NAL length prefix of the samples (1, 2 or 4).
    pub length_size: u8,
}

/// Parameter sets beyond this count in one record are refused (real streams carry one).
const MAX_PARAM_SETS: usize = 32;

impl AvcConfig {
    pub fn parse(data: &[u8]) -> Result<AvcConfig, CodecError> {
        const WHAT: &str = "AVCDecoderConfigurationRecord";
        if data.len() < 7 {
            return Err(CodecError::Truncated(WHAT));
        }
        if data[0] != 1 {
            return Err(invalid(WHAT, "configurationVersion is not 1"));
        }
        let length_size = (data[4] & 0x03) + 1;
        if length_size == 3 {
            return Err(invalid(WHAT, "NAL length size 3"));
        }
        let mut pos = 5;
        let read_sets = |count: usize, pos: &mut usize| -> Result<Vec<Bytes>, CodecError> {
            if count > MAX_PARAM_SETS {
                return Err(invalid(WHAT, "too many parameter sets"));
            }
            let mut sets = Vec::with_capacity(count);
            for _ in 0..count {
                let len_bytes = data
                    .get(*pos..*pos + 2)
                    .ok_or(CodecError::Truncated(WHAT))?;
                let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
                *pos += 2;
                let set = data
                    .get(*pos..*pos + len)
                    .ok_or(CodecError::Truncated(WHAT))?;
                sets.push(Bytes::copy_from_slice(set));
                *pos += len;
            }
            Ok(sets)
        };
        let n_sps = usize::from(data[pos] & 0x1f);
        pos += 1;
        let sps = read_sets(n_sps, &mut pos)?;
        let n_pps = usize::from(*data.get(pos).ok_or(CodecError::Truncated(WHAT))?);
        pos += 1;
        let pps = read_sets(n_pps, &mut pos)?;
        if sps.is_empty() || pps.is_empty() {
            return Err(invalid(WHAT, "no SPS or no PPS"));
        }
        Ok(AvcConfig {
            sps,
            pps,
            length_size,
        })
    }

    /// Builds a record with 4-byte NAL lengths from one SPS and one PPS.
    pub fn build(sps: &[u8], pps: &[u8]) -> Result<Bytes, CodecError> {
        if sps.len() < 4 || sps.len() > 0xffff || pps.is_empty() || pps.len() > 0xffff {
            return Err(invalid("H.264 parameter sets", "bad length"));
        }
        let mut out = BytesMut::with_capacity(11 + sps.len() + pps.len());
        out.put_u8(1);
        out.put_slice(&sps[1..4]); // profile, constraints, level
        out.put_u8(0xff); // 6 reserved bits + lengthSizeMinusOne = 3
        out.put_u8(0xe1); // 3 reserved bits + one SPS
        out.put_u16(sps.len() as u16);
        out.put_slice(sps);
        out.put_u8(1);
        out.put_u16(pps.len() as u16);
        out.put_slice(pps);
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nal::split_annexb;

    const STREAM: &[u8] = include_bytes!("../tests/fixtures/h264_640x360.h264");

    #[test]
    fn sps_of_a_real_stream() {
        let nals = split_annexb(STREAM);
        let (sps, pps) = find_params(nals.iter().copied()).unwrap();
        let info = parse_sps(sps).unwrap();
        assert_eq!((info.width, info.height), (640, 360), "cropping applied");
        assert_eq!(info.profile_idc, 66);
        assert_eq!(info.level_idc, 30);
        assert_eq!(info.codec_string(), "avc1.42C01E");
        assert_eq!(nal_type(pps), NAL_PPS);
    }

    #[test]
    fn keyframes_of_a_real_stream() {
        let nals = split_annexb(STREAM);
        // ffmpeg -g 2: frames are IDR, P, IDR.
        let idr = nals.iter().filter(|n| nal_type(n) == NAL_IDR).count();
        let p = nals.iter().filter(|n| nal_type(n) == NAL_SLICE).count();
        assert!(idr >= 2, "{idr} IDR slices");
        assert!(p >= 1);
        assert!(is_keyframe(nals.iter().copied()));
        assert!(!is_keyframe(
            nals.iter().copied().filter(|n| nal_type(n) == NAL_SLICE)
        ));
    }

    #[test]
    fn avc_config_round_trip() {
        let nals = split_annexb(STREAM);
        let (sps, pps) = find_params(nals.iter().copied()).unwrap();
        let record = AvcConfig::build(sps, pps).unwrap();
        let parsed = AvcConfig::parse(&record).unwrap();
        assert_eq!(parsed.sps, vec![Bytes::copy_from_slice(sps)]);
        assert_eq!(parsed.pps, vec![Bytes::copy_from_slice(pps)]);
        assert_eq!(parsed.length_size, 4);
        for cut in 0..record.len() {
            assert!(AvcConfig::parse(&record[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_sps_is_an_error() {
        assert!(parse_sps(&[0x67]).is_err());
        assert!(parse_sps(&[0x67, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_sps(&[0x68, 1, 2]).is_err());
    }
}
