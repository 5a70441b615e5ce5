//! RTSP against real peers: ffmpeg and GStreamer publish (TCP and UDP, H.264 + AAC, H.265)
//! and read (TCP and UDP); any ingest reaches RTSP and RTSP reaches every egress; credentials
//! (Basic and Digest); hostile input closes only its own connection.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, peer, run_bounded, scratch, server_binary, Probe};

const READY: Duration = Duration::from_secs(15);

fn probe_file(path: &std::path::Path) -> Probe {
    ffprobe(path.to_str().unwrap(), &[], Duration::from_secs(30))
}

fn assert_media(p: &Probe, video: &str, audio: Option<&str>, seconds: u32) {
    assert_media_from(p, video, audio, seconds, seconds as usize * 30 - 30);
}

/// As [`assert_media`], with at least `min_frames` video frames: for a camera stand-in that
/// encodes in real time in the test and drops frames when the machine is short of CPU (the
/// multicast camera in its namespace: 77 frames in 4 s once on a loaded CI run).
fn assert_media_from(p: &Probe, video: &str, audio: Option<&str>, seconds: u32, min_frames: usize) {
    assert_eq!(p.codec("video").as_deref(), Some(video), "{:#?}", p.streams);
    assert_eq!(p.codec("audio").as_deref(), audio, "{:#?}", p.streams);
    assert_eq!(p.dimensions(), Some((640, 360)));
    let frames = p.packets_of("video").len();
    let expected = seconds as usize * 30;
    assert!(
        frames >= min_frames && frames <= expected + 30,
        "{frames} video frames for {seconds} s"
    );
    if audio.is_some() {
        let a = p.packets_of("audio").len();
        assert!(
            a as f64 >= (f64::from(seconds) - 1.0) * 46.0,
            "{a} audio frames"
        );
    }
    assert!(p.dts_monotonic("video"), "video DTS not monotonic");
}

/// ffmpeg reading `url` over RTSP with `transport` for `seconds`.
fn ffmpeg_rtsp_read(
    url: &str,
    transport: &str,
    seconds: u32,
    out: &std::path::Path,
    dir: &std::path::Path,
) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-rtsp_transport", transport, "-i", url])
        .args(["-t", &seconds.to_string(), "-c", "copy"])
        .arg(out);
    PeerProcess::spawn("ffmpeg-rtsp-read", &mut cmd, dir)
}

fn read_and_check(
    url: &str,
    transport: &str,
    video: &str,
    audio: Option<&str>,
    dir: &std::path::Path,
) {
    let out = dir.join(format!("read-{transport}.mkv"));
    let mut r = ffmpeg_rtsp_read(url, transport, 4, &out, dir);
    assert!(
        r.wait(Duration::from_secs(30)).success(),
        "{transport}: {}",
        r.stderr()
    );
    assert_media(&probe_file(&out), video, audio, 4);
}

/// The gst-launch arguments that read `url` with rtspsrc and decode both tracks into fakesinks
/// that log every buffer.
fn gst_rtsp_args(url: &str, protocols: &str) -> Vec<String> {
    let mut args = vec![
        "-e".to_string(),
        "-v".to_string(),
        "rtspsrc".to_string(),
        format!("location={url}"),
        format!("protocols={protocols}"),
        "name=s".to_string(),
    ];
    if url.starts_with("rtsps://") {
        // The tests' certificates are self-signed.
        args.push("tls-validation-flags=0".to_string());
    }
    for sink in ["x", "y"] {
        for a in ["s.", "!", "queue", "!", "decodebin", "!", "fakesink"] {
            args.push(a.to_string());
        }
        args.push(format!("name={sink}"));
        args.push("silent=false".to_string());
        args.push("sync=true".to_string());
    }
    args
}

/// What gst-launch -v printed: (decoded buffers on both sinks, the first video caps).
fn gst_buffers_and_caps(log: &str) -> (usize, String) {
    (
        log.matches("last-message = chain").count(),
        tidegate_tests::gst_video_caps(log),
    )
}

/// GStreamer rtspsrc for `seconds`: (decoded buffers on both sinks, the first video caps).
fn gst_rtsp_read(url: &str, protocols: &str, seconds: u64) -> (usize, String) {
    let out = run_bounded(
        Command::new(peer("timeout"))
            .args(["-s", "INT", "-k", "5", &seconds.to_string()])
            .arg(peer("gst-launch-1.0"))
            .args(gst_rtsp_args(url, protocols)),
        Duration::from_secs(seconds + 15),
    );
    gst_buffers_and_caps(&String::from_utf8_lossy(&out.stdout))
}

/// GStreamer rtspsrc reads `url` over `protocols` for 6 s: at least 200 buffers decoded on
/// its two sinks, video 640x360.
fn gst_reads_640x360(url: &str, protocols: &str) {
    let (buffers, caps) = gst_rtsp_read(url, protocols, 6);
    eprintln!("GStreamer over {protocols} from {url}: {buffers} buffers");
    assert!(
        buffers >= 200,
        "GStreamer ({protocols}) decoded only {buffers} buffers"
    );
    assert!(caps.contains("width=(int)640, height=(int)360"), "{caps}");
}

/// ffmpeg publishes H.264 + AAC over RTSP/TCP and over RTSP/UDP; ffmpeg reads each back over
/// TCP and UDP, GStreamer (rtspsrc) over TCP and UDP.
#[test]
fn ffmpeg_publishes_over_tcp_and_udp_and_ffmpeg_and_gstreamer_read() {
    let dir = scratch("rtsp-ffmpeg");
    let server = TestServer::start("");
    for publish in ["tcp", "udp"] {
        let path = format!("live/{publish}");
        let url = server.rtsp_url(&path);
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(tidegate_tests::peers::synthetic_source(40, "640x360"))
            .args(["-f", "rtsp", "-rtsp_transport", publish, &url]);
        let _publisher = PeerProcess::spawn(&format!("publish-{publish}"), &mut cmd, &dir);
        server.wait_ready(&path, READY);
        assert_eq!(
            server.paths().get(&path).unwrap().tracks,
            vec!["H264", "MPEG-4 Audio"]
        );
        for read in ["tcp", "udp"] {
            read_and_check(&url, read, "h264", Some("aac"), &dir);
        }
        for protocols in ["tcp", "udp"] {
            gst_reads_640x360(&url, protocols);
        }
    }
}

/// A GStreamer reader of `url` over `protocols` runs until its receiver reports reach the API
/// (`list`: `rtspsessions` or `rtspssessions`): its read session, once RTCP has come in.
fn gst_reader_reports(
    server: &TestServer,
    url: &str,
    protocols: &str,
    list: &str,
    dir: &std::path::Path,
) -> serde_json::Value {
    let mut cmd = Command::new(peer("timeout"));
    cmd.args(["-s", "INT", "-k", "5", "40"])
        .arg(peer("gst-launch-1.0"))
        .args(gst_rtsp_args(url, protocols));
    let _reader = PeerProcess::spawn(&format!("gst-reports-{protocols}"), &mut cmd, dir);
    let transport = protocols.to_uppercase();
    let entry = server.wait_api_entry(list, Duration::from_secs(25), "with a report", |e| {
        e["state"] == "read"
            && e["transport"] == transport.as_str()
            && e["rtcpPacketsReceived"].as_u64() >= Some(1)
    });
    eprintln!("GStreamer reader over {protocols}: {entry}");
    entry
}

