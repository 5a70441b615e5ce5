//! A publisher's RTMP messages to frames of the packet model: used by the server (clients
//! publishing to us) and by pulled `rtmp://` sources.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate_core::{CodecParams, Frame, Publisher, StreamDesc, Track};

use crate::amf0::{decode_all, Amf0};
use crate::flv::{self, AudioState, Parsed, VideoState, AUDIO_TRACK, VIDEO_CLOCK, VIDEO_TRACK};
use crate::session::{MSG_AUDIO, MSG_DATA_AMF0, MSG_VIDEO};
use crate::RtmpError;

/// Frames held back until the tracks are known (both sequence headers, or the metadata says
/// a track is absent). Bounded: past this the stream starts with what it has.
const MAX_PENDING: usize = 256;

/// Turns a publisher's RTMP messages into frames of the packet model.
pub struct Ingest {
    publisher: Publisher,
    stream: Option<Arc<tidegate_core::Stream>>,
    video: VideoState,
    audio: AudioState,
    expect_video: bool,
    expect_audio: bool,
    pending: Vec<Frame>,
    /// Timestamp unwrapping (RTMP timestamps are 32-bit ms).
    last_ts: [Option<u32>; 2],
    wraps: [i64; 2],
    changed: [Option<CodecParams>; 2],
    started_at: Instant,
}

impl Ingest {
    pub fn new(publisher: Publisher) -> Ingest {
        Ingest {
            publisher,
            stream: None,
            video: VideoState::default(),
            audio: AudioState::default(),
            expect_video: true,
            expect_audio: true,
            pending: Vec::new(),
            last_ts: [None, None],
            wraps: [0, 0],
            changed: [None, None],
            started_at: Instant::now(),
        }
    }

    fn unwrap_ts(&mut self, i: usize, ts: u32) -> i64 {
        if let Some(last) = self.last_ts[i] {
            // A jump back of more than half the range is a wrap, not a reorder.
            if ts < last && last - ts > 0x8000_0000 {
                self.wraps[i] += 1 << 32;
            }
        }
        self.last_ts[i] = Some(ts);
        self.wraps[i] + i64::from(ts)
    }

    pub fn on_message(
        &mut self,
        type_id: u8,
        timestamp: u32,
        payload: Bytes,
    ) -> Result<(), RtmpError> {
        match type_id {
            MSG_DATA_AMF0 => {
                self.on_metadata(&payload);
                return Ok(());
            }
            MSG_VIDEO | MSG_AUDIO => {}
            _ => return Ok(()),
        }
        let video = type_id == MSG_VIDEO;
        let i = usize::from(!video);
        let ts = self.unwrap_ts(i, timestamp);
        let parsed = if video {
            self.video.parse(ts, &payload)
        } else {
            self.audio.parse(ts, &payload)
        };
        let parsed = match parsed {
            Ok(p) => p,
            // A frame before its sequence header: drop it (encoders do this at start).
            Err(RtmpError::NoSequenceHeader) => return Ok(()),
            Err(e) => return Err(e),
        };
        match parsed {
            Parsed::Params(p) => {
                if self.stream.is_some() {
                    self.changed[i] = Some(p);
                }
            }
            Parsed::Frame {
                dts_ms,
                cts_ms,
                keyframe,
                data,
            } => {
                let (track, clock) = if video {
                    (VIDEO_TRACK, VIDEO_CLOCK)
                } else {
                    (AUDIO_TRACK, self.audio.clock_rate())
                };
                let params = self.changed[i].take().map(Arc::new);
                let frame = flv::to_frame(track, clock, dts_ms, cts_ms, keyframe, data, params);
                match &self.stream {
                    Some(s) => s.write(frame),
                    None => {
                        self.pending.push(frame);
                        self.maybe_start();
                    }
                }
            }
            Parsed::Nothing => {}
        }
        Ok(())
    }

    fn on_metadata(&mut self, payload: &[u8]) {
        let Ok(values) = decode_all(payload) else {
            return;
        };
        let mut it = values.iter();
        let mut first = it.next();
        if first.and_then(Amf0::as_str) == Some("@setDataFrame") {
            first = it.next();
        }
        if first.and_then(Amf0::as_str) != Some("onMetaData") {
            return;
        }
        if let Some(meta) = it.next() {
            // Only a metadata that lists codecs tells us a track is absent.
            let has_codecs =
                meta.get("videocodecid").is_some() || meta.get("audiocodecid").is_some();
            if has_codecs {
                self.expect_video = meta.get("videocodecid").is_some();
                self.expect_audio = meta.get("audiocodecid").is_some();
            }
        }
    }

    fn maybe_start(&mut self) {
        let have_video = self.video.params().is_some();
        let have_audio = self.audio.params().is_some();
        let ready = (have_video || !self.expect_video) && (have_audio || !self.expect_audio);
        let overdue = self.pending.len() >= MAX_PENDING
            || (self.started_at.elapsed() > Duration::from_secs(5) && (have_video || have_audio));
        if !(ready || overdue) {
            return;
        }
        let mut tracks = Vec::new();
        if let Some(p) = self.video.params() {
            tracks.push(Track {
                id: VIDEO_TRACK,
                params: p.clone(),
                clock_rate: VIDEO_CLOCK,
            });
        }
        if let Some(p) = self.audio.params() {
            tracks.push(Track {
                id: AUDIO_TRACK,
                params: p.clone(),
                clock_rate: self.audio.clock_rate(),
            });
        }
        let desc = StreamDesc { tracks };
        tracing::info!(tracks = ?desc.codec_names(), "publishing");
        let stream = self.publisher.start(desc);
        for f in self.pending.drain(..) {
            let known = stream.desc().track(f.track).is_some();
            if known {
                stream.write(f);
            }
        }
        self.stream = Some(stream);
    }
}
