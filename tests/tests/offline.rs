//! `alwaysAvailable`: a path serves its offline stream while nobody publishes, and readers
//! stay connected across publisher off → on → off. ffmpeg reads over RTMP (decoding every
//! frame), hls.js plays the LL-HLS stream in Chromium; an ffmpeg publisher comes and is
//! killed (-9). The offline stream is Tidegate's own H.264 (1280×720, "STREAM IS OFFLINE")
//! and silent AAC, or an MP4 file on a loop (`alwaysAvailableFile`).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{peer, scratch};

const READY: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(60);

/// One decoded video frame as ffmpeg's `showinfo` filter prints it.
#[derive(Debug)]
struct Shown {
    pts: f64,
    width: u32,
    key: bool,
}

fn showinfo(log: &str) -> Vec<Shown> {
    log.lines()
        .filter(|l| l.contains("Parsed_showinfo") && l.contains(" pts_time:"))
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find(|w| w.starts_with(k))
                    .map(|w| w[k.len()..].to_string())
                    .filter(|v| !v.is_empty())
                    .or_else(|| {
                        // `pts_time: 12.3` with a space.
                        let mut it = l.split_whitespace().skip_while(|w| *w != k);
                        it.next();
                        it.next().map(str::to_string)
                    })
            };
            let pts = field("pts_time:")?.parse().ok()?;
            let size = field("s:")?;
            let width = size.split('x').next()?.parse().ok()?;
            let key = field("iskey:")? == "1";
            Some(Shown { pts, width, key })
        })
        .collect()
}

/// ffmpeg decoding the video of `url` for `seconds`, every frame logged by `showinfo`, and
/// counting the audio frames it decodes (`ashowinfo`).
fn ffmpeg_decode(url: &str, seconds: u32, dir: &std::path::Path) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "info"])
        .args(["-t", &seconds.to_string(), "-i", url])
        .args(["-map", "0:v", "-vf", "showinfo", "-f", "null", "-"])
        .args(["-map", "0:a?", "-af", "ashowinfo", "-f", "null", "-"]);
    PeerProcess::spawn("ffmpeg-decode", &mut cmd, dir)
}

/// Runs of consecutive frames of the same width: [(width, frames)].
fn runs(frames: &[Shown]) -> Vec<(u32, usize)> {
    let mut out: Vec<(u32, usize)> = Vec::new();
    for f in frames {
        match out.last_mut() {
            Some((w, n)) if *w == f.width => *n += 1,
            _ => out.push((f.width, 1)),
        }
    }
    out
}

