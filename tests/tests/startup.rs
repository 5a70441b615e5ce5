//! What a new user meets first, with the server binary as a process of its own: where the
//! configuration is looked for (and that the first log line names it), environment overrides
//! (`TIDEGATE_<KEY>`, MediaMTX's `MTX_<KEY>`, a stray variable only warned about), and log
//! colour (a terminal only, never a file or pipe, never with `NO_COLOR`).

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_tests::http::request;
use tidegate_tests::peers::{free_port, PeerProcess};
use tidegate_tests::{peer, run_bounded, scratch, server_binary};

/// A configuration with only RTMP on, at `addr`.
fn rtmp_only(addr: &str) -> String {
    format!(
        "logLevel: info\napi: no\nmetrics: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n\
         rtmpAddress: {addr}\n"
    )
}

/// A configuration the server cannot start with (its RTMP port is taken), so that it logs its
/// first lines and exits by itself. Returns the text and the listener holding the port.
fn busy_config() -> (String, TcpListener) {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let text = rtmp_only(&busy.local_addr().unwrap().to_string());
    (text, busy)
}

const ESC: char = '\u{1b}';

/// A log written to a pipe (or a file) has no colour; on a terminal (`script` gives the server
/// a pty) it is coloured; `NO_COLOR=1` turns that off.
#[test]
fn log_colour_only_on_a_terminal() {
    let dir = scratch("startup-colour");
    let (text, _busy) = busy_config();
    let conf = dir.join("tidegate.yml");
    std::fs::write(&conf, text).unwrap();
    let bin = server_binary();

    let piped = run_bounded(
        Command::new(&bin).arg(&conf).env_remove("NO_COLOR"),
        Duration::from_secs(30),
    );
    let log = String::from_utf8_lossy(&piped.stderr).to_string();
    assert!(!piped.status.success(), "the port was busy: {log}");
    assert!(log.contains("configuration:"), "{log}");
    assert!(
        log.contains("address") || log.contains("Address"),
        "the bind error is logged: {log}"
    );
    assert!(!log.contains(ESC), "escape codes in a piped log: {log:?}");

    // The same server on a terminal: `script` runs it on a pty and copies what it printed.
    let on_tty = |no_color: Option<&str>| -> String {
        let mut cmd = Command::new(peer("script"));
        cmd.args(["-q", "-e", "-c"])
            .arg(format!("'{}' '{}'", bin.display(), conf.display()))
            .arg("/dev/null")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = run_bounded(&mut cmd, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("configuration:"), "{text}");
        text
    };
    let coloured = on_tty(None);
    assert!(
        coloured.contains(&format!("{ESC}[")),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_tty(Some("1"));
    assert!(!plain.contains(ESC), "colour despite NO_COLOR: {plain:?}");
}

/// `TIDEGATE_FOO=1` is not a setting: one warning naming it, and the server runs.
/// `MTX_RTMPADDRESS` (MediaMTX's name) moves the RTMP listener: ffmpeg publishes there.
#[test]
fn stray_variable_warns_and_mtx_override_applies() {
    let dir = scratch("startup-env");
    let conf = dir.join("tidegate.yml");
    // The file puts RTMP on a port nobody listens on; the environment moves it.
    let api = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &conf,
        rtmp_only(&format!("127.0.0.1:{}", free_port()))
            .replace("api: no\n", &format!("apiAddress: {api}\n")),
    )
    .unwrap();
    let port = free_port();
    let server = PeerProcess::spawn(
        "tidegate",
        Command::new(server_binary())
            .arg(&conf)
            .env("TIDEGATE_FOO", "1")
            .env("TIDEGATE_RTMPADRESS", "127.0.0.1:1")
            .env("MTX_RTMPADDRESS", format!("127.0.0.1:{port}")),
        &dir,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.stderr().contains("[RTMP] listener opened") {
        assert!(
            Instant::now() < deadline,
            "no RTMP listener after 20 s:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.stderr();
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "the RTMP listener is not where MTX_RTMPADDRESS put it:\n{log}"
    );
    assert_eq!(
        log.matches("TIDEGATE_FOO is not a setting").count(),
        1,
        "one warning for the stray variable:\n{log}"
    );
    assert!(
        log.contains("TIDEGATE_RTMPADRESS is not a setting (did you mean TIDEGATE_RTMPADDRESS?)"),
        "a typo gets the nearest name:\n{log}"
    );
    // ffmpeg publishes H.264 + AAC there, and ffmpeg reads 2 s of it back.
    let url = format!("rtmp://127.0.0.1:{port}/live/env");
    let mut publish = tidegate_tests::peers::ffmpeg_publish(&url, 8, "flv", &dir);
    let api: std::net::SocketAddr = api.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !request(api, "GET", "/v3/paths/get/live/env")
        .1
        .contains("\"ready\":true")
    {
        assert!(
            Instant::now() < deadline,
            "the publish is not ready after 20 s:\n{}\n{}",
            publish.stderr(),
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = dir.join("read.mkv");
    let mut read = tidegate_tests::peers::ffmpeg_read(&url, 2, &out, &dir);
    assert!(
        read.wait(Duration::from_secs(30)).success(),
        "{}",
        read.stderr()
    );
    let probe = tidegate_tests::ffprobe(out.to_str().unwrap(), &[], Duration::from_secs(30));
    assert_eq!(probe.codec("video").as_deref(), Some("h264"), "{probe:?}");
    assert_eq!(probe.codec("audio").as_deref(), Some("aac"), "{probe:?}");
    assert_eq!(probe.dimensions(), Some((640, 360)));
    assert!(probe.packets_of("video").len() >= 30, "{probe:?}");
    assert!(publish.wait(Duration::from_secs(30)).success());
}

/// With no file named, the server looks for `./tidegate.yml`, `/etc/tidegate/tidegate.yml`,
/// then MediaMTX's `mediamtx.yml` in MediaMTX's places, and names the file it used in its first
/// log line. /etc is an overlay in a private mount namespace (writes go to a tmpfs), so the
/// machine's own /etc is never touched.
#[test]
fn config_is_looked_for_where_a_packaged_server_keeps_it() {
    let dir = scratch("startup-lookup");
    let bin = server_binary();
    let port = free_port();
    std::fs::write(dir.join("etc.yml"), rtmp_only(&format!("127.0.0.1:{port}"))).unwrap();
    std::fs::write(
        dir.join("mediamtx.yml"),
        rtmp_only(&format!("127.0.0.1:{port}")),
    )
    .unwrap();
    std::fs::write(
        dir.join("local.yml"),
        rtmp_only(&format!("127.0.0.1:{port}")),
    )
    .unwrap();
    // Runs the server from `cwd` until its RTMP listener is open, then prints its log.
    let script = format!(
        "set -e\n\
         d='{dir}'\n\
         mkdir -p $d/ovl && mount -t tmpfs tmpfs $d/ovl && mkdir $d/ovl/up $d/ovl/work\n\
         mount -t overlay overlay -o lowerdir=/etc,upperdir=$d/ovl/up,workdir=$d/ovl/work /etc\n\
         rm -rf /etc/tidegate /etc/mediamtx && mkdir /etc/tidegate && cp $d/etc.yml /etc/tidegate/tidegate.yml\n\
         run() {{ (cd \"$1\" && exec '{bin}' > $d/$2.log 2>&1) & pid=$!\n\
           i=0; until grep -q 'listener opened' $d/$2.log; do\n\
             i=$((i+1)); [ $i -le 300 ] || {{ cat $d/$2.log >&2; exit 3; }}; sleep 0.05; done\n\
           kill $pid; wait $pid || true; }}\n\
         mkdir $d/empty $d/local $d/mtx\n\
         cp $d/local.yml $d/local/tidegate.yml; cp $d/mediamtx.yml $d/local/mediamtx.yml\n\
         cp $d/mediamtx.yml $d/mtx/mediamtx.yml\n\
         run $d/empty etc\n\
         run $d/local local\n\
         rm -rf /etc/tidegate\n\
         run $d/mtx mtx\n",
        dir = dir.display(),
        bin = bin.display(),
    );
    let out = run_bounded(
        Command::new(peer("unshare")).args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            &script,
        ]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first_line = |name: &str| {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
        log.lines().next().unwrap_or_default().to_string()
    };
    // No file in the working directory: /etc/tidegate/tidegate.yml.
    let etc = first_line("etc");
    assert!(
        etc.contains("configuration: /etc/tidegate/tidegate.yml"),
        "{etc}"
    );
    // ./tidegate.yml wins over /etc and over ./mediamtx.yml.
    let local = first_line("local");
    assert!(local.ends_with("configuration: tidegate.yml"), "{local}");
    // No tidegate.yml anywhere: MediaMTX's file is used.
    let mtx = first_line("mtx");
    assert!(mtx.ends_with("configuration: mediamtx.yml"), "{mtx}");
}
