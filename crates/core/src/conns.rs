//! The live connections of one protocol listener, for the control API (`/v3/rtmpconns/...`,
//! `/v3/srtconns/...`) and kicks. `X` is what a protocol adds per connection (SRT statistics).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Idle,
    Read,
    Publish,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Idle => "idle",
            ConnState::Read => "read",
            ConnState::Publish => "publish",
        }
    }
}

/// A snapshot of one connection.
#[derive(Clone, Debug)]
pub struct ConnInfo<X = ()> {
    pub id: u64,
    pub created: SystemTime,
    pub remote: SocketAddr,
    pub state: ConnState,
    pub path: String,
    pub query: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// A reader's lag and losses, where its egress reports them.
    pub reader: Option<ReaderFigures>,
    /// A reader's tracks: carried, and left out with why.
    pub carriage: Option<crate::Carriage>,
    pub extra: Arc<X>,
}

/// What a reader's egress tells on demand: how far behind live it is and what it lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderFigures {
    /// Media frames muxed for this reader and not yet handed to its socket.
    pub queued_frames: u64,
    /// Bytes of those (0 where the egress does not know them).
    pub queued_bytes: u64,
    /// Times it fell behind and skipped to the next keyframe.
    pub skips: u64,
    /// Media frames it lost by falling behind (MediaMTX's `outboundFramesDiscarded`).
    pub frames_discarded: u64,
}

/// An egress's reader that can say how it is doing (see [`ReaderFigures`]).
pub trait ReaderProbe: Send + Sync {
    fn figures(&self) -> ReaderFigures;
}

/// Figures a pull reader's task stores as it goes (it owns its reader, so it publishes them).
#[derive(Debug, Default)]
pub struct PullFigures {
    queued: AtomicU64,
    skips: AtomicU64,
    discarded: AtomicU64,
}

impl PullFigures {
    /// Stores where `reader` is now: frames waiting for it, its skips and losses.
    pub fn update(&self, queued: u64, skips: u64, discarded: u64) {
        self.queued.store(queued, Ordering::Relaxed);
        self.skips.store(skips, Ordering::Relaxed);
        self.discarded.store(discarded, Ordering::Relaxed);
    }
}

impl ReaderProbe for PullFigures {
    fn figures(&self) -> ReaderFigures {
        ReaderFigures {
            queued_frames: self.queued.load(Ordering::Relaxed),
            queued_bytes: 0,
            skips: self.skips.load(Ordering::Relaxed),
            frames_discarded: self.discarded.load(Ordering::Relaxed),
        }
    }
}

struct Entry<X> {
    created: SystemTime,
    remote: SocketAddr,
    state: ConnState,
    path: String,
    query: String,
    counters: Arc<Counters>,
    extra: Arc<X>,
    kick: CancellationToken,
}

/// Byte counters a connection updates as it goes, and its reader's probe once it reads.
#[derive(Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    reader: Mutex<Option<std::sync::Weak<dyn ReaderProbe>>>,
    carriage: Mutex<Option<crate::Carriage>>,
    /// A push reader's sink whose own byte count is part of `sent` (see [`Counters::count_sink`]).
    sink: Mutex<Option<Arc<crate::fanout::Sink>>>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("received", &self.received)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Counters {
    /// Bytes sent: `sent` and what the counted sink wrote.
    pub fn bytes_sent(&self) -> u64 {
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        self.sent.load(Ordering::Relaxed) + sink.as_ref().map_or(0, |s| s.bytes_sent())
    }

    /// Counts what `sink` writes as this connection's bytes sent, read from the sink when the
    /// API asks (the stream's writer adds nothing per write here), until the guard goes: then
    /// the sink's bytes are added to `sent` for good.
    pub fn count_sink(self: &Arc<Self>, sink: &Arc<crate::fanout::Sink>) -> SinkCounted {
        let mut slot = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(sink.clone()) {
            self.sent.fetch_add(old.bytes_sent(), Ordering::Relaxed);
        }
        SinkCounted {
            counters: self.clone(),
        }
    }

    /// The reader whose figures the API and metrics show for this connection (held weakly:
    /// it goes with the reader).
    pub fn set_reader(&self, probe: std::sync::Weak<dyn ReaderProbe>) {
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }

    /// What the reader's egress carries of the stream, and what it leaves out and why.
    pub fn set_carriage(&self, c: crate::Carriage) {
        *self.carriage.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    pub fn carriage(&self) -> Option<crate::Carriage> {
        self.carriage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The reader's figures now, if it has a reader that reports them.
    pub fn reader(&self) -> Option<ReaderFigures> {
        self.reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|w| w.upgrade())
            .map(|p| p.figures())
    }
}

/// Counts a sink's bytes as its connection's until dropped ([`Counters::count_sink`]).
#[must_use = "the sink's bytes are counted while this lives"]
pub struct SinkCounted {
    counters: Arc<Counters>,
}

impl Drop for SinkCounted {
    fn drop(&mut self) {
        let c = &self.counters;
        let mut slot = c.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sink) = slot.take() {
            c.sent.fetch_add(sink.bytes_sent(), Ordering::Relaxed);
        }
    }
}

