//! M-JPEG over RTP (RFC 2435), both ways.
//!
//! A frame in the packet model is a whole baseline JPEG image (SOI … EOI). On the wire only
//! the entropy-coded scan travels, after an 8-byte header (type, Q, size in 8-pixel blocks) and,
//! in a frame's first packet when Q ≥ 128, its quantisation tables; the receiver rebuilds the
//! JPEG headers, with the standard Huffman tables (ITU-T T.81 Annex K.3, which RFC 2435 makes
//! mandatory) and, for Q < 128, the standard quantisation tables (Annex K.1) scaled by Q.
//! Only what RFC 2435 can describe is sent: 8-bit baseline, three components, 4:2:2 or 4:2:0,
//! sizes up to 2040 pixels, the standard Huffman tables; anything else is refused.

use bytes::{BufMut, Bytes, BytesMut};

use crate::mpv::Piece;
use crate::MAX_UNIT;

/// Zigzag order: the natural index of the n-th coefficient (T.81 Figure A.6).
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// T.81 Table K.1 (luminance) and K.2 (chrominance), natural order.
const LUMA_Q: [u8; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];
const CHROMA_Q: [u8; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

/// T.81 Annex K.3: the standard Huffman tables (code counts per length 1..16, then symbols).
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

/// The four standard tables as (class << 4 | id, bits, values).
fn standard_huffman() -> [(u8, &'static [u8], &'static [u8]); 4] {
    [
        (0x00, &DC_LUMA_BITS, &DC_VALUES),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES),
        (0x01, &DC_CHROMA_BITS, &DC_VALUES),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES),
    ]
}

/// RFC 2435 §4.2: the two tables (zigzag order) a Q of 1 to 99 stands for.
fn tables_for_q(q: u8) -> [u8; 128] {
    let q = u32::from(q.clamp(1, 99));
    let factor = if q < 50 { 5000 / q } else { 200 - 2 * q };
    let mut out = [0u8; 128];
    for (i, &z) in ZIGZAG.iter().enumerate() {
        let l = (u32::from(LUMA_Q[z]) * factor + 50) / 100;
        let c = (u32::from(CHROMA_Q[z]) * factor + 50) / 100;
        out[i] = l.clamp(1, 255) as u8;
        out[64 + i] = c.clamp(1, 255) as u8;
    }
    out
}

/// What the RTP JPEG header says of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    /// 0: 4:2:2, 1: 4:2:0 (plus 64 with restart markers).
    typ: u8,
    q: u8,
    width: u16,
    height: u16,
    restart_interval: u16,
    /// Zigzag-ordered 8-bit tables, luma then chroma (Q ≥ 128: sent with the frame).
    tables: Vec<u8>,
}

