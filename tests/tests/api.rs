//! The control API and metrics of a real server on loopback, with a test publisher driving
//! the core registry (as a protocol crate does).

#![allow(clippy::unwrap_used)]

use std::time::Instant;

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
