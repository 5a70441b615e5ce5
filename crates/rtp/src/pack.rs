//! Packetizers: access units in, RTP packets out, each at most `mtu` bytes.

use bytes::{BufMut, Bytes, BytesMut};
use tidegate_codec::nal;
use tidegate_core::CodecParams;

use crate::packet::write_header;

/// How a codec is cut into packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackKind {
    H264,
    H265,
    Aac,
    /// The whole frame in one packet (Opus, G.711).
    Frame,
    /// VP8 (RFC 7741) and VP9 (RFC 9628): a one-byte descriptor before each piece.
    Vp8,
    Vp9,
    /// AV1 (the AOMedia RTP payload format): OBUs after an aggregation header.
    Av1,
    /// MPEG-TS (RFC 2250 §2): as many whole 188-byte TS packets as fit.
    Mp2t,
    /// MPEG audio (RFC 2250): whole frames, or pieces with their offsets.
    Mpa,
    /// Sample-based audio (LPCM, G.722, G.726): `bytes` bytes take `ticks` of the RTP clock;
    /// a frame larger than a packet is cut at multiples of `bytes`, the timestamp advancing.
    Samples {
        bytes: u32,
        ticks: u32,
    },
    /// M-JPEG (RFC 2435): the scan in pieces after the JPEG header, tables in the first.
    Jpeg,
    /// AC-3 (RFC 4184): a syncframe per packet, or its fragments.
    Ac3,
    /// MPEG-4 Visual (RFC 6416) and MPEG-1/2 video (RFC 2250).
    Mpeg4Video,
    Mpeg12Video,
}

pub struct Packetizer {
    kind: PackKind,
    pt: u8,
    pub ssrc: u32,
    seq: u16,
    mtu: usize,
    /// Parameter sets sent in band before key frames that lack them.
    params: Vec<Bytes>,
    pub packets: u32,
    pub octets: u32,
}

impl Packetizer {
    /// `mtu` bounds every packet, header included (1200 for UDP paths, larger over TCP).
    pub fn new(kind: PackKind, pt: u8, ssrc: u32, first_seq: u16, mtu: usize) -> Packetizer {
        Packetizer {
            kind,
            pt,
            ssrc,
            seq: first_seq,
            mtu: mtu.max(64),
            params: Vec::new(),
            packets: 0,
            octets: 0,
        }
    }

    pub fn set_params(&mut self, params: &CodecParams) {
        self.params = match params {
            CodecParams::H264 { sps, pps } => vec![sps.clone(), pps.clone()],
            CodecParams::H265 { vps, sps, pps } => vec![vps.clone(), sps.clone(), pps.clone()],
            _ => Vec::new(),
        };
    }

    /// Next sequence number (for RTP-Info).
    pub fn next_sequence(&self) -> u16 {
        self.seq
    }

    fn packet(&mut self, out: &mut Vec<Bytes>, marker: bool, ts: u32, body: &[&[u8]]) {
        let len: usize = body.iter().map(|b| b.len()).sum();
        let mut b = BytesMut::with_capacity(12 + len);
        write_header(&mut b, marker, self.pt, self.seq, ts, self.ssrc);
        for part in body {
            b.put_slice(part);
        }
        self.seq = self.seq.wrapping_add(1);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(len as u32);
        out.push(b.freeze());
    }

