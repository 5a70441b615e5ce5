//! Upgrades without drops (docs/deploy.md#upgrades-without-drops): on `SIGUSR2` the binary as
//! it now is on disk is started with every listening socket of this one
//! ([`tidegate_core::handover`]), passed as systemd passes sockets (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`, from descriptor 3). It serves on them at once, says so on a socket of its
//! own (named [`READY`]), and this process then stops accepting and reading the shared UDP
//! sockets, keeps its open sessions until they end (or `drainPeriod` passes), and exits. If the
//! new process fails to start, it is killed and this one goes on as before.
//!
//! The same `LISTEN_FDS` protocol lets systemd socket activation hand Tidegate its sockets:
//! a `.socket` unit's `FileDescriptorName=` is the listener's name (`RTMP`, `RTSP`, `HLS`,
//! `API`, `SRT`, …, as [`tidegate_core::handover::sockets`] lists them).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use command_fds::{CommandFdExt, FdMapping};
use tidegate_core::handover::{self, UdpStage};
use tidegate_core::{Fallback, PathManager, SessionInfo};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The name of the descriptor a new process says it serves on.
pub const READY: &str = "tidegate-upgrade-ready";
/// How long a new process has to open its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// At start, before any other thread exists: the sockets a previous process (or systemd)
/// handed over are kept for the listeners of the same names; returns where to say that this
/// process serves, if a previous process waits for it.
pub fn inherit_from_env() -> Option<UnixDatagram> {
    take_predecessor();
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    // Reads and removes LISTEN_FDS/LISTEN_PID (while no other thread can read the environment).
    let mut fds = listenfd::ListenFd::from_env();
    let (mut sockets, mut ready) = (Vec::new(), None);
    for i in 0..fds.len() {
        let name = names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("fd{}", i + 3));
        if name == READY {
            ready = fds.take_unix_datagram(i).ok().flatten();
            continue;
        }
        let fd: Option<OwnedFd> = match fds.take_tcp_listener(i) {
            Ok(Some(l)) => Some(l.into()),
            _ => fds.take_udp_socket(i).ok().flatten().map(Into::into),
        };
        match fd {
            Some(fd) => sockets.push((name, fd)),
            None => eprintln!("tidegate: inherited descriptor {name} is not a TCP or UDP socket"),
        }
    }
    handover::inherit(sockets);
    ready
}

/// Says to the process that started this one that it serves now (after start-up succeeded),
/// and to systemd that this is the service's main process.
pub fn announce(ready: Option<UnixDatagram>) {
    if let Some(r) = ready {
        if let Err(e) = r.send(b"ready") {
            tracing::warn!("[upgrade] cannot tell the previous process that this one serves: {e}");
        }
    }
    handover::drop_unclaimed();
    notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
}

/// A message to systemd's notification socket, when there is one (`Type=notify` units).
fn notify_systemd(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(s) = UnixDatagram::unbound() else {
        return;
    };
    // Abstract sockets (a leading '@') are not reachable through std's path API: skipped.
    if !path.to_string_lossy().starts_with('@') {
        let _ = s.send_to(message.as_bytes(), &path);
    }
}

/// Starts `exe` with `args` and every listening socket; resolves with the new process's id
/// once it serves, or with why not (the new process is then killed, and this one's UDP
/// listeners go back to reading their sockets).
pub async fn start(exe: &Path, args: &[OsString], bridge: &Predecessor) -> Result<u32, String> {
    handover::set_udp_stage(UdpStage::Twinning);
    let r = spawn(exe, args, &bridge.dir).await;
    handover::set_udp_stage(match r {
        Ok(_) => UdpStage::Released,
        Err(_) => UdpStage::Serving,
    });
    r
}

async fn spawn(exe: &Path, args: &[OsString], bridge: &Path) -> Result<u32, String> {
    let (ours, theirs) = UnixDatagram::pair().map_err(|e| format!("socketpair: {e}"))?;
    let mut names = Vec::new();
    let mut mappings = Vec::new();
    for (name, fd) in handover::sockets()
        .into_iter()
        .chain([(READY.to_owned(), OwnedFd::from(theirs))])
    {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: 3 + names.len() as i32,
        });
        names.push(name);
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(BRIDGE_ENV, bridge)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD");
    cmd.fd_mappings(mappings)
        .map_err(|e| format!("descriptors: {e}"))?;
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(
        "[upgrade] started {} (process {pid}) with {} sockets; waiting for it to serve",
        exe.display(),
        names.len() - 1
    );
    ours.set_nonblocking(true)
        .map_err(|e| format!("socketpair: {e}"))?;
    let ours = tokio::net::UnixDatagram::from_std(ours).map_err(|e| format!("socketpair: {e}"))?;
    let mut buf = [0u8; 16];
    let failed = tokio::select! {
        r = ours.recv(&mut buf) => match r {
            Ok(n) if &buf[..n] == b"ready" => None,
            Ok(_) => Some("the new process sent something else than ready".to_owned()),
            Err(e) => Some(format!("the new process closed its ready socket: {e}")),
        },
        r = child.wait() => Some(match r {
            Ok(status) => format!("the new process exited ({status}) before serving"),
            Err(e) => format!("the new process: {e}"),
        }),
        _ = tokio::time::sleep(START_TIMEOUT) => {
            Some(format!("the new process did not serve within {START_TIMEOUT:?}"))
        }
    };
    match failed {
        None => Ok(pid),
        Some(why) => {
            let _ = child.kill().await;
            Err(why)
        }
    }
}

