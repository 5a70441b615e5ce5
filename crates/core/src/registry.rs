//! The path registry: which paths exist, who publishes on each, who reads.
//!
//! Sessions hold RAII handles ([`Publisher`], [`Reader`]); dropping one unregisters it, so a
//! session that ends for any reason (error, kick, panic unwinding its task) frees its slot.
//! Every change is also sent as a [`PathEvent`] for the API, metrics and hooks.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, AuthRequest, Authenticator, Grant, PathRules};
use crate::media::StreamDesc;
use crate::path::{validate_path_name, PathConf, PathMatch, PathMatcher, PathNameError};
use crate::stream::{RecvError, Stream, StreamConfig, StreamReader};

/// Identifies one session (a publisher or reader connection) for the whole process lifetime.
pub type SessionId = u64;

/// Who a session is, for logs and the API.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: SessionId,
    /// The API's type name, e.g. `rtmpConn`, `srtConn`, `webRTCSession`.
    pub kind: &'static str,
    pub remote: Option<SocketAddr>,
    /// The query string the client gave with the path (`a=1&b=2`), for hooks' `MTX_QUERY`.
    pub query: String,
}

impl SessionInfo {
    /// A session with no query string.
    pub fn new(id: SessionId, kind: &'static str, remote: Option<SocketAddr>) -> SessionInfo {
        SessionInfo {
            id,
            kind,
            remote,
            query: String::new(),
        }
    }

    pub fn with_query(mut self, query: &str) -> SessionInfo {
        self.query = query.to_string();
        self
    }
}

