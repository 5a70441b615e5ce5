//! AAC: the AudioSpecificConfig (ISO 14496-3 §1.6.2.1) and ADTS framing (§1.A.2). Inside
//! Tidegate AAC frames are raw (no ADTS header) with the config out of band.

use bytes::{BufMut, Bytes, BytesMut};

use crate::bits::BitReader;
use crate::{invalid, CodecError};

const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The fields of an AudioSpecificConfig Tidegate uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// Audio object type: 2 is AAC-LC, 5 SBR (HE-AAC), 29 PS.
    pub object_type: u8,
    pub sample_rate: u32,
    /// 0 means "defined in the program config element".
    pub channels: u8,
}

impl AudioSpecificConfig {
    pub fn parse(data: &[u8]) -> Result<AudioSpecificConfig, CodecError> {
        const WHAT: &str = "AudioSpecificConfig";
        let mut r = BitReader::new(data);
        let read_object_type = |r: &mut BitReader| -> Result<u8, CodecError> {
            let t = r.read_bits(5).map_err(|_| CodecError::Truncated(WHAT))? as u8;
            if t == 31 {
                Ok(32 + r.read_bits(6).map_err(|_| CodecError::Truncated(WHAT))? as u8)
            } else {
                Ok(t)
            }
        };
        let read_rate = |r: &mut BitReader| -> Result<u32, CodecError> {
            let index = r.read_bits(4).map_err(|_| CodecError::Truncated(WHAT))?;
            match index {
                15 => r.read_bits(24).map_err(|_| CodecError::Truncated(WHAT)),
                i => SAMPLE_RATES
                    .get(i as usize)
                    .copied()
                    .ok_or(invalid(WHAT, "reserved sampling frequency index")),
            }
        };
        let mut object_type = read_object_type(&mut r)?;
        if object_type == 0 {
            return Err(invalid(WHAT, "object type 0"));
        }
        let mut sample_rate = read_rate(&mut r)?;
        let channels = r.read_bits(4).map_err(|_| CodecError::Truncated(WHAT))? as u8;
        // Explicit SBR/PS signalling: the output rate and the core object type follow.
        if object_type == 5 || object_type == 29 {
            sample_rate = read_rate(&mut r)?;
            object_type = read_object_type(&mut r)?;
        }
        if sample_rate == 0 {
            return Err(invalid(WHAT, "sample rate 0"));
        }
        Ok(AudioSpecificConfig {
            object_type,
            sample_rate,
            channels,
        })
    }

    /// The two-byte (or five-byte, for a rate outside the table) config.
    pub fn to_bytes(&self) -> Bytes {
        let mut bits: u64 = 0;
        let mut n = 0;
        let mut put = |v: u64, width: u32| {
            bits = (bits << width) | v;
            n += width;
        };
        put(u64::from(self.object_type.min(30)), 5);
        match SAMPLE_RATES.iter().position(|&r| r == self.sample_rate) {
            Some(i) => put(i as u64, 4),
            None => {
                put(15, 4);
                put(u64::from(self.sample_rate & 0xff_ffff), 24);
            }
        }
        put(u64::from(self.channels & 0x0f), 4);
        put(0, 3); // GASpecificConfig: frameLength 1024, no core coder, no extension
        let bytes = n.div_ceil(8);
        let bits = bits << (bytes * 8 - n);
        Bytes::copy_from_slice(&bits.to_be_bytes()[8 - bytes as usize..])
    }

    /// The RFC 6381 codec string, e.g. `mp4a.40.2`.
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

/// One ADTS frame, split into its config and raw payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdtsFrame<'a> {
    pub config: AudioSpecificConfig,
    pub payload: &'a [u8],
    /// Header plus payload: where the next frame starts.
    pub frame_len: usize,
}

/// Parses the ADTS frame at the start of `data`.
pub fn parse_adts(data: &[u8]) -> Result<AdtsFrame<'_>, CodecError> {
    const WHAT: &str = "ADTS header";
    if data.len() < 7 {
        return Err(CodecError::Truncated(WHAT));
    }
    if data[0] != 0xff || data[1] & 0xf6 != 0xf0 {
        return Err(invalid(WHAT, "no syncword"));
    }
    let protection_absent = data[1] & 1 == 1;
    let header_len = if protection_absent { 7 } else { 9 };
    let profile = (data[2] >> 6) + 1;
    let rate_index = usize::from((data[2] >> 2) & 0x0f);
    let sample_rate = *SAMPLE_RATES
        .get(rate_index)
        .ok_or(invalid(WHAT, "reserved sampling frequency index"))?;
    let channels = ((data[2] & 1) << 2) | (data[3] >> 6);
    let frame_len = (usize::from(data[3] & 0x03) << 11)
        | (usize::from(data[4]) << 3)
        | usize::from(data[5] >> 5);
    if frame_len < header_len {
        return Err(invalid(WHAT, "frame length shorter than the header"));
    }
    if data[6] & 0x03 != 0 {
        return Err(CodecError::Unsupported(
            "ADTS frames with several raw data blocks",
        ));
    }
    let payload = data
        .get(header_len..frame_len)
        .ok_or(CodecError::Truncated("ADTS frame"))?;
    Ok(AdtsFrame {
        config: AudioSpecificConfig {
            object_type: profile,
            sample_rate,
            channels,
        },
        payload,
        frame_len,
    })
}

