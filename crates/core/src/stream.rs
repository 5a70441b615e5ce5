//! Stream fan-out: one publisher, any number of readers, through one bounded ring.
//!
//! The publisher never waits for a reader: [`Stream::write`] puts the frame in a
//! `tokio::sync::broadcast` ring and returns. A reader that falls more than the ring's
//! capacity behind loses the oldest frames; it then skips forward to the next keyframe of the
//! key track, so a decoder never sees a broken GOP, and the skip is counted. A GOP cache holds
//! the frames since the last keyframe so that a new reader starts decoding at once.

use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::media::{Frame, StreamDesc, TrackId};

/// Limits of one stream's buffers. Every one bounds memory, whatever readers do.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Frames the ring holds for readers; a reader further behind skips.
    pub ring_capacity: usize,
    /// The GOP cache is dropped (until the next keyframe) past this many frames...
    pub gop_cache_max_frames: usize,
    /// ...or this many payload bytes.
    pub gop_cache_max_bytes: usize,
    /// How long byte-stream egresses (RTMP, RTSP over TCP) hold an audio frame for the next
    /// video frame, so that both leave in one write (`audioCoalesce`): after this, it leaves
    /// with the publisher's next frame of any track (or a fallback timer 200 ms later); zero
    /// writes each frame at once.
    pub audio_coalesce: std::time::Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            ring_capacity: 1024,
            gop_cache_max_frames: 2048,
            gop_cache_max_bytes: 64 << 20,
            audio_coalesce: std::time::Duration::from_millis(50),
        }
    }
}

/// Counters of one stream, readable at any time (API, metrics).
#[derive(Debug, Default)]
pub struct StreamStats {
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Times a reader fell behind the ring and had to skip forward.
    pub reader_skips: AtomicU64,
    /// Frames lost by lagging readers, all readers together.
    pub frames_skipped: AtomicU64,
    /// Frames the ingest could not rebuild (damaged or incomplete input: RTP access units
    /// with a part lost, MPEG-TS PES cut short), MediaMTX's `inboundFramesInError`.
    pub frames_in_error: AtomicU64,
    /// Video frames whose decode order differs from presentation order (B-frames) were seen:
    /// egresses without decode timestamps (WebRTC) refuse such streams.
    pub reordered_video: std::sync::atomic::AtomicBool,
}

struct Inner {
    tx: Option<broadcast::Sender<Arc<Frame>>>,
    desc: StreamDesc,
    gop: Vec<Arc<Frame>>,
    gop_bytes: usize,
    /// False after the cache overflowed, until the next keyframe.
    gop_valid: bool,
    /// Where readers are: the end of the last frame written (µs of stream time, after any
    /// offset) and when it arrived.
    end_us: Option<i64>,
    last_received: Option<std::time::Instant>,
    /// Added to every frame's timestamps (µs) since a new publisher continued the stream.
    offset_us: i64,
    /// A new publisher continues the stream: frames wait for its first keyframe, and the first
    /// frame of each track carries its parameters.
    resume: Option<Resume>,
    /// The continuing publisher's track ids → this stream's (its tracks may be numbered or
    /// ordered differently, e.g. another protocol's publisher); empty when they are the same.
    track_map: Vec<(TrackId, TrackId)>,
    /// `useAbsoluteTimestamp`: per track, a presentation time (stream time, after any offset)
    /// and the absolute time the source gave it (an RTCP sender report's NTP time, an HLS
    /// `EXT-X-PROGRAM-DATE-TIME`).
    absolute: Vec<(TrackId, i64, SystemTime)>,
}

struct Resume {
    wait_key: bool,
    params_sent: Vec<TrackId>,
}

/// Stream time (µs) added between the old publisher's last frame and the new one's first,
/// beyond the wall-clock gap, so that no track's timestamps go back.
const RESUME_MARGIN_US: i64 = 100_000;

