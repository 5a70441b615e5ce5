//! H.265/HEVC: NAL unit types, IRAP keyframes, SPS facts, and the
//! HEVCDecoderConfigurationRecord (`hvcC`, used by Enhanced RTMP and MP4).

use bytes::{BufMut, Bytes, BytesMut};

use crate::bits::{unescape_rbsp, BitReader};
use crate::{invalid, CodecError};

pub const NAL_BLA_W_LP: u8 = 16;
pub const NAL_CRA: u8 = 21;
pub const NAL_RSV_IRAP_23: u8 = 23;
pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;
pub const NAL_AUD: u8 = 35;

/// The type of an H.265 NAL unit (bits 1..7 of its two-byte header).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 1) & 0x3f)
}

/// IRAP pictures (BLA, IDR, CRA): a decoder can start there.
pub fn is_irap(nal_type: u8) -> bool {
    (NAL_BLA_W_LP..=NAL_RSV_IRAP_23).contains(&nal_type)
}

/// Whether an access unit (as NAL units) holds an IRAP picture.
pub fn is_keyframe<'a>(nals: impl IntoIterator<Item = &'a [u8]>) -> bool {
    nals.into_iter().any(|n| is_irap(nal_type(n)))
}

/// The VPS, SPS and PPS found in an access unit, if all three are there.
pub fn find_params<'a>(
    nals: impl IntoIterator<Item = &'a [u8]>,
) -> Option<(&'a [u8], &'a [u8], &'a [u8])> {
    let (mut vps, mut sps, mut pps) = (None, None, None);
    for n in nals {
        match nal_type(n) {
            NAL_VPS if vps.is_none() => vps = Some(n),
            NAL_SPS if sps.is_none() => sps = Some(n),
            NAL_PPS if pps.is_none() => pps = Some(n),
            _ => {}
        }
    }
    Some((vps?, sps?, pps?))
}

/// What the SPS says that a player, playlist or `hvcC` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpsInfo {
    pub width: u32,
    pub height: u32,
    pub profile_space: u8,
    pub tier_flag: bool,
    pub profile_idc: u8,
    pub profile_compatibility_flags: u32,
    /// The 48 constraint-indicator bits, as 6 bytes.
    pub constraint_flags: [u8; 6],
    pub level_idc: u8,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
}

impl SpsInfo {
    /// The RFC 6381 / ISO 14496-15 codec string, e.g. `hvc1.1.6.L93.B0`.
    pub fn codec_string(&self) -> String {
        let space = match self.profile_space {
            1 => "A",
            2 => "B",
            3 => "C",
            _ => "",
        };
        let compat = self.profile_compatibility_flags.reverse_bits();
        let tier = if self.tier_flag { 'H' } else { 'L' };
        let mut s = format!(
            "hvc1.{space}{}.{compat:X}.{tier}{}",
            self.profile_idc, self.level_idc
        );
        let last = self.constraint_flags.iter().rposition(|&b| b != 0);
        if let Some(last) = last {
            for b in &self.constraint_flags[..=last] {
                s.push_str(&format!(".{b:X}"));
            }
        }
        s
    }
}

/// Sub-layers beyond this are refused (the spec allows at most 7).
const MAX_SUB_LAYERS: u32 = 7;

