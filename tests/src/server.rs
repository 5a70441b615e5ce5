//! A Tidegate server running in the test process on loopback with ephemeral ports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tidegate::config::Config;
use tidegate::Server;
use tidegate_core::PathManager;

pub struct TestServer {
    runtime: tokio::runtime::Runtime,
    server: Option<Server>,
    paths: PathManager,
    /// The configuration file, for servers started with [`TestServer::start_watched`]: the
    /// settings every test server gets, and the file.
    file: Option<(String, std::path::PathBuf)>,
}

impl TestServer {
    /// As [`TestServer::start`], from a configuration file (`file`) that the server watches:
    /// [`TestServer::rewrite_config`] changes it and the server reloads it.
    pub fn start_watched(extra: &str, file: &std::path::Path) -> TestServer {
        let base = Self::base(extra);
        std::fs::write(file, format!("{base}{extra}")).expect("config file");
        let mut s = Self::start_text(format!("{base}{extra}"), &file.display().to_string());
        {
            let _in = s.runtime.enter();
            s.server().watch_config(file.to_path_buf(), Vec::new());
        }
        s.file = Some((base, file.to_path_buf()));
        s
    }

    /// Starts a server from an existing configuration file, as it is (a restart), and
    /// watches it.
    pub fn start_from_file(file: &std::path::Path) -> TestServer {
        let text = std::fs::read_to_string(file).expect("config file");
        let mut s = Self::start_text(text, &file.display().to_string());
        {
            let _in = s.runtime.enter();
            s.server().watch_config(file.to_path_buf(), Vec::new());
        }
        s.file = Some((String::new(), file.to_path_buf()));
        s
    }

    /// Writes a new configuration file: the same listeners and key store, `extra` after them.
    /// Written whole at once (a rename), as editors and config tools do.
    pub fn rewrite_config(&self, extra: &str) {
        let (base, file) = self.file.as_ref().expect("started with start_watched");
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{base}{extra}")).expect("config file");
        std::fs::rename(&tmp, file).expect("config file");
    }

    /// Starts a server with every listener on 127.0.0.1:0, plus `extra` YAML (paths, ...).
    pub fn start(extra: &str) -> TestServer {
        let base = Self::base(extra);
        Self::start_text(format!("{base}{extra}"), "test.yml")
    }

    /// The listeners on loopback with ephemeral ports (unless `extra` sets them) and a key
    /// store of the server's own.
    fn base(extra: &str) -> String {
        crate::logs::install();
        // Every listener on loopback with an ephemeral port, unless `extra` sets that key.
        let base = [
            ("apiAddress", "127.0.0.1:0"),
            ("metricsAddress", "127.0.0.1:0"),
            ("pprofAddress", "127.0.0.1:0"),
            ("rtmpAddress", "127.0.0.1:0"),
            ("rtmpsAddress", "127.0.0.1:0"),
            ("rtspAddress", "127.0.0.1:0"),
            ("rtspsAddress", "127.0.0.1:0"),
            ("rtpAddress", "127.0.0.1:0"),
            ("rtcpAddress", "127.0.0.1:0"),
            ("srtpAddress", "127.0.0.1:0"),
            ("srtcpAddress", "127.0.0.1:0"),
            ("hlsAddress", "127.0.0.1:0"),
            ("webrtcAddress", "127.0.0.1:0"),
            ("webrtcLocalUDPAddress", "127.0.0.1:0"),
            ("srtAddress", "127.0.0.1:0"),
        ];
        let mut text = String::new();
        for (k, v) in base {
            if !extra.lines().any(|l| l.starts_with(&format!("{k}:"))) {
                text.push_str(&format!("{k}: {v}\n"));
            }
        }
        // Stream keys in a file of this server's own, never in the working directory.
        if !extra.lines().any(|l| l.starts_with("keyStore:")) {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let file = std::env::temp_dir()
                .join(format!("tidegate-e2e-{}-keys-{n}.db", std::process::id()));
            let _ = std::fs::remove_file(&file);
            text.push_str(&format!("keyStore: {}\n", file.display()));
        }
        text
    }