/// Readers' RTCP receiver reports reach the API: GStreamer's over UDP and over TCP (loss 0
/// and a small jitter on loopback), and a hand-made report over TCP whose figures come back
/// exactly (42 lost, 9000 ticks of 90 kHz = 0.1 s jitter).
#[test]
fn readers_receiver_reports_show_loss_and_jitter() {
    let dir = scratch("rtsp-reports");
    let server = TestServer::start("");
    let url = server.rtsp_url("live/rr");
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(tidegate_tests::peers::synthetic_source(60, "640x360"))
        .args(["-f", "rtsp", "-rtsp_transport", "tcp", &url]);
    let _publisher = PeerProcess::spawn("publish", &mut cmd, &dir);
    server.wait_ready("live/rr", READY);

    for protocols in ["udp", "tcp"] {
        let e = gst_reader_reports(&server, &url, protocols, "rtspsessions", &dir);
        assert_eq!(e["rtpPacketsLost"], 0, "{e}");
        let jitter = e["rtpPacketsJitter"].as_f64().unwrap();
        assert!((0.0..0.5).contains(&jitter), "{e}");
    }

    // By hand: DESCRIBE, SETUP the video over TCP, PLAY, then a receiver report on channel 1.
    let mut s = TcpStream::connect(rtsp_addr(&server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap().to_string();
    let r = rtsp_send(
        &mut s,
        &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    let r = rtsp_send(
        &mut s,
        &format!(
            "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\n\
             Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
        ),
    );
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    let session = session_id(&r);
    let r = rtsp_send(
        &mut s,
        &format!("PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    // Keep reading what the server sends, so its writes never stall.
    let mut drain = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut rr = vec![0x81, 201, 0, 7];
    rr.extend_from_slice(&7u32.to_be_bytes()); // the reader's SSRC
    rr.extend_from_slice(&0x1234u32.to_be_bytes()); // the source's
    rr.extend_from_slice(&((16u32 << 24) | 42).to_be_bytes()); // 16/256 lately, 42 in all
    rr.extend_from_slice(&5000u32.to_be_bytes()); // highest sequence number
    rr.extend_from_slice(&9000u32.to_be_bytes()); // jitter, 90 kHz ticks
    rr.extend_from_slice(&[0; 8]); // LSR, DLSR
    let mut framed = vec![b'$', 1, 0, rr.len() as u8];
    framed.extend_from_slice(&rr);
    s.write_all(&framed).unwrap();
    let e = server.wait_api_entry("rtspsessions", Duration::from_secs(10), "from us", |e| {
        e["remoteAddr"] == local.as_str() && e["rtcpPacketsReceived"] == 1
    });
    assert_eq!(e["rtpPacketsLost"], 42, "{e}");
    assert!(
        (e["rtpPacketsJitter"].as_f64().unwrap() - 0.1).abs() < 1e-3,
        "{e}"
    );
    // A malformed report is not counted, and the session carries on: the next report (50
    // lost) is read, and two reports in all were counted.
    s.write_all(&[b'$', 1, 0, 4, 0x81, 201, 0, 9]).unwrap();
    framed[16..20].copy_from_slice(&((16u32 << 24) | 50).to_be_bytes());
    s.write_all(&framed).unwrap();
    let e = server.wait_api_entry("rtspsessions", Duration::from_secs(10), "from us", |e| {
        e["remoteAddr"] == local.as_str() && e["rtpPacketsLost"] == 50
    });
    assert_eq!(e["rtcpPacketsReceived"], 2, "{e}");
}

/// GStreamer rtspclientsink publishes H.265; ffmpeg reads H.265 back.
#[test]
fn gstreamer_publishes_h265_and_ffmpeg_reads_it() {
    let dir = scratch("rtsp-h265");
    let server = TestServer::start("");
    let url = server.rtsp_url("cam265");
    let pipeline = format!(
        "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h265parse config-interval=-1 \
         ! rtspclientsink location={url} protocols=tcp"
    );
    let mut cmd = Command::new(peer("gst-launch-1.0"));
    cmd.arg("-q").args(pipeline.split_whitespace());
    let _gst = PeerProcess::spawn("gst-rtspclientsink", &mut cmd, &dir);
    server.wait_ready("cam265", READY);
    assert_eq!(server.paths().get("cam265").unwrap().tracks, vec!["H265"]);
    read_and_check(&url, "tcp", "hevc", None, &dir);
}

/// RTSP in → RTMP, SRT and HLS out, read by their own clients; RTMP and SRT in → RTSP out.
#[test]
fn rtsp_reaches_every_egress_and_rtmp_and_srt_reach_rtsp() {
    let dir = scratch("rtsp-cross");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtsp_url("cam"), 60, "rtsp", &dir);
    server.wait_ready("cam", READY);
    for (name, url) in [
        ("rtmp", server.rtmp_url("cam")),
        ("srt", server.srt_url("read:cam", "&latency=200000")),
        ("hls", server.hls_url("cam", "index.m3u8")),
    ] {
        let out = dir.join(format!("{name}.mkv"));
        let mut r = tidegate_tests::peers::ffmpeg_read(&url, 4, &out, &dir);
        assert!(
            r.wait(Duration::from_secs(40)).success(),
            "{name}: {}",
            r.stderr()
        );
        assert_media(&probe_file(&out), "h264", Some("aac"), 4);
    }
    let _rtmp = ffmpeg_publish(&server.rtmp_url("fromrtmp"), 40, "flv", &dir);
    let srt = server.srt_url("publish:fromsrt", "&latency=200000");
    let _srt = ffmpeg_publish(&srt, 40, "mpegts", &dir);
    for path in ["fromrtmp", "fromsrt"] {
        server.wait_ready(path, READY);
        read_and_check(&server.rtsp_url(path), "tcp", "h264", Some("aac"), &dir);
    }
}

fn rtsp_request(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rtsp_send(&mut s, req)
}

/// One request on an open connection, and the start of its response (one read).
fn rtsp_send(s: &mut TcpStream, req: &str) -> String {
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// The session id of a SETUP answer (its `Session:` header without parameters).
fn session_id(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .expect("a Session header")
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rtsp_addr(server: &TestServer) -> std::net::SocketAddr {
    server
        .rtsp_url("")
        .trim_start_matches("rtsp://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// `sh -c script` in a network namespace and a PID namespace of its own: the shell is the
/// namespace's init, so when it ends (done, failed, or killed with `unshare` on a timeout)
/// the kernel ends everything it started in the background too. None outlives the test.
fn in_namespaces(script: &str) -> Command {
    let mut cmd = Command::new(peer("unshare"));
    cmd.args([
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        script,
    ]);
    cmd
}

/// `rtspTransport: multicast`: a camera stand-in that serves multicast only (gst-rtsp-server
/// with an address pool) is pulled by our own RTSP client (retina has no multicast). The
/// camera runs in a network namespace of its own, linked to the server's by a veth pair with
/// the multicast route on it, as a camera on a LAN (gst-rtsp-server holds the group's ports
/// on its own host without SO_REUSEPORT, so the two cannot share a namespace); ffmpeg reads
/// the path back over RTMP: H.264 + AAC for 4 s, monotonic, 640x360.
#[test]
fn a_multicast_camera_is_pulled_in_a_network_namespace() {
    let dir = scratch("rtsp-pull-multicast");
    let bin = server_binary();
    let conf = dir.join("tidegate.yml");
    std::fs::write(
        &conf,
        "logLevel: info\napiAddress: 127.0.0.1:9997\nmetrics: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n\
         rtmpAddress: 127.0.0.1:1935\n\
         paths:\n  cam:\n    source: rtsp://10.99.0.2:8555/cam\n    rtspTransport: multicast\n",
    )
    .unwrap();
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    let camera = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/py/camera.py"));
    let script = format!(
        "set -e\n\
         ip link set lo up\n\
         {unshare} --net sh -c 'echo $$ > {dir}/camera.pid; i=0; until ip link show vb >/dev/null 2>&1; do \
           i=$((i+1)); [ $i -le 200 ] || exit 4; sleep 0.05; done; \
           ip link set lo up; ip addr add 10.99.0.2/24 dev vb; ip link set vb up; ip route add 224.0.0.0/4 dev vb; \
           exec /usr/bin/python3 {camera} --address 10.99.0.2 --port 8555 --multicast --max-seconds 60' \
           > {dir}/camera.log 2>&1 &\n\
         i=0; until [ -s {dir}/camera.pid ]; do i=$((i+1)); [ $i -le 200 ] || exit 5; sleep 0.05; done\n\
         ip link add va type veth peer name vb\n\
         ip link set vb netns $(cat {dir}/camera.pid)\n\
         ip addr add 10.99.0.1/24 dev va && ip link set va up && ip route add 224.0.0.0/4 dev va\n\
         {bin} {conf} > {dir}/server.log 2>&1 &\n\
         i=0; until {curl} -sf http://127.0.0.1:9997/v3/paths/get/cam | grep -q '\"ready\":true'; do\n\
           i=$((i+1)); [ $i -le 300 ] || {{ echo 'no stream after 30 s' >&2; exit 3; }}; sleep 0.1; done\n\
         {ffmpeg} -hide_banner -loglevel error -nostdin -y -i rtmp://127.0.0.1:1935/cam -t 4 -c copy {dir}/read.mkv\n\
         {curl} -sf http://127.0.0.1:9997/v3/paths/get/cam > {dir}/path.json\n",
        unshare = q(&peer("unshare")),
        camera = q(camera),
        bin = q(&bin),
        conf = q(&conf),
        dir = q(&dir),
        ffmpeg = q(&peer("ffmpeg")),
        curl = q(&peer("curl")),
    );
    let out = run_bounded(&mut in_namespaces(&script), Duration::from_secs(90));
    let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{}\ncamera log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log("server.log"),
        log("camera.log")
    );
    assert_media_from(
        &probe_file(&dir.join("read.mkv")),
        "h264",
        Some("aac"),
        4,
        60,
    );
    let path: serde_json::Value = serde_json::from_str(&log("path.json")).unwrap();
    assert_eq!(path["source"]["type"], "rtspSource", "{path}");
    assert_eq!(path["sourceRelay"]["state"], "running", "{path}");
    assert!(
        log("server.log").contains("joined"),
        "{}",
        log("server.log")
    );
    assert!(log("camera.log").contains("client connected"));
}

/// Multicast readers, in a network namespace of their own (multicast on loopback needs the
/// `MULTICAST` flag on `lo` and a 224.0.0.0/4 route, which only a private namespace may get):
/// the server binary, an ffmpeg publisher and the readers all run in it. ffmpeg
/// (`-rtsp_transport udp_multicast`) and GStreamer (`protocols=udp-mcast`) read the stream from
/// the groups; GStreamer again over RTSPS, from groups of their own carrying SRTP under the
/// stream's key (MIKEY in the SDP); and a second Tidegate pulls the path as an `rtsps://`
/// camera with `rtspTransport: multicast` (SRTP multicast, our client), read back over RTMP.
#[test]
fn multicast_readers_in_a_network_namespace() {
    let dir = scratch("rtsp-multicast");
    let bin = server_binary();
    let conf = dir.join("tidegate.yml");
    let (key, cert, fingerprint) = tidegate_tests::self_signed_pinned(&dir);
    let puller = dir.join("puller.yml");
    std::fs::write(
        &puller,
        format!(
            "logLevel: info\napiAddress: 127.0.0.1:9998\nmetrics: no\nrtsp: no\nwebrtc: no\nsrt: no\n\
             rtmpAddress: 127.0.0.1:1935\nhlsAddress: 127.0.0.1:8888\n\
             paths:\n  pulled:\n    source: rtsps://127.0.0.1:8322/mc\n    rtspTransport: multicast\n    sourceFingerprint: {fingerprint}\n\
             \x20 pulledold:\n    source: rtsp://127.0.0.1:8554/old\n    rtspTransport: multicast\n    useAbsoluteTimestamp: yes\n"
        ),
    )
    .unwrap();
    // A private namespace: nothing else binds there, so fixed ports cannot collide.
    std::fs::write(
        &conf,
        format!(
            "logLevel: info\napiAddress: 127.0.0.1:9997\nmetrics: no\nrtmp: no\nhls: no\nwebrtc: no\nsrt: no\n\
             rtspAddress: 127.0.0.1:8554\nrtspsAddress: 127.0.0.1:8322\nrtpAddress: 127.0.0.1:8000\nrtcpAddress: 127.0.0.1:8001\n\
             multicastIPRange: 224.1.0.0/16\nmulticastRTPPort: 8002\nmulticastRTCPPort: 8003\n\
             rtspEncryption: optional\nrtspServerKey: {}\nrtspServerCert: {}\n\
             paths:\n  old:\n    useAbsoluteTimestamp: yes\n  all_others:\n",
            key.display(),
            cert.display()
        ),
    )
    .unwrap();
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    let publish: Vec<String> = tidegate_tests::peers::synthetic_source(30, "640x360");
    let gst_args = |url: &str| -> String {
        gst_rtsp_args(url, "udp-mcast")
            .into_iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let script = format!(
        "set -e\n\
         ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo\n\
         {bin} {conf} > {dir}/server.log 2>&1 &\n\
         i=0; until {curl} -sf http://127.0.0.1:9997/v3/paths/list > /dev/null; do\n\
           i=$((i+1)); [ $i -le 150 ] || {{ echo 'the server did not answer after 15 s' >&2; exit 2; }}; sleep 0.1; done\n\
         {ffmpeg} {publish} -f rtsp -rtsp_transport tcp rtsp://127.0.0.1:8554/mc > {dir}/publish.log 2>&1 &\n\
         {gst_launch} -q videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
           ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
           ! rtspclientsink location=rtsp://127.0.0.1:8554/old protocols=tcp ntp-time-source=running-time \
           > {dir}/gst-old.log 2>&1 &\n\
         i=0; until {curl} -sf http://127.0.0.1:9997/v3/paths/get/mc | grep -q '\"ready\":true'; do\n\
           i=$((i+1)); [ $i -le 150 ] || {{ echo 'no stream after 15 s' >&2; exit 3; }}; sleep 0.1; done\n\
         i=0; until {curl} -sf http://127.0.0.1:9997/v3/paths/get/old | grep -q '\"ready\":true'; do\n\
           i=$((i+1)); [ $i -le 150 ] || {{ echo 'GStreamer did not publish old after 15 s' >&2; cat {dir}/gst-old.log >&2; exit 3; }}; sleep 0.1; done\n\
         {ffmpeg} -hide_banner -loglevel error -nostdin -y -rtsp_transport udp_multicast \
           -i rtsp://127.0.0.1:8554/mc -t 4 -c copy {dir}/ffmpeg.mkv\n\
         {timeout} -s INT -k 5 6 {gst_launch} {gst} > {dir}/gst.log 2>&1 || true\n\
         {timeout} -s INT -k 5 6 {gst_launch} {gsts} > {dir}/gsts.log 2>&1 & gst=$!\n\
         i=0; until {curl} -sf http://127.0.0.1:9997/v3/rtspssessions/list | grep '\"state\":\"read\"' | grep -q UDP-multicast; do\n\
           i=$((i+1)); [ $i -le 100 ] || break; sleep 0.1; done\n\
         {curl} -sf http://127.0.0.1:9997/v3/rtspssessions/list > {dir}/secure.json || true\n\
         wait $gst || true\n\
         {bin} {puller} > {dir}/puller.log 2>&1 &\n\
         i=0; until {curl} -sf http://127.0.0.1:9998/v3/paths/get/pulled | grep -q '\"ready\":true'; do\n\
           i=$((i+1)); [ $i -le 150 ] || {{ echo 'the SRTP multicast pull is not ready after 15 s' >&2; exit 6; }}; sleep 0.1; done\n\
         {ffmpeg} -hide_banner -loglevel error -nostdin -y -i rtmp://127.0.0.1:1935/pulled -t 4 -c copy {dir}/pulled.mkv\n\
         {curl} -sf http://127.0.0.1:9997/v3/rtspssessions/list > {dir}/pulled-session.json || true\n\
         i=0; until {curl} -sf http://127.0.0.1:8888/pulledold/stream.m3u8 > {dir}/old.m3u8 && grep -q PROGRAM-DATE-TIME {dir}/old.m3u8; do\n\
           i=$((i+1)); [ $i -le 300 ] || {{ echo 'no dated segment from the multicast pull after 30 s' >&2; exit 7; }}; sleep 0.1; done\n",
        bin = q(&bin),
        conf = q(&conf),
        dir = q(&dir),
        ffmpeg = q(&peer("ffmpeg")),
        curl = q(&peer("curl")),
        timeout = q(&peer("timeout")),
        gst_launch = q(&peer("gst-launch-1.0")),
        publish = publish.join(" "),
        gst = gst_args("rtsp://127.0.0.1:8554/mc"),
        gsts = gst_args("rtsps://127.0.0.1:8322/mc"),
        puller = q(&puller),
    );
    let out = run_bounded(&mut in_namespaces(&script), Duration::from_secs(90));
    let server_log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{server_log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_media(&probe_file(&dir.join("ffmpeg.mkv")), "h264", Some("aac"), 4);
    let gst_log = std::fs::read_to_string(dir.join("gst.log")).unwrap_or_default();
    let (buffers, caps) = gst_buffers_and_caps(&gst_log);
    assert!(
        buffers > 100,
        "GStreamer decoded {buffers} buffers over multicast:\n{gst_log}"
    );
    assert!(caps.contains("width=(int)640"), "{caps}");
    let gsts_log = std::fs::read_to_string(dir.join("gsts.log")).unwrap_or_default();
    let (sealed, caps) = gst_buffers_and_caps(&gsts_log);
    assert!(
        sealed > 100,
        "GStreamer decoded {sealed} buffers over SRTP multicast:\n{gsts_log}"
    );
    assert!(caps.contains("width=(int)640"), "{caps}");
    // While it played, its session was a SAVP multicast one.
    let secure = std::fs::read_to_string(dir.join("secure.json")).unwrap_or_default();
    let secure: serde_json::Value = serde_json::from_str(&secure).unwrap_or_default();
    let entry = secure["items"]
        .as_array()
        .and_then(|i| i.iter().find(|e| e["state"] == "read"))
        .unwrap_or_else(|| panic!("no RTSPS reader while GStreamer played: {secure}"));
    assert_eq!(entry["transport"], "UDP-multicast", "{entry}");
    assert_eq!(entry["profile"], "SAVP", "{entry}");
    // The pull: H.264 + AAC for 4 s out of the second Tidegate, and the camera saw a SAVP
    // multicast session.
    assert_media(&probe_file(&dir.join("pulled.mkv")), "h264", Some("aac"), 4);
    let pulled = std::fs::read_to_string(dir.join("pulled-session.json")).unwrap_or_default();
    assert!(
        pulled.contains("UDP-multicast") && pulled.contains("SAVP"),
        "the camera's sessions while pulled: {pulled}"
    );
    // useAbsoluteTimestamp over multicast: the group's RTCP is read, so the origin's sender
    // reports (the GStreamer publisher's clock, which reads 1900) date the pull's segments.
    let old = std::fs::read_to_string(dir.join("old.m3u8")).unwrap_or_default();
    let pdt = old
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .unwrap_or_default();
    assert!(
        pdt.starts_with("1900-01-01T00:"),
        "multicast pull dated {pdt}:\n{old}"
    );
    eprintln!(
        "multicast: ffmpeg read 4 s, GStreamer decoded {buffers} buffers, {sealed} over SRTP; \
         SRTP multicast pull read back for 4 s; the multicast pull with absolute times dated {pdt}"
    );
}

/// RFC 7616 Digest with SHA-256 (the first challenge offered) proves the password;
/// `rtspAuthMethods: [digest]` drops the Basic challenge and refuses Basic credentials, while
/// ffmpeg's Digest still works.
#[test]
fn sha256_digest_and_auth_methods() {
    let dir = scratch("rtsp-auth-sha256");
    let server = TestServer::start(
        "rtspAuthMethods: [digest]\npaths:\n  sec:\n    readUser: bob\n    readPass: pw\n",
    );
    let _publisher = ffmpeg_publish(&server.rtsp_url("sec"), 40, "rtsp", &dir);
    server.wait_ready("sec", READY);
    let addr = rtsp_addr(&server);
    let url = server.rtsp_url("sec");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = rtsp_send(
        &mut s,
        &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 401"), "{r}");
    assert!(!r.contains("Basic"), "Basic is not offered: {r}");
    let first = r
        .lines()
        .find(|l| l.starts_with("WWW-Authenticate:"))
        .unwrap();
    assert!(first.ends_with("algorithm=SHA-256"), "{first}");
    let nonce = first
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let digest = |pass: &str| {
        let ha1 = sha256_hex(&format!("bob:tidegate:{pass}"));
        let ha2 = sha256_hex(&format!("DESCRIBE:{url}"));
        let resp = sha256_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "Authorization: Digest username=\"bob\", realm=\"tidegate\", nonce=\"{nonce}\", uri=\"{url}\", response=\"{resp}\", algorithm=SHA-256"
        )
    };
    let r = rtsp_send(
        &mut s,
        &format!(
            "DESCRIBE {url} RTSP/1.0\r\nCSeq: 2\r\n{}\r\n\r\n",
            digest("nope")
        ),
    );
    assert!(r.starts_with("RTSP/1.0 401"), "{r}");
    let r = rtsp_send(
        &mut s,
        &format!(
            "DESCRIBE {url} RTSP/1.0\r\nCSeq: 3\r\n{}\r\n\r\n",
            digest("pw")
        ),
    );
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    // Right Basic credentials are refused: the method is off.
    let r = rtsp_request(
        addr,
        &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAuthorization: Basic Ym9iOnB3\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 401"), "{r}");
    let with = url.replacen("rtsp://", "rtsp://bob:pw@", 1);
    read_and_check(&with, "tcp", "h264", Some("aac"), &dir);
}

/// `rtspTransports: [tcp]`: no UDP sockets, a UDP SETUP gets 461 (ffmpeg over UDP fails), TCP
/// works; `[udp]`: a TCP SETUP gets 461.
#[test]
fn rtsp_transports_restrict_setup() {
    let dir = scratch("rtsp-transports");
    let server = TestServer::start("rtspTransports: [tcp]\n");
    assert_eq!(server.rtsp_udp_ports(), None);
    let _publisher = ffmpeg_publish(&server.rtsp_url("t"), 40, "rtsp", &dir);
    server.wait_ready("t", READY);
    read_and_check(&server.rtsp_url("t"), "tcp", "h264", Some("aac"), &dir);
    let out = dir.join("udp.mkv");
    let mut r = ffmpeg_rtsp_read(&server.rtsp_url("t"), "udp", 2, &out, &dir);
    assert!(!r.wait(Duration::from_secs(20)).success());
    assert!(r.stderr().contains("461"), "{}", r.stderr());

    let server = TestServer::start("rtspTransports: [udp]\n");
    let addr = rtsp_addr(&server);
    let url = server.rtsp_url("u");
    let r = rtsp_request(
        addr,
        &format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 461"), "{r}");
}

/// Read credentials: none or wrong → 401 with Digest and Basic challenges; Basic and Digest
/// (ffmpeg answers the Digest challenge) with the right ones work.
#[test]
fn basic_and_digest_credentials() {
    let dir = scratch("rtsp-auth");
    let server = TestServer::start("paths:\n  sec:\n    readUser: bob\n    readPass: pw\n");
    let _publisher = ffmpeg_publish(&server.rtsp_url("sec"), 40, "rtsp", &dir);
    server.wait_ready("sec", READY);
    let addr = rtsp_addr(&server);
    let url = server.rtsp_url("sec");
    let r = rtsp_request(addr, &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"));
    assert!(r.starts_with("RTSP/1.0 401"), "{r}");
    assert!(
        r.contains("WWW-Authenticate: Digest realm=\"tidegate\", nonce="),
        "{r}"
    );
    assert!(r.contains("WWW-Authenticate: Basic"), "{r}");
    let r = rtsp_request(
        addr,
        &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 2\r\nAuthorization: Basic Ym9iOnB3\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    assert!(r.contains("m=video"), "{r}");
    let r = rtsp_request(
        addr,
        &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 3\r\nAuthorization: Basic Ym9iOnd4\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 401"), "{r}");
    // ffmpeg with the right credentials (it answers the Digest challenge), and the wrong ones.
    let with = |user: &str| url.replacen("rtsp://", &format!("rtsp://{user}@"), 1);
    read_and_check(&with("bob:pw"), "tcp", "h264", Some("aac"), &dir);
    let out = dir.join("bad.mkv");
    let mut r = ffmpeg_rtsp_read(&with("bob:nope"), "tcp", 2, &out, &dir);
    assert!(!r.wait(Duration::from_secs(20)).success());
    assert!(r.stderr().contains("401"), "{}", r.stderr());
}

/// Truncated requests, a 1 MB header, garbage interleaved data and an SDP with 10 000 media
/// each close their own connection; a reader of the same server carries on.
#[test]
fn hostile_input_closes_only_its_connection() {
    let dir = scratch("rtsp-hostile");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtsp_url("cam"), 60, "rtsp", &dir);
    server.wait_ready("cam", READY);
    let out = dir.join("reader.mkv");
    let mut reader = ffmpeg_rtsp_read(&server.rtsp_url("cam"), "tcp", 8, &out, &dir);
    server.wait_readers("cam", 1, Duration::from_secs(20));
    let addr: std::net::SocketAddr = server
        .rtsp_url("")
        .trim_start_matches("rtsp://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let url = server.rtsp_url("x");
    let big_sdp: String = "v=0\r\n".to_string() + &"m=video 0 RTP/AVP 96\r\n".repeat(10_000);
    let attacks: Vec<Vec<u8>> = vec![
        b"DESCRIBE rtsp://h/cam RTSP/1.0\r\nCSeq: 1\r\nContent-Le".to_vec(),
        [b"OPTIONS * RTSP/1.0\r\nX: ".to_vec(), vec![b'a'; 1 << 20]].concat(),
        [
            b"$\x00\xff\xff".to_vec(),
            vec![0xde; 70_000],
            b"\x00\x01\x02garbage\r\n\r\n".to_vec(),
        ]
        .concat(),
        format!(
            "ANNOUNCE {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Length: {}\r\n\r\n{big_sdp}",
            big_sdp.len()
        )
        .into_bytes(),
    ];
    for a in attacks {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&a);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        // The server answers (400/413) or closes; either way the read ends within the bound.
        let _ = s.read_to_end(&mut sink);
    }
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), "h264", Some("aac"), 8);
    assert!(server.paths().get("cam").unwrap().ready);

    // The publisher's session in the API, with its transport and RTP counters; kicking it
    // ends the publish.
    let s = server.api_entry("rtspsessions", "publish");
    assert_eq!(s["path"], "cam");
    // ffmpeg's RTSP muxer publishes over UDP by default.
    assert_eq!(s["transport"], "UDP");
    let received = s["rtpPacketsReceived"].as_u64().unwrap();
    assert!(received > 500, "{s}");
    assert!(
        s["rtpPacketsLost"].as_u64().unwrap() * 100 <= received,
        "{s}"
    );
    assert!(s["bytesReceived"].as_u64().unwrap() > 500_000, "{s}");
    let id = s["id"].as_str().unwrap();
    let (status, _) = tidegate_tests::http::request(
        server.api_addr(),
        "POST",
        &format!("/v3/rtspsessions/kick/{id}"),
    );
    assert_eq!(status, 200);
    server.wait_not_ready("cam", Duration::from_secs(10));
}

/// RTSPS (`rtspEncryption: optional`) with a generated certificate: ffmpeg publishes over
/// RTSPS and reads over RTSPS, and over RTSP tunnelled in HTTPS on the RTSPS port
/// (`-rtsp_transport https`); the same stream is readable over plain RTSP.
#[test]
fn rtsps_with_ffmpeg() {
    let dir = scratch("rtsps");
    let (key, cert) = tidegate_tests::self_signed(&dir);
    let server = TestServer::start(&format!(
        "rtspEncryption: optional\nrtspServerKey: {}\nrtspServerCert: {}\n",
        key.display(),
        cert.display()
    ));
    let url = server.rtsps_url("secure");
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(tidegate_tests::peers::synthetic_source(40, "640x360"))
        .args(["-f", "rtsp", "-rtsp_transport", "tcp", &url]);
    let _publisher = PeerProcess::spawn("publish-rtsps", &mut cmd, &dir);
    server.wait_ready("secure", READY);
    read_and_check(&url, "tcp", "h264", Some("aac"), &dir);
    read_and_check(&server.rtsp_url("secure"), "tcp", "h264", Some("aac"), &dir);
    // ffmpeg's HTTPS tunnel: an rtsp:// URL whose GET and POST go over TLS to that port.
    let tunnelled = url.replacen("rtsps://", "rtsp://", 1);
    read_and_check(&tunnelled, "https", "h264", Some("aac"), &dir);
    assert!(!tidegate_tests::logs::lines_with(&["tunnelled over HTTP"]).is_empty());
}

/// RTSPS with SRTP (`RTP/SAVP`, keys in MIKEY as RFC 4567 has them): GStreamer publishes
/// H.264 + Opus (its rtspclientsink sends AAC as MP4A-LATM, which Tidegate does not take) with `rtspclientsink profiles=savp protocols=udp`, and `rtspsrc` reads it back
/// over RTSPS UDP and TCP (it takes the SAVP offer of the DESCRIBE and decrypts with srtpdec,
/// which drops any packet whose tag is wrong): both tracks decoded. The API shows the
/// publisher as SAVP over UDP with no packet refused. ffmpeg, which has no MIKEY, still reads
/// over TCP, inside the TLS. RTP in the clear over UDP is refused on RTSPS (461), and SAVP
/// on plain RTSP.
#[test]
fn rtsps_srtp_with_gstreamer_over_udp_and_tcp() {
    let dir = scratch("rtsps-srtp");
    let (key, cert, fingerprint) = tidegate_tests::self_signed_pinned(&dir);
    let server = TestServer::start(&format!(
        "rtspEncryption: optional\nrtspServerKey: {}\nrtspServerCert: {}\n",
        key.display(),
        cert.display()
    ));
    let url = server.rtsps_url("secure");
    let pipeline = format!(
        "rtspclientsink name=s location={url} protocols=udp profiles=savp tls-validation-flags=0 \
         videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse ! s. \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! audioconvert \
         ! opusenc ! s."
    );
    let mut cmd = Command::new(peer("gst-launch-1.0"));
    cmd.arg("-q").args(pipeline.split_whitespace());
    let _gst = PeerProcess::spawn("gst-rtspclientsink-savp", &mut cmd, &dir);
    server.wait_ready("secure", READY);
    server.wait_frames("secure", 60, Duration::from_secs(10));
    let publisher = server.api_entry("rtspssessions", "publish");
    eprintln!("SRTP publisher: {publisher}");
    assert_eq!(publisher["transport"], "UDP", "{publisher}");
    assert_eq!(publisher["profile"], "SAVP", "{publisher}");
    assert_eq!(publisher["srtpPacketsRefused"], 0, "{publisher}");
    assert!(publisher["rtpPacketsReceived"].as_u64().unwrap() > 100);

    for protocols in ["udp", "tcp"] {
        gst_reads_640x360(&url, protocols);
    }
    // GStreamer's receiver reports come as SRTCP under the key it sent in its SETUP.
    let e = gst_reader_reports(&server, &url, "udp", "rtspssessions", &dir);
    assert_eq!(e["profile"], "SAVP", "{e}");
    assert_eq!(e["rtpPacketsLost"], 0, "{e}");

    // ffmpeg (no MIKEY; it reads RTSPS over TCP only) ignores the SAVP offer: plain RTP inside
    // the TLS.
    read_and_check(&url, "tcp", "h264", Some("opus"), &dir);

    // By hand: the DESCRIBE offers SAVP with a MIKEY key; plain RTP over UDP is refused on
    // RTSPS, and SAVP on plain RTSP.
    let port = tidegate_tests::port_of(&url);
    let describe = format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n");
    let reply = rtsps_request(port, &fingerprint, &describe);
    assert!(reply.starts_with("RTSP/1.0 200"), "{reply}");
    assert_eq!(reply.matches("RTP/SAVP").count(), 2, "{reply}");
    assert_eq!(reply.matches("a=key-mgmt:mikey ").count(), 2, "{reply}");
    let setup = |url: &str, transport: &str| {
        format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: {transport}\r\n\r\n")
    };
    let plain_udp = rtsps_request(
        port,
        &fingerprint,
        &setup(&url, "RTP/AVP;unicast;client_port=5000-5001"),
    );
    assert!(plain_udp.starts_with("RTSP/1.0 461"), "{plain_udp}");
    let plain = server.rtsp_url("secure");
    let savp_in_clear = rtsp_request(
        rtsp_addr(&server),
        &setup(&plain, "RTP/SAVP;unicast;client_port=5000-5001"),
    );
    assert!(savp_in_clear.starts_with("RTSP/1.0 461"), "{savp_in_clear}");
}

/// One request over RTSPS to 127.0.0.1:`port` (the certificate pinned by `fingerprint`), and
/// the start of its response.
fn rtsps_request(port: u16, fingerprint: &str, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s =
            tidegate_core::tls::connect("127.0.0.1", port, fingerprint, Duration::from_secs(10))
                .await
                .unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let mut n = 0;
        // The head and any body, until the response is complete or 10 s have passed.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if n >= head_end + 4 + len || n == buf.len() {
                        break;
                    }
                }
            }
        })
        .await;
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
}

/// The camera stand-in (gst-rtsp-server through Debian's python3-gi) on `port`. Its log
/// lines arrive through a channel, so tests wait on them as events.
struct Camera {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Camera {
    fn start(port: u16) -> Camera {
        Camera::start_with(port, &[])
    }

    /// With `extra` arguments for camera.py (`--cert`, `--key`: RTSPS).
    fn start_with(port: u16, extra: &[&str]) -> Camera {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/camera.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--max-seconds", "120"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the camera stand-in needs /usr/bin/python3 with python3-gi");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cam = Camera {
            child,
            lines,
            seen: Vec::new(),
        };
        assert!(
            cam.wait("listening on", 1, Duration::from_secs(15)),
            "the camera did not start: {:?}",
            cam.seen
        );
        cam
    }

    fn count(&mut self, what: &str) -> usize {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.iter().filter(|l| l.contains(what)).count()
    }

    /// Waits until `what` has been logged `n` times, at most `limit`.
    fn wait(&mut self, what: &str, n: usize, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.count(what) >= n {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return self.count(what) >= n,
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_rtmp_and_check(server: &TestServer, path: &str, seconds: u32, dir: &std::path::Path) {
    let out = dir.join(format!("{path}-rtmp.mkv"));
    let mut r = tidegate_tests::peers::ffmpeg_read(&server.rtmp_url(path), seconds, &out, dir);
    assert!(r.wait(Duration::from_secs(30)).success(), "{}", r.stderr());
    assert_media(&probe_file(&out), "h264", Some("aac"), seconds);
}

/// `source: rtsp://…` pulls a camera over TCP and over UDP (retina); killing the camera and
/// starting it again resumes the path without restarting Tidegate.
#[test]
fn a_camera_is_pulled_over_tcp_and_udp_and_survives_a_restart() {
    let dir = scratch("rtsp-pull");
    // UDP twice: by retina, and by our own client with rtspAnyPort.
    for (transport, any_port) in [("tcp", "no"), ("udp", "no"), ("udp", "yes")] {
        let port = tidegate_tests::peers::free_port();
        let mut cam = Camera::start(port);
        let server = TestServer::start(&format!(
            "paths:\n  cam:\n    source: rtsp://127.0.0.1:{port}/cam\n    rtspTransport: {transport}\n    rtspAnyPort: {any_port}\n"
        ));
        server.wait_ready("cam", READY);
        assert_eq!(
            server.paths().get("cam").unwrap().tracks,
            vec!["H264", "MPEG-4 Audio"]
        );
        read_rtmp_and_check(&server, "cam", 3, &dir);
        read_and_check(&server.rtsp_url("cam"), "tcp", "h264", Some("aac"), &dir);
        if transport == "tcp" {
            cam.kill();
            server.wait_not_ready("cam", Duration::from_secs(20));
            let _cam = Camera::start(port);
            server.wait_ready("cam", Duration::from_secs(40));
            read_rtmp_and_check(&server, "cam", 3, &dir);
        }
    }
}

/// `source: rtsps://…` pulls a camera serving RTSPS with a self-signed certificate (the camera
/// stand-in with TLS): pinned with `sourceFingerprint` (colon form, as openssl prints it), the
/// path carries H.264 + AAC to RTMP and RTSP readers. With another fingerprint, or with none
/// (no Web PKI root signs the camera), the path stays empty and the API says why.
#[test]
fn an_rtsps_camera_is_pulled_with_its_certificate_fingerprint() {
    let dir = scratch("rtsps-pull");
    let (key, cert, fingerprint) = tidegate_tests::self_signed_pinned(&dir);
    let port = tidegate_tests::peers::free_port();
    let (k, c) = (key.display().to_string(), cert.display().to_string());
    let mut cam = Camera::start_with(port, &["--cert", &c, "--key", &k]);
    let wrong = "00".repeat(32);
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: rtsps://127.0.0.1:{port}/cam\n    sourceFingerprint: \"{fingerprint}\"\n\
         \x20 wrong:\n    source: rtsps://127.0.0.1:{port}/cam\n    sourceFingerprint: {wrong}\n\
         \x20 unpinned:\n    source: rtsps://127.0.0.1:{port}/cam\n"
    ));
    server.wait_ready("cam", READY);
    assert_eq!(
        server.paths().get("cam").unwrap().tracks,
        vec!["H264", "MPEG-4 Audio"]
    );
    read_rtmp_and_check(&server, "cam", 3, &dir);
    read_and_check(&server.rtsp_url("cam"), "tcp", "h264", Some("aac"), &dir);
    let v = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/cam");
    assert_eq!(v["sourceRelay"]["state"], "running");
    assert!(cam.count("client connected") >= 1);

    let err = server.wait_source_error("wrong", "fingerprint", Duration::from_secs(15));
    assert!(err.contains("not the sourceFingerprint"), "{err}");
    let err = server.wait_source_error("unpinned", "UnknownIssuer", Duration::from_secs(15));
    assert!(err.contains("UnknownIssuer"), "{err}");
    for path in ["wrong", "unpinned"] {
        assert!(!server.paths().get(path).is_some_and(|p| p.ready), "{path}");
    }
}

/// A TCP proxy for RTSP connections to `to` that adds `shift` to the `server_port` of every
/// answer: a camera that announces RTP ports it does not send from. UDP does not go through it.
fn lying_proxy(to: std::net::SocketAddr, shift: u16) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let (Ok(client), Ok(camera)) = (client, TcpStream::connect(to)) else {
                continue;
            };
            let (mut up_from, mut up_to) =
                (client.try_clone().unwrap(), camera.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut up_from, &mut up_to));
            let (mut down_from, mut down_to) = (camera, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = down_from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    // Answers are text in UDP mode; a SETUP answer fits one read here.
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let out = match text.split_once("server_port=") {
                        Some((head, rest)) => {
                            let end = rest
                                .find(|c: char| !c.is_ascii_digit() && c != '-')
                                .unwrap_or(rest.len());
                            let shifted: Vec<String> = rest[..end]
                                .split('-')
                                .filter_map(|p| p.parse::<u16>().ok())
                                .map(|p| (p + shift).to_string())
                                .collect();
                            format!("{head}server_port={}{}", shifted.join("-"), &rest[end..])
                        }
                        None => text,
                    };
                    if down_to.write_all(out.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `rtspAnyPort`: a camera that sends RTP from ports other than those it announced (the
/// stand-in behind a proxy that shifts `server_port` in its SETUP answers). With
/// `rtspAnyPort: yes` the path carries the stream; without it nothing is taken (retina's
/// sockets are connected to the announced ports) and the source reports no data.
#[test]
fn rtsp_any_port_takes_packets_from_unannounced_ports() {
    let dir = scratch("rtsp-any-port");
    let port = tidegate_tests::peers::free_port();
    let _cam = Camera::start(port);
    let proxy = lying_proxy(([127, 0, 0, 1], port).into(), 100);
    let server = TestServer::start(&format!(
        "paths:\n  any:\n    source: rtsp://{proxy}/cam\n    rtspTransport: udp\n    rtspAnyPort: yes\n\
         \x20 strict:\n    source: rtsp://{proxy}/cam\n    rtspTransport: udp\n"
    ));
    server.wait_ready("any", READY);
    read_rtmp_and_check(&server, "any", 3, &dir);
    let err = server.wait_source_error("strict", "no data", Duration::from_secs(30));
    assert!(err.contains("no data from the source"), "{err}");
    assert!(!server.paths().get("strict").is_some_and(|p| p.ready));
}

/// `source: rtsps://…` with `rtspTransport: udp`: SRTP from an RTSPS camera, read by our own
/// client (retina has no SRTP). The camera is a Tidegate serving RTSPS with SRTP (that side is
/// checked against GStreamer above), fed by ffmpeg over RTSP; the puller takes the MIKEY key of
/// its DESCRIBE, SETUPs `RTP/SAVP` over UDP and decrypts; ffmpeg reads the result over RTMP.
#[test]
fn an_rtsps_camera_is_pulled_over_udp_with_srtp() {
    let dir = scratch("rtsps-srtp-pull");
    let (key, cert, fingerprint) = tidegate_tests::self_signed_pinned(&dir);
    let camera = TestServer::start(&format!(
        "rtspEncryption: optional\nrtspServerKey: {}\nrtspServerCert: {}\n",
        key.display(),
        cert.display()
    ));
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(tidegate_tests::peers::synthetic_source(60, "640x360"))
        .args([
            "-f",
            "rtsp",
            "-rtsp_transport",
            "tcp",
            &camera.rtsp_url("cam"),
        ]);
    let _publisher = PeerProcess::spawn("publish", &mut cmd, &dir);
    camera.wait_ready("cam", READY);
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: {}\n    rtspTransport: udp\n    sourceFingerprint: \"{fingerprint}\"\n",
        camera.rtsps_url("cam")
    ));
    server.wait_ready("cam", READY);
    read_rtmp_and_check(&server, "cam", 4, &dir);
    let reader = camera.api_entry("rtspssessions", "read");
    eprintln!("the puller, seen by the camera: {reader}");
    assert_eq!(reader["transport"], "UDP", "{reader}");
    assert_eq!(reader["profile"], "SAVP", "{reader}");
    assert!(reader["rtpPacketsSent"].as_u64().unwrap() > 100, "{reader}");
}

/// `sourceOnDemand`: no connection to the camera while nobody reads; one within about a
/// second of the first reader; none after `sourceOnDemandCloseAfter` without readers.
#[test]
fn an_on_demand_camera_is_pulled_only_while_read() {
    let dir = scratch("rtsp-ondemand");
    let port = tidegate_tests::peers::free_port();
    let mut cam = Camera::start(port);
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: rtsp://127.0.0.1:{port}/cam\n    sourceOnDemand: yes\n    sourceOnDemandCloseAfter: 2s\n"
    ));
    // Nobody reads: the camera sees no client for 2 s.
    assert!(
        !cam.wait("client connected", 1, Duration::from_secs(2)),
        "pulled without a reader"
    );
    assert!(!server.paths().get("cam").is_some_and(|p| p.ready));
    // A reader: the camera is connected at once and the reader gets the stream.
    let started = std::time::Instant::now();
    let out = dir.join("reader.mkv");
    let mut reader = ffmpeg_rtsp_read(&server.rtsp_url("cam"), "tcp", 4, &out, &dir);
    assert!(cam.wait("client connected", 1, Duration::from_secs(5)));
    let delay = started.elapsed();
    eprintln!("camera connected {delay:?} after the reader started");
    assert!(delay < Duration::from_millis(1500), "{delay:?}");
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), "h264", Some("aac"), 4);
    // The reader left: the camera is released after sourceOnDemandCloseAfter.
    let left = std::time::Instant::now();
    assert!(
        cam.wait("client closed", 1, Duration::from_secs(10)),
        "{:?}",
        cam.seen
    );
    eprintln!("camera released {:?} after the reader left", left.elapsed());
    server.wait_not_ready("cam", Duration::from_secs(10));
    assert_eq!(cam.count("client connected"), 1);
}

/// A TCP reader on the usual channels (the fan-out engine writes to its socket) gets the PLAY
/// answer before any media, and is kept while it plays even if it sends nothing for longer
/// than `readTimeout` (no receiver reports, no keep-alives): its RTP keeps flowing.
#[test]
fn a_silent_tcp_reader_keeps_playing_past_read_timeout() {
    let dir = scratch("rtsp-silent-reader");
    let server = TestServer::start("readTimeout: 2s\n");
    let url = server.rtsp_url("quiet");
    let _publisher = ffmpeg_publish(&url, 40, "rtsp", &dir);
    server.wait_ready("quiet", READY);
    let mut s = TcpStream::connect(rtsp_addr(&server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = rtsp_send(
        &mut s,
        &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
    );
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    let mut session = String::new();
    for (i, ch) in [(0, "0-1"), (1, "2-3")] {
        let session_header = if session.is_empty() {
            String::new()
        } else {
            format!("Session: {session}\r\n")
        };
        let r = rtsp_send(
            &mut s,
            &format!(
                "SETUP {url}/trackID={i} RTSP/1.0\r\nCSeq: {}\r\n{session_header}\
                 Transport: RTP/AVP/TCP;unicast;interleaved={ch}\r\n\r\n",
                2 + i
            ),
        );
        assert!(r.starts_with("RTSP/1.0 200"), "{r}");
        session = session_id(&r);
    }
    s.write_all(format!("PLAY {url} RTSP/1.0\r\nCSeq: 4\r\nSession: {session}\r\n\r\n").as_bytes())
        .unwrap();
    // The answer first, then interleaved packets only; nothing is sent from here on.
    let mut data: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let start = std::time::Instant::now();
    let mut last_second: Vec<(std::time::Instant, u8)> = Vec::new();
    let mut answered = false;
    while start.elapsed() < Duration::from_secs(6) {
        let n = s.read(&mut buf).expect("the server keeps the reader");
        assert!(
            n > 0,
            "the server closed a silent reader after {:?}",
            start.elapsed()
        );
        data.extend_from_slice(&buf[..n]);
        if !answered {
            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            assert!(
                data.starts_with(b"RTSP/1.0 200"),
                "{}",
                String::from_utf8_lossy(&data)
            );
            data.drain(..end + 4);
            answered = true;
        }
        while data.len() >= 4 {
            assert_eq!(data[0], b'$', "only interleaved packets after the answer");
            let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
            if data.len() < 4 + len {
                break;
            }
            last_second.push((std::time::Instant::now(), data[1]));
            data.drain(..4 + len);
        }
        last_second.retain(|(t, _)| t.elapsed() < Duration::from_secs(1));
    }
    let video = last_second.iter().filter(|(_, ch)| *ch == 0).count();
    let audio = last_second.iter().filter(|(_, ch)| *ch == 2).count();
    assert!(video >= 20, "video RTP packets in the last second: {video}");
    assert!(audio >= 10, "audio RTP packets in the last second: {audio}");
}

/// ffmpeg publishing VP8 or VP9 (+ Opus) over RTSP.
fn ffmpeg_publish_vpx(url: &str, vp9: bool, seconds: u32, dir: &Path) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", &seconds.to_string(), "-map", "0:v", "-map", "1:a"])
        .args(if vp9 {
            ["-c:v", "libvpx-vp9", "-strict", "experimental"]
        } else {
            ["-c:v", "libvpx", "-auto-alt-ref", "0"]
        })
        .args([
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-b:v",
            "800k",
        ])
        .args(["-c:a", "libopus", "-ar", "48000", "-ac", "2"])
        .args(["-f", "rtsp", "-rtsp_transport", "tcp", url]);
    PeerProcess::spawn(if vp9 { "ffmpeg-vp9" } else { "ffmpeg-vp8" }, &mut cmd, dir)
}

/// VP8 and VP9 over RTSP both ways: ffmpeg publishes each (+ Opus); ffmpeg reads it back over
/// RTSP and decodes every frame at 640x360; the VP8 path also plays to an aiortc WHEP viewer
/// (RTSP in, WebRTC out, no transcoding).
#[test]
fn vp8_and_vp9_over_rtsp_both_ways() {
    let dir = scratch("rtsp-vpx");
    let server = TestServer::start("");
    for (name, vp9) in [("vp8", false), ("vp9", true)] {
        let _publisher = ffmpeg_publish_vpx(&server.rtsp_url(name), vp9, 40, &dir);
        server.wait_ready(name, READY);
        let tracks = server.paths().get(name).unwrap().tracks;
        assert_eq!(tracks, vec![if vp9 { "VP9" } else { "VP8" }, "Opus"]);
        // Read back over RTSP, decoded by ffmpeg (a failed decode is an error).
        let out = dir.join(format!("{name}.nut"));
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(["-rtsp_transport", "tcp", "-i", &server.rtsp_url(name)])
            .args([
                "-t", "5", "-map", "0:v", "-c:v", "rawvideo", "-an", "-xerror",
            ])
            .arg(&out);
        let mut reader = PeerProcess::spawn("ffmpeg-read", &mut cmd, &dir);
        assert!(
            reader.wait(Duration::from_secs(60)).success(),
            "{name}: {}",
            reader.stderr()
        );
        let p = ffprobe(out.to_str().unwrap(), &[], Duration::from_secs(30));
        assert_eq!(p.dimensions(), Some((640, 360)), "{name}");
        let frames = p.packets_of("video").len();
        assert!(frames >= 120, "{name}: {frames} frames decoded in 5 s");
        if !vp9 {
            let mut whep = Command::new(peer("python"));
            whep.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
                .args(["whep", &server.webrtc_url(name, "whep"), "--seconds", "6"]);
            let mut viewer = PeerProcess::spawn("aiortc-whep", &mut whep, &dir);
            assert!(
                viewer.wait(Duration::from_secs(60)).success(),
                "{}",
                viewer.stderr()
            );
            let v: serde_json::Value = serde_json::from_str(viewer.stdout().trim()).unwrap();
            let v = &v["viewers"][0];
            assert!(
                v["frames"].as_u64().unwrap() >= 100,
                "WHEP viewer of VP8: {v}"
            );
            assert_eq!(v["width"], 640, "{v}");
        }
    }
}

/// MP3 over RTP (RFC 2250) both ways: ffmpeg publishes H.264 + MP3 over RTSP; ffmpeg reads
/// it back over RTSP and over RTMP (FLV carries MP3) and decodes the audio (44.1 kHz stereo,
/// about as many samples as seconds read).
#[test]
fn mp3_over_rtsp_both_ways() {
    let dir = scratch("rtsp-mp3");
    let server = TestServer::start("");
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100"])
        .args(["-t", "40", "-map", "0:v", "-map", "1:a"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "30",
        ])
        .args(["-c:a", "libmp3lame", "-b:a", "128k", "-ac", "2"])
        .args([
            "-f",
            "rtsp",
            "-rtsp_transport",
            "tcp",
            &server.rtsp_url("mp3"),
        ]);
    let _publisher = PeerProcess::spawn("ffmpeg-mp3", &mut cmd, &dir);
    server.wait_ready("mp3", READY);
    assert_eq!(
        server.paths().get("mp3").unwrap().tracks,
        vec!["H264", "MPEG-1/2 Audio"]
    );
    for (name, url, extra) in [
        (
            "rtsp",
            server.rtsp_url("mp3"),
            &["-rtsp_transport", "tcp"][..],
        ),
        ("rtmp", server.rtmp_url("mp3"), &[][..]),
    ] {
        let out = dir.join(format!("{name}.wav"));
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(extra)
            .args(["-i", &url, "-t", "5", "-map", "0:a", "-xerror"])
            .arg(&out);
        let mut reader = PeerProcess::spawn("ffmpeg-read", &mut cmd, &dir);
        assert!(
            reader.wait(Duration::from_secs(60)).success(),
            "{name}: {}",
            reader.stderr()
        );
        let p = ffprobe(out.to_str().unwrap(), &[], Duration::from_secs(30));
        let a = p
            .streams
            .iter()
            .find(|s| s["codec_type"] == "audio")
            .unwrap();
        assert_eq!(a["sample_rate"], "44100", "{name}: {a}");
        assert_eq!(a["channels"], 2, "{name}: {a}");
        let secs: f64 = a["duration"].as_str().unwrap().parse().unwrap();
        assert!(secs > 4.5, "{name}: {secs} s of audio decoded from 5 s");
    }
}

/// ffmpeg publishing a lavfi `source` for 40 s over RTSP (TCP), encoded with `codec` (its
/// encoder and options).
fn publish_lavfi(url: &str, source: &str, codec: &[&str], dir: &Path) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", source, "-t", "40"])
        .args(codec)
        .args(["-f", "rtsp", "-rtsp_transport", "tcp", url]);
    PeerProcess::spawn("ffmpeg-publish", &mut cmd, dir)
}

/// ffmpeg reading `url` (after `input` options) for 5 s into `out` with `output` options,
/// which must succeed (a decode error fails it: `-xerror`).
fn read_5s(url: &str, input: &[&str], output: &[&str], out: &Path, dir: &Path) {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(input)
        .args(["-i", url, "-t", "5", "-xerror"])
        .args(output)
        .arg(out);
    let mut reader = PeerProcess::spawn("ffmpeg-read", &mut cmd, dir);
    assert!(
        reader.wait(Duration::from_secs(60)).success(),
        "{url}: {}",
        reader.stderr()
    );
}

/// Mono samples (the first channel) of a 16-bit little-endian WAV file written by ffmpeg,
/// with its sample rate and channel count.
fn wav_samples(file: &Path) -> (u32, u16, Vec<f32>) {
    let b = std::fs::read(file).unwrap();
    assert_eq!(&b[..4], b"RIFF", "{}", file.display());
    let mut at = 12;
    let (mut rate, mut channels, mut bits) = (0u32, 0u16, 0u16);
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &b[at + 8..(at + 8 + len).min(b.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]);
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            bits = u16::from_le_bytes([body[14], body[15]]);
        } else if id == b"data" {
            assert_eq!(bits, 16, "{}", file.display());
            let step = 2 * usize::from(channels);
            let samples = body
                .chunks_exact(step)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                .collect();
            return (rate, channels, samples);
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk in {}", file.display());
}

/// Sample-based audio over RTP both ways (RFC 3551): ffmpeg publishes a 1 kHz tone over RTSP
/// as G.722, G.726-32 (both bit orders), L16 and L24; ffmpeg reads each back over RTSP and
/// decodes it: the sample rate and channels the codec has, 5 s of audio from 5 s read, and the
/// tone still at 1 kHz (± 20 Hz). The API names the codec.
#[test]
fn g722_g726_and_lpcm_over_rtsp_both_ways() {
    let dir = scratch("rtsp-sample-audio");
    let server = TestServer::start("");
    // (path, ffmpeg encoder and options, API name, rate and channels read back)
    let cases: [(&str, &[&str], &str, u32, u16); 5] = [
        (
            "g722",
            &["-c:a", "g722", "-ar", "16000", "-ac", "1"],
            "G722",
            16_000,
            1,
        ),
        (
            "g726le",
            &["-c:a", "g726le", "-ar", "8000", "-ac", "1", "-b:a", "32k"],
            "G726",
            8000,
            1,
        ),
        (
            "g726be",
            &["-c:a", "g726", "-ar", "8000", "-ac", "1", "-b:a", "32k"],
            "G726",
            8000,
            1,
        ),
        (
            "l16",
            &["-c:a", "pcm_s16be", "-ar", "48000", "-ac", "2"],
            "LPCM",
            48_000,
            2,
        ),
        (
            "l24",
            &["-c:a", "pcm_s24be", "-ar", "44100", "-ac", "2"],
            "LPCM",
            44_100,
            2,
        ),
    ];
    let mut publishers = Vec::new();
    for (path, codec, _, _, _) in &cases {
        publishers.push(publish_lavfi(
            &server.rtsp_url(path),
            "sine=frequency=1000:sample_rate=48000",
            codec,
            &dir,
        ));
    }
    for (path, _, name, rate, channels) in &cases {
        server.wait_ready(path, READY);
        assert_eq!(
            server.paths().get(path).unwrap().tracks,
            vec![*name],
            "{path}"
        );
        let out = dir.join(format!("{path}.wav"));
        let tcp = ["-rtsp_transport", "tcp"];
        read_5s(
            &server.rtsp_url(path),
            &tcp,
            &["-c:a", "pcm_s16le"],
            &out,
            &dir,
        );
        let (r, ch, pcm) = wav_samples(&out);
        assert_eq!((r, ch), (*rate, *channels), "{path}");
        let secs = pcm.len() as f64 / f64::from(r);
        assert!(secs > 4.5, "{path}: {secs} s of audio decoded from 5 s");
        let peak =
            tidegate_tests::tone_peak(&pcm[pcm.len() / 2..pcm.len() / 2 + r as usize / 2], r);
        assert!(
            (peak - 1000.0).abs() <= 20.0,
            "{path}: the tone peaks at {peak} Hz"
        );
        eprintln!("{path}: {name} {r} Hz x{ch}, {secs:.2} s, tone at {peak} Hz");
    }
}

/// M-JPEG (RFC 2435), MPEG-4 Visual (RFC 6416) and MPEG-2 video (RFC 2250) over RTSP both
/// ways: ffmpeg publishes each (testsrc2 at 640x360, 25 fps) over RTSP; ffmpeg reads it back
/// over RTSP and decodes every frame (≥ 110 in 5 s at 640x360); the API names the codec; an
/// HLS reader of the M-JPEG path is refused with the reason.
#[test]
fn mjpeg_mpeg4_and_mpeg2_video_over_rtsp_both_ways() {
    let dir = scratch("rtsp-video-codecs");
    let server = TestServer::start("");
    let cases: [(&str, &[&str], &str); 3] = [
        (
            "mjpeg",
            &[
                "-c:v", "mjpeg", "-huffman", "default", "-pix_fmt", "yuvj420p", "-q:v", "5",
            ],
            "M-JPEG",
        ),
        (
            "mpeg4",
            &["-c:v", "mpeg4", "-q:v", "5", "-g", "25", "-bf", "0"],
            "MPEG-4 Video",
        ),
        (
            "mpeg2",
            &["-c:v", "mpeg2video", "-q:v", "5", "-g", "25", "-bf", "0"],
            "MPEG-1/2 Video",
        ),
    ];
    let mut publishers = Vec::new();
    for (path, codec, _) in &cases {
        publishers.push(publish_lavfi(
            &server.rtsp_url(path),
            "testsrc2=size=640x360:rate=25",
            codec,
            &dir,
        ));
    }
    for (path, _, name) in &cases {
        server.wait_ready(path, READY);
        assert_eq!(
            server.paths().get(path).unwrap().tracks,
            vec![*name],
            "{path}"
        );
        let out = dir.join(format!("{path}.nut"));
        let tcp = ["-rtsp_transport", "tcp"];
        let raw = ["-map", "0:v", "-c:v", "rawvideo"];
        read_5s(&server.rtsp_url(path), &tcp, &raw, &out, &dir);
        let p = ffprobe(out.to_str().unwrap(), &[], Duration::from_secs(30));
        assert_eq!(p.dimensions(), Some((640, 360)), "{path}");
        let frames = p.packets_of("video").len();
        assert!(frames >= 110, "{path}: {frames} frames decoded in 5 s");
        eprintln!("{path}: {name}, {frames} frames decoded in 5 s at 640x360");
    }
    let (status, body) =
        tidegate_tests::http::request(server.hls_addr(), "GET", "/mjpeg/index.m3u8");
    assert!(status >= 400, "HLS of M-JPEG: {status} {body}");
    assert!(body.contains("M-JPEG"), "HLS of M-JPEG: {status} {body}");
}

/// AC-3 over RTP (RFC 4184) both ways: an RTSP camera (GStreamer's `avenc_ac3 ! rtpac3pay`,
/// a 440 Hz tone, and H.264) is pulled (by Tidegate's own RTSP client over UDP: retina, the
/// default one, has no AC-3); ffmpeg reads it back over RTSP (our packetizer) and over
/// SRT (AC-3 in MPEG-TS) and decodes 48 kHz stereo, 5 s from 5 s, the tone at 440 Hz ± 20.
#[test]
fn ac3_from_a_gstreamer_camera_over_rtsp_both_ways() {
    let dir = scratch("rtsp-ac3");
    let port = tidegate_tests::peers::free_port();
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: rtsp://127.0.0.1:{port}/cam\n"
    ));
    let mut camera = Command::new("/usr/bin/python3");
    camera
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/camera.py"))
        .args([
            "--port",
            &port.to_string(),
            "--audio",
            "ac3",
            "--max-seconds",
            "60",
        ]);
    let _camera = PeerProcess::spawn("gst-camera-ac3", &mut camera, &dir);
    server.wait_ready("cam", Duration::from_secs(30));
    assert_eq!(
        server.paths().get("cam").unwrap().tracks,
        vec!["H264", "AC3"]
    );
    for (name, url, extra) in [
        (
            "rtsp",
            server.rtsp_url("cam"),
            &["-rtsp_transport", "tcp"][..],
        ),
        ("srt", server.srt_url("read:cam", ""), &[][..]),
    ] {
        let out = dir.join(format!("{name}.wav"));
        read_5s(
            &url,
            extra,
            &["-map", "0:a", "-c:a", "pcm_s16le"],
            &out,
            &dir,
        );
        let (r, ch, pcm) = wav_samples(&out);
        assert_eq!((r, ch), (48_000, 2), "{name}");
        let secs = pcm.len() as f64 / f64::from(r);
        assert!(secs > 4.5, "{name}: {secs} s of AC-3 decoded from 5 s");
        let peak = tidegate_tests::tone_peak(&pcm[pcm.len() / 2..pcm.len() / 2 + 24_000], r);
        assert!(
            (peak - 440.0).abs() <= 20.0,
            "{name}: the tone peaks at {peak} Hz"
        );
        eprintln!("AC-3 read over {name}: {r} Hz x{ch}, {secs:.2} s, tone at {peak} Hz");
    }
}

/// MPEG-TS over RTP (RFC 2250 §2, `MP2T`) both ways: an RTSP camera that serves H.264 + AAC
/// muxed in one TS (GStreamer's `mpegtsmux ! rtpmp2tpay`) is pulled (Tidegate's own client:
/// retina has no MP2T) and demuxed into its tracks, as an SRT publish is; then GStreamer
/// publishes the same kind of TS with `rtspclientsink` (RECORD). RTSP readers get MP2T back
/// (the DESCRIBE offers `MP2T/90000`; our packetizer): ffmpeg reads each path (640x360 H.264 at
/// 30 fps and the AAC tone, 440 Hz, 5 s from 5 s) and GStreamer's `rtpmp2tdepay` decodes the
/// video; other protocols read the demuxed tracks (ffmpeg over SRT).
#[test]
fn mpegts_over_rtp_from_a_camera_and_a_publisher() {
    let dir = scratch("rtsp-mp2t");
    let port = tidegate_tests::peers::free_port();
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: rtsp://127.0.0.1:{port}/cam\n  pub:\n"
    ));
    let mut camera = Command::new("/usr/bin/python3");
    camera
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/camera.py"))
        .args([
            "--port",
            &port.to_string(),
            "--mpegts",
            "--max-seconds",
            "60",
        ]);
    let _camera = PeerProcess::spawn("gst-camera-mp2t", &mut camera, &dir);
    server.wait_ready("cam", Duration::from_secs(30));

    let mut publisher = Command::new(peer("gst-launch-1.0"));
    publisher.args(
        "-q videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
         ! mpegtsmux name=mux alignment=7 ! rtspclientsink protocols=tcp"
            .split_whitespace(),
    );
    publisher.arg(format!("location={}", server.rtsp_url("pub")));
    publisher.args(
        "audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! audioconvert \
         ! avenc_aac ! aacparse ! mux."
            .split_whitespace(),
    );
    let _publisher = PeerProcess::spawn("gst-rtspclientsink-mp2t", &mut publisher, &dir);
    server.wait_ready("pub", Duration::from_secs(30));

    for path in ["cam", "pub"] {
        assert_eq!(
            server.paths().get(path).unwrap().tracks,
            vec!["H264", "MPEG-4 Audio"],
            "{path}"
        );
        let out = dir.join(format!("{path}.mkv"));
        read_5s(
            &server.rtsp_url(path),
            &["-rtsp_transport", "tcp"],
            &["-c", "copy"],
            &out,
            &dir,
        );
        let p = probe_file(&out);
        assert_eq!(p.codec("video").as_deref(), Some("h264"), "{path}");
        assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{path}");
        assert_eq!(p.dimensions(), Some((640, 360)), "{path}");
        let frames = p.packets_of("video").len();
        assert!(
            (120..=170).contains(&frames),
            "{path}: {frames} frames in 5 s"
        );
        assert!(p.dts_monotonic("video"), "{path}");
        let pcm = tidegate_tests::decode_audio(&out);
        let peak = tidegate_tests::tone_peak(&pcm[pcm.len() / 2..], 48_000);
        assert!(
            (peak - 440.0).abs() <= 20.0,
            "{path}: the tone at {peak} Hz"
        );
        eprintln!("MP2T {path} read over RTSP: {frames} frames, 640x360, tone at {peak} Hz");
    }
    // The DESCRIBE offers the TS as it came.
    let url = server.rtsp_url("pub");
    let addr = url
        .trim_start_matches("rtsp://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let describe = rtsp_request(addr, &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"));
    assert!(describe.contains("a=rtpmap:33 MP2T/90000"), "{describe}");
    // GStreamer's MP2T depacketizer and TS demuxer.
    let out = run_bounded(
        Command::new(peer("timeout"))
            .args(["-s", "INT", "-k", "5", "6"])
            .arg(peer("gst-launch-1.0"))
            .args(["-e", "-v", "playbin"])
            .arg(format!("uri={}", url.replacen("rtsp://", "rtspt://", 1)))
            .arg("video-sink=fakesink silent=false sync=true")
            .arg("audio-sink=fakesink sync=true"),
        Duration::from_secs(25),
    );
    let log = String::from_utf8_lossy(&out.stdout);
    let pictures = log.matches("last-message = chain").count();
    let caps = tidegate_tests::gst_video_caps(&log);
    eprintln!("GStreamer MP2T read: {pictures} pictures, {caps}");
    assert!(log.contains("rtpmp2tdepay"), "{log}");
    assert!(pictures >= 90, "{pictures} pictures in 6 s");
    assert!(caps.contains("width=(int)640"), "{caps}");
    // Other protocols read the demuxed tracks.
    let out = dir.join("srt.mkv");
    read_5s(
        &server.srt_url("read:pub", ""),
        &[],
        &["-c", "copy"],
        &out,
        &dir,
    );
    let p = probe_file(&out);
    assert_eq!(p.codec("video").as_deref(), Some("h264"));
    assert_eq!(p.codec("audio").as_deref(), Some("aac"));
}

