//! RTMP against real peers: ffmpeg, GStreamer (rtmp2sink / rtmp2src) and ffmpeg 9 (Enhanced
//! RTMP HEVC). Assertions are on the media that comes out.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, synthetic_source, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, peer, scratch, Probe};

const READY: Duration = Duration::from_secs(15);

fn probe_file(path: &std::path::Path) -> Probe {
    ffprobe(path.to_str().unwrap(), &[], Duration::from_secs(30))
}

/// Video and audio both present, right codecs and size, a frame count within one GOP (30
/// frames) of `seconds` at 30 fps, and DTS that never go back.
fn assert_media(p: &Probe, video: &str, audio: &str, seconds: u32) {
    assert_eq!(p.codec("video").as_deref(), Some(video), "{:#?}", p.streams);
    assert_eq!(p.codec("audio").as_deref(), Some(audio), "{:#?}", p.streams);
    assert_eq!(p.dimensions(), Some((640, 360)));
    let frames = p.packets_of("video").len();
    let expected = seconds as usize * 30;
    assert!(
        frames + 30 >= expected && frames <= expected + 30,
        "{frames} video frames for {seconds} s at 30 fps"
    );
    assert!(p.packets_of("video").iter().any(|f| f.keyframe));
    let audio_frames = p.packets_of("audio").len();
    // AAC at 48 kHz: 46.9 frames/s.
    assert!(
        audio_frames as f64 >= (f64::from(seconds) - 1.5) * 46.9,
        "{audio_frames} audio frames"
    );
    assert!(p.dts_monotonic("video"), "video DTS go backwards");
    assert!(p.dts_monotonic("audio"), "audio DTS go backwards");
}

#[test]
fn ffmpeg_publishes_and_ffmpeg_reads_back() {
    let dir = scratch("rtmp-ffmpeg");
    let server = TestServer::start("");
    let url = server.rtmp_url("live/test");
    let _publisher = ffmpeg_publish(&url, 30, "flv", &dir);
    server.wait_ready("live/test", READY);

    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&url, 5, &out, &dir);
    let status = reader.wait(Duration::from_secs(30));
    assert!(status.success(), "reader failed: {}", reader.stderr());
    let p = probe_file(&out);
    assert_media(&p, "h264", "aac", 5);
    let first = p.packets_of("video")[0];
    assert!(first.keyframe, "a reader's first video frame is a keyframe");

    let info = server.paths().get("live/test").unwrap();
    assert_eq!(info.tracks, vec!["H264", "MPEG-4 Audio"]);
    assert!(
        info.bytes_sent > 100_000,
        "bytesSent counted: {}",
        info.bytes_sent
    );
}

#[test]
fn gstreamer_publishes_and_ffmpeg_reads() {
    let dir = scratch("rtmp-gst-publish");
    let server = TestServer::start("");
    let url = server.rtmp_url("live/gst");
    let pipeline = format!(
        "videotestsrc is-live=true num-buffers=900 ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
         ! flvmux streamable=true name=m ! rtmp2sink location={url} \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! avenc_aac ! aacparse ! m."
    );
    let mut cmd = Command::new(peer("gst-launch-1.0"));
    cmd.arg("-q").args(pipeline.split_whitespace());
    let _gst = PeerProcess::spawn("gst-rtmp2sink", &mut cmd, &dir);
    server.wait_ready("live/gst", READY);

    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&url, 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), "h264", "aac", 5);
}