/// Splits a buffer of back-to-back ADTS frames.
pub fn split_adts(mut data: &[u8]) -> Result<Vec<AdtsFrame<'_>>, CodecError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let frame = parse_adts(data)?;
        data = &data[frame.frame_len..];
        out.push(frame);
    }
    Ok(out)
}

/// Wraps a raw AAC frame in an ADTS header (for MPEG-TS).
pub fn to_adts(config: &AudioSpecificConfig, payload: &[u8]) -> Result<Bytes, CodecError> {
    let rate_index = SAMPLE_RATES
        .iter()
        .position(|&r| r == config.sample_rate)
        .ok_or(CodecError::Unsupported(
            "ADTS sample rate outside the table",
        ))?;
    if !(1..=4).contains(&config.object_type) {
        return Err(CodecError::Unsupported("ADTS object type above 4"));
    }
    let len = payload.len() + 7;
    if len > 0x1fff {
        return Err(invalid("ADTS frame", "longer than 8191 bytes"));
    }
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(0xff);
    out.put_u8(0xf1); // MPEG-4, layer 0, no CRC
    out.put_u8(
        ((config.object_type - 1) << 6) | ((rate_index as u8) << 2) | ((config.channels >> 2) & 1),
    );
    out.put_u8(((config.channels & 3) << 6) | ((len >> 11) as u8 & 0x03));
    out.put_u8((len >> 3) as u8);
    out.put_u8((((len & 7) as u8) << 5) | 0x1f);
    out.put_u8(0xfc);
    out.put_slice(payload);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEREO_48K: &[u8] = include_bytes!("../tests/fixtures/aac_48k_stereo.adts");
    const MONO_44K: &[u8] = include_bytes!("../tests/fixtures/aac_44k_mono.adts");

    #[test]
    fn adts_of_real_streams() {
        let frames = split_adts(STEREO_48K).unwrap();
        assert!(frames.len() >= 4);
        let c = &frames[0].config;
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 48000, 2));
        assert_eq!(c.to_bytes().as_ref(), &[0x11, 0x90]);
        assert_eq!(c.codec_string(), "mp4a.40.2");

        let frames = split_adts(MONO_44K).unwrap();
        let c = &frames[0].config;
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 44100, 1));
        assert_eq!(c.to_bytes().as_ref(), &[0x12, 0x08]);
    }

    #[test]
    fn adts_round_trip_is_byte_exact() {
        for frame in split_adts(STEREO_48K).unwrap() {
            let again = to_adts(&frame.config, frame.payload).unwrap();
            let parsed = parse_adts(&again).unwrap();
            assert_eq!(parsed.payload, frame.payload);
            assert_eq!(parsed.config, frame.config);
        }
        let first = parse_adts(STEREO_48K).unwrap();
        let rebuilt = to_adts(&first.config, first.payload).unwrap();
        assert_eq!(&rebuilt[..], &STEREO_48K[..first.frame_len]);
    }

    #[test]
    fn audio_specific_config_round_trip() {
        for (ot, rate, ch) in [(2, 48000, 2), (2, 44100, 1), (1, 8000, 1), (2, 12345, 6)] {
            let c = AudioSpecificConfig {
                object_type: ot,
                sample_rate: rate,
                channels: ch,
            };
            assert_eq!(AudioSpecificConfig::parse(&c.to_bytes()).unwrap(), c);
        }
        // HE-AAC with explicit SBR signalling: 5, 24 kHz core, stereo, 48 kHz out, AAC-LC.
        let he = [0x2b, 0x11, 0x88, 0x00];
        let c = AudioSpecificConfig::parse(&he).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 48000, 2));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(AudioSpecificConfig::parse(&[]).is_err());
        assert!(AudioSpecificConfig::parse(&[0x00, 0x00]).is_err());
        assert!(
            AudioSpecificConfig::parse(&[0x17, 0x80]).is_err(),
            "escape rate index without its 24 bits"
        );
        assert!(
            parse_adts(&[0xff, 0xf1, 0x50, 0x80, 0x00, 0x1f, 0xfc]).is_err(),
            "length 0"
        );
        assert!(split_adts(&STEREO_48K[..STEREO_48K.len() - 1]).is_err());
        assert!(parse_adts(b"not adts at all").is_err());
    }
}