/// RTSP tunnelled over HTTP on the RTSP port: ffmpeg (`-rtsp_transport http`) and GStreamer
/// (`rtsph://`) read an RTMP publish (frames, both tracks, size, monotonic DTS), and a second
/// server pulls it with `source: rtsp+http://`; a POST without its GET is closed unanswered.
#[test]
fn rtsp_over_http_tunnels_are_read_by_ffmpeg_and_gstreamer() {
    let dir = scratch("rtsp-http-tunnel");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtmp_url("cam"), 40, "flv", &dir);
    server.wait_ready("cam", Duration::from_secs(20));
    // A POST with no GET of its cookie: closed.
    let rtsp_url = server.rtsp_url("");
    let addr = rtsp_url.trim_start_matches("rtsp://").trim_end_matches('/');
    let mut stray = TcpStream::connect(addr).unwrap();
    stray
        .write_all(
            b"POST /cam HTTP/1.0\r\nx-sessioncookie: nobody\r\nContent-Length: 32767\r\n\r\n",
        )
        .unwrap();
    stray
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stray.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a stray POST is closed without an answer");

    read_and_check(&server.rtsp_url("cam"), "http", "h264", Some("aac"), &dir);
    let url = server.rtsp_url("cam").replacen("rtsp://", "rtsph://", 1);
    let (buffers, caps) = gst_rtsp_read(&url, "tcp", 6);
    eprintln!("GStreamer over an HTTP tunnel: {buffers} buffers");
    assert!(buffers >= 200, "GStreamer decoded only {buffers} buffers");
    assert!(caps.contains("width=(int)640, height=(int)360"), "{caps}");

    // And pulled through the tunnel: `source: rtsp+http://` on a second server.
    let edge = TestServer::start(&format!(
        "paths:\n  relay:\n    source: {}\n",
        server
            .rtsp_url("cam")
            .replacen("rtsp://", "rtsp+http://", 1)
    ));
    edge.wait_ready("relay", Duration::from_secs(30));
    let out = dir.join("relay.mkv");
    let mut r = tidegate_tests::peers::ffmpeg_read(&edge.rtmp_url("relay"), 4, &out, &dir);
    assert!(r.wait(Duration::from_secs(30)).success(), "{}", r.stderr());
    assert_media(&probe_file(&out), "h264", Some("aac"), 4);
}

