//! tidegate-mpegts against ffmpeg: TS files made by ffmpeg demux to the frames ffprobe sees,
//! and what our muxer writes, ffprobe reads back with the same frames.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use tidegate_core::{Codec, Frame, StreamDesc};
use tidegate_mpegts::demux::Demuxer;
use tidegate_mpegts::frames::{Output, TsToFrames};
use tidegate_mpegts::mux::Muxer;
use tidegate_tests::{ffprobe, peer, run_bounded, scratch};

fn make(dir: &std::path::Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    let out = run_bounded(
        Command::new(peer("ffmpeg"))
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=1000:sample_rate=48000",
                "-t",
                "4",
            ])
            .args(args)
            .args(["-f", "mpegts"])
            .arg(&path),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Demuxes a whole file in uneven pieces; returns the tracks and frames.
fn demux(bytes: &[u8]) -> (StreamDesc, Vec<Frame>, Demuxer) {
    let mut d = Demuxer::default();
    let mut conv = TsToFrames::default();
    let mut desc = None;
    let mut frames = Vec::new();
    let mut handle = |d: &mut Demuxer, desc: &mut Option<StreamDesc>, frames: &mut Vec<Frame>| {
        while let Some(ev) = d.poll_event() {
            for o in conv.on_event(ev) {
                match o {
                    Output::Tracks(t) => *desc = Some(t),
                    Output::Frame(f) => frames.push(f),
                }
            }
        }
    };
    for piece in bytes.chunks(1316 + 17) {
        d.feed(piece);
        handle(&mut d, &mut desc, &mut frames);
    }
    d.flush();
    handle(&mut d, &mut desc, &mut frames);
    (desc.expect("tracks"), frames, d)
}

fn count(frames: &[Frame], desc: &StreamDesc, codec: Codec) -> usize {
    let id = desc.tracks.iter().find(|t| t.codec() == codec).unwrap().id;
    frames.iter().filter(|f| f.track == id).count()
}

#[test]
fn ffmpeg_ts_demuxes_to_what_ffprobe_sees_and_remuxes() {
    let dir = scratch("mpegts");
    /// File name, ffmpeg encoder arguments, our codecs, ffprobe's codec names.
    type Case<'a> = (&'a str, &'a [&'a str], Codec, Codec, &'a str, &'a str);
    let cases: [Case; 3] = [
        (
            "h264-aac.ts",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "30",
                "-c:a",
                "aac",
            ],
            Codec::H264,
            Codec::Aac,
            "h264",
            "aac",
        ),
        (
            "h265-aac.ts",
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "keyint=30:log-level=none",
                "-c:a",
                "aac",
            ],
            Codec::H265,
            Codec::Aac,
            "hevc",
            "aac",
        ),
        (
            "h264-opus.ts",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "30",
                "-c:a",
                "libopus",
            ],
            Codec::H264,
            Codec::Opus,
            "h264",
            "opus",
        ),
    ];
    for (name, args, vcodec, acodec, vname, aname) in cases {
        let path = make(&dir, name, args);
        let bytes = std::fs::read(&path).unwrap();
        let (desc, frames, d) = demux(&bytes);
        assert_eq!(d.stats().continuity_errors, 0, "{name}");
        let probe = ffprobe(path.to_str().unwrap(), &[], Duration::from_secs(30));
        let v = count(&frames, &desc, vcodec);
        let a = count(&frames, &desc, acodec);
        assert_eq!(v, probe.packets_of("video").len(), "{name}: video frames");
        let pa = probe.packets_of("audio").len();
        assert!(
            a.abs_diff(pa) <= 2,
            "{name}: {a} audio frames, ffprobe {pa}"
        );
        let vt = desc.tracks.iter().find(|t| t.codec() == vcodec).unwrap();
        let dims = match &vt.params {
            tidegate_core::CodecParams::H264 { sps, .. } => {
                let i = tidegate_codec::h264::parse_sps(sps).unwrap();
                (i.width, i.height)
            }
            tidegate_core::CodecParams::H265 { sps, .. } => {
                let i = tidegate_codec::h265::parse_sps(sps).unwrap();
                (i.width, i.height)
            }
            _ => unreachable!(),
        };
        assert_eq!(dims, (640, 360), "{name}");
        let keys = frames
            .iter()
            .filter(|f| f.track == vt.id && f.keyframe)
            .count();
        assert!(keys >= 4, "{name}: {keys} keyframes in 4 s at GOP 30");

        // Mux the frames again; ffprobe must see the same media.
        let mut mux = Muxer::new(&desc);
        let mut out = BytesMut::new();
        for f in &frames {
            mux.write(f, &mut out);
        }
        assert_eq!(out.len() % 188, 0);
        let again = dir.join(format!("remux-{name}"));
        std::fs::write(&again, &out).unwrap();
        let p2 = ffprobe(again.to_str().unwrap(), &[], Duration::from_secs(30));
        assert_eq!(p2.codec("video").as_deref(), Some(vname), "{name}");
        assert_eq!(p2.codec("audio").as_deref(), Some(aname), "{name}");
        assert_eq!(p2.dimensions(), Some((640, 360)));
        assert_eq!(
            p2.packets_of("video").len(),
            v,
            "{name}: remuxed video frames"
        );
        assert!(
            p2.packets_of("audio").len().abs_diff(a) <= 2,
            "{name}: remuxed audio frames"
        );
        assert!(
            p2.dts_monotonic("video") && p2.dts_monotonic("audio"),
            "{name}"
        );
        // And our own demuxer reads our muxer back losslessly.
        let (desc2, frames2, _) = demux(&out);
        assert_eq!(desc2.tracks.len(), desc.tracks.len());
        assert_eq!(frames2.len(), frames.len(), "{name}");
        // Per track, in order (the interleaving of tracks may differ).
        for t in &desc.tracks {
            let a: Vec<&Frame> = frames.iter().filter(|f| f.track == t.id).collect();
            let b: Vec<&Frame> = frames2.iter().filter(|f| f.track == t.id).collect();
            assert_eq!(a.len(), b.len(), "{name}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(
                    (x.pts, x.dts, x.keyframe),
                    (y.pts, y.dts, y.keyframe),
                    "{name}"
                );
                assert!(
                    x.data == y.data,
                    "{name}: payload of the frame at {} differs",
                    x.pts
                );
            }
        }
    }
}

#[test]
fn loss_and_garbage_are_counted_not_fatal() {
    let dir = scratch("mpegts-loss");
    let path = make(
        &dir,
        "a.ts",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-c:a",
            "aac",
        ],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    // Drop every 50th packet and splice in garbage.
    let mut damaged = Vec::new();
    for (i, p) in bytes.chunks(188).enumerate() {
        if i % 50 == 25 {
            damaged.extend_from_slice(b"garbage!");
            continue;
        }
        damaged.extend_from_slice(p);
    }
    let (_, frames, d) = demux(&damaged);
    assert!(d.stats().continuity_errors > 0);
    assert!(d.stats().resyncs > 0);
    assert!(frames.len() > 100, "most frames survive: {}", frames.len());
    // Pure noise: no panic, nothing produced.
    bytes
        .iter_mut()
        .for_each(|b| *b = b.wrapping_mul(31).wrapping_add(7));
    let mut d = Demuxer::default();
    d.feed(&bytes);
    d.flush();
}
