//! One muxer per path: reads the path's stream, feeds the segmenter and keeps the state that
//! HTTP handlers serve. It outlives its publisher: when a new one starts within
//! `hlsMuxerCloseAfter`, the playlist carries on with a discontinuity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tidegate_core::{PathEventKind, Reader, SessionInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::segmenter::{Segmenter, SegmenterConfig, Variant};
use crate::state::State;
use crate::Inner;

pub struct Muxer {
    pub path: String,
    pub created: SystemTime,
    state: Mutex<State>,
    /// Moves with every change of the state, the open part's bytes included: what readers of
    /// the open part (the preload hint, LL-DASH's segment being written) wait on.
    changed: watch::Sender<u64>,
    /// The playlist version: moves when what playlists list changes (a part or segment begins
    /// or ends, a new init segment, the muxer refuses or closes), not with the open part's
    /// bytes. Blocking reloads and every other wait for a listed thing wait on it, so a frame
    /// wakes only the readers of the open part, and playlists are rendered once per version.
    listed: watch::Sender<u64>,
    started: Instant,
    last_request_ms: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub closed: CancellationToken,
    /// Playlists rendered (and gzipped) for the current version, shared by every request.
    rendered: Mutex<Rendered>,
}

/// Playlists of one version, by what makes them differ.
#[derive(Default)]
struct Rendered {
    version: u64,
    entries: std::collections::VecDeque<Rendition>,
}

struct Rendition {
    multivariant: bool,
    skip: bool,
    /// The query URIs carry along (per-viewer credentials make per-viewer playlists).
    forward: String,
    plain: bytes::Bytes,
    gzip: Option<bytes::Bytes>,
}

/// Renditions kept per version: the common ones (no query) and a few per-viewer ones.
const RENDERED_MAX: usize = 32;

impl Muxer {
    pub fn new(path: String, state: State) -> Muxer {
        Muxer {
            path,
            created: SystemTime::now(),
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            listed: watch::channel(0).0,
            started: Instant::now(),
            last_request_ms: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            closed: CancellationToken::new(),
            rendered: Mutex::new(Rendered::default()),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn touch(&self) {
        self.last_request_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn last_request(&self) -> SystemTime {
        self.created + Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed))
    }

    fn idle_for(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(
            self.last_request_ms.load(Ordering::Relaxed),
        ))
    }

    /// The playlist of the current version, rendered once per version (and gzipped once when
    /// asked) for every request that wants the same one.
    pub fn playlist(
        &self,
        multivariant: bool,
        skip: bool,
        forward: &str,
        gzip: bool,
    ) -> bytes::Bytes {
        // The version moves under the state's lock (see `apply`), so it names this state.
        let st = self.state();
        let version = *self.listed.borrow();
        let mut cache = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        if cache.version != version {
            cache.entries.clear();
            cache.version = version;
        }
        let found = cache
            .entries
            .iter()
            .position(|e| e.multivariant == multivariant && e.skip == skip && e.forward == forward);
        let idx = match found {
            Some(i) => i,
            None => {
                let text = if multivariant {
                    st.multivariant(forward)
                } else {
                    st.media(skip, forward)
                };
                if cache.entries.len() >= RENDERED_MAX {
                    cache.entries.pop_front();
                }
                cache.entries.push_back(Rendition {
                    multivariant,
                    skip,
                    forward: forward.to_string(),
                    plain: bytes::Bytes::from(text),
                    gzip: None,
                });
                cache.entries.len() - 1
            }
        };
        drop(st);
        let e = &mut cache.entries[idx];
        if !gzip {
            return e.plain.clone();
        }
        if e.gzip.is_none() {
            e.gzip = Some(bytes::Bytes::from(crate::http::gzip(
                &e.plain,
                flate2::Compression::fast(),
            )));
        }
        e.gzip.clone().unwrap_or_default()
    }

    /// Every change, the open part's bytes included.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks a change of what playlists list (and so of everything).
    fn bump(&self) {
        self.listed.send_modify(|v| *v += 1);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Waits until `ready` holds for the state, or `limit` passes. Returns whether it holds.
    /// `ready` may look only at what playlists list (parts, segments, inits, refusal): it is
    /// checked again when that changes, not at every frame.
    pub async fn wait_for(&self, limit: Duration, mut ready: impl FnMut(&State) -> bool) -> bool {
        let mut rx = self.listed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if ready(&self.state()) {
                return true;
            }
            if self.closed.is_cancelled() {
                return false;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return ready(&self.state()),
            }
        }
    }

