//! AV1: OBU headers, the sequence header facts an `av1C` record needs, and the record itself
//! (AV1CodecConfigurationRecord, used by Enhanced RTMP and MP4).

use bytes::{BufMut, Bytes, BytesMut};

use crate::bits::BitReader;
use crate::{invalid, CodecError};

pub const OBU_SEQUENCE_HEADER: u8 = 1;
pub const OBU_TEMPORAL_DELIMITER: u8 = 2;

/// One OBU in low-overhead format: its type and payload, and its total length.
pub struct Obu<'a> {
    pub obu_type: u8,
    pub payload: &'a [u8],
    pub len: usize,
}

fn leb128(data: &[u8]) -> Result<(u64, usize), CodecError> {
    let mut value = 0u64;
    for i in 0..8 {
        let b = *data.get(i).ok_or(CodecError::Truncated("leb128"))?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(invalid("leb128", "longer than 8 bytes"))
}

/// Parses the OBU at the start of `data` (which must carry a size field).
pub fn parse_obu(data: &[u8]) -> Result<Obu<'_>, CodecError> {
    let h = *data.first().ok_or(CodecError::Truncated("OBU header"))?;
    if h & 0x80 != 0 {
        return Err(invalid("OBU header", "forbidden bit set"));
    }
    let obu_type = (h >> 3) & 0x0f;
    let ext = h & 0x04 != 0;
    if h & 0x02 == 0 {
        return Err(CodecError::Unsupported("OBUs without a size field"));
    }
    let mut pos = 1 + usize::from(ext);
    let (size, n) = leb128(data.get(pos..).ok_or(CodecError::Truncated("OBU"))?)?;
    pos += n;
    let end = usize::try_from(size)
        .ok()
        .and_then(|s| pos.checked_add(s))
        .ok_or(invalid("OBU", "size overflows"))?;
    let payload = data.get(pos..end).ok_or(CodecError::Truncated("OBU"))?;
    Ok(Obu {
        obu_type,
        payload,
        len: end,
    })
}

/// Splits a temporal unit into OBUs.
pub fn split_obus(mut data: &[u8]) -> Result<Vec<Obu<'_>>, CodecError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let obu = parse_obu(data)?;
        data = &data[obu.len..];
        out.push(obu);
    }
    Ok(out)
}

/// What the sequence header says that `av1C` and players need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceInfo {
    pub seq_profile: u8,
    pub seq_level_idx_0: u8,
    pub seq_tier_0: bool,
    pub high_bitdepth: bool,
    pub twelve_bit: bool,
    pub monochrome: bool,
    pub subsampling_x: bool,
    pub subsampling_y: bool,
    pub chroma_sample_position: u8,
    pub max_width: u32,
    pub max_height: u32,
}

impl SequenceInfo {
    /// The RFC 6381 codec string of the AV1 ISOBMFF binding, e.g. `av01.0.04M.08`.
    pub fn codec_string(&self) -> String {
        let depth = match (self.high_bitdepth, self.twelve_bit) {
            (false, _) => 8,
            (true, false) => 10,
            (true, true) => 12,
        };
        format!(
            "av01.{}.{:02}{}.{:02}",
            self.seq_profile,
            self.seq_level_idx_0,
            if self.seq_tier_0 { 'H' } else { 'M' },
            depth
        )
    }

    pub fn bit_depth(&self) -> u8 {
        match (self.high_bitdepth, self.twelve_bit) {
            (false, _) => 8,
            (true, false) => 10,
            (true, true) => 12,
        }
    }
}