#[test]
fn ffmpeg_publishes_and_gstreamer_reads() {
    let dir = scratch("rtmp-gst-read");
    let server = TestServer::start("");
    let url = server.rtmp_url("live/forgst");
    let _publisher = ffmpeg_publish(&url, 30, "flv", &dir);
    server.wait_ready("live/forgst", READY);

    let out = dir.join("gst.mp4");
    // Five seconds of reading, then SIGINT: with -e, gst-launch sends EOS so mp4mux finishes
    // the file (PEERS.md: always bound gst-launch with a kill-after).
    let pipeline = format!(
        "rtmp2src location={url} ! flvdemux name=d \
         d.video ! queue ! h264parse ! mp4mux name=mx ! filesink location={} \
         d.audio ! queue ! aacparse ! mx.",
        out.display()
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "INT", "-k", "5", "5"])
        .arg(peer("gst-launch-1.0"))
        .args(["-q", "-e"])
        .args(pipeline.split_whitespace());
    let mut gst = PeerProcess::spawn("gst-rtmp2src", &mut cmd, &dir);
    gst.wait(Duration::from_secs(20));
    assert_media(&probe_file(&out), "h264", "aac", 5);
}

#[test]
fn hevc_over_enhanced_rtmp() {
    let dir = scratch("rtmp-hevc");
    let server = TestServer::start("");
    let url = server.rtmp_url("live/hevc");
    let mut cmd = Command::new(peer("ffmpeg9"));
    let mut args = synthetic_source(30, "640x360");
    // Replace the H.264 encoder settings with HEVC.
    let at = args.iter().position(|a| a == "libx264").unwrap();
    args[at] = "libx265".into();
    let profile = args.iter().position(|a| a == "-profile:v").unwrap();
    args.drain(profile..profile + 2);
    let tune = args.iter().position(|a| a == "-tune").unwrap();
    args.drain(tune..tune + 2);
    cmd.args(args)
        .args(["-x265-params", "log-level=none:bframes=0"])
        .args(["-f", "flv", &url]);
    let _publisher = PeerProcess::spawn("ffmpeg9-hevc", &mut cmd, &dir);
    server.wait_ready("live/hevc", READY);
    assert_eq!(
        server.paths().get("live/hevc").unwrap().tracks,
        vec!["H265", "MPEG-4 Audio"]
    );

    let out = dir.join("read.mkv");
    let mut cmd = Command::new(peer("ffmpeg9"));
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-i",
        &url,
    ])
    .args(["-t", "5", "-c", "copy"])
    .arg(&out);
    let mut reader = PeerProcess::spawn("ffmpeg9-read", &mut cmd, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), "hevc", "aac", 5);
}

#[test]
fn credentials_are_checked() {
    let dir = scratch("rtmp-auth");
    let server = TestServer::start(
        "paths:\n  live/secure:\n    publishUser: alice\n    publishPass: s3cret\n    readUser: bob\n    readPass: pw\n",
    );
    let base = server.rtmp_url("live/secure");

    let mut wrong = ffmpeg_publish(&format!("{base}?user=alice&pass=nope"), 10, "flv", &dir);
    let status = wrong.wait(Duration::from_secs(20));
    assert!(
        !status.success(),
        "a publisher with a wrong password is refused"
    );
    assert!(server.paths().get("live/secure").is_none_or(|p| !p.ready));

    let _good = ffmpeg_publish(&format!("{base}?user=alice&pass=s3cret"), 30, "flv", &dir);
    server.wait_ready("live/secure", READY);

    let out = dir.join("anon.mkv");
    let mut anon = ffmpeg_read(&base, 3, &out, &dir);
    assert!(
        !anon.wait(Duration::from_secs(20)).success(),
        "a reader without credentials is refused"
    );

    let out = dir.join("bob.mkv");
    let mut bob = ffmpeg_read(&format!("{base}?user=bob&pass=pw"), 3, &out, &dir);
    assert!(
        bob.wait(Duration::from_secs(20)).success(),
        "{}",
        bob.stderr()
    );
    assert!(probe_file(&out).packets_of("video").len() >= 60);
}

