//! Running third-party peers as child processes that are always killed when dropped.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::peer;

/// A peer process; killed on drop so a failing test leaves nothing behind.
pub struct PeerProcess {
    child: Option<Child>,
    name: String,
    stderr_path: std::path::PathBuf,
    stdout_path: std::path::PathBuf,
}

impl PeerProcess {
    /// Starts `cmd` in a process group of its own, so that whatever it starts in turn (a
    /// `timeout` wrapper's child, a shell's jobs) is killed with it.
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> PeerProcess {
        use std::os::unix::process::CommandExt;
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("peer log file");
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stdout = std::fs::File::create(&stdout_path).expect("peer output file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        PeerProcess {
            child: Some(child),
            name: name.to_string(),
            stderr_path,
            stdout_path,
        }
    }

    /// What the peer printed on stdout (a report, for the peers that write one).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the process has exited already (it is not waited for).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for the process to exit, at most `limit`; panics with its log otherwise.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("not waited yet");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                kill_group(pid);
                panic!(
                    "{} did not exit within {limit:?}; its log:\n{}",
                    self.name,
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL to the peer and its process group: it vanishes without closing anything, and
    /// so does anything it started.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGKILL to the process group led by `pid`.
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// ffmpeg arguments for the synthetic source: testsrc2 at `size`, 30 fps, a 1 kHz sine,
/// H.264 baseline (1 s GOP) + AAC-LC 48 kHz stereo, in real time for `seconds`.
pub fn synthetic_source(seconds: u32, size: &str) -> Vec<String> {
    let args = format!(
        "-hide_banner -loglevel error -nostdin -re \
         -f lavfi -i testsrc2=size={size}:rate=30 -f lavfi -i sine=frequency=1000:sample_rate=48000 \
         -t {seconds} -map 0:v -map 1:a \
         -c:v libx264 -preset ultrafast -tune zerolatency -profile:v baseline -pix_fmt yuv420p \
         -g 30 -keyint_min 30 -sc_threshold 0 -b:v 1000k -maxrate 1000k -bufsize 500k \
         -c:a aac -b:a 128k -ac 2 -ar 48000"
    );
    args.split_whitespace().map(str::to_string).collect()
}

/// ffmpeg publishing the synthetic source to `url` in `format` (flv, mpegts, rtsp, ...).
pub fn ffmpeg_publish(url: &str, seconds: u32, format: &str, log_dir: &Path) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(synthetic_source(seconds, "640x360"))
        .args(["-f", format, url]);
    PeerProcess::spawn("ffmpeg-publish", &mut cmd, log_dir)
}

/// An ffmpeg that decodes the video of `url` for `seconds`, every frame through `showinfo`
/// (its log named `name` in `log_dir`).
pub fn ffmpeg_decoding(url: &str, seconds: u32, log_dir: &Path, name: &str) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "info"])
        .args(["-t", &seconds.to_string(), "-i", url])
        .args(["-map", "0:v", "-vf", "showinfo", "-f", "null", "-"]);
    PeerProcess::spawn(name, &mut cmd, log_dir)
}

/// The video frames an [`ffmpeg_decoding`] decoded, once it ended well (60 s at most); fails
/// with its log otherwise.
pub fn decoded_frames(reader: &mut PeerProcess) -> usize {
    assert!(
        reader.wait(Duration::from_secs(60)).success(),
        "{}",
        reader.stderr()
    );
    reader
        .stderr()
        .lines()
        .filter(|l| l.contains("Parsed_showinfo") && l.contains(" pts_time:"))
        .count()
}

/// ffmpeg reading `url` for `seconds` into `out` (stream copy), as a process to wait on.
pub fn ffmpeg_read(url: &str, seconds: u32, out: &Path, log_dir: &Path) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-i", url, "-t", &seconds.to_string(), "-c", "copy"])
        .arg(out);
    PeerProcess::spawn("ffmpeg-read", &mut cmd, log_dir)
}

/// hls.js in headless Chromium playing Tidegate's player page at `url` for `seconds`, as a
/// process to wait on; it prints one JSON report (`tests/js/hls_player.mjs`).
pub fn hlsjs_player(url: &str, seconds: u32, log_dir: &Path) -> PeerProcess {
    let mut cmd = Command::new(peer("node"));
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/js/hls_player.mjs"))
        .arg(url)
        .arg(seconds.to_string())
        .arg(crate::peers_dir().join("node/node_modules"));
    PeerProcess::spawn("hlsjs", &mut cmd, log_dir)
}

/// The report of an [`hlsjs_player`] that ran to its end, checked: the process succeeded and
/// hls.js had no fatal error.
pub fn hlsjs_report(player: &mut PeerProcess, limit: Duration) -> serde_json::Value {
    let status = player.wait(limit);
    let out = player.stdout();
    assert!(status.success(), "{out}\n{}", player.stderr());
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("hls.js JSON report");
    let fatal: Vec<&serde_json::Value> = r["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e.as_str().unwrap_or("").contains("fatal"))
                .collect()
        })
        .unwrap_or_default();
    assert!(fatal.is_empty(), "hls.js: {fatal:?}");
    r
}

