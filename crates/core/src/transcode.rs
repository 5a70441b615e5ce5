//! Transcoded views of a stream: the same frames, with some tracks re-encoded (the audio
//! bridge: AAC → Opus for WebRTC viewers, Opus → AAC for RTMP, HLS and RTSP readers).
//!
//! A [`Transcoded`] stream is made once per source stream and target (by the first reader that
//! needs it, through [`Stream::transcoded`]) and shared by every such reader; its task ends when
//! the last of them drops its handle, or with the source. Other tracks pass through untouched
//! (their frames' bytes are shared), so a reader of the transcoded stream uses the fan-out
//! engine on it exactly as on the source. The codecs themselves live outside the core (the
//! `tidegate-transcode` crate): the core only runs a [`TrackTranscoder`] per replaced track.

use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;

use crate::media::{Frame, StreamDesc, TrackId};
use crate::stream::{RecvError, Stream};

/// Re-encodes the frames of one track.
pub trait TrackTranscoder: Send + 'static {
    /// Takes one frame of the source track and appends the frames it completes (any number,
    /// of the output track: same id, the output codec's clock rate).
    fn push(&mut self, frame: &Frame, out: &mut Vec<Frame>);
}

/// What [`Stream::transcoded`] builds: the output's tracks and a transcoder per replaced track.
pub struct Plan {
    pub desc: StreamDesc,
    pub transcoders: Vec<(TrackId, Box<dyn TrackTranscoder>)>,
    /// Shown by the API: e.g. `MPEG-4 Audio → Opus 128 kbit/s`.
    pub label: String,
}

/// A running transcoded view of a stream, held by its readers.
pub struct Transcoded {
    out: Arc<Stream>,
    label: String,
    stop: CancellationToken,
}

impl Transcoded {
    /// The transcoded stream (read it as the source: subscribe, egresses, extensions).
    pub fn stream(&self) -> &Arc<Stream> {
        &self.out
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for Transcoded {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Transcoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoded")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Per-stream registry of running transcoded views, by key.
#[derive(Default)]
struct Running(Mutex<Vec<(u64, Weak<Transcoded>)>>);

impl Stream {
    /// The running transcoded view of this stream under `key`, or a new one planned by
    /// `plan` (which may refuse: no track to transcode, no codec library).
    pub fn transcoded(
        self: &Arc<Self>,
        key: u64,
        plan: impl FnOnce(&StreamDesc) -> Result<Plan, String>,
    ) -> Result<Arc<Transcoded>, String> {
        let running = self.extension(Running::default);
        let mut reg = running.0.lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|(_, w)| w.strong_count() > 0);
        if let Some(t) = reg
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(t);
        }
        let Plan {
            desc,
            mut transcoders,
            label,
        } = plan(&self.desc())?;
        let out = Arc::new(Stream::new(desc, self.config().clone()));
        let stop = CancellationToken::new();
        let t = Arc::new(Transcoded {
            out: out.clone(),
            label,
            stop: stop.clone(),
        });
        reg.push((key, Arc::downgrade(&t)));
        drop(reg);
        let source = self.clone();
        let mut src = self.subscribe();
        tokio::spawn(async move {
            let mut made = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    // Readers of the view ask the publisher for keyframes through it.
                    _ = out.keyframe_requested() => source.request_keyframe(),
                    r = src.recv() => match r {
                        Ok(f) => {
                            match transcoders.iter_mut().find(|(id, _)| *id == f.track) {
                                Some((_, tc)) => {
                                    tc.push(&f, &mut made);
                                    for m in made.drain(..) {
                                        out.write(m);
                                    }
                                }
                                None => out.write((*f).clone()),
                            }
                        }
                        Err(RecvError::Closed) => break,
                    },
                }
            }
            out.close();
        });
        Ok(t)
    }

    /// Egresses running on this stream's transcoded views.
    pub(crate) fn view_egresses(&self) -> usize {
        let running = self.extension(Running::default);
        let views: Vec<Arc<Transcoded>> = {
            let reg = running.0.lock().unwrap_or_else(|e| e.into_inner());
            reg.iter().filter_map(|(_, w)| w.upgrade()).collect()
        };
        views.iter().map(|t| t.out.running_egresses()).sum()
    }

    /// Labels of this stream's running transcoded views (API, tests).
    pub fn running_transcoders(&self) -> Vec<String> {
        let running = self.extension(Running::default);
        let reg = running.0.lock().unwrap_or_else(|e| e.into_inner());
        reg.iter()
            .filter_map(|(_, w)| w.upgrade())
            .map(|t| t.label.clone())
            .collect()
    }
}