#[test]
fn a_second_publisher_is_refused_and_the_first_carries_on() {
    let dir = scratch("rtmp-busy");
    let server = TestServer::start("");
    let url = server.rtmp_url("live/busy");
    let _first = ffmpeg_publish(&url, 30, "flv", &dir);
    server.wait_ready("live/busy", READY);
    let owner = server.paths().get("live/busy").unwrap().source;

    let mut second = ffmpeg_publish(&url, 10, "flv", &dir);
    assert!(
        !second.wait(Duration::from_secs(20)).success(),
        "second publisher refused"
    );
    assert_eq!(
        server.paths().get("live/busy").unwrap().source,
        owner,
        "the first keeps the path"
    );

    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&url, 3, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(20)).success(),
        "{}",
        reader.stderr()
    );
    assert!(probe_file(&out).packets_of("video").len() >= 60);
}

#[test]
fn a_vanishing_publisher_ends_readers_and_frees_the_path() {
    let dir = scratch("rtmp-kill");
    // Readers end with their publisher at once (no grace; tests/tests/blip.rs has the grace).
    let server = TestServer::start("pathDefaults:\n  publisherReconnectGrace: 0s\n");
    let url = server.rtmp_url("live/kill");
    let mut publisher = ffmpeg_publish(&url, 60, "flv", &dir);
    server.wait_ready("live/kill", READY);
    // A full GOP in the cache, then the reader joins and at least one more second goes by.
    server.wait_frames("live/kill", 35, READY);
    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&url, 50, &out, &dir);
    server.wait_readers("live/kill", 1, READY);
    server.wait_frames("live/kill", 30, READY);
    publisher.kill9();
    server.wait_not_ready("live/kill", Duration::from_secs(10));
    let started = std::time::Instant::now();
    reader.wait(Duration::from_secs(15));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the reader ended {took:?} after the publisher died"
    );
    // The reader got at least the GOP it started on (1 s of frames).
    assert!(probe_file(&out).packets_of("video").len() >= 25);

    let _again = ffmpeg_publish(&url, 20, "flv", &dir);
    server.wait_ready("live/kill", READY);
}