/// How long before a reader subscribes "from the next keyframe" a keyframe may have arrived and
/// still count as next (it was on its way through an egress).
const LIVE_MARGIN: std::time::Duration = std::time::Duration::from_millis(200);

/// The live frames of one publish.
pub struct Stream {
    inner: Mutex<Inner>,
    key_track: Option<TrackId>,
    config: StreamConfig,
    stats: StreamStats,
    extensions: Mutex<Vec<(TypeId, Arc<dyn Any + Send + Sync>)>>,
    /// Readers that need a keyframe now (a WebRTC viewer joined or lost packets) ask the
    /// publisher through this; publishers that can ask their encoder (WHIP, RTSP) listen.
    keyframe_wanted: tokio::sync::Notify,
    egresses: crate::fanout::Egresses,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("key_track", &self.key_track)
            .finish_non_exhaustive()
    }
}

impl Stream {
    pub fn new(desc: StreamDesc, config: StreamConfig) -> Stream {
        let (tx, _) = broadcast::channel(config.ring_capacity.max(1));
        Stream {
            key_track: desc.key_track(),
            inner: Mutex::new(Inner {
                tx: Some(tx),
                desc,
                gop: Vec::new(),
                gop_bytes: 0,
                gop_valid: false,
                end_us: None,
                last_received: None,
                offset_us: 0,
                resume: None,
                track_map: Vec::new(),
                absolute: Vec::new(),
            }),
            config,
            stats: StreamStats::default(),
            extensions: Mutex::new(Vec::new()),
            keyframe_wanted: tokio::sync::Notify::new(),
            egresses: Default::default(),
        }
    }

    /// Asks the publisher for a keyframe, if it can produce one on demand (rate limiting is the
    /// publisher's business: it may get many requests).
    pub fn request_keyframe(&self) {
        self.keyframe_wanted.notify_one();
    }

    /// Resolves when a reader asked for a keyframe (see [`Stream::request_keyframe`]).
    pub async fn keyframe_requested(&self) {
        self.keyframe_wanted.notified().await
    }