/// RTSP over WebSocket (ONVIF's `rtsp.onvif.org` subprotocol, MediaMTX's `rtsp+ws://`) on
/// the RTSP port: a reader on the `websockets` library (PyPI) runs DESCRIBE/SETUP/PLAY through
/// it and gets H.264 and AAC (frames, IDR, timestamps forward); a second server pulls the path
/// with `source: rtsp+ws://` and ffmpeg reads it there over RTMP; a text message or an
/// unmasked frame closes the connection.
#[test]
fn rtsp_over_websocket_is_read_and_pulled() {
    let dir = scratch("rtsp-ws");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtmp_url("cam"), 60, "flv", &dir);
    server.wait_ready("cam", Duration::from_secs(20));
    let rtsp = server.rtsp_url("cam");
    let ws = format!(
        "ws://{}/",
        rtsp.trim_start_matches("rtsp://").trim_end_matches("/cam")
    );
    let mut py = Command::new(peer("python"));
    py.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/rtsp_ws.py"))
        .args([&ws, &rtsp, "--seconds", "4"]);
    let out = run_bounded(&mut py, Duration::from_secs(40));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rtsp_ws.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("over WebSocket: {report}");
    let tracks = report["tracks"].as_array().expect("tracks");
    let video = tracks.iter().find(|t| t["codec"] == "H264").expect("H.264");
    let audio = tracks
        .iter()
        .find(|t| t["codec"] == "mpeg4-generic" || t["codec"] == "MPEG4-GENERIC")
        .expect("AAC");
    assert!(video["frames"].as_u64().unwrap_or(0) >= 90, "{video}");
    assert!(video["idr"].as_u64().unwrap_or(0) >= 2, "{video}");
    assert_eq!(video["monotonic"], true, "{video}");
    assert!(audio["packets"].as_u64().unwrap_or(0) >= 100, "{audio}");
    assert_eq!(audio["monotonic"], true, "{audio}");

    // Broken framing: a text message, an unmasked frame: closed.
    let addr = ws.trim_start_matches("ws://").trim_end_matches('/');
    for frame in [&b"\x81\x84abcd\x11\x22\x33\x44"[..], &b"\x82\x02hi"[..]] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: rtsp.onvif.org\r\n\r\n",
        )
        .unwrap();
        s.write_all(frame).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 101") && text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{text}"
        );
    }

    // Pulled through a WebSocket: `source: rtsp+ws://` on a second server.
    let edge = TestServer::start(&format!(
        "paths:\n  relay:\n    source: {}\n",
        rtsp.replacen("rtsp://", "rtsp+ws://", 1)
    ));
    edge.wait_ready("relay", Duration::from_secs(30));
    let out = dir.join("relay.mkv");
    let mut r = tidegate_tests::peers::ffmpeg_read(&edge.rtmp_url("relay"), 4, &out, &dir);
    assert!(r.wait(Duration::from_secs(30)).success(), "{}", r.stderr());
    assert_media(&probe_file(&out), "h264", Some("aac"), 4);
    assert!(
        tidegate_tests::logs::lines_with(&["over WebSocket"]).len() >= 2,
        "the reader and the edge came over WebSocket"
    );
}

