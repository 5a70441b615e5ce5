//! The segment index: every segment of every path, kept in memory and in a journal beside
//! the files (`<root>/.tidegate-index.jsonl`, one line per completed or deleted segment), so
//! that listing and seeking never read the archive itself.
//!
//! At start the journal is read and checked against the files: a file the journal does not
//! know, or whose size differs from what it says (the process died while writing it), is
//! scanned (and trimmed to its last whole part); entries whose file is gone are dropped. The
//! journal is then written anew, compacted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::mux::Format;
use crate::template::Template;

pub const JOURNAL: &str = ".tidegate-index.jsonl";
/// Directories deeper than this under a root are not searched.
const MAX_DEPTH: usize = 16;

/// One segment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub path: String,
    pub file: PathBuf,
    /// Microseconds since the Unix epoch.
    pub start: i64,
    /// Seconds.
    pub duration: f64,
    pub size: u64,
    pub codecs: Vec<String>,
    pub format: String,
    /// Still being written.
    #[serde(skip)]
    pub recording: bool,
}

impl Segment {
    pub fn end(&self) -> i64 {
        self.start + (self.duration * 1e6).round() as i64
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    Add(Segment),
    Del { file: PathBuf },
}

struct Inner {
    /// Path name → start → segment.
    paths: HashMap<String, BTreeMap<i64, Segment>>,
    journals: HashMap<PathBuf, File>,
    /// Root of each segment file's template, to find its journal.
    roots: Vec<PathBuf>,
}

/// Cheap to clone; every clone is the same index.
#[derive(Clone)]
pub struct Index {
    inner: Arc<Mutex<Inner>>,
    /// True once the files on disk are all in (see [`Index::load_roots`]).
    loaded: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            inner: Arc::new(Mutex::new(Inner {
                paths: HashMap::new(),
                journals: HashMap::new(),
                roots: Vec::new(),
            })),
            loaded: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Index {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every segment under the roots of `templates`, checking the journal against the
    /// files and repairing it, into this index (which may already be recording: segments being
    /// written are left alone). Blocking: call it from a blocking thread.
    pub fn load_roots(&self, templates: &[Template]) {
        let mut roots: Vec<(PathBuf, Vec<Template>)> = Vec::new();
        for t in templates {
            let root = t.root();
            match roots.iter_mut().find(|(r, _)| *r == root) {
                Some((_, ts)) => {
                    if !ts.iter().any(|x| x.raw() == t.raw()) {
                        ts.push(t.clone());
                    }
                }
                None => roots.push((root, vec![t.clone()])),
            }
        }
        for (root, templates) in roots {
            let started = std::time::Instant::now();
            let (n, scanned) = self.load_root(&root, &templates);
            if n > 0 {
                tracing::info!(
                    "recordings in {}: {n} segments ({scanned} scanned) in {:?}",
                    root.display(),
                    started.elapsed()
                );
            }
        }
        self.loaded.send_replace(true);
    }

    /// An index loaded from `templates` (blocking).
    pub fn load(templates: &[Template]) -> Index {
        let index = Index::default();
        index.load_roots(templates);
        index
    }

    /// Waits until the files on disk are in, at most `limit`; returns whether they are.
    pub async fn wait_loaded(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn recording_files(&self) -> std::collections::HashSet<PathBuf> {
        self.lock()
            .paths
            .values()
            .flat_map(|m| m.values())
            .filter(|s| s.recording)
            .map(|s| s.file.clone())
            .collect()
    }

    fn load_root(&self, root: &Path, templates: &[Template]) -> (usize, usize) {
        let journal_path = root.join(JOURNAL);
        let mut known: HashMap<PathBuf, Segment> = HashMap::new();
        if let Ok(f) = File::open(&journal_path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Add(s)) => {
                        known.insert(s.file.clone(), s);
                    }
                    Ok(Line::Del { file }) => {
                        known.remove(&file);
                    }
                    // A line cut by a crash: the files tell the rest.
                    Err(_) => {}
                }
            }
        }
        let mut files = Vec::new();
        walk(root, 0, &mut files);
        let mut found = Vec::new();
        let mut scanned = 0;
        for file in files {
            let Some((path, start, ext)) = templates.iter().find_map(|t| t.parse(&file)) else {
                continue;
            };
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if let Some(s) = known.get(&file) {
                if s.size == size {
                    found.push(s.clone());
                    continue;
                }
            }
            // A file being written now is the recorder's, not the scanner's.
            if self.recording_files().contains(&file) {
                continue;
            }
            scanned += 1;
            match scan_file(&file, &ext) {
                // Cut before its first part: it holds no media.
                Some((duration, _, _)) if duration <= 0.0 => {
                    tracing::info!(
                        "recording {} holds no media (cut before its first part): removed",
                        file.display()
                    );
                    let _ = std::fs::remove_file(&file);
                }
                Some((duration, size, codecs)) => found.push(Segment {
                    path,
                    file,
                    start,
                    duration,
                    size,
                    codecs,
                    format: if ext == "ts" { "mpegts" } else { "fmp4" }.into(),
                    recording: false,
                }),
                None => tracing::warn!("recording {} is unreadable, left out", file.display()),
            }
        }
        let n = found.len();
        // Merge, then write the journal anew under the lock, so that no segment completed
        // meanwhile is lost from it: every completed segment under this root, nothing else.
        let mut inner = self.lock();
        for s in found {
            let m = inner.paths.entry(s.path.clone()).or_default();
            if !m.get(&s.start).is_some_and(|x| x.recording) {
                m.insert(s.start, s);
            }
        }
        let tmp = root.join(format!("{JOURNAL}.tmp"));
        let written = (|| -> std::io::Result<()> {
            let mut buf = Vec::new();
            for s in inner
                .paths
                .values()
                .flat_map(|m| m.values())
                .filter(|s| !s.recording && s.file.starts_with(root))
            {
                serde_json::to_writer(&mut buf, &Line::Add(s.clone()))?;
                buf.push(b'\n');
            }
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &journal_path)
        })();
        if let Err(e) = written {
            if root.exists() {
                tracing::warn!("cannot write {}: {e}", journal_path.display());
            }
        }
        // Appends go to the new file from now on.
        inner.journals.remove(root);
        inner.roots.push(root.to_path_buf());
        drop(inner);
        (n, scanned)
    }

    /// A segment started being written.
    pub fn started(&self, s: Segment) {
        let mut inner = self.lock();
        inner
            .paths
            .entry(s.path.clone())
            .or_default()
            .insert(s.start, s);
    }

    /// Forgets a segment that was never written (its file could not be created).
    pub fn forget(&self, path: &str, start: i64) {
        let mut inner = self.lock();
        if let Some(m) = inner.paths.get_mut(path) {
            m.remove(&start);
            if m.is_empty() {
                inner.paths.remove(path);
            }
        }
    }

    /// Spans of `path` overlapping `[from, to)` (µs): segments closer than `tolerance` µs
    /// joined, as (start, end). Computed in place, without copying segments.
    pub fn spans(
        &self,
        path: &str,
        from: Option<i64>,
        to: Option<i64>,
        tolerance: i64,
    ) -> Vec<(i64, i64)> {
        let inner = self.lock();
        let Some(m) = inner.paths.get(path) else {
            return Vec::new();
        };
        let from = from.unwrap_or(i64::MIN);
        let to = to.unwrap_or(i64::MAX);
        let first = m.range(..=from).next_back().map_or(i64::MIN, |(k, _)| *k);
        let mut out: Vec<(i64, i64)> = Vec::new();
        for s in m.range(first..to).map(|(_, s)| s) {
            let end = s.end();
            if end <= from && !s.recording {
                continue;
            }
            match out.last_mut() {
                Some((_, e)) if s.start - *e <= tolerance && s.start >= *e - tolerance => {
                    *e = (*e).max(end);
                }
                _ => out.push((s.start, end)),
            }
        }
        out
    }

    /// The open segment grew.
    pub fn grew(&self, path: &str, start: i64, duration: f64, size: u64) {
        let mut inner = self.lock();
        if let Some(s) = inner.paths.get_mut(path).and_then(|m| m.get_mut(&start)) {
            s.duration = duration;
            s.size = size;
        }
    }

    /// A segment is complete: recorded in the journal of its root.
    pub fn completed(&self, path: &str, start: i64, duration: f64, size: u64, root: &Path) {
        let mut inner = self.lock();
        let Some(s) = inner.paths.get_mut(path).and_then(|m| m.get_mut(&start)) else {
            return;
        };
        s.duration = duration;
        s.size = size;
        s.recording = false;
        let line = Line::Add(s.clone());
        append(&mut inner, root, &line);
    }

    /// Forgets a segment (its file was deleted).
    pub fn remove(&self, path: &str, start: i64, root: &Path) -> Option<Segment> {
        let mut inner = self.lock();
        let s = inner.paths.get_mut(path)?.remove(&start)?;
        if inner.paths.get(path).is_some_and(|m| m.is_empty()) {
            inner.paths.remove(path);
        }
        append(
            &mut inner,
            root,
            &Line::Del {
                file: s.file.clone(),
            },
        );
        Some(s)
    }

    /// Segments of `path` that overlap `[from, to)` (µs), in time order.
    pub fn segments(&self, path: &str, from: Option<i64>, to: Option<i64>) -> Vec<Segment> {
        let inner = self.lock();
        let Some(m) = inner.paths.get(path) else {
            return Vec::new();
        };
        let from = from.unwrap_or(i64::MIN);
        let to = to.unwrap_or(i64::MAX);
        // The segment that starts before `from` may still overlap it.
        let first = m.range(..=from).next_back().map_or(i64::MIN, |(k, _)| *k);
        m.range(first..to)
            .map(|(_, s)| s)
            .filter(|s| s.end() > from || s.recording)
            .cloned()
            .collect()
    }

    /// Every path with segments, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().paths.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every completed segment that ends before `before` (µs), for retention.
    pub fn older_than(&self, path: &str, before: i64) -> Vec<Segment> {
        let inner = self.lock();
        inner.paths.get(path).map_or(Vec::new(), |m| {
            m.values()
                .take_while(|s| s.start < before)
                .filter(|s| !s.recording && s.end() <= before)
                .cloned()
                .collect()
        })
    }
}

