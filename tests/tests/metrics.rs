//! `/metrics` with every kind of session live (ffmpeg over RTMP, RTMPS, RTSP, RTSPS, SRT; an
//! aiortc WHEP viewer; an HLS muxer; a push to another server): every metric that
//! docs/operations.md names is served, with MediaMTX's names and labels, and the whole text is
//! read by the Prometheus text-format parser of `prometheus_client` (PyPI). `/v3/info` answers
//! MediaMTX's fields.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tidegate_tests::http::{fetch, fetch_within, get_json};
use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{peer, run_bounded, scratch};

const READY: Duration = Duration::from_secs(20);

/// The metric names in the first column of the tables of docs/operations.md's "Metrics" part.
fn documented() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let part = doc.split("\n## Metrics").nth(1).expect("a Metrics part");
    let part = part.split("\n## ").next().unwrap();
    part.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1))
        .map(|n| n.split('{').next().unwrap().to_string())
        .collect()
}

/// The sample names of `text` as `prometheus_client`'s parser reads them (it fails on
/// anything that is not the text format).
fn parsed_samples(text: &str, dir: &std::path::Path) -> BTreeSet<String> {
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let out = run_bounded(
        Command::new(peer("python"))
            .arg("-c")
            .arg(
                "import json, sys\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             names = set()\n\
             for fam in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
             \x20   for s in fam.samples:\n\
             \x20       names.add(s.name)\n\
             print(json.dumps(sorted(names)))\n",
            )
            .arg(&file),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<String>>(&out.stdout)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn every_documented_metric_is_served_while_its_session_is_live() {
    let dir = scratch("metrics-all");
    let (key, cert) = tidegate_tests::self_signed(&dir);
    let dest = TestServer::start("");
    let server = TestServer::start(&format!(
        "rtmpEncryption: optional\nrtmpServerKey: {k}\nrtmpServerCert: {c}\n\
         rtspEncryption: optional\nrtspServerKey: {k}\nrtspServerCert: {c}\n\
         webhooks:\n  - url: http://127.0.0.1:9/nobody-listens\n\
         paths:\n  live:\n    push:\n      - {push}\n",
        k = key.display(),
        c = cert.display(),
        push = dest.rtmp_url("live/pushed"),
    ));
    let _publisher = ffmpeg_publish(&server.rtmp_url("live"), 60, "flv", &dir);
    server.wait_ready("live", READY);
    dest.wait_ready("live/pushed", READY);

    let mut readers = vec![
        ffmpeg_read(&server.rtmps_url("live"), 30, &dir.join("rtmps.mkv"), &dir),
        ffmpeg_read(&server.rtsp_url("live"), 30, &dir.join("rtsp.mkv"), &dir),
        ffmpeg_read(&server.rtsps_url("live"), 30, &dir.join("rtsps.mkv"), &dir),
        ffmpeg_read(
            &format!("{}&latency=200000", server.srt_url("read:live", "")),
            30,
            &dir.join("srt.ts"),
            &dir,
        ),
    ];
    let mut whep = Command::new(peer("python"));
    whep.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
        .args([
            "whep",
            &server.webrtc_url("live", "whep"),
            "--seconds",
            "30",
        ]);
    readers.push(PeerProcess::spawn("aiortc-whep", &mut whep, &dir));
    // An HLS client: the muxer starts with the first request.
    let hls = fetch(server.hls_addr(), "/live/index.m3u8", &[]);
    assert_eq!(hls.status, 200);
    // The push, 4 ffmpeg readers, the WHEP viewer and the HLS muxer.
    server.wait_readers("live", 7, Duration::from_secs(40));

    // Some figures appear a moment after a reader is counted (an RTSP reader's backlog once
    // its PLAY is answered): wait until a scrape has a sample of each documented family.
    let unsampled = |text: &str| -> Vec<String> {
        documented()
            .into_iter()
            .filter(|name| {
                !text.lines().any(|l| {
                    l.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with(['{', ' ', '_']))
                })
            })
            .collect()
    };
    let text = tidegate_tests::poll(
        Duration::from_secs(20),
        || {
            let text = fetch(server.metrics_addr(), "/metrics", &[]).text();
            format!("no sample of {:?}\n{text}", unsampled(&text))
        },
        || {
            let text = fetch(server.metrics_addr(), "/metrics", &[]).text();
            unsampled(&text).is_empty().then_some(text)
        },
    );
    let samples = parsed_samples(&text, &dir);
    let mut missing = Vec::new();
    for name in documented() {
        let found = ["", "_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|suffix| samples.contains(&format!("{name}{suffix}")));
        if !found {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not served while every session kind is live: {missing:?}\n{text}"
    );
    // Labels as MediaMTX has them.
    assert!(
        text.contains("paths{name=\"live\",state=\"ready\"} 1"),
        "{text}"
    );
    assert!(text.contains("readerType=\"rtspSession\""), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("rtmp_conns{id=") && l.contains("state=\"publish\"")),
        "{text}"
    );
    assert!(
        text.contains("forward_dests{id=\"0\",path=\"live\",protocol=\"rtmp\""),
        "{text}"
    );
    // Every reader's byte counter moves (media, not only the protocol's answers).
    let slow = |text: &str| -> Vec<&'static str> {
        let value = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .fold(0.0, f64::max)
        };
        [
            "rtmps_conns_outbound_bytes{",
            "rtsp_sessions_outbound_bytes{",
            "rtsps_sessions_outbound_bytes{",
            "srt_conns_outbound_bytes{",
            "webrtc_sessions_outbound_bytes{",
            "forward_dests_outbound_bytes{",
            "paths_outbound_bytes{",
        ]
        .into_iter()
        .filter(|p| value(p) < 100_000.0)
        .collect()
    };
    let scrape = || fetch(server.metrics_addr(), "/metrics", &[]).text();
    tidegate_tests::poll(
        Duration::from_secs(30),
        || format!("these counters did not pass 100 kB: {:?}", slow(&scrape())),
        || slow(&scrape()).is_empty().then_some(()),
    );
    // Filters: ?type= keeps one family group.
    let only = fetch(server.metrics_addr(), "/metrics?type=srt_conns", &[]).text();
    assert!(
        only.contains("srt_conns_ms_rtt{") && !only.contains("paths{"),
        "{only}"
    );

    // Per-reader lag and losses in the API too.
    for list in ["rtmpsconns", "srtconns", "rtspssessions"] {
        let conns = get_json(server.api_addr(), &format!("/v3/{list}/list"));
        assert!(
            conns["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["state"] == "read"
                    && c["outboundFramesDiscarded"].is_u64()
                    && c["outboundQueuedFrames"].is_u64()
                    && c["outboundSkips"].is_u64()),
            "{list}: {conns}"
        );
    }

    let info = get_json(server.api_addr(), "/v3/info");
    assert!(info["version"].as_str().unwrap().starts_with('v'), "{info}");
    assert!(info["started"].as_str().unwrap().contains('T'), "{info}");
    drop(readers);
}

