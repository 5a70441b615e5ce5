//! The fan-out engine: a stream's frames serialised once per egress format, shared by every
//! reader of that format, and written to readers' sockets without a task wake-up per reader.
//!
//! An [`Egress`] is one format's muxer for one stream (RTMP chunks, interleaved RTP, MPEG-TS,
//! RTP packets...). [`Stream::egress`] gives the running one or starts it; it lives while some
//! reader holds it and its task ends with the last one (or with the stream). Its output is a
//! stream of its own, with the same ring, GOP cache and skip rules as the source, so it has its
//! own keyframe-aligned join point.
//!
//! Readers take the output in one of two ways:
//! - **pull** ([`Egress::subscribe`]): a reader task receives each muxed frame, for egresses
//!   whose sending is per reader anyway (SRT's paced sender, SRTP per viewer, TLS records);
//! - **push** ([`Egress::attach`]): the reader hands a [`Sink`] (its socket) to the egress; the
//!   egress task offers each batch of muxed frames to every sink with one non-blocking vectored
//!   write. Only when a socket is full does the rest wait in that sink's private queue, which
//!   the reader's own task drains when the socket is writable; a queue past its bound drops its
//!   media (never a partly written frame, never control messages) and the reader resumes at the
//!   next keyframe, counted as a skip. The publisher never waits, and no reader delays another
//!   more than one non-blocking system call.

use std::any::TypeId;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::media::{Frame, TrackId};
use crate::stream::{RecvError, Stream, StreamReader};

/// Serialises frames into one egress format, once per stream.
pub trait Muxer: Send + 'static {
    /// The wire bytes of one frame, or None to leave the frame out.
    fn mux(&mut self, frame: &Frame) -> Option<Bytes>;

    /// Whether frames of the other tracks (audio) may wait for the next frame of the key track
    /// (video), as the stream's `audio_coalesce` says, so that they leave in one write with
    /// it: for byte-stream egresses whose readers buffer by timestamp (RTMP, RTSP over TCP),
    /// where each write costs a system call per reader; and WHEP's while a stream has many
    /// viewers, where each viewer's turn costs a str0m timer sweep. Asked per batch.
    fn coalesce(&self) -> bool {
        false
    }

    /// The egress's name for its latency histogram ([`crate::latency::egress`]): `rtmp`,
    /// `rtsp`, `srt`; empty for none.
    fn egress_name(&self) -> &'static str {
        ""
    }

    /// Units (e.g. RTP packets) in one muxed frame, for readers' counters.
    fn units(_data: &Bytes) -> u64
    where
        Self: Sized,
    {
        0
    }
}

impl<F: FnMut(&Frame) -> Option<Bytes> + Send + 'static> Muxer for F {
    fn mux(&mut self, frame: &Frame) -> Option<Bytes> {
        self(frame)
    }
}

/// Frames taken from the source per wake-up at most: frames that arrived together (audio and
/// video of one publisher read) leave together, in one write per reader.
const MAX_BATCH: usize = 64;
/// How much longer than `audioCoalesce` a held frame may wait when the publisher sends nothing
/// after it (with the publisher's next frame, it leaves at once once it has waited
/// `audioCoalesce`).
const HOLD_SLACK: std::time::Duration = std::time::Duration::from_millis(200);
/// Buffers per vectored write (Linux takes up to 1024).
const MAX_IOV: usize = 128;

/// One format's muxer for one stream, shared by its readers. Dropped with its last reader.
pub struct Egress {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    /// The stream this egress reads, whose stats count its readers' skips.
    source: Weak<Stream>,
    out: Arc<Stream>,
    /// Push readers; replaced (copy on write) when one joins or leaves, so the writer offers a
    /// batch to a snapshot without holding the lock.
    sinks: Mutex<Arc<Vec<Arc<Sink>>>>,
    key_track: Option<TrackId>,
    units: fn(&Bytes) -> u64,
}

impl Shared {
    fn sinks(&self) -> MutexGuard<'_, Arc<Vec<Arc<Sink>>>> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").finish_non_exhaustive()
    }
}

/// Per-stream registry of running egresses, by muxer type (and a key for muxers with
/// per-egress settings).
#[derive(Default)]
pub(crate) struct Egresses(Mutex<Vec<(TypeId, u64, Weak<Egress>)>>);

impl Egresses {
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Stream {
    /// The running egress of muxer type `M` for this stream, or a new one made by `make`.
    /// It runs while a reader holds it.
    pub fn egress<M: Muxer>(self: &Arc<Self>, make: impl FnOnce(&Arc<Stream>) -> M) -> Arc<Egress> {
        self.egress_keyed(0, make)
    }

    /// As [`Stream::egress`], with `key` telling apart egresses of one muxer type with
    /// different settings (e.g. an encryption key).
    pub fn egress_keyed<M: Muxer>(
        self: &Arc<Self>,
        key: u64,
        make: impl FnOnce(&Arc<Stream>) -> M,
    ) -> Arc<Egress> {
        let id = TypeId::of::<M>();
        let mut reg = self.egresses().0.lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|(_, _, w)| w.strong_count() > 0);
        if let Some(e) = reg
            .iter()
            .find(|(t, k, _)| *t == id && *k == key)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return e;
        }
        let muxer = make(self);
        let e = Arc::new(Egress::start(self, muxer));
        reg.push((id, key, Arc::downgrade(&e)));
        e
    }

    /// Egresses of this stream that are running now, its transcoded views' included (for
    /// tests and stats).
    pub fn running_egresses(&self) -> usize {
        let own = {
            let reg = self.egresses().0.lock().unwrap_or_else(|e| e.into_inner());
            reg.iter().filter(|(_, _, w)| w.strong_count() > 0).count()
        };
        own + self.view_egresses()
    }
}