fn append(inner: &mut Inner, root: &Path, line: &Line) {
    if !inner.journals.contains_key(root) {
        let _ = std::fs::create_dir_all(root);
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(JOURNAL))
        {
            Ok(f) => {
                inner.journals.insert(root.to_path_buf(), f);
            }
            Err(e) => {
                tracing::warn!("cannot open the recording index in {}: {e}", root.display());
                return;
            }
        }
    }
    if let Some(f) = inner.journals.get_mut(root) {
        let mut buf = serde_json::to_vec(line).unwrap_or_default();
        buf.push(b'\n');
        if let Err(e) = f.write_all(&buf) {
            tracing::warn!(
                "cannot append to the recording index in {}: {e}",
                root.display()
            );
            inner.journals.remove(root);
        }
    }
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, depth + 1, out),
            Ok(t) if t.is_file() => {
                if matches!(p.extension().and_then(|x| x.to_str()), Some("mp4" | "ts")) {
                    out.push(p);
                }
            }
            _ => {}
        }
    }
}

/// Duration, size and codecs of a segment file, read from it (fMP4: its boxes, trimmed to
/// the last whole part; MPEG-TS: its timestamps).
pub fn scan_file(file: &Path, ext: &str) -> Option<(f64, u64, Vec<String>)> {
    if ext == "ts" {
        return crate::tsread::scan(file).ok();
    }
    let s = crate::read::recover(file).ok()?;
    let codecs = s
        .tracks
        .iter()
        .map(|t| t.codec_name().to_string())
        .collect();
    Some((s.duration(), s.file_len, codecs))
}

pub fn format_of(ext: &str) -> Format {
    if ext == "ts" {
        Format::MpegTs
    } else {
        Format::Fmp4
    }
}
