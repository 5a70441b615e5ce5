//! `rtmpTrustedProxies` / `rtspTrustedProxies`: behind a proxy that speaks the PROXY protocol,
//! the client's address (in logs, the API and IP-based permissions) comes from its header.
//! Real peer: nginx's stream module (`proxy_protocol on`, Debian's libnginx-mod-stream) in
//! front of the RTMP and RTSP listeners; and a relay in the test that claims a documentation
//! address (203.0.113.7), the only one allowed to publish.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, free_port, wait_listening, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, peer, scratch};

/// nginx's stream module relaying `port` → `to` for each pair, with a PROXY v1 header.
fn nginx_stream(pairs: &[(u16, std::net::SocketAddr)], dir: &Path) -> PeerProcess {
    assert!(
        Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists(),
        "test peer 'libnginx-mod-stream' is missing: run `cargo xtask test`, which installs every peer"
    );
    let servers: String = pairs
        .iter()
        .map(|(port, to)| {
            format!("server {{ listen 127.0.0.1:{port}; proxy_pass {to}; proxy_protocol on; }}\n")
        })
        .collect();
    let p = tidegate_tests::peers::nginx(
        "nginx-stream",
        &format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             events {{ worker_connections 256; }}\nstream {{\n{servers}}}\n"
        ),
        dir,
    );
    for (port, _) in pairs {
        wait_listening(*port, Duration::from_secs(15));
    }
    p
}

/// A relay on an ephemeral port that opens each connection to `to` with a PROXY v1 header
/// naming 203.0.113.7:4242, then copies both ways. Returns its port.
fn claiming_relay(to: std::net::SocketAddr) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { return };
            let Ok(mut server) = TcpStream::connect(to) else {
                continue;
            };
            let header = format!("PROXY TCP4 203.0.113.7 127.0.0.1 4242 {}\r\n", to.port());
            if server.write_all(header.as_bytes()).is_err() {
                continue;
            }
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

#[test]
fn trusted_proxies_name_the_client_for_logs_api_and_permissions() {
    let dir = scratch("proxy-protocol");
    let server = TestServer::start(
        "rtmpTrustedProxies: [127.0.0.1]\nrtspTrustedProxies: [127.0.0.1/32]\n\
         authInternalUsers:\n\
         \x20 - user: any\n    ips: [203.0.113.0/24]\n    permissions:\n      - action: publish\n\
         \x20 - user: any\n    ips: [127.0.0.1]\n    permissions:\n      - action: read\n      - action: api\n",
    );
    let rtsp_url = server.rtsp_url("");
    let rtsp_addr: std::net::SocketAddr = rtsp_url
        .trim_start_matches("rtsp://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let (rtmp_port, rtsp_port) = (free_port(), free_port());
    let _nginx = nginx_stream(
        &[(rtmp_port, server.rtmp_addr()), (rtsp_port, rtsp_addr)],
        &dir,
    );
    let relay = claiming_relay(server.rtmp_addr());

    // Through nginx the client is 127.0.0.1, which may not publish.
    let mut refused = ffmpeg_publish(&format!("rtmp://127.0.0.1:{rtmp_port}/cam"), 5, "flv", &dir);
    assert!(
        !refused.wait(Duration::from_secs(30)).success(),
        "a publish from 127.0.0.1 is refused"
    );
    // Through the relay it is 203.0.113.7, which may.
    let _publisher = ffmpeg_publish(&format!("rtmp://127.0.0.1:{relay}/cam"), 40, "flv", &dir);
    server.wait_ready("cam", Duration::from_secs(20));
    let conns = tidegate_tests::http::get_json(server.api_addr(), "/v3/rtmpconns/list");
    let publisher = conns["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["state"] == "publish")
        .cloned()
        .unwrap_or_default();
    assert_eq!(publisher["remoteAddr"], "203.0.113.7:4242", "{conns}");

    // Readers through nginx over RTMP and RTSP: their headers are read, they play.
    for (what, url) in [
        ("rtmp", format!("rtmp://127.0.0.1:{rtmp_port}/cam")),
        ("rtsp", format!("rtsp://127.0.0.1:{rtsp_port}/cam")),
    ] {
        let out = dir.join(format!("{what}.mkv"));
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]);
        if what == "rtsp" {
            cmd.args(["-rtsp_transport", "tcp"]);
        }
        cmd.args(["-i", &url, "-t", "4", "-c", "copy"]).arg(&out);
        let mut r = PeerProcess::spawn(&format!("ffmpeg-{what}"), &mut cmd, &dir);
        assert!(
            r.wait(Duration::from_secs(40)).success(),
            "{what}: {}",
            r.stderr()
        );
        let p = ffprobe(out.to_str().unwrap(), &[], Duration::from_secs(30));
        let frames = p.packets_of("video").len();
        eprintln!("{what} through nginx: {frames} video frames");
        assert_eq!(p.codec("video").as_deref(), Some("h264"), "{what}");
        assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{what}");
        assert!(frames >= 90, "{what}: {frames} frames in 4 s");
        assert!(p.dts_monotonic("video"), "{what}");
    }
    // A trusted address that sends no header is closed.
    let out = dir.join("direct.mkv");
    let mut direct = ffmpeg_read(&server.rtmp_url("cam"), 2, &out, &dir);
    assert!(
        !direct.wait(Duration::from_secs(40)).success(),
        "a trusted address without a PROXY header is refused"
    );
    assert!(
        !tidegate_tests::logs::lines_with(&["without a PROXY header"]).is_empty(),
        "the refusal is logged"
    );
}
