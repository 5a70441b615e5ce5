//! The disk side of one recording: a thread that writes what the muxer made, so a slow or
//! failing disk never holds up the live stream. The muxer's side never waits: when more than
//! [`MAX_QUEUED`] bytes are waiting for the disk, new parts are dropped (counted, logged once
//! per segment) rather than frames of the live stream delayed.
//!
//! Each part is written with one `write` of its whole `moof` + `mdat`, so a kill leaves at
//! most the part being written cut short, which the reader trims. When data is forced to disk
//! is `recordSync`: `part` (after every part: at most a part is lost at power loss), `segment`
//! (when a segment closes), `off` (when the kernel decides).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::index::{Index, Segment};
use crate::mux::Format;
use crate::{SegmentEvent, SegmentEventKind, Stats};

/// Bytes that may wait for the disk, per recording.
pub const MAX_QUEUED: u64 = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    Part,
    Segment,
    Off,
}

impl Sync {
    pub fn parse(s: &str) -> Option<Sync> {
        match s {
            "part" => Some(Sync::Part),
            "segment" => Some(Sync::Segment),
            "off" => Some(Sync::Off),
            _ => None,
        }
    }
}

pub enum Cmd {
    Open {
        file: PathBuf,
        start: i64,
        init: Bytes,
        codecs: Vec<String>,
    },
    Part {
        data: Bytes,
        duration: f64,
    },
    Close {
        duration: f64,
    },
}

/// The muxer's handle on the writer thread.
pub struct Writer {
    tx: Option<mpsc::Sender<Cmd>>,
    queued: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<Stats>,
    /// The open segment lost a part to a full queue (logged once per segment).
    dropping: bool,
    path: String,
}

pub struct Context {
    pub path: String,
    pub root: PathBuf,
    pub format: Format,
    pub sync: Sync,
    pub index: Index,
    pub events: broadcast::Sender<SegmentEvent>,
    pub stats: Arc<Stats>,
    pub conf: Arc<tidegate_core::PathConf>,
}

impl Writer {
    pub fn spawn(ctx: Context) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicU64::new(0));
        let q = queued.clone();
        let stats = ctx.stats.clone();
        let path = ctx.path.clone();
        let thread = std::thread::Builder::new()
            .name("tidegate-record".into())
            .spawn(move || run(ctx, rx, q))?;
        Ok(Writer {
            tx: Some(tx),
            queued,
            thread: Some(thread),
            stats,
            dropping: false,
            path,
        })
    }

    fn send(&self, cmd: Cmd) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(cmd);
        }
    }

    pub fn open(&mut self, file: PathBuf, start: i64, init: Bytes, codecs: Vec<String>) {
        self.dropping = false;
        self.queued.fetch_add(init.len() as u64, Ordering::Relaxed);
        self.send(Cmd::Open {
            file,
            start,
            init,
            codecs,
        });
    }

    pub fn part(&mut self, data: Bytes, duration: f64) {
        let len = data.len() as u64;
        if self.queued.load(Ordering::Relaxed) + len > MAX_QUEUED {
            self.stats.parts_dropped.fetch_add(1, Ordering::Relaxed);
            if !self.dropping {
                self.dropping = true;
                tracing::warn!(
                    "[record] path '{}': the disk is not keeping up, dropping recording parts \
                     (the live stream is not affected)",
                    self.path
                );
            }
            return;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.send(Cmd::Part { data, duration });
    }

    pub fn close(&mut self, duration: f64) {
        self.send(Cmd::Close { duration });
    }

    /// Waits (on a blocking thread) until everything queued is on disk.
    pub async fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct Open {
    file: PathBuf,
    handle: Option<File>,
    start: i64,
    size: u64,
    duration: f64,
}

fn run(ctx: Context, rx: mpsc::Receiver<Cmd>, queued: Arc<AtomicU64>) {
    let mut open: Option<Open> = None;
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Open {
                file,
                start,
                init,
                codecs,
            } => {
                if let Some(o) = open.take() {
                    close(&ctx, o, None);
                }
                queued.fetch_sub(init.len() as u64, Ordering::Relaxed);
                // In the index before the file exists, so that an index load running now
                // never takes it for a crashed file to repair.
                ctx.index.started(Segment {
                    path: Arc::from(ctx.path.as_str()),
                    file: file.clone(),
                    start,
                    duration: 0.0,
                    size: init.len() as u64,
                    codecs: Arc::from(codecs),
                    format: ctx.format,
                    recording: true,
                });
                let handle = match create(&file, &init, ctx.sync) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        ctx.index.forget(&ctx.path, start);
                        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            "[record] path '{}': cannot create {}: {e}; this segment is not \
                             recorded (the live stream is not affected)",
                            ctx.path,
                            file.display()
                        );
                        None
                    }
                };
                if handle.is_some() {
                    tracing::info!(
                        "[record] path '{}': recording to {}",
                        ctx.path,
                        file.display()
                    );
                    let _ = ctx.events.send(SegmentEvent {
                        kind: SegmentEventKind::Create,
                        path: ctx.path.clone(),
                        file: file.clone(),
                        duration: 0.0,
                        conf: ctx.conf.clone(),
                    });
                }
                open = Some(Open {
                    file,
                    handle,
                    start,
                    size: init.len() as u64,
                    duration: 0.0,
                });
            }
            Cmd::Part { data, duration } => {
                queued.fetch_sub(data.len() as u64, Ordering::Relaxed);
                let Some(o) = open.as_mut() else { continue };
                let Some(f) = o.handle.as_mut() else { continue };
                let written = f.write_all(&data).and_then(|()| {
                    if ctx.sync == Sync::Part {
                        f.sync_data()
                    } else {
                        Ok(())
                    }
                });
                match written {
                    Ok(()) => {
                        o.size += data.len() as u64;
                        o.duration += duration;
                        ctx.stats
                            .bytes_written
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        ctx.index.grew(&ctx.path, o.start, o.duration, o.size);
                    }
                    Err(e) => {
                        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            "[record] path '{}': cannot write {}: {e}; the rest of this segment \
                             is not recorded (the live stream is not affected)",
                            ctx.path,
                            o.file.display()
                        );
                        // What is already written stays; nothing more goes to this file.
                        o.handle = None;
                    }
                }
            }
            Cmd::Close { duration } => {
                if let Some(o) = open.take() {
                    close(&ctx, o, Some(duration));
                }
            }
        }
    }
    if let Some(o) = open.take() {
        close(&ctx, o, None);
    }
}

