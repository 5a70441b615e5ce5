//! Origin and edges from the same binary: edges are Tidegates whose regex path pulls every
//! name from an origin on demand (`source: rtsp://origin/$G1`), one pull per path per edge
//! whatever its readers, with every egress on the edge; an edge lists a second origin
//! (`sourceFailover`) and moves its pull there when the first dies, its readers attached.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tidegate_tests::http::get_json;
use tidegate_tests::peers::{decoded_frames, ffmpeg_decoding, ffmpeg_publish, ffmpeg_read};
use tidegate_tests::server::TestServer;
use tidegate_tests::{port_of, scratch, video_timeline};

const READY: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(90);

/// An edge of the origins whose RTSP URLs are `origins` (the first is `source`, the others
/// `sourceFailover`).
fn edge(origins: &[String]) -> TestServer {
    let port = |u: &String| port_of(u);
    let mut conf = format!(
        "pathDefaults:\n  publisherReconnectGrace: 5s\npaths:\n  '~^(.+)$':\n    source: rtsp://127.0.0.1:{}/$G1\n    rtspTransport: tcp\n    sourceOnDemand: yes\n    sourceOnDemandCloseAfter: 5s\n",
        port(&origins[0])
    );
    if origins.len() > 1 {
        conf.push_str("    sourceFailover:\n");
        for o in &origins[1..] {
            conf.push_str(&format!("      - rtsp://127.0.0.1:{}/$G1\n", port(o)));
        }
    }
    TestServer::start(&conf)
}

/// RTSP sessions reading from `server` now.
fn pulls(server: &TestServer) -> usize {
    server.rtsp_reads()
}

/// One origin, two edges: an ffmpeg RTMP publish on the origin is decoded on both edges by
/// ffmpeg over RTMP and SRT (two each), aiortc over WHEP and hls.js in Chromium over LL-HLS;
/// the origin serves exactly one pull per edge throughout (sampled while the readers play);
/// the edges' pulls close after their last reader.
#[test]
fn one_origin_two_edges_serve_every_egress_with_one_pull_each() {
    let dir = scratch("edges");
    let origin = TestServer::start("paths:\n  all_others:\n");
    let edges = [edge(&[origin.rtsp_url("x")]), edge(&[origin.rtsp_url("x")])];
    let mut publisher = ffmpeg_publish(&origin.rtmp_url("live/show"), 90, "flv", &dir);
    origin.wait_ready("live/show", READY);

    // Every reader of both edges starts at once; the pull count is sampled while they play.
    let mut readers = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        for k in 0..2 {
            readers.push((
                format!("edge {i} RTMP {k}"),
                ffmpeg_decoding(&e.rtmp_url("live/show"), 10, &dir, &format!("rtmp-{i}-{k}")),
            ));
            readers.push((
                format!("edge {i} SRT {k}"),
                ffmpeg_decoding(
                    &format!("{}&latency=200000", e.srt_url("read:live/show", "")),
                    10,
                    &dir,
                    &format!("srt-{i}-{k}"),
                ),
            ));
        }
    }
    let mut most = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        most = most.max(pulls(&origin));
        std::thread::sleep(Duration::from_millis(250));
    }
    for (name, mut r) in readers {
        let frames = decoded_frames(&mut r);
        assert!(frames >= 200, "{name}: {frames} frames in 10 s");
    }
    assert_eq!(most, 2, "the origin served {most} pulls at most");
    for (i, e) in edges.iter().enumerate() {
        let v =
            tidegate_tests::peers::aiortc_whep_viewer(|c| c, &e.webrtc_url("live/show", "whep"), 6);
        let frames = v["frames"].as_u64().unwrap_or(0);
        assert!(frames >= 100, "edge {i} WHEP: {v}");
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(640), Some(360)),
            "{v}"
        );
        let mut hlsjs = tidegate_tests::peers::hlsjs_player(&e.hls_url("live/show", ""), 12, &dir);
        let r = tidegate_tests::peers::hlsjs_report(&mut hlsjs, LIMIT);
        let trace = r["trace"].as_array().unwrap();
        let end = trace.last().unwrap()[0].as_f64().unwrap();
        let frames = |t: f64| tidegate_tests::peers::hlsjs_frames_at(&r, t);
        let last4 = frames(end) - frames(end - 4.0);
        assert!(
            last4 >= 80,
            "edge {i} hls.js: {last4} frames in its last 4 s: {r}"
        );
        assert!(pulls(&origin) <= 2);
    }
    publisher.kill9();
}