    /// Per-stream state of one egress, created once by the first caller and shared by every
    /// later one: this is how an egress muxes once per stream ("mux once, send many"), e.g. RTMP
    /// chunks or HLS parts made once and sent to every reader.
    pub fn extension<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut ext = self.extensions.lock().unwrap_or_else(|e| e.into_inner());
        let id = TypeId::of::<T>();
        if let Some((_, v)) = ext.iter().find(|(t, _)| *t == id) {
            if let Ok(v) = v.clone().downcast::<T>() {
                return v;
            }
        }
        let v = Arc::new(init());
        ext.push((id, v.clone()));
        v
    }

    /// Whether the stream has an extension of type `T` (without making one). Not from within
    /// an [`Stream::extension`] initialiser (the same lock).
    pub fn has_extension<T: Any + Send + Sync>(&self) -> bool {
        let id = TypeId::of::<T>();
        self.extensions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(t, _)| *t == id)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the ring inconsistent: take it anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tracks as they are now (parameters updated by in-band changes).
    pub fn desc(&self) -> StreamDesc {
        self.lock().desc.clone()
    }

    pub(crate) fn egresses(&self) -> &crate::fanout::Egresses {
        &self.egresses
    }

    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// The frames since the last keyframe of the key track (empty when there is none or the
    /// cache overflowed).
    pub fn gop_snapshot(&self) -> Vec<Arc<Frame>> {
        let inner = self.lock();
        if inner.gop_valid {
            inner.gop.clone()
        } else {
            Vec::new()
        }
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    pub fn key_track(&self) -> Option<TrackId> {
        self.key_track
    }

    /// `useAbsoluteTimestamp`: the source says that `pts` (the publisher's time, in ticks of
    /// `track`'s clock) is the absolute time `at`. Replaces what it said before for the track.
    pub fn set_absolute_time(&self, track: TrackId, pts: i64, at: SystemTime) {
        let mut inner = self.lock();
        if inner.resume.as_ref().is_some_and(|r| r.wait_key) {
            return; // the continuing publisher's offset is not known yet
        }
        let track = inner
            .track_map
            .iter()
            .find(|(from, _)| *from == track)
            .map_or(track, |&(_, to)| to);
        let clock = inner.desc.track(track).map_or(90_000, |t| t.clock_rate);
        let pts = pts.saturating_add(crate::media::rescale(inner.offset_us, 1_000_000, clock));
        inner.absolute.retain(|(t, _, _)| *t != track);
        inner.absolute.push((track, pts, at));
    }

    /// The absolute time of a frame of this stream: from what the source said of its track
    /// (`useAbsoluteTimestamp`), else the time the frame arrived.
    pub fn wall_time(&self, frame: &Frame) -> SystemTime {
        let inner = self.lock();
        if let Some(&(_, pts, at)) = inner.absolute.iter().find(|(t, _, _)| *t == frame.track) {
            let clock = inner
                .desc
                .track(frame.track)
                .map_or(90_000, |t| t.clock_rate);
            let us = crate::media::rescale(frame.pts.saturating_sub(pts), clock, 1_000_000);
            let d = std::time::Duration::from_micros(us.unsigned_abs());
            let t = if us >= 0 {
                at.checked_add(d)
            } else {
                at.checked_sub(d)
            };
            if let Some(t) = t {
                return t;
            }
        }
        drop(inner);
        SystemTime::now()
            .checked_sub(frame.received.elapsed())
            .unwrap_or_else(SystemTime::now)
    }

    /// Whether the source gave absolute times (`useAbsoluteTimestamp`).
    pub fn has_absolute_time(&self) -> bool {
        !self.lock().absolute.is_empty()
    }

    /// Hands a frame to every reader. Never waits.
    pub fn write(&self, frame: Frame) {
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        if frame.pts != frame.dts && Some(frame.track) == self.key_track {
            self.stats.reordered_video.store(true, Ordering::Relaxed);
        }
        self.stats
            .bytes_in
            .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
        let mut frame = frame;
        let mut inner = self.lock();
        if let Some(&(_, to)) = inner
            .track_map
            .iter()
            .find(|(from, _)| *from == frame.track)
        {
            frame.track = to;
        }
        if inner.resume.is_some() && !Self::resume_frame(&mut inner, &mut frame, self.key_track) {
            return;
        }
        let clock = inner
            .desc
            .track(frame.track)
            .map_or(90_000, |t| t.clock_rate);
        if inner.offset_us != 0 {
            let off = crate::media::rescale(inner.offset_us, 1_000_000, clock);
            frame.pts = frame.pts.saturating_add(off);
            frame.dts = frame.dts.saturating_add(off);
        }
        let end = crate::media::rescale(frame.dts, clock, 1_000_000);
        inner.end_us = Some(inner.end_us.map_or(end, |e| e.max(end)));
        inner.last_received = Some(frame.received);
        let frame = Arc::new(frame);
        if let Some(params) = &frame.params {
            if let Some(track) = inner.desc.tracks.iter_mut().find(|t| t.id == frame.track) {
                track.params = (**params).clone();
            }
        }
        let starts_gop = frame.keyframe && Some(frame.track) == self.key_track;
        if starts_gop {
            inner.gop.clear();
            inner.gop_bytes = 0;
            inner.gop_valid = true;
        }
        if inner.gop_valid {
            inner.gop_bytes += frame.data.len();
            inner.gop.push(frame.clone());
            if inner.gop.len() > self.config.gop_cache_max_frames
                || inner.gop_bytes > self.config.gop_cache_max_bytes
            {
                inner.gop = Vec::new();
                inner.gop_bytes = 0;
                inner.gop_valid = false;
            }
        }
        if let Some(tx) = &inner.tx {
            // An error only means that nobody reads right now.
            let _ = tx.send(frame);
        }
    }

    /// A frame of a publisher that continues this stream: false to drop it (before the new
    /// publisher's first keyframe). At that keyframe, the offset that makes its timestamps
    /// follow the old publisher's (plus the wall-clock gap between them) is set.
    fn resume_frame(inner: &mut Inner, frame: &mut Frame, key_track: Option<TrackId>) -> bool {
        let Some(r) = inner.resume.as_mut() else {
            return true;
        };
        if r.wait_key {
            if !(frame.keyframe && Some(frame.track) == key_track) {
                return false;
            }
            r.wait_key = false;
            let clock = inner
                .desc
                .track(frame.track)
                .map_or(90_000, |t| t.clock_rate);
            let gap_us = inner.last_received.map_or(0, |at| {
                i64::try_from(frame.received.saturating_duration_since(at).as_micros())
                    .unwrap_or(i64::MAX / 4)
            });
            let first_us = crate::media::rescale(frame.dts, clock, 1_000_000);
            inner.offset_us = inner
                .end_us
                .map_or(0, |end| end + gap_us + RESUME_MARGIN_US - first_us);
        }
        let Some(r) = inner.resume.as_mut() else {
            return true;
        };
        if !r.params_sent.contains(&frame.track) {
            r.params_sent.push(frame.track);
            if frame.params.is_none() {
                if let Some(t) = inner.desc.track(frame.track) {
                    frame.params = Some(Arc::new(t.params.clone()));
                }
            }
            if r.params_sent.len() >= inner.desc.tracks.len() {
                inner.resume = None;
            }
        }
        true
    }

    /// A new publisher continues this stream (its readers stay): `desc` has the same tracks
    /// (codecs and clock rates, see [`Stream::resume_map`]), maybe numbered differently and with
    /// new parameters. Its frames are dropped until its first keyframe, then carry on the
    /// timeline after the old publisher's last frame plus the time nobody published; each
    /// track's first frame carries its parameters (so egresses send new sequence headers). The
    /// GOP cache starts over. False (nothing changed) when the tracks do not match.
    pub fn resume(&self, desc: StreamDesc) -> bool {
        let mut inner = self.lock();
        let Some(map) = match_tracks(&inner.desc, &desc) else {
            return false;
        };
        let mut desc = desc;
        for t in &mut desc.tracks {
            if let Some(&(_, to)) = map.iter().find(|(from, _)| *from == t.id) {
                t.id = to;
            }
        }
        desc.tracks
            .sort_by_key(|t| inner.desc.tracks.iter().position(|o| o.id == t.id));
        inner.desc = desc;
        inner.track_map = map.into_iter().filter(|(a, b)| a != b).collect();
        inner.absolute.clear();
        inner.gop.clear();
        inner.gop_bytes = 0;
        inner.gop_valid = false;
        inner.resume = Some(Resume {
            wait_key: true,
            params_sent: Vec::new(),
        });
        true
    }

    /// Whether a publisher with `desc` can continue this stream: the same number of tracks,
    /// each matched to one of this stream's with the same codec and clock rate (in order).
    pub fn can_resume_with(&self, desc: &StreamDesc) -> bool {
        match_tracks(&self.lock().desc, desc).is_some()
    }

    /// A new reader. Its first frames are the GOP cache, so it starts on a keyframe.
    pub fn subscribe(self: &Arc<Self>) -> StreamReader {
        let inner = self.lock();
        let (rx, backlog, resync) = match &inner.tx {
            Some(tx) => {
                let backlog: VecDeque<Arc<Frame>> = if inner.gop_valid {
                    inner.gop.iter().cloned().collect()
                } else {
                    VecDeque::new()
                };
                // Without a cached GOP the reader waits for the next keyframe.
                let resync = backlog.is_empty();
                (Some(tx.subscribe()), backlog, resync)
            }
            None => (None, VecDeque::new(), false),
        };
        drop(inner);
        if resync {
            // Nothing cached to start on (a publisher with long GOPs, e.g. a browser, or a GOP
            // past the cache's bound): ask the publisher for a keyframe (WebRTC sends a PLI).
            self.request_keyframe();
        }
        StreamReader {
            stream: self.clone(),
            rx,
            backlog,
            resync,
            live_after: None,
            skips: 0,
            frames_skipped: 0,
        }
    }

    /// A new reader that skips the GOP cache and starts at the next keyframe: for egresses that
    /// must not send a burst (SRT's sender paces by source time).
    pub fn subscribe_from_next_keyframe(self: &Arc<Self>) -> StreamReader {
        let mut r = self.subscribe();
        if !r.backlog.is_empty() {
            r.backlog.clear();
            r.resync = true;
            self.request_keyframe();
        }
        if r.resync {
            r.live_after = std::time::Instant::now().checked_sub(LIVE_MARGIN);
        }
        r
    }

    /// Ends the stream: readers get the frames already in the ring, then [`RecvError::Closed`].
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.tx = None;
        inner.gop.clear();
        inner.gop_valid = false;
        drop(inner);
        // Egress state (and the tasks it may own) goes with the stream.
        self.egresses.clear();
        self.extensions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().tx.is_none()
    }
}

