//! RTP in → frames: what an RTSP publisher (ANNOUNCE/RECORD) and a camera pulled by our own
//! client share. Per track: the depacketizer, the 32-bit RTP timestamp extended across wraps,
//! the track's start aligned with the session's clock, and the parameter sets found in band.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tidegate_codec::{h264, h265, nal};
use tidegate_core::{CodecParams, Frame, PathManager, SessionInfo, StreamDesc, Track};
use tidegate_rtp::RtpPacket;

use crate::sdp::Incoming;

/// One published RTP track.
pub struct InTrack {
    pub inc: Incoming,
    /// Known parameters (from the SDP, or the last key frame).
    pub params: Option<CodecParams>,
    base: Option<i64>,
    last: Option<u32>,
    ext: i64,
    /// MPEG-TS over RTP: the TS demuxer that makes the stream's tracks.
    ts: Option<Box<TsIn>>,
}

/// `useAbsoluteTimestamp` for an RTP publish or pull: each track's frames are held back (dropped,
/// as MediaMTX does) until its first RTCP sender report says what absolute time its RTP times
/// stand for; from then on the stream knows each frame's absolute time.
pub struct Absolute {
    enabled: bool,
    /// Per track: the last mapping not yet given to the stream, and whether it has one.
    pending: Vec<Option<(i64, std::time::SystemTime)>>,
    anchored: Vec<bool>,
    warned: bool,
}

