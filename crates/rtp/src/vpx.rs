//! VP8 (RFC 7741) and VP9 (RFC 9628) over RTP: the payload descriptors, a depacketizer
//! that joins a frame's packets, and the descriptors a packetizer writes.

use bytes::{Bytes, BytesMut};

use crate::depack::Unit;
use crate::packet::RtpPacket;
use crate::MAX_UNIT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vpx {
    Vp8,
    Vp9,
}

/// What a packet's payload descriptor says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Bytes of descriptor before the codec's payload.
    pub len: usize,
    /// The packet starts a frame.
    pub start: bool,
    /// The packet ends a frame (VP9's E bit; VP8 has only the marker).
    pub end: bool,
    /// VP9: the frame is predicted from others (P bit): not a keyframe.
    pub inter: bool,
}

/// RFC 7741 §4.2: `X R N S R PID`, then the optional I/L/T/K extensions.
pub fn vp8_descriptor(p: &[u8]) -> Option<Descriptor> {
    let b0 = *p.first()?;
    let mut len = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(1)?;
        len = 2;
        if x & 0x80 != 0 {
            // PictureID: one byte, or two with M set.
            let m = *p.get(len)? & 0x80 != 0;
            len += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            len += 1; // TID / KEYIDX
        }
    }
    if p.len() < len {
        return None;
    }
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    Some(Descriptor {
        len,
        start,
        end: false,
        inter: false,
    })
}

/// RFC 9628 §4.2: `I P L F B E V Z`, then picture ID, layer indices, reference indices and
/// the scalability structure, each when its flag says so.
pub fn vp9_descriptor(p: &[u8]) -> Option<Descriptor> {
    let b0 = *p.first()?;
    let (i, pf, l, f, b, e, v) = (
        b0 & 0x80 != 0,
        b0 & 0x40 != 0,
        b0 & 0x20 != 0,
        b0 & 0x10 != 0,
        b0 & 0x08 != 0,
        b0 & 0x04 != 0,
        b0 & 0x02 != 0,
    );
    let mut len = 1;
    if i {
        let m = *p.get(len)? & 0x80 != 0;
        len += if m { 2 } else { 1 };
    }
    if l {
        len += 1;
        if !f {
            len += 1; // TL0PICIDX (non-flexible mode)
        }
    }
    if f && pf {
        // Up to three reference indices, each with a "one more follows" bit.
        for _ in 0..3 {
            let d = *p.get(len)?;
            len += 1;
            if d & 0x01 == 0 {
                break;
            }
        }
    }
    if v {
        let ss = *p.get(len)?;
        len += 1;
        let n_s = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            len += 4 * n_s; // widths and heights
        }
        if ss & 0x08 != 0 {
            let n_g = usize::from(*p.get(len)?);
            len += 1;
            for _ in 0..n_g {
                let g = *p.get(len)?;
                len += 1 + usize::from((g >> 2) & 0x03);
            }
        }
    }
    if p.len() < len {
        return None;
    }
    Some(Descriptor {
        len,
        start: b,
        end: e,
        inter: pf,
    })
}

/// Joins the packets of one frame (from the one that starts it to the marker, or VP9's end
/// bit), dropping frames with a packet missing, and every frame after a loss until a keyframe.
pub struct VpxDepack {
    codec: Vpx,
    ts: Option<u32>,
    buf: BytesMut,
    active: bool,
    key: bool,
    pub(crate) need_key: bool,
}

impl VpxDepack {
    pub fn new(codec: Vpx) -> VpxDepack {
        VpxDepack {
            codec,
            ts: None,
            buf: BytesMut::new(),
            active: false,
            key: false,
            need_key: true,
        }
    }

    /// Drops the frame being joined; returns whether there was one.
    pub(crate) fn discard(&mut self) -> bool {
        let had = self.active;
        self.active = false;
        self.buf.clear();
        had
    }

    /// Returns whether a frame was dropped.
    pub(crate) fn push(&mut self, p: &RtpPacket<'_>, out: &mut Vec<Unit>) -> bool {
        let d = match self.codec {
            Vpx::Vp8 => vp8_descriptor(p.payload),
            Vpx::Vp9 => vp9_descriptor(p.payload),
        };
        let Some(d) = d else {
            return self.discard();
        };
        let mut dropped = false;
        if self.active && self.ts != Some(p.timestamp) {
            // A new frame before the last one's end: the end was lost.
            dropped = self.discard();
            self.need_key = true;
        }
        let payload = &p.payload[d.len..];
        if d.start {
            if self.active {
                dropped |= self.discard();
            }
            self.active = true;
            self.ts = Some(p.timestamp);
            self.key = match self.codec {
                // The frame tag's first bit: 0 for a key frame.
                Vpx::Vp8 => payload.first().is_some_and(|b| b & 0x01 == 0),
                Vpx::Vp9 => !d.inter,
            };
        }
        if !self.active {
            return dropped;
        }
        if self.buf.len() + payload.len() > MAX_UNIT {
            self.discard();
            self.need_key = true;
            return true;
        }
        self.buf.extend_from_slice(payload);
        if p.marker || d.end {
            self.active = false;
            let data = self.buf.split().freeze();
            if self.need_key && !self.key {
                return dropped;
            }
            self.need_key = false;
            if !data.is_empty() {
                out.push(Unit {
                    timestamp: p.timestamp,
                    data,
                    keyframe: self.key,
                });
            }
        }
        dropped
    }
}

