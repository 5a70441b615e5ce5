//! Hooks with real peers: ffmpeg publishes and reads over RTMP and RTSP; every `runOn…` hook
//! fires with MediaMTX's environment (a script records it), commands that last while their
//! cause lasts get SIGINT when it ends, `runOnDemand` starts an ffmpeg publisher when the
//! first reader arrives and ends it `runOnDemandCloseAfter` after the last one left,
//! `runOnInit` publishes at start, `…Restart` restarts a dying command with growing pauses,
//! and a command's output reaches the log.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, synthetic_source};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, logs, peer, scratch};

const READY: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(30);

/// A script that writes its environment to `<dir>/<name>.env`, says `hook-output <name>` on
/// its standard output, and with `wait` runs until SIGINT, which it records in `<name>.int`.
fn hook_script(dir: &Path) -> PathBuf {
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         out=\"$(dirname \"$0\")/$1\"\n\
         env | sort > \"$out.env.tmp\" && mv \"$out.env.tmp\" \"$out.env\"\n\
         echo \"hook-output $1\"\n\
         if [ \"$2\" = wait ]; then\n\
           trap 'echo int > \"$out.int\"; exit 0' INT\n\
           while :; do sleep 0.1; done\n\
         fi\n",
    )
    .unwrap();
    set_executable(&script);
    script
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits (bounded) for a file to exist; the hooks run in processes of their own, so their
/// traces on disk are the events to wait for.
fn wait_file(p: &Path, limit: Duration) {
    tidegate_tests::poll(
        limit,
        || format!("{} did not appear", p.display()),
        || p.exists().then_some(()),
    );
}

fn read_env(p: &Path) -> HashMap<String, String> {
    wait_file(p, LIMIT);
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Files in `dir` named `<prefix>…<suffix>`.
fn files(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn video_frames(file: &Path) -> usize {
    let p = ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30));
    assert_eq!(p.codec("video").as_deref(), Some("h264"));
    assert!(p.dts_monotonic("video"));
    p.packets_of("video").len()
}

