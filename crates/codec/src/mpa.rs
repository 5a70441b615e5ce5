//! MPEG-1/2/2.5 audio (layers I, II, III: MP2, MP3) frame headers.

/// What a 4-byte MPEG audio frame header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpaHeader {
    pub sample_rate: u32,
    pub channels: u8,
    /// The whole frame's length in bytes, header included.
    pub frame_len: usize,
    /// Samples per channel in the frame.
    pub samples: u32,
}

/// Parses the header at the start of `b` (None: not a frame header, or a free-format or
/// reserved value).
pub fn parse(b: &[u8]) -> Option<MpaHeader> {
    let h = b.get(..4)?;
    if h[0] != 0xff || h[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (h[1] >> 3) & 0x03; // 0: 2.5, 2: 2, 3: 1
    let layer = (h[1] >> 1) & 0x03; // 1: III, 2: II, 3: I
    if version == 1 || layer == 0 {
        return None;
    }
    let bitrate_index = usize::from(h[2] >> 4);
    let rate_index = usize::from((h[2] >> 2) & 0x03);
    if bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    let padding = usize::from((h[2] >> 1) & 0x01);
    let mpeg1 = version == 3;
    const KBPS_V1: [[u32; 15]; 3] = [
        // layer I, II, III
        [
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
        ],
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
        ],
        [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ],
    ];
    const KBPS_V2: [[u32; 15]; 2] = [
        // layer I; layers II and III
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
        ],
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    ];
    let layer_no = 4 - layer; // 1, 2, 3
    let kbps = if mpeg1 {
        KBPS_V1[usize::from(layer_no) - 1][bitrate_index]
    } else {
        KBPS_V2[usize::from(layer_no != 1)][bitrate_index]
    };
    let base = [44_100u32, 48_000, 32_000][rate_index];
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let bitrate = kbps as usize * 1000;
    let sr = sample_rate as usize;
    let (frame_len, samples) = match layer_no {
        1 => ((12 * bitrate / sr + padding) * 4, 384),
        2 => (144 * bitrate / sr + padding, 1152),
        _ if mpeg1 => (144 * bitrate / sr + padding, 1152),
        _ => (72 * bitrate / sr + padding, 576),
    };
    let channels = if h[3] >> 6 == 3 { 1 } else { 2 };
    (frame_len >= 4).then_some(MpaHeader {
        sample_rate,
        channels,
        frame_len,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_headers() {
        // MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding, stereo: 417 bytes.
        let h = parse(&[0xff, 0xfb, 0x90, 0x00]).unwrap();
        assert_eq!(
            (h.sample_rate, h.channels, h.frame_len, h.samples),
            (44_100, 2, 417, 1152)
        );
        // The same at 48 kHz with padding, mono: 384 + 1.
        let h = parse(&[0xff, 0xfb, 0x96, 0xc0]).unwrap();
        assert_eq!((h.sample_rate, h.channels, h.frame_len), (48_000, 1, 385));
        // MPEG-2 layer III, 64 kbit/s, 24 kHz: 72 * 64000 / 24000 = 192.
        let h = parse(&[0xff, 0xf3, 0x84, 0x00]).unwrap();
        assert_eq!((h.sample_rate, h.frame_len, h.samples), (24_000, 192, 576));
        // Not headers: no sync, reserved version, free format, bad index, too short.
        for bad in [
            &[0x00, 0xfb, 0x90, 0x00][..],
            &[0xff, 0xeb, 0x90, 0x00],
            &[0xff, 0xfb, 0x00, 0x00],
            &[0xff, 0xfb, 0xf0, 0x00],
            &[0xff, 0xfb, 0x9c, 0x00],
            &[0xff, 0xfb],
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
