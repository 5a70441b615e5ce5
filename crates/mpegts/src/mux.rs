//! Frames of the packet model to MPEG-TS: PAT/PMT before the first frame, at every video
//! keyframe and at least every 100 ms; PCR on the video PID; 188-byte packets.

use bytes::{BufMut, BytesMut};
use tidegate_codec::aac::{to_adts, AudioSpecificConfig};
use tidegate_codec::{h264, h265, nal};
use tidegate_core::{rescale, CodecParams, Frame, StreamDesc, TrackId};

use crate::psi::{build_pat, build_pmt};
use crate::{stream_type, PACKET_SIZE, SYNC_BYTE};

const PMT_PID: u16 = 0x1000;
const FIRST_PID: u16 = 0x100;
const PROGRAM: u16 = 1;
/// PAT/PMT at least this often (90 kHz): 100 ms, for receivers that join mid-stream.
const PSI_INTERVAL: i64 = 9000;

struct MuxTrack {
    id: TrackId,
    pid: u16,
    stream_type: u8,
    stream_id: u8,
    params: CodecParams,
    clock: u32,
    cc: u8,
    descriptors: Vec<u8>,
}

pub struct Muxer {
    tracks: Vec<MuxTrack>,
    pcr_pid: u16,
    pat_cc: u8,
    pmt_cc: u8,
    last_psi: Option<i64>,
}

/// Whether the muxer carries the codec, and why not.
pub fn why_not(params: &CodecParams) -> Option<String> {
    match params {
        CodecParams::H264 { .. }
        | CodecParams::H265 { .. }
        | CodecParams::Aac { .. }
        | CodecParams::Mp3
        | CodecParams::Ac3 { .. }
        | CodecParams::Opus { .. } => None,
        other => Some(format!(
            "MPEG-TS here carries H.264, H.265, AAC, Opus, MP3 and AC-3, not {}",
            other.codec().name()
        )),
    }
}