    /// Packets of one access unit with RTP timestamp `ts`.
    pub fn packetize(&mut self, data: &[u8], ts: u32, keyframe: bool, out: &mut Vec<Bytes>) {
        let room = self.mtu - 12;
        match self.kind {
            PackKind::H264 | PackKind::H265 => {
                let Ok(nals) = nal::split_length_prefixed(data, 4) else {
                    return;
                };
                let is_param = |n: &[u8]| match self.kind {
                    PackKind::H264 => matches!(n.first().map(|b| b & 0x1f), Some(7 | 8)),
                    _ => matches!(n.first().map(|b| (b >> 1) & 0x3f), Some(32..=34)),
                };
                let mut all: Vec<&[u8]> = Vec::with_capacity(nals.len() + 3);
                let params = std::mem::take(&mut self.params);
                if keyframe && !nals.iter().any(|n| is_param(n)) {
                    all.extend(params.iter().map(|p| &p[..]));
                }
                all.extend(nals.iter().copied().filter(|n| !n.is_empty()));
                let count = all.len();
                for (i, n) in all.into_iter().enumerate() {
                    let last = i + 1 == count;
                    if n.len() <= room {
                        self.packet(out, last, ts, &[n]);
                        continue;
                    }
                    // Fragmentation units.
                    let (hdr, mut rest): (Vec<u8>, &[u8]) = match self.kind {
                        PackKind::H264 => (vec![(n[0] & 0xe0) | 28, n[0] & 0x1f], &n[1..]),
                        _ => {
                            let typ = (n[0] >> 1) & 0x3f;
                            (
                                vec![
                                    (n[0] & 0x81) | (49 << 1),
                                    n.get(1).copied().unwrap_or(1),
                                    typ,
                                ],
                                n.get(2..).unwrap_or(&[]),
                            )
                        }
                    };
                    let chunk = room - hdr.len();
                    let mut first = true;
                    while !rest.is_empty() {
                        let take = rest.len().min(chunk);
                        let end = take == rest.len();
                        let mut h = hdr.clone();
                        let fu = h.len() - 1;
                        if first {
                            h[fu] |= 0x80;
                        }
                        if end {
                            h[fu] |= 0x40;
                        }
                        self.packet(out, last && end, ts, &[&h, &rest[..take]]);
                        rest = &rest[take..];
                        first = false;
                    }
                }
                self.params = params;
            }
            PackKind::Aac => {
                let size = data.len().min(0x1fff) as u16;
                let header = [0u8, 16, (size >> 5) as u8, ((size & 0x1f) << 3) as u8];
                let chunk = room - header.len();
                let mut rest = &data[..usize::from(size)];
                loop {
                    let take = rest.len().min(chunk);
                    let end = take == rest.len();
                    self.packet(out, end, ts, &[&header, &rest[..take]]);
                    rest = &rest[take..];
                    if end {
                        break;
                    }
                }
            }
            PackKind::Frame => self.packet(out, true, ts, &[data]),
            PackKind::Ac3 => {
                let pieces = crate::ac3::payloads(data, room);
                let n = pieces.len();
                for (i, (at, p)) in pieces.iter().enumerate() {
                    // The marker ends a frame: a whole one, or its last fragment.
                    let last = i + 1 == n || pieces[i + 1].0 != *at;
                    self.packet(out, last, ts.wrapping_add(*at), &[p]);
                }
            }
            PackKind::Jpeg => {
                let pieces = crate::jpeg::payloads(data, room);
                let n = pieces.len();
                for (i, piece) in pieces.iter().enumerate() {
                    self.packet(out, i + 1 == n, ts, &[piece]);
                }
            }
            PackKind::Mpeg4Video | PackKind::Mpeg12Video => {
                let kind = if self.kind == PackKind::Mpeg4Video {
                    crate::mpv::Mpv::Mpeg4
                } else {
                    crate::mpv::Mpv::Mpeg12
                };
                let pieces = crate::mpv::payloads(kind, data, room);
                let n = pieces.len();
                for (i, piece) in pieces.iter().enumerate() {
                    self.packet(out, i + 1 == n, ts, &[piece]);
                }
            }
            PackKind::Samples { bytes, ticks } => {
                let bytes = bytes.max(1) as usize;
                let chunk = (room / bytes).max(1) * bytes;
                let mut at = ts;
                for piece in data.chunks(chunk) {
                    self.packet(out, false, at, &[piece]);
                    at = at.wrapping_add((piece.len() / bytes) as u32 * ticks);
                }
            }
            PackKind::Mpa => {
                let pieces = crate::mpa::payloads(data, room);
                let n = pieces.len();
                for (i, (hdr, piece)) in pieces.into_iter().enumerate() {
                    self.packet(out, i + 1 == n, ts, &[&hdr, piece]);
                }
            }
            PackKind::Vp8 | PackKind::Vp9 => {
                let codec = if self.kind == PackKind::Vp8 {
                    crate::vpx::Vpx::Vp8
                } else {
                    crate::vpx::Vpx::Vp9
                };
                let pieces = crate::vpx::payloads(codec, data, keyframe, room);
                let n = pieces.len();
                for (i, (desc, piece)) in pieces.iter().enumerate() {
                    self.packet(out, i + 1 == n, ts, &[desc, piece]);
                }
            }
            PackKind::Mp2t => {
                let per = (room / 188).max(1) * 188;
                let n = data.len().div_ceil(per).max(1);
                for (i, piece) in data.chunks(per).enumerate() {
                    self.packet(out, i + 1 == n, ts, &[piece]);
                }
            }
            PackKind::Av1 => {
                let pieces = crate::av1::payloads(data, room);
                let n = pieces.len();
                for (i, piece) in pieces.iter().enumerate() {
                    self.packet(out, i + 1 == n, ts, &[piece]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::depack::Depacketizer;
    use crate::packet::RtpPacket;

    #[test]
    fn sample_audio_is_cut_at_sample_boundaries_with_the_time_advancing() {
        // L24 stereo: 6 bytes per sample frame, 1 tick each.
        let mut p = Packetizer::new(PackKind::Samples { bytes: 6, ticks: 1 }, 96, 1, 0, 12 + 100);
        let data: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        p.packetize(&data, 1000, true, &mut out);
        assert_eq!(out.len(), 7);
        let mut at = 1000;
        let mut joined = Vec::new();
        for b in &out {
            let pk = RtpPacket::parse(b).unwrap();
            assert_eq!(pk.timestamp, at);
            assert_eq!(pk.payload.len() % 6, 0);
            assert!(pk.payload.len() <= 100);
            at += (pk.payload.len() / 6) as u32;
            joined.extend_from_slice(pk.payload);
        }
        assert_eq!(joined, data);
    }

    fn round_trip(
        kind: PackKind,
        mut d: Depacketizer,
        units: &[(Vec<u8>, bool)],
        mtu: usize,
    ) -> Vec<crate::Unit> {
        let mut p = Packetizer::new(kind, 96, 1, 65530, mtu);
        let mut out = Vec::new();
        for (i, (u, key)) in units.iter().enumerate() {
            let mut pk = Vec::new();
            p.packetize(u, i as u32 * 3000, *key, &mut pk);
            for b in &pk {
                assert!(b.len() <= mtu);
                d.push(&RtpPacket::parse(b).unwrap(), &mut out);
            }
        }
        out
    }

    fn lp(nals: &[&[u8]]) -> Vec<u8> {
        nal::to_length_prefixed(nals.iter().copied()).to_vec()
    }

    #[test]
    fn vp8_and_vp9_frames_come_back_identical() {
        for (kind, d) in [
            (PackKind::Vp8, Depacketizer::vp8()),
            (PackKind::Vp9, Depacketizer::vp9()),
        ] {
            let mut key = vec![0x10u8; 3000];
            key[1] = 7;
            let units = vec![(key, true), (vec![0x11u8, 5, 6, 7], false)];
            let out = round_trip(kind, d, &units, 1200);
            assert_eq!(out.len(), 2, "{kind:?}");
            assert_eq!(out[0].data, units[0].0);
            assert!(out[0].keyframe && !out[1].keyframe, "{kind:?}");
            assert_eq!(out[1].data, units[1].0);
        }
    }

    #[test]
    fn mpegts_is_cut_at_ts_packets_and_comes_back_whole() {
        // 20 TS packets: 6 per 1200-byte packet (1128 bytes of payload).
        let ts: Vec<u8> = (0..20u8)
            .flat_map(|i| std::iter::once(0x47).chain(std::iter::repeat_n(i, 187)))
            .collect();
        let out = round_trip(
            PackKind::Mp2t,
            Depacketizer::mp2t(),
            &[(ts.clone(), false)],
            1200,
        );
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|u| u.data.len() % 188 == 0));
        let joined: Vec<u8> = out.iter().flat_map(|u| u.data.to_vec()).collect();
        assert_eq!(joined, ts);
        // A payload that is not whole TS packets is dropped.
        let mut d = Depacketizer::mp2t();
        let mut b = BytesMut::new();
        write_header(&mut b, false, 33, 1, 0, 1);
        b.extend_from_slice(&[0x47; 100]);
        let mut units = Vec::new();
        d.push(&RtpPacket::parse(&b).unwrap(), &mut units);
        assert!(units.is_empty());
        assert_eq!(d.units_dropped, 1);
    }

    #[test]
    fn h264_units_survive_fu_a_and_come_back_identical() {
        let big: Vec<u8> = std::iter::once(0x65)
            .chain((0..5000).map(|i| (i % 251) as u8))
            .collect();
        let units = vec![
            (lp(&[&[0x67, 1, 2, 3], &[0x68, 4], &big]), true),
            (lp(&[&[0x41, 9, 9, 9]]), false),
        ];
        let out = round_trip(PackKind::H264, Depacketizer::h264(), &units, 1200);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data, units[0].0);
        assert!(out[0].keyframe);
        assert_eq!(out[1].data, units[1].0);
    }

    #[test]
    fn h265_units_survive_fu_and_come_back_identical() {
        // IDR_W_RADL (19) with a big payload, after VPS/SPS/PPS.
        let big: Vec<u8> = [0x26, 0x01]
            .into_iter()
            .chain((0..4000).map(|i| (i % 7) as u8))
            .collect();
        let units = vec![(
            lp(&[&[0x40, 1, 1], &[0x42, 1, 2], &[0x44, 1, 3], &big]),
            true,
        )];
        let out = round_trip(PackKind::H265, Depacketizer::h265(), &units, 1000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, units[0].0);
    }

    #[test]
    fn aac_round_trip() {
        let units = vec![(vec![1u8; 300], true), (vec![2u8; 2000], true)];
        let out = round_trip(PackKind::Aac, Depacketizer::aac(13, 3), &units, 1200);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].data.len(), 2000);
    }

