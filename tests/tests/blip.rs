//! Readers survive a publisher's blip (`publisherReconnectGrace`): ffmpeg publishes over RTMP
//! and is killed (-9); a new ffmpeg publishes on the same path within the grace. An ffmpeg
//! RTMP reader, an ffmpeg SRT reader and hls.js in Chromium keep playing across it: frames on
//! both sides of the gap, timestamps that go on increasing, no reconnect, no fatal hls.js
//! error. Past the grace (or with it at 0s), readers end as before.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read};
use tidegate_tests::scratch;
use tidegate_tests::server::TestServer;

const READY: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(60);

/// Video frames of `file` before and after its largest timestamp gap, and the gap (s).
fn around_the_gap(file: &Path) -> (usize, usize, f64) {
    let pts = tidegate_tests::video_timeline(file);
    let (at, gap) = pts
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i + 1, w[1] - w[0]))
        .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
    (at, pts.len() - at, gap)
}

#[test]
fn readers_keep_playing_across_a_publisher_blip() {
    let dir = scratch("blip");
    let server = TestServer::start("pathDefaults:\n  publisherReconnectGrace: 5s\n");
    let mut first = ffmpeg_publish(&server.rtmp_url("blip"), 60, "flv", &dir);
    server.wait_ready("blip", READY);

    // hls.js first: Chromium may take long to start on a loaded machine, and the ffmpeg
    // readers' 14 s must cover the blip, not the browser's start.
    let mut hlsjs = tidegate_tests::peers::hlsjs_player(&server.hls_url("blip", ""), 20, &dir);
    server.wait_readers("blip", 1, LIMIT);
    let rtmp_out = dir.join("rtmp.mkv");
    let srt_out = dir.join("srt.ts");
    let mut rtmp = ffmpeg_read(&server.rtmp_url("blip"), 14, &rtmp_out, &dir);
    let mut srt = ffmpeg_read(
        &format!("{}&latency=200000", server.srt_url("read:blip", "")),
        14,
        &srt_out,
        &dir,
    );
    // RTMP, SRT and the HLS muxer read.
    server.wait_readers("blip", 3, READY);
    // Everybody plays for a while (150 frames through the server).
    server.wait_frames("blip", 150, LIMIT);

    // The blip: the publisher dies; a new one comes as soon as the path says it is gone.
    first.kill9();
    server.wait_not_ready("blip", LIMIT);
    let gone = Instant::now();
    assert_eq!(
        server.paths().get("blip").unwrap().readers.len(),
        3,
        "the readers wait for a new publisher"
    );
    let _second = ffmpeg_publish(&server.rtmp_url("blip"), 60, "flv", &dir);
    server.wait_ready("blip", READY);
    let blip = gone.elapsed();
    assert!(
        blip < Duration::from_secs(5),
        "the new publisher took {blip:?}"
    );

    for (name, reader, out) in [("RTMP", &mut rtmp, &rtmp_out), ("SRT", &mut srt, &srt_out)] {
        assert!(reader.wait(LIMIT).success(), "{name}: {}", reader.stderr());
        let (before, after, gap) = around_the_gap(out);
        eprintln!("{name} reader: {before} frames, a {gap:.2} s gap, {after} frames");
        assert!(
            before >= 90 && after >= 90,
            "{name}: {before} / {after} frames"
        );
        assert!((0.2..6.0).contains(&gap), "{name}: a {gap} s gap");
    }

    let r = tidegate_tests::peers::hlsjs_report(&mut hlsjs, LIMIT);
    let trace = r["trace"].as_array().unwrap();
    let frames_at = |t: f64| tidegate_tests::peers::hlsjs_frames_at(&r, t);
    let end = trace.last().unwrap()[0].as_f64().unwrap();
    let last4 = frames_at(end) - frames_at(end - 4.0);
    assert!(
        last4 >= 80,
        "hls.js decoded {last4} frames in the last 4 s: {r}"
    );
    assert!(frames_at(end - 4.0) >= 60, "hls.js played before: {r}");
    // The same muxer, one playlist: no second muxer was created.
    assert_eq!(
        tidegate_tests::logs::lines_with(&["blip", "[HLS] muxer created"]).len(),
        1
    );
}

#[test]
fn without_a_new_publisher_the_readers_end_after_the_grace() {
    let dir = scratch("blip-end");
    let server = TestServer::start("pathDefaults:\n  publisherReconnectGrace: 2s\n");
    let mut publisher = ffmpeg_publish(&server.rtmp_url("gone"), 60, "flv", &dir);
    server.wait_ready("gone", READY);
    let mut reader = ffmpeg_read(&server.rtmp_url("gone"), 60, &dir.join("gone.mkv"), &dir);
    server.wait_readers("gone", 1, READY);
    server.wait_frames("gone", 60, LIMIT);
    publisher.kill9();
    server.wait_not_ready("gone", LIMIT);
    let left = Instant::now();
    reader.wait(LIMIT);
    let waited = left.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(20),
        "the reader ended {waited:?} after the publisher"
    );
    assert!(!tidegate_tests::logs::lines_with(&["gone", "no publisher came back"]).is_empty());
}
