//! One writer per stream for its WHEP viewers in RTP mode (the fan-out engine's push side for
//! WebRTC).
//!
//! The writer is the one reader of the stream's [`RtcMuxer`](crate::media::RtcMuxer) egress.
//! Per batch of frames it turns each RTP payload into one `Arc<[u8]>` shared by every viewer,
//! then, viewer by viewer, writes them into that viewer's `Rtc` (its SSRC, sequence numbers,
//! extensions, SRTP), lets the `Rtc` put them out, and collects every viewer's datagrams; they
//! leave together at the end of the batch (one `sendmsg` per run per viewer, UDP GSO). No
//! viewer's task wakes for a frame: a session's task wakes only for its peer's datagrams, its
//! timers, and the events (stats, keyframe requests) the writer leaves it.
//!
//! The writer starts with the stream's first such viewer and stops with its last (its egress
//! with it); a viewer that joins waits for the next video keyframe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tidegate_core::{EgressReader, Frame, RecvError, Stream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::media;
use crate::session::Core;
use crate::udp_out::Outbox;
use crate::Inner;

/// Frames taken from the egress per batch at most.
const MAX_BATCH: usize = 16;

/// A session's `Rtc` and what its writer needs, shared by the session's task and the writer.
pub(crate) struct Cell {
    core: Mutex<Core>,
    /// The writer left the session something to do (events, an earlier timeout, an end).
    pub wake: Notify,
}

impl Cell {
    pub fn new(core: Core) -> Arc<Cell> {
        Arc::new(Cell {
            core: Mutex::new(core),
            wake: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The viewers a writer serves, and whether its stream has ended (a viewer that joins then
/// is told at once).
#[derive(Default)]
struct List {
    cells: Arc<Vec<Arc<Cell>>>,
    ended: bool,
}

type Viewers = Arc<Mutex<List>>;

fn lock(v: &Viewers) -> MutexGuard<'_, List> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running writer of a stream, held by its viewers.
pub(crate) struct Writer {
    viewers: Viewers,
    stop: CancellationToken,
    /// How many viewers the list has, for the stream's muxer (it holds audio for many).
    count: Arc<AtomicUsize>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A stream's writer, if one runs (kept with the stream). One task for all the stream's
/// viewers: two (one per core) measured a third more CPU per viewer here, for a lower latency
/// (docs/performance.md).
/// The viewer count lives with the stream, so that an egress still running from an earlier
/// writer reads the new writer's count.
#[derive(Default)]
struct Running(Mutex<Weak<Writer>>, Arc<AtomicUsize>);

/// A viewer's place with its stream's writer; leaving drops it from the list.
pub(crate) struct Joined {
    writer: Arc<Writer>,
    cell: Arc<Cell>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let mut g = lock(&self.writer.viewers);
        let list: Vec<Arc<Cell>> = g
            .cells
            .iter()
            .filter(|c| !Arc::ptr_eq(c, &self.cell))
            .cloned()
            .collect();
        self.writer.count.store(list.len(), Ordering::Relaxed);
        g.cells = Arc::new(list);
    }
}

/// Adds `cell` to `stream`'s writer, starting the writer (and the egress it reads) if none runs.
pub(crate) fn join(inner: &Arc<Inner>, stream: &Arc<Stream>, cell: Arc<Cell>) -> Joined {
    let running = stream.extension(Running::default);
    let mut slot = running.0.lock().unwrap_or_else(|e| e.into_inner());
    let writer = match slot.upgrade() {
        Some(w) => w,
        None => {
            let count = running.1.clone();
            let egress = stream.egress(|s| media::RtcMuxer::new(&s.desc(), count.clone()));
            let reader = egress.subscribe_from_next_keyframe();
            let w = Arc::new(Writer {
                viewers: Viewers::default(),
                stop: CancellationToken::new(),
                count,
            });
            inner.tasks.spawn(run(
                reader,
                w.viewers.clone(),
                w.stop.clone(),
                inner.clone(),
            ));
            *slot = Arc::downgrade(&w);
            w
        }
    };
    drop(slot);
    {
        let mut g = lock(&writer.viewers);
        if g.ended {
            cell.lock()
                .ended
                .get_or_insert_with(|| "the publisher left".into());
            cell.wake.notify_one();
        } else {
            let mut list: Vec<Arc<Cell>> = g.cells.iter().cloned().collect();
            list.push(cell.clone());
            writer.count.store(list.len(), Ordering::Relaxed);
            g.cells = Arc::new(list);
        }
    }
    Joined { writer, cell }
}

/// A frame and its payloads, shared by every viewer.
pub(crate) type Made = (Arc<Frame>, Vec<(bool, Arc<[u8]>)>);

async fn run(
    mut reader: EgressReader,
    viewers: Viewers,
    stop: CancellationToken,
    inner: Arc<Inner>,
) {
    let mut batch: Vec<Arc<Frame>> = Vec::with_capacity(MAX_BATCH);
    let mut outbox = Outbox::default();
    loop {
        let mut closed = false;
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = reader.recv() => match r {
                Ok(f) => batch.push(f),
                Err(RecvError::Closed) => closed = true,
            },
        }
        while !closed && batch.len() < MAX_BATCH {
            match reader.try_recv() {
                Ok(Some(f)) => batch.push(f),
                Ok(None) => break,
                Err(RecvError::Closed) => closed = true,
            }
        }
        let made: Vec<Made> = batch
            .drain(..)
            .map(|f| {
                let p = media::rtp_payloads(&f.data)
                    .map(|(m, p)| (m, Arc::<[u8]>::from(p)))
                    .collect();
                (f, p)
            })
            .collect();
        let list = {
            let mut g = lock(&viewers);
            // Viewers that join from now on are told at once.
            g.ended |= closed;
            g.cells.clone()
        };
        // Every viewer's datagrams leave after the last viewer's are sealed: sending per group
        // of 16 viewers measured a quarter more CPU per viewer here (docs/performance.md).
        let mut served = 0u64;
        for cell in list.iter() {
            let mut core = cell.lock();
            if closed {
                core.ended
                    .get_or_insert_with(|| "the publisher left".into());
            } else if core.write(&made, &inner, &mut outbox) {
                served += 1;
            }
            if core.wants_task() {
                cell.wake.notify_one();
            }
        }
        if let Some(sock) = &inner.socket {
            outbox.flush(sock.as_ref()).await;
        }
        if let Some((f, _)) = made.first() {
            // An upper bound for each: the last viewer's datagrams left then.
            inner.latency.observe_n(f.received.elapsed(), served);
        }
        if closed {
            return;
        }
    }
}
