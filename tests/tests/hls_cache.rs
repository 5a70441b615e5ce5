//! LL-HLS through a standard HTTP cache: Debian's nginx with the shipped
//! `deploy/nginx/tidegate-hls-cache.conf` in front of the HLS listener collapses many players'
//! requests into about one request to Tidegate per part and per playlist version, and the
//! players stay about as close to live as players served directly.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tidegate_tests::llhls::{quantile, run_clients, ClientStats};
use tidegate_tests::peers::{ffmpeg_publish, free_port, nginx, wait_listening, PeerProcess};
use tidegate_tests::scratch;
use tidegate_tests::server::TestServer;

/// nginx with the shipped cache configuration, its upstream, port and cache directory set to
/// the test's; a log line per request that went to Tidegate (`$upstream_addr` is empty for
/// cache hits).
fn nginx_cache(hls: SocketAddr, port: u16, dir: &Path) -> PeerProcess {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nginx/tidegate-hls-cache.conf"
    ))
    .unwrap();
    for needle in [
        "server 127.0.0.1:8888;",
        "listen 8080;",
        "/var/cache/nginx/tidegate",
    ] {
        assert!(shipped.contains(needle), "{needle}");
    }
    let conf = shipped
        .replace("server 127.0.0.1:8888;", &format!("server {hls};"))
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
        .replace(
            "/var/cache/nginx/tidegate",
            &dir.join("cache").display().to_string(),
        );
    let d = dir.display();
    let p = nginx(
        "nginx-cache",
        &format!(
            "events {{ worker_connections 4096; }}\n\
             http {{ client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               map $upstream_addr $to_origin {{ \"\" 0; default 1; }}\n\
               log_format origin '$upstream_cache_status \"$request_uri\" $status';\n\
               access_log {d}/origin.log origin if=$to_origin;\n\
               {conf}\n}}\n"
        ),
        dir,
    );
    wait_listening(port, Duration::from_secs(15));
    p
}

fn summary(stats: &[ClientStats]) -> (f64, f64, u64, u64, u64) {
    let mut lat: Vec<f64> = stats.iter().flat_map(|s| s.latencies_ms.clone()).collect();
    let p50 = quantile(&mut lat, 0.5);
    let p90 = quantile(&mut lat, 0.9);
    let fewest = stats.iter().map(|s| s.parts).min().unwrap_or(0);
    let errors = stats.iter().map(|s| s.errors).sum();
    let requests = stats.iter().map(|s| s.requests).sum();
    (p50, p90, fewest, errors, requests)
}

/// 200 LL-HLS players through nginx and 20 straight to Tidegate, for 30 s, at once: Tidegate
/// answers at most 1.2 requests per part and per playlist version from nginx, every player
/// keeps receiving parts, and the players behind the cache are at most 0.3 s further from
/// live (median) than the direct ones.
#[test]
fn ll_hls_through_nginx_proxy_cache_collapses_requests() {
    let dir = scratch("hls-cache");
    let server = TestServer::start(
        "hlsVariant: lowLatency\nhlsPartDuration: 200ms\nhlsSegmentDuration: 1s\nhlsAlwaysRemux: yes\npaths:\n  all_others:\n",
    );
    let mut publisher = ffmpeg_publish(&server.rtmp_url("live/cache"), 90, "flv", &dir);
    server.wait_ready("live/cache", Duration::from_secs(20));
    let port = free_port();
    let _nginx = nginx_cache(server.hls_addr(), port, &dir);
    let cache: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let direct = server.hls_addr();
    let run = Duration::from_secs(30);
    let behind = std::thread::spawn(move || run_clients(cache, "live/cache", 200, run));
    let straight = run_clients(direct, "live/cache", 20, run);
    let behind = behind.join().unwrap();
    publisher.kill9();

    let (c50, c90, c_fewest, c_err, c_req) = summary(&behind);
    let (d50, d90, d_fewest, d_err, d_req) = summary(&straight);
    let log = std::fs::read_to_string(dir.join("origin.log")).unwrap_or_default();
    let origin: Vec<&str> = log.lines().collect();
    let part_requests = origin.iter().filter(|l| l.contains(".mp4")).count();
    let playlist_requests = origin.iter().filter(|l| l.contains("stream.m3u8")).count();
    let parts: HashSet<&str> = origin
        .iter()
        .filter_map(|l| l.split('"').nth(1))
        .filter(|u| u.contains("_part") && u.ends_with(".mp4"))
        .collect();
    let report = format!(
        "through nginx: {} players, {c_req} requests, latency p50 {c50:.0} ms p90 {c90:.0} ms, \
         fewest parts {c_fewest}, errors {c_err}\n\
         direct: {} players, {d_req} requests, latency p50 {d50:.0} ms p90 {d90:.0} ms, \
         fewest parts {d_fewest}, errors {d_err}\n\
         to Tidegate from nginx: {} requests, {part_requests} for {} parts, {playlist_requests} \
         for playlists",
        behind.len(),
        straight.len(),
        origin.len(),
        parts.len(),
    );
    eprintln!("{report}");
    assert_eq!(behind.len(), 200, "{report}");
    assert_eq!(straight.len(), 20, "{report}");
    // 30 s of 200 ms parts: 150; every player got most of them.
    assert!(c_fewest >= 75 && d_fewest >= 75, "{report}");
    assert!(!parts.is_empty(), "{report}");
    let versions = parts.len() as f64;
    let first_lines = origin
        .iter()
        .take(50)
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    for (what, n) in [("part", part_requests), ("playlist", playlist_requests)] {
        assert!(
            n as f64 <= 1.2 * versions,
            "{what} requests to Tidegate: {n} for {versions} versions\n{report}\n{first_lines}"
        );
    }
    assert!(c50 - d50 <= 300.0, "{report}");
}