    pub(crate) fn apply(&self, events: &mut Vec<crate::segmenter::Event>) {
        if events.is_empty() {
            return;
        }
        let mut st = self.state();
        let mut listed = false;
        for ev in events.drain(..) {
            listed |= !matches!(ev, crate::segmenter::Event::Chunk(..));
            st.apply(ev);
        }
        // Under the state's lock: a playlist rendered for a version holds what it names.
        if listed {
            self.bump();
        } else {
            self.changed.send_modify(|v| *v += 1);
        }
        drop(st);
    }
}

/// The stream's Opus as AAC for the MPEG-TS variant, when the path allows it and it can run.
fn bridge_opus(path: &str, reader: &Reader) -> Option<Arc<tidegate_core::Transcoded>> {
    let desc = reader.desc();
    let track = desc
        .tracks
        .iter()
        .find(|t| matches!(t.params, tidegate_core::CodecParams::Opus { .. }))?;
    let conf = reader.conf();
    let why = if !conf.audio_transcode {
        "audioTranscode is off for this path".to_string()
    } else if let Some(why) = tidegate_transcode::why_not_aac(track) {
        why
    } else {
        match tidegate_transcode::opus_to_aac(reader.stream(), conf.audio_transcode_bitrate) {
            Ok(v) => return Some(v),
            Err(e) => e.to_string(),
        }
    };
    tracing::warn!(
        path,
        "[HLS] Opus is segmented as is (players of MPEG-TS HLS may not play it): {why}"
    );
    None
}

/// Reads the path until idle, shutdown or kick; then removes itself from the muxer table.
pub(crate) async fn run(inner: Arc<Inner>, mux: Arc<Muxer>, reader: Reader) {
    // The reader (the path's `hlsMuxer` reader) is released before the muxer leaves the
    // table, so whoever sees the muxer gone also sees the path without it.
    read_streams(&inner, &mux, reader).await;
    mux.closed.cancel();
    mux.bump();
    inner.remove(&mux);
    tracing::info!(path = mux.path, "[HLS] muxer closed");
}