#[test]
fn path_reader_and_connection_hooks_fire_with_mediamtx_environment() {
    let dir = scratch("hooks-env");
    let hook = hook_script(&dir);
    let h = hook.display();
    let server = TestServer::start(&format!(
        "runOnConnect: {h} connect-$MTX_CONN_TYPE-$MTX_CONN_ID wait\n\
         runOnDisconnect: {h} disconnect-$MTX_CONN_TYPE-$MTX_CONN_ID\n\
         paths:\n  \
           hooked:\n    \
             runOnAvailable: {h} available-$MTX_SOURCE_ID wait\n    \
             runOnUnavailable: {h} unavailable-$MTX_SOURCE_ID\n    \
             runOnOnline: {h} online-$MTX_SOURCE_ID wait\n    \
             runOnOffline: {h} offline-$MTX_SOURCE_ID\n    \
             runOnRead: {h} read-$MTX_READER_ID wait\n    \
             runOnUnread: {h} unread-$MTX_READER_ID\n  \
           '~^re(\\d+)$':\n    \
             runOnReady: {h} re-$G1\n"
    ));
    let rtsp_port = tidegate_tests::port_of(&server.rtsp_url("x")).to_string();

    let mut publisher = ffmpeg_publish(
        &format!("{}?x=1", server.rtmp_url("hooked")),
        12,
        "flv",
        &dir,
    );
    server.wait_ready("hooked", READY);
    let source = server.paths().get("hooked").unwrap().source.unwrap();
    assert_eq!(source.0, "rtmpConn");
    let id = source.1;

    let env = read_env(&dir.join(format!("available-{id}.env")));
    assert_eq!(env["MTX_PATH"], "hooked");
    assert_eq!(env["MTX_SOURCE_TYPE"], "rtmpConn");
    assert_eq!(env["MTX_SOURCE_ID"], id.to_string());
    assert_eq!(env["MTX_QUERY"], "x%3D1");
    assert_eq!(env["RTSP_PORT"], rtsp_port);
    let online = read_env(&dir.join(format!("online-{id}.env")));
    assert_eq!(online["MTX_SOURCE_ID"], id.to_string());
    let conn = read_env(&dir.join(format!("connect-rtmpConn-{id}.env")));
    assert_eq!(conn["MTX_CONN_TYPE"], "rtmpConn");
    assert_eq!(conn["MTX_CONN_ID"], id.to_string());
    assert_eq!(conn["RTSP_PORT"], rtsp_port);
    assert!(
        !conn.contains_key("MTX_PATH"),
        "a connection hook has no path"
    );

    // An RTSP reader for 3 s.
    let out = dir.join("read.mkv");
    let mut reader = ffmpeg_read(&format!("{}?r=2", server.rtsp_url("hooked")), 3, &out, &dir);
    server.wait_readers("hooked", 1, READY);
    let reader_id = server.paths().get("hooked").unwrap().readers[0].1;
    let env = read_env(&dir.join(format!("read-{reader_id}.env")));
    assert_eq!(env["MTX_PATH"], "hooked");
    assert_eq!(env["MTX_READER_TYPE"], "rtspSession");
    assert_eq!(env["MTX_READER_ID"], reader_id.to_string());
    assert_eq!(env["MTX_QUERY"], "r%3D2");
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    assert!(video_frames(&out) >= 60, "the reader got too few frames");
    // Its end: runOnRead got SIGINT, runOnUnread ran with the same environment.
    wait_file(&dir.join(format!("read-{reader_id}.int")), LIMIT);
    let unread = read_env(&dir.join(format!("unread-{reader_id}.env")));
    assert_eq!(unread["MTX_READER_TYPE"], "rtspSession");
    assert_eq!(unread["MTX_READER_ID"], reader_id.to_string());
    // Its connection came and went too.
    let rtsp_conns = files(&dir, "connect-rtspConn-", ".env");
    assert!(
        !rtsp_conns.is_empty(),
        "no runOnConnect for the RTSP reader"
    );
    let rtsp_conn = rtsp_conns[0]
        .trim_start_matches("connect-")
        .trim_end_matches(".env")
        .to_string();
    wait_file(&dir.join(format!("disconnect-{rtsp_conn}.env")), LIMIT);
    wait_file(&dir.join(format!("connect-{rtsp_conn}.int")), LIMIT);

    // The publisher ends: available and online get SIGINT, their counterparts run.
    assert!(publisher.wait(LIMIT).success(), "{}", publisher.stderr());
    let env = read_env(&dir.join(format!("unavailable-{id}.env")));
    assert_eq!(env["MTX_SOURCE_TYPE"], "rtmpConn");
    assert_eq!(env["MTX_QUERY"], "x%3D1");
    read_env(&dir.join(format!("offline-{id}.env")));
    wait_file(&dir.join(format!("available-{id}.int")), LIMIT);
    wait_file(&dir.join(format!("online-{id}.int")), LIMIT);
    wait_file(&dir.join(format!("disconnect-rtmpConn-{id}.env")), LIMIT);
    wait_file(&dir.join(format!("connect-rtmpConn-{id}.int")), LIMIT);

    // A command's output is in the server's log.
    assert!(
        !logs::lines_with(&[&format!("hook-output available-{id}")]).is_empty(),
        "the hook's output is not in the log"
    );

    // A regex path: its groups, through the older spelling runOnReady.
    let mut p2 = ffmpeg_publish(&server.rtmp_url("re42"), 2, "flv", &dir);
    let env = read_env(&dir.join("re-42.env"));
    assert_eq!(env["G1"], "42");
    assert_eq!(env["MTX_PATH"], "re42");
    assert!(p2.wait(LIMIT).success(), "{}", p2.stderr());
}