/// `forward: rtsp://…`: an RTMP publish is pushed over RTSP (ANNOUNCE, SETUP over TCP
/// interleaved, RECORD) to ffmpeg's RTSP listener, which records it, and to a second
/// Tidegate, read there over RTMP: both get H.264 + AAC with monotonic timestamps.
#[test]
fn forward_pushes_over_rtsp_to_ffmpeg_and_to_another_server() {
    let dir = scratch("rtsp-forward");
    let port = tidegate_tests::peers::free_port();
    let recorded = dir.join("listener.mkv");
    let mut listener = Command::new(peer("ffmpeg"));
    listener
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-rtsp_flags", "listen", "-rtsp_transport", "tcp", "-i"])
        .arg(format!("rtsp://127.0.0.1:{port}/relay"))
        .args(["-t", "5", "-c", "copy"])
        .arg(&recorded);
    let mut listener = PeerProcess::spawn("ffmpeg-rtsp-listen", &mut listener, &dir);
    let second = TestServer::start("paths:\n  relay:\n");
    let first = TestServer::start(&format!(
        "paths:\n  cam:\n    forward:\n      - rtsp://127.0.0.1:{port}/relay\n      - dest: {}\n",
        second.rtsp_url("relay")
    ));
    let _publisher = ffmpeg_publish(&first.rtmp_url("cam"), 40, "flv", &dir);
    first.wait_ready("cam", Duration::from_secs(20));
    second.wait_ready("relay", Duration::from_secs(20));
    let out = dir.join("second.mkv");
    let mut reader = tidegate_tests::peers::ffmpeg_read(&second.rtmp_url("relay"), 4, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(40)).success(),
        "{}",
        reader.stderr()
    );
    assert!(
        listener.wait(Duration::from_secs(40)).success(),
        "ffmpeg's listener: {}",
        listener.stderr()
    );
    for (what, file, seconds) in [
        ("ffmpeg's listener", &recorded, 5),
        ("the second server", &out, 4),
    ] {
        let p = probe_file(file);
        let frames = p.packets_of("video").len();
        eprintln!(
            "{what}: {frames} video, {} audio frames",
            p.packets_of("audio").len()
        );
        assert_eq!(p.codec("video").as_deref(), Some("h264"), "{what}");
        assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{what}");
        assert_eq!(p.dimensions(), Some((640, 360)), "{what}");
        assert!(
            frames + 30 >= seconds * 30,
            "{what}: {frames} frames in {seconds} s"
        );
        assert!(p.dts_monotonic("video"), "{what}");
    }
    let second_info = second.paths().get("relay").expect("relay");
    assert_eq!(second_info.tracks, vec!["H264", "MPEG-4 Audio"]);
}

