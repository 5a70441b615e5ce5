//! MediaMTX drop-in: its stock `mediamtx.yml` (tests/fixtures/mediamtx, unchanged) starts
//! Tidegate, and every listener it names comes up where it says and answers a real peer.
//!
//! The file names fixed ports (:8554, :1935, …): the server runs in a network namespace of its
//! own (only a loopback interface), and the peers enter it with `nsenter`, so the test neither
//! collides with anything on the machine nor leaves loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{
    ffprobe, ffprobe_via, in_ns, peer, poll, run_bounded, scratch, server_binary,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/mediamtx/mediamtx.yml"
);

/// The listening sockets of the namespace: (`tcp` or `udp`, port).
fn listening(pid: u32) -> Vec<(String, u16)> {
    let mut ss = Command::new(peer("ss"));
    ss.args(["-H", "-l", "-n", "-t", "-u"]);
    let out = run_bounded(&mut in_ns(pid, &ss), Duration::from_secs(10));
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let proto = f.first()?.to_string();
            let port = f.get(4)?.rsplit(':').next()?.parse().ok()?;
            Some((proto, port))
        })
        .collect()
}

fn publisher_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("ffmpeg-rtmp.stderr")).unwrap_or_default()
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("tidegate.stderr")).unwrap_or_default()
}

#[test]
fn stock_mediamtx_yml_starts_and_every_listener_answers() {
    let dir = scratch("mediamtx-stock");
    std::fs::copy(FIXTURE, dir.join("mediamtx.yml")).expect("fixture");
    // `unshare` execs `sh`, which execs the server: the pid spawned is the server's.
    let mut unshare = Command::new(peer("unshare"));
    unshare
        .args([
            "--net",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" mediamtx.yml"#,
        ])
        .arg(server_binary())
        .current_dir(&dir);
    let mut server = PeerProcess::spawn("tidegate", &mut unshare, &dir);
    let pid = server.pid();
    let log = poll(
        Duration::from_secs(30),
        || format!("the listeners did not open:\n{}", log_of(&dir)),
        || {
            let log = log_of(&dir);
            (log.matches("listener opened").count() >= 6).then_some(log)
        },
    );
    assert!(
        log.contains("configuration: mediamtx.yml"),
        "the file in the working directory is read: {log}"
    );
    // No warning but MoQ's (which MediaMTX's file turns on): every other key is understood.
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("moq: Media over QUIC is not built"),
        "{}",
        warnings[0]
    );

    // Every listener where the file says, and nothing the file turns off.
    let socks = listening(pid);
    eprintln!("listening: {socks:?}");
    for (proto, port, what) in [
        ("tcp", 8554, "rtspAddress"),
        ("udp", 8000, "rtpAddress"),
        ("udp", 8001, "rtcpAddress"),
        ("tcp", 1935, "rtmpAddress"),
        ("tcp", 8888, "hlsAddress"),
        ("tcp", 8889, "webrtcAddress"),
        ("udp", 8189, "webrtcLocalUDPAddress"),
        ("udp", 8890, "srtAddress"),
    ] {
        assert!(
            socks.iter().any(|(p, n)| p == proto && *n == port),
            "{what}: nothing listens on {proto} {port}: {socks:?}"
        );
    }
    for (port, what) in [
        (9997, "api: false"),
        (9998, "metrics: false"),
        (9999, "pprof: false"),
        (9996, "playback: false"),
        (8892, "moq (not built)"),
        (8893, "moq (not built)"),
        (8322, "rtspEncryption: no"),
        (1936, "rtmpEncryption: no"),
    ] {
        assert!(
            !socks.iter().any(|(_, n)| *n == port),
            "{what}: port {port} is open: {socks:?}"
        );
    }
    assert_eq!(
        socks.len(),
        8,
        "exactly the listeners the file names: {socks:?}"
    );

    // Each answers a real peer: ffmpeg publishes over RTMP (1935); ffprobe reads over RTSP
    // with RTP on UDP (8554, sent from 8000/8001), SRT (8890) and HLS (8888); the WHEP
    // endpoint (8889) answers its preflight.
    let mut publish = Command::new(peer("ffmpeg"));
    publish
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", "40", "-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-tune", "zerolatency", "-g", "30", "-c:a", "aac"])
        .args(["-f", "flv", "rtmp://127.0.0.1:1935/mystream"]);
    let mut publisher = PeerProcess::spawn("ffmpeg-rtmp", &mut in_ns(pid, &publish), &dir);
    poll(
        Duration::from_secs(20),
        || format!("no publish:\n{}\n{}", log_of(&dir), publisher_log(&dir)),
        || log_of(&dir).contains("is publishing").then_some(()),
    );

    for (what, url, extra) in [
        (
            "RTSP, RTP over UDP",
            "rtsp://127.0.0.1:8554/mystream",
            vec!["-rtsp_transport", "udp"],
        ),
        ("SRT", "srt://127.0.0.1:8890?streamid=read:mystream", vec![]),
        ("HLS", "http://127.0.0.1:8888/mystream/index.m3u8", vec![]),
    ] {
        let mut extra: Vec<&str> = extra;
        extra.extend(["-read_intervals", "%+4"]);
        let probe = ffprobe_via(|c| in_ns(pid, &c), url, &extra, Duration::from_secs(40));
        let video = probe.packets_of("video").len();
        eprintln!(
            "{what}: {:?} {:?}, {video} video packets",
            probe.codec("video"),
            probe.codec("audio")
        );
        assert_eq!(probe.codec("video").as_deref(), Some("h264"), "{what}");
        assert_eq!(probe.codec("audio").as_deref(), Some("aac"), "{what}");
        assert_eq!(probe.dimensions(), Some((640, 360)), "{what}");
        assert!(video >= 60, "{what}: {video} video packets in 4 s");
        let dts = probe.dts_seconds("video");
        let back: Vec<(usize, f64, f64)> = dts
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[1] < w[0])
            .map(|(i, w)| (i, w[0], w[1]))
            .collect();
        assert!(back.is_empty(), "{what}: video DTS go back at {back:?}");
    }

    let mut curl = Command::new(peer("curl"));
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "OPTIONS",
    ])
    .arg("http://127.0.0.1:8889/mystream/whep");
    let out = run_bounded(&mut in_ns(pid, &curl), Duration::from_secs(10));
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(code == "204" || code == "200", "WHEP preflight: {code}");

    publisher.kill9();
    server.kill9();
}