/// Feeds the segmenter from the path, across publishers, until idle, shutdown or close.
async fn read_streams(inner: &Arc<Inner>, mux: &Arc<Muxer>, mut reader: Reader) {
    let cfg = SegmenterConfig {
        variant: inner.cfg.variant,
        segment_duration: inner.cfg.segment_duration.as_secs_f64(),
        part_duration: inner.cfg.part_duration.as_secs_f64(),
        max_segment_bytes: inner.cfg.segment_max_size,
    };
    let mut events = inner.paths.events();
    let mut offset = 0.0;
    let mut discontinuity = false;
    let idle = || !inner.cfg.always_remux && mux.idle_for() > inner.cfg.muxer_close_after;
    tracing::info!(path = mux.path, "[HLS] muxer created");
    'streams: loop {
        // The MPEG-TS variant's players (hls.js, Safari, TVs) take AAC, not Opus: a WHIP
        // publish is segmented with its audio bridged (once per stream).
        let view = (cfg.variant == Variant::MpegTs)
            .then(|| bridge_opus(&mux.path, &reader))
            .flatten();
        let mut view_rx = view.as_ref().map(|v| v.stream().subscribe());
        // Whose frames these are: their absolute times (`useAbsoluteTimestamp`) are its.
        let source = view
            .as_ref()
            .map_or_else(|| reader.stream().clone(), |v| v.stream().clone());
        let desc = view
            .as_ref()
            .map_or_else(|| reader.desc(), |v| v.stream().desc());
        let mut seg = Segmenter::new(&desc, cfg.clone(), offset, discontinuity);
        // The key track's last timestamp and frame interval (s): a jump far past the interval
        // at a keyframe (a new publisher continued the stream after a blip,
        // `publisherReconnectGrace`) starts a new segment after a discontinuity, as a new
        // publisher does, so that no part spans the time nobody published.
        let mut key_last: Option<(i64, f64)> = None;
        let key_clock = desc
            .key_track()
            .and_then(|k| desc.track(k))
            .map(|t| (t.id, f64::from(t.clock_rate.max(1))));
        if let Some(why) = &seg.unsupported {
            tracing::warn!(path = mux.path, "[HLS] {why}");
        }
        mux.state().refused = seg
            .carries_nothing()
            .then(|| seg.unsupported.clone())
            .flatten();
        mux.bump();
        let mut out = Vec::new();
        let mut first = true;
        let video = desc
            .tracks
            .iter()
            .find(|t| t.codec().is_video())
            .map(|t| (t.id, t.clock_rate));
        let mut rate: Option<(i64, u32)> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let hls_latency = tidegate_core::latency::egress("hls");
        loop {
            tokio::select! {
                r = async {
                    match &mut view_rx {
                        Some(rx) => rx.recv().await,
                        None => reader.recv().await,
                    }
                } => {
                    let Ok(frame) = r else { break };
                    if first {
                        first = false;
                        let wall = source.wall_time(&frame);
                        mux.state().wall0 = wall - Duration::from_secs_f64(offset);
                    }
                    if let Some((vid, clock)) = video.filter(|v| v.0 == frame.track) {
                        match &mut rate {
                            None => rate = Some((frame.dts, 0)),
                            Some((start, n)) => {
                                *n += 1;
                                let span = (frame.dts - *start) as f64 / f64::from(clock.max(1));
                                if *n == 60 || (span >= 2.0 && *n > 1) {
                                    let fps = f64::from(*n) / span;
                                    let mut st = mux.state();
                                    if fps.is_finite() && fps > 0.0 && st.frame_rate.is_none() {
                                        st.frame_rate = Some(fps);
                                        // The multivariant playlist names it: a new version.
                                        mux.bump();
                                    }
                                    drop(st);
                                    let _ = vid;
                                }
                            }
                        }
                    }
                    if let Some((_, clock)) = key_clock.filter(|k| k.0 == frame.track) {
                        if let Some((last, interval)) = key_last {
                            let gap = (frame.dts - last) as f64 / clock;
                            if frame.keyframe
                                && gap > cfg.part_duration
                                && interval > 0.0
                                && gap > 3.0 * interval
                            {
                                tracing::info!(
                                    path = mux.path,
                                    "[HLS] a {gap:.2} s gap in the stream: a new segment after a discontinuity"
                                );
                                seg.finish(&mut out);
                                mux.apply(&mut out);
                                offset = seg.end();
                                let now = view
                                    .as_ref()
                                    .map_or_else(|| reader.desc(), |v| v.stream().desc());
                                seg = Segmenter::new(&now, cfg.clone(), offset, true);
                                let wall = source.wall_time(&frame);
                                mux.state().wall0 = wall - Duration::from_secs_f64(offset);
                                key_last = None;
                            }
                        }
                        let interval = key_last.map_or(0.0, |(last, _)| (frame.dts - last) as f64 / clock);
                        key_last = Some((frame.dts, interval));
                    }
                    seg.push(&frame, &mut out);
                    mux.apply(&mut out);
                    // Served from now on (the open part streams each frame as it comes).
                    if let Some(h) = hls_latency {
                        h.observe(frame.received.elapsed());
                    }
                }
                _ = tick.tick() => {
                    if idle() {
                        break 'streams;
                    }
                }
                _ = mux.closed.cancelled() => break 'streams,
                _ = inner.shutdown.cancelled() => break 'streams,
            }
        }
        seg.finish(&mut out);
        mux.apply(&mut out);
        offset = seg.end();
        discontinuity = true;
        drop(reader);
        tracing::info!(
            path = mux.path,
            "[HLS] publisher left, waiting for a new one"
        );
        // Wait for the next publisher of this path.
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let ready = match ev {
                        Ok(e) => e.kind == PathEventKind::Ready && e.path == mux.path,
                        Err(_) => true,
                    };
                    if ready {
                        if let Ok(r) = inner.paths.read(&mux.path, session(inner)) {
                            reader = r;
                            continue 'streams;
                        }
                    }
                }
                _ = tick.tick() => {
                    if idle() || inner.cfg.always_remux {
                        break 'streams;
                    }
                    if let Ok(r) = inner.paths.read(&mux.path, session(inner)) {
                        reader = r;
                        continue 'streams;
                    }
                }
                _ = mux.closed.cancelled() => break 'streams,
                _ = inner.shutdown.cancelled() => break 'streams,
            }
        }
    }
}

pub(crate) fn session(inner: &Inner) -> SessionInfo {
    SessionInfo {
        id: inner.paths.new_session_id(),
        kind: "hlsMuxer",
        remote: None,
        query: String::new(),
    }
}
