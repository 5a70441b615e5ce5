//! SRT against real peers: ffmpeg (libsrt 1.5), srt-live-transmit and GStreamer; across to
//! RTMP both ways. Assertions are on the media that comes out.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, peer, run_bounded, scratch, Probe};

const READY: Duration = Duration::from_secs(15);
/// ffmpeg's SRT latency is in microseconds: 200 ms.
const LAT: &str = "&latency=200000";

fn probe_file(path: &std::path::Path) -> Probe {
    ffprobe(path.to_str().unwrap(), &[], Duration::from_secs(30))
}

fn assert_media(p: &Probe, seconds: u32) {
    assert_eq!(
        p.codec("video").as_deref(),
        Some("h264"),
        "{:#?}",
        p.streams
    );
    assert_eq!(p.codec("audio").as_deref(), Some("aac"));
    assert_eq!(p.dimensions(), Some((640, 360)));
    let frames = p.packets_of("video").len();
    let expected = seconds as usize * 30;
    assert!(
        frames + 30 >= expected && frames <= expected + 30,
        "{frames} video frames for {seconds} s"
    );
    let audio = p.packets_of("audio").len();
    assert!(
        audio as f64 >= (f64::from(seconds) - 1.5) * 46.9,
        "{audio} audio frames"
    );
    assert!(p.dts_monotonic("video") && p.dts_monotonic("audio"));
}