/// The Grafana dashboard in deploy/ asks only for metrics that docs/operations.md names (and
/// that the test above sees served).
#[test]
fn the_grafana_dashboard_uses_served_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/tidegate.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let documented = documented();
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // Metric names: identifiers right before a `{` selector.
            for (i, _) in expr.match_indices('{') {
                let name: String = expr[..i]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if !name.is_empty() {
                    used.insert(name.trim_end_matches("_bucket").to_string());
                }
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|u| !documented.contains(u)).collect();
    assert!(unknown.is_empty(), "the dashboard asks for {unknown:?}");
}

/// `pprof: yes`: a CPU profile on demand, as folded stacks and as a flame graph, taken while
/// ffmpeg publishes and reads; refused without the `pprof` permission.
#[test]
fn pprof_gives_a_cpu_profile_behind_its_permission() {
    let dir = scratch("pprof");
    let server = TestServer::start("pprof: yes\n");
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/prof"), 40, "flv", &dir);
    server.wait_ready("live/prof", READY);
    // Three readers, all attached before the profiles: the server spends little CPU on one
    // stream's fan-out (under one sample a second at the profiler's rate), and a profile with
    // no sample has no flame graph to check.
    let _readers: Vec<_> = (0..3)
        .map(|i| {
            ffmpeg_read(
                &server.rtmp_url("live/prof"),
                30,
                &dir.join(format!("r{i}.flv")),
                &dir,
            )
        })
        .collect();
    server.wait_readers("live/prof", 3, Duration::from_secs(20));
    // And API requests throughout, so that the server surely spends CPU while it profiles.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = server.api_addr();
    let polling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(30)
            {
                let _ = get_json(api, "/v3/paths/list");
            }
        })
    };

    // The answer comes after the 5 s of sampling and the symbolisation of every sampled
    // frame, which reads the debug build's DWARF: seconds more on a loaded machine.
    let folded = fetch_within(
        server.pprof_addr(),
        "/debug/pprof/profile?seconds=5&format=folded",
        Duration::from_secs(60),
    );
    assert_eq!(folded.status, 200, "{}", folded.text());
    let text = folded.text();
    let mut samples = 0u64;
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
        samples += count.parse::<u64>().expect("a count");
        assert!(!stack.is_empty());
    }
    assert!(samples >= 3, "{samples} samples in 5 s:\n{text}");
    // Symbols resolved: the server's own code is named in the stacks.
    assert!(
        text.contains("tidegate") || text.contains("tokio"),
        "no named frame:\n{text}"
    );

    let svg = fetch_within(
        server.pprof_addr(),
        "/debug/pprof/profile?seconds=5",
        Duration::from_secs(60),
    );
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let svg = svg.text();
    assert!(svg.contains("<svg"), "{svg}");
    // A flame graph: one titled box per frame sampled.
    assert!(svg.matches("<title>").count() >= 3, "{svg}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    polling.join().unwrap();
    assert_eq!(
        fetch(server.pprof_addr(), "/debug/pprof/profile?seconds=0", &[]).status,
        400
    );

    // Users without the pprof permission are refused.
    let locked = TestServer::start(
        "pprof: yes\nauthInternalUsers:\n  - user: any\n    permissions:\n      - action: publish\n",
    );
    let r = fetch(locked.pprof_addr(), "/debug/pprof/profile?seconds=1", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
}

/// Each reader says in the API which tracks its egress carries and which it left out and
/// why: ffmpeg publishes H.264 + AAC over RTMP; RTMP, SRT and RTSP readers (ffmpeg) carry
/// both; an aiortc WHEP viewer gets the video and the API says why not the AAC.
#[test]
fn readers_say_which_tracks_they_carry_and_why_not() {
    let dir = scratch("carriage");
    let server = TestServer::start("");
    let _publisher = ffmpeg_publish(&server.rtmp_url("live/tracks"), 40, "flv", &dir);
    server.wait_ready("live/tracks", READY);
    let _readers = [
        ffmpeg_read(
            &server.rtmp_url("live/tracks"),
            20,
            &dir.join("a.flv"),
            &dir,
        ),
        ffmpeg_read(
            &format!("{}&latency=200000", server.srt_url("read:live/tracks", "")),
            20,
            &dir.join("b.ts"),
            &dir,
        ),
        ffmpeg_read(
            &server.rtsp_url("live/tracks"),
            20,
            &dir.join("c.mkv"),
            &dir,
        ),
    ];
    let mut whep = Command::new(peer("python"));
    whep.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
        .args([
            "whep",
            &server.webrtc_url("live/tracks", "whep"),
            "--seconds",
            "20",
        ]);
    let _viewer = PeerProcess::spawn("aiortc-whep", &mut whep, &dir);
    server.wait_readers("live/tracks", 4, Duration::from_secs(40));

    let reader = |list: &str| -> serde_json::Value {
        tidegate_tests::poll(
            Duration::from_secs(20),
            || format!("a reader in /v3/{list}/list"),
            || {
                let v = get_json(server.api_addr(), &format!("/v3/{list}/list"));
                v["items"]
                    .as_array()?
                    .iter()
                    .find(|c| c["state"] == "read" && c["tracks"].is_array())
                    .cloned()
            },
        )
    };
    for list in ["rtmpconns", "srtconns", "rtspsessions"] {
        let c = reader(list);
        assert_eq!(
            c["tracks"],
            serde_json::json!(["H264", "MPEG-4 Audio"]),
            "{list}: {c}"
        );
        assert_eq!(c["droppedTracks"], serde_json::json!([]), "{list}: {c}");
    }
    // The WHEP viewer gets the AAC as Opus (the audio bridge).
    let w = reader("webrtcsessions");
    assert_eq!(
        w["tracks"],
        serde_json::json!(["H264", "MPEG-4 Audio → Opus"]),
        "{w}"
    );
    assert_eq!(w["droppedTracks"], serde_json::json!([]), "{w}");
}
