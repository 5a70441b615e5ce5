//! DASH and LL-DASH from the HLS muxer's CMAF chunks: ffmpeg publishes over RTMP; the MPD is
//! a live MPD with one representation per track; dash.js (vendored, in headless Chromium)
//! plays it from the built-in page with sound and reports its live latency; ffmpeg reads
//! the MPD too. A WHIP publish (Opus) plays the same way.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tidegate_tests::http::fetch;
use tidegate_tests::peers::{ffmpeg_publish, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, page_script, peer, scratch};

const READY: Duration = Duration::from_secs(20);

#[test]
fn dashjs_plays_an_rtmp_publish_and_ffmpeg_reads_the_mpd() {
    let dir = scratch("dash");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/dash"), 60, "flv", &dir);
    server.wait_ready("live/dash", READY);

    // The MPD: live, a video and an audio representation, LL-DASH attributes, the clock.
    let mpd = fetch(server.hls_addr(), "/live/dash/index.mpd", &[]);
    assert_eq!(mpd.status, 200, "{}", mpd.text());
    assert_eq!(mpd.header("content-type"), Some("application/dash+xml"));
    let text = mpd.text();
    for want in [
        "type=\"dynamic\"",
        "contentType=\"video\"",
        "contentType=\"audio\"",
        "codecs=\"avc1.",
        "codecs=\"mp4a.40.2\"",
        "<SegmentTimeline>",
        "availabilityTimeOffset=",
        "urn:mpeg:dash:utc:direct:2014",
        "width=\"640\" height=\"360\"",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }

    // dash.js from the built-in page: frames, size, both tracks, latency.
    let r = page_script(
        "dash_player.mjs",
        &[
            &format!("http://{}/live/dash/dash", server.hls_addr()),
            "14",
        ],
        Duration::from_secs(90),
    );
    let frames = r["framesDecoded"].as_u64().unwrap();
    assert!(frames >= 150, "only {frames} frames decoded in 14 s: {r}");
    assert_eq!(r["width"], 640, "{r}");
    assert_eq!(r["height"], 360, "{r}");
    assert!(r["video"].as_str().unwrap_or("").contains("avc1"), "{r}");
    assert!(r["audio"].as_str().unwrap_or("").contains("mp4a"), "{r}");
    assert_eq!(r["external"], serde_json::json!([]), "{r}");
    assert_eq!(
        r["dashjs"].as_str(),
        Some(include_str!("../../crates/hls/assets/dash.js/VERSION").trim()),
        "{r}"
    );
    // The latency dash.js reports once playing (the figure is the bench's business; this
    // only catches a player that sits far behind live).
    let latency = r["latencyMedian"].as_f64().expect("a live latency");
    assert!(
        latency > 0.0 && latency < 6.0,
        "live latency {latency} s: {r}"
    );
    assert_eq!(
        r["lowLatency"], true,
        "dash.js took the MPD as LL-DASH: {r}"
    );
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");

    // ffmpeg reads the MPD: H.264 and AAC, timestamps in order.
    let file = dir.join("from-mpd.mkv");
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .arg("-i")
        .arg(format!("http://{}/live/dash/index.mpd", server.hls_addr()))
        .args(["-t", "5", "-c", "copy"])
        .arg(&file);
    let mut reader = PeerProcess::spawn("ffmpeg-dash", &mut cmd, &dir);
    assert!(
        reader.wait(Duration::from_secs(60)).success(),
        "{}",
        reader.stderr()
    );
    let p = ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30));
    assert_eq!(
        p.codec("video").as_deref(),
        Some("h264"),
        "{:#?}",
        p.streams
    );
    assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{:#?}", p.streams);
    assert_eq!(p.dimensions(), Some((640, 360)));
    let n = p.packets_of("video").len();
    assert!(n >= 90, "{n} video frames in 5 s");
    assert!(p.dts_monotonic("video") && p.dts_monotonic("audio"));
}

/// A WHIP publish (aiortc: H.264 and Opus) played by dash.js from the MPD: Opus travels in
/// fMP4 as it is.
#[test]
fn dashjs_plays_a_whip_publish_with_opus() {
    let dir = scratch("dash-whip");
    let server = TestServer::start("");
    let mut whip = Command::new(peer("python"));
    whip.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
        .args([
            "whip",
            &server.webrtc_url("live/whip", "whip"),
            "--seconds",
            "40",
            "--audio",
        ]);
    let _publisher = PeerProcess::spawn("aiortc-whip", &mut whip, &dir);
    server.wait_ready("live/whip", READY);
    assert_eq!(
        server.paths().get("live/whip").unwrap().tracks,
        vec!["H264", "Opus"]
    );
    let r = page_script(
        "dash_player.mjs",
        &[
            &format!("http://{}/live/whip/dash", server.hls_addr()),
            "12",
        ],
        Duration::from_secs(90),
    );
    let frames = r["framesDecoded"].as_u64().unwrap();
    assert!(frames >= 100, "only {frames} frames decoded in 12 s: {r}");
    assert!(r["width"].as_u64().unwrap() > 0, "{r}");
    assert!(r["video"].as_str().unwrap_or("").contains("avc1"), "{r}");
    assert!(r["audio"].as_str().unwrap_or("").contains("opus"), "{r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
}

/// `hlsVariant: mpegts` has no fMP4 segments: the MPD is refused with the reason.
#[test]
fn dash_needs_fmp4_segments() {
    let dir = scratch("dash-ts");
    let server = TestServer::start("hlsVariant: mpegts\n");
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/ts"), 20, "flv", &dir);
    server.wait_ready("live/ts", READY);
    let r = fetch(server.hls_addr(), "/live/ts/index.mpd", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("hlsVariant"), "{}", r.text());
}
