//! Frames of the packet model to RTMP messages.
//!
//! [`TagMaker`] turns frames into FLV tag bodies with RTMP timestamps; [`RtmpMuxer`] is the
//! fan-out engine's RTMP format (`tidegate_core::fanout`): one per stream while it has players,
//! it chunks every frame once, and the engine writes those bytes to every player's socket.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use tidegate_core::{rescale, CodecParams, Frame, Muxer, StreamDesc, TrackId};

use crate::chunk::write_message;
use crate::flv;
use crate::session::{
    CSID_AUDIO, CSID_VIDEO, MEDIA_STREAM_ID, MSG_AUDIO, MSG_VIDEO, OUT_CHUNK_SIZE,
};

struct TrackOut {
    params: CodecParams,
    clock: u32,
    video: bool,
}

/// One RTMP message made from a frame.
pub struct Tag {
    pub type_id: u8,
    /// Milliseconds since the first frame this maker saw.
    pub timestamp: u32,
    /// A sequence header to send first, when the parameters changed in band.
    pub sequence_header: Option<Bytes>,
    pub body: Bytes,
}

/// Frames to FLV tags for one stream: tracks the current codec parameters and a common time
/// base for all tracks.
pub struct TagMaker {
    tracks: HashMap<TrackId, TrackOut>,
    base_ms: Option<i64>,
}

impl TagMaker {
    pub fn new(desc: &StreamDesc) -> TagMaker {
        TagMaker {
            tracks: desc
                .tracks
                .iter()
                .map(|t| {
                    (
                        t.id,
                        TrackOut {
                            params: t.params.clone(),
                            clock: t.clock_rate,
                            video: t.codec().is_video(),
                        },
                    )
                })
                .collect(),
            base_ms: None,
        }
    }

    /// The tag for a frame; None for a codec RTMP cannot carry, and for audio from before the
    /// first frame (the time base): clamped to it, two frames would share a timestamp and
    /// every later one would play a frame late (audio transcoded, or interleaved a little
    /// behind its video, arrives after the keyframe that starts a reader's stream).
    pub fn make(&mut self, frame: &Frame) -> Option<Tag> {
        let t = self.tracks.get_mut(&frame.track)?;
        let dts_ms = rescale(frame.dts, t.clock, 1000);
        let base = *self.base_ms.get_or_insert(dts_ms);
        if !t.video && dts_ms < base {
            return None;
        }
        let timestamp = (dts_ms - base).clamp(0, i64::from(u32::MAX)) as u32;
        let sequence_header = match &frame.params {
            Some(p) => {
                t.params = (**p).clone();
                flv::sequence_header(&t.params)
            }
            None => None,
        };
        let cts = rescale(frame.pts, t.clock, 1000) - dts_ms;
        let body = flv::frame_tag(&t.params, frame.keyframe, cts, &frame.data)?;
        Some(Tag {
            type_id: if t.video { MSG_VIDEO } else { MSG_AUDIO },
            timestamp,
            sequence_header,
            body,
        })
    }
}

/// The RTMP muxer of the fan-out engine: each frame chunked once for every player of a stream.
pub struct RtmpMuxer {
    maker: TagMaker,
}

impl RtmpMuxer {
    pub fn new(desc: &StreamDesc) -> RtmpMuxer {
        RtmpMuxer {
            maker: TagMaker::new(desc),
        }
    }
}

impl Muxer for RtmpMuxer {
    fn egress_name(&self) -> &'static str {
        "rtmp"
    }

    fn mux(&mut self, frame: &Frame) -> Option<Bytes> {
        // A codec RTMP cannot carry gives no tag: the play answer already said so.
        let tag = self.maker.make(frame)?;
        let csid = if tag.type_id == MSG_VIDEO {
            CSID_VIDEO
        } else {
            CSID_AUDIO
        };
        let mut bytes = BytesMut::new();
        // A sequence header first when the parameters changed in band, then the frame.
        for body in tag.sequence_header.iter().chain(std::iter::once(&tag.body)) {
            write_message(
                &mut bytes,
                csid,
                tag.timestamp,
                tag.type_id,
                MEDIA_STREAM_ID,
                body,
                OUT_CHUNK_SIZE,
            );
        }
        Some(bytes.freeze())
    }

    fn coalesce(&self) -> bool {
        true
    }
}
