//! HLS and Low-Latency HLS egress.
//!
//! One muxer per path ([`muxer`]) turns the path's frames into segments and parts
//! ([`segmenter`], on `tidegate-fmp4` or `tidegate-mpegts`) and keeps the window that the HTTP
//! server ([`http`]) serves: multivariant and media playlists with blocking reload and delta
//! updates, init segments, segments, and parts streamed while they are written.

pub mod dash;
mod error;
pub mod follow;
pub mod h1;
pub mod http;
pub mod muxer;
pub mod reply;
pub mod segmenter;
pub mod sessions;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tidegate_core::{CoreError, PathEventKind, PathManager};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::HlsError;
pub use muxer::Muxer;
pub use segmenter::Variant;

/// The `hls*` settings.
#[derive(Clone, Debug)]
pub struct HlsConfig {
    pub variant: Variant,
    pub segment_duration: Duration,
    pub part_duration: Duration,
    pub segment_count: u32,
    pub always_remux: bool,
    pub muxer_close_after: Duration,
    pub allow_origins: Vec<String>,
    /// `hlsSegmentMaxSize`, bytes.
    pub segment_max_size: u64,
    /// `hlsCDNSecret`: requests with `Authorization: Bearer <secret>` need no credentials.
    pub cdn_secret: String,
    /// `hlsDirectory`: complete segments are kept in `<directory>/<path>/` instead of memory.
    pub directory: String,
}

/// A muxer as the API shows it.
#[derive(Clone, Debug)]
pub struct MuxerInfo {
    pub path: String,
    pub created: SystemTime,
    pub last_request: SystemTime,
    pub bytes_sent: u64,
}

pub(crate) struct Inner {
    pub paths: PathManager,
    pub cfg: HlsConfig,
    muxers: Mutex<HashMap<String, Arc<Muxer>>>,
    pub sessions: sessions::Sessions,
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Inner {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Muxer>>> {
        self.muxers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn remove(&self, mux: &Arc<Muxer>) {
        let mut t = self.table();
        if t.get(&mux.path).is_some_and(|m| Arc::ptr_eq(m, mux)) {
            t.remove(&mux.path);
        }
    }

    pub(crate) fn existing(&self, path: &str) -> Option<Arc<Muxer>> {
        self.table().get(path).cloned()
    }

    /// The path's muxer, started if the path has a publisher (or an on-demand source that
    /// starts in time).
    pub(crate) async fn muxer_or_demand(
        self: &Arc<Self>,
        path: &str,
    ) -> Result<Arc<Muxer>, CoreError> {
        if let Some(m) = self.existing(path) {
            return Ok(m);
        }
        match self.muxer(path) {
            Err(CoreError::NoOnePublishing(_)) => {}
            other => return other,
        }
        let reader = self
            .paths
            .read_or_demand(path, muxer::session(self))
            .await?;
        drop(reader);
        self.muxer(path)
    }

    /// The path's muxer, started if the path has a publisher.
    pub(crate) fn muxer(self: &Arc<Self>, path: &str) -> Result<Arc<Muxer>, CoreError> {
        let mut t = self.table();
        if let Some(m) = t.get(path) {
            return Ok(m.clone());
        }
        let reader = self.paths.read(path, muxer::session(self))?;
        let mut state = state::State::new(
            prefix(),
            self.cfg.variant,
            self.cfg.segment_duration.as_secs_f64(),
            self.cfg.part_duration.as_secs_f64(),
            self.cfg.segment_count.max(1) as usize,
        );
        if !self.cfg.directory.is_empty() {
            state.directory = Some(std::path::Path::new(&self.cfg.directory).join(path));
        }
        let mux = Arc::new(Muxer::new(path.to_string(), state));
        mux.touch();
        t.insert(path.to_string(), mux.clone());
        drop(t);
        // One span per muxer: protocol and path.
        let span = tracing::info_span!("hls", path);
        self.tasks.spawn(tracing::Instrument::instrument(
            muxer::run(self.clone(), mux.clone(), reader),
            span,
        ));
        Ok(mux)
    }
}

/// A name prefix for one muxer's files: segment names never repeat across muxers, so CDNs may
/// cache them forever.
fn prefix() -> String {
    let mut x = tidegate_core::text::random_u64();
    let mut s = String::new();
    for _ in 0..8 {
        s.push(char::from_digit((x % 36) as u32, 36).unwrap_or('0'));
        x /= 36;
    }
    s
}

/// The HLS server: muxers and their HTTP front.
#[derive(Clone)]
pub struct Hls {
    inner: Arc<Inner>,
}

impl Hls {
    pub fn new(
        paths: PathManager,
        cfg: HlsConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Hls {
        let hls = Hls {
            inner: Arc::new(Inner {
                paths,
                cfg,
                muxers: Mutex::new(HashMap::new()),
                sessions: sessions::Sessions::default(),
                shutdown,
                tasks,
            }),
        };
        if hls.inner.cfg.always_remux {
            let inner = hls.inner.clone();
            let mut events = inner.paths.events();
            hls.inner.tasks.spawn(async move {
                for p in inner.paths.list().into_iter().filter(|p| p.ready) {
                    let _ = inner.muxer(&p.name);
                }
                loop {
                    tokio::select! {
                        ev = events.recv() => match ev {
                            Ok(e) if e.kind == PathEventKind::Ready => {
                                let _ = inner.muxer(&e.path);
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                for p in inner.paths.list().into_iter().filter(|p| p.ready) {
                                    let _ = inner.muxer(&p.name);
                                }
                            }
                            Err(_) => break,
                        },
                        _ = inner.shutdown.cancelled() => break,
                    }
                }
            });
        }
        hls
    }

    /// The viewers (`/v3/hlssessions`), oldest first.
    pub fn sessions(&self) -> Vec<Arc<sessions::Session>> {
        self.inner.sessions.list()
    }

    /// Ends a viewer's session; false when there is none of that id.
    pub fn kick_session(&self, id: &str) -> bool {
        self.inner.sessions.kick(id)
    }

    pub fn muxers(&self) -> Vec<MuxerInfo> {
        let mut v: Vec<MuxerInfo> = self
            .inner
            .table()
            .values()
            .map(|m| MuxerInfo {
                path: m.path.clone(),
                created: m.created,
                last_request: m.last_request(),
                bytes_sent: m.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Serves HTTP (and HTTP/2, over TLS with ALPN or cleartext with prior knowledge) on
    /// `listener` until shutdown.
    /// The HLS routes (playlists, segments, parts, player page), for the HTTP(S) listener on
    /// `hlsAddress`; requests must carry the client's `ConnectInfo`.
    pub fn router(&self) -> axum::Router {
        http::router(self.inner.clone())
    }

    /// The reply to `req` from `remote` (the client's address), as the router would give it:
    /// for the server's own HTTP/1.1 lane. A HEAD request's reply still holds its body, which
    /// the caller does not send.
    pub async fn answer(
        &self,
        remote: std::net::SocketAddr,
        req: &reply::Request<'_>,
    ) -> reply::Reply {
        http::answer(&self.inner, remote, req).await
    }
}

#[cfg(test)]
mod tests;