impl Egress {
    fn start<M: Muxer>(source: &Arc<Stream>, mut muxer: M) -> Egress {
        let out = Arc::new(Stream::new(source.desc(), source.config().clone()));
        let key_track = source.key_track();
        let shared = Arc::new(Shared {
            source: Arc::downgrade(source),
            out,
            sinks: Mutex::new(Arc::new(Vec::new())),
            key_track,
            units: M::units,
        });
        let stop = CancellationToken::new();
        let mut src = source.subscribe();
        let task_shared = shared.clone();
        let task_stop = stop.clone();
        let hold = source.config().audio_coalesce;
        let latency = crate::latency::egress(muxer.egress_name());
        tokio::spawn(async move {
            let shared = task_shared;
            let mut received: Vec<std::time::Instant> = Vec::with_capacity(MAX_BATCH);
            let mut batch: Vec<Arc<Frame>> = Vec::with_capacity(MAX_BATCH);
            let mut items: Vec<Item> = Vec::with_capacity(MAX_BATCH);
            let mut ended = false;
            // Held frames (audio) leave with the next key-track frame; once they have waited
            // `hold`, with the next frame of any track; and when the publisher sends nothing
            // more, when `fallback` fires, `HOLD_SLACK` later. The publisher's own frames are
            // the clock: a timer at `hold` would fire, or make the runtime wake up to move it
            // down its timer wheel, about once per held frame (30 to 40 wake-ups a second
            // per stream, most of a one-reader stream's fixed cost). `fallback` lives as long
            // as the task and is only ever pushed later while in use, which tokio does with a
            // compare-and-swap (no timer-wheel lock, no driver wake-up per held frame).
            let fallback = tokio::time::sleep(std::time::Duration::ZERO);
            tokio::pin!(fallback);
            let mut held_since: Option<tokio::time::Instant> = None;
            while !ended {
                let mut due = false;
                tokio::select! {
                    biased;
                    _ = task_stop.cancelled() => break,
                    r = src.recv() => match r {
                        Ok(f) => batch.push(f),
                        Err(RecvError::Closed) => ended = true,
                    },
                    () = &mut fallback, if held_since.is_some() => due = true,
                }
                while !ended && batch.len() < MAX_BATCH {
                    match src.try_recv() {
                        Ok(Some(f)) => batch.push(f),
                        Ok(None) => break,
                        Err(RecvError::Closed) => ended = true,
                    }
                }
                if !hold.is_zero() && !due && !ended && batch.len() < MAX_BATCH && muxer.coalesce()
                {
                    let key = shared.key_track;
                    if !batch.iter().any(|f| Some(f.track) == key) {
                        // Only other tracks' frames: hold them for the next video frame.
                        let now = tokio::time::Instant::now();
                        let since = match held_since {
                            Some(t) => t,
                            None => {
                                held_since = Some(now);
                                fallback.as_mut().reset(now + hold + HOLD_SLACK);
                                now
                            }
                        };
                        if now < since + hold {
                            continue;
                        }
                    }
                }
                held_since = None;
                let mut muxed = Vec::with_capacity(batch.len());
                for f in batch.drain(..) {
                    if let Some(data) = muxer.mux(&f) {
                        items.push(Item {
                            units: (shared.units)(&data),
                            data: data.clone(),
                            join: f.keyframe && Some(f.track) == shared.key_track,
                        });
                        received.push(f.received);
                        muxed.push(Frame {
                            data,
                            ..(*f).clone()
                        });
                    }
                }
                if muxed.is_empty() {
                    continue;
                }
                // The output's GOP cache and the sink list change together, so a joiner gets
                // each frame exactly once: from the cache, or from this offer.
                let sinks = {
                    let g = shared.sinks();
                    for f in muxed {
                        shared.out.write(f);
                    }
                    g.clone()
                };
                let whole = if sinks.is_empty() {
                    None
                } else {
                    contiguous(&mut items)
                };
                count_offers(&sinks, &items, whole.as_ref());
                items.clear();
                // Ingest to the readers' sockets (push) or their queue (pull): once per frame
                // and push reader, or once per frame.
                if let Some(h) = latency {
                    let now = std::time::Instant::now();
                    let n = sinks.len().max(1) as u64;
                    for r in received.drain(..) {
                        h.observe_n(now.saturating_duration_since(r), n);
                    }
                }
                received.clear();
            }
            shared.out.close();
            if ended {
                let sinks = shared.sinks().clone();
                for s in sinks.iter() {
                    s.end();
                }
            }
        });
        Egress { shared, stop }
    }

    /// A pull reader of the muxed output, starting with its GOP cache.
    pub fn subscribe(self: &Arc<Self>) -> EgressReader {
        EgressReader {
            reader: self.shared.out.subscribe(),
            _egress: self.clone(),
        }
    }

    /// A pull reader that starts at the next keyframe (no burst).
    pub fn subscribe_from_next_keyframe(self: &Arc<Self>) -> EgressReader {
        EgressReader {
            reader: self.shared.out.subscribe_from_next_keyframe(),
            _egress: self.clone(),
        }
    }

    /// Adds a push reader: the GOP cache is offered to it at once, then every new batch.
    /// Whatever the sink already holds (a stream head) goes first.
    pub fn attach(self: &Arc<Self>, sink: Arc<Sink>) -> Attached {
        let mut g = self.shared.sinks();
        // A sink may come back after leaving (RTSP PAUSE, then PLAY).
        sink.detached.store(false, Ordering::Relaxed);
        *sink.source.lock().unwrap_or_else(|e| e.into_inner()) = self.shared.source.clone();
        if self.shared.out.is_closed() {
            sink.end();
        } else {
            let gop = self.shared.out.gop_snapshot();
            if gop.is_empty() {
                sink.lock().resync = true;
            } else {
                let items: Vec<Item> = gop
                    .iter()
                    .map(|f| Item {
                        units: (self.shared.units)(&f.data),
                        data: f.data.clone(),
                        join: f.keyframe && Some(f.track) == self.shared.key_track,
                    })
                    .collect();
                for chunk in items.chunks(MAX_BATCH) {
                    let n = sink.offer(chunk, None);
                    sink.count_path(n);
                }
            }
            let mut list = Vec::with_capacity(g.len() + 1);
            list.extend(g.iter().cloned());
            list.push(sink.clone());
            *g = Arc::new(list);
        }
        drop(g);
        Attached {
            egress: self.clone(),
            sink,
        }
    }

    /// The muxed frames (their `data` is the wire bytes), for per-egress state kept with
    /// [`Stream::extension`] or an egress stacked on this one.
    pub fn output(&self) -> &Arc<Stream> {
        &self.shared.out
    }

    /// Push readers attached now.
    pub fn sinks(&self) -> usize {
        self.shared.sinks().len()
    }
}

/// A pull reader of an egress's output; holds the egress alive.
pub struct EgressReader {
    reader: StreamReader,
    _egress: Arc<Egress>,
}

impl EgressReader {
    /// The next muxed frame (its `data` is the wire bytes). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Arc<Frame>, RecvError> {
        self.reader.recv().await
    }

    pub fn try_recv(&mut self) -> Result<Option<Arc<Frame>>, RecvError> {
        self.reader.try_recv()
    }

    pub fn skips(&self) -> u64 {
        self.reader.skips()
    }

    pub fn frames_skipped(&self) -> u64 {
        self.reader.frames_skipped()
    }

    /// Frames waiting for this reader.
    pub fn behind(&self) -> u64 {
        self.reader.behind()
    }
}

/// A push reader's place in an egress; leaving drops it from the writer's list.
pub struct Attached {
    egress: Arc<Egress>,
    sink: Arc<Sink>,
}

impl Attached {
    pub fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.sink.detached.store(true, Ordering::Relaxed);
        let mut g = self.egress.shared.sinks();
        let list: Vec<Arc<Sink>> = g
            .iter()
            .filter(|s| !Arc::ptr_eq(s, &self.sink))
            .cloned()
            .collect();
        *g = Arc::new(list);
    }
}

/// A batch of several frames (audio held for the video frame after it) copied once into one
/// buffer, the items becoming slices of it: each reader then gets one plain `send` of one
/// buffer, which costs the kernel less than a vectored `sendmsg` of the pieces (a copy per
/// frame against a cheaper system call per frame and reader).
fn contiguous(items: &mut [Item]) -> Option<Bytes> {
    if items.len() < 2 {
        return None;
    }
    let mut buf = bytes::BytesMut::with_capacity(items.iter().map(|i| i.data.len()).sum());
    for i in items.iter() {
        buf.extend_from_slice(&i.data);
    }
    let whole = buf.freeze();
    let mut at = 0;
    for i in items.iter_mut() {
        let len = i.data.len();
        i.data = whole.slice(at..at + len);
        at += len;
    }
    Some(whole)
}