/// A read replica as MediaMTX documents it: `~^(.+)$` with `source: rtsp://origin/$G1` and
/// `sourceOnDemand` (and the same over RTMP and SRT): two paths published on the origin are
/// read through the replica; the origin sees one pull per path however many replica readers
/// there are, and the pull closes after the replica's last reader.
#[test]
fn a_read_replica_pulls_each_name_from_its_origin_on_demand() {
    let dir = scratch("mediamtx-replica");
    let origin = TestServer::start("");
    let mut pubs: Vec<PeerProcess> = ["cam1", "cam2"]
        .iter()
        .map(|p| ffmpeg_publish(&origin.rtmp_url(p), 60, "flv", &dir))
        .collect();
    origin.wait_ready("cam1", Duration::from_secs(20));
    origin.wait_ready("cam2", Duration::from_secs(20));
    let replica = TestServer::start(&format!(
        "paths:\n\
         \x20 \"~^srt/(.+)$\":\n\
         \x20   source: srt://{srt}?streamid=read:$G1\n\
         \x20   sourceOnDemand: yes\n\
         \x20   sourceOnDemandCloseAfter: 1s\n\
         \x20 \"~^rtmp/(.+)$\":\n\
         \x20   source: rtmp://{rtmp}/$G1\n\
         \x20   sourceOnDemand: yes\n\
         \x20   sourceOnDemandCloseAfter: 1s\n\
         \x20 \"~^(.+)$\":\n\
         \x20   source: {rtsp}$G1\n\
         \x20   sourceOnDemand: yes\n\
         \x20   sourceOnDemandCloseAfter: 1s\n",
        srt = origin.srt_addr(),
        rtmp = origin.rtmp_addr(),
        rtsp = origin.rtsp_url(""),
    ));

    // cam1 through the RTSP template, read by two readers at once (RTSP and RTMP).
    let a = dir.join("cam1-rtsp.mkv");
    let b = dir.join("cam1-rtmp.flv");
    let mut r1 = ffmpeg_read(&replica.rtsp_url("cam1"), 6, &a, &dir);
    let mut r2 = ffmpeg_read(&replica.rtmp_url("cam1"), 6, &b, &dir);
    replica.wait_readers("cam1", 2, Duration::from_secs(20));
    let origin_readers = origin.paths().get("cam1").map_or(0, |p| p.readers.len());
    assert_eq!(
        origin_readers, 1,
        "one pull of cam1 for two replica readers"
    );
    // cam2 through the RTMP and SRT templates at the same time: a pull each (two names).
    let c = dir.join("cam2-rtmp.flv");
    let d = dir.join("cam2-srt.ts");
    let mut r3 = ffmpeg_read(&replica.rtmp_url("rtmp/cam2"), 6, &c, &dir);
    let mut r4 = ffmpeg_read(
        &replica.srt_url("read:srt/cam2", "&latency=200000"),
        6,
        &d,
        &dir,
    );
    replica.wait_readers("rtmp/cam2", 1, Duration::from_secs(20));
    replica.wait_readers("srt/cam2", 1, Duration::from_secs(20));
    let cam2 = origin.paths().get("cam2").map_or(0, |p| p.readers.len());
    assert_eq!(cam2, 2, "rtmp/cam2 and srt/cam2 each pull cam2 once");
    for r in [&mut r1, &mut r2, &mut r3, &mut r4] {
        let status = r.wait(Duration::from_secs(60));
        assert!(status.success(), "{}", r.stderr());
    }
    for (what, file) in [
        ("cam1 over RTSP", &a),
        ("cam1 over RTMP", &b),
        ("rtmp/cam2", &c),
        ("srt/cam2", &d),
    ] {
        let p = ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30));
        let frames = p.packets_of("video").len();
        eprintln!(
            "{what}: {frames} video frames, audio {:?}",
            p.codec("audio")
        );
        assert_eq!(p.codec("video").as_deref(), Some("h264"), "{what}");
        assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{what}");
        assert_eq!(p.dimensions(), Some((640, 360)), "{what}");
        assert!(frames >= 120, "{what}: {frames} frames in 6 s");
        assert!(p.dts_monotonic("video"), "{what}");
    }
    // The replica's last readers left: its pulls close (sourceOnDemandCloseAfter: 1s) and the
    // origin has no reader left.
    poll(
        Duration::from_secs(20),
        || "the replica's pulls did not close".into(),
        || {
            let n = |p: &str| origin.paths().get(p).map_or(0, |p| p.readers.len());
            (n("cam1") == 0 && n("cam2") == 0).then_some(())
        },
    );
    for p in &mut pubs {
        p.kill9();
    }
}

