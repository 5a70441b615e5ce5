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

/// Out of file descriptors, the RTMP listener stays readable while every accept fails: the
/// accept loop must pause instead of spinning a core. The server runs with a limit of 48
/// open files; 80 clients connect and hold on. Over two seconds it uses a small part of a
/// core (it spun at 100 % before), and once the clients leave, ffmpeg publishes.
#[test]
fn rtmp_accept_backs_off_when_out_of_file_descriptors() {
    let dir = scratch("hostile-emfile");
    let port = free_port();
    let config = dir.join("tidegate.yml");
    std::fs::write(
        &config,
        format!(
            "rtmpAddress: 127.0.0.1:{port}\napi: no\nmetrics: no\n\
             rtsp: no\nsrt: no\nwebrtc: no\nhls: no\nplayback: no\nkeyStore: {}\n",
            dir.join("keys.db").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(peer("prlimit"));
    cmd.arg("--nofile=48:48").arg(server_binary()).arg(&config);
    let server = PeerProcess::spawn("tidegate-emfile", &mut cmd, &dir);
    wait_listening(port, Duration::from_secs(20));

    let clients: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(
        clients.len() >= 60,
        "only {} clients connected",
        clients.len()
    );
    // The server has hit the limit (its log says so) before the measurement starts.
    tidegate_tests::poll(
        Duration::from_secs(10),
        || "the server never ran out of descriptors".into(),
        || {
            (server.stderr() + &server.stdout())
                .contains("accept failed")
                .then_some(())
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

    drop(clients);
    let mut publisher = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{port}/live/after"),
        3,
        "flv",
        &dir,
    );
    assert!(
        publisher.wait(Duration::from_secs(60)).success(),
        "{}",
        publisher.stderr()
    );
}
