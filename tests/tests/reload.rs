//! Reload without drops: a server watches its configuration file while ffmpeg publishes on
//! two paths, one read over RTMP, SRT and HLS (ffmpeg). A new file adds a path, changes the
//! other path's settings, the log level and a restart-only key, and the RTMPS certificate
//! files are rotated: the untouched path keeps its publisher and its three readers with no
//! gap in their timestamps and no reconnect; the changed path's sessions are closed; new
//! RTMPS connections get the new certificate; the added path takes a publisher. Then an
//! invalid file changes nothing and its error names the key and the line.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read};
use tidegate_tests::server::TestServer;
use tidegate_tests::{logs, scratch};

const READY: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(60);

/// Video frames of `file` and the largest gap between consecutive video timestamps (s).
fn frames_and_gap(file: &Path) -> (usize, f64) {
    let t = tidegate_tests::video_timeline(file);
    let gap = t.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (t.len(), gap)
}

/// Whether an RTMPS listener at `port` presents the certificate of `fingerprint`.
fn presents(port: u16, fingerprint: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(tidegate_core::tls::connect(
        "127.0.0.1",
        port,
        fingerprint,
        Duration::from_secs(5),
    ))
    .is_ok()
}

#[test]
fn reload_touches_only_what_changed() {
    let dir = scratch("reload");
    let (old_dir, new_dir) = (dir.join("old"), dir.join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (k1, c1, fp1) = tidegate_tests::self_signed_pinned(&old_dir);
    let (k2, c2, fp2) = tidegate_tests::self_signed_pinned(&new_dir);
    let (key, cert) = (dir.join("tls.key"), dir.join("tls.crt"));
    std::fs::copy(&k1, &key).unwrap();
    std::fs::copy(&c1, &cert).unwrap();
    let tls = format!(
        "rtmpEncryption: optional\nrtmpServerKey: {}\nrtmpServerCert: {}\n",
        key.display(),
        cert.display()
    );
    let v1 = format!("{tls}logLevel: info\npaths:\n  keep:\n  other:\n    maxReaders: 5\n");
    let file = dir.join("tidegate.yml");
    let server = TestServer::start_watched(&v1, &file);
    let rtmps_port = tidegate_tests::port_of(&server.rtmps_url("x"));
    assert!(presents(rtmps_port, &fp1));

    let _keep_pub = ffmpeg_publish(&server.rtmp_url("keep"), 60, "flv", &dir);
    let _other_pub = ffmpeg_publish(&server.rtmp_url("other"), 60, "flv", &dir);
    server.wait_ready("keep", READY);
    server.wait_ready("other", READY);
    let source = server.paths().get("keep").unwrap().source.unwrap();
    let (rtmp_out, srt_out, hls_out) = (
        dir.join("rtmp.mkv"),
        dir.join("srt.ts"),
        dir.join("hls.mkv"),
    );
    let mut readers = [
        ffmpeg_read(&server.rtmp_url("keep"), 16, &rtmp_out, &dir),
        ffmpeg_read(
            &format!("{}&latency=200000", server.srt_url("read:keep", "")),
            16,
            &srt_out,
            &dir,
        ),
        ffmpeg_read(&server.hls_url("keep", "index.m3u8"), 16, &hls_out, &dir),
    ];
    let mut other_reader = ffmpeg_read(&server.rtmp_url("other"), 50, &dir.join("o.mkv"), &dir);
    server.wait_readers("keep", 3, READY);
    server.wait_readers("other", 1, READY);
    server.wait_frames("keep", 90, LIMIT);
    let keep_readers = server.paths().get("keep").unwrap().readers;

    // The new file: a path added, `other` changed, the log level, a restart-only key; and the
    // certificate files rotated in place.
    std::fs::copy(&k2, &key).unwrap();
    std::fs::copy(&c2, &cert).unwrap();
    let v2 = format!(
        "{tls}logLevel: debug\nreadTimeout: 20s\npaths:\n  keep:\n  other:\n    maxReaders: 4\n  added:\n"
    );
    server.rewrite_config(&v2);
    let name = file.display().to_string();
    logs::wait_for(&["[reload] configuration reloaded from", &name], LIMIT);
    assert!(!logs::lines_with(&["other", "its configuration changed"]).is_empty());
    assert!(!logs::lines_with(&["restart", "readTimeout"]).is_empty());
    assert!(!logs::lines_with(&["rtmpServerKey/rtmpServerCert", "new certificate"]).is_empty());
    assert!(logs::lines_with(&["keep", "its sessions were closed"]).is_empty());
    // New connections get the new certificate.
    assert!(
        presents(rtmps_port, &fp2),
        "the new certificate is not served"
    );
    assert!(!presents(rtmps_port, &fp1));
    // `keep`: the same publisher, the same readers.
    let now = server.paths().get("keep").unwrap();
    assert_eq!(now.source.unwrap(), source);
    assert_eq!(now.readers, keep_readers);
    // `other`: its reader was ended.
    assert!(other_reader.wait(LIMIT).code().is_some());
    // `added` takes a publisher.
    let _added = ffmpeg_publish(&server.rtmp_url("added"), 10, "flv", &dir);
    server.wait_ready("added", READY);

    // An invalid file changes nothing.
    server.rewrite_config(&format!(
        "{tls}logLevel: debug\nreadTimeout: 20s\npaths:\n  keep:\n    maxReaders: many\n"
    ));
    logs::wait_for(
        &[
            "[reload]",
            &name,
            "paths.keep.maxReaders",
            "nothing changed",
        ],
        LIMIT,
    );
    assert!(server.paths().get("added").is_some_and(|p| p.ready));
    assert_eq!(server.paths().get("keep").unwrap().readers, keep_readers);

    // The untouched path's readers played through both reloads, with no gap.
    for ((name, out), r) in [("RTMP", &rtmp_out), ("SRT", &srt_out), ("HLS", &hls_out)]
        .into_iter()
        .zip(readers.iter_mut())
    {
        assert!(r.wait(LIMIT).success(), "{name}: {}", r.stderr());
        let (frames, gap) = frames_and_gap(out);
        eprintln!("{name}: {frames} frames, largest gap {gap:.3} s");
        assert!(frames >= 400, "{name}: {frames} frames in 16 s");
        assert!(gap < 0.5, "{name}: a {gap} s gap");
    }
}

fn api(server: &TestServer, method: &str, target: &str, body: &str) -> (u16, serde_json::Value) {
    let f = tidegate_tests::http::send(
        server.api_addr(),
        method,
        target,
        &["Content-Type: application/json"],
        body.as_bytes(),
    );
    let v = serde_json::from_slice(&f.body).unwrap_or(serde_json::Value::Null);
    (f.status, v)
}

/// The config API (MediaMTX's endpoints) on the reload engine: changes apply without touching
/// a live path they do not concern, bad ones change nothing, and they are written back to the
/// file so that a restart keeps them.
#[test]
fn the_config_api_applies_changes_and_a_restart_keeps_them() {
    let dir = scratch("config-api");
    let file = dir.join("tidegate.yml");
    let server = TestServer::start_watched(
        "# my comment\npaths:\n  # the studio feed\n  keep:\n",
        &file,
    );
    let _publisher = ffmpeg_publish(&server.rtmp_url("keep"), 40, "flv", &dir);
    server.wait_ready("keep", READY);
    let out = dir.join("keep.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("keep"), 12, &out, &dir);
    server.wait_readers("keep", 1, READY);
    let source = server.paths().get("keep").unwrap().source;

    let (status, g) = api(&server, "GET", "/v3/config/global/get", "");
    assert_eq!(status, 200);
    assert_eq!(g["logLevel"], "info", "{g}");
    assert_eq!(g["rtmp"], true, "booleans are JSON booleans: {g}");
    assert_eq!(g["readTimeout"], "10s", "{g}");
    assert_eq!(g["writeQueueSize"], 1024, "numbers are JSON numbers: {g}");

    let (status, _) = api(
        &server,
        "PATCH",
        "/v3/config/global/patch",
        r#"{"logLevel":"debug"}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        api(&server, "GET", "/v3/config/global/get", "").1["logLevel"],
        "debug"
    );

    // Bad changes change nothing, and say why.
    let (status, e) = api(
        &server,
        "PATCH",
        "/v3/config/global/patch",
        r#"{"readTimeout":"soon"}"#,
    );
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("readTimeout"), "{e}");
    let (status, e) = api(&server, "PATCH", "/v3/config/global/patch", r#"{"nope":1}"#);
    assert_eq!(status, 400, "{e}");
    assert_eq!(
        api(&server, "GET", "/v3/config/global/get", "").1["readTimeout"],
        "10s"
    );

    // Paths: add, get, patch, list, delete.
    let (status, e) = api(
        &server,
        "POST",
        "/v3/config/paths/add/cam/one",
        r#"{"maxReaders":3}"#,
    );
    assert_eq!(status, 200, "{e}");
    let (_, p) = api(&server, "GET", "/v3/config/paths/get/cam/one", "");
    assert_eq!(p["name"], "cam/one");
    assert_eq!(p["maxReaders"], 3);
    assert_eq!(p["overridePublisher"], false);
    let (status, _) = api(&server, "POST", "/v3/config/paths/add/cam/one", "{}");
    assert_eq!(status, 400, "adding an existing path");
    let (status, _) = api(
        &server,
        "PATCH",
        "/v3/config/paths/patch/cam/one",
        r#"{"maxReaders":2}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        api(&server, "GET", "/v3/config/paths/get/cam/one", "").1["maxReaders"],
        2
    );
    let mut added = ffmpeg_publish(&server.rtmp_url("cam/one"), 3, "flv", &dir);
    server.wait_ready("cam/one", READY);
    assert!(added.wait(LIMIT).success());
    let (status, _) = api(&server, "POST", "/v3/config/paths/add/gone", "{}");
    assert_eq!(status, 200);
    let (status, _) = api(&server, "DELETE", "/v3/config/paths/delete/gone", "");
    assert_eq!(status, 200);
    let (status, _) = api(&server, "GET", "/v3/config/paths/get/gone", "");
    assert_eq!(status, 404);
    let (_, list) = api(&server, "GET", "/v3/config/paths/list", "");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep", "cam/one"], "{list}");

    // The live path the changes did not concern kept its publisher and its reader.
    assert_eq!(server.paths().get("keep").unwrap().source, source);
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    let (frames, gap) = frames_and_gap(&out);
    assert!(frames >= 300 && gap < 0.5, "{frames} frames, a {gap} s gap");

    // Written back (the original kept beside it); a restart from the file keeps the changes.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("logLevel: debug") && text.contains("cam/one"),
        "{text}"
    );
    assert!(dir.join("tidegate.yml.orig").exists());
    // The user's comments are still in it.
    for comment in ["# my comment", "  # the studio feed"] {
        assert!(
            text.lines().any(|l| l == comment),
            "{comment:?} lost:\n{text}"
        );
    }
    drop(server);
    let again = TestServer::start_from_file(&file);
    assert_eq!(
        api(&again, "GET", "/v3/config/global/get", "").1["logLevel"],
        "debug"
    );
    assert_eq!(
        api(&again, "GET", "/v3/config/paths/get/cam/one", "").1["maxReaders"],
        2
    );
}

/// A changed listener address moves that listener alone: ffmpeg keeps publishing and an
/// ffmpeg reader keeps reading through the connections the old RTMP listener accepted
/// (timestamps without a gap), a new reader connects on the new address, the old address
/// refuses; the API moves the same way.
#[test]
fn a_moved_listener_keeps_its_connections() {
    let dir = scratch("reload-move");
    let file = dir.join("tidegate.yml");
    let server = TestServer::start_watched(
        "rtmpAddress: 127.0.0.1:0\napiAddress: 127.0.0.1:0\npaths:\n  live/move:\n",
        &file,
    );
    let (old_rtmp, old_api) = (server.rtmp_addr(), server.api_addr());
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/move"), 60, "flv", &dir);
    server.wait_ready("live/move", READY);
    let mut reader = ffmpeg_read(
        &server.rtmp_url("live/move"),
        16,
        &dir.join("before.flv"),
        &dir,
    );
    server.wait_readers("live/move", 1, READY);

    let (rtmp_port, api_port) = (
        tidegate_tests::peers::free_port(),
        tidegate_tests::peers::free_port(),
    );
    server.rewrite_config(&format!(
        "rtmpAddress: 127.0.0.1:{rtmp_port}\napiAddress: 127.0.0.1:{api_port}\npaths:\n  live/move:\n"
    ));
    logs::wait_for(
        &["[RTMP] listener moved", &format!("127.0.0.1:{rtmp_port}")],
        LIMIT,
    );
    logs::wait_for(
        &["[API] listener moved", &format!("127.0.0.1:{api_port}")],
        LIMIT,
    );
    // Nothing names the moved keys as needing a restart.
    assert!(logs::lines_with(&["restart", "rtmpAddress"]).is_empty());

    // The old addresses refuse; the new ones answer.
    for old in [old_rtmp, old_api] {
        assert!(
            std::net::TcpStream::connect_timeout(&old, Duration::from_secs(2)).is_err(),
            "{old} still accepts"
        );
    }
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let paths = tidegate_tests::http::get_json(api, "/v3/paths/list");
    assert_eq!(paths["items"][0]["name"], "live/move", "{paths}");
    assert_eq!(paths["items"][0]["ready"], true, "{paths}");
    let mut after = ffmpeg_read(
        &format!("rtmp://127.0.0.1:{rtmp_port}/live/move"),
        4,
        &dir.join("after.flv"),
        &dir,
    );
    assert!(after.wait(LIMIT).success(), "{}", after.stderr());
    let (n, _) = frames_and_gap(&dir.join("after.flv"));
    assert!(n >= 60, "{n} frames read on the new address");

    // The reader the old listener accepted read on without a break.
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    let (n, gap) = frames_and_gap(&dir.join("before.flv"));
    assert!(n >= 300, "{n} frames over the move");
    assert!(gap < 0.5, "a {gap} s gap over the move");
}
