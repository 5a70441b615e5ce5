//! TS packets to PES units: PAT/PMT tracking, PES reassembly across packets, continuity
//! errors counted (never fatal), 33-bit timestamps unwrapped to 64 bits.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::psi::{parse_pat, parse_pmt, EsInfo};
use crate::{PACKET_SIZE, SYNC_BYTE};

/// Largest PES unit kept; a bigger one is dropped and counted (a 4K keyframe is ~2 MB).
pub const MAX_PES: usize = 16 << 20;
/// Largest PSI section kept across packets.
const MAX_SECTION: usize = 4096;

/// One reassembled PES unit.
#[derive(Clone, Debug)]
pub struct Pes {
    pub pid: u16,
    pub stream_type: u8,
    /// 90 kHz, unwrapped past the 33-bit wrap.
    pub pts: Option<i64>,
    pub dts: Option<i64>,
    pub random_access: bool,
    pub data: Bytes,
}

#[derive(Clone, Debug)]
pub enum DemuxEvent {
    /// The program's streams (first PMT, and every change).
    Program(Vec<EsInfo>),
    Pes(Pes),
}

#[derive(Default)]
struct EsState {
    info: Option<EsInfo>,
    buf: BytesMut,
    started: bool,
    random_access: bool,
    cc: Option<u8>,
    last_ts: Option<i64>,
    wraps: i64,
}

/// Counters of what the demuxer had to skip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemuxStats {
    pub packets: u64,
    pub continuity_errors: u64,
    pub resyncs: u64,
    pub dropped_pes: u64,
}

#[derive(Default)]
pub struct Demuxer {
    partial: Vec<u8>,
    pmt_pids: Vec<u16>,
    sections: BTreeMap<u16, Vec<u8>>,
    program: Vec<EsInfo>,
    streams: BTreeMap<u16, EsState>,
    events: VecDeque<DemuxEvent>,
    stats: DemuxStats,
}

impl Demuxer {
    pub fn stats(&self) -> DemuxStats {
        self.stats
    }

    pub fn poll_event(&mut self) -> Option<DemuxEvent> {
        self.events.pop_front()
    }

    /// Feeds bytes of any length (whole or partial packets, several at once).
    pub fn feed(&mut self, mut data: &[u8]) {
        if !self.partial.is_empty() {
            let need = PACKET_SIZE - self.partial.len();
            let take = need.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < PACKET_SIZE {
                return;
            }
            let packet = std::mem::take(&mut self.partial);
            self.packet(&packet);
        }
        while !data.is_empty() {
            if data[0] != SYNC_BYTE {
                // Lost sync: skip to the next sync byte.
                self.stats.resyncs += 1;
                match data.iter().position(|&b| b == SYNC_BYTE) {
                    Some(i) => data = &data[i..],
                    None => return,
                }
                continue;
            }
            if data.len() < PACKET_SIZE {
                self.partial.extend_from_slice(data);
                return;
            }
            let (packet, rest) = data.split_at(PACKET_SIZE);
            self.packet(packet);
            data = rest;
        }
    }

    /// Emits the PES units still being assembled (end of input).
    pub fn flush(&mut self) {
        let pids: Vec<u16> = self.streams.keys().copied().collect();
        for pid in pids {
            self.finish_pes(pid);
        }
    }

    fn packet(&mut self, p: &[u8]) {
        self.stats.packets += 1;
        let pusi = p[1] & 0x40 != 0;
        let pid = u16::from_be_bytes([p[1] & 0x1f, p[2]]);
        let afc = (p[3] >> 4) & 0x03;
        let cc = p[3] & 0x0f;
        let mut pos = 4;
        let mut random_access = false;
        if afc & 0x02 != 0 {
            let len = usize::from(p[4]);
            if len > 0 && pos + 1 < PACKET_SIZE {
                random_access = p[5] & 0x40 != 0;
            }
            pos += 1 + len;
        }
        if afc & 0x01 == 0 || pos >= PACKET_SIZE {
            return; // no payload
        }
        let payload = &p[pos..];
        if pid == 0 || self.pmt_pids.contains(&pid) {
            self.psi(pid, pusi, payload);
            return;
        }
        if !self.streams.contains_key(&pid) {
            return; // not in the program
        }
        if let Some(st) = self.streams.get_mut(&pid) {
            if let Some(prev) = st.cc {
                if cc != (prev + 1) & 0x0f && cc != prev {
                    self.stats.continuity_errors += 1;
                }
            }
            st.cc = Some(cc);
        }
        if pusi {
            self.finish_pes(pid);
        }
        let Some(st) = self.streams.get_mut(&pid) else {
            return;
        };
        if pusi {
            st.started = true;
            st.random_access = random_access;
        }
        if !st.started {
            return; // joined mid-PES: wait for the next start
        }
        if st.buf.len() + payload.len() > MAX_PES {
            st.buf.clear();
            st.started = false;
            self.stats.dropped_pes += 1;
            return;
        }
        st.buf.extend_from_slice(payload);
        // A PES with a declared length is complete as soon as it is all here.
        if st.buf.len() >= 6 {
            let declared = usize::from(u16::from_be_bytes([st.buf[4], st.buf[5]]));
            if declared > 0 && st.buf.len() >= 6 + declared {
                self.finish_pes(pid);
            }
        }
    }

