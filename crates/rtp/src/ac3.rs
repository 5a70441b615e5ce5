//! AC-3 over RTP (RFC 4184): a 2-byte header (frame type, frame count) before one or more whole
//! syncframes, or a fragment of one. The RTP clock is the sample rate; a syncframe is 1536
//! samples.

use bytes::{Bytes, BytesMut};

use crate::depack::Unit;
use crate::packet::RtpPacket;
use crate::MAX_UNIT;

/// Samples per channel in one AC-3 syncframe.
pub const FRAME_SAMPLES: u32 = 1536;

/// Kilobits per second by `frmsizecod >> 1` (ATSC A/52 Table 5.18).
const BITRATES: [u32; 19] = [
    32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640,
];

/// What a syncframe's header says: its length in bytes, sample rate and channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub frame_len: usize,
    pub sample_rate: u32,
    pub channels: u8,
}

/// Reads the syncinfo and the channel mode of an AC-3 syncframe at the start of `data`.
pub fn parse(data: &[u8]) -> Option<Header> {
    if data.len() < 7 || data[0] != 0x0b || data[1] != 0x77 {
        return None;
    }
    let fscod = data[4] >> 6;
    let frmsizecod = data[4] & 0x3f;
    let bsid = data[5] >> 3;
    if bsid > 10 {
        return None; // E-AC-3 (bsid 16) and others are not AC-3
    }
    let kbps = *BITRATES.get(usize::from(frmsizecod >> 1))?;
    let words = match fscod {
        0 => kbps * 2,
        1 => kbps * 1536 * 1000 / 44_100 / 16 + u32::from(frmsizecod & 1),
        2 => kbps * 3,
        _ => return None,
    };
    let sample_rate = [48_000, 44_100, 32_000][usize::from(fscod)];
    // acmod: 3 bits after bsid (5) and bsmod (3); lfeon follows after optional fields.
    let acmod = data[6] >> 5;
    let full = [2u8, 1, 2, 3, 3, 4, 4, 5][usize::from(acmod)];
    // lfeon's position depends on acmod's optional 2-bit fields.
    let mut bit = 3u32; // bits used of data[6] after acmod
    if acmod & 1 != 0 && acmod != 1 {
        bit += 2; // cmixlev
    }
    if acmod & 4 != 0 {
        bit += 2; // surmixlev
    }
    if acmod == 2 {
        bit += 2; // dsurmod
    }
    let byte = 6 + (bit / 8) as usize;
    let lfe = data.get(byte).map_or(0, |b| (b >> (7 - (bit % 8))) & 1);
    Some(Header {
        frame_len: words as usize * 2,
        sample_rate,
        channels: full + lfe,
    })
}

/// Splits whole syncframes (as an ingest may hold several in one frame).
pub fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(h) = parse(data) {
        if h.frame_len == 0 || h.frame_len > data.len() {
            break;
        }
        out.push(&data[..h.frame_len]);
        data = &data[h.frame_len..];
    }
    out
}

/// Joins fragments; whole frames come out one unit each.
#[derive(Default)]
pub struct Ac3Depack {
    /// A frame being joined: its timestamp, what came, its length.
    frag: Option<(u32, BytesMut, usize)>,
}

impl Ac3Depack {
    /// Drops a frame being joined; returns whether there was one.
    pub(crate) fn discard(&mut self) -> bool {
        self.frag.take().is_some()
    }

    /// Returns whether a frame was dropped.
    pub(crate) fn push(&mut self, p: &RtpPacket<'_>, out: &mut Vec<Unit>) -> bool {
        let pl = p.payload;
        if pl.len() <= 2 {
            return false;
        }
        let ft = pl[0] & 3;
        let body = &pl[2..];
        match ft {
            0 => {
                // One or more whole frames.
                let dropped = self.discard();
                let frames = split(body);
                if frames.is_empty() {
                    return true;
                }
                let mut ts = p.timestamp;
                for f in frames {
                    out.push(Unit {
                        timestamp: ts,
                        data: Bytes::copy_from_slice(f),
                        keyframe: true,
                    });
                    ts = ts.wrapping_add(FRAME_SAMPLES);
                }
                dropped
            }
            1 | 2 => {
                // The first fragment of a frame.
                let dropped = self.discard();
                let Some(h) = parse(body) else {
                    return true;
                };
                if h.frame_len > MAX_UNIT || h.frame_len < body.len() {
                    return true;
                }
                let mut b = BytesMut::with_capacity(h.frame_len);
                b.extend_from_slice(body);
                self.frag = Some((p.timestamp, b, h.frame_len));
                self.finish(out);
                dropped
            }
            _ => {
                let Some((ts, buf, len)) = self.frag.as_mut() else {
                    return false; // the start was lost (counted by the gap)
                };
                if *ts != p.timestamp || buf.len() + body.len() > *len {
                    self.frag = None;
                    return true;
                }
                buf.extend_from_slice(body);
                self.finish(out);
                false
            }
        }
    }

    /// Puts out the frame being joined once it is whole.
    fn finish(&mut self, out: &mut Vec<Unit>) {
        if let Some((ts, buf, len)) = self.frag.as_ref() {
            if buf.len() == *len {
                out.push(Unit {
                    timestamp: *ts,
                    data: Bytes::copy_from_slice(buf),
                    keyframe: true,
                });
                self.frag = None;
            }
        }
    }
}

/// The RTP payloads of one frame (which may hold several syncframes), each at most `room`
/// bytes, with the timestamp offset (in samples) of each.
pub fn payloads(data: &[u8], room: usize) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let frames = split(data);
    let chunk = room.saturating_sub(2).max(1);
    for (i, f) in frames.iter().enumerate() {
        let at = i as u32 * FRAME_SAMPLES;
        if f.len() <= chunk {
            let mut p = vec![0u8, 1];
            p.extend_from_slice(f);
            out.push((at, p));
            continue;
        }
        let n = f.len().div_ceil(chunk);
        for (k, piece) in f.chunks(chunk).enumerate() {
            let ft = if k > 0 {
                3
            } else if chunk * 8 >= f.len() * 5 {
                1
            } else {
                2
            };
            let mut p = vec![ft, n.min(255) as u8];
            p.extend_from_slice(piece);
            out.push((at, p));
        }
    }
    out
}