fn create(file: &Path, init: &[u8], sync: Sync) -> std::io::Result<File> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)?;
    f.write_all(init)?;
    if sync != Sync::Off {
        f.sync_data()?;
        // The new name must survive a power loss too.
        if let Some(dir) = file.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(f)
}

fn close(ctx: &Context, mut o: Open, duration: Option<f64>) {
    let Some(f) = o.handle.take() else {
        // Never created, or cut short by an error: what is on disk is indexed as it is.
        if o.size > 0 && o.file.exists() {
            ctx.index
                .completed(&ctx.path, o.start, o.duration, o.size, &ctx.root);
        }
        return;
    };
    if ctx.sync != Sync::Off {
        if let Err(e) = f.sync_all() {
            tracing::error!(
                "[record] path '{}': cannot sync {}: {e}",
                ctx.path,
                o.file.display()
            );
        }
    }
    drop(f);
    let duration = duration.unwrap_or(o.duration);
    ctx.index
        .completed(&ctx.path, o.start, duration, o.size, &ctx.root);
    tracing::info!(
        "[record] path '{}': segment {} complete ({duration:.3} s, {} bytes)",
        ctx.path,
        o.file.display(),
        o.size
    );
    let _ = ctx.events.send(SegmentEvent {
        kind: SegmentEventKind::Complete,
        path: ctx.path.clone(),
        file: o.file,
        duration,
        conf: ctx.conf.clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk that does not keep up (here: the writer thread held on the index's lock) never
    /// holds up the muxer's side: parts past [`MAX_QUEUED`] are dropped at once and counted.
    #[test]
    fn a_stalled_disk_drops_parts_instead_of_waiting() {
        let dir = std::env::temp_dir().join(format!("tidegate-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let index = Index::default();
        let stats = Arc::new(Stats::default());
        let mut w = Writer::spawn(Context {
            path: "cam".into(),
            root: dir.clone(),
            format: Format::Fmp4,
            sync: Sync::Off,
            index: index.clone(),
            events: broadcast::channel(16).0,
            stats: stats.clone(),
            conf: Arc::new(tidegate_core::PathConf::default()),
        })
        .unwrap();
        let stall = index.stall();
        w.open(
            dir.join("cam/a.mp4"),
            0,
            Bytes::from_static(b"init"),
            vec![],
        );
        let part = Bytes::from(vec![0u8; 1 << 20]);
        let started = std::time::Instant::now();
        for _ in 0..64 {
            w.part(part.clone(), 1.0);
        }
        // 64 MiB offered against 32 MiB of queue: about half dropped, and no waiting.
        let dropped = stats.parts_dropped.load(Ordering::Relaxed);
        assert!((31..=33).contains(&dropped), "{dropped} parts dropped");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        drop(stall);
        w.close(1.0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(w.finish());
        let written = std::fs::metadata(dir.join("cam/a.mp4")).unwrap().len();
        assert_eq!(written, 4 + (64 - dropped) * (1 << 20));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