/// Two origins, one edge listing both: a reader on the edge plays while the first origin is
/// shut down; the edge pulls from the second at once and the reader, never disconnected,
/// decodes on both sides of a gap of a few seconds at most. Each origin served one pull.
#[test]
fn an_edge_moves_its_pull_to_the_next_origin_when_one_dies() {
    let dir = scratch("edges-failover");
    let first = TestServer::start("paths:\n  all_others:\n");
    let second = TestServer::start("paths:\n  all_others:\n");
    let e = edge(&[first.rtsp_url("x"), second.rtsp_url("x")]);
    let mut p1 = ffmpeg_publish(&first.rtmp_url("live/show"), 90, "flv", &dir);
    let mut p2 = ffmpeg_publish(&second.rtmp_url("live/show"), 90, "flv", &dir);
    first.wait_ready("live/show", READY);
    second.wait_ready("live/show", READY);
    let out = dir.join("reader.mkv");
    let mut reader = ffmpeg_read(&e.rtmp_url("live/show"), 16, &out, &dir);
    e.wait_ready("live/show", READY);
    assert_eq!(pulls(&first), 1);
    assert_eq!(pulls(&second), 0);
    e.wait_frames("live/show", 120, LIMIT);

    // The first origin goes away (its publisher with it).
    p1.kill9();
    drop(first);
    let gone = Instant::now();
    tidegate_tests::poll(
        Duration::from_secs(15),
        || "the edge did not pull from the second origin".to_string(),
        || (pulls(&second) == 1).then_some(()),
    );
    let moved = gone.elapsed();
    e.wait_ready("live/show", READY);
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    let pts = video_timeline(&out);
    let (at, gap) = pts
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i + 1, w[1] - w[0]))
        .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let (before, after) = (at, pts.len() - at);
    eprintln!("failover: pull moved in {moved:?}; reader: {before} frames, a {gap:.2} s gap, {after} frames");
    assert!(before >= 90 && after >= 90, "{before} / {after} frames");
    assert!(gap < 6.0, "a {gap} s gap");
    let path: Value = get_json(e.api_addr(), "/v3/paths/get/live/show");
    assert_eq!(path["ready"], true, "{path}");
    p2.kill9();
}

/// An ingest edge: a publish that lands on it is forwarded by configuration to the origin
/// under the same name (`forward: [rtmp://origin/$G1]` on a `~^(.+)$` path), where ffmpeg
/// decodes it; the edge's API shows the expanded destination running.
#[test]
fn a_publish_on_an_ingest_edge_is_forwarded_to_the_origin() {
    let dir = scratch("edges-ingest");
    let origin = TestServer::start("paths:\n  all_others:\n");
    let ingest = TestServer::start(&format!(
        "paths:\n  '~^(.+)$':\n    forward:\n      - rtmp://127.0.0.1:{}/$G1\n",
        port_of(&origin.rtmp_url("x"))
    ));
    let mut publisher = ffmpeg_publish(&ingest.rtmp_url("studio/cam"), 60, "flv", &dir);
    ingest.wait_ready("studio/cam", READY);
    origin.wait_ready("studio/cam", READY);
    let mut reader = ffmpeg_decoding(&origin.rtmp_url("studio/cam"), 6, &dir, "origin-reader");
    let frames = decoded_frames(&mut reader);
    assert!(frames >= 120, "{frames} frames on the origin");
    let path: Value = get_json(ingest.api_addr(), "/v3/paths/get/studio/cam");
    // The expanded destination (its last segment, an RTMP stream key, is hidden).
    let push = &path["push"][0];
    assert_eq!(push["state"], "running", "{path}");
    assert_eq!(
        push["url"],
        format!(
            "rtmp://127.0.0.1:{}/studio/***",
            port_of(&origin.rtmp_url("x"))
        ),
        "{path}"
    );
    publisher.kill9();
}