#[test]
fn readers_stay_across_publisher_off_on_off() {
    let dir = scratch("offline");
    let server = TestServer::start(
        "paths:\n  studio:\n    alwaysAvailable: yes\n    alwaysAvailableTracks:\n      \
         - codec: H264\n      - codec: MPEG4Audio\n        sampleRate: 48000\n        \
         channelCount: 2\n",
    );
    // The offline stream plays from the start: readers may come before any publisher.
    server.wait_ready("studio", READY);
    let api = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/studio");
    assert_eq!(api["available"], true, "{api}");
    assert_eq!(api["online"], false, "{api}");
    assert_eq!(api["source"], serde_json::Value::Null, "{api}");

    let mut rtmp = ffmpeg_decode(&server.rtmp_url("studio"), 26, &dir);
    let mut hlsjs = tidegate_tests::peers::hlsjs_player(&server.hls_url("studio", ""), 28, &dir);
    server.wait_readers("studio", 2, READY);
    // Offline for a while (the generated stream is 25 fps).
    server.wait_frames("studio", 125, LIMIT);

    // On: a publisher takes over, the readers stay.
    let mut publisher = ffmpeg_publish(&server.rtmp_url("studio"), 60, "flv", &dir);
    server.wait_online("studio", true, READY);
    let api = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/studio");
    assert_eq!(api["online"], true, "{api}");
    assert_eq!(api["source"]["type"], "rtmpConn", "{api}");
    server.wait_frames("studio", 240, LIMIT);
    assert_eq!(server.paths().get("studio").unwrap().readers.len(), 2);

    // Off: the publisher dies, the offline stream comes back in the same stream.
    publisher.kill9();
    server.wait_online("studio", false, LIMIT);
    server.wait_frames("studio", 125, LIMIT);
    assert_eq!(server.paths().get("studio").unwrap().readers.len(), 2);

    assert!(rtmp.wait(LIMIT).success(), "{}", rtmp.stderr());
    let log = rtmp.stderr();
    let frames = showinfo(&log);
    let runs = runs(&frames);
    eprintln!("RTMP reader: {} frames, runs {runs:?}", frames.len());
    // Offline (1280 wide), the publisher (640), offline again: one reader throughout.
    let widths: Vec<u32> = runs.iter().map(|r| r.0).collect();
    assert_eq!(widths, vec![1280, 640, 1280], "{runs:?}");
    assert!(
        runs[0].1 >= 100 && runs[1].1 >= 200 && runs[2].1 >= 100,
        "{runs:?}"
    );
    // Each side starts on a keyframe; timestamps always go forward; the switches are quick.
    let mut at = 0;
    for (_, n) in &runs {
        assert!(
            frames[at].key,
            "the frame after a switch is a keyframe: {:?}",
            frames[at]
        );
        at += n;
    }
    let mut worst: f64 = 0.0;
    for w in frames.windows(2) {
        assert!(w[1].pts > w[0].pts, "timestamps go back: {w:?}");
        worst = worst.max(w[1].pts - w[0].pts);
    }
    eprintln!("RTMP reader: the largest gap between frames is {worst:.3} s");
    assert!(worst < 2.5, "a {worst:.3} s gap at a switch");
    let audio = log
        .lines()
        .filter(|l| l.contains("Parsed_ashowinfo") && l.contains("pts_time:"))
        .count();
    // 48 kHz AAC: ~47 frames a second, on both sides of both switches.
    assert!(audio >= 20 * 40, "{audio} audio frames decoded");

    let r = tidegate_tests::peers::hlsjs_report(&mut hlsjs, LIMIT);
    let trace = r["trace"].as_array().unwrap();
    let mut seen: Vec<u64> = Vec::new();
    for s in trace {
        let w = s[3].as_u64().unwrap_or(0);
        if w > 0 && seen.last() != Some(&w) {
            seen.push(w);
        }
    }
    eprintln!("hls.js: widths {seen:?}, {} frames", r["framesDecoded"]);
    assert_eq!(seen, vec![1280, 640, 1280], "hls.js: {r}");
    let frames_at = |t: f64| tidegate_tests::peers::hlsjs_frames_at(&r, t);
    let end = trace.last().unwrap()[0].as_f64().unwrap();
    assert!(
        frames_at(end) - frames_at(end - 3.0) >= 45,
        "hls.js still plays the offline stream at the end: {r}"
    );
}

#[test]
fn an_mp4_file_plays_on_a_loop_and_a_publisher_of_other_tracks_is_refused() {
    let dir = scratch("offline-file");
    // A 2 s progressive MP4, video only (320x240, 25 fps).
    let file = dir.join("offline.mp4");
    tidegate_tests::peers::testsrc_mp4(&file, 2, "320x240");
    let server = TestServer::start(&format!(
        "paths:\n  lobby:\n    alwaysAvailable: yes\n    alwaysAvailableFile: {}\n",
        file.display()
    ));
    server.wait_ready("lobby", READY);
    let mut reader = ffmpeg_decode(&server.rtmp_url("lobby"), 7, &dir);
    server.wait_readers("lobby", 1, READY);

    // A publisher with audio and video: not the file's tracks, refused; the reader stays.
    let mut publisher = ffmpeg_publish(&server.rtmp_url("lobby"), 20, "flv", &dir);
    let _ = publisher.wait(LIMIT);
    assert!(!tidegate_tests::logs::lines_with(&[
        "lobby",
        "do not match the path's offline stream"
    ])
    .is_empty());

    // ffmpeg's -t 7 counts from the first timestamp it sees: it ends after 7 s of stream.
    let status = reader.wait(LIMIT);
    let log = reader.stderr();
    assert!(status.success(), "{log}");
    let frames = showinfo(&log);
    eprintln!("file loop: {} frames", frames.len());
    // 7 s at 25 fps, the 2 s file looped three times and more.
    assert!(frames.len() >= 150, "{} frames", frames.len());
    assert!(frames.iter().all(|f| f.width == 320));
    for w in frames.windows(2) {
        assert!(w[1].pts > w[0].pts, "timestamps go back at a loop: {w:?}");
        assert!(w[1].pts - w[0].pts < 0.2, "a gap at a loop: {w:?}");
    }
}