impl Muxer {
    /// A muxer for the tracks MPEG-TS can carry (H.264, H.265, AAC, Opus, MP3, AC-3); others
    /// are left out (see [`Muxer::is_empty`]).
    pub fn new(desc: &StreamDesc) -> Muxer {
        let mut tracks = Vec::new();
        for t in &desc.tracks {
            let (st, sid, descriptors) = match &t.params {
                CodecParams::H264 { .. } => (stream_type::H264, 0xe0, vec![]),
                CodecParams::H265 { .. } => (stream_type::H265, 0xe0, vec![]),
                CodecParams::Aac { .. } => (stream_type::AAC_ADTS, 0xc0, vec![]),
                CodecParams::Mp3 => (stream_type::MPEG1_AUDIO, 0xc0, vec![]),
                CodecParams::Ac3 { .. } => (stream_type::AC3, 0xbd, vec![]),
                CodecParams::Opus { channels } => (
                    stream_type::PRIVATE_DATA,
                    0xbd,
                    // registration 'Opus' + DVB extension descriptor: channel configuration.
                    vec![0x05, 4, b'O', b'p', b'u', b's', 0x7f, 2, 0x80, *channels],
                ),
                _ => continue,
            };
            tracks.push(MuxTrack {
                id: t.id,
                pid: FIRST_PID + tracks.len() as u16,
                stream_type: st,
                stream_id: sid,
                params: t.params.clone(),
                clock: t.clock_rate,
                cc: 0,
                descriptors,
            });
        }
        let pcr_pid = tracks
            .iter()
            .find(|t| t.stream_id == 0xe0)
            .or(tracks.first())
            .map_or(FIRST_PID, |t| t.pid);
        Muxer {
            tracks,
            pcr_pid,
            pat_cc: 0,
            pmt_cc: 0,
            last_psi: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    fn psi(&mut self, out: &mut BytesMut) {
        let pat = build_pat(PROGRAM, PMT_PID);
        let streams: Vec<(u16, u8, Vec<u8>)> = self
            .tracks
            .iter()
            .map(|t| (t.pid, t.stream_type, t.descriptors.clone()))
            .collect();
        let pmt = build_pmt(PROGRAM, self.pcr_pid, &streams);
        for (pid, section, cc) in [
            (0u16, pat, &mut self.pat_cc),
            (PMT_PID, pmt, &mut self.pmt_cc),
        ] {
            out.put_u8(SYNC_BYTE);
            out.put_u16(0x4000 | pid);
            out.put_u8(0x10 | *cc);
            *cc = (*cc + 1) & 0x0f;
            out.put_u8(0); // pointer field
            let room = PACKET_SIZE - 5;
            out.put_slice(&section[..section.len().min(room)]);
            out.put_bytes(0xff, room.saturating_sub(section.len()));
        }
    }

    /// Appends the TS packets of one frame to `out`.
    pub fn write(&mut self, frame: &Frame, out: &mut BytesMut) {
        let Some(idx) = self.tracks.iter().position(|t| t.id == frame.track) else {
            return;
        };
        if let Some(p) = &frame.params {
            self.tracks[idx].params = (**p).clone();
        }
        let clock = self.tracks[idx].clock;
        let pts = rescale(frame.pts, clock, 90_000);
        let dts = rescale(frame.dts, clock, 90_000);
        let is_video = self.tracks[idx].stream_id == 0xe0;
        let psi_due = match self.last_psi {
            None => true,
            Some(last) => {
                (is_video && frame.keyframe)
                    || dts.saturating_sub(last) >= PSI_INTERVAL
                    || dts < last
            }
        };
        if psi_due {
            self.psi(out);
            self.last_psi = Some(dts);
        }
        let t = &self.tracks[idx];
        let Some(payload) = es_payload(&t.params, frame) else {
            return;
        };
        let pes = pes_packet(t.stream_id, pts, dts, &payload, is_video);
        let with_pcr = t.pid == self.pcr_pid;
        let t = &mut self.tracks[idx];
        packetize(
            out,
            t.pid,
            &mut t.cc,
            &pes,
            with_pcr.then_some(dts),
            frame.keyframe,
        );
    }
}

/// The elementary-stream bytes of a frame: Annex-B with an AUD (and parameter sets on
/// keyframes) for video, ADTS for AAC, the TS Opus framing for Opus.
fn es_payload(params: &CodecParams, frame: &Frame) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(frame.data.len() + 64);
    let start = [0u8, 0, 0, 1];
    match params {
        CodecParams::H264 { sps, pps } => {
            out.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xf0]);
            if frame.keyframe {
                for p in [sps, pps] {
                    out.extend_from_slice(&start);
                    out.extend_from_slice(p);
                }
            }
            for n in nal::split_length_prefixed(&frame.data, 4).ok()? {
                if h264::nal_type(n) != h264::NAL_AUD {
                    out.extend_from_slice(&start);
                    out.extend_from_slice(n);
                }
            }
        }
        CodecParams::H265 { vps, sps, pps } => {
            out.extend_from_slice(&[0, 0, 0, 1, 0x46, 0x01, 0x50]);
            if frame.keyframe {
                for p in [vps, sps, pps] {
                    out.extend_from_slice(&start);
                    out.extend_from_slice(p);
                }
            }
            for n in nal::split_length_prefixed(&frame.data, 4).ok()? {
                if h265::nal_type(n) != h265::NAL_AUD {
                    out.extend_from_slice(&start);
                    out.extend_from_slice(n);
                }
            }
        }
        CodecParams::Aac { config } => {
            let asc = AudioSpecificConfig::parse(config).ok()?;
            out.extend_from_slice(&to_adts(&asc, &frame.data).ok()?);
        }
        CodecParams::Opus { .. } => {
            // ETSI TS 102 366 Opus control header: prefix 0x7fe0, then the size in 0xff runs.
            out.extend_from_slice(&[0x7f, 0xe0]);
            let mut n = frame.data.len();
            while n >= 255 {
                out.push(0xff);
                n -= 255;
            }
            out.push(n as u8);
            out.extend_from_slice(&frame.data);
        }
        CodecParams::Mp3 | CodecParams::Ac3 { .. } => out.extend_from_slice(&frame.data),
        _ => return None,
    }
    Some(out)
}

