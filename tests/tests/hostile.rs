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