/// Parses an SPS NAL unit (with its two-byte header).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, CodecError> {
    const WHAT: &str = "H.265 SPS";
    if nal_type(nal) != NAL_SPS || nal.len() < 3 {
        return Err(invalid(WHAT, "not an SPS NAL unit"));
    }
    let rbsp = unescape_rbsp(&nal[2..]);
    let mut r = BitReader::new(&rbsp);
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.read_bits(3)?;
    if max_sub_layers_minus1 >= MAX_SUB_LAYERS {
        return Err(invalid(WHAT, "too many sub-layers"));
    }
    r.skip(1)?; // temporal_id_nesting
    let profile_space = r.read_bits(2)? as u8;
    let tier_flag = r.read_bit()?;
    let profile_idc = r.read_bits(5)? as u8;
    let profile_compatibility_flags = r.read_bits(32)?;
    let mut constraint_flags = [0u8; 6];
    for b in &mut constraint_flags {
        *b = r.read_bits(8)? as u8;
    }
    let level_idc = r.read_bits(8)? as u8;
    let mut sub_profile = [false; 8];
    let mut sub_level = [false; 8];
    for i in 0..max_sub_layers_minus1 as usize {
        sub_profile[i] = r.read_bit()?;
        sub_level[i] = r.read_bit()?;
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(2 * (8 - max_sub_layers_minus1 as usize))?;
    }
    for i in 0..max_sub_layers_minus1 as usize {
        if sub_profile[i] {
            r.skip(88)?;
        }
        if sub_level[i] {
            r.skip(8)?;
        }
    }
    r.read_ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.read_ue()?;
    if chroma_format_idc > 3 {
        return Err(invalid(WHAT, "chroma_format_idc above 3"));
    }
    let separate_colour_plane = chroma_format_idc == 3 && r.read_bit()?;
    let pic_width = r.read_ue()?;
    let pic_height = r.read_ue()?;
    let (mut width, mut height) = (pic_width, pic_height);
    if r.read_bit()? {
        let left = r.read_ue()?;
        let right = r.read_ue()?;
        let top = r.read_ue()?;
        let bottom = r.read_ue()?;
        let chroma = if separate_colour_plane {
            0
        } else {
            chroma_format_idc
        };
        let sub_w: u32 = if chroma == 1 || chroma == 2 { 2 } else { 1 };
        let sub_h: u32 = if chroma == 1 { 2 } else { 1 };
        let crop_w = u64::from(sub_w) * (u64::from(left) + u64::from(right));
        let crop_h = u64::from(sub_h) * (u64::from(top) + u64::from(bottom));
        width = u64::from(pic_width)
            .checked_sub(crop_w)
            .ok_or(invalid(WHAT, "conformance window wider than the picture"))?
            as u32;
        height = u64::from(pic_height)
            .checked_sub(crop_h)
            .ok_or(invalid(WHAT, "conformance window taller than the picture"))?
            as u32;
    }
    let bit_depth_luma = r.read_ue()?.saturating_add(8).min(255) as u8;
    let bit_depth_chroma = r.read_ue()?.saturating_add(8).min(255) as u8;
    Ok(SpsInfo {
        width,
        height,
        profile_space,
        tier_flag,
        profile_idc,
        profile_compatibility_flags,
        constraint_flags,
        level_idc,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma,
        bit_depth_chroma,
    })
}

/// An HEVCDecoderConfigurationRecord (`hvcC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HevcConfig {
    pub vps: Vec<Bytes>,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    pub length_size: u8,
}

const MAX_PARAM_SETS: usize = 32;

impl HevcConfig {
    pub fn parse(data: &[u8]) -> Result<HevcConfig, CodecError> {
        const WHAT: &str = "HEVCDecoderConfigurationRecord";
        if data.len() < 23 {
            return Err(CodecError::Truncated(WHAT));
        }
        if data[0] != 1 {
            return Err(invalid(WHAT, "configurationVersion is not 1"));
        }
        let length_size = (data[21] & 0x03) + 1;
        if length_size == 3 {
            return Err(invalid(WHAT, "NAL length size 3"));
        }
        let arrays = usize::from(data[22]);
        let mut pos = 23;
        let mut out = HevcConfig {
            vps: Vec::new(),
            sps: Vec::new(),
            pps: Vec::new(),
            length_size,
        };
        let take = |pos: &mut usize, n: usize| -> Result<&[u8], CodecError> {
            let s = data
                .get(*pos..*pos + n)
                .ok_or(CodecError::Truncated(WHAT))?;
            *pos += n;
            Ok(s)
        };
        for _ in 0..arrays {
            let kind = take(&mut pos, 1)?[0] & 0x3f;
            let n = take(&mut pos, 2)?;
            let count = usize::from(u16::from_be_bytes([n[0], n[1]]));
            if count > MAX_PARAM_SETS {
                return Err(invalid(WHAT, "too many parameter sets"));
            }
            for _ in 0..count {
                let l = take(&mut pos, 2)?;
                let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
                let nal = Bytes::copy_from_slice(take(&mut pos, len)?);
                match kind {
                    NAL_VPS => out.vps.push(nal),
                    NAL_SPS => out.sps.push(nal),
                    NAL_PPS => out.pps.push(nal),
                    _ => {} // SEI arrays and others are not needed
                }
            }
        }
        if out.vps.is_empty() || out.sps.is_empty() || out.pps.is_empty() {
            return Err(invalid(WHAT, "missing VPS, SPS or PPS"));
        }
        Ok(out)
    }