/// ffmpeg publishes over SRT and is read over RTMP, after hostile datagrams were thrown at the
/// listener: garbage, and 16 bytes that make srt-protocol's parser panic (they cost that
/// datagram, not the listener).
#[test]
fn ffmpeg_publishes_over_srt_and_rtmp_reads() {
    let dir = scratch("srt-ffmpeg");
    let server = TestServer::start("");
    let hostile = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let parser_panic: [u8; 16] = [
        0xff, 0xff, 0x00, 0x07, 0xff, 0xff, 0xff, 0x00, 0, 0, 0, 0, 0, 0x15, 0, 0,
    ];
    for d in [&parser_panic[..], &[0u8; 3][..], &[0xffu8; 1500][..]] {
        hostile.send_to(d, server.srt_addr()).unwrap();
    }
    let _publisher = ffmpeg_publish(&server.srt_url("publish:cam1", LAT), 30, "mpegts", &dir);
    server.wait_ready("cam1", READY);
    assert_eq!(
        server.paths().get("cam1").unwrap().tracks,
        vec!["H264", "MPEG-4 Audio"]
    );
    let out = dir.join("rtmp.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("cam1"), 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), 5);
}

#[test]
fn access_control_stream_ids_publish() {
    let dir = scratch("srt-access-control");
    let server = TestServer::start("");
    // The SRT Access Control form, with a raw '#' (ffmpeg passes it literally).
    let url = server.srt_url("#!::r=live/x,m=publish,s=abc", LAT);
    let _publisher = ffmpeg_publish(&url, 30, "mpegts", &dir);
    server.wait_ready("live/x", READY);
    let out = dir.join("rtmp.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("live/x"), 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), 5);
    // A stream id that names no mode or path is refused.
    let mut bad = ffmpeg_publish(&server.srt_url("garbage", LAT), 10, "mpegts", &dir);
    assert!(
        !bad.wait(Duration::from_secs(30)).success(),
        "a bad stream id is refused"
    );
}

#[test]
fn passphrases_are_enforced() {
    let dir = scratch("srt-passphrase");
    let server = TestServer::start("paths:\n  sec:\n    srtPublishPassphrase: publishsecret1\n");
    // Missing passphrase: refused.
    let mut none = ffmpeg_publish(&server.srt_url("publish:sec", LAT), 10, "mpegts", &dir);
    assert!(
        !none.wait(Duration::from_secs(30)).success(),
        "no passphrase is refused"
    );
    // Wrong passphrase: refused.
    let mut wrong = ffmpeg_publish(
        &server.srt_url("publish:sec", &format!("{LAT}&passphrase=wrongsecret99")),
        10,
        "mpegts",
        &dir,
    );
    assert!(
        !wrong.wait(Duration::from_secs(30)).success(),
        "a wrong passphrase is refused"
    );
    assert!(server.paths().get("sec").is_none_or(|p| !p.ready));
    // Right passphrase, no pbkeylen (the common case that crashes careless listeners).
    let _good = ffmpeg_publish(
        &server.srt_url("publish:sec", &format!("{LAT}&passphrase=publishsecret1")),
        30,
        "mpegts",
        &dir,
    );
    server.wait_ready("sec", READY);
    let out = dir.join("rtmp.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("sec"), 4, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), 4);
}

#[test]
fn aes256_publish() {
    let dir = scratch("srt-aes256");
    let server = TestServer::start("paths:\n  sec:\n    srtPublishPassphrase: publishsecret1\n");
    let _good = ffmpeg_publish(
        &server.srt_url(
            "publish:sec",
            &format!("{LAT}&passphrase=publishsecret1&pbkeylen=32"),
        ),
        30,
        "mpegts",
        &dir,
    );
    server.wait_ready("sec", READY);
}

#[test]
fn gstreamer_srtsink_publishes() {
    let dir = scratch("srt-gst");
    let server = TestServer::start("");
    let uri = server.srt_url("", "").replace("?streamid=", "?mode=caller");
    let pipeline = format!(
        "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse config-interval=-1 \
         ! mpegtsmux alignment=7 name=m ! srtsink uri={uri} streamid=publish:gst latency=200 \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! avenc_aac ! aacparse ! m."
    );
    let mut cmd = Command::new(peer("gst-launch-1.0"));
    cmd.arg("-q").args(pipeline.split_whitespace());
    let _gst = PeerProcess::spawn("gst-srtsink", &mut cmd, &dir);
    server.wait_ready("gst", READY);
    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("gst"), 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), 5);
}

/// 5 % of the datagrams lost each way between an ffmpeg publisher and the listener, 40 ms
/// added to the round trip, at 400 ms latency: SRT's retransmission delivers every frame (read
/// back over RTMP, no gap), and the connection's statistics show the loss, the retransmissions,
/// the round-trip time and the receive buffer. The latency follows Haivision's guidance for 5 %
/// loss (6x the RTT, about 280 ms here) with room for a loaded machine: at 200 ms, a retransmission
/// that is itself lost needed a second NAK round that a busy CI machine could not always fit.
#[test]
fn five_percent_loss_loses_no_frames() {
    use std::sync::atomic::Ordering::Relaxed;
    use tidegate_tests::lossy::LossyRelay;
    let dir = scratch("srt-loss");
    let server = TestServer::start("");
    let relay = LossyRelay::start_delayed(server.srt_addr(), 5, 0x5eed, Duration::from_millis(40));
    let url = format!("srt://{}?streamid=publish:lossy&latency=400000", relay.addr);
    let _publisher = ffmpeg_publish(&url, 40, "mpegts", &dir);
    server.wait_ready("lossy", READY);
    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("lossy"), 8, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    let p = probe_file(&out);
    assert_media(&p, 8);
    let dts: Vec<i64> = p.packets_of("video").iter().filter_map(|f| f.dts).collect();
    let gap = dts.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap <= 34, "a {gap} ms hole in the video: frames were lost");
    let s = &relay.stats;
    let (up, lost) = (s.up_forwarded.load(Relaxed), s.up_dropped.load(Relaxed));
    eprintln!(
        "loss relay: publisher→server {up} forwarded, {lost} dropped; server→publisher {} forwarded, {} dropped",
        s.down_forwarded.load(Relaxed),
        s.down_dropped.load(Relaxed)
    );
    assert!(
        lost as f64 > 0.03 * (up + lost) as f64,
        "the relay really dropped datagrams"
    );

    // The SRT statistics of the publisher's connection show the losses and what refilled them.
    let conn = server.api_entry("srtconns", "publish");
    eprintln!("publisher connection: {conn}");
    assert_eq!(conn["path"], "lossy");
    assert_eq!(conn["query"], "publish:lossy");
    assert!(conn["packetsReceived"].as_u64().unwrap() > 500, "{conn}");
    assert!(
        conn["packetsReceivedRetrans"].as_u64().unwrap() > 0,
        "{conn}"
    );
    assert!(conn["packetsSentNAK"].as_u64().unwrap() > 0, "{conn}");
    assert!(conn["bytesReceived"].as_u64().unwrap() > 500_000, "{conn}");
    // RTT: the relay's 40 ms, and little more on loopback.
    let rtt = conn["msRTT"].as_f64().unwrap();
    assert!((35.0..150.0).contains(&rtt), "msRTT {rtt}: {conn}");
    // The receive buffer holds about the agreed latency of media.
    assert_eq!(conn["msReceiveTsbPdDelay"], 400.0, "{conn}");
    let buffered = conn["msReceiveBuf"].as_f64().unwrap();
    assert!(
        (50.0..=800.0).contains(&buffered),
        "msReceiveBuf {buffered}: {conn}"
    );
    assert!(conn["packetsReceiveBuf"].as_u64().unwrap() > 10, "{conn}");
    assert!(conn["mbpsReceiveRate"].as_f64().unwrap() > 0.1, "{conn}");
    let id = conn["id"].as_str().unwrap().to_string();
    let (status, _) = tidegate_tests::http::request(
        server.api_addr(),
        "POST",
        &format!("/v3/srtconns/kick/{id}"),
    );
    assert_eq!(status, 200);
    server.wait_not_ready("lossy", Duration::from_secs(10));
}