/// The luma plane of one decoded picture of `url` (as coded: `yuv420p` is not converted).
fn first_picture(url: &str, name: &str, dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join(format!("{name}.yuv"));
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        url,
    ])
    .args([
        "-map",
        "0:v",
        "-frames:v",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "yuv420p",
    ])
    .arg(&out);
    let mut p = PeerProcess::spawn(name, &mut cmd, dir);
    assert!(p.wait(LIMIT).success(), "{}", p.stderr());
    let mut yuv = std::fs::read(&out).unwrap();
    assert_eq!(yuv.len(), 1280 * 720 * 3 / 2, "one 720p picture");
    // The chroma is neutral.
    assert!(yuv[1280 * 720..].iter().all(|&c| c == 128));
    yuv.truncate(1280 * 720);
    yuv
}

#[test]
fn generated_h265_is_the_same_picture_as_h264() {
    let dir = scratch("offline-h265");
    let server = TestServer::start(
        "paths:\n  slate265:\n    alwaysAvailable: yes\n    alwaysAvailableTracks:\n      \
         - codec: H265\n      - codec: Opus\n  slate264:\n    alwaysAvailable: yes\n    \
         alwaysAvailableTracks:\n      - codec: H264\n",
    );
    server.wait_ready("slate265", READY);
    server.wait_ready("slate264", READY);
    let probe = tidegate_tests::ffprobe(
        &server.rtsp_url("slate265"),
        &["-rtsp_transport", "tcp", "-read_intervals", "%+3"],
        LIMIT,
    );
    assert_eq!(probe.codec("video").as_deref(), Some("hevc"), "{probe:?}");
    assert_eq!(probe.codec("audio").as_deref(), Some("opus"), "{probe:?}");
    assert_eq!(probe.dimensions(), Some((1280, 720)));
    assert!(probe.dts_monotonic("video") && probe.dts_monotonic("audio"));
    assert!(probe.packets_of("audio").len() >= 50, "{probe:?}");

    // Every picture decodes, in real time, over RTSP.
    let mut reader = ffmpeg_decode(&server.rtsp_url("slate265"), 5, &dir);
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    let log = reader.stderr();
    let frames = showinfo(&log);
    eprintln!("H.265 over RTSP: {} pictures", frames.len());
    assert!(frames.len() >= 100, "{} pictures", frames.len());
    assert!(frames.iter().all(|f| f.width == 1280));
    assert!(frames.iter().filter(|f| f.key).count() >= 4);
    assert!(
        !log.contains("Error") && !log.contains("error while decoding"),
        "{log}"
    );

    // The H.265 picture over HLS (fMP4) is the H.264 one over RTSP, sample for sample: black,
    // with the message in white.
    let h265 = first_picture(&server.hls_url("slate265", "index.m3u8"), "h265", &dir);
    let h264 = first_picture(&server.rtsp_url("slate264"), "h264", &dir);
    let white = h265.iter().filter(|&&v| v == 235).count();
    let black = h265.iter().filter(|&&v| v == 16).count();
    eprintln!("H.265 picture: {white} white and {black} black samples");
    assert_eq!(white + black, h265.len(), "only black and white");
    assert!(white > 2000, "{white} white samples: the message");
    assert!(h265 == h264, "the H.265 and H.264 pictures differ");
}

