//! Depacketizers: RTP packets in, access units out (in the packet model's canonical form:
//! length-prefixed NAL units for H.264/H.265, raw frames for audio).

use bytes::{BufMut, Bytes, BytesMut};
use tidegate_codec::{h264, h265};

use crate::packet::RtpPacket;
use crate::MAX_UNIT;

/// One access unit, stamped with its RTP timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub timestamp: u32,
    pub data: Bytes,
    pub keyframe: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nal {
    H264,
    H265,
}

/// H.264 (RFC 6184: single NAL, STAP-A, FU-A) and H.265 (RFC 7798: single, AP, FU).
pub struct NalDepack {
    kind: Nal,
    ts: Option<u32>,
    nals: Vec<Bytes>,
    size: usize,
    fu: Option<BytesMut>,
    need_key: bool,
}

/// RFC 3640 `mpeg4-generic` AAC (AAC-hbr / AAC-lbr): AU headers, then the AUs.
pub struct AacDepack {
    size_length: u32,
    index_length: u32,
    frag: Option<(u32, usize, BytesMut)>,
}

pub enum Kind {
    Nal(NalDepack),
    Aac(AacDepack),
    /// One packet carries one frame (Opus, G.711).
    Frame,
    Vpx(crate::vpx::VpxDepack),
    Av1(crate::av1::Av1Depack),
    Mpa(crate::mpa::MpaDepack),
    Jpeg(crate::jpeg::JpegDepack),
    Ac3(crate::ac3::Ac3Depack),
    Mpv(crate::mpv::MpvDepack, crate::mpv::Mpv),
    /// MPEG-TS over RTP (RFC 2250 §2): whole 188-byte TS packets.
    Mp2t,
}

/// A depacketizer with loss tracking.
pub struct Depacketizer {
    kind: Kind,
    expected: Option<u16>,
    /// Packets that never arrived (sequence gaps).
    pub packets_lost: u64,
    /// Access units dropped because part of them was lost or they were too large.
    pub units_dropped: u64,
}

impl Depacketizer {
    fn new(kind: Kind) -> Depacketizer {
        Depacketizer {
            kind,
            expected: None,
            packets_lost: 0,
            units_dropped: 0,
        }
    }

    pub fn h264() -> Depacketizer {
        Self::nal(Nal::H264)
    }

    pub fn h265() -> Depacketizer {
        Self::nal(Nal::H265)
    }

    fn nal(kind: Nal) -> Depacketizer {
        Self::new(Kind::Nal(NalDepack {
            kind,
            ts: None,
            nals: Vec::new(),
            size: 0,
            fu: None,
            need_key: true,
        }))
    }

    /// `sizelength` and `indexlength` from the SDP's fmtp (13 and 3 for AAC-hbr).
    pub fn aac(size_length: u32, index_length: u32) -> Depacketizer {
        Self::new(Kind::Aac(AacDepack {
            size_length: size_length.clamp(1, 16),
            index_length: index_length.min(8),
            frag: None,
        }))
    }

    pub fn frame() -> Depacketizer {
        Self::new(Kind::Frame)
    }

    /// MPEG audio, MP2 and MP3 (RFC 2250).
    pub fn mpa() -> Depacketizer {
        Self::new(Kind::Mpa(crate::mpa::MpaDepack::default()))
    }

    /// AC-3 (RFC 4184).
    pub fn ac3() -> Depacketizer {
        Self::new(Kind::Ac3(crate::ac3::Ac3Depack::default()))
    }

    /// M-JPEG (RFC 2435).
    pub fn jpeg() -> Depacketizer {
        Self::new(Kind::Jpeg(crate::jpeg::JpegDepack::default()))
    }

    /// MPEG-4 Visual (RFC 6416).
    pub fn mpeg4_video() -> Depacketizer {
        use crate::mpv::{Mpv, MpvDepack};
        Self::new(Kind::Mpv(MpvDepack::new(Mpv::Mpeg4), Mpv::Mpeg4))
    }

    /// MPEG-1/2 video (RFC 2250).
    pub fn mpeg12_video() -> Depacketizer {
        use crate::mpv::{Mpv, MpvDepack};
        Self::new(Kind::Mpv(MpvDepack::new(Mpv::Mpeg12), Mpv::Mpeg12))
    }

    /// VP8 (RFC 7741).
    pub fn vp8() -> Depacketizer {
        Self::new(Kind::Vpx(crate::vpx::VpxDepack::new(crate::vpx::Vpx::Vp8)))
    }

    /// VP9 (RFC 9628).
    pub fn vp9() -> Depacketizer {
        Self::new(Kind::Vpx(crate::vpx::VpxDepack::new(crate::vpx::Vpx::Vp9)))
    }

    /// AV1 (the AOMedia RTP payload format): temporal units of OBUs with size fields.
    pub fn av1() -> Depacketizer {
        Self::new(Kind::Av1(crate::av1::Av1Depack::new()))
    }

    /// MPEG-TS (RFC 2250 §2): each packet's TS packets as one unit, for a TS demuxer.
    pub fn mp2t() -> Depacketizer {
        Self::new(Kind::Mp2t)
    }