/// The environment variable naming the old process's bridge directory (not a setting).
const BRIDGE_ENV: &str = "TIDEGATE_UPGRADE_BRIDGE";
/// The longest request line a bridge reads.
const LINE_LIMIT: usize = 4096;

static PREDECESSOR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Takes the bridge directory the process this one replaces serves its paths on (called at
/// start with [`inherit_from_env`], while this is the only thread).
fn take_predecessor() {
    if let Some(dir) = std::env::var_os(BRIDGE_ENV) {
        std::env::remove_var(BRIDGE_ENV);
        let _ = PREDECESSOR.set(PathBuf::from(dir));
    }
}

/// The bridge to the process this one replaced, when it was started by an upgrade.
pub fn predecessor(paths: &PathManager) -> Option<Arc<Bridge>> {
    let dir = PREDECESSOR.get()?.clone();
    Some(Arc::new(Bridge {
        dir,
        paths: paths.clone(),
        running: Mutex::new(HashSet::new()),
        gone: AtomicBool::new(false),
    }))
}

/// The old process's side of an upgrade: its paths, and its HLS muxers, served to the new
/// process on Unix sockets in a directory of its own (mode 0700), until it exits. A reader the
/// new process gets for a path whose publisher is still here is fed from here over MPEG-TS
/// (the SRT engine's format), and HLS requests for such a path are answered from here, so that
/// a player's playlist goes on where it was.
pub struct Predecessor {
    dir: PathBuf,
    stop: CancellationToken,
}

impl Drop for Predecessor {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Predecessor {
    pub fn serve(
        paths: PathManager,
        hls: Option<axum::Router>,
        tasks: &TaskTracker,
    ) -> std::io::Result<Predecessor> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("tidegate-upgrade-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let me = Predecessor {
            dir: dir.clone(),
            stop: CancellationToken::new(),
        };
        let ts = tokio::net::UnixListener::bind(dir.join("ts.sock"))?;
        tasks.spawn(serve_ts(ts, paths, me.stop.clone(), tasks.clone()));
        if let Some(router) = hls {
            let l = tokio::net::UnixListener::bind(dir.join("hls.sock"))?;
            tasks.spawn(serve_hls(l, router, me.stop.clone(), tasks.clone()));
        }
        Ok(me)
    }
}

/// Reads one `\n`-ended line of at most [`LINE_LIMIT`] bytes, byte by byte (what follows is
/// not consumed).
async fn read_line<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    loop {
        let b = r.read_u8().await?;
        if b == b'\n' {
            return String::from_utf8(line)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"));
        }
        if line.len() >= LINE_LIMIT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
        line.push(b);
    }
}

