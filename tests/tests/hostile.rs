//! Clients that try to take the server down (the hardening issue's suite, started here).

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_tests::peers::{ffmpeg_publish, free_port, wait_listening, PeerProcess};
use tidegate_tests::{peer, scratch, server_binary};

/// CPU ticks (user + system) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of file descriptors, a listener stays readable while every accept fails: each accept
/// loop must pause instead of spinning a core, and log once, not once per failure. The server
/// runs with a limit of 64 open files; clients connect to the RTMP, RTSP, HLS and API
/// listeners and hold on. Over two seconds it uses a small part of a core (it spun at 100 %
/// before), each listener logged its failure at most twice, and once the clients leave,
/// ffmpeg publishes over RTMP and RTSP.
#[test]
fn accept_loops_back_off_when_out_of_file_descriptors() {
    let dir = scratch("hostile-emfile");
    let [rtmp, rtsp, hls, api] = [(); 4].map(|_| free_port());
    let config = dir.join("tidegate.yml");
    std::fs::write(
        &config,
        format!(
            "rtmpAddress: 127.0.0.1:{rtmp}\nrtspAddress: 127.0.0.1:{rtsp}\nrtspTransports: [tcp]\n\
             hlsAddress: 127.0.0.1:{hls}\napiAddress: 127.0.0.1:{api}\nmetrics: no\n\
             srt: no\nwebrtc: no\nplayback: no\nkeyStore: {}\n",
            dir.join("keys.db").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(peer("prlimit"));
    cmd.arg("--nofile=64:64").arg(server_binary()).arg(&config);
    let server = PeerProcess::spawn("tidegate-emfile", &mut cmd, &dir);
    for p in [rtmp, rtsp, hls, api] {
        wait_listening(p, Duration::from_secs(20));
    }

    let started = Instant::now();
    // In turn, so that every listener has clients waiting once the descriptors run out.
    let clients: Vec<TcpStream> = (0..40)
        .flat_map(|_| [rtmp, rtsp, hls, api])
        .filter_map(|p| TcpStream::connect(("127.0.0.1", p)).ok())
        .collect();
    assert!(
        clients.len() >= 120,
        "only {} clients connected",
        clients.len()
    );
    let log = || server.stderr() + &server.stdout();
    let failed = |text: &str, name: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("{name} accept failed")))
            .count()
    };
    // Listeners have hit the limit (the log says so) before the measurement starts.
    tidegate_tests::poll(
        Duration::from_secs(15),
        || format!("the listeners never ran out of descriptors:\n{}", log()),
        || {
            let text = log();
            let n = ["[RTMP]", "[RTSP]", "[HLS]", "[API]"]
                .iter()
                .filter(|n| failed(&text, n) > 0)
                .count();
            (n >= 2).then_some(())
        },
    );
    let (t0, c0) = (Instant::now(), cpu_ticks(server.pid()));
    // The measurement window: the server's CPU over two seconds out of descriptors.
    std::thread::sleep(Duration::from_secs(2));
    let used = (cpu_ticks(server.pid()) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    assert!(
        used < 0.3,
        "the server used {:.0} % of a core while out of descriptors",
        used * 100.0
    );
    // One line at the first failure, then at most one per 10 s, whatever the failures.
    let text = log();
    let allowed = 1 + started.elapsed().as_secs() as usize / 10;
    for name in ["[RTMP]", "[RTSP]", "[HLS]", "[API]"] {
        let lines = failed(&text, name);
        eprintln!("{name}: {lines} log lines while out of descriptors");
        assert!(
            lines <= allowed,
            "{name} logged {lines} accept failures:\n{text}"
        );
    }
    assert!(text.contains("out of file descriptors"), "{text}");

    drop(clients);
    for url in [
        format!("rtmp://127.0.0.1:{rtmp}/live/after"),
        format!("rtsp://127.0.0.1:{rtsp}/live/after-rtsp"),
    ] {
        let format = if url.starts_with("rtmp") {
            "flv"
        } else {
            "rtsp"
        };
        let mut publisher = ffmpeg_publish(&url, 3, format, &dir);
        assert!(
            publisher.wait(Duration::from_secs(60)).success(),
            "{url}: {}",
            publisher.stderr()
        );
    }
}

