//! The control API and metrics of a real server on loopback, with a test publisher driving
//! the core registry (as a protocol crate does).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_core::{Bytes, CodecParams, Frame, SessionInfo, StreamDesc, Track};
use tidegate_tests::http::{get_json, request};
use tidegate_tests::server::TestServer;

fn desc() -> StreamDesc {
    StreamDesc {
        tracks: vec![
            Track {
                id: 0,
                params: CodecParams::H264 {
                    sps: Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1e]),
                    pps: Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]),
                },
                clock_rate: 90_000,
            },
            Track {
                id: 1,
                params: CodecParams::Opus { channels: 2 },
                clock_rate: 48_000,
            },
        ],
    }
}

#[test]
fn paths_list_shows_a_live_publisher() {
    let server = TestServer::start("paths:\n  cam1:\n  all_others:\n");
    let api = server.api_addr();

    let v = get_json(api, "/v3/paths/list");
    assert_eq!(v["itemCount"], 1, "the configured path, not ready: {v}");
    assert_eq!(v["items"][0]["name"], "cam1");
    assert_eq!(v["items"][0]["ready"], false);
    assert_eq!(v["items"][0]["source"], serde_json::Value::Null);

    let paths = server.paths().clone();
    let session = SessionInfo {
        id: paths.new_session_id(),
        kind: "testPublisher",
        remote: None,
        query: String::new(),
    };
    let mut publisher = paths.publish("live/stream", session).unwrap();
    let stream = publisher.start(desc());
    stream.write(Frame {
        track: 0,
        pts: 0,
        dts: 0,
        keyframe: true,
        data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
        received: Instant::now(),
        params: None,
    });
    let reader = paths
        .read(
            "live/stream",
            SessionInfo {
                id: paths.new_session_id(),
                kind: "testReader",
                remote: None,
                query: String::new(),
            },
        )
        .unwrap();

    let v = get_json(api, "/v3/paths/list");
    assert_eq!(v["itemCount"], 2);
    assert_eq!(v["pageCount"], 1);
    let live = &v["items"][1];
    assert_eq!(live["name"], "live/stream");
    assert_eq!(live["confName"], "all_others");
    assert_eq!(live["ready"], true);
    assert!(live["readyTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(live["tracks"], serde_json::json!(["H264", "Opus"]));
    assert_eq!(live["bytesReceived"], 6);
    assert_eq!(live["source"]["type"], "testPublisher");
    assert_eq!(live["readers"][0]["type"], "testReader");

    let v = get_json(api, "/v3/paths/get/live/stream");
    assert_eq!(v["name"], "live/stream");

    let v = get_json(api, "/v3/paths/list?itemsPerPage=1&page=1");
    assert_eq!(v["pageCount"], 2);
    assert_eq!(v["items"][0]["name"], "live/stream");

    assert_eq!(request(api, "GET", "/v3/paths/list?page=x").0, 400);

    let (status, body) = request(api, "GET", "/v3/paths/get/nope");
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "path not found");
    assert_eq!(request(api, "GET", "/v3/nothing").0, 404);

    let (status, body) = request(server.metrics_addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("paths{name=\"live/stream\",state=\"ready\"} 1"),
        "{body}"
    );
    assert!(body.contains("paths_bytes_received{name=\"live/stream\",state=\"ready\"} 6"));
    assert!(body.contains("paths_inbound_bytes{name=\"live/stream\",state=\"ready\"} 6"));
    // MediaMTX's label: readers by type.
    assert!(body.contains(
        "paths_readers{name=\"live/stream\",state=\"ready\",readerType=\"testReader\"} 1"
    ));

    // The publisher leaves: the path is gone from the list (it was not configured by name).
    drop(reader);
    drop(publisher);
    let v = get_json(api, "/v3/paths/list");
    assert_eq!(v["itemCount"], 1);
}

/// The OpenAPI document the server serves (docs/openapi.yaml) exercised by schemathesis
/// against a live server with a publisher, an RTMP reader and an HLS viewer: no 5xx, every
/// response (status, headers, content type, body) as the document says, invalid input
/// refused. `global/patch` runs last, alone, with invalid bodies only (a valid one may turn
/// the API listener off). Seeds are fixed, so a failure replays. Not checked: `positive_data_acceptance`
/// (configuration values have a grammar richer than JSON Schema states: a schema-valid
/// duration the server refuses is a 400 naming the key).
#[test]
fn schemathesis_finds_nothing_in_the_openapi_document() {
    let dir = tidegate_tests::scratch("api-schemathesis");
    let file = dir.join("tidegate.yml");
    let server = TestServer::start_watched("paths:\n  cam:\n  \"~^live/(.+)$\":\n", &file);
    let _publisher =
        tidegate_tests::peers::ffmpeg_publish(&server.rtmp_url("cam"), 120, "flv", &dir);
    server.wait_ready("cam", Duration::from_secs(20));
    let mut reader = Command::new(tidegate_tests::peer("ffmpeg"));
    reader
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(server.rtmp_url("cam"))
        .args(["-t", "100", "-c", "copy", "-f", "null", "-"]);
    let _reader = tidegate_tests::peers::PeerProcess::spawn("ffmpeg-read", &mut reader, &dir);
    server.wait_readers("cam", 1, Duration::from_secs(20));
    let api = format!("http://{}", server.api_addr());
    // MediaMTX 1.20's tracks2, with the codec properties read from the stream's parameters.
    let cam = get_json(server.api_addr(), "/v3/paths/get/cam");
    let t = &cam["tracks2"];
    assert_eq!(t[0]["codec"], "H264", "{cam}");
    assert_eq!(t[0]["codecProps"]["width"], 640, "{cam}");
    assert_eq!(t[0]["codecProps"]["height"], 360, "{cam}");
    assert_eq!(t[0]["codecProps"]["profile"], "Baseline", "{cam}");
    assert_eq!(t[1]["codec"], "MPEG-4 Audio", "{cam}");
    assert_eq!(t[1]["codecProps"]["sampleRate"], 48000, "{cam}");
    assert_eq!(t[1]["codecProps"]["channelCount"], 2, "{cam}");
    let served = tidegate_tests::http::fetch(server.api_addr(), "/v3/openapi.yaml", &[]);
    assert_eq!(served.status, 200);
    assert_eq!(
        served.text(),
        include_str!("../../docs/openapi.yaml"),
        "the server serves docs/openapi.yaml"
    );
    // global/patch gets only invalid bodies (every one must be refused and change nothing):
    // a valid one may move or close the API listener or require credentials (`apiAddress:
    // null` is back to :9997), after which nothing more could be tested. The config API
    // tests apply valid changes.
    for (phase, filter, mode) in [
        ("everything but global/patch", "--exclude-path", "all"),
        ("global/patch, invalid bodies", "--include-path", "negative"),
    ] {
        let out = tidegate_tests::run_bounded(
            Command::new(tidegate_tests::peer("python"))
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/st.py"))
                .args(["run", &format!("{api}/v3/openapi.yaml")])
                .args([
                    "--checks",
                    "all",
                    "--exclude-checks",
                    "positive_data_acceptance",
                ])
                .args([
                    "--max-examples",
                    "25",
                    "--seed",
                    "20261204",
                    "--workers",
                    "2",
                ])
                .args([filter, "/v3/config/global/patch", "--mode", mode])
                .current_dir(&dir)
                .env("NO_COLOR", "1"),
            Duration::from_secs(600),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("generated") || l.contains(" in ") && l.contains("=="))
            .collect();
        eprintln!("schemathesis, {phase}: {summary:?}");
        assert!(
            out.status.success(),
            "schemathesis found problems ({phase}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