/// A recording pulled from an NVR-like server (gst-rtsp-server serving an 8 s MP4, seekable)
/// with `rtspRangeType: npt`, `rtspRangeStart: 5s`, `rtspScale` and
/// `rtspUDPSourcePortRange`: the PLAY carries `Range: npt=5.000-` and `Scale`, the server
/// seeks, and a reader gets only the last 3 s of the file (75 of its 200 frames) before the
/// media stops; the RTP came to ports of the range.
#[test]
fn a_pulled_recording_starts_at_rtsp_range_start() {
    let dir = scratch("rtsp-range");
    let file = dir.join("recording.mp4");
    tidegate_tests::peers::testsrc_mp4(&file, 8, "320x240");
    let port = tidegate_tests::peers::free_port();
    let mut camera = Camera::start_with(port, &["--file", file.to_str().unwrap()]);
    let server = TestServer::start(&format!(
        "paths:\n  rec:\n    source: rtsp://127.0.0.1:{port}/cam\n    sourceOnDemand: yes\n    \
         sourceOnDemandStartTimeout: 30s\n    rtspRangeType: npt\n    rtspRangeStart: 5s\n    rtspScale: \"1\"\n    \
         rtspUDPSourcePortRange: [41000, 41200]\n"
    ));
    // Read in the test until the recording's end (no frame for 3 s).
    let frames =
        server.count_frames_until_quiet("rec", Duration::from_secs(3), Duration::from_secs(60));
    eprintln!("from npt=5: {frames} frames of the 8 s recording's 200");
    assert!(
        camera.wait("PLAY Range: npt=5.000-", 1, Duration::from_secs(5)),
        "{:?}",
        camera.seen
    );
    assert!(
        camera.wait("PLAY Scale: 1", 1, Duration::from_secs(5)),
        "{:?}",
        camera.seen
    );
    assert!((50..=100).contains(&frames), "{frames} frames");
    assert_eq!(
        server.paths().get("rec").map(|p| p.tracks),
        Some(vec!["H264"])
    );
    let ports: Vec<u16> =
        tidegate_tests::logs::lines_with(&["rec", "RTP from the camera on UDP ports"])
            .iter()
            .filter_map(|l| {
                l.split("UDP ports ")
                    .nth(1)?
                    .split('-')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
    assert!(!ports.is_empty());
    assert!(
        ports.iter().all(|p| (41000..41200).contains(p)),
        "{ports:?}"
    );
}
