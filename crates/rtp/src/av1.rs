//! AV1 over RTP (AOMedia "RTP Payload Format for AV1", v1.0): the aggregation header, a
//! depacketizer that rebuilds a temporal unit's OBUs (with size fields, Tidegate's canonical
//! form) and a packetizer that cuts one into packets.
//!
//! The aggregation header is `Z Y W W N - - -`: Z, the first element continues an OBU from the
//! previous packet; Y, the last element continues in the next; W, how many elements (0: each
//! has a LEB128 length; 1–3: all but the last have one); N, the packet starts a coded video
//! sequence. Elements are OBUs without their size field; temporal delimiters are not sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::depack::Unit;
use crate::packet::RtpPacket;
use crate::MAX_UNIT;

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_TILE_LIST: u8 = 8;

fn leb128_read(data: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0u64;
    for i in 0..8 {
        let b = *data.get(i)?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((usize::try_from(value).ok()?, i + 1));
        }
    }
    None
}

fn leb128_write(out: &mut BytesMut, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.put_u8(b);
            return;
        }
        out.put_u8(b | 0x80);
    }
}

fn leb128_len(v: usize) -> usize {
    let bits = usize::BITS - v.leading_zeros();
    (bits as usize).div_ceil(7).max(1)
}

/// An OBU element (no size field) written in low-overhead form with its size field.
fn with_size(element: &[u8], out: &mut BytesMut) -> bool {
    let Some(&h) = element.first() else {
        return false;
    };
    if h & 0x80 != 0 {
        return false; // forbidden bit
    }
    let header = 1 + usize::from(h & 0x04 != 0);
    if element.len() < header {
        return false;
    }
    if h & 0x02 != 0 {
        // The sender kept the size field: the element is already in low-overhead form.
        out.extend_from_slice(element);
        return true;
    }
    out.put_u8(h | 0x02);
    out.extend_from_slice(&element[1..header]);
    leb128_write(out, element.len() - header);
    out.extend_from_slice(&element[header..]);
    true
}

/// Joins a temporal unit's packets (same timestamp, up to the marker) into its OBUs, dropping a
/// unit with a packet missing, and every unit after a loss until a keyframe.
pub struct Av1Depack {
    ts: Option<u32>,
    /// The temporal unit's OBUs so far, with size fields.
    buf: BytesMut,
    /// An OBU element continued across packets.
    frag: BytesMut,
    in_frag: bool,
    active: bool,
    key: bool,
    pub(crate) need_key: bool,
}

impl Default for Av1Depack {
    fn default() -> Self {
        Av1Depack::new()
    }
}

impl Av1Depack {
    pub fn new() -> Av1Depack {
        Av1Depack {
            ts: None,
            buf: BytesMut::new(),
            frag: BytesMut::new(),
            in_frag: false,
            active: false,
            key: false,
            need_key: true,
        }
    }

    /// Drops the unit being joined; returns whether there was one.
    pub(crate) fn discard(&mut self) -> bool {
        let had = self.active;
        self.active = false;
        self.in_frag = false;
        self.buf.clear();
        self.frag.clear();
        had
    }

    fn fail(&mut self) -> bool {
        self.discard();
        self.need_key = true;
        true
    }

    fn complete(&mut self, element: &[u8]) -> bool {
        if let Some(&h) = element.first() {
            let t = (h >> 3) & 0x0f;
            if t == OBU_TEMPORAL_DELIMITER || t == OBU_TILE_LIST {
                return true;
            }
            if t == OBU_SEQUENCE_HEADER {
                self.key = true;
            }
        }
        if self.buf.len() + element.len() + 8 > MAX_UNIT {
            return false;
        }
        with_size(element, &mut self.buf)
    }

