//! MPEG-4 Visual (RFC 6416, `MP4V-ES`) and MPEG-1/2 video (RFC 2250, `MPV`) over RTP: a
//! frame (one VOP or picture, with any headers before it) cut into pieces, the last with the
//! marker bit; MPEG-1/2 pieces carry a 4-byte video-specific header first.

use bytes::{Bytes, BytesMut};

use crate::MAX_UNIT;

/// What a packet gave a frame-gathering depacketizer.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A whole frame.
    Frame(Bytes),
    /// Nothing yet.
    Pending,
    /// A frame was dropped (a piece lost, a bad header, too large).
    Dropped,
}

/// Which of the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mpv {
    Mpeg4,
    Mpeg12,
}

/// Pieces in, frames out.
pub struct MpvDepack {
    kind: Mpv,
    ts: Option<u32>,
    data: BytesMut,
    broken: bool,
}

impl MpvDepack {
    pub fn new(kind: Mpv) -> MpvDepack {
        MpvDepack {
            kind,
            ts: None,
            data: BytesMut::new(),
            broken: false,
        }
    }

    /// Forgets the frame being gathered (a packet was lost): true if one was.
    pub fn discard(&mut self) -> bool {
        let had = !self.data.is_empty();
        self.data.clear();
        self.broken = true;
        had
    }

    /// Takes one packet; a frame comes out with the marker. `Err` when a frame was dropped.
    pub fn push(&mut self, ts: u32, marker: bool, payload: &[u8]) -> Piece {
        let mut dropped = false;
        if self.ts != Some(ts) {
            // A new frame: whatever the last one left (no marker seen) is dropped.
            dropped = !self.data.is_empty();
            self.data.clear();
            self.broken = false;
            self.ts = Some(ts);
        }
        let body = match self.kind {
            Mpv::Mpeg4 => payload,
            Mpv::Mpeg12 => {
                // MBZ(5) T(1) TR(10) | AN N S B E P(3) | FBV BFC FFV FFC; T: a 4-byte MPEG-2
                // extension header follows.
                let skip = if payload.first().is_some_and(|b| b & 0x04 != 0) {
                    8
                } else {
                    4
                };
                match payload.get(skip..) {
                    Some(b) => b,
                    None => {
                        self.broken = true;
                        &[]
                    }
                }
            }
        };
        if !self.broken {
            if self.data.len() + body.len() > MAX_UNIT {
                self.broken = true;
                self.data.clear();
                dropped = true;
            } else {
                self.data.extend_from_slice(body);
            }
        }
        if !marker {
            return if dropped {
                Piece::Dropped
            } else {
                Piece::Pending
            };
        }
        self.ts = None;
        if self.broken || self.data.is_empty() {
            self.broken = false;
            self.data.clear();
            return Piece::Dropped;
        }
        // (An earlier frame lost in the same turn goes unreported: this one is whole.)
        Piece::Frame(self.data.split().freeze())
    }
}

/// Whether a frame starts a GOP: an MPEG-4 I-VOP, an MPEG-1/2 I-picture.
pub fn is_keyframe(kind: Mpv, data: &[u8]) -> bool {
    let mut i = 0;
    while i + 4 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let code = data[i + 3];
            match kind {
                // VOP start code: vop_coding_type in the next two bits, 0 = I.
                Mpv::Mpeg4 if code == 0xb6 => return data[i + 4] >> 6 == 0,
                // Picture start code: temporal_reference (10 bits), picture_coding_type (3).
                Mpv::Mpeg12 if code == 0x00 => {
                    return data.get(i + 5).is_some_and(|b| (b >> 3) & 7 == 1);
                }
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

/// The RFC 2250 video header of a piece of `frame`.
fn mpv_header(frame: &[u8], first: bool, last: bool) -> [u8; 4] {
    let (mut tr, mut ptype) = (0u16, 0u8);
    let mut seq = false;
    let mut i = 0;
    while i + 5 < frame.len() {
        if frame[i] == 0 && frame[i + 1] == 0 && frame[i + 2] == 1 {
            match frame[i + 3] {
                0xb3 => seq = true,
                0x00 => {
                    tr = (u16::from(frame[i + 4]) << 2) | u16::from(frame[i + 5] >> 6);
                    ptype = (frame[i + 5] >> 3) & 7;
                    break;
                }
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    [
        ((tr >> 8) & 0x03) as u8,
        tr as u8,
        (u8::from(seq && first) << 5) | (u8::from(first) << 4) | (u8::from(last) << 3) | ptype,
        0,
    ]
}

/// The RTP payloads of one frame, each at most `room` bytes.
pub fn payloads(kind: Mpv, frame: &[u8], room: usize) -> Vec<Vec<u8>> {
    let hdr = if kind == Mpv::Mpeg12 { 4 } else { 0 };
    let chunk = room.saturating_sub(hdr).max(1);
    let n = frame.len().div_ceil(chunk).max(1);
    (0..n)
        .map(|i| {
            let piece = &frame[i * chunk..((i + 1) * chunk).min(frame.len())];
            let mut p = Vec::with_capacity(hdr + piece.len());
            if kind == Mpv::Mpeg12 {
                p.extend_from_slice(&mpv_header(frame, i == 0, i + 1 == n));
            }
            p.extend_from_slice(piece);
            p
        })
        .collect()
}