/// A connection came or went (for `runOnConnect` / `runOnDisconnect` and webhooks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEventKind {
    Connected,
    Disconnected,
}

#[derive(Clone, Debug)]
pub struct ConnEvent {
    pub kind: ConnEventKind,
    /// The API's type name: `rtmpConn`, `rtmpsConn`, `rtspConn`, `rtspsConn`, `srtConn`,
    /// `webRTCSession`.
    pub conn_type: &'static str,
    pub id: u64,
    pub remote: SocketAddr,
}

/// Connections of one listener (RTMP, RTMPS, SRT).
pub struct ConnRegistry<X = ()> {
    conns: Mutex<BTreeMap<u64, Entry<X>>>,
    /// Where connection events go, once the server wires it.
    observer: std::sync::OnceLock<(&'static str, broadcast::Sender<ConnEvent>)>,
}

impl<X> Default for ConnRegistry<X> {
    fn default() -> Self {
        ConnRegistry {
            conns: Mutex::new(BTreeMap::new()),
            observer: std::sync::OnceLock::new(),
        }
    }
}

impl<X> ConnRegistry<X> {
    /// Sends a [`ConnEvent`] named `conn_type` on `tx` for every connection that comes or
    /// goes from now on. Set once; later calls are ignored.
    pub fn observe(&self, conn_type: &'static str, tx: broadcast::Sender<ConnEvent>) {
        let _ = self.observer.set((conn_type, tx));
    }

    fn notify(&self, kind: ConnEventKind, id: u64, remote: SocketAddr) {
        if let Some((conn_type, tx)) = self.observer.get() {
            let _ = tx.send(ConnEvent {
                kind,
                conn_type,
                id,
                remote,
            });
        }
    }

    /// The ids of the connections open now.
    pub fn ids(&self) -> Vec<u64> {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

impl<X: Default + Send + Sync + 'static> ConnRegistry<X> {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry<X>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection; it stays listed until the guard is dropped.
    pub fn add(self: &Arc<Self>, id: u64, remote: SocketAddr) -> ConnGuard<X> {
        let counters = Arc::new(Counters::default());
        let extra = Arc::new(X::default());
        let kick = CancellationToken::new();
        self.lock().insert(
            id,
            Entry {
                created: SystemTime::now(),
                remote,
                state: ConnState::Idle,
                path: String::new(),
                query: String::new(),
                counters: counters.clone(),
                extra: extra.clone(),
                kick: kick.clone(),
            },
        );
        self.notify(ConnEventKind::Connected, id, remote);
        ConnGuard {
            registry: self.clone(),
            id,
            remote,
            counters,
            extra,
            kick,
        }
    }

    pub fn list(&self) -> Vec<ConnInfo<X>> {
        self.lock()
            .iter()
            .map(|(id, e)| ConnInfo {
                id: *id,
                created: e.created,
                remote: e.remote,
                state: e.state,
                path: e.path.clone(),
                query: e.query.clone(),
                bytes_received: e.counters.received.load(Ordering::Relaxed),
                bytes_sent: e.counters.bytes_sent(),
                reader: e.counters.reader(),
                carriage: e.counters.carriage(),
                extra: e.extra.clone(),
            })
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<ConnInfo<X>> {
        self.list().into_iter().find(|c| c.id == id)
    }

    /// Closes a connection. Returns whether it existed.
    pub fn kick(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(e) => {
                e.kick.cancel();
                true
            }
            None => false,
        }
    }
}

/// A connection's entry; removed when dropped.
pub struct ConnGuard<X: Default + Send + Sync + 'static = ()> {
    registry: Arc<ConnRegistry<X>>,
    id: u64,
    remote: SocketAddr,
    pub counters: Arc<Counters>,
    pub extra: Arc<X>,
    pub kick: CancellationToken,
}

impl<X: Default + Send + Sync + 'static> ConnGuard<X> {
    pub fn set(&self, state: ConnState, path: &str, query: &str) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.state = state;
            e.path = path.to_string();
            e.query = query.to_string();
        }
    }
}

impl<X: Default + Send + Sync + 'static> Drop for ConnGuard<X> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.registry
            .notify(ConnEventKind::Disconnected, self.id, self.remote);
        // The connection is over: whatever still waits on its kick (a grant's watch) ends.
        self.kick.cancel();
    }
}
