//! Opus: the `OpusHead` identification header (RFC 7845 §5.1), used by Ogg, MP4 (`dOps`),
//! MPEG-TS and Enhanced RTMP.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{invalid, CodecError};

/// Opus always decodes at 48 kHz; its RTP and MP4 clock rate.
pub const CLOCK_RATE: u32 = 48_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_sample_rate: u32,
    pub output_gain: i16,
    pub mapping_family: u8,
}

impl OpusHead {
    pub fn new(channels: u8) -> OpusHead {
        OpusHead {
            channels,
            pre_skip: 3840,
            input_sample_rate: CLOCK_RATE,
            output_gain: 0,
            mapping_family: 0,
        }
    }

    pub fn parse(data: &[u8]) -> Result<OpusHead, CodecError> {
        const WHAT: &str = "OpusHead";
        if data.len() < 19 {
            return Err(CodecError::Truncated(WHAT));
        }
        if &data[..8] != b"OpusHead" {
            return Err(invalid(WHAT, "no magic signature"));
        }
        if data[8] >> 4 != 0 {
            return Err(CodecError::Unsupported("OpusHead major version above 0"));
        }
        let channels = data[9];
        if channels == 0 {
            return Err(invalid(WHAT, "zero channels"));
        }
        let mapping_family = data[18];
        if mapping_family == 0 && channels > 2 {
            return Err(invalid(WHAT, "mapping family 0 with more than 2 channels"));
        }
        Ok(OpusHead {
            channels,
            pre_skip: u16::from_le_bytes([data[10], data[11]]),
            input_sample_rate: u32::from_le_bytes([data[12], data[13], data[14], data[15]]),
            output_gain: i16::from_le_bytes([data[16], data[17]]),
            mapping_family,
        })
    }

    /// The 19-byte header (mapping family 0; other families need a channel mapping table).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(19);
        out.put_slice(b"OpusHead");
        out.put_u8(1);
        out.put_u8(self.channels);
        out.put_u16_le(self.pre_skip);
        out.put_u32_le(self.input_sample_rate);
        out.put_i16_le(self.output_gain);
        out.put_u8(0);
        out.freeze()
    }
}

/// Duration in 48 kHz samples of an Opus packet, from its TOC byte (RFC 6716 §3.1).
pub fn packet_samples(packet: &[u8]) -> Result<u32, CodecError> {
    let toc = *packet.first().ok_or(CodecError::Truncated("Opus packet"))?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(packet.get(1).ok_or(CodecError::Truncated("Opus packet"))? & 0x3f),
    };
    Ok(frame * frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OGG: &[u8] = include_bytes!("../tests/fixtures/opus_stereo.ogg");

    #[test]
    fn opus_head_from_a_real_ogg_file() {
        let at = OGG
            .windows(8)
            .position(|w| w == b"OpusHead")
            .expect("an OpusHead in the first Ogg page");
        let head = OpusHead::parse(&OGG[at..]).unwrap();
        assert_eq!(head.channels, 2);
        assert_eq!(head.input_sample_rate, 48000);
        assert_eq!(head.mapping_family, 0);
        assert_eq!(head.pre_skip, 312, "libopus' pre-skip");
        let again = OpusHead::parse(&head.to_bytes()).unwrap();
        assert_eq!(again, head);
    }

    #[test]
    fn packet_durations() {
        // config 31 (CELT FB 20 ms), one frame
        assert_eq!(packet_samples(&[31 << 3]).unwrap(), 960);
        // config 1 (SILK NB 20 ms), two frames
        assert_eq!(packet_samples(&[(1 << 3) | 1]).unwrap(), 1920);
        // code 3, 3 frames of 2.5 ms CELT
        assert_eq!(packet_samples(&[(16 << 3) | 3, 3]).unwrap(), 360);
        assert!(packet_samples(&[]).is_err());
        assert!(packet_samples(&[3]).is_err());
    }

    #[test]
    fn bad_heads_are_errors() {
        assert!(OpusHead::parse(b"OpusHead").is_err());
        let mut h = OpusHead::new(2).to_bytes().to_vec();
        h[9] = 0;
        assert!(OpusHead::parse(&h).is_err());
        h[9] = 6;
        assert!(OpusHead::parse(&h).is_err());
    }
}