/// The crate's one error: why a path operation was refused (the name's and the credentials'
/// reasons carried by one variant each, as their own types), or why a PROXY header or a TLS
/// client setting was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("invalid path name: {0}")]
    InvalidName(#[from] PathNameError),
    #[error("path '{0}' is not configured")]
    NotConfigured(String),
    #[error("path '{0}' takes its stream from a source, it cannot be published to")]
    NotPublishable(String),
    #[error("path '{0}' already has a publisher")]
    Busy(String),
    #[error("no one is publishing to path '{0}'")]
    NoOnePublishing(String),
    #[error("path '{0}' has reached its maximum number of readers ({1})")]
    TooManyReaders(String, u32),
    #[error("not authorized: {0}")]
    Auth(#[from] AuthError),
    #[error("PROXY header: {0}")]
    ProxyHeader(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// What happened on a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathEventKind {
    /// A publisher started: the path has tracks and frames flow.
    Ready,
    /// The publisher left.
    NotReady,
    ReaderAdded,
    ReaderRemoved,
    /// A reader asked for a path whose on-demand source is not running.
    Demand,
}

#[derive(Clone, Debug)]
pub struct PathEvent {
    pub kind: PathEventKind,
    pub path: String,
    pub session: SessionId,
    pub session_kind: &'static str,
    pub remote: Option<SocketAddr>,
    /// The session's query string.
    pub query: String,
}

/// A path as the control API shows it.
#[derive(Clone, Debug)]
pub struct PathInfo {
    pub name: String,
    pub conf_name: String,
    /// The publisher (or source) session, if any.
    pub source: Option<(&'static str, SessionId)>,
    pub ready: bool,
    pub ready_time: Option<SystemTime>,
    pub tracks: Vec<&'static str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub readers: Vec<(&'static str, SessionId)>,
    pub reader_skips: u64,
    /// Frames the ingest could not rebuild (see [`crate::stream::StreamStats`]).
    pub frames_in_error: u64,
    /// Running transcoders of the path's stream (the audio bridge), e.g.
    /// `MPEG-4 Audio → Opus 128 kbit/s`.
    pub transcoders: Vec<String>,
    /// A publisher or source (not the offline stream of `alwaysAvailable`) feeds the path.
    pub online: bool,
}

struct PublisherSlot {
    session: SessionInfo,
    stream: Option<Arc<Stream>>,
    ready_time: Option<SystemTime>,
    kick: CancellationToken,
    /// The offline stream of an `alwaysAvailable` path: any publisher or source takes over
    /// from it, and it emits no path events.
    offline: bool,
}

/// A stream whose publisher left, kept for its readers for `publisherReconnectGrace`.
struct Held {
    stream: Arc<Stream>,
    generation: u64,
}

struct PathEntry {
    conf: Arc<PathConf>,
    publisher: Option<PublisherSlot>,
    held: Option<Held>,
    readers: BTreeMap<SessionId, SessionInfo>,
    bytes_sent: Arc<AtomicU64>,
    /// Bytes of publishers that already left, so the total survives a republish.
    bytes_received_past: u64,
    /// The tracks of the path's offline stream (`alwaysAvailable`): a publisher must match
    /// them.
    offline_desc: Option<StreamDesc>,
}

impl PathEntry {
    fn is_idle(&self) -> bool {
        self.publisher.is_none() && self.readers.is_empty() && self.held.is_none()
    }
}

struct Registry {
    matcher: Arc<PathMatcher>,
    paths: HashMap<String, PathEntry>,
}

struct Shared {
    registry: Mutex<Registry>,
    authenticator: std::sync::RwLock<Arc<dyn Authenticator>>,
    events: broadcast::Sender<PathEvent>,
    stream_config: StreamConfig,
    next_session: AtomicU64,
    /// Woken whenever a path's publisher slot is freed (the offline streams of
    /// `alwaysAvailable` paths take over then).
    released: tokio::sync::Notify,
    /// Where a reader of a path nobody publishes here may be served from instead (the
    /// process an upgrade replaces, while it lives).
    fallback: std::sync::RwLock<Option<Arc<dyn Fallback>>>,
}

/// How long a reader waits for a [`Fallback`] that took its path to deliver the stream.
const FALLBACK_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves readers of paths nobody publishes in this process from elsewhere: the process an
/// upgrade replaces, which still has the publishers it had (docs/deploy.md).
pub trait Fallback: Send + Sync {
    /// Starts delivering `path` (as a source publishing it here) if the fallback has
    /// it, or is already doing so; false when it has not.
    fn start(
        self: Arc<Self>,
        path: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `stream` for its readers after its publisher left, if the path has a grace and
    /// readers; the stream is closed when the grace ends with no new publisher. Returns
    /// whether it is kept.
    fn hold(self: &Arc<Self>, entry: &mut PathEntry, path: &str, stream: &Arc<Stream>) -> bool {
        let grace = entry.conf.publisher_reconnect_grace;
        if entry.conf.always_available {
            // The offline stream (or the next publisher) continues it, however long that takes.
            if entry.readers.is_empty() || stream.is_closed() {
                return false;
            }
            if let Some(old) = entry.held.take() {
                if !Arc::ptr_eq(&old.stream, stream) {
                    old.stream.close();
                }
            }
            let generation = self.next_session.fetch_add(1, Ordering::Relaxed);
            entry.held = Some(Held {
                stream: stream.clone(),
                generation,
            });
            return true;
        }
        if grace.is_zero() || entry.readers.is_empty() || stream.is_closed() {
            return false;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if let Some(old) = entry.held.take() {
            old.stream.close();
        }
        let generation = self.next_session.fetch_add(1, Ordering::Relaxed);
        entry.held = Some(Held {
            stream: stream.clone(),
            generation,
        });
        tracing::info!(
            path,
            "the publisher left: its readers wait up to {grace:?} (publisherReconnectGrace) for a new one"
        );
        let shared = self.clone();
        let path = path.to_string();
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            shared.expire(&path, generation);
        });
        true
    }

    /// The grace of a held stream is over: it closes and its readers end.
    fn expire(&self, path: &str, generation: u64) {
        let mut reg = self.lock();
        let Some(entry) = reg.paths.get_mut(path) else {
            return;
        };
        if entry
            .held
            .as_ref()
            .is_none_or(|h| h.generation != generation)
        {
            return;
        }
        let held = entry.held.take();
        if entry.is_idle() {
            reg.paths.remove(path);
        }
        drop(reg);
        if let Some(h) = held {
            tracing::info!(
                path,
                "no publisher came back within publisherReconnectGrace: its readers end"
            );
            h.stream.close();
        }
    }

    fn emit(&self, kind: PathEventKind, path: &str, session: &SessionInfo) {
        tracing::debug!(path, session = session.id, kind = ?kind, "path event");
        let _ = self.events.send(PathEvent {
            kind,
            path: path.to_string(),
            session: session.id,
            session_kind: session.kind,
            remote: session.remote,
            query: session.query.clone(),
        });
    }
}

/// The registry of paths. Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct PathManager {
    shared: Arc<Shared>,
}

impl PathManager {
    /// The limits every stream gets (ring, GOP cache, `audioCoalesce`).
    pub fn stream_config(&self) -> &StreamConfig {
        &self.shared.stream_config
    }

    pub fn new(matcher: PathMatcher, stream_config: StreamConfig) -> PathManager {
        let (events, _) = broadcast::channel(1024);
        PathManager {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry {
                    matcher: Arc::new(matcher),
                    paths: HashMap::new(),
                }),
                events,
                authenticator: std::sync::RwLock::new(Arc::new(PathRules)),
                stream_config,
                next_session: AtomicU64::new(1),
                released: tokio::sync::Notify::new(),
                fallback: std::sync::RwLock::new(None),
            }),
        }
    }

    /// A fresh session id.
    pub fn new_session_id(&self) -> SessionId {
        self.shared.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Path events from now on.
    pub fn events(&self) -> broadcast::Receiver<PathEvent> {
        self.shared.events.subscribe()
    }

    /// Finds the configuration of a concrete path name.
    pub fn find(&self, name: &str) -> Result<PathMatch, CoreError> {
        validate_path_name(name)?;
        let matcher = self.shared.lock().matcher.clone();
        matcher
            .find(name)
            .ok_or_else(|| CoreError::NotConfigured(name.to_string()))
    }

    /// Replaces the path configuration (a reload). A live path whose configuration is the
    /// same keeps its publisher and readers untouched; a live path whose configuration
    /// changed, or that no configuration matches any more, has its publisher kicked and its
    /// stream closed (readers end). Returns those paths, with why.
    pub fn reconfigure(&self, matcher: PathMatcher) -> Vec<(String, &'static str)> {
        let matcher = Arc::new(matcher);
        let mut closed = Vec::new();
        let mut streams = Vec::new();
        let mut reg = self.shared.lock();
        reg.matcher = matcher.clone();
        let names: Vec<String> = reg.paths.keys().cloned().collect();
        for name in names {
            let Some(entry) = reg.paths.get_mut(&name) else {
                continue;
            };
            let why = match matcher.find(&name) {
                None => "it was removed from the configuration",
                Some(m) if *m.conf == *entry.conf => {
                    entry.conf = m.conf;
                    continue;
                }
                Some(m) => {
                    entry.conf = m.conf;
                    "its configuration changed"
                }
            };
            if let Some(p) = &entry.publisher {
                p.kick.cancel();
                streams.extend(p.stream.clone());
            }
            if let Some(h) = entry.held.take() {
                streams.push(h.stream);
            }
            closed.push((name, why));
        }
        drop(reg);
        for s in streams {
            s.close();
        }
        for (name, why) in &closed {
            tracing::info!(path = %name, "{why}: its sessions are closed");
        }
        closed
    }

    /// Installs who decides (the server's auth manager); [`PathRules`] until then.
    pub fn set_authenticator(&self, auth: Arc<dyn Authenticator>) {
        if let Ok(mut a) = self.shared.authenticator.write() {
            *a = auth;
        }
    }

    /// Installs (or removes) the [`Fallback`] readers of unpublished paths are served from.
    pub fn set_fallback(&self, fallback: Option<Arc<dyn Fallback>>) {
        if let Ok(mut f) = self.shared.fallback.write() {
            *f = fallback;
        }
    }

    fn fallback(&self) -> Option<Arc<dyn Fallback>> {
        self.shared
            .fallback
            .read()
            .map(|f| f.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn authenticator(&self) -> Arc<dyn Authenticator> {
        self.shared
            .authenticator
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Asks whether `req` may go ahead. For a request about a path, the path must be
    /// configured (its configuration is returned); the authenticator sees it.
    pub async fn authorize(
        &self,
        req: &AuthRequest,
    ) -> Result<(Option<PathMatch>, Grant), CoreError> {
        let found = if req.action.on_path() {
            Some(self.find(&req.path)?)
        } else {
            None
        };
        let auth = self.authenticator();
        let grant = auth
            .authorize(req, found.as_ref().map(|m| m.conf.as_ref()))
            .await?;
        Ok((found, grant))
    }

    /// [`PathManager::authorize`] for a path: its configuration and the grant. A name
    /// `<path>/<key>` where `<path>` is an exact path with `streamKeyInPath` is rewritten in
    /// `req` to `<path>`, with `<key>` as the stream key: callers use `req.path` afterwards.
    pub async fn authorize_path(
        &self,
        req: &mut AuthRequest,
    ) -> Result<(PathMatch, Grant), CoreError> {
        if let Some((parent, last)) = req.path.rsplit_once('/') {
            let matcher = self.shared.lock().matcher.clone();
            if matcher.exact(parent).is_some_and(|c| c.stream_key_in_path) && !last.is_empty() {
                req.creds.key = Some(last.to_string());
                req.path = parent.to_string();
            }
        }
        let (found, grant) = self.authorize(req).await?;
        let m = match found {
            Some(m) => m,
            None => self.find(&req.path)?,
        };
        Ok((m, grant))
    }

    /// Reserves `name` for a publisher. The path becomes ready when [`Publisher::start`] is
    /// called with the tracks. A second publisher is refused, unless the path has
    /// `overridePublisher`, in which case the current one is kicked and replaced.
    pub fn publish(&self, name: &str, session: SessionInfo) -> Result<Publisher, CoreError> {
        let m = self.find(name)?;
        if m.conf.source != "publisher" {
            return Err(CoreError::NotPublishable(name.to_string()));
        }
        self.claim(name, m.conf, session, false)
    }

    /// Reserves a path for a pulled source (the server itself publishes on it).
    pub fn publish_source(&self, name: &str, session: SessionInfo) -> Result<Publisher, CoreError> {
        let m = self.find(name)?;
        self.claim(name, m.conf, session, false)
    }

    /// Reserves an `alwaysAvailable` path for its offline stream, when nobody else has it.
    /// Any publisher or source takes the path over (the offline publisher is kicked).
    pub fn publish_offline(
        &self,
        name: &str,
        session: SessionInfo,
    ) -> Result<Publisher, CoreError> {
        let m = self.find(name)?;
        self.claim(name, m.conf, session, true)
    }

    /// Resolves after the next time any path's publisher slot is freed; `enable()` the
    /// future before checking, so that nothing is missed in between.
    pub fn publisher_released(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.released.notified()
    }

    fn claim(
        &self,
        name: &str,
        conf: Arc<PathConf>,
        session: SessionInfo,
        offline: bool,
    ) -> Result<Publisher, CoreError> {
        let kick = CancellationToken::new();
        let mut reg = self.shared.lock();
        let entry = reg
            .paths
            .entry(name.to_string())
            .or_insert_with(|| PathEntry {
                conf: conf.clone(),
                publisher: None,
                held: None,
                readers: BTreeMap::new(),
                bytes_sent: Arc::new(AtomicU64::new(0)),
                bytes_received_past: 0,
                offline_desc: None,
            });
        let mut replaced = None;
        if let Some(current) = &entry.publisher {
            if offline {
                // The offline stream waits for the path to be free.
                return Err(CoreError::Busy(name.to_string()));
            }
            if current.offline {
                tracing::info!(
                    path = name,
                    new = session.id,
                    "a publisher takes over from the offline stream (alwaysAvailable)"
                );
            } else if !conf.override_publisher {
                return Err(CoreError::Busy(name.to_string()));
            } else {
                tracing::info!(
                    path = name,
                    old = current.session.id,
                    new = session.id,
                    "replacing the publisher (overridePublisher)"
                );
            }
            replaced = entry.publisher.take();
        }
        if let Some(old) = &replaced {
            old.kick.cancel();
            if let Some(stream) = &old.stream {
                entry.bytes_received_past += stream.stats().bytes_in.load(Ordering::Relaxed);
                // The newcomer continues the stream for its readers if it can.
                if !self.shared.hold(entry, name, stream) {
                    stream.close();
                }
            }
        }
        entry.publisher = Some(PublisherSlot {
            session: session.clone(),
            stream: None,
            ready_time: None,
            kick: kick.clone(),
            offline,
        });
        drop(reg);
        if let Some(old) = replaced {
            if old.stream.is_some() && !old.offline {
                self.shared
                    .emit(PathEventKind::NotReady, name, &old.session);
            }
        }
        Ok(Publisher {
            shared: self.shared.clone(),
            path: name.to_string(),
            session,
            conf,
            stream: None,
            kick,
            offline,
        })
    }

    /// The stream published on `name` and its settings, for in-process consumers that are
    /// not clients (the recorder): no reader is registered and `maxReaders` does not count it.
    pub fn stream(&self, name: &str) -> Option<(Arc<Stream>, Arc<PathConf>)> {
        let m = self.find(name).ok()?;
        let reg = self.shared.lock();
        let stream = reg.paths.get(name)?.publisher.as_ref()?.stream.clone()?;
        Some((stream, m.conf))
    }

    /// Starts reading `name`. Its publisher must be ready.
    pub fn read(&self, name: &str, session: SessionInfo) -> Result<Reader, CoreError> {
        let m = self.find(name)?;
        let mut reg = self.shared.lock();
        let Some(entry) = reg.paths.get_mut(name) else {
            return Err(CoreError::NoOnePublishing(name.to_string()));
        };
        // An `alwaysAvailable` path between a publisher and its offline stream (or the other
        // way round) is read from the stream one of them is about to continue.
        let held = || {
            m.conf
                .always_available
                .then(|| entry.held.as_ref().map(|h| h.stream.clone()))
                .flatten()
        };
        let Some(stream) = entry
            .publisher
            .as_ref()
            .and_then(|p| p.stream.clone())
            .or_else(held)
        else {
            return Err(CoreError::NoOnePublishing(name.to_string()));
        };
        let max = m.conf.max_readers;
        if max > 0 && entry.readers.len() >= max as usize {
            return Err(CoreError::TooManyReaders(name.to_string(), max));
        }
        entry.readers.insert(session.id, session.clone());
        let bytes_sent = entry.bytes_sent.clone();
        drop(reg);
        self.shared.emit(PathEventKind::ReaderAdded, name, &session);
        Ok(Reader {
            shared: self.shared.clone(),
            path: name.to_string(),
            stream,
            reader: None,
            session,
            conf: m.conf,
            bytes_sent,
        })
    }

    /// As [`PathManager::read`], but a path with an on-demand source (`sourceOnDemand`, or a
    /// `runOnDemand` command) that is not running is asked to start it (a [`PathEventKind::Demand`] event) and waited for, up to the path's
    /// `sourceOnDemandStartTimeout`.
    pub async fn read_or_demand(
        &self,
        name: &str,
        session: SessionInfo,
    ) -> Result<Reader, CoreError> {
        let mut events = self.events();
        match self.read(name, session.clone()) {
            Err(CoreError::NoOnePublishing(_)) => {}
            other => return other,
        }
        let m = self.find(name)?;
        let timeout = if m.conf.source != "publisher" && m.conf.source_on_demand {
            m.conf.source_on_demand_start_timeout
        } else if m.conf.source == "publisher" && !m.conf.hooks.run_on_demand.is_empty() {
            m.conf.hooks.run_on_demand_start_timeout
        } else if let Some(fallback) = self.fallback().filter(|_| m.conf.source == "publisher") {
            if !fallback.start(name.to_string()).await {
                return Err(CoreError::NoOnePublishing(name.to_string()));
            }
            FALLBACK_START_TIMEOUT
        } else {
            return Err(CoreError::NoOnePublishing(name.to_string()));
        };
        self.shared.emit(PathEventKind::Demand, name, &session);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.read(name, session.clone()) {
                Err(CoreError::NoOnePublishing(_)) => {}
                other => return other,
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return Err(CoreError::NoOnePublishing(name.to_string())),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    return Err(CoreError::NoOnePublishing(name.to_string()))
                }
                Ok(_) => {}
            }
        }
    }

    /// Kicks the publisher of `name` if it is `session` (or any publisher when `session` is
    /// None). Returns whether one was kicked.
    pub fn kick_publisher(&self, name: &str, session: Option<SessionId>) -> bool {
        let reg = self.shared.lock();
        match reg.paths.get(name).and_then(|e| e.publisher.as_ref()) {
            Some(p) if session.is_none_or(|s| s == p.session.id) => {
                p.kick.cancel();
                true
            }
            _ => false,
        }
    }

    /// Every path that has a publisher or readers, plus every configured exact-name path,
    /// sorted by name.
    pub fn list(&self) -> Vec<PathInfo> {
        let reg = self.shared.lock();
        let mut out: BTreeMap<String, PathInfo> = reg
            .paths
            .iter()
            .map(|(name, e)| (name.clone(), active_info(name, e)))
            .collect();
        for name in reg.matcher.exact_names() {
            if !out.contains_key(name) {
                if let Some(m) = reg.matcher.find(name) {
                    out.insert(name.clone(), idle_info(name, &m.conf));
                }
            }
        }
        out.into_values().collect()
    }

    /// One path, as in [`PathManager::list`].
    pub fn get(&self, name: &str) -> Option<PathInfo> {
        let reg = self.shared.lock();
        if let Some(e) = reg.paths.get(name) {
            return Some(active_info(name, e));
        }
        let matcher = reg.matcher.clone();
        drop(reg);
        if !matcher.exact_names().any(|n| n == name) {
            return None;
        }
        matcher.find(name).map(|m| idle_info(name, &m.conf))
    }
}

/// A path that has a publisher or readers.
fn active_info(name: &str, e: &PathEntry) -> PathInfo {
    let stream = e.publisher.as_ref().and_then(|p| p.stream.as_ref());
    let live_bytes = stream.map_or(0, |s| s.stats().bytes_in.load(Ordering::Relaxed));
    let offline = e.publisher.as_ref().is_some_and(|p| p.offline);
    PathInfo {
        name: name.to_string(),
        conf_name: e.conf.name.clone(),
        source: e
            .publisher
            .as_ref()
            .filter(|p| !p.offline)
            .map(|p| (p.session.kind, p.session.id)),
        online: stream.is_some() && !offline,
        ready: stream.is_some(),
        ready_time: e.publisher.as_ref().and_then(|p| p.ready_time),
        tracks: stream.map(|s| s.desc().codec_names()).unwrap_or_default(),
        bytes_received: e.bytes_received_past + live_bytes,
        bytes_sent: e.bytes_sent.load(Ordering::Relaxed),
        readers: e.readers.values().map(|r| (r.kind, r.id)).collect(),
        reader_skips: stream.map_or(0, |s| s.stats().reader_skips.load(Ordering::Relaxed)),
        frames_in_error: stream.map_or(0, |s| s.stats().frames_in_error.load(Ordering::Relaxed)),
        transcoders: stream.map(|s| s.running_transcoders()).unwrap_or_default(),
    }
}

/// A configured path nobody uses yet.
fn idle_info(name: &str, conf: &PathConf) -> PathInfo {
    PathInfo {
        name: name.to_string(),
        conf_name: conf.name.clone(),
        source: None,
        ready: false,
        ready_time: None,
        tracks: Vec::new(),
        bytes_received: 0,
        bytes_sent: 0,
        readers: Vec::new(),
        reader_skips: 0,
        frames_in_error: 0,
        transcoders: Vec::new(),
        online: false,
    }
}

/// A publisher's hold on a path. Dropping it frees the path and ends its readers.
pub struct Publisher {
    shared: Arc<Shared>,
    path: String,
    session: SessionInfo,
    conf: Arc<PathConf>,
    stream: Option<Arc<Stream>>,
    kick: CancellationToken,
    offline: bool,
}

impl Publisher {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn conf(&self) -> &Arc<PathConf> {
        &self.conf
    }

    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    /// Cancelled when this publisher is replaced (`overridePublisher`) or kicked by the API.
    /// The session should stop when it fires.
    pub fn kicked(&self) -> CancellationToken {
        self.kick.clone()
    }

    /// Declares the tracks and makes the path ready. Returns the stream to write frames into.
    /// Calling it again (the tracks changed) starts a new stream: current readers end.
    pub fn start(&mut self, desc: StreamDesc) -> Arc<Stream> {
        let mut reg = self.shared.lock();
        let entry = reg.paths.get_mut(&self.path);
        let is_mine = entry.as_ref().is_some_and(|e| {
            e.publisher
                .as_ref()
                .is_some_and(|p| p.session.id == self.session.id)
        });
        // A stream kept for its readers after the last publisher left: continued if the
        // tracks are the same, else closed (its readers end).
        let mut resumed = None;
        let mut to_close = None;
        if let (true, Some(e)) = (is_mine, entry) {
            if self.offline {
                e.offline_desc = Some(desc.clone());
            } else if let Some(offline) =
                e.offline_desc.as_ref().filter(|_| e.conf.always_available)
            {
                if crate::stream::match_tracks(offline, &desc).is_none() {
                    // MediaMTX's rule: the offline stream and its publishers have the same
                    // tracks, so that readers never see the stream change under them.
                    tracing::error!(
                        path = %self.path,
                        "the publisher's tracks {:?} do not match the path's offline stream {:?} (alwaysAvailableTracks or alwaysAvailableFile): it is refused",
                        desc.codec_names(),
                        offline.codec_names()
                    );
                    drop(reg);
                    self.kick.cancel();
                    let stream = Arc::new(Stream::new(desc, self.shared.stream_config.clone()));
                    stream.close();
                    self.stream = Some(stream.clone());
                    return stream;
                }
            }
            if let Some(h) = e.held.take() {
                let counted = h.stream.stats().bytes_in.load(Ordering::Relaxed);
                if h.stream.resume(desc.clone()) {
                    e.bytes_received_past = e.bytes_received_past.saturating_sub(counted);
                    if !self.offline {
                        tracing::info!(
                            path = %self.path,
                            "a new publisher continues the stream: its readers stay"
                        );
                    }
                    resumed = Some(h.stream);
                } else {
                    tracing::info!(
                        path = %self.path,
                        "the new publisher's tracks differ from the last one's: the readers that waited for it end"
                    );
                    to_close = Some(h.stream);
                }
            }
        }
        if let Some(old) = to_close {
            old.close();
        }
        let stream = resumed
            .unwrap_or_else(|| Arc::new(Stream::new(desc, self.shared.stream_config.clone())));
        let mine = reg
            .paths
            .get_mut(&self.path)
            .and_then(|e| e.publisher.as_mut())
            .filter(|p| p.session.id == self.session.id);
        if let Some(slot) = mine {
            if let Some(old) = slot.stream.replace(stream.clone()) {
                old.close();
            }
            slot.ready_time = Some(SystemTime::now());
            drop(reg);
            if self.offline {
                tracing::info!(
                    path = %self.path,
                    tracks = ?stream.desc().codec_names(),
                    "the offline stream plays (alwaysAvailable)"
                );
            } else {
                tracing::info!(
                    path = %self.path,
                    tracks = ?stream.desc().codec_names(),
                    "stream is ready"
                );
                self.shared
                    .emit(PathEventKind::Ready, &self.path, &self.session);
            }
        } else {
            // Replaced before it started: the stream is born closed; the session sees `kicked`.
            drop(reg);
            stream.close();
        }
        self.stream = Some(stream.clone());
        stream
    }

    pub fn stream(&self) -> Option<&Arc<Stream>> {
        self.stream.as_ref()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let mut reg = self.shared.lock();
        let mut was_ready = false;
        // The stream lives on when it is kept for its readers (grace) or when a newcomer
        // already continues it.
        let mut keep = false;
        if let Some(entry) = reg.paths.get_mut(&self.path) {
            if entry
                .publisher
                .as_ref()
                .is_some_and(|p| p.session.id == self.session.id)
            {
                if let Some(slot) = entry.publisher.take() {
                    if let Some(stream) = slot.stream {
                        entry.bytes_received_past +=
                            stream.stats().bytes_in.load(Ordering::Relaxed);
                        was_ready = true;
                        keep = self.shared.hold(entry, &self.path, &stream);
                    }
                }
            }
            if let Some(mine) = &self.stream {
                keep |= entry
                    .held
                    .as_ref()
                    .is_some_and(|h| Arc::ptr_eq(&h.stream, mine))
                    || entry
                        .publisher
                        .as_ref()
                        .and_then(|p| p.stream.as_ref())
                        .is_some_and(|s| Arc::ptr_eq(s, mine));
            }
            if entry.is_idle() {
                reg.paths.remove(&self.path);
            }
        }
        drop(reg);
        if let (Some(stream), false) = (&self.stream, keep) {
            stream.close();
        }
        self.shared.released.notify_waiters();
        if was_ready && !self.offline {
            tracing::info!(path = %self.path, "stream is not ready any more");
            self.shared
                .emit(PathEventKind::NotReady, &self.path, &self.session);
        }
    }
}

/// A reader's hold on a path. Dropping it unregisters the reader.
pub struct Reader {
    shared: Arc<Shared>,
    path: String,
    session: SessionInfo,
    conf: Arc<PathConf>,
    stream: Arc<Stream>,
    /// Subscribed on the first `recv`, so that an egress reading a per-stream muxer instead
    /// (see `Stream::extension`) holds no position in the ring.
    reader: Option<StreamReader>,
    bytes_sent: Arc<AtomicU64>,
}

impl Reader {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn conf(&self) -> &Arc<PathConf> {
        &self.conf
    }

    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    /// The tracks of the stream being read.
    pub fn desc(&self) -> StreamDesc {
        self.stream.desc()
    }

    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// The next frame, starting on a keyframe; [`RecvError::Closed`] once the publisher has left.
    pub async fn recv(&mut self) -> Result<Arc<crate::media::Frame>, RecvError> {
        let stream = &self.stream;
        self.reader
            .get_or_insert_with(|| stream.subscribe())
            .recv()
            .await
    }

    /// Counts bytes this reader sent to its client (for the path's `bytesSent`).
    pub fn add_bytes_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// The counter behind [`Reader::add_bytes_sent`], for a writer outside the reader's task.
    pub fn bytes_sent_counter(&self) -> Arc<AtomicU64> {
        self.bytes_sent.clone()
    }

    pub fn skips(&self) -> u64 {
        self.reader.as_ref().map_or(0, StreamReader::skips)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut reg = self.shared.lock();
        let mut unheld = None;
        if let Some(entry) = reg.paths.get_mut(&self.path) {
            entry.readers.remove(&self.session.id);
            if entry.readers.is_empty() {
                // Nobody left to keep a stream for.
                unheld = entry.held.take();
            }
            if entry.is_idle() {
                reg.paths.remove(&self.path);
            }
        }
        drop(reg);
        if let Some(h) = unheld {
            h.stream.close();
        }
        self.shared
            .emit(PathEventKind::ReaderRemoved, &self.path, &self.session);
    }
}