/// ffmpeg reading over SRT needs about 5 s before its first output (its MPEG-TS probe reads
/// `analyzeduration` of stream); every bound below allows for that.
fn ffmpeg_read_srt(
    url: &str,
    seconds: u32,
    out: &std::path::Path,
    dir: &std::path::Path,
) -> PeerProcess {
    ffmpeg_read(url, seconds, out, dir)
}

/// srt-live-transmit reads `url` for 5 s, writing what it receives to stdout: that TS,
/// probed, with H.264 video in it.
fn srt_live_transmit_reads(url: &str, dir: &std::path::Path) -> Probe {
    let out = run_bounded(
        Command::new(peer("timeout"))
            .args(["-s", "INT", "5"])
            .arg(peer("srt-live-transmit"))
            .args([url, "file://con"]),
        Duration::from_secs(20),
    );
    assert!(
        !out.stdout.is_empty(),
        "srt-live-transmit got nothing:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ts = dir.join("slt.ts");
    std::fs::write(&ts, &out.stdout).unwrap();
    let p = probe_file(&ts);
    assert_eq!(
        p.codec("video").as_deref(),
        Some("h264"),
        "{:#?}",
        p.streams
    );
    p
}

/// RTMP in → SRT out: ffmpeg (libsrt) and srt-live-transmit read the stream over SRT, in both
/// stream id forms; the media is whole.
#[test]
fn rtmp_in_srt_out_for_ffmpeg_and_srt_live_transmit() {
    let dir = scratch("srt-read");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/cam"), 60, "flv", &dir);
    server.wait_ready("live/cam", READY);
    for (i, id) in ["read:live/cam", "#!::r=live/cam,m=request"]
        .iter()
        .enumerate()
    {
        let out = dir.join(format!("srt{i}.mkv"));
        let mut reader = ffmpeg_read_srt(&server.srt_url(id, LAT), 5, &out, &dir);
        assert!(
            reader.wait(Duration::from_secs(40)).success(),
            "{id}: {}",
            reader.stderr()
        );
        let p = probe_file(&out);
        assert_media(&p, 5);
        assert!(
            p.packets_of("video")[0].keyframe,
            "first frame is not a keyframe"
        );
    }
    let url = format!("{}&latency=200", server.srt_url("read:live/cam", ""));
    let p = srt_live_transmit_reads(&url, &dir);
    assert_eq!(p.codec("audio").as_deref(), Some("aac"));
    assert_eq!(p.dimensions(), Some((640, 360)));
    let frames = p.packets_of("video").len();
    assert!(frames >= 90, "srt-live-transmit got {frames} frames in 5 s");
    assert!(p.dts_monotonic("video"));
}

/// An SRT reader's connection shows the round trip (from the reader's ACKs: srt-live-transmit
/// behind a relay that adds 30 ms), the agreed latency and the send buffer.
#[test]
fn a_readers_statistics_show_its_round_trip() {
    use tidegate_tests::lossy::LossyRelay;
    let dir = scratch("srt-reader-stats");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/cam"), 60, "flv", &dir);
    server.wait_ready("live/cam", READY);
    let relay = LossyRelay::start_delayed(server.srt_addr(), 0, 1, Duration::from_millis(30));
    let url = format!("srt://{}?streamid=read:live/cam&latency=300", relay.addr);
    let mut cmd = Command::new(peer("timeout"));
    cmd.args(["-s", "INT", "30"])
        .arg(peer("srt-live-transmit"))
        .args([url.as_str(), "file://con"]);
    let _reader = PeerProcess::spawn("slt-read", &mut cmd, &dir);
    let conn = server.wait_api_entry("srtconns", Duration::from_secs(20), "with an RTT", |c| {
        c["state"] == "read"
            && c["msRTT"].as_f64() >= Some(25.0)
            && c["packetsSent"].as_u64() >= Some(100)
    });
    eprintln!("reader connection: {conn}");
    let rtt = conn["msRTT"].as_f64().unwrap();
    assert!(rtt < 150.0, "msRTT {rtt}: {conn}");
    assert_eq!(conn["msSendTsbPdDelay"], 300.0, "{conn}");
    assert!(conn["bytesSent"].as_u64().unwrap() > 100_000, "{conn}");
    assert!(conn.get("packetsSendBuf").is_some() && conn.get("msSendBuf").is_some());
}

/// SRT in → SRT out, with a read passphrase: none or a wrong one is refused, the right one
/// gets the media.
#[test]
fn srt_in_srt_out_with_a_read_passphrase() {
    let dir = scratch("srt-srt");
    let server = TestServer::start("paths:\n  sec:\n    srtReadPassphrase: readsecret123\n");
    let _publisher = ffmpeg_publish(&server.srt_url("publish:sec", LAT), 60, "mpegts", &dir);
    server.wait_ready("sec", READY);
    for bad in ["", "&passphrase=wrongsecret99"] {
        let out = dir.join("bad.mkv");
        let mut reader = ffmpeg_read(
            &server.srt_url("read:sec", &format!("{LAT}{bad}")),
            2,
            &out,
            &dir,
        );
        assert!(
            !reader.wait(Duration::from_secs(20)).success(),
            "read without the right passphrase was accepted"
        );
    }
    let out = dir.join("good.mkv");
    let url = server.srt_url("read:sec", &format!("{LAT}&passphrase=readsecret123"));
    let mut reader = ffmpeg_read_srt(&url, 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(40)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), 5);
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// ffmpeg as an SRT listener sending the synthetic source, with a passphrase.
fn ffmpeg_srt_listener_source(port: u16, dir: &std::path::Path) -> PeerProcess {
    let url = format!(
        "srt://127.0.0.1:{port}?mode=listener&latency=200000&passphrase=cameraSecret42&pbkeylen=16&listen_timeout=30000000"
    );
    ffmpeg_publish(&url, 60, "mpegts", dir)
}

/// `source: srt://…` pulls a remote SRT listener (caller mode, encrypted): the path is readable
/// over RTMP; when the remote goes away and comes back, the path resumes by itself.
#[test]
fn srt_source_pulls_a_remote_listener_and_reconnects() {
    let dir = scratch("srt-pull");
    let port = free_udp_port();
    let mut camera = ffmpeg_srt_listener_source(port, &dir);
    let server = TestServer::start(&format!(
        "paths:\n  cam:\n    source: srt://127.0.0.1:{port}?latency=200&passphrase=cameraSecret42&pbkeylen=16\n"
    ));
    server.wait_ready("cam", READY);
    let out = dir.join("pull.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("cam"), 5, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), 5);
    let path = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/cam");
    assert_eq!(path["source"]["type"], "srtSource", "{path}");
    assert!(
        path["sourceRelay"]["url"]
            .as_str()
            .unwrap()
            .contains("passphrase=***"),
        "{path}"
    );

    // The camera goes away: the path is not ready; it comes back: the path resumes.
    camera.kill9();
    server.wait_not_ready("cam", Duration::from_secs(20));
    let _camera = ffmpeg_srt_listener_source(port, &dir);
    server.wait_ready("cam", Duration::from_secs(40));
    let out = dir.join("pull2.mkv");
    let mut reader = ffmpeg_read(&server.rtmp_url("cam"), 3, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(30)).success(),
        "{}",
        reader.stderr()
    );
    assert_media(&probe_file(&out), 3);
}

/// `push: srt://…`: an RTMP publish is pushed to an SRT listener (ffmpeg), which records it.
#[test]
fn push_to_an_srt_destination() {
    let dir = scratch("srt-push");
    let port = free_udp_port();
    let server = TestServer::start(&format!(
        "paths:\n  live:\n    push:\n      - srt://127.0.0.1:{port}?streamid=from-tidegate&latency=200\n"
    ));
    // The destination listens first (ffmpeg waits up to 30 s for a caller).
    let out = dir.join("pushed.mkv");
    let listen =
        format!("srt://127.0.0.1:{port}?mode=listener&latency=200000&listen_timeout=30000000");
    let mut sink = ffmpeg_read(&listen, 5, &out, &dir);
    let _publisher = ffmpeg_publish(&server.rtmp_url("live"), 60, "flv", &dir);
    server.wait_ready("live", READY);
    assert!(
        sink.wait(Duration::from_secs(50)).success(),
        "{}",
        sink.stderr()
    );
    assert_media(&probe_file(&out), 5);
    let path = tidegate_tests::http::get_json(server.api_addr(), "/v3/paths/get/live");
    let push = &path["push"][0];
    assert!(push["bytes"].as_u64().unwrap() > 100_000, "{path}");
}

/// A caller from the address of an unfinished handshake gets in: a stranger sends an
/// induction from a local port and never concludes (as after a flood, or an encoder that
/// restarted on its fixed source port), then srt-live-transmit reads from that same port. The
/// listener answered the second caller with the first's saved answer before, and libsrt,
/// which matches answers to its socket id, waited until its connect timeout.
#[test]
fn a_reader_from_the_port_of_an_unfinished_handshake_gets_in() {
    let dir = scratch("srt-port-reuse");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/cam"), 60, "flv", &dir);
    server.wait_ready("live/cam", READY);
    let port = {
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger
            .send_to(&tidegate_tests::srt_induction(77), server.srt_addr())
            .unwrap();
        stranger
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = [0u8; 1500];
        let (n, _) = stranger.recv_from(&mut answer).unwrap();
        // Addressed to the stranger's socket id (77).
        assert_eq!(answer[12..16], 77u32.to_be_bytes(), "{:?}", &answer[..n]);
        stranger.local_addr().unwrap().port()
    };
    // srt-live-transmit binds `port` as its own and writes what it receives for 5 s. Its
    // connect timeout (conntimeo) is 3 s: the handshake must not wait for the stranger's to
    // expire.
    let url = format!(
        "{}&latency=200&port={port}",
        server.srt_url("read:live/cam", "")
    );
    let p = srt_live_transmit_reads(&url, &dir);
    let frames = p.packets_of("video").len();
    assert!(frames >= 60, "srt-live-transmit got {frames} frames in 5 s");
    assert!(p.dts_monotonic("video"));
}