/// Generated VP9 (black: one coded coefficient, everything else predicted) with Opus, read
/// over RTSP and HLS.
#[test]
fn generated_vp9_is_black() {
    let dir = scratch("offline-vp9");
    let server = TestServer::start(
        "paths:\n  slatevp9:\n    alwaysAvailable: yes\n    alwaysAvailableTracks:\n      \
         - codec: VP9\n      - codec: Opus\n",
    );
    server.wait_ready("slatevp9", READY);
    let probe = tidegate_tests::ffprobe(
        &server.rtsp_url("slatevp9"),
        &["-rtsp_transport", "tcp", "-read_intervals", "%+3"],
        LIMIT,
    );
    assert_eq!(probe.codec("video").as_deref(), Some("vp9"), "{probe:?}");
    assert_eq!(probe.codec("audio").as_deref(), Some("opus"), "{probe:?}");
    assert_eq!(probe.dimensions(), Some((1280, 720)));
    assert!(probe.dts_monotonic("video") && probe.dts_monotonic("audio"));

    let mut reader = ffmpeg_decode(&server.rtsp_url("slatevp9"), 5, &dir);
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    let log = reader.stderr();
    let frames = showinfo(&log);
    eprintln!("VP9 over RTSP: {} pictures", frames.len());
    assert!(frames.len() >= 100, "{} pictures", frames.len());
    assert!(frames.iter().all(|f| f.width == 1280));
    assert!(
        !log.contains("Error") && !log.contains("error while decoding"),
        "{log}"
    );

    let luma = first_picture(&server.hls_url("slatevp9", "index.m3u8"), "vp9", &dir);
    assert!(
        luma.iter().all(|&v| v == 16),
        "the VP9 picture is not black"
    );
}

/// Generated AV1 (the picture drawn with a two-colour palette, repeats as inter frames that
/// copy it) with Opus: ffmpeg 9 decodes it over RTSP, and the picture read over HLS (fMP4) is
/// the H.264 one, sample for sample.
#[test]
fn generated_av1_is_the_same_picture_as_h264() {
    let dir = scratch("offline-av1");
    let server = TestServer::start(
        "paths:\n  slateav1:\n    alwaysAvailable: yes\n    alwaysAvailableTracks:\n      \
         - codec: AV1\n      - codec: Opus\n  slate264:\n    alwaysAvailable: yes\n    \
         alwaysAvailableTracks:\n      - codec: H264\n",
    );
    server.wait_ready("slateav1", READY);
    server.wait_ready("slate264", READY);
    // ffmpeg 9 reads AV1 over RTSP (Debian's 5.1 has no AV1 depacketizer).
    let mut cmd = Command::new(peer("ffmpeg9"));
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "info"])
        .args([
            "-rtsp_transport",
            "tcp",
            "-t",
            "5",
            "-i",
            &server.rtsp_url("slateav1"),
        ])
        .args(["-map", "0:v", "-vf", "showinfo", "-f", "null", "-"])
        .args(["-map", "0:a", "-af", "ashowinfo", "-f", "null", "-"]);
    let mut reader = PeerProcess::spawn("ffmpeg9-av1", &mut cmd, &dir);
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    let log = reader.stderr();
    let frames = showinfo(&log);
    eprintln!("AV1 over RTSP: {} pictures", frames.len());
    assert!(log.contains("Video: av1"), "{log}");
    assert!(frames.len() >= 100, "{} pictures", frames.len());
    assert!(frames.iter().all(|f| f.width == 1280));
    assert!(frames.iter().filter(|f| f.key).count() >= 4);
    let audio = log
        .lines()
        .filter(|l| l.contains("Parsed_ashowinfo") && l.contains("pts_time:"))
        .count();
    assert!(audio >= 200, "{audio} Opus frames in 5 s");
    assert!(
        !log.contains("Error") && !log.contains("error while decoding"),
        "{log}"
    );

    let av1 = first_picture(&server.hls_url("slateav1", "index.m3u8"), "av1", &dir);
    let h264 = first_picture(&server.rtsp_url("slate264"), "h264", &dir);
    let white = av1.iter().filter(|&&v| v == 235).count();
    eprintln!("AV1 picture: {white} white samples");
    assert!(white > 2000, "{white} white samples: the message");
    assert!(av1 == h264, "the AV1 and H.264 pictures differ");
}
