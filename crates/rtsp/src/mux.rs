//! Packetize once per stream: every RTSP reader of a path sends the same RTP packets (same
//! sequence numbers, timestamps and SSRC per track), made by one task.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tidegate_core::{rescale, Stream};
use tidegate_rtp::pack::Packetizer;

use crate::sdp::{self, Outgoing};

pub struct RtpMux {
    pub sdp: String,
    pub tracks: Vec<Outgoing>,
    /// Each frame's packets as `[track index u8][length u16][packet]...`.
    pub packets: Option<Arc<Stream>>,
}

/// RTP packets carried over TCP are not bound by a path MTU; UDP ones are.
pub const MTU: usize = 1400;

impl RtpMux {
    pub fn start(source: Arc<Stream>) -> RtpMux {
        let desc = source.desc();
        let (sdp, tracks) = sdp::build(&desc);
        if tracks.is_empty() {
            return RtpMux {
                sdp,
                tracks,
                packets: None,
            };
        }
        let mut packers: Vec<(Packetizer, u32, u32)> = tracks
            .iter()
            .map(|t| {
                let r = tidegate_core::text::random_u64();
                let mut p = Packetizer::new(t.kind, t.pt, r as u32, (r >> 32) as u16, MTU);
                if let Some(tr) = desc.track(t.track) {
                    p.set_params(&tr.params);
                }
                let clock_in = desc.track(t.track).map_or(t.clock, |tr| tr.clock_rate);
                (p, clock_in, (r >> 48) as u32)
            })
            .collect();
        let outs = tracks.clone();
        let packets = source.derive(move |frame| {
            let idx = outs.iter().position(|t| t.track == frame.track)?;
            let (p, clock_in, offset) = &mut packers[idx];
            if let Some(params) = &frame.params {
                p.set_params(params);
            }
            let ts = (rescale(frame.pts, *clock_in, outs[idx].clock) as u32).wrapping_add(*offset);
            let mut pkts = Vec::new();
            p.packetize(&frame.data, ts, frame.keyframe, &mut pkts);
            let mut b = BytesMut::with_capacity(pkts.iter().map(|x| x.len() + 3).sum());
            for pk in pkts {
                b.put_u8(idx as u8);
                b.put_u16(pk.len() as u16);
                b.put_slice(&pk);
            }
            (!b.is_empty()).then(|| b.freeze())
        });
        RtpMux {
            sdp,
            tracks,
            packets: Some(packets),
        }
    }
}

/// Splits a derived frame back into `(track index, packet)`.
pub fn split(mut data: Bytes) -> Vec<(usize, Bytes)> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let idx = usize::from(data[0]);
        let len = usize::from(u16::from_be_bytes([data[1], data[2]]));
        if data.len() < 3 + len {
            break;
        }
        let pkt = data.slice(3..3 + len);
        out.push((idx, pkt));
        data = data.slice(3 + len..);
    }
    out
}
