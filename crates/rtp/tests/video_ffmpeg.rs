//! Video over RTP against ffmpeg's packetizer: ffmpeg sends MPEG-2 video, MPEG-4 Visual and
//! M-JPEG as RTP (RFC 2250 / RFC 6416 / RFC 2435) to a socket here; our depacketizer rebuilds the frames,
//! which ffmpeg decodes without an error; our packetizer then cuts them again and our
//! depacketizer gives back the same bytes.

#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use tidegate_rtp::pack::{PackKind, Packetizer};
use tidegate_rtp::{Depacketizer, RtpPacket};

fn frames_from_ffmpeg(codec: &[&str], mut d: Depacketizer) -> Vec<tidegate_rtp::Unit> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = sock.local_addr().unwrap().port();
    let mut ff = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=640x360:rate=25", "-t", "2"])
        .args(["-c:v"])
        .args(codec)
        .args(["-q:v", "5", "-g", "25", "-bf", "0", "-f", "rtp"])
        .arg(format!("rtp://127.0.0.1:{port}?pkt_size=1200"))
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg is needed (cargo xtask peers installs it)");
    let mut buf = vec![0u8; 65536];
    let mut units = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        if let Ok(p) = RtpPacket::parse(&buf[..n]) {
            d.push(&p, &mut units);
        }
        if units.len() >= 45 {
            break;
        }
    }
    let _ = ff.kill();
    let _ = ff.wait();
    assert_eq!(d.packets_lost, 0);
    units
}

fn check(
    codec_args: &[&str],
    ext: &str,
    d: Depacketizer,
    fresh: fn() -> Depacketizer,
    kind: PackKind,
) {
    let codec = codec_args[0];
    let units = frames_from_ffmpeg(codec_args, d);
    assert!(units.len() >= 45, "{codec}: {} frames", units.len());
    assert!(
        units.iter().filter(|u| u.keyframe).count() >= 1,
        "{codec}: no keyframe"
    );
    // ffmpeg decodes what we rebuilt, without a single error.
    let es: Vec<u8> = units.iter().flat_map(|u| u.data.iter().copied()).collect();
    let file =
        std::env::temp_dir().join(format!("tidegate-rtp-{codec}-{}.{ext}", std::process::id()));
    std::fs::write(&file, &es).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-xerror", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{codec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Our packetizer and depacketizer give the same frames back.
    let mut p = Packetizer::new(kind, 96, 1, 0, 1200);
    let mut d = fresh();
    let mut back = Vec::new();
    for u in &units {
        let mut pkts = Vec::new();
        p.packetize(&u.data, u.timestamp, u.keyframe, &mut pkts);
        for b in &pkts {
            assert!(b.len() <= 1200);
            d.push(&RtpPacket::parse(b).unwrap(), &mut back);
        }
    }
    assert_eq!(back.len(), units.len());
    for (a, b) in units.iter().zip(&back) {
        assert_eq!(a.data, b.data, "{codec}");
        assert_eq!(a.keyframe, b.keyframe, "{codec}");
    }
}

#[test]
fn mpeg2_video_from_ffmpeg_depacketizes_and_round_trips() {
    check(
        &["mpeg2video"],
        "m2v",
        Depacketizer::mpeg12_video(),
        Depacketizer::mpeg12_video,
        PackKind::Mpeg12Video,
    );
}

#[test]
fn mpeg4_video_from_ffmpeg_depacketizes_and_round_trips() {
    check(
        &["mpeg4"],
        "m4v",
        Depacketizer::mpeg4_video(),
        Depacketizer::mpeg4_video,
        PackKind::Mpeg4Video,
    );
}

#[test]
fn mjpeg_from_ffmpeg_depacketizes_and_round_trips() {
    check(
        &["mjpeg", "-huffman", "default", "-pix_fmt", "yuvj420p"],
        "mjpeg",
        Depacketizer::jpeg(),
        Depacketizer::jpeg,
        PackKind::Jpeg,
    );
}

/// A JPEG with its own Huffman tables cannot travel over RTP: refused with the reason.
#[test]
fn a_jpeg_with_optimised_huffman_tables_is_refused() {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=320x240:rate=1", "-frames:v", "1"])
        .args([
            "-c:v", "mjpeg", "-huffman", "optimal", "-pix_fmt", "yuvj420p",
        ])
        .args(["-f", "mjpeg", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let why = tidegate_rtp::jpeg::why_not(&out.stdout).expect("refused");
    assert!(why.contains("Huffman"), "{why}");
    assert!(tidegate_rtp::jpeg::payloads(&out.stdout, 1000).is_empty());
}