#[test]
fn rtmps_publish_and_read_and_the_connection_api() {
    let dir = scratch("rtmps");
    let (key, cert) = tidegate_tests::self_signed(&dir);
    let server = TestServer::start(&format!(
        "rtmpEncryption: optional\nrtmpServerKey: {}\nrtmpServerCert: {}\n",
        key.display(),
        cert.display()
    ));
    let url = server.rtmps_url("live/tls");
    let mut publisher = ffmpeg_publish(&url, 30, "flv", &dir);
    server.wait_ready("live/tls", READY);

    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&url, 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), "h264", "aac", 5);

    // optional: the same stream is readable over plain RTMP too.
    let out = dir.join("plain.mkv");
    let mut plain = ffmpeg_read(&server.rtmp_url("live/tls"), 3, &out, &dir);
    assert!(
        plain.wait(Duration::from_secs(30)).success(),
        "{}",
        plain.stderr()
    );
    assert!(probe_file(&out).packets_of("video").len() >= 60);

    // The API lists the publisher on rtmpsconns, and a kick ends it.
    let api = server.api_addr();
    let list = tidegate_tests::http::get_json(api, "/v3/rtmpsconns/list");
    let items = list["items"].as_array().unwrap();
    let conn = items
        .iter()
        .find(|c| c["state"] == "publish")
        .expect("the publisher");
    assert_eq!(conn["path"], "live/tls");
    assert!(conn["bytesReceived"].as_u64().unwrap() > 100_000);
    assert!(conn["remoteAddr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let id = conn["id"].as_str().unwrap();
    let one = tidegate_tests::http::get_json(api, &format!("/v3/rtmpsconns/get/{id}"));
    assert_eq!(one["state"], "publish");
    assert_eq!(
        tidegate_tests::http::get_json(api, "/v3/rtmpconns/list")["itemCount"],
        0
    );
    let (status, _) =
        tidegate_tests::http::request(api, "POST", &format!("/v3/rtmpsconns/kick/{id}"));
    assert_eq!(status, 200);
    server.wait_not_ready("live/tls", Duration::from_secs(10));
    assert!(
        !publisher.wait(Duration::from_secs(20)).success(),
        "a kicked publisher ends"
    );
    let (status, _) = tidegate_tests::http::request(api, "GET", "/v3/rtmpsconns/get/999999");
    assert_eq!(status, 404);
}

/// Largest gap between consecutive video DTS, in the stream's time base units.
fn max_video_gap(p: &Probe) -> i64 {
    let dts: Vec<i64> = p.packets_of("video").iter().filter_map(|f| f.dts).collect();
    dts.windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(i64::MAX)
}

#[test]
fn push_to_two_destinations_survives_one_dying() {
    use tidegate_tests::peers::{free_port, nginx_rtmp};
    let dir = scratch("rtmp-push");
    let (p1, p2) = (free_port(), free_port());
    let mut nginx = nginx_rtmp(p2, &dir);
    let listen = |name: &str, seconds: u32| {
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(["-listen", "1", "-timeout", "30"])
            .args(["-i", &format!("rtmp://127.0.0.1:{p1}/live/sink")])
            .args(["-t", &seconds.to_string(), "-c", "copy"])
            .arg(dir.join(name));
        PeerProcess::spawn(name, &mut cmd, &dir)
    };
    let mut sink1 = listen("sink1.mkv", 60);
    let server = TestServer::start(&format!(
        "paths:\n  live/src:\n    push:\n      - rtmp://127.0.0.1:{p1}/live/sink\n      - rtmp://127.0.0.1:{p2}/live/key\n"
    ));
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/src"), 60, "flv", &dir);
    server.wait_ready("live/src", READY);
    server.wait_readers("live/src", 2, READY);

    // Read from nginx while the other destination dies.
    let out = dir.join("nginx.mkv");
    let mut reader = ffmpeg_read(&format!("rtmp://127.0.0.1:{p2}/live/key"), 8, &out, &dir);
    server.wait_frames("live/src", 60, READY);
    sink1.kill9();
    // Destination 1 comes back: the push reconnects to it.
    let mut sink2 = listen("sink2.mkv", 3);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    let p = probe_file(&out);
    assert_media(&p, "h264", "aac", 8);
    let gap = max_video_gap(&p);
    assert!(
        gap <= 100,
        "nginx's copy has a {gap} ms gap while the other destination died"
    );

    assert!(
        sink2.wait(Duration::from_secs(40)).success(),
        "{}",
        sink2.stderr()
    );
    let p2probe = probe_file(&dir.join("sink2.mkv"));
    assert!(
        p2probe.packets_of("video").len() >= 60,
        "the revived destination receives again: {} video frames in 3 s",
        p2probe.packets_of("video").len()
    );
    assert_eq!(p2probe.codec("audio").as_deref(), Some("aac"));

    let v = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/live/src");
    let push = v["push"].as_array().unwrap();
    assert_eq!(push.len(), 2);
    assert_eq!(push[0]["url"], format!("rtmp://127.0.0.1:{p1}/live/***"));
    assert!(push[0]["reconnects"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(push[1]["reconnects"], 0, "{v}");
    assert_eq!(push[1]["state"], "running", "{v}");
    assert!(push[1]["bytes"].as_u64().unwrap() > 500_000, "{v}");
    nginx.kill9();
}

/// Waits for the pulled path `cam` and reads 5 s of it over RTMP: H.264 + AAC.
fn read_pulled_cam(server: &TestServer, dir: &std::path::Path) {
    server.wait_ready("cam", Duration::from_secs(30));
    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("cam"), 5, &out, dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), "h264", "aac", 5);
}

#[test]
fn a_path_pulls_an_rtmp_source() {
    use tidegate_tests::peers::{free_port, nginx_rtmp};
    let dir = scratch("rtmp-pull");
    let port = free_port();
    let _nginx = nginx_rtmp(port, &dir);
    let _camera = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{port}/live/cam"),
        60,
        "flv",
        &dir,
    );
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: rtmp://127.0.0.1:{port}/live/cam\n"
    ));
    read_pulled_cam(&server, &dir);
    let v = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/cam");
    assert_eq!(v["source"]["type"], "rtmpSource");
    assert_eq!(v["sourceRelay"]["state"], "running");
}

