//! VP9: what a container needs from a key frame's uncompressed header (profile, bit depth,
//! dimensions), for `vpcC` and codec strings.

use crate::bits::BitReader;
use crate::{invalid, CodecError};

/// What a VP9 key frame's uncompressed header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFrameInfo {
    pub profile: u8,
    pub bit_depth: u8,
    /// 0: 4:2:0, 1: 4:2:2, 2: 4:4:0, 3: 4:4:4 (as `vpcC` counts them, with 4:2:0 colocated
    /// reported as 1 by some writers; we report 1 for every 4:2:0 stream).
    pub chroma_subsampling: u8,
    pub full_range: bool,
    pub width: u32,
    pub height: u32,
}

impl KeyFrameInfo {
    /// The codec string, e.g. `vp09.00.41.08` (level 4.1 is assumed: VP9 frames do not carry
    /// their level).
    pub fn codec_string(&self) -> String {
        format!("vp09.{:02}.41.{:02}", self.profile, self.bit_depth)
    }
}

const WHAT: &str = "VP9 frame header";

/// Parses the uncompressed header of a VP9 frame. Returns `Ok(None)` for frames that are not
/// key frames.
pub fn parse_keyframe(frame: &[u8]) -> Result<Option<KeyFrameInfo>, CodecError> {
    let mut r = BitReader::new(frame);
    if r.read_bits(2)? != 2 {
        return Err(invalid(WHAT, "bad frame marker"));
    }
    let low = r.read_bit()? as u8;
    let high = r.read_bit()? as u8;
    let profile = (high << 1) | low;
    if profile == 3 {
        r.skip(1)?;
    }
    if r.read_bit()? {
        return Ok(None); // show_existing_frame
    }
    if r.read_bit()? {
        return Ok(None); // frame_type 1: inter frame
    }
    r.skip(2)?; // show_frame, error_resilient_mode
    if r.read_bits(24)? != 0x49_83_42 {
        return Err(invalid(WHAT, "bad sync code"));
    }
    let mut bit_depth = 8;
    if profile >= 2 {
        bit_depth = if r.read_bit()? { 12 } else { 10 };
    }
    let color_space = r.read_bits(3)?;
    let full_range;
    let mut chroma_subsampling = 1;
    if color_space != 7 {
        full_range = r.read_bit()?;
        if profile == 1 || profile == 3 {
            let sx = r.read_bit()?;
            let sy = r.read_bit()?;
            r.skip(1)?;
            chroma_subsampling = match (sx, sy) {
                (true, true) => 1,
                (true, false) => 2,
                (false, true) => 2,
                (false, false) => 3,
            };
        }
    } else {
        full_range = true;
        chroma_subsampling = 3;
        if profile == 1 || profile == 3 {
            r.skip(1)?;
        }
    }
    let width = r.read_bits(16)? + 1;
    let height = r.read_bits(16)? + 1;
    Ok(Some(KeyFrameInfo {
        profile,
        bit_depth,
        chroma_subsampling,
        full_range,
        width,
        height,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_profile0_keyframe_header() {
        // frame marker 10, profile 00, show_existing 0, frame_type 0, show 1, error_res 0,
        // sync code, color_space 2 (BT.709), range 0, width 640, height 360.
        let mut bits: Vec<u8> = Vec::new();
        let mut push = |v: u32, n: u32| {
            for i in (0..n).rev() {
                bits.push(((v >> i) & 1) as u8);
            }
        };
        push(2, 2);
        push(0, 2);
        push(0, 1);
        push(0, 1);
        push(1, 1);
        push(0, 1);
        push(0x49_83_42, 24);
        push(2, 3);
        push(0, 1);
        push(639, 16);
        push(359, 16);
        while !bits.len().is_multiple_of(8) {
            bits.push(0);
        }
        let bytes: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |a, b| (a << 1) | b))
            .collect();
        let info = parse_keyframe(&bytes).unwrap().unwrap();
        assert_eq!(
            (info.width, info.height, info.profile, info.bit_depth),
            (640, 360, 0, 8)
        );
        assert_eq!(info.codec_string(), "vp09.00.41.08");
        assert!(parse_keyframe(&[0x80]).is_err());
    }
}