/// `source: redirect` with `sourceRedirect` (a path of the same server, or another server's
/// RTSP URL) and the deprecated `fallback` (used while the path has no stream): ffmpeg's RTSP
/// reader follows the 302 and reads the stream it was sent to; an RTMP reader of a redirect
/// path gets nothing.
#[test]
fn rtsp_readers_follow_source_redirect_and_fallback() {
    let dir = scratch("mediamtx-redirect");
    let origin = TestServer::start("");
    let mut p1 = ffmpeg_publish(&origin.rtmp_url("cam"), 60, "flv", &dir);
    origin.wait_ready("cam", Duration::from_secs(20));
    let edge = TestServer::start(&format!(
        "paths:\n\
         \x20 local:\n\
         \x20 moved:\n\
         \x20   source: redirect\n\
         \x20   sourceRedirect: /local\n\
         \x20 away:\n\
         \x20   source: redirect\n\
         \x20   sourceRedirect: {cam}\n\
         \x20 idle:\n\
         \x20   fallback: {cam}\n",
        cam = origin.rtsp_url("cam"),
    ));
    let mut p2 = ffmpeg_publish(&edge.rtmp_url("local"), 60, "flv", &dir);
    edge.wait_ready("local", Duration::from_secs(20));

    for (name, from, to) in [
        ("moved", &edge, "local"),
        ("away", &origin, "cam"),
        ("idle", &origin, "cam"),
    ] {
        let before = from.paths().get(to).map_or(0, |p| p.readers.len());
        let file = dir.join(format!("{name}.mkv"));
        let mut r = ffmpeg_read(&edge.rtsp_url(name), 4, &file, &dir);
        from.wait_readers(to, before + 1, Duration::from_secs(20));
        let status = r.wait(Duration::from_secs(40));
        assert!(status.success(), "{name}: {}", r.stderr());
        let p = ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30));
        let frames = p.packets_of("video").len();
        eprintln!("{name} -> {to}: {frames} video frames");
        assert_eq!(p.codec("video").as_deref(), Some("h264"), "{name}");
        assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{name}");
        assert!(frames >= 75, "{name}: {frames} frames in 4 s");
        assert!(p.dts_monotonic("video"), "{name}");
        assert!(
            edge.paths().get(name).is_none_or(|p| p.readers.is_empty()),
            "{name} itself has no reader: the reader was sent on"
        );
    }
    // Over RTMP there is nothing to follow: the reader of a redirect path is refused.
    let file = dir.join("moved.flv");
    let mut r = ffmpeg_read(&edge.rtmp_url("moved"), 2, &file, &dir);
    let status = r.wait(Duration::from_secs(30));
    assert!(
        !status.success(),
        "an RTMP reader of a redirect path is refused"
    );
    p1.kill9();
    p2.kill9();
}