/// Parses a sequence header OBU (with its OBU header).
pub fn parse_sequence_header(obu: &[u8]) -> Result<SequenceInfo, CodecError> {
    const WHAT: &str = "AV1 sequence header";
    let o = parse_obu(obu)?;
    if o.obu_type != OBU_SEQUENCE_HEADER {
        return Err(invalid(WHAT, "not a sequence header OBU"));
    }
    let mut r = BitReader::new(o.payload);
    let seq_profile = r.read_bits(3)? as u8;
    if seq_profile > 2 {
        return Err(invalid(WHAT, "seq_profile above 2"));
    }
    r.skip(1)?; // still_picture
    let reduced = r.read_bit()?;
    let (seq_level_idx_0, seq_tier_0);
    if reduced {
        seq_level_idx_0 = r.read_bits(5)? as u8;
        seq_tier_0 = false;
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_len = 0;
        if r.read_bit()? {
            // timing_info
            r.skip(64)?;
            if r.read_bit()? {
                // num_ticks_per_picture_minus_1: uvlc
                let mut zeros = 0;
                while !r.read_bit()? {
                    zeros += 1;
                    if zeros >= 32 {
                        return Err(invalid(WHAT, "uvlc longer than 32 bits"));
                    }
                }
                r.skip(zeros)?;
            }
            decoder_model_info = r.read_bit()?;
            if decoder_model_info {
                buffer_delay_len = r.read_bits(5)? as usize + 1;
                r.skip(32 + 5 + 5)?;
            }
        }
        let initial_display_delay = r.read_bit()?;
        let count = r.read_bits(5)? + 1;
        let (mut level0, mut tier0) = (0, false);
        for i in 0..count {
            r.skip(12)?; // operating_point_idc
            let level = r.read_bits(5)? as u8;
            let tier = level > 7 && r.read_bit()?;
            if i == 0 {
                level0 = level;
                tier0 = tier;
            }
            if decoder_model_info && r.read_bit()? {
                r.skip(2 * buffer_delay_len + 1)?;
            }
            if initial_display_delay && r.read_bit()? {
                r.skip(4)?;
            }
        }
        seq_level_idx_0 = level0;
        seq_tier_0 = tier0;
    }
    let wbits = r.read_bits(4)? + 1;
    let hbits = r.read_bits(4)? + 1;
    let max_width = r.read_bits(wbits)? + 1;
    let max_height = r.read_bits(hbits)? + 1;
    if !reduced && r.read_bit()? {
        r.skip(4 + 3)?; // frame id lengths
    }
    r.skip(3)?; // 128x128 superblock, filter intra, intra edge filter
    if !reduced {
        r.skip(4)?; // interintra, masked compound, warped motion, dual filter
        let order_hint = r.read_bit()?;
        if order_hint {
            r.skip(2)?; // jnt_comp, ref_frame_mvs
        }
        let force_screen_content = if r.read_bit()? {
            2
        } else {
            u32::from(r.read_bit()?)
        };
        if force_screen_content > 0 && !r.read_bit()? {
            r.skip(1)?; // seq_force_integer_mv
        }
        if order_hint {
            r.skip(3)?;
        }
    }
    r.skip(3)?; // superres, cdef, restoration
                // color_config
    let high_bitdepth = r.read_bit()?;
    let twelve_bit = seq_profile == 2 && high_bitdepth && r.read_bit()?;
    let monochrome = seq_profile != 1 && r.read_bit()?;
    let (mut cp, mut tc, mut mc) = (2, 2, 2);
    if r.read_bit()? {
        cp = r.read_bits(8)?;
        tc = r.read_bits(8)?;
        mc = r.read_bits(8)?;
    }
    let (mut sx, mut sy, mut csp) = (true, true, 0);
    if monochrome {
        r.skip(1)?;
    } else if cp == 1 && tc == 13 && mc == 0 {
        sx = false;
        sy = false;
    } else {
        r.skip(1)?; // color_range
        match seq_profile {
            0 => {}
            1 => {
                sx = false;
                sy = false;
            }
            _ => {
                if twelve_bit {
                    sx = r.read_bit()?;
                    sy = sx && r.read_bit()?;
                } else {
                    sy = false;
                }
            }
        }
        if sx && sy {
            csp = r.read_bits(2)? as u8;
        }
    }
    Ok(SequenceInfo {
        seq_profile,
        seq_level_idx_0,
        seq_tier_0,
        high_bitdepth,
        twelve_bit,
        monochrome,
        subsampling_x: sx,
        subsampling_y: sy,
        chroma_sample_position: csp,
        max_width,
        max_height,
    })
}

/// Builds an `av1C` record around a sequence header OBU.
pub fn build_av1c(sequence_header: &[u8]) -> Result<Bytes, CodecError> {
    let i = parse_sequence_header(sequence_header)?;
    let mut out = BytesMut::with_capacity(4 + sequence_header.len());
    out.put_u8(0x81);
    out.put_u8((i.seq_profile << 5) | (i.seq_level_idx_0 & 0x1f));
    out.put_u8(
        (u8::from(i.seq_tier_0) << 7)
            | (u8::from(i.high_bitdepth) << 6)
            | (u8::from(i.twelve_bit) << 5)
            | (u8::from(i.monochrome) << 4)
            | (u8::from(i.subsampling_x) << 3)
            | (u8::from(i.subsampling_y) << 2)
            | (i.chroma_sample_position & 3),
    );
    out.put_u8(0);
    out.put_slice(sequence_header);
    Ok(out.freeze())
}

/// The sequence header OBU inside an `av1C` record.
pub fn sequence_header_of_av1c(record: &[u8]) -> Result<Bytes, CodecError> {
    if record.len() < 4 || record[0] != 0x81 {
        return Err(invalid("av1C", "no marker/version 1"));
    }
    let obus = split_obus(&record[4..])?;
    let seq = obus
        .iter()
        .find(|o| o.obu_type == OBU_SEQUENCE_HEADER)
        .ok_or(invalid("av1C", "no sequence header OBU"))?;
    // Re-slice the whole OBU (header included) from the record.
    let start = seq.payload.as_ptr() as usize - record.as_ptr() as usize;
    let mut from = 4;
    for o in &obus {
        let here = from;
        from += o.len;
        if here <= start && start < from {
            return Ok(Bytes::copy_from_slice(&record[here..from]));
        }
    }
    Err(invalid("av1C", "no sequence header OBU"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// av1C written by ffmpeg 9 (libsvtav1, 320x180) in Enhanced RTMP.
    const AV1C: &[u8] = &[
        0x81, 0x00, 0x0c, 0x00, 0x0a, 0x0b, 0x02, 0x00, 0x00, 0x05, 0x61, 0xe7, 0xf6, 0x60, 0x17,
        0xc0, 0x02,
    ];

    #[test]
    fn real_sequence_header() {
        let seq = sequence_header_of_av1c(AV1C).unwrap();
        assert_eq!(seq.as_ref(), &AV1C[4..]);
        let info = parse_sequence_header(&seq).unwrap();
        assert_eq!((info.max_width, info.max_height), (320, 180));
        assert_eq!(info.seq_profile, 0);
        assert!(!info.high_bitdepth && !info.monochrome);
        assert!(info.subsampling_x && info.subsampling_y);
        assert_eq!(
            build_av1c(&seq).unwrap().as_ref(),
            AV1C,
            "rebuilt byte for byte"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for cut in 0..AV1C.len() {
            assert!(
                sequence_header_of_av1c(&AV1C[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(parse_obu(&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(split_obus(&[0x12, 0x05, 1]).is_err());
    }
}