/// srt-protocol's parser panics on some truncated control packets; the panic is contained
/// (the datagram is dropped) and must not print a panic message per datagram: 2 000 of them
/// leave at most two log lines and no panic message, and an SRT publisher still gets in.
#[test]
fn a_flood_of_datagrams_that_panic_the_srt_parser_logs_once() {
    let dir = scratch("hostile-srt-panic");
    let srt = free_port();
    let config = dir.join("tidegate.yml");
    std::fs::write(
        &config,
        format!(
            "srtAddress: 127.0.0.1:{srt}\nrtmp: no\nrtsp: no\nhls: no\nwebrtc: no\napi: no\n\
             metrics: no\nplayback: no\nkeyStore: {}\n",
            dir.join("keys.db").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(server_binary());
    cmd.arg(&config);
    let server = PeerProcess::spawn("tidegate-srt-panic", &mut cmd, &dir);
    let log = || server.stderr() + &server.stdout();
    tidegate_tests::poll(
        Duration::from_secs(20),
        || format!("the SRT listener did not start:\n{}", log()),
        || log().contains("SRT").then_some(()),
    );
    // The datagram the `srt_listener` fuzz target found (crates/srt/src/io.rs PARSER_PANIC).
    const PANICS: [u8; 16] = [
        0xff, 0xff, 0x00, 0x07, 0xff, 0xff, 0xff, 0x00, 0, 0, 0, 0, 0, 0x15, 0, 0,
    ];
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..2000 {
        let _ = sock.send_to(&PANICS, ("127.0.0.1", srt));
    }
    tidegate_tests::poll(
        Duration::from_secs(10),
        || format!("no contained panic logged:\n{}", log()),
        || log().contains("panicked on its input").then_some(()),
    );
    // A publisher after the flood: the listener is up, and every datagram was handled.
    let mut publisher = ffmpeg_publish(
        &format!("srt://127.0.0.1:{srt}?streamid=publish:live/after&pkt_size=1316"),
        3,
        "mpegts",
        &dir,
    );
    assert!(
        publisher.wait(Duration::from_secs(60)).success(),
        "{}",
        publisher.stderr()
    );
    let text = log();
    let lines = text
        .lines()
        .filter(|l| l.contains("panicked on its input"))
        .count();
    eprintln!("SRT parser panics: {lines} log lines for 2000 datagrams");
    assert!(lines <= 2, "{text}");
    assert!(
        !text.contains("panicked at"),
        "a panic message was printed:\n{text}"
    );
}

/// A slowloris client trickles `request` a byte every 200 ms; returns how long the server took
/// to close the connection (None: still open after 20 s).
fn slowloris(port: u16, request: &[u8]) -> Option<Duration> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    for b in request.iter().cycle() {
        if start.elapsed() > Duration::from_secs(20) {
            return None;
        }
        if s.write_all(&[*b]).is_err() {
            return Some(start.elapsed());
        }
        // The read paces the trickle (its timeout), and sees the close.
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Slowloris on every TCP listener: a request (an RTMP handshake, an RTSP request, an HTTP
/// request head) that arrives a byte at a time is cut off after `readTimeout` (2 s here),
/// although bytes keep coming; a normal client is served meanwhile.
#[test]
fn slowloris_clients_are_closed_after_the_read_timeout() {
    let dir = scratch("hostile-slowloris");
    let [rtmp, rtsp, hls, api] = [(); 4].map(|_| free_port());
    let config = dir.join("tidegate.yml");
    std::fs::write(
        &config,
        format!(
            "readTimeout: 2s\nrtmpAddress: 127.0.0.1:{rtmp}\nrtspAddress: 127.0.0.1:{rtsp}\n\
             rtspTransports: [tcp]\nhlsAddress: 127.0.0.1:{hls}\napiAddress: 127.0.0.1:{api}\n\
             metrics: no\nsrt: no\nwebrtc: no\nplayback: no\nkeyStore: {}\n",
            dir.join("keys.db").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(server_binary());
    cmd.arg(&config);
    let _server = PeerProcess::spawn("tidegate-slowloris", &mut cmd, &dir);
    for p in [rtmp, rtsp, hls, api] {
        wait_listening(p, Duration::from_secs(20));
    }
    let mut c1 = vec![3u8];
    c1.extend(std::iter::repeat_n(0u8, 1536));
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("RTMP", rtmp, c1),
        (
            "RTSP",
            rtsp,
            format!(
                "OPTIONS rtsp://127.0.0.1:{rtsp}/x RTSP/1.0\r\nCSeq: 1\r\nX-Slow: {}\r\n",
                "a".repeat(200)
            )
            .into_bytes(),
        ),
        (
            "HLS",
            hls,
            format!(
                "GET /x/index.m3u8 HTTP/1.1\r\nHost: h\r\nX-Slow: {}\r\n",
                "a".repeat(200)
            )
            .into_bytes(),
        ),
        (
            "API",
            api,
            format!(
                "GET /v3/paths/list HTTP/1.1\r\nHost: h\r\nX-Slow: {}\r\n",
                "a".repeat(200)
            )
            .into_bytes(),
        ),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, port, req)| std::thread::spawn(move || (name, slowloris(port, &req))))
        .collect();
    // Meanwhile, an ordinary request is answered.
    let r = tidegate_tests::http::fetch(
        format!("127.0.0.1:{api}").parse().unwrap(),
        "/v3/paths/list",
        &[],
    );
    assert_eq!(r.status, 200);
    for h in handles {
        let (name, closed) = h.join().unwrap();
        eprintln!("{name}: slowloris closed after {closed:?}");
        let closed =
            closed.unwrap_or_else(|| panic!("{name}: a slowloris client is still open after 20 s"));
        assert!(
            closed >= Duration::from_millis(1500) && closed <= Duration::from_secs(10),
            "{name}: closed after {closed:?}"
        );
    }
}

/// A TCP connection to 127.0.0.1:`port` from `source` (any loopback address).
fn connect_from(source: &str, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// Whether the server refused a connection it accepted: it answered `status` (RTSP, HTTP)
/// or closed (RTMP, `status` empty), within 10 s.
fn refused(mut s: TcpStream, status: &str) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    if status.is_empty() {
        got.is_empty()
    } else {
        text.contains(status)
    }
}

/// `maxConnectionsPerIP` and `maxConnections`: past them a connection is refused (RTSP and
/// HTTP answer 503, RTMP closes) and logged once per address, while connections from other
/// addresses, and a real publisher and reader, carry on; the limits follow a reload.
#[test]
fn connection_limits_refuse_past_the_cap_per_address_and_in_all() {
    let dir = scratch("hostile-limits");
    let [rtmp, rtsp, hls, api] = [(); 4].map(|_| free_port());
    let config = dir.join("tidegate.yml");
    let write = |per_ip: u32, total: u32| {
        std::fs::write(
            &config,
            format!(
                "maxConnectionsPerIP: {per_ip}\nmaxConnections: {total}\n\
                 rtmpAddress: 127.0.0.1:{rtmp}\nrtspAddress: 127.0.0.1:{rtsp}\n\
                 rtspTransports: [tcp]\nhlsAddress: 127.0.0.1:{hls}\napiAddress: 127.0.0.1:{api}\n\
                 metrics: no\nsrt: no\nwebrtc: no\nplayback: no\nkeyStore: {}\n",
                dir.join("keys.db").display()
            ),
        )
        .unwrap()
    };
    write(4, 8);
    let mut cmd = Command::new(server_binary());
    cmd.arg(&config);
    let server = PeerProcess::spawn("tidegate-limits", &mut cmd, &dir);
    for p in [rtmp, rtsp, hls, api] {
        wait_listening(p, Duration::from_secs(20));
    }
    // wait_listening's probes have closed; the counts start from zero once they are seen gone.
    let log = || server.stderr() + &server.stdout();

    // A real publisher and reader from 127.0.0.1 (two RTMP connections).
    let mut publisher = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{rtmp}/live/cam"),
        40,
        "flv",
        &dir,
    );
    let api_addr: std::net::SocketAddr = format!("127.0.0.1:{api}").parse().unwrap();
    tidegate_tests::poll(
        Duration::from_secs(30),
        || "live/cam not ready".into(),
        || {
            let r = tidegate_tests::http::fetch(api_addr, "/v3/paths/get/live/cam", &[]);
            (r.status == 200 && r.text().contains("\"ready\":true")).then_some(())
        },
    );

    // 127.0.0.2 holds four connections on each listener; the fifth is refused.
    for (name, port, status) in [
        ("RTMP", rtmp, ""),
        ("RTSP", rtsp, "RTSP/1.0 503"),
        ("HLS", hls, "HTTP/1.1 503"),
    ] {
        let held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.2", port)).collect();
        // The server has counted them: an HTTP/RTSP exchange on the last one is answered.
        assert!(
            refused(connect_from("127.0.0.2", port), status),
            "{name}: a fifth connection from 127.0.0.2 was not refused"
        );
        // Another address is not affected by 127.0.0.2's count.
        let other = connect_from("127.0.0.3", port);
        other
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 64];
        let r = std::io::Read::read(&mut &other, &mut b);
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "{name}: a connection from 127.0.0.3 was refused: {r:?}"
        );
        drop((held, other));
    }
    let text = log();
    let refusals = text
        .lines()
        .filter(|l| l.contains("refused: maxConnectionsPerIP"))
        .count();
    eprintln!("per-address refusals logged: {refusals}");
    assert!((3..=3).contains(&refusals), "{text}");

    // maxConnections: eight in all on the RTSP listener, from three addresses.
    let mut held = Vec::new();
    for (i, src) in ["127.0.0.4", "127.0.0.5", "127.0.0.6"].iter().enumerate() {
        for _ in 0..(if i < 2 { 4 } else { 0 }) {
            held.push(connect_from(src, rtsp));
        }
    }
    assert!(
        refused(connect_from("127.0.0.6", rtsp), "RTSP/1.0 503"),
        "a ninth RTSP connection"
    );
    assert!(
        log().contains("refused: maxConnections (8) reached"),
        "{}",
        log()
    );
    drop(held);

    // A reload (the file is watched) lifts the per-address limit: five from one address.
    write(0, 0);
    tidegate_tests::poll(
        Duration::from_secs(10),
        || format!("the reload was not applied:\n{}", log()),
        || log().contains("maxConnectionsPerIP 0").then_some(()),
    );
    let five: Vec<TcpStream> = (0..5).map(|_| connect_from("127.0.0.7", hls)).collect();
    let r = tidegate_tests::http::fetch(
        format!("127.0.0.1:{hls}").parse().unwrap(),
        "/live/cam/index.m3u8",
        &[],
    );
    assert_eq!(r.status, 200, "HLS after the reload: {}", r.text());
    drop(five);

    // The publisher kept going all along.
    let out = dir.join("read.mkv");
    let mut reader = tidegate_tests::peers::ffmpeg_read(
        &format!("rtmp://127.0.0.1:{rtmp}/live/cam"),
        3,
        &out,
        &dir,
    );
    assert!(
        reader.wait(Duration::from_secs(60)).success(),
        "{}",
        reader.stderr()
    );
    let p = tidegate_tests::ffprobe(out.to_str().unwrap(), &[], Duration::from_secs(30));
    assert!(
        p.packets_of("video").len() >= 60,
        "{} frames",
        p.packets_of("video").len()
    );
    publisher.kill9();
}