    pub fn is_mp2t(&self) -> bool {
        matches!(self.kind, Kind::Mp2t)
    }

    pub fn is_av1(&self) -> bool {
        matches!(self.kind, Kind::Av1(_))
    }

    pub fn push(&mut self, p: &RtpPacket<'_>, out: &mut Vec<Unit>) {
        let gap = match self.expected {
            Some(e) if e != p.sequence => {
                let missing = p.sequence.wrapping_sub(e);
                if missing > 0x8000 {
                    return; // late or duplicate packet: already past it
                }
                self.packets_lost += u64::from(missing);
                true
            }
            _ => false,
        };
        self.expected = Some(p.sequence.wrapping_add(1));
        match &mut self.kind {
            Kind::Nal(d) => {
                if gap {
                    if d.discard() {
                        self.units_dropped += 1;
                    }
                    d.need_key = true;
                }
                if d.push(p, out) {
                    self.units_dropped += 1;
                }
            }
            Kind::Aac(d) => {
                if gap && d.frag.take().is_some() {
                    self.units_dropped += 1;
                }
                if d.push(p, out) {
                    self.units_dropped += 1;
                }
            }
            Kind::Ac3(d) => {
                if gap && d.discard() {
                    self.units_dropped += 1;
                }
                if d.push(p, out) {
                    self.units_dropped += 1;
                }
            }
            Kind::Mpa(d) => {
                if gap && d.discard() {
                    self.units_dropped += 1;
                }
                if d.push(p, out) {
                    self.units_dropped += 1;
                }
            }
            Kind::Vpx(d) => {
                if gap {
                    if d.discard() {
                        self.units_dropped += 1;
                    }
                    d.need_key = true;
                }
                if d.push(p, out) {
                    self.units_dropped += 1;
                }
            }
            Kind::Av1(d) => {
                if gap {
                    if d.discard() {
                        self.units_dropped += 1;
                    }
                    d.need_key = true;
                }
                if d.push(p, out) {
                    self.units_dropped += 1;
                }
            }
            Kind::Jpeg(d) => {
                // A lost piece shows as a fragment offset that does not line up.
                match d.push(p.timestamp, p.marker, p.payload) {
                    crate::mpv::Piece::Frame(data) => out.push(Unit {
                        timestamp: p.timestamp,
                        data,
                        keyframe: true,
                    }),
                    crate::mpv::Piece::Pending => {}
                    crate::mpv::Piece::Dropped => self.units_dropped += 1,
                }
            }
            Kind::Mpv(d, kind) => {
                if gap && d.discard() {
                    self.units_dropped += 1;
                }
                match d.push(p.timestamp, p.marker, p.payload) {
                    crate::mpv::Piece::Frame(data) => out.push(Unit {
                        timestamp: p.timestamp,
                        keyframe: crate::mpv::is_keyframe(*kind, &data),
                        data,
                    }),
                    crate::mpv::Piece::Pending => {}
                    crate::mpv::Piece::Dropped => self.units_dropped += 1,
                }
            }
            Kind::Mp2t => {
                // Whole TS packets only; the demuxer finds its own losses (continuity
                // counters).
                if !p.payload.is_empty()
                    && p.payload.len().is_multiple_of(188)
                    && p.payload[0] == 0x47
                {
                    out.push(Unit {
                        timestamp: p.timestamp,
                        data: Bytes::copy_from_slice(p.payload),
                        keyframe: false,
                    });
                } else {
                    self.units_dropped += 1;
                }
            }
            Kind::Frame => {
                if !p.payload.is_empty() && p.payload.len() <= MAX_UNIT {
                    out.push(Unit {
                        timestamp: p.timestamp,
                        data: Bytes::copy_from_slice(p.payload),
                        keyframe: true,
                    });
                }
            }
        }
    }
}

impl NalDepack {
    /// Drops the unit being assembled; returns whether there was one.
    fn discard(&mut self) -> bool {
        let had = !self.nals.is_empty() || self.fu.is_some();
        self.nals.clear();
        self.size = 0;
        self.fu = None;
        had
    }

    fn add(&mut self, nal: Bytes) -> bool {
        if nal.is_empty() {
            return false;
        }
        if self.size + nal.len() > MAX_UNIT {
            self.discard();
            self.need_key = true;
            return true;
        }
        self.size += nal.len() + 4;
        self.nals.push(nal);
        false
    }

    fn flush(&mut self, out: &mut Vec<Unit>) {
        let Some(ts) = self.ts else { return };
        if self.nals.is_empty() {
            return;
        }
        let keyframe = match self.kind {
            Nal::H264 => h264::is_keyframe(self.nals.iter().map(|n| &n[..])),
            Nal::H265 => h265::is_keyframe(self.nals.iter().map(|n| &n[..])),
        };
        if self.need_key && !keyframe {
            self.nals.clear();
            self.size = 0;
            return;
        }
        self.need_key = false;
        let mut data = BytesMut::with_capacity(self.size);
        for n in self.nals.drain(..) {
            data.put_u32(n.len() as u32);
            data.put_slice(&n);
        }
        self.size = 0;
        out.push(Unit {
            timestamp: ts,
            data: data.freeze(),
            keyframe,
        });
    }