    fn start_text(text: String, name: &str) -> TestServer {
        crate::logs::install();
        let config = Config::load(Some((name, &text)), Vec::new())
            .unwrap_or_else(|e| panic!("test configuration: {e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(Server::start(config))
            .unwrap_or_else(|e| panic!("server start: {e}"));
        let paths = server.paths().clone();
        TestServer {
            runtime,
            server: Some(server),
            paths,
            file: None,
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Whether a plain RTMP listener is open (not with `rtmpEncryption: strict`).
    pub fn has_plain_rtmp(&self) -> bool {
        self.server().rtmp_addr().is_some()
    }

    pub fn rtmp_addr(&self) -> SocketAddr {
        self.server().rtmp_addr().expect("RTMP enabled")
    }

    pub fn rtmp_url(&self, path: &str) -> String {
        format!("rtmp://{}/{path}", self.rtmp_addr())
    }

    pub fn rtmps_url(&self, path: &str) -> String {
        let addr = self.server().rtmps_addr().expect("RTMPS enabled");
        format!("rtmps://{addr}/{path}")
    }

    /// `srt://127.0.0.1:PORT?streamid=ID` plus extra query items (ffmpeg's `latency` is in µs).
    pub fn srt_url(&self, streamid: &str, extra: &str) -> String {
        let addr = self.server().srt_addr().expect("SRT enabled");
        format!("srt://{addr}?streamid={streamid}{extra}")
    }

    pub fn srt_addr(&self) -> SocketAddr {
        self.server().srt_addr().expect("SRT enabled")
    }

    pub fn rtsp_url(&self, path: &str) -> String {
        let addr = self.server().rtsp_addr().expect("RTSP enabled");
        format!("rtsp://{addr}/{path}")
    }

    pub fn rtsps_url(&self, path: &str) -> String {
        let addr = self.server().rtsps_addr().expect("RTSPS enabled");
        format!("rtsps://{addr}/{path}")
    }

    pub fn hls_addr(&self) -> SocketAddr {
        self.server().hls_addr().expect("HLS enabled")
    }

    /// `http://127.0.0.1:PORT/<path>/<file>`.
    pub fn hls_url(&self, path: &str, file: &str) -> String {
        format!("http://{}/{path}/{file}", self.hls_addr())
    }

    /// The RTSP listener's (RTP, RTCP) UDP ports; None when UDP is off (`rtspTransports`).
    pub fn rtsp_udp_ports(&self) -> Option<(u16, u16)> {
        self.server().rtsp_udp_ports()
    }

    pub fn webrtc_addr(&self) -> SocketAddr {
        self.server().webrtc_addr().expect("WebRTC enabled")
    }

    pub fn webrtc_udp_addr(&self) -> SocketAddr {
        self.server().webrtc_udp_addr().expect("WebRTC UDP enabled")
    }

    pub fn webrtc_tcp_addr(&self) -> SocketAddr {
        self.server().webrtc_tcp_addr().expect("ICE-TCP enabled")
    }

    /// `http://127.0.0.1:PORT/<path>/<tail>` on the WebRTC (WHIP/WHEP) listener.
    pub fn webrtc_url(&self, path: &str, tail: &str) -> String {
        format!("http://{}/{path}/{tail}", self.webrtc_addr())
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.server().api_addr().expect("API enabled")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server().metrics_addr().expect("metrics enabled")
    }

    pub fn pprof_addr(&self) -> SocketAddr {
        self.server().pprof_addr().expect("pprof enabled")
    }

    pub fn paths(&self) -> &PathManager {
        &self.paths
    }

    pub fn playback_addr(&self) -> SocketAddr {
        self.server().playback_addr().expect("playback enabled")
    }

    pub fn recorder(&self) -> &tidegate_record::Recorder {
        self.server().recorder()
    }

    /// Starts watching the recorder's segment events (before the publisher starts, so that
    /// none is missed).
    pub fn segment_watch(&self) -> SegmentWatch {
        SegmentWatch {
            events: self.recorder().events(),
            handle: self.runtime.handle().clone(),
        }
    }

    /// Waits (bounded) until `path` has a ready publisher. Event driven, no polling sleeps.
    pub fn wait_ready(&self, path: &str, limit: Duration) {
        self.wait_for(path, limit, true);
    }

    /// [`TestServer::wait_ready`] for a path that `publisher` feeds: on failure the panic
    /// carries the end of the publisher's log and the server's log lines that name `also`
    /// (e.g. the path, a protocol's tag), so a failure on a loaded machine says why.
    pub fn wait_ready_of(
        &self,
        path: &str,
        limit: Duration,
        publisher: &crate::peers::PeerProcess,
        also: &[&str],
    ) {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait_ready(path, limit)
        }));
        if ok.is_err() {
            let log = publisher.stderr();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let mut server: Vec<String> = Vec::new();
            for part in std::iter::once(path).chain(also.iter().copied()) {
                server.extend(crate::logs::lines_with(&[part]));
            }
            let server = &server[server.len().saturating_sub(60)..];
            panic!(
                "path '{path}' did not become ready within {limit:?}\n\
                 publisher's log (end):\n{}\nserver's log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                server.join("\n")
            );
        }
    }

    /// Waits (bounded) until `path` has no ready publisher.
    pub fn wait_not_ready(&self, path: &str, limit: Duration) {
        self.wait_for(path, limit, false);
    }

    fn wait_for(&self, path: &str, limit: Duration, ready: bool) {
        let what = if ready { "ready" } else { "not ready" };
        self.wait_until(path, limit, what, |p| p.is_some_and(|p| p.ready) == ready);
    }

    /// Reads `path` in the test itself until `n` more frames of its key track (video) have
    /// gone through the server: "the publisher has been sending for a while", as an event.
    pub fn wait_frames(&self, path: &str, n: usize, limit: Duration) {
        let session = tidegate_core::SessionInfo {
            id: self.paths.new_session_id(),
            kind: "testReader",
            remote: None,
            query: String::new(),
        };
        let mut reader = self
            .paths
            .read(path, session)
            .unwrap_or_else(|e| panic!("test reader on '{path}': {e}"));
        let key = reader.stream().key_track();
        let counted = self.runtime.block_on(async {
            tokio::time::timeout(limit, async {
                let mut seen = 0;
                while seen < n {
                    match reader.recv().await {
                        Ok(f) if Some(f.track) == key => seen += 1,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                seen
            })
            .await
        });
        match counted {
            Ok(seen) if seen >= n => {}
            Ok(seen) => panic!("'{path}' ended after {seen} of {n} frames"),
            Err(_) => panic!("'{path}' did not carry {n} frames within {limit:?}"),
        }
    }

    /// Reads `path` in the test itself (asking an on-demand source to start) and counts the
    /// frames of its key track until none has come for `quiet` (the source's media ended),
    /// at most `limit` in all.
    pub fn count_frames_until_quiet(&self, path: &str, quiet: Duration, limit: Duration) -> usize {
        let session =
            tidegate_core::SessionInfo::new(self.paths.new_session_id(), "testReader", None);
        let paths = self.paths.clone();
        let path = path.to_string();
        self.runtime.block_on(async move {
            let mut reader = tokio::time::timeout(limit, paths.read_or_demand(&path, session))
                .await
                .unwrap_or_else(|_| panic!("'{path}' did not start within {limit:?}"))
                .unwrap_or_else(|e| panic!("test reader on '{path}': {e}"));
            let key = reader.stream().key_track();
            let deadline = tokio::time::Instant::now() + limit;
            let mut seen = 0;
            loop {
                let until = (tokio::time::Instant::now() + quiet).min(deadline);
                match tokio::time::timeout_at(until, reader.recv()).await {
                    Ok(Ok(f)) if Some(f.track) == key => seen += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => return seen,
                }
            }
        })
    }

    /// Polls `/v3/paths/get/{path}` until its `sourceRelay.lastError` contains `what`, at most
    /// `limit` (the source's retries are not path events). Returns the last error seen.
    pub fn wait_source_error(&self, path: &str, what: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let v = crate::http::get_json(self.api_addr(), &format!("/v3/paths/get/{path}"));
            let err = v["sourceRelay"]["lastError"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if err.contains(what) || std::time::Instant::now() > deadline {
                return err;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first entry of `/v3/{list}/list` (`rtspsessions`, `srtconns`, …) whose `state` is
    /// `state`. Panics, showing the list, when there is none.
    pub fn api_entry(&self, list: &str, state: &str) -> serde_json::Value {
        let v = crate::http::get_json(self.api_addr(), &format!("/v3/{list}/list"));
        v["items"]
            .as_array()
            .and_then(|items| items.iter().find(|c| c["state"] == state))
            .cloned()
            .unwrap_or_else(|| panic!("no {state} entry in /v3/{list}/list: {v}"))
    }

    /// Polls `/v3/{list}/list` (bounded) until an entry satisfies `cond`, and returns it.
    pub fn wait_api_entry(
        &self,
        list: &str,
        limit: Duration,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = crate::http::get_json(self.api_addr(), &format!("/v3/{list}/list"));
            if let Some(e) = v["items"]
                .as_array()
                .and_then(|i| i.iter().find(|e| cond(e)))
            {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no entry of /v3/{list}/list {what} within {limit:?}: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) until a publisher or source feeds `path` (`online`), or until none
    /// does.
    pub fn wait_online(&self, path: &str, online: bool, limit: Duration) {
        let what = if online { "online" } else { "offline" };
        self.wait_until(path, limit, what, |p| p.is_some_and(|p| p.online) == online);
    }

    /// Waits (bounded) until `path` has at least `n` readers.
    /// RTSP sessions reading from this server now (an edge's pulls, on an origin).
    pub fn rtsp_reads(&self) -> usize {
        let v = crate::http::get_json(self.api_addr(), "/v3/rtspsessions/list");
        v["items"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["state"] == "read").count())
    }

    pub fn wait_readers(&self, path: &str, n: usize, limit: Duration) {
        self.wait_until(path, limit, &format!("read by {n}"), |p| {
            p.is_some_and(|p| p.readers.len() >= n)
        });
    }

    /// Waits for a path condition, re-checking on every path event.
    fn wait_until(
        &self,
        path: &str,
        limit: Duration,
        what: &str,
        cond: impl Fn(Option<&tidegate_core::PathInfo>) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        let mut events = self.paths.events();
        loop {
            if cond(self.paths.get(path).as_ref()) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("path '{path}' did not become {what} within {limit:?}");
            }
            // Some changes have no event (the offline stream of `alwaysAvailable` comes and
            // goes silently): look again at least every 100 ms.
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(left.min(Duration::from_millis(100)), events.recv()).await
            });
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
            });
        }
    }
}

/// The recorder's segment events since [`TestServer::segment_watch`].
pub struct SegmentWatch {
    events: tokio::sync::broadcast::Receiver<tidegate_record::SegmentEvent>,
    handle: tokio::runtime::Handle,
}

impl SegmentWatch {
    /// Waits (bounded) until `n` more segments of `path` are complete; returns their files
    /// and durations, in order. Event driven.
    pub fn wait_complete(
        &mut self,
        path: &str,
        n: usize,
        limit: Duration,
    ) -> Vec<(std::path::PathBuf, f64)> {
        let events = &mut self.events;
        self.handle.block_on(async {
            let mut done = Vec::new();
            let _ = tokio::time::timeout(limit, async {
                while done.len() < n {
                    match events.recv().await {
                        Ok(e)
                            if e.path == path
                                && e.kind == tidegate_record::SegmentEventKind::Complete =>
                        {
                            done.push((e.file, e.duration))
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
            assert!(
                done.len() >= n,
                "{} of {n} segments of '{path}' complete within {limit:?}",
                done.len()
            );
            done
        })
    }
}
