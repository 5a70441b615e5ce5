//! The built-in console (`/console` on the API listener) in headless Chromium (playwright-core):
//! with an ffmpeg RTMP publish and an ffmpeg RTMP reader live, it lists the path with its
//! codecs and readers, its bitrate plot has points, its stream keys are listed, and its HLS
//! preview decodes frames; without the `api` permission the page is refused. A screenshot is
//! taken (in the test's scratch directory).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use tidegate_tests::http::{fetch, send};
use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read};
use tidegate_tests::scratch;
use tidegate_tests::server::TestServer;

const READY: Duration = Duration::from_secs(20);

#[test]
fn console_shows_a_live_path_its_readers_and_plays_its_preview() {
    let dir = scratch("console");
    let server = TestServer::start(
        "authInternalUsers:\n\
         \x20 - user: admin\n    pass: s3cret\n    permissions:\n      - action: api\n\
         \x20 - user: any\n    permissions:\n      - action: publish\n      - action: read\n",
    );
    let api = server.api_addr();
    let basic = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:s3cret")
    );

    // The page and its data need the `api` permission.
    let anonymous = fetch(api, "/console", &[]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert!(anonymous.header("www-authenticate").is_some());
    assert_eq!(fetch(api, "/v3/console/history", &[]).status, 401);
    let page = fetch(api, "/console", &[&basic]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Tidegate console"));
    assert_eq!(fetch(api, "/", &[&basic]).status, 200);

    let _publisher = ffmpeg_publish(&server.rtmp_url("live/cam"), 90, "flv", &dir);
    server.wait_ready("live/cam", READY);
    let _reader = ffmpeg_read(
        &server.rtmp_url("live/cam"),
        80,
        &dir.join("read.flv"),
        &dir,
    );
    server.wait_readers("live/cam", 1, READY);
    let created = send(
        api,
        "POST",
        "/v3/keys/create",
        &[&basic, "Content-Type: application/json"],
        br#"{"path":"live/cam","action":"publish","label":"studio"}"#,
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let key: serde_json::Value = serde_json::from_str(&created.text()).unwrap();
    let key_id = key["id"].as_str().unwrap().to_string();

    let shot = dir.join("console.png");
    let _ = std::fs::remove_file(&shot);
    let r = tidegate_tests::page_script(
        "console.mjs",
        &[
            &format!("http://{api}/console"),
            "admin",
            "s3cret",
            "live/cam",
            shot.to_str().unwrap(),
        ],
        Duration::from_secs(150),
    );

    assert_eq!(r["anonymousStatus"], 401, "{r}");
    assert_ne!(r["anonymousPage"], 200, "{r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["external"], serde_json::json!([]), "{r}");
    let row = &r["row"];
    assert_eq!(row["state"], "ready", "{r}");
    assert_eq!(row["source"], "rtmpConn", "{r}");
    let codecs: Vec<&str> = row["codecs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(codecs.contains(&"H264"), "{r}");
    assert!(codecs.contains(&"MPEG-4 Audio"), "{r}");
    assert!(
        row["readers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "rtmpConn"),
        "{r}"
    );
    assert!(row["inboundPoints"].as_u64().unwrap() >= 3, "{r}");
    // The publisher's bitrate is drawn in kbit/s (or Mbit/s), not as nothing.
    assert!(
        row["inboundText"].as_str().unwrap().contains("bit/s"),
        "{r}"
    );
    assert!(r["keysText"].as_str().unwrap().contains(&key_id), "{r}");
    assert!(
        r["latencyEgresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "rtmp"),
        "{r}"
    );
    let frames = r["previewFrames"].as_u64().unwrap_or(0);
    assert!(frames >= 30, "the HLS preview decoded {frames} frames: {r}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );
}

/// `/v3/console/history` samples each path's bitrate every 2 s: with a publisher live, its
/// inbound series grows and carries a plausible figure.
#[test]
fn console_history_samples_a_live_paths_bitrate() {
    let dir = scratch("console-history");
    let server = TestServer::start("");
    let api = server.api_addr();
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/hist"), 40, "flv", &dir);
    server.wait_ready("live/hist", READY);
    let series = tidegate_tests::poll(
        Duration::from_secs(20),
        || "three samples of live/hist".into(),
        || {
            let h = tidegate_tests::http::get_json(api, "/v3/console/history");
            let s = h["paths"]["live/hist"]["inboundKbps"].as_array()?.clone();
            let live: Vec<f64> = s.iter().filter_map(|v| v.as_f64()).collect();
            (live.len() >= 3).then_some(live)
        },
    );
    // The synthetic source is a few hundred kbit/s; the first sample may be a partial one.
    let last = *series.last().unwrap();
    assert!(last > 20.0 && last < 20_000.0, "{series:?}");
    let info = tidegate_tests::http::get_json(api, "/v3/console/info");
    assert_eq!(
        info["listeners"]["hls"]["port"].as_u64(),
        Some(u64::from(server.hls_addr().port()))
    );
    assert_eq!(info["listeners"]["hls"]["scheme"], "http");
}