/// Pairs every track of `new` with a track of `old` of the same codec and clock rate, the
/// first free one in order: `(new id, old id)`. None when some track has no partner or the
/// counts differ.
pub fn match_tracks(old: &StreamDesc, new: &StreamDesc) -> Option<Vec<(TrackId, TrackId)>> {
    if old.tracks.len() != new.tracks.len() {
        return None;
    }
    let mut used = vec![false; old.tracks.len()];
    let mut map = Vec::with_capacity(new.tracks.len());
    for t in &new.tracks {
        // The same id first (a publisher of the same protocol), else the first of its kind.
        let same = old
            .tracks
            .iter()
            .position(|o| o.id == t.id && o.codec() == t.codec() && o.clock_rate == t.clock_rate)
            .filter(|&i| !used[i]);
        let i = same.or_else(|| {
            old.tracks.iter().enumerate().position(|(i, o)| {
                !used[i] && o.codec() == t.codec() && o.clock_rate == t.clock_rate
            })
        })?;
        used[i] = true;
        map.push((t.id, old.tracks[i].id));
    }
    Some(map)
}

/// Why a reader got no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("the stream has ended")]
    Closed,
}

/// One reader's position in a stream.
pub struct StreamReader {
    stream: Arc<Stream>,
    rx: Option<broadcast::Receiver<Arc<Frame>>>,
    backlog: VecDeque<Arc<Frame>>,
    /// Dropping frames until the next keyframe of the key track.
    resync: bool,
    /// While resyncing at the start: a keyframe that arrived (at the ingest) before this is
    /// not "next" (an egress that starts replays its source's GOP cache into its output).
    live_after: Option<std::time::Instant>,
    skips: u64,
    frames_skipped: u64,
}

