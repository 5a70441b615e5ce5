//! MPEG audio (MP2, MP3) over RTP, RFC 2250 §3: a 4-byte header (16 bits zero, then the
//! fragment offset) before one or more whole frames, or a piece of one frame too big for a
//! packet. The RTP clock is 90 kHz.

use bytes::{Bytes, BytesMut};
use tidegate_codec::mpa;

use crate::depack::Unit;
use crate::packet::RtpPacket;
use crate::MAX_UNIT;

/// Joins fragments; whole frames pass through as they came (a unit may hold several).
#[derive(Default)]
pub struct MpaDepack {
    /// A frame being joined: its timestamp, what came, and its length.
    frag: Option<(u32, BytesMut, usize)>,
}

impl MpaDepack {
    /// Drops a frame being joined; returns whether there was one.
    pub(crate) fn discard(&mut self) -> bool {
        self.frag.take().is_some()
    }

    /// Returns whether a frame was dropped.
    pub(crate) fn push(&mut self, p: &RtpPacket<'_>, out: &mut Vec<Unit>) -> bool {
        let pl = p.payload;
        if pl.len() <= 4 {
            return false;
        }
        let offset = usize::from(u16::from_be_bytes([pl[2], pl[3]]));
        let body = &pl[4..];
        if offset == 0 {
            let dropped = self.discard();
            let Some(h) = mpa::parse(body) else {
                return true; // not a frame: nothing to keep
            };
            if h.frame_len > body.len() {
                // The first piece of a frame too big for one packet.
                if h.frame_len > MAX_UNIT {
                    return true;
                }
                let mut b = BytesMut::with_capacity(h.frame_len);
                b.extend_from_slice(body);
                self.frag = Some((p.timestamp, b, h.frame_len));
                return dropped;
            }
            out.push(Unit {
                timestamp: p.timestamp,
                data: Bytes::copy_from_slice(body),
                keyframe: true,
            });
            return dropped;
        }
        // A later piece: it must follow on from what came, with the same timestamp.
        let Some((ts, buf, len)) = self.frag.as_mut() else {
            return false; // the start was lost (already counted by the gap)
        };
        if *ts != p.timestamp || offset != buf.len() || buf.len() + body.len() > *len {
            self.frag = None;
            return true;
        }
        buf.extend_from_slice(body);
        if buf.len() == *len {
            let (ts, buf, _) = self.frag.take().unwrap_or_default();
            out.push(Unit {
                timestamp: ts,
                data: buf.freeze(),
                keyframe: true,
            });
        }
        false
    }
}

/// Cuts a unit (whole frames) into payloads of at most `room` bytes, headers included:
/// whole when it fits, else in pieces with their offsets.
pub fn payloads(data: &[u8], room: usize) -> Vec<([u8; 4], &[u8])> {
    let chunk = room.saturating_sub(4).max(1);
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let end = (off + chunk).min(data.len());
        let o = (off.min(0xffff) as u16).to_be_bytes();
        out.push(([0, 0, o[0], o[1]], &data[off..end]));
        off = end;
        if off >= data.len() {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::depack::Depacketizer;
    use crate::pack::{PackKind, Packetizer};

    /// An MPEG-1 layer III frame of 417 bytes (128 kbit/s, 44.1 kHz).
    fn frame(fill: u8) -> Vec<u8> {
        let mut f = vec![fill; 417];
        f[..4].copy_from_slice(&[0xff, 0xfb, 0x90, 0x00]);
        f
    }

    #[test]
    fn frames_whole_and_in_pieces_come_back() {
        for mtu in [1400, 200] {
            let mut p = Packetizer::new(PackKind::Mpa, 14, 1, 0, mtu);
            let mut d = Depacketizer::mpa();
            let mut out = Vec::new();
            let frames = [frame(1), frame(2), frame(3)];
            for (i, f) in frames.iter().enumerate() {
                let mut pk = Vec::new();
                p.packetize(f, i as u32 * 2351, true, &mut pk);
                assert!(pk.iter().all(|b| b.len() <= mtu));
                for b in &pk {
                    d.push(&RtpPacket::parse(b).unwrap(), &mut out);
                }
            }
            assert_eq!(out.len(), 3, "mtu {mtu}");
            for (u, f) in out.iter().zip(&frames) {
                assert_eq!(&u.data[..], &f[..]);
            }
            assert_eq!(d.units_dropped, 0);
        }
    }

    #[test]
    fn a_lost_piece_drops_its_frame_only() {
        let mut p = Packetizer::new(PackKind::Mpa, 14, 1, 0, 200);
        let mut d = Depacketizer::mpa();
        let mut out = Vec::new();
        let mut n = 0;
        for (i, f) in [frame(1), frame(2), frame(3)].iter().enumerate() {
            let mut pk = Vec::new();
            p.packetize(f, i as u32 * 2351, true, &mut pk);
            for b in &pk {
                n += 1;
                if n == 5 {
                    continue; // the second piece of the second frame
                }
                d.push(&RtpPacket::parse(b).unwrap(), &mut out);
            }
        }
        let fills: Vec<u8> = out.iter().map(|u| u.data[10]).collect();
        assert_eq!(fills, vec![1, 3]);
        assert!(d.units_dropped >= 1);
    }
}
