//! tidegate-codec against what real encoders (ffmpeg's libx264 and libx265) produce: sizes
//! that need cropping, every common H.264 profile, H.265 Main, AAC at several rates.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tidegate_codec::{aac, h264, h265, nal};
use tidegate_tests::{ffprobe, peer, run_bounded, scratch};

fn encode(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let out = run_bounded(
        Command::new(peer("ffmpeg"))
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(args)
            .arg(&path),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).unwrap()
}

#[test]
fn h264_sps_matches_ffprobe_for_every_profile_and_size() {
    let dir = scratch("h264");
    for (size, profile) in [
        ("640x360", "baseline"),
        ("1280x720", "main"),
        ("1920x1080", "high"),
        ("854x480", "high"),
        ("322x242", "main"),
    ] {
        let name = format!("{size}-{profile}.h264");
        let data = encode(
            &dir,
            &name,
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate=30"),
                "-frames:v",
                "5",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-profile:v",
                profile,
                "-pix_fmt",
                "yuv420p",
                "-g",
                "3",
                "-f",
                "h264",
            ],
        );
        let nals = nal::split_annexb(&data);
        let (sps, _) = h264::find_params(nals.iter().copied()).expect("SPS and PPS");
        let info = h264::parse_sps(sps).unwrap();
        let probe = ffprobe(
            dir.join(&name).to_str().unwrap(),
            &[],
            Duration::from_secs(30),
        );
        assert_eq!(
            Some((u64::from(info.width), u64::from(info.height))),
            probe.dimensions(),
            "{name}"
        );
        let keyframes = probe.packets.iter().filter(|p| p.keyframe).count();
        // Group NAL units into access units at each slice with first_mb == 0 is codec work the
        // RTMP/TS demuxers do; here count IDR slices, one per keyframe at these sizes.
        let idr = nals
            .iter()
            .filter(|n| h264::nal_type(n) == h264::NAL_IDR)
            .count();
        assert!(
            idr >= keyframes,
            "{name}: {idr} IDR slices, ffprobe saw {keyframes} keyframes"
        );
        assert_eq!(probe.packets.len(), 5, "{name}");
    }
}

#[test]
fn h265_sps_matches_ffprobe() {
    let dir = scratch("h265");
    for size in ["640x360", "1920x1080", "426x240"] {
        let name = format!("{size}.hevc");
        let data = encode(
            &dir,
            &name,
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate=30"),
                "-frames:v",
                "4",
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "keyint=2:log-level=none",
                "-f",
                "hevc",
            ],
        );
        let nals = nal::split_annexb(&data);
        let (vps, sps, pps) = h265::find_params(nals.iter().copied()).expect("VPS, SPS, PPS");
        let info = h265::parse_sps(sps).unwrap();
        let probe = ffprobe(
            dir.join(&name).to_str().unwrap(),
            &[],
            Duration::from_secs(30),
        );
        assert_eq!(
            Some((u64::from(info.width), u64::from(info.height))),
            probe.dimensions(),
            "{name}"
        );
        assert!(h265::HevcConfig::build(vps, sps, pps).is_ok());
        assert!(h265::is_keyframe(nals.iter().copied()));
    }
}

#[test]
fn aac_config_matches_ffprobe() {
    let dir = scratch("aac");
    for (rate, channels) in [(48000, 2), (44100, 2), (32000, 1), (22050, 1), (96000, 2)] {
        let name = format!("{rate}-{channels}.adts");
        let data = encode(
            &dir,
            &name,
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("sine=sample_rate={rate}"),
                "-ac",
                &channels.to_string(),
                "-c:a",
                "aac",
                "-frames:a",
                "5",
                "-f",
                "adts",
            ],
        );
        let frames = aac::split_adts(&data).unwrap();
        let probe = ffprobe(
            dir.join(&name).to_str().unwrap(),
            &[],
            Duration::from_secs(30),
        );
        let s = &probe.streams[0];
        assert_eq!(
            frames[0].config.sample_rate.to_string(),
            s["sample_rate"].as_str().unwrap()
        );
        assert_eq!(
            u64::from(frames[0].config.channels),
            s["channels"].as_u64().unwrap()
        );
        assert_eq!(frames.len(), probe.packets.len(), "{name}");
    }
}
