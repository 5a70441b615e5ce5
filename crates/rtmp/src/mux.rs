//! Mux once, send many: each stream is turned into RTMP chunk bytes once, by one task, into a
//! derived stream that every RTMP player reads. The derived stream reuses the core fan-out
//! (bounded ring, GOP cache, skip-to-keyframe), so a slow player never slows the others.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tidegate_core::{rescale, CodecParams, Frame, Stream, StreamConfig, TrackId};

use crate::chunk::write_message;
use crate::flv;
use crate::session::{
    CSID_AUDIO, CSID_VIDEO, MEDIA_STREAM_ID, MSG_AUDIO, MSG_VIDEO, OUT_CHUNK_SIZE,
};

/// The RTMP-serialised form of one stream.
pub struct RtmpMux {
    pub chunks: Arc<Stream>,
}

struct TrackOut {
    params: CodecParams,
    clock: u32,
    video: bool,
}

impl RtmpMux {
    /// Starts the muxer task for `source`. It ends (closing the derived stream) when the source
    /// ends.
    pub fn start(source: Arc<Stream>) -> RtmpMux {
        let desc = source.desc();
        let chunks = Arc::new(Stream::new(desc.clone(), StreamConfig::default()));
        let out = chunks.clone();
        let mut reader = source.subscribe();
        tokio::spawn(async move {
            let mut tracks: HashMap<TrackId, TrackOut> = desc
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
                .collect();
            let mut base_ms: Option<i64> = None;
            while let Ok(frame) = reader.recv().await {
                if out.is_closed() {
                    break;
                }
                let Some(t) = tracks.get_mut(&frame.track) else {
                    continue;
                };
                let mut bytes = BytesMut::new();
                let (csid, type_id) = if t.video {
                    (CSID_VIDEO, MSG_VIDEO)
                } else {
                    (CSID_AUDIO, MSG_AUDIO)
                };
                let dts_ms = rescale(frame.dts, t.clock, 1000);
                let base = *base_ms.get_or_insert(dts_ms);
                let ts = (dts_ms - base).clamp(0, i64::from(u32::MAX)) as u32;
                if let Some(p) = &frame.params {
                    t.params = (**p).clone();
                    if let Some(seq) = flv::sequence_header(&t.params) {
                        write_message(
                            &mut bytes,
                            csid,
                            ts,
                            type_id,
                            MEDIA_STREAM_ID,
                            &seq,
                            OUT_CHUNK_SIZE,
                        );
                    }
                }
                let cts = rescale(frame.pts, t.clock, 1000) - dts_ms;
                let Some(tag) = flv::frame_tag(&t.params, frame.keyframe, cts, &frame.data) else {
                    continue; // a codec RTMP cannot carry: the play answer already said so
                };
                write_message(
                    &mut bytes,
                    csid,
                    ts,
                    type_id,
                    MEDIA_STREAM_ID,
                    &tag,
                    OUT_CHUNK_SIZE,
                );
                out.write(Frame {
                    track: frame.track,
                    pts: frame.pts,
                    dts: frame.dts,
                    keyframe: frame.keyframe,
                    data: bytes.freeze(),
                    received: frame.received,
                    params: frame.params.clone(),
                });
            }
            out.close();
        });
        RtmpMux { chunks }
    }
}