    fn psi(&mut self, pid: u16, pusi: bool, payload: &[u8]) {
        let buf = self.sections.entry(pid).or_default();
        if pusi {
            let pointer = usize::from(payload[0]);
            buf.clear();
            match payload.get(1 + pointer..) {
                Some(s) => buf.extend_from_slice(s),
                None => return,
            }
        } else if !buf.is_empty() && buf.len() + payload.len() <= MAX_SECTION {
            buf.extend_from_slice(payload);
        } else {
            return;
        }
        if buf.len() < 3 {
            return;
        }
        let total = 3 + ((usize::from(buf[1] & 0x0f) << 8) | usize::from(buf[2]));
        if buf.len() < total {
            return;
        }
        let section = buf[..total].to_vec();
        buf.clear();
        if pid == 0 {
            if let Some(pmts) = parse_pat(&section) {
                self.pmt_pids = pmts;
            }
        } else if let Some(streams) = parse_pmt(&section) {
            if streams != self.program {
                self.program = streams.clone();
                self.streams
                    .retain(|pid, _| streams.iter().any(|s| s.pid == *pid));
                for s in &streams {
                    let st = self.streams.entry(s.pid).or_default();
                    st.info = Some(s.clone());
                }
                self.events.push_back(DemuxEvent::Program(streams));
            }
        }
    }

    fn finish_pes(&mut self, pid: u16) {
        let Some(st) = self.streams.get_mut(&pid) else {
            return;
        };
        if st.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut st.buf).freeze();
        st.started = false;
        let Some(info) = st.info.clone() else { return };
        let Some((pts, dts, header_len)) = parse_pes_header(&buf) else {
            return;
        };
        let mut unwrap = |ts: i64| -> i64 {
            const WRAP: i64 = 1 << 33;
            let full = ts + st.wraps;
            if let Some(last) = st.last_ts {
                if full < last - WRAP / 2 {
                    st.wraps += WRAP;
                    return ts + st.wraps;
                }
                if full > last + WRAP / 2 && st.wraps >= WRAP {
                    return full - WRAP; // a late frame from before the wrap
                }
            }
            full
        };
        let pts = pts.map(&mut unwrap);
        let dts = dts.map(&mut unwrap);
        if let Some(t) = dts.or(pts) {
            st.last_ts = Some(t);
        }
        let data = buf.slice(header_len..);
        let random_access = st.random_access;
        self.events.push_back(DemuxEvent::Pes(Pes {
            pid,
            stream_type: info.stream_type,
            pts,
            dts,
            random_access,
            data,
        }));
    }
}

fn ts33(b: &[u8]) -> i64 {
    (i64::from(b[0] & 0x0e) << 29)
        | (i64::from(b[1]) << 22)
        | (i64::from(b[2] & 0xfe) << 14)
        | (i64::from(b[3]) << 7)
        | (i64::from(b[4]) >> 1)
}

/// (pts, dts, header length) of a PES unit.
fn parse_pes_header(b: &[u8]) -> Option<(Option<i64>, Option<i64>, usize)> {
    if b.len() < 9 || b[0] != 0 || b[1] != 0 || b[2] != 1 {
        return None;
    }
    let flags = b[7] >> 6;
    let header_len = 9 + usize::from(b[8]);
    if header_len > b.len() {
        return None;
    }
    let pts = (flags & 0x02 != 0 && b.len() >= 14).then(|| ts33(&b[9..14]));
    let dts = (flags == 0x03 && b.len() >= 19).then(|| ts33(&b[14..19]));
    Some((pts, dts, header_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::Muxer;
    use std::time::Instant;
    use tidegate_core::{CodecParams, Frame, StreamDesc, Track};

    #[test]
    fn timestamps_are_unwrapped_past_33_bits() {
        let desc = StreamDesc {
            tracks: vec![Track {
                id: 0,
                params: CodecParams::Mp3,
                clock_rate: 90_000,
            }],
        };
        let mut mux = Muxer::new(&desc);
        let mut out = BytesMut::new();
        let start = (1i64 << 33) - 5 * 3000;
        for i in 0..10 {
            let t = start + i * 3000;
            mux.write(
                &Frame {
                    track: 0,
                    pts: t,
                    dts: t,
                    keyframe: true,
                    data: Bytes::from_static(&[0xff, 0xfb, 0x90, 0x00, 1, 2, 3]),
                    received: Instant::now(),
                    params: None,
                },
                &mut out,
            );
        }
        let mut d = Demuxer::default();
        d.feed(&out);
        d.flush();
        let mut pts = Vec::new();
        while let Some(ev) = d.poll_event() {
            if let DemuxEvent::Pes(p) = ev {
                pts.push(p.pts.unwrap());
            }
        }
        let expected: Vec<i64> = (0..10).map(|i| start + i * 3000).collect();
        assert_eq!(pts, expected);
    }

    #[test]
    fn a_pes_larger_than_the_limit_is_dropped_and_counted() {
        let mut d = Demuxer::default();
        // PAT, PMT with one H.264 stream on PID 0x100, then endless PES payload.
        let desc = StreamDesc {
            tracks: vec![Track {
                id: 0,
                params: CodecParams::H264 {
                    sps: Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1e, 0xd9]),
                    pps: Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]),
                },
                clock_rate: 90_000,
            }],
        };
        let mut mux = Muxer::new(&desc);
        let mut out = BytesMut::new();
        mux.write(
            &Frame {
                track: 0,
                pts: 0,
                dts: 0,
                keyframe: true,
                data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
                received: Instant::now(),
                params: None,
            },
            &mut out,
        );
        d.feed(&out);
        let mut cont = [0u8; 188];
        cont[0] = 0x47;
        cont[1] = 0x01;
        cont[2] = 0x00;
        for i in 0..(MAX_PES / 184 + 10) {
            cont[3] = 0x10 | ((i as u8).wrapping_add(1) & 0x0f);
            d.feed(&cont);
        }
        assert_eq!(d.stats().dropped_pes, 1);
    }
}