impl Absolute {
    pub fn new(enabled: bool) -> Absolute {
        Absolute {
            enabled,
            pending: Vec::new(),
            anchored: Vec::new(),
            warned: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn grow(&mut self, idx: usize) {
        if self.pending.len() <= idx {
            self.pending.resize(idx + 1, None);
            self.anchored.resize(idx + 1, false);
        }
    }

    /// An RTCP packet of track `idx`.
    pub fn on_rtcp(&mut self, idx: usize, track: &InTrack, data: &[u8]) {
        if !self.enabled {
            return;
        }
        let Some(sr) = tidegate_rtp::rtcp::sender_info(data) else {
            return;
        };
        if let Some((pts, at)) = track.sender_report(&sr) {
            self.on_sender_report(idx, pts, at);
        }
    }

    /// A sender report of track `idx`, read by whoever parsed it (retina): presentation time
    /// `pts` is the absolute time `at`.
    pub fn on_sender_report(&mut self, idx: usize, pts: i64, at: std::time::SystemTime) {
        if self.enabled {
            self.grow(idx);
            self.pending[idx] = Some((pts, at));
        }
    }

    /// Whether a frame of track `idx` may go into `stream` (its absolute time is known, or
    /// absolute times are not asked for). Gives the stream the track's latest mapping.
    pub fn admits(&mut self, idx: usize, stream: &tidegate_core::Stream) -> bool {
        if !self.enabled {
            return true;
        }
        self.grow(idx);
        if let Some((pts, at)) = self.pending[idx].take() {
            stream.set_absolute_time(idx as u32, pts, at);
            self.anchored[idx] = true;
        }
        if !self.anchored[idx] && !std::mem::replace(&mut self.warned, true) {
            tracing::warn!(
                "received RTP packets without absolute time (no RTCP sender report yet): \
                 skipping them (useAbsoluteTimestamp)"
            );
        }
        self.anchored[idx]
    }
}

/// Marks a stream published as MPEG-TS over RTP: RTSP readers get the TS too (MP2T), as it
/// came; every other egress reads the tracks it was demuxed into.
pub struct PublishedAsMpegts;

/// Marks `stream` when `tracks` are one MPEG-TS track.
pub fn mark_mpegts(tracks: &[&InTrack], stream: &tidegate_core::Stream) {
    if let [one] = tracks {
        if one.is_mpegts() {
            stream.extension(|| PublishedAsMpegts);
        }
    }
}

/// An MPEG-TS track's demuxing: the same as an SRT publish's.
#[derive(Default)]
struct TsIn {
    demux: tidegate_mpegts::demux::Demuxer,
    frames: tidegate_mpegts::frames::TsToFrames,
    /// The tracks, once the program's streams are known.
    desc: Option<StreamDesc>,
}

impl InTrack {
    pub fn new(inc: Incoming) -> InTrack {
        InTrack {
            params: inc.params.clone(),
            ts: inc.depack.is_mp2t().then(Box::default),
            inc,
            base: None,
            last: None,
            ext: 0,
        }
    }

    /// Whether this is an MPEG-TS track (whose tracks come from the TS).
    pub fn is_mpegts(&self) -> bool {
        self.ts.is_some()
    }

    /// An MPEG-TS track's packets through the demuxer: the frames of its tracks (their times
    /// the TS's own, as an SRT publish's).
    fn push_ts(&mut self, p: &RtpPacket<'_>) -> Vec<Frame> {
        let mut units = Vec::new();
        self.inc.depack.push(p, &mut units);
        let Some(ts) = self.ts.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for u in units {
            ts.demux.feed(&u.data);
            while let Some(ev) = ts.demux.poll_event() {
                for o in ts.frames.on_event(ev) {
                    match o {
                        tidegate_mpegts::frames::Output::Tracks(desc) => {
                            if !ts.frames.ignored.is_empty() {
                                tracing::info!(streams = ?ts.frames.ignored, "[RTSP] MPEG-TS streams not carried");
                            }
                            ts.desc = Some(desc);
                        }
                        tidegate_mpegts::frames::Output::Frame(f) => out.push(f),
                    }
                }
            }
        }
        out
    }

    /// Depacketizes `p` and returns the frames it completed (track `idx`, times from
    /// `started`, the session's start). A key frame with new parameter sets carries them.
    pub fn push(&mut self, idx: usize, p: &RtpPacket<'_>, started: Instant) -> Vec<Frame> {
        if self.ts.is_some() {
            return self.push_ts(p);
        }
        let mut units = Vec::new();
        self.inc.depack.push(p, &mut units);
        units
            .into_iter()
            .map(|u| {
                match self.last {
                    Some(last) => self.ext += i64::from(u.timestamp.wrapping_sub(last) as i32),
                    None => self.ext = i64::from(u.timestamp),
                }
                self.last = Some(u.timestamp);
                let clock = i64::from(self.inc.clock);
                let ext = self.ext;
                // Tracks are aligned by arrival: each starts where the session clock is.
                let base = *self.base.get_or_insert_with(|| {
                    ext - (started.elapsed().as_micros() as i64 * clock / 1_000_000)
                });
                let pts = ext - base;
                let changed = if self.inc.video && u.keyframe {
                    self.new_params(&u.data)
                } else {
                    None
                };
                Frame {
                    track: idx as u32,
                    pts,
                    dts: pts,
                    keyframe: u.keyframe,
                    data: u.data,
                    received: Instant::now(),
                    params: changed,
                }
            })
            .collect()
    }

    /// An RTCP sender report of this track: the presentation time (as [`InTrack::push`] gives
    /// them) of its RTP time, and the absolute time it stands for. None before the track's
    /// first packet (its timeline is not set yet).
    pub fn sender_report(
        &self,
        sr: &tidegate_rtp::rtcp::SenderInfo,
    ) -> Option<(i64, std::time::SystemTime)> {
        if self.ts.is_some() {
            return None; // MPEG-TS over RTP: the frames' times come from the TS
        }
        let (base, last) = (self.base?, self.last?);
        let ext = self.ext + i64::from(sr.rtp_ts.wrapping_sub(last) as i32);
        Some((ext - base, tidegate_rtp::rtcp::ntp_time(sr.ntp)))
    }

    /// Parameter sets in a key frame that differ from the known ones: recorded, and returned
    /// when they replace earlier ones (the frame then carries them).
    fn new_params(&mut self, data: &Bytes) -> Option<Arc<CodecParams>> {
        let found = if self.inc.depack.is_av1() {
            // AV1: the sequence header OBU (sent with every keyframe).
            let mut pos = 0;
            let mut seq = None;
            while pos < data.len() {
                let obu = tidegate_codec::av1::parse_obu(&data[pos..]).ok()?;
                if obu.obu_type == tidegate_codec::av1::OBU_SEQUENCE_HEADER {
                    seq = Some(data.slice(pos..pos + obu.len));
                }
                pos += obu.len;
            }
            seq.map(|sequence_header| CodecParams::Av1 { sequence_header })
        } else {
            let nals = nal::split_length_prefixed(data, 4).unwrap_or_default();
            if self.inc.h265 {
                h265::find_params(nals.iter().copied()).map(|(v, s, p)| CodecParams::H265 {
                    vps: Bytes::copy_from_slice(v),
                    sps: Bytes::copy_from_slice(s),
                    pps: Bytes::copy_from_slice(p),
                })
            } else {
                h264::find_params(nals.iter().copied()).map(|(s, p)| CodecParams::H264 {
                    sps: Bytes::copy_from_slice(s),
                    pps: Bytes::copy_from_slice(p),
                })
            }
        }?;
        if self.params.as_ref() == Some(&found) {
            return None;
        }
        let was = self.params.replace(found.clone());
        was.map(|_| Arc::new(found))
    }
}

/// The stream a set of tracks makes, once every track's parameters are known.
pub fn desc<'a>(tracks: impl IntoIterator<Item = &'a InTrack>) -> Option<StreamDesc> {
    let tracks: Vec<&InTrack> = tracks.into_iter().collect();
    if let [one] = tracks[..] {
        if let Some(ts) = &one.ts {
            // MPEG-TS: the tracks the demuxer found (an MPEG-TS media is a publish's only one).
            return ts.desc.clone();
        }
    }
    if tracks.iter().any(|t| t.ts.is_some()) {
        return None;
    }
    let tracks = tracks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            Some(Track {
                id: i as u32,
                params: t.params.clone()?,
                clock_rate: t.inc.clock,
            })
        })
        .collect::<Option<Vec<Track>>>()?;
    Some(StreamDesc { tracks })
}

/// The pulled camera as the publisher of `path`, its stream started with `desc`.
pub(crate) fn publish_camera(
    paths: &PathManager,
    path: &str,
    desc: StreamDesc,
) -> Result<(tidegate_core::Publisher, Arc<tidegate_core::Stream>), String> {
    let session = SessionInfo {
        id: paths.new_session_id(),
        kind: "rtspSource",
        remote: None,
        query: String::new(),
    };
    let mut p = paths
        .publish_source(path, session)
        .map_err(|e| e.to_string())?;
    let stream = p.start(desc);
    Ok((p, stream))
}

/// A task that ends with its owner.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