#[test]
fn run_on_demand_publishes_for_readers_and_ends_after_the_last_one() {
    let dir = scratch("hooks-demand");
    let hook = hook_script(&dir);
    let ffmpeg = peer("ffmpeg");
    // An endless synthetic publish over RTSP to the path that asked for it.
    let publish = |seconds: u32| {
        let args = synthetic_source(seconds, "320x240");
        format!(
            "{} {} -f rtsp rtsp://127.0.0.1:$RTSP_PORT/$MTX_PATH",
            ffmpeg.display(),
            args.join(" ")
        )
    };
    let server = TestServer::start(&format!(
        "paths:\n  \
           ondemand:\n    \
             runOnDemand: {}\n    \
             runOnDemandStartTimeout: 20s\n    \
             runOnDemandCloseAfter: 2s\n    \
             runOnUnDemand: {} undemand\n  \
           atstart:\n    \
             runOnInit: {}\n",
        publish(3600),
        hook.display(),
        publish(3600),
    ));

    // runOnInit: the path is published with no client asking.
    server.wait_ready("atstart", READY);

    // Nobody publishes on `ondemand` until a reader asks; the reader waits and plays.
    assert!(!server.paths().get("ondemand").is_some_and(|p| p.ready));
    let out = dir.join("demand.mkv");
    let mut reader = ffmpeg_read(&server.rtsp_url("ondemand"), 4, &out, &dir);
    assert!(
        reader.wait(Duration::from_secs(60)).success(),
        "{}",
        reader.stderr()
    );
    assert!(
        video_frames(&out) >= 90,
        "the on-demand reader got too few frames"
    );
    let left = Instant::now();
    assert!(server.paths().get("ondemand").is_some_and(|p| p.ready));

    // runOnDemandCloseAfter (2 s) after the last reader left, the command is ended (its
    // ffmpeg stops publishing) and runOnUnDemand runs.
    server.wait_not_ready("ondemand", LIMIT);
    let closed = left.elapsed();
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(15),
        "the on-demand publisher ended {closed:?} after the last reader"
    );
    let env = read_env(&dir.join("undemand.env"));
    assert_eq!(env["MTX_PATH"], "ondemand");
    assert!(!logs::lines_with(&["runOnDemand ends: no readers any more", "ondemand"]).is_empty());
}

#[test]
fn a_dying_command_is_restarted_with_growing_pauses() {
    let dir = scratch("hooks-restart");
    let stamps = dir.join("stamps");
    let script = dir.join("stamp.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ndate +%s.%N >> {}\nexit 3\n", stamps.display()),
    )
    .unwrap();
    set_executable(&script);
    let server = TestServer::start(&format!(
        "paths:\n  restarting:\n    runOnAvailable: {}\n    runOnAvailableRestart: yes\n",
        script.display()
    ));
    let mut publisher = ffmpeg_publish(&server.rtmp_url("restarting"), 30, "flv", &dir);
    server.wait_ready("restarting", READY);
    let times = tidegate_tests::poll(
        LIMIT,
        || "4 runs of the hook".into(),
        || {
            let t: Vec<f64> = std::fs::read_to_string(&stamps)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            (t.len() >= 4).then_some(t)
        },
    );
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s, 2 s, 4 s (plus the time a run takes).
    assert!(gaps[0] >= 0.9 && gaps[0] < 3.0, "{gaps:?}");
    assert!(gaps[1] >= 1.9 && gaps[1] < 5.0, "{gaps:?}");
    assert!(gaps[2] >= 3.9 && gaps[2] < 9.0, "{gaps:?}");
    assert!(!logs::lines_with(&["runOnAvailable (restarting) exited", "3"]).is_empty());
    publisher.kill9();
    server.wait_not_ready("restarting", LIMIT);
    // The restart loop ends with its cause.
    logs::wait_for(&["runOnAvailable (restarting) stopped"], LIMIT);
}