/// A copy of the dump `file` as far as its last whole pcapng block, in a `snapshots/`
/// directory beside it. The server is still writing the files of live connections, and a
/// reader can catch a write half done (the kernel does not make a file write atomic for a
/// reader): tshark then calls the file "cut short in the middle of a packet". Wireshark
/// reading a live capture sees the same; what was written whole is what is checked.
fn whole_blocks(file: &Path) -> std::path::PathBuf {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut end = 0;
    while let Some(len) = bytes.get(end + 4..end + 8) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len < 12 || !len.is_multiple_of(4) || end + len > bytes.len() {
            break;
        }
        end += len;
    }
    let dir = file.with_file_name("snapshots");
    std::fs::create_dir_all(&dir).expect("a snapshots directory");
    let copy = dir.join(file.file_name().expect("a file name"));
    std::fs::write(&copy, &bytes[..end]).expect("a snapshot written");
    copy
}

/// The distinct values tshark prints for `field` of the packets of `file` matching `filter`
/// (`decode`: a `-d` "decode as" for a protocol on a non-standard port).
fn tshark_fields(file: &Path, decode: &[&str], filter: &str, field: &str) -> Vec<String> {
    let mut t = Command::new(peer("tshark"));
    t.arg("-r").arg(whole_blocks(file));
    for d in decode {
        t.args(["-d", d]);
    }
    t.args(["-Y", filter, "-T", "fields", "-e", field]);
    let out = run_bounded(&mut t, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "tshark on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `dumpPackets: yes`: every TCP connection and UDP socket of the servers and sources is
/// written to a pcapng file in the working directory (MediaMTX's names), which tshark reads as
/// a capture: the RTMP publish (its `publish` command), the RTSP reader (DESCRIBE/SETUP/PLAY,
/// and the stream's media the fan-out engine wrote: over 100 kB server to client), the HLS and
/// API requests, the pulled sources' connections, RTP over UDP both ways, MPEG-TS over UDP.
#[test]
fn dump_packets_writes_pcapng_files_that_tshark_reads() {
    let dir = scratch("dump-packets");
    let [rtmp, rtsp, hls, api, rtp, rtcp, ts, webrtc] =
        [(); 8].map(|_| tidegate_tests::peers::free_port());
    let conf = dir.join("tidegate.yml");
    std::fs::write(
        &conf,
        format!(
            "dumpPackets: yes\nrtmpAddress: 127.0.0.1:{rtmp}\nrtspAddress: 127.0.0.1:{rtsp}\n\
             rtspTransports: [tcp, udp]\nrtpAddress: 127.0.0.1:{rtp}\n\
             rtcpAddress: 127.0.0.1:{rtcp}\nhlsAddress: 127.0.0.1:{hls}\n\
             apiAddress: 127.0.0.1:{api}\n\
             webrtcAddress: 127.0.0.1:{webrtc}\nwebrtcLocalUDPAddress: 127.0.0.1:0\n\
             srt: no\nmetrics: no\npaths:\n  all_others:\n\
             \x20 viartsp:\n    source: rtsp://127.0.0.1:{rtsp}/live/cam\n    rtspTransport: tcp\n\
             \x20 viaudp:\n    source: rtsp://127.0.0.1:{rtsp}/live/cam\n    rtspTransport: udp\n\
             \x20 viartmp:\n    source: rtmp://127.0.0.1:{rtmp}/live/cam\n\
             \x20 viahls:\n    source: http://127.0.0.1:{hls}/live/cam/index.m3u8\n\
             \x20 viats:\n    source: udp+mpegts://127.0.0.1:{ts}\n\
             \x20 viawhep:\n    source: whep://127.0.0.1:{webrtc}/live/cam/whep\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(server_binary());
    cmd.arg(&conf).current_dir(&dir);
    let mut server = PeerProcess::spawn("tidegate", &mut cmd, &dir);
    let api_addr: std::net::SocketAddr = format!("127.0.0.1:{api}").parse().unwrap();
    poll(
        Duration::from_secs(30),
        || format!("the API did not answer:\n{}", log_of(&dir)),
        || std::net::TcpStream::connect(api_addr).ok().map(drop),
    );
    let _publisher = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{rtmp}/live/cam"),
        60,
        "flv",
        &dir,
    );
    poll(
        Duration::from_secs(30),
        || "live/cam not ready".into(),
        || {
            let r = tidegate_tests::http::fetch(api_addr, "/v3/paths/get/live/cam", &[]);
            (r.status == 200 && r.text().contains("\"ready\":true")).then_some(())
        },
    );
    // An RTSP reader over TCP for 3 s, and an HLS request.
    let out = dir.join("read.mkv");
    let mut reader = Command::new(peer("ffmpeg"));
    reader
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-rtsp_transport", "tcp", "-i"])
        .arg(format!("rtsp://127.0.0.1:{rtsp}/live/cam"))
        .args(["-t", "3", "-c", "copy"])
        .arg(&out);
    let mut reader = PeerProcess::spawn("ffmpeg-rtsp-read", &mut reader, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    // And one over UDP.
    let mut reader = Command::new(peer("ffmpeg"));
    reader
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-rtsp_transport", "udp", "-i"])
        .arg(format!("rtsp://127.0.0.1:{rtsp}/live/cam"))
        .args(["-t", "3", "-c", "copy"])
        .arg(dir.join("read-udp.mkv"));
    let mut reader = PeerProcess::spawn("ffmpeg-rtsp-udp-read", &mut reader, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    let hls_addr: std::net::SocketAddr = format!("127.0.0.1:{hls}").parse().unwrap();
    let r = tidegate_tests::http::fetch(hls_addr, "/live/cam/index.m3u8", &[]);
    assert_eq!(r.status, 200);

    // The files: one per connection, named as MediaMTX names them.
    let files = |prefix: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".pcapng"))
            })
            .collect()
    };
    // A field of every packet that `filter` keeps, in the files named `prefix…`.
    let fields_in = |prefix: &str, decode: &str, filter: &str, field: &str| -> Vec<String> {
        files(prefix)
            .iter()
            .flat_map(|f| tshark_fields(f, &[decode], filter, field))
            .collect()
    };
    let ready = |p: &str| {
        poll(
            Duration::from_secs(30),
            || format!("{p} not ready"),
            || {
                let r = tidegate_tests::http::fetch(api_addr, &format!("/v3/paths/get/{p}"), &[]);
                (r.status == 200 && r.text().contains("\"ready\":true")).then_some(())
            },
        )
    };
    // The ffmpeg reader's connection: of the RTSP server's dumps (the pulled source below
    // has one too), the one the server sent the most to.
    let _ = poll(
        Duration::from_secs(10),
        || "no rtsp_server_conn_*.pcapng".into(),
        || files("rtsp_server_conn_").pop(),
    );
    let sent_by = |f: &std::path::PathBuf| -> u64 {
        tshark_fields(f, &[], &format!("tcp.srcport=={rtsp}"), "tcp.len")
            .iter()
            .filter_map(|l| l.parse::<u64>().ok())
            .sum()
    };
    let (rtsp_file, sent) = files("rtsp_server_conn_")
        .into_iter()
        .map(|f| {
            let n = sent_by(&f);
            (f, n)
        })
        .max_by_key(|(_, n)| *n)
        .expect("an RTSP dump");
    let methods = tshark_fields(
        &rtsp_file,
        &[&format!("tcp.port=={rtsp},rtsp")],
        "rtsp.request",
        "rtsp.method",
    );
    eprintln!("RTSP requests in the dump: {methods:?}");
    for m in ["DESCRIBE", "SETUP", "PLAY"] {
        assert!(methods.iter().any(|x| x == m), "{m}: {methods:?}");
    }
    // The media the stream's fan-out writer sent this reader: server to client bytes.
    eprintln!("RTSP dump: {sent} bytes from the server");
    assert!(sent > 100_000, "{sent} bytes");
    // A capture Wireshark finds nothing wrong with: every IP and TCP checksum verified.
    let mut t = Command::new(peer("tshark"));
    t.arg("-r").arg(whole_blocks(&rtsp_file)).args([
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-T",
        "fields",
        "-e",
        "tcp.checksum.status",
        "-e",
        "ip.checksum.status",
    ]);
    let out = run_bounded(&mut t, Duration::from_secs(60));
    let statuses = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(statuses.lines().count() > 50, "{statuses}");
    assert!(
        statuses.lines().all(|l| l.trim() == "1\t1"),
        "checksums not verified: {statuses}"
    );

    let rtmp_files = files("rtmp_server_conn_");
    let commands: Vec<String> = rtmp_files
        .iter()
        .flat_map(|f| {
            tshark_fields(
                f,
                &[&format!("tcp.port=={rtmp},rtmpt")],
                "rtmpt",
                "amf.string",
            )
        })
        .collect();
    assert!(
        commands.iter().any(|c| c.contains("publish")),
        "RTMP dump: {commands:?}"
    );
    let uris = fields_in(
        "hls_server_conn_",
        &format!("tcp.port=={hls},http"),
        "http.request",
        "http.request.uri",
    );
    assert!(
        uris.iter().any(|u| u == "/live/cam/index.m3u8"),
        "HLS dump: {uris:?}"
    );
    assert!(!files("api_server_conn_").is_empty(), "no API dump");

    // The connections of pulled sources: Tidegate's side of them (retina's through a relay).
    for p in ["viartsp", "viartmp", "viahls", "viawhep"] {
        ready(p);
    }
    let pulled = fields_in(
        "rtsp_source_conn_",
        &format!("tcp.port=={rtsp},rtsp"),
        "rtsp.request",
        "rtsp.method",
    );
    eprintln!("the RTSP source's requests: {pulled:?}");
    assert!(pulled.iter().any(|m| m == "PLAY"), "{pulled:?}");
    assert!(
        !files("rtmp_source_conn_").is_empty(),
        "no RTMP source dump"
    );
    assert!(!files("hls_source_conn_").is_empty(), "no HLS source dump");
    // The WHEP source's HTTP exchange: its offer POSTed.
    let whep = fields_in(
        "whep_source_conn_",
        &format!("tcp.port=={webrtc},http"),
        "http.request",
        "http.request.method",
    );
    assert!(
        whep.iter().any(|m| m == "POST"),
        "WHEP source dump: {whep:?}"
    );

    // UDP sockets: a file each, their datagrams as IP/UDP packets. The RTSP server's RTP
    // socket sent the UDP reader its media (and the pulled `viaudp` its own); the pulled
    // source's socket received it; the MPEG-TS source's received ffmpeg's datagrams.
    let _ts = ffmpeg_publish(
        &format!("udp://127.0.0.1:{ts}?pkt_size=1316"),
        60,
        "mpegts",
        &dir,
    );
    for p in ["viaudp", "viats"] {
        ready(p);
    }
    // Datagrams reach the files as they come: the writer thread is asynchronous.
    let udp_count = |prefix: &str, filter: &str| -> usize {
        files(prefix)
            .iter()
            .map(|f| tshark_fields(f, &[], filter, "udp.length").len())
            .sum()
    };
    let rtp_sent = poll(
        Duration::from_secs(20),
        || "the RTSP server's RTP socket dumped too little".into(),
        || {
            let n = udp_count("rtsp_server_packet_conn_", &format!("udp.srcport=={rtp}"));
            (n > 200).then_some(n)
        },
    );
    let rtp_pulled = poll(
        Duration::from_secs(20),
        || "the pulled source's UDP sockets dumped too little".into(),
        || {
            let n = udp_count("rtsp_source_packet_conn_", &format!("udp.srcport=={rtp}"));
            (n > 100).then_some(n)
        },
    );
    let ts_got = poll(
        Duration::from_secs(20),
        || "the MPEG-TS source dumped too little".into(),
        || {
            let n = udp_count("mpegts_source_packet_conn_", &format!("udp.dstport=={ts}"));
            (n > 100).then_some(n)
        },
    );
    eprintln!(
        "UDP dumps: {rtp_sent} RTP datagrams sent by the server, {rtp_pulled} received by the \
         pulled source, {ts_got} MPEG-TS datagrams received"
    );
    // tshark reads the server's datagrams as RTP, their UDP checksums right.
    // (The RTP socket's file: the RTCP socket has one too.)
    let server_rtp = &files("rtsp_server_packet_conn_")
        .into_iter()
        .max_by_key(|f| tshark_fields(f, &[], &format!("udp.srcport=={rtp}"), "udp.length").len())
        .unwrap();
    let versions = tshark_fields(
        server_rtp,
        &[&format!("udp.port=={rtp},rtp")],
        &format!("udp.srcport=={rtp}"),
        "rtp.version",
    );
    assert!(!versions.is_empty() && versions.iter().all(|v| v == "2"));
    let mut t = Command::new(peer("tshark"));
    t.arg("-r").arg(whole_blocks(server_rtp)).args([
        "-o",
        "udp.check_checksum:TRUE",
        "-T",
        "fields",
        "-e",
        "udp.checksum.status",
    ]);
    let out = run_bounded(&mut t, Duration::from_secs(60));
    let statuses = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        statuses.lines().count() > 100 && statuses.lines().all(|l| l.trim() == "1"),
        "UDP checksums not verified: {statuses}"
    );
    server.kill9();
}