    #[test]
    fn loss_drops_to_the_next_key_frame() {
        let mut p = Packetizer::new(PackKind::H264, 96, 1, 0, 200);
        let big: Vec<u8> = std::iter::once(0x41)
            .chain(0..1000)
            .map(|b| b as u8)
            .collect();
        let mut d = Depacketizer::h264();
        let mut out = Vec::new();
        let key = lp(&[&[0x67, 1], &[0x68, 2], &[0x65, 3]]);
        let mut pk = Vec::new();
        p.packetize(&key, 0, true, &mut pk);
        p.packetize(&lp(&[&big]), 3000, false, &mut pk);
        p.packetize(&lp(&[&[0x41, 5]]), 6000, false, &mut pk);
        p.packetize(&key, 9000, true, &mut pk);
        for (i, b) in pk.iter().enumerate() {
            if i == 4 {
                continue; // a middle fragment of the big P frame
            }
            d.push(&RtpPacket::parse(b).unwrap(), &mut out);
        }
        let ts: Vec<u32> = out.iter().map(|u| u.timestamp).collect();
        assert_eq!(
            ts,
            [0, 9000],
            "the damaged frame and what depends on it are dropped"
        );
        assert_eq!(d.packets_lost, 1);
        assert!(d.units_dropped >= 1);
    }
}
