//! The control API and metrics, served by a real server on loopback, with a test publisher
//! driving the core registry (as a protocol crate does).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate::config::Config;
use tidegate::Server;
use tidegate_core::{CodecParams, Frame, SessionInfo, StreamDesc, Track};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn test_config(paths: &str) -> Config {
    let text = format!(
        "apiAddress: 127.0.0.1:0\nmetricsAddress: 127.0.0.1:0\nrtmp: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n{paths}"
    );
    Config::load(Some(("test.yml", &text)), Vec::new()).unwrap()
}

/// A minimal HTTP/1.1 GET with `Connection: close`; returns status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("HTTP answer within 5 s")
}

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

#[tokio::test]
async fn paths_list_shows_a_live_publisher() {
    let server = Server::start(test_config("paths:\n  cam1:\n  all_others:\n"))
        .await
        .unwrap();
    let api = server.api_addr().unwrap();

    let (status, body) = get(api, "/v3/paths/list").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["itemCount"], 1, "the configured path, not ready: {body}");
    assert_eq!(v["items"][0]["name"], "cam1");
    assert_eq!(v["items"][0]["ready"], false);
    assert_eq!(v["items"][0]["source"], serde_json::Value::Null);

    let paths = server.paths().clone();
    let session = SessionInfo {
        id: paths.new_session_id(),
        kind: "testPublisher",
        remote: None,
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
            },
        )
        .unwrap();

    let (status, body) = get(api, "/v3/paths/list").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
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

    let (status, body) = get(api, "/v3/paths/get/live/stream").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "live/stream");

    let (status, body) = get(api, "/v3/paths/list?itemsPerPage=1&page=1").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pageCount"], 2);
    assert_eq!(v["items"][0]["name"], "live/stream");

    let (status, _) = get(api, "/v3/paths/list?page=x").await;
    assert_eq!(status, 400);

    let (status, body) = get(api, "/v3/paths/get/nope").await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "path not found");

    let (status, body) = get(server.metrics_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("paths{name=\"live/stream\",state=\"ready\"} 1"),
        "{body}"
    );
    assert!(body.contains("paths_bytes_received{name=\"live/stream\",state=\"ready\"} 6"));
    assert!(body.contains("paths_readers{name=\"live/stream\",state=\"ready\"} 1"));

    // The publisher leaves: the path is gone from the list (it was not configured by name).
    drop(reader);
    drop(publisher);
    let (_, body) = get(api, "/v3/paths/list").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["itemCount"], 1);

    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown within 10 s");
    assert!(
        TcpStream::connect(api).await.is_err(),
        "the API listener is closed after shutdown"
    );
}