    /// Builds a record with 4-byte NAL lengths from one VPS, SPS and PPS.
    pub fn build(vps: &[u8], sps: &[u8], pps: &[u8]) -> Result<Bytes, CodecError> {
        for set in [vps, sps, pps] {
            if set.len() < 2 || set.len() > 0xffff {
                return Err(invalid("H.265 parameter sets", "bad length"));
            }
        }
        let info = parse_sps(sps)?;
        let mut out = BytesMut::with_capacity(38 + vps.len() + sps.len() + pps.len());
        out.put_u8(1);
        out.put_u8((info.profile_space << 6) | (u8::from(info.tier_flag) << 5) | info.profile_idc);
        out.put_u32(info.profile_compatibility_flags);
        out.put_slice(&info.constraint_flags);
        out.put_u8(info.level_idc);
        out.put_u16(0xf000); // min_spatial_segmentation_idc = 0
        out.put_u8(0xfc); // parallelismType = 0
        out.put_u8(0xfc | info.chroma_format_idc);
        out.put_u8(0xf8 | (info.bit_depth_luma.saturating_sub(8) & 0x07));
        out.put_u8(0xf8 | (info.bit_depth_chroma.saturating_sub(8) & 0x07));
        out.put_u16(0); // avgFrameRate
                        // constantFrameRate 0, numTemporalLayers 1, temporalIdNested 1, lengthSizeMinusOne 3
        out.put_u8((1 << 3) | (1 << 2) | 3);
        out.put_u8(3);
        for (kind, nal) in [(NAL_VPS, vps), (NAL_SPS, sps), (NAL_PPS, pps)] {
            out.put_u8(0x80 | kind); // array_completeness
            out.put_u16(1);
            out.put_u16(nal.len() as u16);
            out.put_slice(nal);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nal::split_annexb;

    const STREAM: &[u8] = include_bytes!("../tests/fixtures/h265_320x180.hevc");

    #[test]
    fn sps_of_a_real_stream() {
        let nals = split_annexb(STREAM);
        let (_, sps, _) = find_params(nals.iter().copied()).unwrap();
        let info = parse_sps(sps).unwrap();
        assert_eq!(
            (info.width, info.height),
            (320, 180),
            "conformance window applied"
        );
        assert_eq!(info.profile_idc, 1, "Main");
        assert_eq!(info.level_idc, 60, "level 2");
        assert_eq!(info.chroma_format_idc, 1);
        assert_eq!(info.bit_depth_luma, 8);
        assert_eq!(info.codec_string(), "hvc1.1.6.L60.90");
    }

    #[test]
    fn irap_detection_on_a_real_stream() {
        let nals = split_annexb(STREAM);
        let types: Vec<u8> = nals.iter().map(|n| nal_type(n)).collect();
        assert!(types.contains(&NAL_VPS) && types.contains(&NAL_SPS) && types.contains(&NAL_PPS));
        let irap = types.iter().filter(|&&t| is_irap(t)).count();
        assert!(
            irap >= 2,
            "keyint=2 over 3 frames gives two IRAP pictures: {types:?}"
        );
        assert!(
            types.iter().any(|&t| t < NAL_BLA_W_LP),
            "and a non-IRAP picture"
        );
        assert!(is_keyframe(nals.iter().copied()));
    }

    #[test]
    fn hevc_config_round_trip() {
        let nals = split_annexb(STREAM);
        let (vps, sps, pps) = find_params(nals.iter().copied()).unwrap();
        let record = HevcConfig::build(vps, sps, pps).unwrap();
        assert_eq!(record[1], 0x01, "profile space 0, main tier, Main profile");
        let parsed = HevcConfig::parse(&record).unwrap();
        assert_eq!(parsed.vps[0], vps);
        assert_eq!(parsed.sps[0], sps);
        assert_eq!(parsed.pps[0], pps);
        assert_eq!(parsed.length_size, 4);
        for cut in 0..record.len() {
            assert!(HevcConfig::parse(&record[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn truncated_sps_is_an_error() {
        let nals = split_annexb(STREAM);
        let (_, sps, _) = find_params(nals.iter().copied()).unwrap();
        for cut in 0..12 {
            assert!(parse_sps(&sps[..cut]).is_err(), "cut at {cut}");
        }
    }
}