/// Offers a batch to every push reader and adds what each wrote to its path's counter: once
/// per run of readers that share a counter (all of one path's, usually), not per write.
/// `whole`: the batch's bytes in one buffer, when [`contiguous`] made it.
fn count_offers(sinks: &[Arc<Sink>], items: &[Item], whole: Option<&Bytes>) {
    let mut run: Option<(&Arc<AtomicU64>, u64)> = None;
    for (i, s) in sinks.iter().enumerate() {
        // Two readers ahead: its sink; one ahead: its socket (reached through the sink).
        if let Some(ahead) = sinks.get(i + 2) {
            ahead.warm();
        }
        if let Some(ahead) = sinks.get(i + 1) {
            ahead.io.warm();
        }
        let n = s.offer(items, whole);
        match (&mut run, &s.path_sent) {
            (Some((c, total)), Some(p)) if Arc::ptr_eq(c, p) => *total += n,
            (_, p) => add(std::mem::replace(&mut run, p.as_ref().map(|p| (p, n)))),
        }
    }
    add(run);
}

/// Adds a run's total to its counter.
fn add(run: Option<(&Arc<AtomicU64>, u64)>) {
    if let Some((c, total)) = run.filter(|(_, t)| *t > 0) {
        c.fetch_add(total, Ordering::Relaxed);
    }
}

/// One muxed frame offered to sinks.
#[derive(Clone)]
struct Item {
    data: Bytes,
    /// A keyframe of the key track: a reader may start (or resume) here.
    join: bool,
    /// [`Muxer::units`] of `data`.
    units: u64,
}

/// A socket that takes bytes without waiting.
pub trait SinkIo: Send + Sync + 'static {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// The stream's writer's write: like [`SinkIo::try_write_vectored`], but it may bypass the
    /// runtime's readiness (a plain socket's `send` or `sendmsg`, with no readiness check and
    /// without the `writev` path through the VFS). Its `WouldBlock` leaves the runtime's readiness as it
    /// was, so only the stream's writer uses it; the reader's task, which waits for
    /// writability, writes with `try_write_vectored`, which clears readiness on `WouldBlock`.
    fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.try_write_vectored(bufs)
    }

    /// Loads what the next write reads (see [`Sink::warm`]).
    fn warm(&self) {}

    /// Bytes accepted but not on the socket yet (TLS records waiting).
    fn pending(&self) -> bool {
        false
    }

    /// Pushes what is pending to the socket: `Ok(true)` when nothing is left.
    fn flush(&self) -> io::Result<bool> {
        Ok(true)
    }
}

/// What a reader's task waits on when its transport took nothing: a TCP socket's
/// writability, or a tunnel's room (RTMPT).
pub trait Writable: Send + Sync + 'static {
    fn writable(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + '_>>;
}

impl Writable for tokio::net::TcpStream {
    fn writable(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + '_>> {
        Box::pin(tokio::net::TcpStream::writable(self))
    }
}

impl SinkIo for tokio::net::TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write_vectored(self, bufs)
    }

    fn warm(&self) {
        std::hint::black_box(std::os::fd::AsRawFd::as_raw_fd(self));
    }

    fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // The socket is non-blocking (the runtime set it so). `send` (one buffer) or
        // `sendmsg`, with MSG_NOSIGNAL.
        match bufs {
            [one] => socket2::SockRef::from(self).send(one),
            _ => socket2::SockRef::from(self).send_vectored(bufs),
        }
    }
}

/// A plain TCP socket shared by its connection's task (which reads it and writes its control
/// messages through the [`Sink`]) and a stream's fan-out writer. It reads and writes like a
/// `TcpStream`.
#[derive(Clone)]
pub struct SharedTcp(pub Arc<tokio::net::TcpStream>);

impl SharedTcp {
    pub fn new(s: tokio::net::TcpStream) -> SharedTcp {
        SharedTcp(Arc::new(s))
    }
}

impl tokio::io::AsyncRead for SharedTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let want = dst.len();
            let mut got = 0;
            // A short read means the socket's receive queue is empty: the read readiness is
            // cleared then (as tokio's own `TcpStream` does), so the next read waits for the
            // next data instead of first making a `recv` that returns EAGAIN. `try_io`
            // clears it when the closure says WouldBlock; the bytes read are kept in `got`.
            let r = self.0.try_io(tokio::io::Interest::READABLE, || {
                use std::io::Read;
                got = (&*socket2::SockRef::from(&*self.0)).read(dst)?;
                if got > 0 && got < want {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
            buf.advance(got);
            return std::task::Poll::Ready(Ok(()));
        }
    }
}

impl tokio::io::AsyncWrite for SharedTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        // The socket closes when the last holder drops it.
        std::task::Poll::Ready(Ok(()))
    }
}

/// Transports a connection may run on; a plain TCP one can be handed to the fan-out engine.
pub trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    /// The shared TCP socket under this transport, when it is plain TCP.
    fn shared_tcp(&self) -> Option<SharedTcp> {
        None
    }

    /// What the engine writes to (the socket, or the TLS record layer over it) and the socket
    /// to wait on for writability, when the engine may write to this transport directly.
    fn sink_io(&self) -> Option<(Arc<dyn SinkIo>, Arc<dyn Writable>)> {
        self.shared_tcp()
            .map(|t| (t.0.clone() as Arc<dyn SinkIo>, t.0 as Arc<dyn Writable>))
    }
}

impl Transport for SharedTcp {
    fn shared_tcp(&self) -> Option<SharedTcp> {
        Some(self.clone())
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Transport
    for tokio_rustls::server::TlsStream<S>
{
}

/// A server-side TLS connection whose record layer is shared by its connection's task (which
/// reads, and writes its control messages through the [`Sink`]) and a stream's fan-out writer:
/// the writer seals each batch into TLS records and writes them without a task wake-up per
/// reader, as for plain TCP. Made from a completed `tokio_rustls` handshake.
#[derive(Clone)]
pub struct SharedTls(Arc<TlsInner>);

struct TlsInner {
    tcp: Arc<tokio::net::TcpStream>,
    conn: Mutex<rustls::ServerConnection>,
}

/// `io::Write` over a TCP socket that never waits.
struct TryWrite<'a>(&'a tokio::net::TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.try_write(b)
    }
    fn write_vectored(&mut self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `io::Read` over a TCP socket that never waits.
struct TryRead<'a>(&'a tokio::net::TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(b)
    }
}