/// `source: rtmps://…` from a third-party RTMPS server (Node-Media-Server) with a self-signed
/// certificate, pinned by `sourceFingerprint`: read back over RTMP. Unpinned, the certificate
/// is refused (no Web PKI root signs it) and the API says so.
#[test]
fn a_path_pulls_an_rtmps_source_pinned_by_fingerprint() {
    use tidegate_tests::peers::{free_port, node_media_server};
    let dir = scratch("rtmps-pull");
    let (key, cert, fingerprint) = tidegate_tests::self_signed_pinned(&dir);
    let (plain, tls) = (free_port(), free_port());
    let _nms = node_media_server(plain, tls, &key, &cert, &dir);
    let _camera = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{plain}/live/cam"),
        60,
        "flv",
        &dir,
    );
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: rtmps://127.0.0.1:{tls}/live/cam\n    sourceFingerprint: \"{fingerprint}\"\n\
         \x20 unpinned:\n    source: rtmps://127.0.0.1:{tls}/live/cam\n"
    ));
    read_pulled_cam(&server, &dir);
    let v = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/cam");
    assert_eq!(v["sourceRelay"]["state"], "running", "{v}");
    let err = server.wait_source_error("unpinned", "UnknownIssuer", Duration::from_secs(15));
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(!server.paths().get("unpinned").is_some_and(|p| p.ready));
}

#[test]
fn legacy_audio_codecs_pass_through() {
    let dir = scratch("rtmp-legacy-audio");
    let server = TestServer::start("");
    for (name, codec, args) in [
        (
            "mp3",
            "mp3",
            &["-c:a", "libmp3lame", "-ar", "44100", "-b:a", "96k"][..],
        ),
        (
            "alaw",
            "pcm_alaw",
            &["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"][..],
        ),
        (
            "mulaw",
            "pcm_mulaw",
            &["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"][..],
        ),
    ] {
        let path = format!("live/{name}");
        let url = server.rtmp_url(&path);
        let mut src = synthetic_source(30, "640x360");
        // Replace the AAC encoder settings with this codec's.
        let at = src.iter().position(|a| a == "-c:a").unwrap();
        src.truncate(at);
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(src).args(args).args(["-f", "flv", &url]);
        let _publisher = PeerProcess::spawn(&format!("publish-{name}"), &mut cmd, &dir);
        server.wait_ready(&path, READY);
        let out = dir.join(format!("{name}.mkv"));
        let mut reader = ffmpeg_read(&url, 3, &out, &dir);
        assert!(
            reader.wait(Duration::from_secs(30)).success(),
            "{}",
            reader.stderr()
        );
        let p = probe_file(&out);
        assert_eq!(p.codec("audio").as_deref(), Some(codec), "{name}");
        assert_eq!(p.codec("video").as_deref(), Some("h264"));
        assert!(p.packets_of("audio").len() >= 20, "{name}: audio flows");
        assert!(p.dts_monotonic("audio"), "{name}");
    }
}