/// The old process: each connection names a path (`path\n`) and gets `OK\n` and the path's
/// MPEG-TS, or `NO why\n`.
async fn serve_ts(
    listener: tokio::net::UnixListener,
    paths: PathManager,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    use tokio::io::AsyncWriteExt;
    loop {
        let mut conn = tokio::select! {
            r = listener.accept() => match r {
                Ok((c, _)) => c,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let (paths, stop) = (paths.clone(), stop.clone());
        tasks.spawn(async move {
            let Ok(Ok(path)) =
                tokio::time::timeout(Duration::from_secs(5), read_line(&mut conn)).await
            else {
                return;
            };
            let session = SessionInfo {
                id: paths.new_session_id(),
                kind: "upgradeBridge",
                remote: None,
                query: String::new(),
            };
            match paths.read(&path, session) {
                Ok(reader) => {
                    if conn.write_all(b"OK\n").await.is_err() {
                        return;
                    }
                    tracing::info!(path, "[upgrade] the new process reads this path from here");
                    let r = tidegate_srt::write_ts(conn, reader, &stop).await;
                    tracing::info!(path, "[upgrade] bridge closed: {r:?}");
                }
                Err(e) => {
                    let _ = conn.write_all(format!("NO {e}\n").as_bytes()).await;
                }
            }
        });
    }
}

/// The header that carries the viewer's address to the old process's HLS.
const CLIENT_HEADER: &str = "x-tidegate-upgrade-client";

/// The old process: its HLS router, for requests the new process forwards.
async fn serve_hls(
    listener: tokio::net::UnixListener,
    router: axum::Router,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let conn = tokio::select! {
            r = listener.accept() => match r {
                Ok((c, _)) => c,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let router = router.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let client = req
                        .headers()
                        .get(CLIENT_HEADER)
                        .and_then(|v| v.to_str().ok()?.parse::<SocketAddr>().ok())
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(client));
                    let mut r = router.clone();
                    async move {
                        use tower_service::Service;
                        r.call(req.map(axum::body::Body::new)).await
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The new process's side: readers of paths still published on the old process are fed from
/// there ([`Fallback`]), and HLS requests for them answered from there ([`hls_proxy`]), while
/// it lives.
pub struct Bridge {
    dir: PathBuf,
    paths: PathManager,
    running: Mutex<HashSet<String>>,
    /// The old process has exited (its sockets are gone): the bridge is no longer asked.
    gone: AtomicBool,
}

impl Bridge {
    /// A connection to one of the old process's sockets; None once it is gone.
    async fn connect(&self, name: &str) -> Option<tokio::net::UnixStream> {
        if self.gone.load(Ordering::Relaxed) {
            return None;
        }
        match tokio::net::UnixStream::connect(self.dir.join(name)).await {
            Ok(s) => Some(s),
            Err(e) => {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && !self.gone.swap(true, Ordering::Relaxed)
                {
                    tracing::info!("[upgrade] the previous process has exited: bridge closed");
                    self.paths.set_fallback(None);
                }
                None
            }
        }
    }

    /// Whether `path` is published in this process by a publisher of its own (not read from
    /// the old process).
    fn published_here(&self, path: &str) -> bool {
        let bridged = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(path);
        !bridged && self.paths.get(path).is_some_and(|p| p.online)
    }

    async fn open(self: Arc<Self>, path: String) -> bool {
        use tokio::io::AsyncWriteExt;
        if self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&path)
        {
            return true;
        }
        let Some(mut conn) = self.connect("ts.sock").await else {
            return false;
        };
        if path.contains('\n')
            || conn
                .write_all(format!("{path}\n").as_bytes())
                .await
                .is_err()
        {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(5), read_line(&mut conn)).await {
            Ok(Ok(l)) if l == "OK" => {}
            _ => return false,
        }
        let session = SessionInfo {
            id: self.paths.new_session_id(),
            kind: "upgradeSource",
            remote: None,
            query: String::new(),
        };
        let Ok(publisher) = self.paths.publish_source(&path, session) else {
            return false;
        };
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if !running.insert(path.clone()) {
                return true;
            }
        }
        tracing::info!(path, "[upgrade] read from the previous process");
        tokio::spawn(self.clone().feed(conn, publisher, path));
        true
    }

    /// The old process's MPEG-TS into `publisher` until it ends.
    async fn feed(
        self: Arc<Self>,
        mut conn: tokio::net::UnixStream,
        mut publisher: tidegate_core::Publisher,
        path: String,
    ) {
        use tokio::io::AsyncReadExt;
        let kicked = publisher.kicked();
        let mut ingest = tidegate_mpegts::ingest::TsIngest::default();
        let mut buf = vec![0u8; 64 * 1024];
        let why = loop {
            let r = tokio::select! {
                _ = kicked.cancelled() => break "replaced by a publisher".to_string(),
                r = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)) => r,
            };
            match r {
                Err(_) => break "no data for 10 s".to_string(),
                Ok(Err(e)) => break format!("read: {e}"),
                Ok(Ok(0)) => break "the stream ended there".to_string(),
                Ok(Ok(n)) => ingest.feed(&buf[..n], &mut publisher, "MPEG-TS"),
            }
        };
        drop(publisher);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&path);
        tracing::info!(
            path,
            "[upgrade] reading from the previous process ended: {why}"
        );
    }
}

impl Fallback for Bridge {
    fn start(
        self: Arc<Self>,
        path: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        Box::pin(self.open(path))
    }
}

/// The new process's HLS: a request for a path not published here goes first to the old
/// process, whose muxer has the playlist the player follows; its answer is returned unless it
/// is a 404 (then this process answers).
pub async fn hls_proxy(
    axum::extract::State(bridge): axum::extract::State<Arc<Bridge>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri_path = req.uri().path().to_owned();
    let stream_path = match uri_path.rsplit_once('/') {
        Some((dir, file)) if file.contains('.') && dir.len() > 1 => dir[1..].to_owned(),
        _ => return next.run(req).await,
    };
    let get = req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD;
    if !get || bridge.published_here(&stream_path) {
        return next.run(req).await;
    }
    let Some(conn) = bridge.connect("hls.sock").await else {
        return next.run(req).await;
    };
    let mut fwd = axum::http::Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone());
    for (k, v) in req.headers() {
        fwd = fwd.header(k, v);
    }
    if let Some(axum::extract::ConnectInfo(client)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        fwd = fwd.header(CLIENT_HEADER, client.to_string());
    }
    let Ok(fwd) = fwd.body(http_body_util::Empty::<bytes::Bytes>::new()) else {
        return next.run(req).await;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn)).await
    else {
        return next.run(req).await;
    };
    tokio::spawn(connection);
    match sender.send_request(fwd).await {
        Ok(r) if r.status() != axum::http::StatusCode::NOT_FOUND => r.map(axum::body::Body::new),
        _ => next.run(req).await,
    }
}