#[test]
fn a_hook_that_floods_and_ignores_sigint_does_not_hold_up_the_server() {
    let dir = scratch("hooks-flood");
    // Prints as fast as it can and ignores SIGINT (an ignored signal stays ignored in `yes`).
    let server = TestServer::start(
        "paths:\n  flooded:\n    runOnRead: sh -c 'trap \"\" INT; exec yes flood-line-from-hook'\n",
    );
    let mut publisher = ffmpeg_publish(&server.rtmp_url("flooded"), 12, "flv", &dir);
    server.wait_ready("flooded", READY);
    let out = dir.join("flooded.mkv");
    let mut reader = ffmpeg_read(&server.rtsp_url("flooded"), 5, &out, &dir);
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    // The reader got its frames at the publisher's rate (30 fps) while the hook flooded.
    let frames = video_frames(&out);
    assert!(frames >= 120, "the reader got {frames} frames in 5 s");
    // The flood reached the log at the rate limit, said once when it was cut.
    logs::wait_for(
        &["runOnRead (flooded)", "lines of output not logged"],
        LIMIT,
    );
    let logged = logs::lines_with(&["flood-line-from-hook"]).len();
    assert!(
        (50..=2000).contains(&logged),
        "{logged} lines of the flood were logged"
    );
    // SIGINT was ignored: the group was killed after the grace period.
    logs::wait_for(&["runOnRead (flooded) still running", "killed"], LIMIT);
    assert!(publisher.wait(LIMIT).success(), "{}", publisher.stderr());
}

/// A webhook receiver in Python (its own HMAC, not ours): appends one JSON line per POST
/// (route, event header, whether the signature verified, body) to `out`; answers 204.
fn receiver(dir: &Path, port: u16, secret: &str, out: &Path) -> tidegate_tests::peers::PeerProcess {
    let script = dir.join("receiver.py");
    std::fs::write(
        &script,
        r#"import hashlib, hmac, http.server, json, sys, threading
port, secret, out = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        ts = self.headers.get('X-Tidegate-Timestamp', '')
        want = 'sha256=' + hmac.new(secret, ts.encode() + b'.' + body, hashlib.sha256).hexdigest()
        rec = {'route': self.path, 'event': self.headers.get('X-Tidegate-Event'),
               'verified': hmac.compare_digest(self.headers.get('X-Tidegate-Signature', ''), want),
               'body': json.loads(body)}
        with lock, open(out, 'a') as f:
            f.write(json.dumps(rec) + '\n')
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', port), H).serve_forever()
"#,
    )
    .unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script).arg(port.to_string()).arg(secret).arg(out);
    let p = tidegate_tests::peers::PeerProcess::spawn("receiver", &mut cmd, dir);
    tidegate_tests::peers::wait_listening(port, LIMIT);
    p
}