#[test]
fn av1_and_vp9_over_enhanced_rtmp() {
    let dir = scratch("rtmp-av1-vp9");
    let server = TestServer::start("");
    for (name, codec, encoder) in [
        (
            "av1",
            "av1",
            &[
                "-c:v",
                "libsvtav1",
                "-preset",
                "12",
                "-g",
                "30",
                "-svtav1-params",
                "lp=1",
            ][..],
        ),
        (
            "vp9",
            "vp9",
            &[
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-g",
                "30",
                "-b:v",
                "1000k",
            ][..],
        ),
    ] {
        let path = format!("live/{name}");
        let url = server.rtmp_url(&path);
        let mut cmd = Command::new(peer("ffmpeg9"));
        cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
            .args([
                "-t", "30", "-map", "0:v", "-map", "1:a", "-pix_fmt", "yuv420p",
            ])
            .args(encoder)
            .args(["-c:a", "aac", "-ac", "2", "-ar", "48000", "-f", "flv", &url]);
        let _publisher = PeerProcess::spawn(&format!("publish-{name}"), &mut cmd, &dir);
        server.wait_ready(&path, READY);
        let out = dir.join(format!("{name}.mkv"));
        let mut cmd = Command::new(peer("ffmpeg9"));
        cmd.args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-i",
            &url,
        ])
        .args(["-t", "3", "-c", "copy"])
        .arg(&out);
        let mut reader = PeerProcess::spawn(&format!("read-{name}"), &mut cmd, &dir);
        assert!(
            reader.wait(Duration::from_secs(30)).success(),
            "{}",
            reader.stderr()
        );
        let p = probe_file(&out);
        assert_eq!(p.codec("video").as_deref(), Some(codec), "{name}");
        assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{name}");
        assert_eq!(p.dimensions(), Some((640, 360)), "{name}");
        assert!(
            p.packets_of("video").len() >= 45,
            "{name}: {} frames",
            p.packets_of("video").len()
        );
        assert!(
            p.packets_of("video")[0].keyframe,
            "{name}: starts on a keyframe"
        );
        assert!(p.dts_monotonic("video"), "{name}");
    }
}

/// A publisher that switches resolution mid-stream (new SPS/PPS in a new sequence header):
/// the change reaches the registry in band and a reader decodes both sizes.
#[test]
fn parameter_changes_mid_stream_reach_readers() {
    use tidegate_rtmp::client::{ClientEvent, ClientSession, Mode};
    use tidegate_rtmp::flv::read_file;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = scratch("rtmp-param-change");
    let clip = |name: &str, size: &str| {
        let path = dir.join(name);
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(synthetic_source(3, size))
            .args(["-f", "flv"])
            .arg(&path);
        let mut p = PeerProcess::spawn(name, &mut cmd, &dir);
        assert!(p.wait(Duration::from_secs(30)).success(), "{}", p.stderr());
        read_file(&std::fs::read(&path).unwrap()).unwrap()
    };
    // Encoded in real time by synthetic_source (-re): about 3 s each.
    let a = clip("a.flv", "640x360");
    let b = clip("b.flv", "320x180");
    let server = TestServer::start("");
    let addr = server.rtmp_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let publisher = rt.spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut session = ClientSession::new(Mode::Publish, "live", "rtmp://h/live", "switch");
        let mut buf = vec![0u8; 65536];
        loop {
            s.write_all(&session.take_output()).await.unwrap();
            if let Some(ClientEvent::Started) = session.poll_event() {
                break;
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed");
            session.feed(&buf[..n]).unwrap();
        }
        // Clip A, then clip B with its own sequence headers, timestamps continuing, paced in
        // real time.
        let start = tokio::time::Instant::now();
        let offset = a.last().map_or(0, |t| t.timestamp + 33);
        let tags = a
            .iter()
            .map(|t| (t.timestamp, t))
            .chain(b.iter().map(|t| (t.timestamp + offset, t)));
        for (ts, t) in tags {
            tokio::time::sleep_until(start + Duration::from_millis(u64::from(ts))).await;
            session.send_media(t.type_id, ts, &t.body);
            s.write_all(&session.take_output()).await.unwrap();
        }
    });
    server.wait_ready("live/switch", READY);
    let out = dir.join("read.flv");
    let mut reader = ffmpeg_read(&server.rtmp_url("live/switch"), 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    rt.block_on(publisher).unwrap();
    let frames = tidegate_tests::run_bounded(
        Command::new(peer("ffprobe"))
            .args([
                "-v",
                "error",
                "-select_streams",
                "v",
                "-show_entries",
                "frame=width,height",
            ])
            .args(["-of", "csv=p=0"])
            .arg(&out),
        Duration::from_secs(30),
    );
    let tags = read_file(&std::fs::read(&out).unwrap()).unwrap();
    let headers = tags
        .iter()
        .filter(|t| t.type_id == 9 && t.body.get(..2) == Some(&[0x17, 0][..]))
        .count();
    assert!(
        headers >= 2,
        "{headers} AVC sequence headers reached the reader"
    );
    let text = String::from_utf8_lossy(&frames.stdout);
    let big = text.lines().filter(|l| l.trim() == "640,360").count();
    let small = text.lines().filter(|l| l.trim() == "320,180").count();
    assert!(
        big >= 30 && small >= 30,
        "decoded {big} frames at 640x360 and {small} at 320x180"
    );
}

