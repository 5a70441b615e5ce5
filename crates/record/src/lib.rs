//! Recording: every path with `record: yes` is written to disk in segments (fMP4 or MPEG-TS)
//! as it arrives, whatever protocol brought it, and kept for `recordDeleteAfter`. The segment
//! index and the playback server (`/list`, `/get`) live here too; the binary wires the
//! listener and the hooks.
//!
//! The recorder reads a path's stream in process, like any egress, but it is not a client: it
//! does not count against `maxReaders` and is not listed among the path's readers.

pub mod cut;
pub mod demux;
mod error;
pub mod index;
pub mod mux;
pub mod playback;
pub mod read;
pub mod template;
pub mod tsread;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tidegate_core::{rescale, PathConf, PathEventKind, PathManager, Stream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::RecordError;
pub use index::{Index, Segment};
pub use mux::Format;
pub use template::Template;
pub use writer::Sync;

use mux::{MuxConfig, Out, RecordMuxer};
use writer::{Context, Writer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentEventKind {
    Create,
    Complete,
}

/// A segment was created or completed: for `runOnRecordSegmentCreate` / `…Complete`.
#[derive(Clone, Debug)]
pub struct SegmentEvent {
    pub kind: SegmentEventKind,
    pub path: String,
    pub file: PathBuf,
    /// Seconds (zero at creation).
    pub duration: f64,
    pub conf: Arc<PathConf>,
}

/// Counters for the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_written: AtomicU64,
    pub parts_dropped: AtomicU64,
    pub errors: AtomicU64,
    pub segments_deleted: AtomicU64,
}

struct Inner {
    paths: PathManager,
    index: Index,
    events: broadcast::Sender<SegmentEvent>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Paths being recorded now.
    active: Mutex<HashMap<String, (u64, CancellationToken)>>,
    generation: AtomicU64,
}

/// The recorder. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// How often retention runs.
const CLEAN_EVERY: Duration = Duration::from_secs(30);

impl Recorder {
    /// Starts recording every path with `record: yes` as it becomes ready, and indexing every
    /// template's root in the background.
    pub fn start(
        paths: PathManager,
        templates: Vec<Template>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Recorder {
        // The archive is indexed in the background: recording starts at once, and the
        // playback server waits for the index (see `Index::wait_loaded`).
        let index = Index::default();
        let loading = index.clone();
        tasks.spawn_blocking(move || loading.load_roots(&templates));
        let rec = Recorder {
            inner: Arc::new(Inner {
                paths,
                index,
                events: broadcast::channel(1024).0,
                stats: Arc::new(Stats::default()),
                shutdown,
                tasks,
                active: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
            }),
        };
        let r = rec.clone();
        rec.inner.tasks.spawn(async move { r.watch().await });
        let r = rec.clone();
        rec.inner.tasks.spawn(async move { r.retention().await });
        rec
    }

    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Segment created/complete events.
    pub fn events(&self) -> broadcast::Receiver<SegmentEvent> {
        self.inner.events.subscribe()
    }

    /// Paths being recorded now.
    pub fn recording(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    async fn watch(&self) {
        let mut events = self.inner.paths.events();
        for p in self.inner.paths.list().into_iter().filter(|p| p.ready) {
            self.maybe_record(&p.name);
        }
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(e) if e.kind == PathEventKind::Ready => self.maybe_record(&e.path),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for p in self.inner.paths.list().into_iter().filter(|p| p.ready) {
                            self.maybe_record(&p.name);
                        }
                    }
                    Err(_) => break,
                },
                _ = self.inner.shutdown.cancelled() => break,
            }
        }
    }

    fn maybe_record(&self, name: &str) {
        let Some((stream, conf)) = self.inner.paths.stream(name) else {
            return;
        };
        if !conf.record.enabled {
            return;
        }
        let token = self.inner.shutdown.child_token();
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, old)) = active.get(name) {
                // The previous publisher's recording ends with its stream.
                old.cancel();
            }
            active.insert(name.to_string(), (generation, token.clone()));
        }
        let r = self.clone();
        let name = name.to_string();
        self.inner.tasks.spawn(async move {
            r.record(&name, stream, conf, token).await;
            let mut active = r.inner.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.get(&name).is_some_and(|(g, _)| *g == generation) {
                active.remove(&name);
            }
        });
    }

    async fn record(
        &self,
        name: &str,
        stream: Arc<Stream>,
        conf: Arc<PathConf>,
        cancel: CancellationToken,
    ) {
        let rc = &conf.record;
        let template = match Template::new(&rc.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("[record] path '{name}': {e}; not recording");
                return;
            }
        };
        let format = Format::parse(&rc.format).unwrap_or(Format::Fmp4);
        let desc = stream.desc();
        let mut mux = RecordMuxer::new(
            &desc,
            MuxConfig {
                format,
                part_duration: (rc.part_duration.as_secs_f64() * 90_000.0).round() as i64,
                max_part_size: rc.max_part_size.max(1),
                segment_duration: (rc.segment_duration.as_secs_f64() * 90_000.0).round() as i64,
            },
        );
        if !mux.skipped.is_empty() {
            tracing::warn!(
                "[record] path '{name}': {} cannot be stored in {}; left out of the recording",
                mux.skipped.join(", "),
                format.name()
            );
        }
        if !mux.is_usable() {
            tracing::error!(
                "[record] path '{name}': no track can be recorded in {} ({}); not recording",
                format.name(),
                desc.codec_names().join(", ")
            );
            return;
        }
        let writer = Writer::spawn(Context {
            path: name.to_string(),
            root: template.root(),
            format,
            sync: Sync::parse(&rc.sync).unwrap_or(Sync::Part),
            index: self.inner.index.clone(),
            events: self.inner.events.clone(),
            stats: self.inner.stats.clone(),
            conf: conf.clone(),
        });
        let mut writer = match writer {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("[record] path '{name}': cannot start a writer thread: {e}");
                return;
            }
        };
        let mut reader = stream.subscribe();
        // Wall clock of the source timeline: µs since the epoch at 90 kHz tick `origin`.
        let mut clock: Option<(i64, i64)> = None;
        let mut out = Vec::new();
        let mut skips = 0;
        loop {
            let frame = tokio::select! {
                f = reader.recv() => match f {
                    Ok(f) => f,
                    Err(_) => break,
                },
                _ = cancel.cancelled() => break,
            };
            if clock.is_none() {
                let clock_rate = desc.track(frame.track).map_or(90_000, |t| t.clock_rate);
                // The frame's absolute time: the source's (useAbsoluteTimestamp), else its
                // arrival; before 1970 too (a camera's clock may say anything).
                let wall = match stream
                    .wall_time(&frame)
                    .duration_since(SystemTime::UNIX_EPOCH)
                {
                    Ok(d) => d.as_micros() as i64,
                    Err(e) => -(e.duration().as_micros() as i64),
                };
                clock = Some((wall, rescale(frame.dts, clock_rate, 90_000)));
            }
            mux.push(&frame, &mut out);
            if reader.skips() != skips {
                skips = reader.skips();
                tracing::warn!(
                    "[record] path '{name}': the recorder fell behind the stream and skipped \
                     to the next key frame ({} frames lost)",
                    reader.frames_skipped()
                );
            }
            self.apply(&template, name, format, clock, &mut out, &mut writer);
        }
        mux.finish(&mut out);
        self.apply(&template, name, format, clock, &mut out, &mut writer);
        writer.finish().await;
    }

    fn apply(
        &self,
        template: &Template,
        name: &str,
        format: Format,
        clock: Option<(i64, i64)>,
        out: &mut Vec<Out>,
        writer: &mut Writer,
    ) {
        for o in out.drain(..) {
            match o {
                Out::SegmentStart {
                    start,
                    init,
                    codecs,
                } => {
                    let (wall, origin) = clock.unwrap_or((0, 0));
                    let start_us = (i128::from(wall)
                        + (i128::from(start) - i128::from(origin)) * 100 / 9)
                        .clamp(i128::from(i64::MIN / 4), i128::from(i64::MAX / 4))
                        as i64;
                    let file = template.render(name, start_us, format.extension());
                    writer.open(file, start_us, init, codecs);
                }
                Out::Part { data, duration } => writer.part(data, duration),
                Out::SegmentEnd { duration } => writer.close(duration),
            }
        }
    }

    /// Deletes segments older than their path's `recordDeleteAfter`, every [`CLEAN_EVERY`].
    async fn retention(&self) {
        // Not while the archive is being indexed: a segment deleted now could come back from
        // the scan that listed it before.
        tokio::select! {
            _ = self.inner.index.wait_loaded(Duration::from_secs(86_400 * 365)) => {}
            _ = self.inner.shutdown.cancelled() => return,
        }
        let mut tick = tokio::time::interval(CLEAN_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            let r = self.clone();
            let _ = tokio::task::spawn_blocking(move || r.clean_once(SystemTime::now())).await;
        }
    }

    /// One retention pass as of `now`: returns the files deleted.
    pub fn clean_once(&self, now: SystemTime) -> Vec<PathBuf> {
        let now_us = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut deleted = Vec::new();
        for path in self.inner.index.paths() {
            let Ok(m) = self.inner.paths.find(&path) else {
                continue;
            };
            let keep = m.conf.record.delete_after;
            if keep.is_zero() {
                continue;
            }
            let before = now_us - keep.as_micros() as i64;
            for s in self.inner.index.older_than(&path, before) {
                match self.delete(&s, &m.conf.record.path) {
                    Ok(()) => deleted.push(s.file.clone()),
                    Err(e) => tracing::warn!("[record] cannot delete {}: {e}", s.file.display()),
                }
            }
        }
        deleted
    }

    /// Deletes one segment's file and forgets it.
    pub fn delete(&self, s: &Segment, template: &str) -> std::io::Result<()> {
        let root = Template::new(template).map_or(PathBuf::from("."), |t| t.root());
        let removed = match std::fs::remove_file(&s.file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if removed.is_ok() {
            self.inner.index.remove(&s.path, s.start, &root);
            self.inner
                .stats
                .segments_deleted
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!("[record] deleted {}", s.file.display());
            // Empty directories up to the root go too.
            let mut dir = s.file.parent().map(|d| d.to_path_buf());
            while let Some(d) = dir {
                if d == root || !d.starts_with(&root) || std::fs::remove_dir(&d).is_err() {
                    break;
                }
                dir = d.parent().map(|p| p.to_path_buf());
            }
        }
        removed
    }
}
