//! Streams received, MediaMTX's `udp+mpegts://`, `unix+mpegts://` and `udp+rtp://` sources:
//! ffmpeg sends TS over unicast UDP, over a Unix socket and over RTP (MP2T); GStreamer sends
//! TS to a multicast group, and RTP H.264 + Opus to another (with `rtpSDP`); each path is
//! read back over RTMP (ffprobe) and WHEP (aiortc) with frame counts.
//!
//! Multicast needs a route; the server and every peer run in a network namespace of their own
//! whose loopback carries multicast, so nothing leaves the machine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::PeerProcess;
use tidegate_tests::{ffprobe_via, in_ns, peer, poll, run_bounded, scratch, server_binary};

/// ffmpeg sending the synthetic source as MPEG-TS over RTP.
fn ffmpeg_ts_rtp(url: &str) -> Command {
    let mut c = Command::new(peer("ffmpeg"));
    c.args(tidegate_tests::peers::synthetic_source(120, "640x360"))
        .args(["-f", "rtp_mpegts", url]);
    c
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("tidegate.stderr")).unwrap_or_default()
}

/// The API's view of a path, fetched inside the namespace.
fn path_info(pid: u32, path: &str) -> Option<serde_json::Value> {
    let mut curl = Command::new(peer("curl"));
    curl.args(["-s", "-m", "5"])
        .arg(format!("http://127.0.0.1:9997/v3/paths/get/{path}"));
    let out = run_bounded(&mut in_ns(pid, &curl), Duration::from_secs(10));
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn mpegts_over_udp_unicast_multicast_and_unix_is_published() {
    let dir = scratch("udp-ingest");
    let sock = dir.join("cam.sock");
    std::fs::write(
        dir.join("t.yml"),
        format!(
            "api: yes\napiAddress: 127.0.0.1:9997\nrtmpAddress: 127.0.0.1:1935\n\
             rtspAddress: 127.0.0.1:8554\nhls: no\nsrt: no\nmetrics: no\n\
             webrtcAddress: 127.0.0.1:8889\nwebrtcLocalUDPAddress: 127.0.0.1:8189\n\
             keyStore: {keys}\n\
             paths:\n\
             \x20 udpcam:\n    source: udp+mpegts://127.0.0.1:5000\n\
             \x20 mcast:\n    source: udp+mpegts://239.255.0.7:5002?interface=lo\n\
             \x20 unixcam:\n    source: unix+mpegts://{sock}\n\
             \x20 rtpcam:\n    source: udp+rtp://239.255.0.8:5006?interface=lo\n\
             \x20   rtpSDP: |\n\
             \x20     v=0\n\
             \x20     o=- 0 0 IN IP4 127.0.0.1\n\
             \x20     s=cam\n\
             \x20     c=IN IP4 239.255.0.8\n\
             \x20     t=0 0\n\
             \x20     m=video 5006 RTP/AVP 96\n\
             \x20     a=rtpmap:96 H264/90000\n\
             \x20     a=fmtp:96 packetization-mode=1\n\
             \x20     m=audio 5006 RTP/AVP 97\n\
             \x20     a=rtpmap:97 opus/48000/2\n\
             \x20 rtpts:\n    source: udp+rtp://127.0.0.1:5008\n\
             \x20   rtpSDP: \"v=0\\r\\no=- 0 0 IN IP4 127.0.0.1\\r\\ns=ts\\r\\nt=0 0\\r\\nm=video 5008 RTP/AVP 33\\r\\na=rtpmap:33 MP2T/90000\\r\\n\"\n",
            keys = dir.join("keys.db").display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    let mut unshare = Command::new(peer("unshare"));
    unshare
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && ip link set lo multicast on && \
             ip route add 224.0.0.0/4 dev lo && exec \"$0\" t.yml",
        ])
        .arg(server_binary())
        .current_dir(&dir);
    let mut server = PeerProcess::spawn("tidegate", &mut unshare, &dir);
    let pid = server.pid();
    poll(
        Duration::from_secs(30),
        || format!("not listening:\n{}", log_of(&dir)),
        || {
            let log = log_of(&dir);
            (log.matches("[MPEG-TS] listening").count() == 3
                && log.matches("[RTP] listening").count() == 2)
                .then_some(())
        },
    );

    // ffmpeg: TS over unicast UDP, and over the Unix socket.
    let ffmpeg_ts = |url: &str| {
        let mut c = Command::new(peer("ffmpeg"));
        c.args(tidegate_tests::peers::synthetic_source(120, "640x360"))
            .args(["-f", "mpegts", url]);
        c
    };
    let mut udp = PeerProcess::spawn(
        "ffmpeg-udp",
        &mut in_ns(pid, &ffmpeg_ts("udp://127.0.0.1:5000?pkt_size=1316")),
        &dir,
    );
    let mut unix = PeerProcess::spawn(
        "ffmpeg-unix",
        &mut in_ns(pid, &ffmpeg_ts(&format!("unix://{}", sock.display()))),
        &dir,
    );
    // GStreamer: TS to a multicast group.
    let mut gst = Command::new(peer("gst-launch-1.0"));
    gst.args(["-q", "-e"]).args(
        "videotestsrc is-live=true num-buffers=3600 ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
         ! mpegtsmux name=m alignment=7 \
         ! udpsink host=239.255.0.7 port=5002 auto-multicast=true multicast-iface=lo ttl-mc=0 \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! m."
            .split_whitespace(),
    );
    let mut mcast = PeerProcess::spawn("gst-multicast", &mut in_ns(pid, &gst), &dir);
    // GStreamer: RTP H.264 and Opus to one multicast port (told apart by payload type).
    let mut gst = Command::new(peer("gst-launch-1.0"));
    gst.args(["-q", "-e"]).args(
        "videotestsrc is-live=true num-buffers=3600 ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 \
         ! rtph264pay pt=96 config-interval=-1 mtu=1400 \
         ! udpsink host=239.255.0.8 port=5006 auto-multicast=true multicast-iface=lo ttl-mc=0 \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! opusenc ! rtpopuspay pt=97 \
         ! udpsink host=239.255.0.8 port=5006 auto-multicast=true multicast-iface=lo ttl-mc=0"
            .split_whitespace(),
    );
    let mut rtp = PeerProcess::spawn("gst-rtp", &mut in_ns(pid, &gst), &dir);
    // ffmpeg: MPEG-TS over RTP (MP2T), unicast.
    let mut rtp_ts = PeerProcess::spawn(
        "ffmpeg-rtp-mpegts",
        &mut in_ns(pid, &ffmpeg_ts_rtp("rtp://127.0.0.1:5008?pkt_size=1328")),
        &dir,
    );

    for (path, audio) in [
        ("udpcam", "aac"),
        ("mcast", "aac"),
        ("unixcam", "aac"),
        ("rtpcam", "opus"),
        ("rtpts", "aac"),
    ] {
        let info = poll(
            Duration::from_secs(30),
            || format!("{path} not ready:\n{}", log_of(&dir)),
            || path_info(pid, path).filter(|v| v["ready"] == true),
        );
        let audio_track = if audio == "opus" {
            "Opus"
        } else {
            "MPEG-4 Audio"
        };
        assert_eq!(
            info["tracks"],
            serde_json::json!(["H264", audio_track]),
            "{info}"
        );
        // Read back over RTMP.
        let probe = ffprobe_via(
            |c| in_ns(pid, &c),
            &format!("rtmp://127.0.0.1:1935/{path}"),
            &["-read_intervals", "%+4"],
            Duration::from_secs(40),
        );
        let frames = probe.packets_of("video").len();
        eprintln!("{path} over RTMP: {frames} video frames in 4 s");
        assert_eq!(probe.codec("video").as_deref(), Some("h264"), "{path}");
        // RTMP carries Opus as it is for ffmpeg? No: ffmpeg does not list Opus, so the
        // audio bridge gives it AAC.
        assert_eq!(
            probe.codec("audio").as_deref(),
            Some("aac"),
            "{path} ({audio} in)"
        );
        assert_eq!(probe.dimensions(), Some((640, 360)), "{path}");
        assert!(frames >= 90, "{path}: {frames} frames");
        assert!(probe.dts_monotonic("video"), "{path}");
        // And over WHEP.
        let v = &tidegate_tests::peers::aiortc_whep_viewer(
            |c| in_ns(pid, &c),
            &format!("http://127.0.0.1:8889/{path}/whep"),
            4,
        );
        eprintln!("{path} over WHEP: {v}");
        // Live 30 fps video from its first frame (which comes within a GOP of the offer).
        let frames = v["frames"].as_f64().unwrap_or(0.0);
        let fps = v["unique_pts"].as_f64().unwrap_or(0.0)
            / v["pts_span_s"].as_f64().unwrap_or(1.0).max(0.001);
        assert!(frames >= 60.0 && fps >= 25.0, "{path}: {fps:.1} fps: {v}");
        assert_eq!(v["pts_monotonic"], true, "{path}: {v}");
        assert!(
            v["audio_frames"].as_u64().unwrap_or(0) >= 100,
            "{path}: {v}"
        );
        assert_eq!(v["width"], 640, "{path}: {v}");
    }

    // A sender that stops: its path goes unready after readTimeout (10 s) and is published
    // again when it comes back.
    udp.kill9();
    poll(
        Duration::from_secs(30),
        || "udpcam stayed ready after its sender stopped".into(),
        || path_info(pid, "udpcam").filter(|v| v["ready"] == false),
    );
    let mut udp2 = PeerProcess::spawn(
        "ffmpeg-udp2",
        &mut in_ns(pid, &ffmpeg_ts("udp://127.0.0.1:5000?pkt_size=1316")),
        &dir,
    );
    poll(
        Duration::from_secs(30),
        || "udpcam not published again".into(),
        || path_info(pid, "udpcam").filter(|v| v["ready"] == true),
    );
    let api = get_json_in_ns(pid, "/v3/paths/get/udpcam");
    assert_eq!(api["source"]["type"], "mpegtsSource", "{api}");
    for p in [
        &mut udp2,
        &mut unix,
        &mut mcast,
        &mut rtp,
        &mut rtp_ts,
        &mut server,
    ] {
        p.kill9();
    }
}

fn get_json_in_ns(pid: u32, path: &str) -> serde_json::Value {
    let mut curl = Command::new(peer("curl"));
    curl.args(["-s", "-m", "5"])
        .arg(format!("http://127.0.0.1:9997{path}"));
    let out = run_bounded(&mut in_ns(pid, &curl), Duration::from_secs(10));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}