/// Garbage, a truncated handshake, a lying chunk header and a flood of chunk streams each close
/// their own connection; a publish and a read going on at the same time are untouched.
#[test]
fn bad_input_closes_only_its_own_connection() {
    use std::io::{Read, Write};
    let dir = scratch("rtmp-bad-input");
    let server = TestServer::start("");
    let url = server.rtmp_url("live/steady");
    let _publisher = ffmpeg_publish(&url, 30, "flv", &dir);
    server.wait_ready("live/steady", READY);
    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&url, 6, &out, &dir);

    let mut handshake = vec![3u8];
    handshake.extend(std::iter::repeat_n(0u8, 1536 * 2));
    let mut flood = handshake.clone();
    for csid in 3..200u8 {
        // Type-0 headers of 1000-byte messages on ever new chunk streams, never finished.
        flood.extend_from_slice(&[csid & 0x3f, 0, 0, 0, 0, 3, 0xe8, 9, 1, 0, 0, 0]);
        flood.extend(std::iter::repeat_n(0u8, 128));
        flood.extend_from_slice(&[0, csid, 0, 0, 0, 0, 3, 0xe8, 9, 1, 0, 0, 0]);
        flood.extend(std::iter::repeat_n(0u8, 128));
    }
    let mut lying = handshake.clone();
    lying.extend_from_slice(&[0x43, 0, 0, 0, 0, 0, 1, 8]); // type 3 with no header before
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("rtmpe", vec![6u8; 1537]),
        ("lying chunk header", lying),
        ("chunk stream flood", flood),
        ("huge chunk size", {
            let mut v = handshake.clone();
            v.extend_from_slice(&[2, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
            v
        }),
    ];
    for (name, bytes) in cases {
        let mut s = std::net::TcpStream::connect(server.rtmp_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&bytes);
        // The server closes the connection (EOF or reset), within the timeout.
        let mut sink = vec![0u8; 65536];
        let closed = loop {
            match s.read(&mut sink) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "{name}: the server should close the connection");
    }
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    let p = probe_file(&out);
    assert_media(&p, "h264", "aac", 6);
    assert!(max_video_gap(&p) <= 100, "the reader saw no gap");
    assert!(server.paths().get("live/steady").unwrap().ready);
}

#[test]
fn rtmps_strict_serves_only_tls() {
    let dir = scratch("rtmps-strict");
    let (key, cert) = tidegate_tests::self_signed(&dir);
    let server = TestServer::start(&format!(
        "rtmpEncryption: strict\nrtmpServerKey: {}\nrtmpServerCert: {}\n",
        key.display(),
        cert.display()
    ));
    assert!(!server.has_plain_rtmp(), "strict: no plain RTMP listener");
    let url = server.rtmps_url("live/strict");
    let _publisher = ffmpeg_publish(&url, 30, "flv", &dir);
    server.wait_ready("live/strict", READY);
    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&url, 3, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), "h264", "aac", 3);
}