    /// Returns whether a unit was dropped.
    fn push(&mut self, p: &RtpPacket<'_>, out: &mut Vec<Unit>) -> bool {
        let mut dropped = false;
        if self.ts != Some(p.timestamp) {
            // A new timestamp without a marker on the last unit: it ended anyway.
            if self.fu.take().is_some() {
                dropped = true;
            }
            self.flush(out);
            self.ts = Some(p.timestamp);
        }
        let pl = p.payload;
        let (hdr_len, typ) = match self.kind {
            Nal::H264 => (1, pl.first().map(|b| b & 0x1f)),
            Nal::H265 => (2, pl.first().map(|b| (b >> 1) & 0x3f)),
        };
        let Some(typ) = typ else { return dropped };
        let (aggregate, fragment) = match self.kind {
            Nal::H264 => (typ == 24, typ == 28),
            Nal::H265 => (typ == 48, typ == 49),
        };
        if aggregate {
            let mut rest = pl.get(hdr_len..).unwrap_or(&[]);
            while rest.len() >= 2 {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + n) else { break };
                dropped |= self.add(Bytes::copy_from_slice(nal));
                rest = &rest[2 + n..];
            }
        } else if fragment {
            let Some(&fu) = pl.get(hdr_len) else {
                return dropped;
            };
            let body = &pl[hdr_len + 1..];
            let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
            if start {
                let mut b = BytesMut::with_capacity(body.len() * 4);
                match self.kind {
                    Nal::H264 => b.put_u8((pl[0] & 0xe0) | (fu & 0x1f)),
                    Nal::H265 => {
                        b.put_u8((pl[0] & 0x81) | ((fu & 0x3f) << 1));
                        b.put_u8(pl[1]);
                    }
                }
                b.put_slice(body);
                self.fu = Some(b);
            } else if let Some(b) = self.fu.as_mut() {
                if b.len() + body.len() > MAX_UNIT {
                    self.fu = None;
                    self.need_key = true;
                    return true;
                }
                b.put_slice(body);
            } else {
                // A fragment whose start was lost: the unit is incomplete.
                self.need_key = true;
                return true;
            }
            if end {
                if let Some(b) = self.fu.take() {
                    dropped |= self.add(b.freeze());
                }
            }
        } else {
            let single = match self.kind {
                Nal::H264 => (1..=23).contains(&typ),
                Nal::H265 => typ < 48,
            };
            if single {
                dropped |= self.add(Bytes::copy_from_slice(pl));
            }
        }
        if p.marker {
            if self.fu.take().is_some() {
                dropped = true;
            }
            self.flush(out);
        }
        dropped
    }
}

impl AacDepack {
    /// Returns whether a unit was dropped.
    fn push(&mut self, p: &RtpPacket<'_>, out: &mut Vec<Unit>) -> bool {
        let pl = p.payload;
        if pl.len() < 2 {
            return false;
        }
        let headers_bits = usize::from(u16::from_be_bytes([pl[0], pl[1]]));
        let headers_len = headers_bits.div_ceil(8);
        let Some(headers) = pl.get(2..2 + headers_len) else {
            return true;
        };
        let mut data = &pl[2 + headers_len..];
        let per = (self.size_length + self.index_length) as usize;
        if per == 0 {
            return true;
        }
        let count = headers_bits / per;
        // A fragment of a large AU continues.
        if let Some((ts, total, mut buf)) = self.frag.take() {
            if ts == p.timestamp {
                buf.put_slice(data);
                if buf.len() >= total {
                    buf.truncate(total);
                    out.push(Unit {
                        timestamp: ts,
                        data: buf.freeze(),
                        keyframe: true,
                    });
                } else if buf.len() <= MAX_UNIT {
                    self.frag = Some((ts, total, buf));
                }
                return false;
            }
            // The rest of the fragmented AU never came.
            return true;
        }
        let mut bitpos = 0usize;
        let read = |bitpos: &mut usize, n: u32| -> Option<usize> {
            let mut v = 0usize;
            for _ in 0..n {
                let byte = headers.get(*bitpos / 8)?;
                v = (v << 1) | usize::from((byte >> (7 - (*bitpos % 8))) & 1);
                *bitpos += 1;
            }
            Some(v)
        };
        for i in 0..count {
            let Some(size) = read(&mut bitpos, self.size_length) else {
                return true;
            };
            let _ = read(&mut bitpos, self.index_length);
            let ts = p.timestamp.wrapping_add(1024 * i as u32);
            if size > data.len() {
                if count == 1 && size <= MAX_UNIT {
                    let mut buf = BytesMut::with_capacity(size);
                    buf.put_slice(data);
                    self.frag = Some((ts, size, buf));
                    return false;
                }
                return true;
            }
            out.push(Unit {
                timestamp: ts,
                data: Bytes::copy_from_slice(&data[..size]),
                keyframe: true,
            });
            data = &data[size..];
        }
        false
    }
}
