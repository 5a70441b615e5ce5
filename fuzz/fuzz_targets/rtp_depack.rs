#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate_rtp::{Depacketizer, RtpPacket};

// A sequence of RTP packets (each prefixed by a one-byte length) through every depacketizer,
// and each packet as a frame through the JPEG, AC-3, AV1 and MPEG video packetizers.
fuzz_target!(|data: &[u8]| {
    let mut ds = [
        Depacketizer::h264(),
        Depacketizer::h265(),
        Depacketizer::aac(13, 3),
        Depacketizer::aac(6, 2),
        Depacketizer::frame(),
        Depacketizer::vp8(),
        Depacketizer::vp9(),
        Depacketizer::av1(),
        Depacketizer::mpa(),
        Depacketizer::jpeg(),
        Depacketizer::ac3(),
        Depacketizer::mpeg4_video(),
        Depacketizer::mpeg12_video(),
    ];
    let mut rest = data;
    let mut out = Vec::new();
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        rest = next;
        // The packetizers' parsers take whatever an ingest made of a frame.
        let _ = tidegate_rtp::jpeg::payloads(pkt, 100);
        let _ = tidegate_rtp::ac3::payloads(pkt, 100);
        let _ = tidegate_rtp::av1::payloads(pkt, 40);
        let _ = tidegate_rtp::mpv::payloads(tidegate_rtp::mpv::Mpv::Mpeg12, pkt, 100);
        if let Ok(p) = RtpPacket::parse(pkt) {
            for d in ds.iter_mut() {
                d.push(&p, &mut out);
            }
        }
        out.clear();
    }
});