fn received(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The events about `path` that reached `route`, in arrival order.
fn events_of(all: &[serde_json::Value], route: &str, path: &str) -> Vec<String> {
    all.iter()
        .filter(|r| r["route"] == route && r["body"]["path"] == path)
        .map(|r| r["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn webhooks_are_signed_ordered_and_survive_a_receiver_outage() {
    let dir = scratch("webhooks");
    let port = tidegate_tests::peers::free_port();
    let out = dir.join("received.jsonl");
    let mut rx = receiver(&dir, port, "s3cret", &out);
    let server = TestServer::start(&format!(
        "webhooks:\n  \
           - url: http://127.0.0.1:{port}/all\n    \
             secret: s3cret\n  \
           - url: http://127.0.0.1:{port}/publish-only\n    \
             events: [publish]\n    \
             secret: s3cret\n"
    ));
    let wait_events = |path: &str, route: &str, want: &[&str]| {
        tidegate_tests::poll(
            Duration::from_secs(60),
            || {
                format!(
                    "{route} {path}: {:?}",
                    events_of(&received(&out), route, path)
                )
            },
            || {
                let got = events_of(&received(&out), route, path);
                want.iter()
                    .all(|w| got.iter().any(|g| g == w))
                    .then_some(got)
            },
        )
    };
    let lifecycle = ["publish", "read", "unread", "unpublish"];

    // Receiver up: a publisher and a reader.
    let mut p = ffmpeg_publish(&server.rtmp_url("wh1"), 6, "flv", &dir);
    server.wait_ready("wh1", READY);
    let mut r = ffmpeg_read(&server.rtsp_url("wh1"), 2, &dir.join("wh1.mkv"), &dir);
    assert!(r.wait(LIMIT).success(), "{}", r.stderr());
    assert!(p.wait(LIMIT).success(), "{}", p.stderr());
    assert_eq!(wait_events("wh1", "/all", &lifecycle), lifecycle);

    // Receiver down: the sessions go on as if nothing happened.
    rx.kill9();
    let down = Instant::now();
    let mut p = ffmpeg_publish(&server.rtmp_url("wh2"), 8, "flv", &dir);
    server.wait_ready("wh2", READY);
    let mut r = ffmpeg_read(&server.rtsp_url("wh2"), 4, &dir.join("wh2.mkv"), &dir);
    assert!(r.wait(LIMIT).success(), "{}", r.stderr());
    assert!(
        video_frames(&dir.join("wh2.mkv")) >= 90,
        "the reader was held up"
    );
    assert!(p.wait(LIMIT).success(), "{}", p.stderr());
    server.wait_not_ready("wh2", LIMIT);
    let api = server.api_addr();
    let hooks = tidegate_tests::http::get_json(api, "/v3/webhooks/list");
    assert!(
        hooks["items"][0]["failedAttempts"].as_u64().unwrap() >= 1,
        "{hooks}"
    );
    assert!(
        hooks["items"][0]["queued"].as_u64().unwrap() >= 4,
        "{hooks}"
    );
    assert!(down.elapsed() >= Duration::from_secs(8));

    // Receiver back (same port): every event arrives, in order.
    let _rx = receiver(&dir, port, "s3cret", &out);
    assert_eq!(wait_events("wh2", "/all", &lifecycle), lifecycle);
    assert_eq!(
        wait_events("wh2", "/publish-only", &["publish"]),
        ["publish"]
    );

    let all = received(&out);
    assert!(
        all.iter().all(|r| r["verified"] == true),
        "a signature did not verify"
    );
    // Ids increase along each route: nothing reordered, nothing delivered twice.
    for route in ["/all", "/publish-only"] {
        let ids: Vec<u64> = all
            .iter()
            .filter(|r| r["route"] == route)
            .map(|r| r["body"]["id"].as_u64().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{route}: {ids:?}");
    }
    assert!(all
        .iter()
        .filter(|r| r["route"] == "/publish-only")
        .all(|r| r["event"] == "publish"));
    // Bodies say who: the publisher's and reader's types, and the connections.
    let publish = all
        .iter()
        .find(|r| r["route"] == "/all" && r["event"] == "publish" && r["body"]["path"] == "wh2")
        .unwrap();
    assert_eq!(publish["body"]["source"]["type"], "rtmpConn");
    let read = all
        .iter()
        .find(|r| r["route"] == "/all" && r["event"] == "read" && r["body"]["path"] == "wh2")
        .unwrap();
    assert_eq!(read["body"]["reader"]["type"], "rtspSession");
    assert!(all
        .iter()
        .any(|r| r["event"] == "connect" && r["body"]["conn"]["type"] == "rtmpConn"));
    assert!(all
        .iter()
        .any(|r| r["event"] == "disconnect" && r["body"]["conn"]["type"] == "rtspConn"));

    let hooks = tidegate_tests::poll(
        LIMIT,
        || "the webhook queue did not empty".into(),
        || {
            let h = tidegate_tests::http::get_json(api, "/v3/webhooks/list");
            (h["items"][0]["queued"] == 0).then_some(h)
        },
    );
    assert_eq!(hooks["items"][0]["dropped"], 0);
    assert_eq!(hooks["items"][0]["givenUp"], 0);
    let metrics = tidegate_tests::http::fetch(server.metrics_addr(), "/metrics", &[]).text();
    assert!(metrics.contains(&format!(
        "tidegate_webhook_delivered_total{{url=\"http://127.0.0.1:{port}/all\"}}"
    )));
}
