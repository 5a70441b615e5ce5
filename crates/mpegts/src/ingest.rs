//! An MPEG-TS publish: bytes in (whatever carries them: SRT, UDP, a Unix socket), the
//! publisher's stream out. The tracks are declared once the program's streams are known.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tidegate_core::{Publisher, Stream};

use crate::demux::Demuxer;
use crate::frames::{Output, TsToFrames};

/// The demuxing state of one publish.
#[derive(Default)]
pub struct TsIngest {
    demux: Demuxer,
    frames: TsToFrames,
    stream: Option<Arc<Stream>>,
    dropped_counted: u64,
}

impl TsIngest {
    /// Feeds TS bytes (any number of whole or partial 188-byte packets); frames go to
    /// `publisher`'s stream, started when the tracks are known. `what` names the protocol in
    /// the log.
    pub fn feed(&mut self, data: &[u8], publisher: &mut Publisher, what: &str) {
        self.demux.feed(data);
        let dropped = self.demux.stats().dropped_pes;
        if dropped != self.dropped_counted {
            if let Some(s) = &self.stream {
                s.stats()
                    .frames_in_error
                    .fetch_add(dropped - self.dropped_counted, Ordering::Relaxed);
            }
            self.dropped_counted = dropped;
        }
        while let Some(ev) = self.demux.poll_event() {
            for out in self.frames.on_event(ev) {
                match out {
                    Output::Tracks(desc) => {
                        tracing::info!(tracks = ?desc.codec_names(), "[{what}] publishing");
                        if !self.frames.ignored.is_empty() {
                            tracing::info!(
                                streams = ?self.frames.ignored,
                                "[{what}] MPEG-TS streams not carried (unsupported in this build)"
                            );
                        }
                        self.stream = Some(publisher.start(desc));
                    }
                    Output::Frame(f) => {
                        if let Some(s) = &self.stream {
                            s.write(f);
                        }
                    }
                }
            }
        }
    }

    /// The stream, once started.
    pub fn stream(&self) -> Option<&Arc<Stream>> {
        self.stream.as_ref()
    }
}