fn put_ts(out: &mut Vec<u8>, marker: u8, ts: i64) {
    let ts = ts.rem_euclid(1 << 33) as u64;
    out.push((marker << 4) | (((ts >> 30) as u8 & 0x07) << 1) | 1);
    out.push((ts >> 22) as u8);
    out.push((((ts >> 15) as u8) << 1) | 1);
    out.push((ts >> 7) as u8);
    out.push(((ts as u8) << 1) | 1);
}

fn pes_packet(stream_id: u8, pts: i64, dts: i64, payload: &[u8], video: bool) -> Vec<u8> {
    let with_dts = video && dts != pts;
    let header_data = if with_dts { 10 } else { 5 };
    let mut pes = Vec::with_capacity(payload.len() + 19);
    pes.extend_from_slice(&[0, 0, 1, stream_id]);
    let len = 3 + header_data + payload.len();
    // Video may exceed 65535 bytes: length 0 means "unbounded", as the standard allows.
    let declared = if video || len > 0xffff { 0 } else { len as u16 };
    pes.extend_from_slice(&declared.to_be_bytes());
    pes.push(0x80); // marker bits, no scrambling
    pes.push(if with_dts { 0xc0 } else { 0x80 });
    pes.push(header_data as u8);
    if with_dts {
        put_ts(&mut pes, 3, pts);
        put_ts(&mut pes, 1, dts);
    } else {
        put_ts(&mut pes, 2, pts);
    }
    pes.extend_from_slice(payload);
    pes
}

/// Splits a PES unit into TS packets; the first carries the PCR and the random-access flag.
fn packetize(out: &mut BytesMut, pid: u16, cc: &mut u8, pes: &[u8], pcr: Option<i64>, key: bool) {
    let mut rest = pes;
    let mut first = true;
    out.reserve((pes.len() / 184 + 2) * PACKET_SIZE);
    while !rest.is_empty() {
        let mut af: Vec<u8> = Vec::new();
        if first && (pcr.is_some() || key) {
            let mut flags = 0u8;
            if key {
                flags |= 0x40;
            }
            af.push(flags);
            if let Some(pcr) = pcr {
                af[0] |= 0x10;
                let base = (pcr.rem_euclid(1 << 33)) as u64;
                af.extend_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    (((base & 1) as u8) << 7) | 0x7e,
                    0,
                ]);
            }
        }
        // Room for payload after the header and an adaptation field (length byte + body).
        let af_total = if af.is_empty() { 0 } else { 1 + af.len() };
        let room = PACKET_SIZE - 4 - af_total;
        let take = rest.len().min(room);
        let stuffing = room - take;
        let need_af = af_total > 0 || stuffing > 0;
        out.put_u8(SYNC_BYTE);
        out.put_u16((if first { 0x4000 } else { 0 }) | pid);
        out.put_u8((if need_af { 0x30 } else { 0x10 }) | *cc);
        *cc = (*cc + 1) & 0x0f;
        if need_af {
            if af.is_empty() {
                // Stuffing only: an adaptation field of `stuffing` bytes in all.
                out.put_u8((stuffing - 1) as u8);
                if stuffing > 1 {
                    out.put_u8(0);
                    out.put_bytes(0xff, stuffing - 2);
                }
            } else {
                out.put_u8((af.len() + stuffing) as u8);
                out.put_slice(&af);
                out.put_bytes(0xff, stuffing);
            }
        }
        out.put_slice(&rest[..take]);
        rest = &rest[take..];
        first = false;
    }
}