/// Builds the JPEG headers for a frame (SOI to SOS, scan data follows).
fn jpeg_headers(h: &Header) -> Option<Vec<u8>> {
    let tables: Vec<u8> = if h.q >= 128 {
        h.tables.clone()
    } else {
        tables_for_q(h.q).to_vec()
    };
    if tables.len() < 64 {
        return None;
    }
    let mut o = Vec::with_capacity(700);
    o.extend_from_slice(&[0xff, 0xd8]);
    // One DQT per table (one table: both components use it).
    let n_tables = if tables.len() >= 128 { 2 } else { 1 };
    for t in 0..n_tables {
        o.extend_from_slice(&[0xff, 0xdb, 0, 67, t as u8]);
        o.extend_from_slice(&tables[t * 64..t * 64 + 64]);
    }
    if h.restart_interval != 0 {
        o.extend_from_slice(&[0xff, 0xdd, 0, 4]);
        o.extend_from_slice(&h.restart_interval.to_be_bytes());
    }
    // SOF0: 8-bit, three components; Y samples 2x1 (type 0) or 2x2 (type 1).
    let y_sampling = if h.typ & 0x3f == 0 { 0x21 } else { 0x22 };
    let chroma_table = (n_tables - 1) as u8;
    o.extend_from_slice(&[0xff, 0xc0, 0, 17, 8]);
    o.extend_from_slice(&h.height.to_be_bytes());
    o.extend_from_slice(&h.width.to_be_bytes());
    o.extend_from_slice(&[
        3,
        1,
        y_sampling,
        0,
        2,
        0x11,
        chroma_table,
        3,
        0x11,
        chroma_table,
    ]);
    for (class_id, bits, values) in standard_huffman() {
        let len = 3 + bits.len() + values.len();
        o.extend_from_slice(&[0xff, 0xc4]);
        o.extend_from_slice(&(len as u16).to_be_bytes());
        o.push(class_id);
        o.extend_from_slice(bits);
        o.extend_from_slice(values);
    }
    // SOS: three components, Y with tables 0/0, Cb and Cr with 1/1.
    o.extend_from_slice(&[0xff, 0xda, 0, 12, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
    Some(o)
}

/// RTP JPEG → whole JPEG images.
#[derive(Default)]
pub struct JpegDepack {
    header: Option<Header>,
    data: BytesMut,
    ts: Option<u32>,
    broken: bool,
}

impl JpegDepack {
    fn reset(&mut self) {
        self.ts = None;
        self.header = None;
        self.data.clear();
        self.broken = false;
    }

    /// Takes one packet; returns the image when `marker` ends it. `Err` when a frame was
    /// dropped (lost piece, bad header, too large).
    pub fn push(&mut self, ts: u32, marker: bool, payload: &[u8]) -> Piece {
        let mut dropped = false;
        if self.ts != Some(ts) {
            if self.ts.is_some() && (!self.data.is_empty() || self.broken) {
                dropped = true;
            }
            self.ts = Some(ts);
            self.header = None;
            self.data.clear();
            self.broken = false;
        }
        if payload.len() < 8 {
            self.broken = true;
            return Piece::Dropped;
        }
        let offset = u32::from_be_bytes([0, payload[1], payload[2], payload[3]]) as usize;
        let typ = payload[4];
        let q = payload[5];
        let width = u16::from(payload[6]) * 8;
        let height = u16::from(payload[7]) * 8;
        let mut rest = &payload[8..];
        if typ & 0x3f > 1 || width == 0 || height == 0 || q == 0 {
            // Types 2-63 are not defined; a size of 0 means over 2040 pixels.
            self.broken = true;
            return Piece::Dropped;
        }
        let mut restart_interval = 0;
        if typ >= 64 {
            if rest.len() < 4 {
                self.broken = true;
                return Piece::Dropped;
            }
            restart_interval = u16::from_be_bytes([rest[0], rest[1]]);
            rest = &rest[4..];
        }
        if offset == 0 {
            let mut tables = Vec::new();
            if q >= 128 {
                if rest.len() < 4 {
                    self.broken = true;
                    return Piece::Dropped;
                }
                let precision = rest[1];
                let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
                // 8-bit tables only (16-bit ones are not baseline).
                if precision != 0 || len > 128 || rest.len() < 4 + len || len < 64 {
                    self.broken = true;
                    return Piece::Dropped;
                }
                tables = rest[4..4 + len].to_vec();
                rest = &rest[4 + len..];
            }
            self.header = Some(Header {
                typ,
                q,
                width,
                height,
                restart_interval,
                tables,
            });
            self.data.clear();
        }
        if self.broken || self.header.is_none() || offset != self.data.len() {
            // A piece before this one is missing: the frame is dropped, said once (at its
            // last packet, or when the next frame starts).
            self.broken = true;
            if marker {
                self.reset();
                return Piece::Dropped;
            }
            return if dropped {
                Piece::Dropped
            } else {
                Piece::Pending
            };
        }
        if self.data.len() + rest.len() > MAX_UNIT {
            self.broken = true;
            return Piece::Dropped;
        }
        self.data.extend_from_slice(rest);
        if !marker {
            return if dropped {
                Piece::Dropped
            } else {
                Piece::Pending
            };
        }
        let Some(header) = self.header.take() else {
            return Piece::Dropped;
        };
        let Some(mut out) = jpeg_headers(&header) else {
            return Piece::Dropped;
        };
        out.extend_from_slice(&self.data);
        if !out.ends_with(&[0xff, 0xd9]) {
            out.extend_from_slice(&[0xff, 0xd9]);
        }
        self.reset();
        Piece::Frame(Bytes::from(out))
    }
}

/// What the packetizer needs of a JPEG image.
struct Parsed<'a> {
    header: Header,
    scan: &'a [u8],
}

/// Reads a baseline JPEG image into what RTP JPEG carries, or says why it cannot.
fn parse(jpeg: &[u8]) -> Result<Parsed<'_>, String> {
    if !jpeg.starts_with(&[0xff, 0xd8]) {
        return Err("not a JPEG image (no SOI)".into());
    }
    let mut at = 2;
    let mut tables: [Option<[u8; 64]>; 4] = [None; 4];
    let mut sof: Option<(u16, u16, u8, [u8; 3])> = None;
    let mut restart_interval = 0u16;
    loop {
        // Skip fill bytes before a marker.
        while jpeg.get(at) == Some(&0xff) && jpeg.get(at + 1) == Some(&0xff) {
            at += 1;
        }
        if at + 4 > jpeg.len() || jpeg[at] != 0xff {
            return Err("truncated JPEG headers".into());
        }
        let marker = jpeg[at + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if len < 2 || at + 2 + len > jpeg.len() {
            return Err("a JPEG segment runs past the image".into());
        }
        let body = &jpeg[at + 4..at + 2 + len];
        match marker {
            0xdb => {
                let mut b = body;
                while !b.is_empty() {
                    let (pq, tq) = (b[0] >> 4, usize::from(b[0] & 15));
                    if pq != 0 || tq > 3 || b.len() < 65 {
                        return Err("16-bit quantisation tables cannot travel over RTP".into());
                    }
                    let mut t = [0u8; 64];
                    t.copy_from_slice(&b[1..65]);
                    tables[tq] = Some(t);
                    b = &b[65..];
                }
            }
            0xc4 => {
                // Only the standard tables can travel (the receiver assumes them).
                let mut b = body;
                while !b.is_empty() {
                    let class_id = b[0];
                    let Some(&(_, bits, values)) =
                        standard_huffman().iter().find(|(c, _, _)| *c == class_id)
                    else {
                        return Err("a Huffman table of a class RTP JPEG does not know".into());
                    };
                    let n = 1 + 16 + values.len();
                    if b.len() < n || &b[1..17] != bits || &b[17..n] != values {
                        return Err(
                            "the image has its own Huffman tables; RTP JPEG (RFC 2435) carries \
                             only the standard ones (ffmpeg: -huffman default)"
                                .into(),
                        );
                    }
                    b = &b[n..];
                }
            }
            0xdd if body.len() >= 2 => {
                restart_interval = u16::from_be_bytes([body[0], body[1]]);
            }
            0xc0 | 0xc1 => {
                if body.len() < 15 || body[0] != 8 || body[5] != 3 {
                    return Err("only 8-bit three-component JPEG travels over RTP".into());
                }
                let h = u16::from_be_bytes([body[1], body[2]]);
                let w = u16::from_be_bytes([body[3], body[4]]);
                let y = body[7];
                let (cb, cr) = (body[10], body[13]);
                if cb != 0x11 || cr != 0x11 || !(y == 0x21 || y == 0x22) {
                    return Err("only 4:2:2 and 4:2:0 JPEG travel over RTP".into());
                }
                sof = Some((w, h, y, [body[8], body[11], body[14]]));
            }
            0xc2 | 0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => {
                return Err("only baseline JPEG travels over RTP (not progressive)".into());
            }
            0xda => {
                let (w, h, y, tq) = sof.ok_or("no frame header before the scan")?;
                if w == 0 || h == 0 || w > 2040 || h > 2040 {
                    return Err(format!("{w}x{h}: RTP JPEG carries up to 2040x2040"));
                }
                let luma = tables[usize::from(tq[0] & 3)].ok_or("no luma quantisation table")?;
                let chroma =
                    tables[usize::from(tq[1] & 3)].ok_or("no chroma quantisation table")?;
                let mut t = luma.to_vec();
                if tq[1] & 3 != tq[0] & 3 {
                    t.extend_from_slice(&chroma);
                }
                let mut scan = &jpeg[at + 2 + len..];
                if scan.ends_with(&[0xff, 0xd9]) {
                    scan = &scan[..scan.len() - 2];
                }
                let typ = u8::from(y == 0x22) + if restart_interval != 0 { 64 } else { 0 };
                return Ok(Parsed {
                    header: Header {
                        typ,
                        q: 255,
                        width: w.div_ceil(8) * 8,
                        height: h.div_ceil(8) * 8,
                        restart_interval,
                        tables: t,
                    },
                    scan,
                });
            }
            _ => {}
        }
        at += 2 + len;
    }
}

/// Why this JPEG image cannot travel over RTP (None: it can).
pub fn why_not(jpeg: &[u8]) -> Option<String> {
    parse(jpeg).err()
}

/// The RTP payloads of one image, each at most `room` bytes; empty when it cannot travel.
pub fn payloads(jpeg: &[u8], room: usize) -> Vec<Vec<u8>> {
    let Ok(p) = parse(jpeg) else {
        return Vec::new();
    };
    let h = &p.header;
    let mut out = Vec::new();
    let mut offset = 0usize;
    loop {
        let mut b = BytesMut::with_capacity(room);
        b.put_u8(0);
        b.put_slice(&(offset as u32).to_be_bytes()[1..]);
        b.put_u8(h.typ);
        b.put_u8(h.q);
        b.put_u8((h.width / 8) as u8);
        b.put_u8((h.height / 8) as u8);
        if h.typ >= 64 {
            b.put_u16(h.restart_interval);
            // F = L = 1, count 0x3fff: the packet may not align with restart intervals.
            b.put_u16(0xffff);
        }
        if offset == 0 {
            b.put_u8(0);
            b.put_u8(0);
            b.put_u16(h.tables.len() as u16);
            b.put_slice(&h.tables);
        }
        let take = room
            .saturating_sub(b.len())
            .max(1)
            .min(p.scan.len() - offset);
        b.put_slice(&p.scan[offset..offset + take]);
        offset += take;
        out.push(b.to_vec());
        if offset >= p.scan.len() {
            return out;
        }
    }
}
