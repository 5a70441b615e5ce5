//! `useAbsoluteTimestamp`: frames take the absolute time their source gives them (RTCP sender
//! reports of RTSP publishers and cameras, `EXT-X-PROGRAM-DATE-TIME` of HLS sources) instead
//! of the time they arrived, and that time is what recordings are named by, what HLS
//! playlists date their segments with and what Tidegate's own RTSP sender reports say.
//!
//! GStreamer's `rtspclientsink ntp-time-source=running-time` sends sender reports whose NTP
//! time is the pipeline's running time: a date in the first seconds of 1900, far from the
//! arrival time, so that either is recognised at a glance.

use std::process::Command;
use std::time::Duration;

use tidegate_tests::http::fetch;
use tidegate_tests::peers::PeerProcess;
use tidegate_tests::server::TestServer;
use tidegate_tests::{peer, poll, scratch};

const READY: Duration = Duration::from_secs(30);

/// GStreamer publishing H.264 over RTSP (`protocols`: tcp or udp) whose RTCP clock is its
/// running time.
fn gst_publisher(url: &str, protocols: &str, dir: &std::path::Path) -> PeerProcess {
    let pipeline = format!(
        "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
         ! rtspclientsink location={url} protocols={protocols} ntp-time-source=running-time"
    );
    let mut cmd = Command::new(peer("gst-launch-1.0"));
    cmd.arg("-q").args(pipeline.split_whitespace());
    PeerProcess::spawn("gst-rtspclientsink", &mut cmd, dir)
}

/// The first `EXT-X-PROGRAM-DATE-TIME` of a path's HLS media playlist, once it has one.
fn first_pdt(server: &TestServer, path: &str) -> String {
    poll(
        Duration::from_secs(40),
        || format!("{path}: no dated segment in its HLS playlist"),
        || {
            let r = fetch(server.hls_addr(), &format!("/{path}/stream.m3u8"), &[]);
            if r.status != 200 {
                // The muxer starts on this first request.
                return None;
            }
            r.text()
                .lines()
                .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
                .map(str::to_string)
        },
    )
}

#[test]
fn absolute_times_of_rtsp_publishers_reach_recordings_hls_and_rtsp_readers() {
    let dir = scratch("absolute-time");
    let rec = dir.join("rec");
    let origin = TestServer::start(&format!(
        "pathDefaults:\n\
         \x20 record: yes\n\
         \x20 recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n\
         \x20 recordDeleteAfter: 0s\n\
         paths:\n\
         \x20 abs:\n\
         \x20   useAbsoluteTimestamp: yes\n\
         \x20 absudp:\n\
         \x20   useAbsoluteTimestamp: yes\n\
         \x20 plain:\n",
        rec.display()
    ));
    let _abs = gst_publisher(&origin.rtsp_url("abs"), "tcp", &dir);
    let _absudp = gst_publisher(&origin.rtsp_url("absudp"), "udp", &dir);
    let _plain = gst_publisher(&origin.rtsp_url("plain"), "tcp", &dir);
    for p in ["abs", "absudp", "plain"] {
        origin.wait_ready(p, READY);
    }

    // A second Tidegate pulls the dated path over RTSP: through retina over TCP and through
    // Tidegate's own client over UDP (which a port range selects). Origin's sender reports
    // carry the publisher's times on; the edge takes them with useAbsoluteTimestamp.
    let edge = TestServer::start(&format!(
        "paths:\n\
         \x20 viatcp:\n\
         \x20   source: {src}\n\
         \x20   rtspTransport: tcp\n\
         \x20   useAbsoluteTimestamp: yes\n\
         \x20 viaudp:\n\
         \x20   source: {src}\n\
         \x20   rtspTransport: udp\n\
         \x20   rtspUDPSourcePortRange: [43000, 43200]\n\
         \x20   useAbsoluteTimestamp: yes\n\
         \x20 arrival:\n\
         \x20   source: {src}\n\
         \x20   rtspTransport: tcp\n\
         \x20 viahls:\n\
         \x20   source: {hls}\n\
         \x20   useAbsoluteTimestamp: yes\n",
        src = origin.rtsp_url("abs"),
        hls = origin.hls_url("abs", "index.m3u8"),
    ));

    // HLS: segments dated by the source's clock (1900) or by arrival (this century).
    for p in ["abs", "absudp"] {
        let pdt = first_pdt(&origin, p);
        eprintln!("{p}: first segment dated {pdt}");
        assert!(pdt.starts_with("1900-01-01T00:"), "{p}: {pdt}");
    }
    let pdt = first_pdt(&origin, "plain");
    eprintln!("plain: first segment dated {pdt}");
    assert!(pdt.starts_with("20"), "plain: {pdt}");
    // And over HLS, whose playlist dates its segments (EXT-X-PROGRAM-DATE-TIME).
    for p in ["viatcp", "viaudp", "viahls"] {
        edge.wait_ready(p, READY);
        let pdt = first_pdt(&edge, p);
        eprintln!("edge {p}: first segment dated {pdt}");
        assert!(pdt.starts_with("1900-01-01T00:"), "edge {p}: {pdt}");
    }
    edge.wait_ready("arrival", READY);
    let pdt = first_pdt(&edge, "arrival");
    assert!(pdt.starts_with("20"), "edge arrival: {pdt}");

    // Recordings: named by the first frame's absolute time (local time: 1899-12-31 west of
    // Greenwich).
    let names = |p: &str| -> Vec<String> {
        std::fs::read_dir(rec.join(p))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (p, old) in [("abs", true), ("absudp", true), ("plain", false)] {
        let files = poll(
            Duration::from_secs(30),
            || format!("{p}: no recording in {}", rec.join(p).display()),
            || Some(names(p)).filter(|n| !n.is_empty()),
        );
        eprintln!("{p}: recorded {files:?}");
        for f in &files {
            let year: i32 = f.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
            if old {
                assert!((1899..=1900).contains(&year), "{p}: {f}");
            } else {
                assert!(year >= 2024, "{p}: {f}");
            }
        }
    }
}

/// WHIP publishers: aiortc whose RTCP clock is set ten years back (`--ntp-offset`): with
/// `useAbsoluteTimestamp` the path's HLS segments are dated by it (2016), without it by their
/// arrival (today).
#[test]
fn absolute_times_of_whip_publishers_date_hls() {
    let dir = scratch("absolute-time-whip");
    let server = TestServer::start("paths:\n  abs:\n    useAbsoluteTimestamp: yes\n  plain:\n");
    let ten_years = (10 * 365 * 86_400).to_string();
    let whip = |path: &str, name: &str| {
        let mut cmd = Command::new(peer("python"));
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
            .args(["whip", &server.webrtc_url(path, "whip"), "--seconds", "40"])
            .args(["--audio", "--ntp-offset", &ten_years]);
        PeerProcess::spawn(name, &mut cmd, &dir)
    };
    let _abs = whip("abs", "aiortc-abs");
    let _plain = whip("plain", "aiortc-plain");
    server.wait_ready("abs", READY);
    server.wait_ready("plain", READY);
    let pdt = first_pdt(&server, "abs");
    eprintln!("abs (WHIP): first segment dated {pdt}");
    let year: i32 = pdt.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    assert!((2016..=2017).contains(&year), "abs: {pdt}");
    let pdt = first_pdt(&server, "plain");
    eprintln!("plain (WHIP): first segment dated {pdt}");
    let year: i32 = pdt.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    assert!(year >= 2024, "plain: {pdt}");
}