/// How many frames hls.js had decoded by `t` seconds into its run (its report's `trace`).
pub fn hlsjs_frames_at(report: &serde_json::Value, t: f64) -> u64 {
    report["trace"]
        .as_array()
        .map(|trace| {
            trace
                .iter()
                .filter(|s| s[0].as_f64().unwrap_or(f64::MAX) <= t)
                .filter_map(|s| s[1].as_u64())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// An H.264 MP4 file of ffmpeg's testsrc2 (`size`, 25 fps, 1 s GOP) lasting `seconds`.
pub fn testsrc_mp4(file: &Path, seconds: u32, size: &str) {
    let made = crate::run_bounded(
        Command::new(peer("ffmpeg"))
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate=25"),
            ])
            .args(["-t", &seconds.to_string()])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25"])
            .args(["-pix_fmt", "yuv420p"])
            .arg(file),
        Duration::from_secs(60),
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A port on 127.0.0.1 free for TCP and for UDP alike, for a peer or a server that needs its
/// port in a config file. Some listeners take both (WebRTC's local address serves ICE over UDP
/// and TCP), and ephemeral UDP sockets of other tests share the range: a port free for TCP
/// alone once met a UDP socket there ("Address already in use").
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = tcp.local_addr().map(|a| a.port()) else {
            continue;
        };
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port on 127.0.0.1 free for both TCP and UDP in 100 tries")
}

/// nginx in the foreground, one process, with `body` (modules to load, then the `events`
/// block and the servers) after the settings every test's nginx shares. Its files (`name`.conf,
/// .pid, -error.log, -stderr.log) live in `dir`.
pub fn nginx(name: &str, body: &str, dir: &Path) -> PeerProcess {
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/{name}.pid;\n\
         error_log {d}/{name}-error.log warn;\n{body}",
        d = dir.display()
    );
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).expect("nginx configuration");
    let mut cmd = Command::new(peer("nginx"));
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join(format!("{name}-stderr.log")));
    PeerProcess::spawn(name, &mut cmd, dir)
}

/// nginx with the RTMP module listening on 127.0.0.1:`port` with a `live` application.
/// Returns once it accepts: a push or a publish to it started earlier would count a
/// reconnect (or fail) on a loaded machine, where nginx takes a while to start.
pub fn nginx_rtmp(port: u16, dir: &Path) -> PeerProcess {
    let p = nginx(
        "nginx",
        &format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             events {{ worker_connections 4096; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record off; }} }} }}\n"
        ),
        dir,
    );
    wait_listening(port, Duration::from_secs(15));
    p
}

/// nginx serving the files under `root` over plain HTTP on 127.0.0.1:`port` (HLS types, no
/// caching). Returns once it accepts.
pub fn nginx_static(port: u16, root: &Path, dir: &Path) -> PeerProcess {
    let p = nginx(
        "nginx-static",
        &format!(
            "events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; video/mp4 mp4 m4s; }}\n\
               server {{ listen 127.0.0.1:{port}; root {r}; add_header Cache-Control no-cache; }} }}\n",
            d = dir.display(),
            r = root.display(),
        ),
        dir,
    );
    wait_listening(port, Duration::from_secs(15));
    p
}

/// Node-Media-Server (npm) serving plain RTMP on `rtmp_port` and RTMPS on `rtmps_port` with
/// `key`/`cert`, run in `dir` (where it keeps its store). Returns once both ports accept.
pub fn node_media_server(
    rtmp_port: u16,
    rtmps_port: u16,
    key: &Path,
    cert: &Path,
    dir: &Path,
) -> PeerProcess {
    let modules = crate::peers_dir().join("node/node_modules");
    assert!(
        modules.join("node-media-server").is_dir(),
        "test peer 'node-media-server' is missing: run `cargo xtask test`, which installs every peer"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/js/nms_rtmps.mjs");
    let mut cmd = Command::new(peer("node"));
    cmd.current_dir(dir)
        .arg(script)
        .arg(rtmp_port.to_string())
        .arg(rtmps_port.to_string())
        .arg(key)
        .arg(cert)
        .arg(&modules);
    let nms = PeerProcess::spawn("node-media-server", &mut cmd, dir);
    for port in [rtmp_port, rtmps_port] {
        wait_listening(port, Duration::from_secs(15));
    }
    nms
}

/// Waits until 127.0.0.1:`port` accepts a TCP connection, at most `limit`. Panics after.
pub fn wait_listening(port: u16, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An aiortc WHEP viewer (`tests/py/webrtc_peer.py`) of `url` for `seconds`, its command
/// passed through `wrap` (e.g. into a network namespace): what it decoded (its report's first
/// viewer). Panics with its output when it gives no report.
pub fn aiortc_whep_viewer(
    wrap: impl FnOnce(Command) -> Command,
    url: &str,
    seconds: u32,
) -> serde_json::Value {
    let mut whep = Command::new(peer("python"));
    whep.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
        .args(["whep", url, "--seconds", &seconds.to_string()]);
    let out = crate::run_bounded(&mut wrap(whep), Duration::from_secs(60));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{url} WHEP: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["viewers"][0].clone()
}
