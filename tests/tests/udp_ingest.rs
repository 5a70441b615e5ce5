//! MPEG-TS received, MediaMTX's `udp+mpegts://` and `unix+mpegts://` sources: ffmpeg sends TS
//! over unicast UDP and over a Unix socket, GStreamer to a multicast group; each path is read
//! back over RTMP (ffprobe) and WHEP (aiortc) with frame counts.
//!
//! Multicast needs a route; the server and every peer run in a network namespace of their own
//! whose loopback carries multicast, so nothing leaves the machine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::PeerProcess;
use tidegate_tests::{ffprobe_via, peer, poll, run_bounded, scratch, server_binary};

fn in_ns(pid: u32, cmd: &Command) -> Command {
    let mut c = Command::new(peer("nsenter"));
    c.arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
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
             \x20 unixcam:\n    source: unix+mpegts://{sock}\n",
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
        || (log_of(&dir).matches("[MPEG-TS] listening").count() == 3).then_some(()),
    );

    // ffmpeg: TS over unicast UDP, and over the Unix socket.
    let ffmpeg_ts = |url: &str| {
        let mut c = Command::new(peer("ffmpeg"));
        c.args(tidegate_tests::peers::synthetic_source(40, "640x360"))
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
        "videotestsrc is-live=true num-buffers=1200 ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
         ! mpegtsmux name=m alignment=7 \
         ! udpsink host=239.255.0.7 port=5002 auto-multicast=true multicast-iface=lo ttl-mc=0 \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! m."
            .split_whitespace(),
    );
    let mut mcast = PeerProcess::spawn("gst-multicast", &mut in_ns(pid, &gst), &dir);

    for path in ["udpcam", "mcast", "unixcam"] {
        let info = poll(
            Duration::from_secs(30),
            || format!("{path} not ready:\n{}", log_of(&dir)),
            || path_info(pid, path).filter(|v| v["ready"] == true),
        );
        assert_eq!(
            info["tracks"],
            serde_json::json!(["H264", "MPEG-4 Audio"]),
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
        assert_eq!(probe.codec("audio").as_deref(), Some("aac"), "{path}");
        assert_eq!(probe.dimensions(), Some((640, 360)), "{path}");
        assert!(frames >= 90, "{path}: {frames} frames");
        assert!(probe.dts_monotonic("video"), "{path}");
        // And over WHEP.
        let mut whep = Command::new(peer("python"));
        whep.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
            .args(["whep", &format!("http://127.0.0.1:8889/{path}/whep")])
            .args(["--seconds", "4"]);
        let out = run_bounded(&mut in_ns(pid, &whep), Duration::from_secs(60));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{path} WHEP: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let v = &report["viewers"][0];
        eprintln!("{path} over WHEP: {v}");
        assert!(v["frames"].as_u64().unwrap_or(0) >= 90, "{path}: {v}");
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
    for p in [&mut udp2, &mut unix, &mut mcast, &mut server] {
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