impl SharedTls {
    pub fn new(s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> SharedTls {
        let (tcp, conn) = s.into_inner();
        SharedTls(Arc::new(TlsInner {
            tcp: Arc::new(tcp),
            conn: Mutex::new(conn),
        }))
    }

    fn conn(&self) -> MutexGuard<'_, rustls::ServerConnection> {
        self.0.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the records rustls holds; `Ok(true)` when none is left.
    fn push(&self, c: &mut rustls::ServerConnection) -> io::Result<bool> {
        while c.wants_write() {
            match c.write_tls(&mut TryWrite(&self.0.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Plaintext into records, as much as rustls's buffer takes, then records to the socket.
    fn seal(&self, c: &mut rustls::ServerConnection, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use std::io::Write;
        let n = c.writer().write_vectored(bufs)?;
        self.push(c)?;
        Ok(n)
    }
}

impl SinkIo for SharedTls {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut c = self.conn();
        // Records already made go first; while they wait, nothing more is taken.
        if !self.push(&mut c)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.seal(&mut c, bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn pending(&self) -> bool {
        self.conn().wants_write()
    }

    fn flush(&self) -> io::Result<bool> {
        let mut c = self.conn();
        self.push(&mut c)
    }
}

impl tokio::io::AsyncRead for SharedTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::io::Read;
        loop {
            {
                let mut c = self.conn();
                match c.reader().read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        // Ok(0): the peer's close_notify, the end of the stream.
                        buf.advance(n);
                        return std::task::Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return std::task::Poll::Ready(Err(e)),
                }
            }
            std::task::ready!(self.0.tcp.poll_read_ready(cx))?;
            let mut c = self.conn();
            match c.read_tls(&mut TryRead(&self.0.tcp)) {
                // The peer closed the socket: rustls's reader says how (clean or cut).
                Ok(0) => {}
                Ok(_) => {
                    let state = c.process_new_packets();
                    // Alerts and key updates rustls wants to send go out if they can.
                    let _ = self.push(&mut c);
                    state.map_err(io::Error::other)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for SharedTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            match SinkIo::try_write_vectored(&*self, bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.0.tcp.poll_write_ready(cx))?;
                }
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            if SinkIo::flush(&*self)? {
                return std::task::Poll::Ready(Ok(()));
            }
            std::task::ready!(self.0.tcp.poll_write_ready(cx))?;
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.conn().send_close_notify();
        self.poll_flush(cx)
    }
}

impl Transport for SharedTls {
    fn sink_io(&self) -> Option<(Arc<dyn SinkIo>, Arc<dyn Writable>)> {
        Some((
            Arc::new(self.clone()) as Arc<dyn SinkIo>,
            self.0.tcp.clone() as Arc<dyn Writable>,
        ))
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Transport
    for tokio_rustls::client::TlsStream<S>
{
}

impl Transport for tokio::net::TcpStream {}

/// Bounds of one push reader's private queue.
#[derive(Clone, Copy, Debug)]
pub struct SinkLimits {
    /// Media frames waiting; past this the reader skips to the next keyframe.
    pub max_frames: usize,
    /// Bytes waiting (media and control); past this the media is dropped.
    pub max_bytes: usize,
}

impl Default for SinkLimits {
    fn default() -> Self {
        SinkLimits {
            max_frames: 1024,
            max_bytes: 64 << 20,
        }
    }
}

struct Queued {
    data: Bytes,
    media: bool,
}

#[derive(Default)]
struct SinkState {
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    queued_media: usize,
    /// The front entry is partly written: it must go whole before anything else.
    front_partial: bool,
    /// Dropping media until the next join point.
    resync: bool,
    /// The stream ended: once the queue is empty the reader is done.
    ended: bool,
    failed: Option<io::ErrorKind>,
    skips: u64,
    frames_skipped: u64,
}

/// What a push reader's task should do next (see [`Sink::wanted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkStatus {
    /// Bytes wait for the socket to be writable: call [`Sink::drain`] when it is.
    Backlog,
    /// The stream ended and everything was written.
    Ended,
    /// A write failed; close the connection.
    Failed(io::ErrorKind),
    /// Nothing to do.
    Idle,
}

impl crate::ReaderProbe for Sink {
    fn figures(&self) -> crate::ReaderFigures {
        Sink::figures(self)
    }
}

/// A push reader's socket and private queue.
///
/// In declaration order (`repr(C)`): what the stream's writer touches for each write comes
/// first, so that it spans as few cache lines as it can; [`Sink::warm`] loads them ahead.
#[repr(C)]
pub struct Sink {
    detached: AtomicBool,
    state: Mutex<SinkState>,
    io: Arc<dyn SinkIo>,
    sent: AtomicU64,
    units: AtomicU64,
    /// The path's bytes-sent counter this reader adds to (see [`Sink::counting`]).
    path_sent: Option<Arc<AtomicU64>>,
    notify: Notify,
    limits: SinkLimits,
    /// The stream whose stats count this reader's skips (the API's `readerSkips`).
    source: Mutex<Weak<Stream>>,
}

impl Sink {
    pub fn new(io: Arc<dyn SinkIo>, limits: SinkLimits) -> Sink {
        Sink {
            io,
            state: Mutex::new(SinkState::default()),
            notify: Notify::new(),
            limits,
            detached: AtomicBool::new(false),
            source: Mutex::new(Weak::new()),
            sent: AtomicU64::new(0),
            units: AtomicU64::new(0),
            path_sent: None,
        }
    }

    /// Adds the bytes this reader writes to `path_sent` (a path's counter, shared by its
    /// readers). The stream's writer adds once per batch for all the readers that share one
    /// counter, not once per write: a counter touched after every write to every reader is a
    /// cache line fetched a thousand times per frame at a thousand readers. The connection's
    /// own count reads [`Sink::bytes_sent`] ([`crate::Counters::count_sink`]).
    pub fn counting(mut self, path_sent: Arc<AtomicU64>) -> Sink {
        self.path_sent = Some(path_sent);
        self
    }

    /// Loads what the next write to this reader reads (plain loads, whose values are not
    /// used), so that the memory arrives while the writer is busy with the readers before it.
    /// At a thousand readers those lines are out of the cache by the next frame; fetched one
    /// by one, each write waits for them in turn.
    fn warm(&self) {
        std::hint::black_box(self.detached.load(Ordering::Relaxed));
        std::hint::black_box(self.sent.load(Ordering::Relaxed));
        std::hint::black_box(self.path_sent.is_some());
    }

    fn count_path(&self, n: u64) {
        if let (Some(c), true) = (&self.path_sent, n > 0) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes written to the socket so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// [`Muxer::units`] of the frames handed to the socket (or to its queue) so far.
    pub fn units_sent(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    /// Times this reader fell behind and skipped to a keyframe.
    pub fn skips(&self) -> u64 {
        self.lock().skips
    }

    /// Media frames this reader lost by falling behind.
    pub fn frames_skipped(&self) -> u64 {
        self.lock().frames_skipped
    }

    /// What waits for this reader now, and what it lost (the API's per-reader figures).
    pub fn figures(&self) -> crate::ReaderFigures {
        let st = self.lock();
        crate::ReaderFigures {
            queued_frames: st.queued_media as u64,
            queued_bytes: st.queued_bytes as u64,
            skips: st.skips,
            frames_discarded: st.frames_skipped,
        }
    }

    /// Bytes of the reader's own (control messages, a stream head): sent in order with the
    /// media, never dropped.
    pub fn send_control(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let mut st = self.lock();
        if st.failed.is_some() {
            return;
        }
        if st.queue.is_empty() {
            let slices = [IoSlice::new(&data)];
            let written = self.write_now(&slices, false);
            if let Ok(n) = written {
                self.count_path(n as u64);
            }
            match written {
                Ok(n) if n == data.len() && !self.io.pending() => return,
                Ok(n) if n == data.len() => {}
                Ok(n) => {
                    st.front_partial = n > 0;
                    Self::push(&mut st, data.slice(n..), false);
                }
                Err(e) => st.failed = Some(e.kind()),
            }
        } else {
            Self::push(&mut st, data, false);
            self.check_bounds(&mut st);
        }
        drop(st);
        self.notify.notify_one();
    }

    fn push(st: &mut SinkState, data: Bytes, media: bool) {
        st.queued_bytes += data.len();
        st.queued_media += usize::from(media);
        st.queue.push_back(Queued { data, media });
    }

    /// One non-blocking vectored write; `Ok(0)` when the socket takes nothing now. `fast`: the
    /// stream's writer's write ([`SinkIo::send_now`]).
    fn write_now(&self, slices: &[IoSlice<'_>], fast: bool) -> io::Result<usize> {
        loop {
            let r = if fast {
                self.io.send_now(slices)
            } else {
                self.io.try_write_vectored(slices)
            };
            match r {
                Ok(0) if !slices.iter().all(|s| s.is_empty()) => {
                    return Err(io::ErrorKind::WriteZero.into())
                }
                Ok(n) => {
                    if n > 0 {
                        self.sent.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Offers muxed frames: written at once if the socket takes them, else queued (bounded).
    /// Returns the bytes written now (for the path's counter: the caller adds them). `whole`:
    /// the items' bytes in one buffer (the items are slices of it, in order).
    fn offer(&self, items: &[Item], whole: Option<&Bytes>) -> u64 {
        if self.detached.load(Ordering::Relaxed) {
            return 0;
        }
        let mut st = self.lock();
        if st.failed.is_some() || st.ended {
            return 0;
        }
        let mut items = items;
        let mut whole = whole;
        if st.resync {
            match items.iter().position(|i| i.join) {
                // Frames passed over while waiting for a keyframe are not counted: the skip
                // that started the wait counted what was lost (as the ring's readers do).
                Some(at) => {
                    st.resync = false;
                    items = &items[at..];
                    if at > 0 {
                        whole = None;
                    }
                }
                None => return 0,
            }
        }
        if items.is_empty() {
            return 0;
        }
        self.units
            .fetch_add(items.iter().map(|i| i.units).sum(), Ordering::Relaxed);
        let mut wake = false;
        let mut written = 0u64;
        if st.queue.is_empty() {
            // The common case: the socket takes the whole batch in one system call.
            let mut done = 0; // items written whole
            let mut partial = 0; // bytes of items[done] written
                                 // On the stack: no allocation per reader per batch.
            let mut slices = [IoSlice::new(&[]); MAX_BATCH];
            'write: while done < items.len() {
                let mut count = 1;
                match whole {
                    // The first write, of the batch in one buffer.
                    Some(w) if done == 0 && partial == 0 => slices[0] = IoSlice::new(w),
                    _ => {
                        slices[0] = IoSlice::new(&items[done].data[partial..]);
                        for i in &items[done + 1..] {
                            if count == MAX_BATCH {
                                break;
                            }
                            slices[count] = IoSlice::new(&i.data);
                            count += 1;
                        }
                    }
                }
                let mut n = match self.write_now(&slices[..count], true) {
                    Ok(0) => break 'write,
                    Ok(n) => n,
                    Err(e) => {
                        st.failed = Some(e.kind());
                        drop(st);
                        self.notify.notify_one();
                        return written;
                    }
                };
                written += n as u64;
                while n > 0 && done < items.len() {
                    let left = items[done].data.len() - partial;
                    if n >= left {
                        n -= left;
                        done += 1;
                        partial = 0;
                    } else {
                        partial += n;
                        n = 0;
                    }
                }
            }
            if done == items.len() && self.io.pending() {
                // TLS records made but not on the socket yet: the reader's task pushes them.
                wake = true;
            }
            if done < items.len() {
                st.front_partial = partial > 0;
                Self::push(&mut st, items[done].data.slice(partial..), true);
                for i in &items[done + 1..] {
                    Self::push(&mut st, i.data.clone(), true);
                }
                wake = true;
            }
        } else {
            for i in items {
                Self::push(&mut st, i.data.clone(), true);
            }
            self.check_bounds(&mut st);
        }
        drop(st);
        if wake {
            self.notify.notify_one();
        }
        written
    }

    /// Past the bounds, the queued media goes (but a partly written frame and control bytes
    /// stay) and the reader resumes at the next keyframe.
    fn check_bounds(&self, st: &mut SinkState) {
        if st.queued_media <= self.limits.max_frames && st.queued_bytes <= self.limits.max_bytes {
            return;
        }
        let before = st.queue.len();
        let keep_front = if st.front_partial {
            st.queue.pop_front()
        } else {
            None
        };
        let mut dropped = 0u64;
        st.queue.retain(|q| {
            if q.media {
                dropped += 1;
            }
            !q.media
        });
        if let Some(f) = keep_front {
            st.queue.push_front(f);
        }
        st.queued_bytes = st.queue.iter().map(|q| q.data.len()).sum();
        st.queued_media = st.queue.iter().filter(|q| q.media).count();
        st.resync = true;
        self.count_skip(st, 1, dropped);
        tracing::warn!(
            frames_lost = dropped,
            queued = before,
            "reader fell behind the stream; skipping to the next keyframe"
        );
    }

    /// Counts skips and skipped frames here and on the stream (the API's `readerSkips`).
    fn count_skip(&self, st: &mut SinkState, skips: u64, frames: u64) {
        st.skips += skips;
        st.frames_skipped += frames;
        let source = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade();
        if let Some(source) = source {
            let stats = source.stats();
            stats.reader_skips.fetch_add(skips, Ordering::Relaxed);
            stats.frames_skipped.fetch_add(frames, Ordering::Relaxed);
        }
    }

    /// Writes what waits, as far as the socket takes it: `Ok(true)` when nothing is left.
    pub fn drain(&self) -> io::Result<bool> {
        let mut st = self.lock();
        if let Some(kind) = st.failed {
            return Err(kind.into());
        }
        loop {
            if st.queue.is_empty() {
                return match self.io.flush() {
                    Ok(done) => Ok(done),
                    Err(e) => {
                        st.failed = Some(e.kind());
                        Err(e)
                    }
                };
            }
            let slices: Vec<IoSlice<'_>> = st
                .queue
                .iter()
                .take(MAX_IOV)
                .map(|q| IoSlice::new(&q.data))
                .collect();
            let mut n = match self.write_now(&slices, false) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.count_path(n as u64);
                    n
                }
                Err(e) => {
                    st.failed = Some(e.kind());
                    return Err(e);
                }
            };
            drop(slices);
            while n > 0 {
                let Some(front) = st.queue.front_mut() else {
                    break;
                };
                let len = front.data.len();
                if n >= len {
                    let Some(q) = st.queue.pop_front() else {
                        break;
                    };
                    st.queued_bytes -= len;
                    st.queued_media -= usize::from(q.media);
                    st.front_partial = false;
                    n -= len;
                } else {
                    front.data = front.data.slice(n..);
                    st.queued_bytes -= n;
                    st.front_partial = true;
                    n = 0;
                }
            }
        }
    }

    /// Writes the queue as `socket` (the one under this sink) becomes writable, until it is
    /// empty: `Ok(None)` when done, `Ok(Some(limit))` when `limit` passed first.
    pub async fn drain_within(
        &self,
        socket: &dyn Writable,
        limit: std::time::Duration,
    ) -> io::Result<Option<std::time::Duration>> {
        let drained = tokio::time::timeout(limit, async {
            while !self.drain()? {
                socket.writable().await?;
            }
            Ok::<(), io::Error>(())
        })
        .await;
        match drained {
            Ok(r) => r.map(|()| None),
            Err(_) => Ok(Some(limit)),
        }
    }

    fn end(&self) {
        self.lock().ended = true;
        self.notify.notify_one();
    }

    /// What the reader's task must do now.
    pub fn status(&self) -> SinkStatus {
        let st = self.lock();
        if let Some(kind) = st.failed {
            SinkStatus::Failed(kind)
        } else if !st.queue.is_empty() || self.io.pending() {
            SinkStatus::Backlog
        } else if st.ended {
            SinkStatus::Ended
        } else {
            SinkStatus::Idle
        }
    }

    /// Resolves when [`Sink::status`] is not `Idle`.
    pub async fn wanted(&self) -> SinkStatus {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.status() {
                SinkStatus::Idle => notified.await,
                s => return s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{CodecParams, StreamDesc, Track};
    use crate::stream::StreamConfig;
    use std::time::{Duration, Instant};

    fn desc() -> StreamDesc {
        StreamDesc {
            tracks: vec![Track {
                id: 0,
                params: CodecParams::H264 {
                    sps: Bytes::from_static(b"sps"),
                    pps: Bytes::from_static(b"pps"),
                },
                clock_rate: 90_000,
            }],
        }
    }

    fn video(n: i64, gop: i64) -> Frame {
        Frame {
            track: 0,
            pts: n * 3000,
            dts: n * 3000,
            keyframe: n % gop == 0,
            data: Bytes::from(n.to_be_bytes().to_vec()),
            received: Instant::now(),
            params: None,
        }
    }

    /// A socket that takes up to `room` bytes, then blocks until given more room.
    #[derive(Default)]
    struct Pipe {
        got: Mutex<Vec<u8>>,
        room: Mutex<usize>,
        calls: AtomicU64,
        /// The number of buffers of each write.
        shapes: Mutex<Vec<usize>>,
    }

    impl Pipe {
        fn open() -> Arc<Pipe> {
            let p = Arc::new(Pipe::default());
            *p.room.lock().unwrap() = usize::MAX;
            p
        }
        fn stalled() -> Arc<Pipe> {
            Arc::new(Pipe::default())
        }
        /// The 8-byte frame numbers received.
        fn frames(&self) -> Vec<i64> {
            self.got
                .lock()
                .unwrap()
                .chunks(8)
                .map(|c| i64::from_be_bytes(c.try_into().unwrap()))
                .collect()
        }
    }

    impl SinkIo for Pipe {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.shapes.lock().unwrap().push(bufs.len());
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut got = self.got.lock().unwrap();
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(*room);
                got.extend_from_slice(&b[..take]);
                *room -= take;
                n += take;
                if *room == 0 {
                    break;
                }
            }
            Ok(n)
        }
    }

    fn config() -> StreamConfig {
        StreamConfig {
            ring_capacity: 64,
            gop_cache_max_frames: 64,
            gop_cache_max_bytes: 1 << 20,
            ..StreamConfig::default()
        }
    }

    /// The egress's output so far: frame number n becomes its 8 bytes.
    fn muxer() -> impl Muxer {
        |f: &Frame| Some(f.data.clone())
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_joiner_starts_on_the_egress_keyframe_and_gets_each_frame_once() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let first = Arc::new(Sink::new(Pipe::open(), SinkLimits::default()));
        let _a = egress.attach(first.clone());
        for n in 0..13 {
            stream.write(video(n, 5));
        }
        until("frames through the egress", || {
            egress.shared.out.stats().frames_in.load(Ordering::Relaxed) == 13
        })
        .await;
        let mut r = egress.subscribe();
        // A late push reader gets the GOP cache (frames 10, 11, 12), then the rest.
        let pipe = Pipe::open();
        let late = Arc::new(Sink::new(pipe.clone(), SinkLimits::default()));
        let _b = egress.attach(late);
        stream.write(video(13, 5));
        until("frame 13", || pipe.frames().last() == Some(&13)).await;
        assert_eq!(pipe.frames(), vec![10, 11, 12, 13]);
        // A late pull reader starts at the same join point.
        let mut seen = Vec::new();
        while seen.last() != Some(&13) {
            let f = tokio::time::timeout(Duration::from_secs(5), r.recv())
                .await
                .unwrap()
                .unwrap();
            seen.push(i64::from_be_bytes(f.data[..].try_into().unwrap()));
        }
        assert_eq!(seen.first(), Some(&10));
    }

    #[tokio::test]
    async fn readers_bytes_count_once_for_their_path_and_for_their_connection() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let path = Arc::new(AtomicU64::new(0));
        let other = Arc::new(AtomicU64::new(0));
        let (a, b, c) = (Pipe::open(), Pipe::open(), Pipe::open());
        let sa = Arc::new(Sink::new(a.clone(), SinkLimits::default()).counting(path.clone()));
        let sb = Arc::new(Sink::new(b.clone(), SinkLimits::default()).counting(path.clone()));
        let sc = Arc::new(Sink::new(c.clone(), SinkLimits::default()).counting(other.clone()));
        // A head written by the reader's own task counts too.
        sa.send_control(Bytes::from_static(b"headhead"));
        let counters = Arc::new(crate::conns::Counters::default());
        counters.sent.fetch_add(100, Ordering::Relaxed); // the handshake, written before
        let counted = counters.count_sink(&sa);
        let (_a, _b, _c) = (
            egress.attach(sa.clone()),
            egress.attach(sb.clone()),
            egress.attach(sc.clone()),
        );
        for n in 0..6 {
            stream.write(video(n, 3));
        }
        until("frame 5 at every reader", || {
            [&a, &b, &c].iter().all(|p| p.frames().last() == Some(&5))
        })
        .await;
        let got = |p: &Pipe| p.got.lock().unwrap().len() as u64;
        assert_eq!(sa.bytes_sent(), got(&a));
        assert_eq!(got(&a), 8 + 6 * 8);
        assert_eq!(path.load(Ordering::Relaxed), got(&a) + got(&b));
        assert_eq!(other.load(Ordering::Relaxed), got(&c));
        // The connection's count reads the sink's, and keeps it when the sink goes.
        assert_eq!(counters.bytes_sent(), 100 + got(&a));
        drop(counted);
        drop((_a, sa));
        assert_eq!(counters.bytes_sent(), 100 + got(&a));
    }

    #[tokio::test]
    async fn a_batch_leaves_in_one_buffer_and_a_full_socket_resumes_it_where_it_stopped() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let (open, cut) = (Pipe::open(), Pipe::stalled());
        *cut.room.lock().unwrap() = 20; // two frames and a half
        let whole = Arc::new(Sink::new(open.clone(), SinkLimits::default()));
        let partial = Arc::new(Sink::new(cut.clone(), SinkLimits::default()));
        let (_a, _b) = (egress.attach(whole), egress.attach(partial.clone()));
        // Written before the egress's task runs: one batch of five frames.
        for n in 0..5 {
            stream.write(video(n, 5));
        }
        until("the batch", || open.frames().len() == 5).await;
        assert_eq!(
            *open.shapes.lock().unwrap(),
            vec![1],
            "one write of one buffer"
        );
        assert_eq!(cut.got.lock().unwrap().len(), 20);
        assert_eq!(partial.status(), SinkStatus::Backlog);
        *cut.room.lock().unwrap() = usize::MAX;
        assert!(partial.drain().unwrap());
        assert_eq!(cut.frames(), vec![0, 1, 2, 3, 4]);
        assert_eq!(partial.bytes_sent(), 40);
    }

    #[tokio::test]
    async fn a_reader_before_any_keyframe_waits_for_one() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let pipe = Pipe::open();
        let _a = egress.attach(Arc::new(Sink::new(pipe.clone(), SinkLimits::default())));
        for n in 1..8 {
            stream.write(video(n, 5));
        }
        until("frame 7", || pipe.frames().last() == Some(&7)).await;
        assert_eq!(pipe.frames(), vec![5, 6, 7]);
    }

    #[tokio::test]
    async fn a_stalled_reader_delays_nobody_and_resumes_at_a_keyframe() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let limits = SinkLimits {
            max_frames: 16,
            max_bytes: 1 << 20,
        };
        let (fast_pipe, slow_pipe) = (Pipe::open(), Pipe::stalled());
        // The stalled socket takes 12 bytes: one frame and half of the next.
        *slow_pipe.room.lock().unwrap() = 12;
        let slow = Arc::new(Sink::new(slow_pipe.clone(), limits));
        let _a = egress.attach(Arc::new(Sink::new(fast_pipe.clone(), limits)));
        let _b = egress.attach(slow.clone());
        let total = 2_000;
        for n in 0..total {
            // The publisher never waits, whatever the stalled reader does.
            let t = Instant::now();
            stream.write(video(n, 30));
            assert!(t.elapsed() < Duration::from_millis(100));
            if n % 32 == 0 {
                let want = n;
                until("the fast reader", || {
                    fast_pipe.frames().last() == Some(&want)
                })
                .await;
            }
        }
        until("the fast reader", || {
            fast_pipe.frames().len() == total as usize
        })
        .await;
        assert_eq!(
            fast_pipe.frames(),
            (0..total).collect::<Vec<_>>(),
            "the fast reader lost nothing"
        );
        // The stalled one's queue stayed bounded...
        {
            let st = slow.lock();
            assert!(
                st.queued_media <= limits.max_frames + 1,
                "{}",
                st.queued_media
            );
            assert!(st.skips >= 1);
            assert!(st.frames_skipped > 0);
            // Counted on the stream too, as the API and metrics show it.
            assert_eq!(
                stream.stats().reader_skips.load(Ordering::Relaxed),
                st.skips
            );
            assert_eq!(
                stream.stats().frames_skipped.load(Ordering::Relaxed),
                st.frames_skipped
            );
        }
        assert_eq!(slow.status(), SinkStatus::Backlog);
        // ...and once the socket drains, it gets the partly written frame whole, then resumes
        // on a keyframe.
        *slow_pipe.room.lock().unwrap() = usize::MAX;
        assert!(slow.drain().unwrap());
        stream.write(video(total, 30));
        let next_key = (total + 29) / 30 * 30;
        for n in total + 1..=next_key + 2 {
            stream.write(video(n, 30));
        }
        until("the stalled reader to resume", || {
            slow_pipe.frames().last() == Some(&(next_key + 2))
        })
        .await;
        let frames = slow_pipe.frames();
        assert_eq!(&frames[..2], &[0, 1], "the partly written frame went whole");
        let resumed = frames.iter().position(|&n| n >= 2 && n % 30 == 0).unwrap();
        for w in frames[resumed..].windows(2) {
            assert_eq!(w[1], w[0] + 1, "after the skip, no hole");
        }
        assert!(frames[2..resumed].len() <= limits.max_frames + 1);
    }

    #[tokio::test]
    async fn control_bytes_keep_their_order_and_are_never_dropped() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let pipe = Pipe::stalled();
        let limits = SinkLimits {
            max_frames: 4,
            max_bytes: 1 << 20,
        };
        let sink = Arc::new(Sink::new(pipe.clone(), limits));
        sink.send_control(Bytes::from(100i64.to_be_bytes().to_vec()));
        let _a = egress.attach(sink.clone());
        for n in 0..20 {
            stream.write(video(n, 30));
        }
        until("frames queued", || sink.lock().frames_skipped > 0).await;
        sink.send_control(Bytes::from(200i64.to_be_bytes().to_vec()));
        *pipe.room.lock().unwrap() = usize::MAX;
        assert!(sink.drain().unwrap());
        let frames = pipe.frames();
        assert_eq!(frames.first(), Some(&100));
        assert_eq!(frames.last(), Some(&200));
    }

    #[tokio::test]
    async fn the_muxer_goes_with_its_last_reader() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let muxed = Arc::new(AtomicU64::new(0));
        let count = muxed.clone();
        let make = move || {
            let count = count.clone();
            move |f: &Frame| {
                count.fetch_add(1, Ordering::Relaxed);
                Some(f.data.clone())
            }
        };
        let e1 = stream.egress(|_| make());
        let e2 = stream.egress(|_| make());
        assert!(Arc::ptr_eq(&e1, &e2), "one muxer per format and stream");
        let r = e1.subscribe();
        let a = e2.attach(Arc::new(Sink::new(Pipe::open(), SinkLimits::default())));
        drop((e1, e2));
        stream.write(video(0, 5));
        until("the frame muxed", || muxed.load(Ordering::Relaxed) == 1).await;
        assert_eq!(stream.running_egresses(), 1);
        drop(r);
        assert_eq!(stream.running_egresses(), 1, "a push reader still holds it");
        drop(a);
        assert_eq!(stream.running_egresses(), 0);
        // Its task is gone: frames written now are muxed by nobody.
        for n in 1..10 {
            stream.write(video(n, 5));
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(muxed.load(Ordering::Relaxed), 1);
        // A new reader starts a new muxer, on the source's GOP cache.
        let e3 = stream.egress(|_| make());
        let pipe = Pipe::open();
        let _b = e3.attach(Arc::new(Sink::new(pipe.clone(), SinkLimits::default())));
        stream.write(video(10, 5));
        until("a frame", || pipe.frames().last() == Some(&10)).await;
        assert_eq!(pipe.frames(), vec![5, 6, 7, 8, 9, 10]);
    }

    #[tokio::test]
    async fn push_readers_end_with_the_stream() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let sink = Arc::new(Sink::new(Pipe::open(), SinkLimits::default()));
        let _a = egress.attach(sink.clone());
        stream.write(video(0, 5));
        stream.close();
        let s = tokio::time::timeout(Duration::from_secs(5), sink.wanted())
            .await
            .unwrap();
        assert_eq!(s, SinkStatus::Ended);
        // A reader attaching after the end is told at once.
        let late = Arc::new(Sink::new(Pipe::open(), SinkLimits::default()));
        let _b = egress.attach(late.clone());
        assert_eq!(late.status(), SinkStatus::Ended);
    }

    #[tokio::test]
    async fn a_batch_leaves_in_one_write() {
        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let pipe = Pipe::open();
        let _a = egress.attach(Arc::new(Sink::new(pipe.clone(), SinkLimits::default())));
        // Frames written together (one publisher read) reach the socket in one call.
        for n in 0..10 {
            stream.write(video(n, 30));
        }
        until("10 frames", || pipe.frames().len() == 10).await;
        assert_eq!(pipe.calls.load(Ordering::Relaxed), 1);
    }

    /// A muxer that holds audio for the next video frame while its flag is set: RTMP's always,
    /// WHEP's from many viewers on.
    struct HoldsWhen(Arc<AtomicBool>);

    impl Muxer for HoldsWhen {
        fn mux(&mut self, frame: &Frame) -> Option<Bytes> {
            Some(frame.data.clone())
        }
        fn coalesce(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    /// A muxer that always holds audio, as RTMP's does.
    fn coalescing() -> HoldsWhen {
        HoldsWhen(Arc::new(AtomicBool::new(true)))
    }

    /// A stream of video (track 0) and Opus (track 1), and a reader's pipe on the egress that
    /// `muxer` makes.
    fn av_egress(muxer: HoldsWhen) -> (Arc<Stream>, Arc<Egress>, Arc<Pipe>, Attached) {
        let mut d = desc();
        d.tracks.push(Track {
            id: 1,
            params: CodecParams::Opus { channels: 2 },
            clock_rate: 48_000,
        });
        let stream = Arc::new(Stream::new(d, config()));
        let egress = stream.egress(|_| muxer);
        let pipe = Pipe::open();
        let a = egress.attach(Arc::new(Sink::new(pipe.clone(), SinkLimits::default())));
        (stream, egress, pipe, a)
    }

    /// Frame number `n` on track 1 (audio).
    fn audio(n: i64) -> Frame {
        Frame {
            track: 1,
            keyframe: true,
            ..video(n, 1)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn audio_waits_for_the_next_video_frame_at_most_audio_coalesce() {
        let (stream, _egress, pipe, _a) = av_egress(coalescing());
        assert_eq!(stream.config().audio_coalesce, Duration::from_millis(50));
        let calls = || pipe.calls.load(Ordering::Relaxed);
        stream.write(video(0, 30));
        until("the video frame", || pipe.frames() == [0]).await;
        assert_eq!(calls(), 1);
        // Audio alone is held...
        stream.write(audio(100));
        stream.write(audio(101));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipe.frames(), [0]);
        // ...and leaves with the next video frame, in order, in one write.
        stream.write(video(1, 30));
        until("audio and video", || pipe.frames().len() == 4).await;
        assert_eq!(pipe.frames(), [0, 100, 101, 1]);
        assert_eq!(calls(), 2);
        // Without video, audio that has waited audio_coalesce leaves with the next frame
        // of any track...
        stream.write(audio(102));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipe.frames().len(), 4);
        tokio::time::advance(Duration::from_millis(51)).await;
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipe.frames().len(), 4, "no timer fires at audio_coalesce");
        stream.write(audio(103));
        until("the held audio", || pipe.frames().len() == 6).await;
        assert_eq!(pipe.frames()[4..], [102, 103]);
        assert_eq!(calls(), 3);
        // ...and when the publisher sends nothing more, HOLD_SLACK later.
        stream.write(audio(104));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_millis(50) + HOLD_SLACK - Duration::from_millis(2))
            .await;
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipe.frames().len(), 6);
        tokio::time::advance(Duration::from_millis(3)).await;
        until("the last held audio", || pipe.frames().len() == 7).await;
        assert_eq!(pipe.frames()[6], 104);
        assert_eq!(calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_muxer_that_holds_only_sometimes_is_asked_per_batch() {
        let hold = Arc::new(AtomicBool::new(false));
        let (stream, _egress, pipe, _a) = av_egress(HoldsWhen(hold.clone()));
        stream.write(video(0, 30));
        until("the video frame", || pipe.frames() == [0]).await;
        // Not holding: audio leaves on its own.
        stream.write(audio(100));
        until("the audio frame", || pipe.frames() == [0, 100]).await;
        // Holding: audio waits for the next video frame and leaves in its write.
        hold.store(true, Ordering::Relaxed);
        stream.write(audio(101));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipe.frames(), [0, 100]);
        let calls = pipe.calls.load(Ordering::Relaxed);
        stream.write(video(1, 30));
        until("audio and video", || pipe.frames() == [0, 100, 101, 1]).await;
        assert_eq!(pipe.calls.load(Ordering::Relaxed), calls + 1);
        // Held audio leaves with the next frame once the muxer stops holding.
        stream.write(audio(102));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipe.frames().len(), 4);
        hold.store(false, Ordering::Relaxed);
        stream.write(audio(103));
        until("both audio frames", || pipe.frames().len() == 6).await;
        assert_eq!(pipe.frames()[4..], [102, 103]);
    }

    /// A stream without video has nothing to hold its audio for: its first track is its key
    /// track, so every frame leaves at once.
    #[tokio::test(start_paused = true)]
    async fn audio_of_a_stream_without_video_is_not_held() {
        let d = StreamDesc {
            tracks: vec![Track {
                id: 1,
                params: CodecParams::Opus { channels: 2 },
                clock_rate: 48_000,
            }],
        };
        let stream = Arc::new(Stream::new(d, config()));
        let egress = stream.egress(|_| coalescing());
        let pipe = Pipe::open();
        let _a = egress.attach(Arc::new(Sink::new(pipe.clone(), SinkLimits::default())));
        let start = tokio::time::Instant::now();
        for n in 0..3 {
            stream.write(Frame {
                track: 1,
                keyframe: true,
                ..video(n, 1)
            });
            until("the audio frame", || pipe.frames().len() == n as usize + 1).await;
        }
        assert_eq!(pipe.frames(), [0, 1, 2]);
        // The paused clock never moved: nothing waited for a timer.
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// An RTMPS-like reader: a TLS connection whose record layer the egress writer shares. A
    /// client that does not read at first makes the socket and rustls's buffer fill; the rest
    /// waits in the sink (sealed records first), and once the client reads, the reader's task
    /// drains it: every frame arrives, in order, and the server still reads the client.
    #[tokio::test]
    async fn tls_readers_are_written_by_the_egress_under_backpressure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg))
            .accept(tcp)
            .await
            .unwrap();
        let mut client = connect.await.unwrap();
        let mut shared = SharedTls::new(tls);
        let (io, socket) = shared.sink_io().unwrap();

        let stream = Arc::new(Stream::new(desc(), config()));
        let egress = stream.egress(|_| muxer());
        let limits = SinkLimits {
            max_frames: 100_000,
            max_bytes: 1 << 30,
        };
        let sink = Arc::new(Sink::new(io, limits));
        sink.send_control(Bytes::from_static(b"HEAD"));
        let _a = egress.attach(sink.clone());
        // 400 frames of 16 KiB (6.4 MB): far more than the socket and rustls hold.
        const SIZE: usize = 16 * 1024;
        const FRAMES: i64 = 400;
        for n in 0..FRAMES {
            let mut data = vec![(n % 251) as u8; SIZE];
            data[..8].copy_from_slice(&n.to_be_bytes());
            stream.write(Frame {
                data: Bytes::from(data),
                ..video(n, 1000)
            });
            tokio::task::yield_now().await;
        }
        until("a backlog", || sink.status() == SinkStatus::Backlog).await;
        // The reader's task: drains when asked, within a bound.
        let drainer = {
            let sink = sink.clone();
            tokio::spawn(async move {
                loop {
                    match sink.wanted().await {
                        SinkStatus::Backlog => {
                            while !sink.drain().unwrap() {
                                socket.writable().await.unwrap();
                            }
                        }
                        s => return s,
                    }
                }
            })
        };
        let read_all = async {
            let mut head = [0u8; 4];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HEAD");
            let mut frame = vec![0u8; SIZE];
            for n in 0..FRAMES {
                client.read_exact(&mut frame).await.unwrap();
                assert_eq!(i64::from_be_bytes(frame[..8].try_into().unwrap()), n);
                assert!(
                    frame[8..].iter().all(|&b| b == (n % 251) as u8),
                    "frame {n} intact"
                );
            }
            // The other way: the server reads what the client sends through the same TLS.
            client.write_all(b"ping").await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 4];
            shared.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        };
        tokio::time::timeout(Duration::from_secs(20), read_all)
            .await
            .expect("every frame within 20 s");
        assert_eq!(sink.skips(), 0);
        assert_eq!(sink.status(), SinkStatus::Idle);
        stream.close();
        let end = tokio::time::timeout(Duration::from_secs(5), drainer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, SinkStatus::Ended);
    }
}