/// RTMPT requests whose one-byte bodies arrive after their heads (a slow link, or a loaded
/// machine: seen in CI) keep their HTTP connection, as ffmpeg, which sends each next request
/// on the same connection, needs: an open, an idle and a close, each body 300 ms after its
/// head, all answered on one connection. hyper closed a connection whose request body was
/// not read whole when the answer left, and ffmpeg failed with a broken pipe.
#[test]
fn rtmpt_bodies_that_come_after_their_heads_keep_the_connection() {
    use std::io::Write;
    let server = TestServer::start("");
    let mut c = std::net::TcpStream::connect(server.hls_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    let mut ask = |path: &str| -> Result<(u16, Vec<u8>), String> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: tidegate\r\nConnection: keep-alive\r\n\
             Content-Type: application/x-fcs\r\nContent-Length: 1\r\n\r\n"
        );
        c.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
        // The client's pace, not a wait for the server: the body comes late on purpose.
        std::thread::sleep(Duration::from_millis(300));
        c.write_all(&[0]).map_err(|e| e.to_string())?;
        tidegate_tests::http::answer_on(&mut c)
    };
    let (status, body) = ask("/open/1").unwrap();
    assert_eq!(status, 200);
    let id = String::from_utf8(body).unwrap().trim().to_string();
    assert_eq!(id.len(), 32, "{id:?}");
    let (status, body) = ask(&format!("/idle/{id}/1"))
        .unwrap_or_else(|e| panic!("the idle after the open, on the same connection: {e}"));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        [3],
        "an idle session answers the interval byte 3 and no data"
    );
    let (status, _) = ask(&format!("/close/{id}/2"))
        .unwrap_or_else(|e| panic!("the close after the idle, on the same connection: {e}"));
    assert_eq!(status, 200);
}

/// RTMPT (RTMP over HTTP, on the HLS listener): ffmpeg publishes with `rtmpt://` and reads
/// back with `rtmpt://` and plain RTMP; a tunnelled reader killed without a word is closed
/// after `readTimeout` (no session left behind), while the publish carries on.
/// `readTimeout` is short so that the test is, but not so short that a publisher whose encoder
/// is starved of CPU on a loaded machine for a few seconds (no request meanwhile) is taken
/// for a dead one.
#[test]
fn rtmpt_publishes_and_plays_through_http() {
    let dir = scratch("rtmpt");
    let server = TestServer::start("readTimeout: 8s\n");
    let rtmpt = |path: &str| format!("rtmpt://{}/{path}", server.hls_addr());
    let publisher = ffmpeg_publish(&rtmpt("live/cam"), 40, "flv", &dir);
    server.wait_ready_of("live/cam", READY, &publisher, &["RTMPT"]);

    for (what, url) in [
        ("rtmpt", rtmpt("live/cam")),
        ("rtmp", server.rtmp_url("live/cam")),
    ] {
        let out = dir.join(format!("{what}.mkv"));
        let mut reader = ffmpeg_read(&url, 5, &out, &dir);
        let status = reader.wait(Duration::from_secs(30));
        assert!(status.success(), "{what} reader: {}", reader.stderr());
        let p = probe_file(&out);
        eprintln!(
            "{what}: {} video, {} audio frames",
            p.packets_of("video").len(),
            p.packets_of("audio").len()
        );
        assert_media(&p, "h264", "aac", 5);
        assert!(
            p.packets_of("video")[0].keyframe,
            "{what}: starts on a keyframe"
        );
    }
    // A tunnelled reader that vanishes (kill -9: no /close) is closed after readTimeout.
    let mut reader = ffmpeg_read(&rtmpt("live/cam"), 30, &dir.join("killed.mkv"), &dir);
    server.wait_readers("live/cam", 1, READY);
    reader.kill9();
    tidegate_tests::poll(
        Duration::from_secs(30),
        || "the killed RTMPT reader's session is still open".into(),
        || {
            let info = server.paths().get("live/cam")?;
            (info.ready && info.readers.is_empty()).then_some(())
        },
    );
}