impl StreamReader {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Times this reader fell behind and skipped forward.
    pub fn skips(&self) -> u64 {
        self.skips
    }

    /// Frames this reader lost by falling behind.
    pub fn frames_skipped(&self) -> u64 {
        self.frames_skipped
    }

    /// Frames waiting for this reader (in the ring and its own backlog).
    pub fn behind(&self) -> u64 {
        (self.backlog.len() + self.rx.as_ref().map_or(0, |rx| rx.len())) as u64
    }

    /// The next frame. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Arc<Frame>, RecvError> {
        loop {
            if let Some(frame) = self.backlog.pop_front() {
                return Ok(frame);
            }
            let Some(rx) = self.rx.as_mut() else {
                return Err(RecvError::Closed);
            };
            let got = match rx.recv().await {
                Ok(frame) => Ok(frame),
                Err(broadcast::error::RecvError::Lagged(n)) => Err(Some(n)),
                Err(broadcast::error::RecvError::Closed) => Err(None),
            };
            if let Some(frame) = self.accept(got)? {
                return Ok(frame);
            }
        }
    }

    /// The next frame if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<Arc<Frame>>, RecvError> {
        loop {
            if let Some(frame) = self.backlog.pop_front() {
                return Ok(Some(frame));
            }
            let Some(rx) = self.rx.as_mut() else {
                return Err(RecvError::Closed);
            };
            let got = match rx.try_recv() {
                Ok(frame) => Ok(frame),
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Err(Some(n)),
                Err(broadcast::error::TryRecvError::Closed) => Err(None),
            };
            if let Some(frame) = self.accept(got)? {
                return Ok(Some(frame));
            }
        }
    }

    /// Applies the skip rules to what the ring gave: `Err(Some(n))` is a lag of `n` frames,
    /// `Err(None)` the end of the stream. `Ok(None)` means "dropped, ask again".
    fn accept(
        &mut self,
        got: Result<Arc<Frame>, Option<u64>>,
    ) -> Result<Option<Arc<Frame>>, RecvError> {
        match got {
            Ok(frame) => {
                if self.resync {
                    let live = self.live_after.is_none_or(|t| frame.received >= t);
                    if frame.keyframe && Some(frame.track) == self.stream.key_track && live {
                        self.resync = false;
                        self.live_after = None;
                    } else {
                        return Ok(None);
                    }
                }
                Ok(Some(frame))
            }
            Err(Some(n)) => {
                self.skips += 1;
                self.frames_skipped += n;
                let stats = &self.stream.stats;
                stats.reader_skips.fetch_add(1, Ordering::Relaxed);
                stats.frames_skipped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    frames_lost = n,
                    "reader fell behind the stream; skipping to the next keyframe"
                );
                self.resync = true;
                Ok(None)
            }
            Err(None) => {
                self.rx = None;
                Err(RecvError::Closed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{CodecParams, Track};
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    fn desc() -> StreamDesc {
        StreamDesc {
            tracks: vec![
                Track {
                    id: 0,
                    params: CodecParams::H264 {
                        sps: Bytes::from_static(b"sps"),
                        pps: Bytes::from_static(b"pps"),
                    },
                    clock_rate: 90_000,
                },
                Track {
                    id: 1,
                    params: CodecParams::Opus { channels: 2 },
                    clock_rate: 48_000,
                },
            ],
        }
    }

    fn video(n: i64, gop: i64) -> Frame {
        Frame {
            track: 0,
            pts: n * 3000,
            dts: n * 3000,
            keyframe: n % gop == 0,
            data: Bytes::from(vec![0u8; 1000]),
            received: Instant::now(),
            params: None,
        }
    }

    fn small_config() -> StreamConfig {
        StreamConfig {
            ring_capacity: 16,
            gop_cache_max_frames: 64,
            gop_cache_max_bytes: 1 << 20,
            ..StreamConfig::default()
        }
    }

    async fn next(r: &mut StreamReader) -> Arc<Frame> {
        tokio::time::timeout(Duration::from_secs(5), r.recv())
            .await
            .expect("a frame within 5 s")
            .expect("stream open")
    }

    #[tokio::test]
    async fn late_reader_starts_on_a_keyframe() {
        let stream = Arc::new(Stream::new(desc(), small_config()));
        for n in 0..13 {
            stream.write(video(n, 5));
        }
        let mut r = stream.subscribe();
        let first = next(&mut r).await;
        assert!(first.keyframe);
        assert_eq!(
            first.pts,
            10 * 3000,
            "starts at the last keyframe, not an older one"
        );
        for n in 11..13 {
            assert_eq!(next(&mut r).await.pts, n * 3000);
        }
        stream.write(video(13, 5));
        assert_eq!(next(&mut r).await.pts, 13 * 3000);
    }

    #[tokio::test]
    async fn reader_before_any_keyframe_waits_for_one() {
        let stream = Arc::new(Stream::new(desc(), small_config()));
        let mut r = stream.subscribe();
        for n in 1..7 {
            stream.write(video(n, 5));
        }
        let first = next(&mut r).await;
        assert_eq!(first.pts, 5 * 3000);
        assert!(first.keyframe);
    }

    #[tokio::test]
    async fn stalled_reader_never_blocks_the_publisher_and_resyncs_on_a_keyframe() {
        let stream = Arc::new(Stream::new(desc(), small_config()));
        let mut stalled = stream.subscribe();
        let mut live = stream.subscribe();
        // The publisher writes 100 000 frames while one reader never reads: write never waits.
        let total = 100_000;
        let mut live_seen = 0;
        for n in 0..total {
            stream.write(video(n, 30));
            // The live reader keeps up.
            while live.try_recv().unwrap().is_some() {
                live_seen += 1;
            }
        }
        assert_eq!(live_seen, total, "the live reader lost nothing");
        assert_eq!(live.skips(), 0);
        // The stalled reader resumes: it lost frames, counts the skip, and restarts on a keyframe.
        let first = next(&mut stalled).await;
        assert!(
            first.keyframe,
            "after a skip the reader restarts on a keyframe"
        );
        assert_eq!(stalled.skips(), 1);
        assert!(stalled.frames_skipped() > 0);
        assert_eq!(stream.stats().reader_skips.load(Ordering::Relaxed), 1);
        // What the stalled reader could still get is bounded by the ring, not by the backlog.
        let mut remaining = 1;
        while stalled.try_recv().unwrap().is_some() {
            remaining += 1;
        }
        assert!(remaining <= small_config().ring_capacity);
        assert_eq!(
            stream.stats().frames_in.load(Ordering::Relaxed),
            total as u64
        );
    }

    #[tokio::test]
    async fn gop_cache_is_bounded() {
        let cfg = small_config();
        let stream = Arc::new(Stream::new(desc(), cfg.clone()));
        // A GOP longer than the cache: the cache is dropped, not grown.
        for n in 0..(cfg.gop_cache_max_frames as i64 + 10) {
            stream.write(video(n, 1_000_000));
        }
        assert!(stream.lock().gop.is_empty());
        let mut r = stream.subscribe();
        stream.write(video(1_000_000, 1_000_000));
        assert!(next(&mut r).await.keyframe);
    }

    #[tokio::test]
    async fn a_reader_can_skip_the_gop_cache() {
        let stream = Arc::new(Stream::new(desc(), small_config()));
        for n in 0..8 {
            stream.write(video(n, 5));
        }
        let mut r = stream.subscribe_from_next_keyframe();
        assert!(r.try_recv().unwrap().is_none(), "no backlog");
        for n in 8..11 {
            stream.write(video(n, 5));
        }
        let first = next(&mut r).await;
        assert_eq!(first.pts, 10 * 3000);
        assert!(first.keyframe);
    }

    #[tokio::test]
    async fn close_ends_readers_after_the_ring_drains() {
        let stream = Arc::new(Stream::new(desc(), small_config()));
        let mut r = stream.subscribe();
        stream.write(video(0, 5));
        stream.close();
        assert_eq!(next(&mut r).await.pts, 0);
        assert_eq!(r.recv().await.unwrap_err(), RecvError::Closed);
        let mut late = stream.subscribe();
        assert_eq!(late.recv().await.unwrap_err(), RecvError::Closed);
    }

    #[tokio::test]
    async fn in_band_params_update_the_description() {
        let stream = Arc::new(Stream::new(desc(), small_config()));
        let mut f = video(0, 1);
        let new = CodecParams::H264 {
            sps: Bytes::from_static(b"sps2"),
            pps: Bytes::from_static(b"pps2"),
        };
        f.params = Some(Arc::new(new.clone()));
        stream.write(f);
        assert_eq!(stream.desc().tracks[0].params, new);
    }
}