    /// Returns whether a unit was dropped.
    pub(crate) fn push(&mut self, p: &RtpPacket<'_>, out: &mut Vec<Unit>) -> bool {
        let Some((&agg, mut rest)) = p.payload.split_first() else {
            return self.fail();
        };
        let (z, y, w, n) = (
            agg & 0x80 != 0,
            agg & 0x40 != 0,
            usize::from((agg >> 4) & 0x03),
            agg & 0x08 != 0,
        );
        let mut dropped = false;
        if self.active && self.ts != Some(p.timestamp) {
            // A new temporal unit before the last one's marker: its end was lost.
            dropped = self.fail();
        }
        if !self.active {
            if z {
                // The continuation of an OBU whose start we do not have.
                self.need_key = true;
                return dropped;
            }
            self.active = true;
            self.ts = Some(p.timestamp);
            self.key = n;
        } else if z != self.in_frag {
            // Continuation flags that do not match what the last packet said: a loss.
            return self.fail() | dropped;
        }
        let mut index = 0;
        while !rest.is_empty() {
            index += 1;
            let last_by_count = w != 0 && index == w;
            let len = if last_by_count {
                rest.len()
            } else {
                match leb128_read(rest) {
                    Some((len, k)) if k + len <= rest.len() => {
                        rest = &rest[k..];
                        len
                    }
                    _ => return self.fail() | dropped,
                }
            };
            let element = &rest[..len];
            rest = &rest[len..];
            let continues = y && rest.is_empty();
            if index == 1 && z {
                if self.frag.len() + element.len() > MAX_UNIT {
                    return self.fail() | dropped;
                }
                self.frag.extend_from_slice(element);
                if continues {
                    break;
                }
                let whole = self.frag.split().freeze();
                self.in_frag = false;
                if !self.complete(&whole) {
                    return self.fail() | dropped;
                }
            } else if continues {
                if element.len() > MAX_UNIT {
                    return self.fail() | dropped;
                }
                self.frag.clear();
                self.frag.extend_from_slice(element);
            } else if !self.complete(element) {
                return self.fail() | dropped;
            }
            if last_by_count {
                break;
            }
        }
        self.in_frag = y;
        if p.marker {
            self.active = false;
            self.in_frag = false;
            self.frag.clear();
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

/// Cuts a temporal unit (low-overhead OBUs with size fields) into payloads of at most `room`
/// bytes, each starting with its aggregation header; the last one takes the marker. Temporal
/// delimiters and tile lists are left out, size fields dropped. Empty when the unit does not
/// parse.
pub fn payloads(data: &[u8], room: usize) -> Vec<Bytes> {
    let room = room.max(8);
    let mut elements: Vec<(u8, &[u8], &[u8])> = Vec::new();
    let mut pos = 0;
    let mut starts_sequence = false;
    while pos < data.len() {
        let Ok(obu) = tidegate_codec::av1::parse_obu(&data[pos..]) else {
            return Vec::new();
        };
        let h = data[pos];
        let ext = &data[pos + 1..pos + 1 + usize::from(h & 0x04 != 0)];
        pos += obu.len;
        match obu.obu_type {
            OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST => continue,
            OBU_SEQUENCE_HEADER => starts_sequence = true,
            _ => {}
        }
        elements.push((h & !0x02, ext, obu.payload));
    }
    let mut out = Vec::new();
    let mut cur = BytesMut::with_capacity(room);
    cur.put_u8(0);
    let mut z = false;
    let flush = |cur: &mut BytesMut, out: &mut Vec<Bytes>, z: bool, y: bool| {
        let first = out.is_empty();
        cur[0] =
            (u8::from(z) << 7) | (u8::from(y) << 6) | (u8::from(first && starts_sequence) << 3);
        out.push(cur.split().freeze());
        cur.put_u8(0);
    };
    for (h, ext, payload) in elements {
        let mut element = Vec::with_capacity(1 + ext.len() + payload.len());
        element.push(h);
        element.extend_from_slice(ext);
        element.extend_from_slice(payload);
        let mut rest = &element[..];
        loop {
            let space = room - cur.len();
            if space < 2 + leb128_len(rest.len().min(space)) {
                flush(&mut cur, &mut out, z, false);
                z = false;
                continue;
            }
            let take = rest.len().min(space - leb128_len(space));
            leb128_write(&mut cur, take);
            cur.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if rest.is_empty() {
                break;
            }
            // The packet is full and the element goes on in the next one.
            flush(&mut cur, &mut out, z, true);
            z = true;
        }
    }
    if cur.len() > 1 {
        flush(&mut cur, &mut out, z, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obu(t: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8((t << 3) | 0x02);
        leb128_write(&mut b, payload.len());
        b.extend_from_slice(payload);
        b.to_vec()
    }

    fn unit(key: bool, size: usize, fill: u8) -> Vec<u8> {
        let mut u = obu(OBU_TEMPORAL_DELIMITER, &[]);
        if key {
            u.extend(obu(
                OBU_SEQUENCE_HEADER,
                &[0, 0, 0, 0x42, 0xab, 0xbf, 0xc3, 0x70],
            ));
        }
        u.extend(obu(6, &vec![fill; size])); // OBU_FRAME
        u
    }

    fn pkt(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        crate::packet::write_header(&mut b, marker, 96, seq, ts, 1);
        b.extend_from_slice(payload);
        b.to_vec()
    }

    fn round_trip(units: &[Vec<u8>], room: usize, drop_seq: Option<u16>) -> Vec<Unit> {
        let mut d = crate::depack::Depacketizer::av1();
        let mut out = Vec::new();
        let mut seq = 0u16;
        for (i, u) in units.iter().enumerate() {
            let ps = payloads(u, room);
            assert!(ps.iter().all(|p| p.len() <= room));
            let n = ps.len();
            for (j, p) in ps.into_iter().enumerate() {
                let raw = pkt(seq, i as u32 * 3000, j + 1 == n, &p);
                if Some(seq) != drop_seq {
                    d.push(&RtpPacket::parse(&raw).unwrap(), &mut out);
                }
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    /// The unit as it comes back: without its temporal delimiter.
    fn expected(u: &[u8]) -> Vec<u8> {
        u[2..].to_vec()
    }

    #[test]
    fn units_survive_packetizing_at_any_size() {
        for room in [40, 100, 1188, 5000] {
            let units = vec![unit(true, 350, 1), unit(false, 90, 2), unit(false, 3000, 3)];
            let out = round_trip(&units, room, None);
            assert_eq!(out.len(), 3, "room {room}");
            for (u, want) in out.iter().zip(&units) {
                assert_eq!(&u.data[..], &expected(want)[..], "room {room}");
            }
            assert!(out[0].keyframe && !out[1].keyframe);
        }
    }

    #[test]
    fn a_lost_packet_drops_its_unit_and_what_follows_until_a_keyframe() {
        let units = vec![
            unit(true, 350, 1),  // packets 0..4 at room 100
            unit(false, 250, 2), // lost in the middle
            unit(false, 90, 3),
            unit(true, 90, 4),
        ];
        let out = round_trip(&units, 100, Some(5));
        let fills: Vec<u8> = out.iter().map(|u| *u.data.last().unwrap()).collect();
        assert_eq!(fills, vec![1, 4]);
    }

    #[test]
    fn counted_elements_and_kept_size_fields_are_read() {
        // W = 2: a sequence header with its length, then a frame OBU taking the rest; the
        // frame keeps its size field (allowed).
        let seq = [OBU_SEQUENCE_HEADER << 3, 1, 2, 3];
        let frame = obu(6, &[9; 20]);
        let mut payload = vec![0x20 | 0x08, seq.len() as u8];
        payload.extend_from_slice(&seq);
        payload.extend_from_slice(&frame);
        let mut d = crate::depack::Depacketizer::av1();
        let mut out = Vec::new();
        d.push(
            &RtpPacket::parse(&pkt(1, 0, true, &payload)).unwrap(),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let mut want = obu(OBU_SEQUENCE_HEADER, &[1, 2, 3]);
        want.extend(frame);
        assert_eq!(&out[0].data[..], &want[..]);
        assert!(out[0].keyframe);
    }

    #[test]
    fn hostile_payloads_are_refused() {
        let mut d = crate::depack::Depacketizer::av1();
        let mut out = Vec::new();
        for payload in [
            &[][..],
            &[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..],
            &[0x00, 0x50, 0x01][..],
            &[0x80, 0x03, 1, 2, 3][..],
            &[0x10, 0x80][..],
        ] {
            d.push(
                &RtpPacket::parse(&pkt(1, 0, true, payload)).unwrap(),
                &mut out,
            );
        }
        assert!(out.is_empty());
    }
}
