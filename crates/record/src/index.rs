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

/// One segment file. Kept small: a month of minute segments for 10 paths is 430,000 of them
/// (path names and codec lists are shared between segments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub path: Arc<str>,
    pub file: PathBuf,
    /// Microseconds since the Unix epoch.
    pub start: i64,
    /// Seconds.
    pub duration: f64,
    pub size: u64,
    pub codecs: Arc<[String]>,
    pub format: Format,
    /// Still being written.
    #[serde(skip)]
    pub recording: bool,
}

impl Segment {
    pub fn end(&self) -> i64 {
        self.start
            .saturating_add((self.duration * 1e6).round() as i64)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    Add(Segment),
    Del { file: PathBuf },
}

/// [`Line`] without copying the segment.
#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum LineRef<'a> {
    Add(&'a Segment),
}

pub(crate) struct Inner {
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

    /// Holds the index's lock (tests: a writer thread that updates the index stalls).
    #[cfg(test)]
    pub(crate) fn stall(&self) -> MutexGuard<'_, Inner> {
        self.lock()
    }

    /// Whether the segment of `path` starting at `start` is being written now.
    fn is_recording(&self, path: &str, start: i64) -> bool {
        self.lock()
            .paths
            .get(path)
            .and_then(|m| m.get(&start))
            .is_some_and(|s| s.recording)
    }

    fn load_root(&self, root: &Path, templates: &[Template]) -> (usize, usize) {
        let journal_path = root.join(JOURNAL);
        let mut known: HashMap<PathBuf, Segment> = HashMap::new();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        let mut codec_lists: HashMap<Vec<String>, Arc<[String]>> = HashMap::new();
        let mut share = |s: &mut Segment| {
            let n = names
                .entry(s.path.to_string())
                .or_insert_with(|| s.path.clone())
                .clone();
            s.path = n;
            let c = codec_lists
                .entry(s.codecs.to_vec())
                .or_insert_with(|| s.codecs.clone())
                .clone();
            s.codecs = c;
        };
        if let Ok(f) = File::open(&journal_path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Add(mut s)) => {
                        share(&mut s);
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
        let mut found = Vec::with_capacity(known.len());
        let mut scanned = 0;
        walk(root, 0, &mut |file| {
            let Some((path, start, ext)) = templates.iter().find_map(|t| t.parse(&file)) else {
                return;
            };
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if let Some(s) = known.remove(&file) {
                if s.size == size {
                    found.push(s);
                    return;
                }
            }
            // A file being written now is the recorder's, not the scanner's (the recorder
            // puts a segment in the index before it creates the file).
            if self.is_recording(&path, start) {
                return;
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
                Some((duration, size, codecs)) => {
                    let mut s = Segment {
                        path: Arc::from(path.as_str()),
                        file,
                        start,
                        duration,
                        size,
                        codecs: Arc::from(codecs),
                        format: format_of(&ext),
                        recording: false,
                    };
                    share(&mut s);
                    found.push(s);
                }
                None => tracing::warn!("recording {} is unreadable, left out", file.display()),
            }
        });
        drop(known);
        let n = found.len();
        // Merge, then write the journal anew under the lock, so that no segment completed
        // meanwhile is lost from it: every completed segment under this root, nothing else.
        let mut inner = self.lock();
        for s in found {
            let m = inner.paths.entry(s.path.to_string()).or_default();
            if !m.get(&s.start).is_some_and(|x| x.recording) {
                m.insert(s.start, s);
            }
        }
        let tmp = root.join(format!("{JOURNAL}.tmp"));
        let written = (|| -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(File::create(&tmp)?);
            for s in inner
                .paths
                .values()
                .flat_map(|m| m.values())
                .filter(|s| !s.recording && s.file.starts_with(root))
            {
                serde_json::to_writer(&mut f, &LineRef::Add(s))?;
                f.write_all(b"\n")?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
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
            .entry(s.path.to_string())
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
        let mut out: Vec<(i64, i64)> = Vec::new();
        for s in overlapping(&inner, path, from, to) {
            let end = s.end();
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
        overlapping(&inner, path, from, to).cloned().collect()
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

/// Segments of `path` overlapping `[from, to)` (µs), in time order.
fn overlapping<'a>(
    inner: &'a Inner,
    path: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> impl Iterator<Item = &'a Segment> + 'a {
    let from = from.unwrap_or(i64::MIN);
    let to = to.unwrap_or(i64::MAX);
    inner.paths.get(path).into_iter().flat_map(move |m| {
        // The segment that starts before `from` may still overlap it.
        let first = m.range(..=from).next_back().map_or(i64::MIN, |(k, _)| *k);
        m.range(first..to)
            .map(|(_, s)| s)
            .filter(move |s| s.end() > from || s.recording)
    })
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

fn walk(dir: &Path, depth: usize, out: &mut impl FnMut(PathBuf)) {
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
                    out(p);
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