/// The descriptor a packetizer writes before each piece of a frame: VP8's `S` and partition
/// 0 on the first; VP9's `B` on the first, `E` on the last, `P` on inter frames.
pub fn descriptor(codec: Vpx, first: bool, last: bool, keyframe: bool) -> [u8; 1] {
    match codec {
        Vpx::Vp8 => [if first { 0x10 } else { 0x00 }],
        Vpx::Vp9 => [(if keyframe { 0 } else { 0x40 })
            | (if first { 0x08 } else { 0 })
            | (if last { 0x04 } else { 0 })],
    }
}

/// Cuts a frame into payloads of at most `room` bytes, each with its descriptor.
pub fn payloads(codec: Vpx, data: &[u8], keyframe: bool, room: usize) -> Vec<([u8; 1], Bytes)> {
    let chunk = room.saturating_sub(1).max(1);
    let n = data.len().div_ceil(chunk).max(1);
    (0..n)
        .map(|i| {
            let piece = &data[(i * chunk).min(data.len())..((i + 1) * chunk).min(data.len())];
            (
                descriptor(codec, i == 0, i + 1 == n, keyframe),
                Bytes::copy_from_slice(piece),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        crate::packet::write_header(&mut b, marker, 96, seq, ts, 1);
        b.extend_from_slice(payload);
        b.to_vec()
    }

    fn round_trip(codec: Vpx, frames: &[(Vec<u8>, bool)], drop_seq: Option<u16>) -> Vec<Unit> {
        let mut d = match codec {
            Vpx::Vp8 => crate::depack::Depacketizer::vp8(),
            Vpx::Vp9 => crate::depack::Depacketizer::vp9(),
        };
        let mut out = Vec::new();
        let mut seq = 0u16;
        for (i, (f, key)) in frames.iter().enumerate() {
            let ps = payloads(codec, f, *key, 100);
            let n = ps.len();
            for (j, (desc, piece)) in ps.into_iter().enumerate() {
                let mut body = desc.to_vec();
                body.extend_from_slice(&piece);
                let raw = pkt(seq, i as u32 * 3000, j + 1 == n, &body);
                if Some(seq) != drop_seq {
                    let p = RtpPacket::parse(&raw).unwrap();
                    d.push(&p, &mut out);
                }
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    fn frame(len: usize, key: bool, fill: u8) -> Vec<u8> {
        let mut v = vec![fill; len];
        // VP8's frame tag: bit 0 clear on key frames.
        v[0] = if key { 0x10 } else { 0x11 };
        v
    }

    #[test]
    fn frames_survive_packetizing_both_ways() {
        for codec in [Vpx::Vp8, Vpx::Vp9] {
            let frames = vec![
                (frame(350, true, 1), true),
                (frame(90, false, 2), false),
                (frame(1000, false, 3), false),
            ];
            let out = round_trip(codec, &frames, None);
            assert_eq!(out.len(), 3, "{codec:?}");
            for (u, (f, key)) in out.iter().zip(&frames) {
                assert_eq!(&u.data[..], &f[..]);
                assert_eq!(u.keyframe, *key, "{codec:?}");
            }
        }
    }

    #[test]
    fn a_lost_packet_drops_its_frame_and_what_follows_until_a_keyframe() {
        for codec in [Vpx::Vp8, Vpx::Vp9] {
            let frames = vec![
                (frame(350, true, 1), true),   // packets 0..3
                (frame(250, false, 2), false), // 4..6, 5 lost
                (frame(90, false, 3), false),  // 7
                (frame(90, true, 4), true),    // 8
            ];
            let out = round_trip(codec, &frames, Some(5));
            let fills: Vec<u8> = out.iter().map(|u| u.data[1]).collect();
            assert_eq!(fills, vec![1, 4], "{codec:?}");
        }
    }

    #[test]
    fn descriptors_with_extensions_are_skipped() {
        // VP8: X, I with a 15-bit picture ID, L, T/K.
        let d = vp8_descriptor(&[0x90, 0xf0, 0x81, 0x23, 0x05, 0x40, 0xaa]).unwrap();
        assert_eq!(d.len, 6);
        assert!(d.start);
        // VP9: I (7-bit), L non-flexible, B, V with sizes of one layer and no groups.
        let d = vp9_descriptor(&[0xaa, 0x12, 0x00, 0x07, 0x10, 1, 0, 1, 0, 0xff]).unwrap();
        assert_eq!(d.len, 9);
        assert!(d.start && !d.inter);
        // Truncated descriptors are refused, not read past.
        assert!(vp8_descriptor(&[0x80]).is_none());
        assert!(vp9_descriptor(&[0x82]).is_none());
        assert!(vp9_descriptor(&[0x92, 0x01]).is_none());
    }
}
