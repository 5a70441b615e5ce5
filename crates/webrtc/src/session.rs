//! One WHIP or WHEP session: its str0m `Rtc`, driven by one task.
//!
//! The HTTP handler creates the session (answer made here, so that the offer's errors become
//! HTTP errors); the task then owns the `Rtc`: datagrams from the receive loop, timers, and
//! frames (WHEP) or keyframe requests (WHIP) from the path go in; datagrams go out on the
//! shared UDP socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec as RtcCodec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};
use tidegate_core::{
    Action, AuthRequest, ConnGuard, ConnState, CoreError, Credentials, Frame, Reader, RecvError,
    SessionInfo, StreamReader, TrackId,
};
use tokio::sync::mpsc;

use crate::media::{self, Ingest, IngestAction};
use crate::udp_out::Outbox;
use crate::writer;
use crate::{Datagram, Inner, Resource, WebRtcStats};

const BFRAMES: &str = "the stream has B-frames, which WebRTC cannot carry (it has no decode \
    timestamps): publish with B-frames off for WebRTC viewers (ffmpeg -bf 0, x264 baseline \
    profile, OBS 'bframes=0')";

/// Frames a WHEP session writes in one turn at most (then its datagrams leave).
const MAX_FRAMES_PER_TURN: usize = 16;

/// Due timeouts a session runs in one turn at most (each lets a packet out), before it lets
/// the other tasks run.
const MAX_DUE_PER_TURN: usize = 512;

/// Least time between two keyframe requests a session sends.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Whip,
    Whep,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Whip => "WHIP",
            Role::Whep => "WHEP",
        }
    }
}

/// An HTTP error for the handler to send, with a message for the JSON body and the log.
#[derive(Debug)]
pub(crate) struct Refused {
    pub status: u16,
    pub message: String,
}

impl Refused {
    fn new(status: u16, message: impl Into<String>) -> Refused {
        Refused {
            status,
            message: message.into(),
        }
    }
}

impl From<CoreError> for Refused {
    fn from(e: CoreError) -> Refused {
        let status = match &e {
            CoreError::InvalidName(_) => 400,
            CoreError::NotConfigured(_) | CoreError::NoOnePublishing(_) => 404,
            CoreError::NotPublishable(_) => 400,
            CoreError::Busy(_) => 409,
            CoreError::TooManyReaders(..) => 503,
            CoreError::Auth(tidegate_core::AuthError::IpNotAllowed(..)) => 403,
            CoreError::Auth(_) => 401,
            CoreError::ProxyHeader(_) | CoreError::Tls(_) => 500,
        };
        Refused::new(status, e.to_string())
    }
}

/// What the handler answers with.
pub(crate) struct Created {
    pub answer: String,
    pub secret: String,
    pub ufrag: String,
}

pub(crate) struct Request<'a> {
    pub role: Role,
    pub path: &'a str,
    pub query: &'a str,
    pub offer: &'a str,
    pub creds: Credentials,
    pub remote: SocketAddr,
}

/// ICE credentials and resource ids: from the OS's CSPRNG (a guessed resource id could end
/// or renegotiate someone else's session).
fn random_hex(n: usize) -> String {
    tidegate_core::text::secret_hex(n)
}

/// The codecs an offer lists (`a=rtpmap` names, upper case).
fn offered_codecs(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|enc| enc.split('/').next())
        .map(|n| n.to_ascii_uppercase())
        .collect()
}

pub(crate) fn fuzz_offer(text: &str) {
    let codecs = offered_codecs(text);
    let Ok(offer) = SdpOffer::from_sdp_string(text) else {
        return;
    };
    let mut cfg = RtcConfig::new().set_ice_lite(true).clear_codecs();
    for c in [RtcCodec::H264, RtcCodec::Vp8, RtcCodec::Opus] {
        if codecs.iter().any(|o| o == codec_sdp_name(c)) {
            cfg = enable(cfg, c);
        }
    }
    let mut rtc = cfg.build(Instant::now());
    if let Ok(answer) = rtc.sdp_api().accept_offer(offer) {
        let _ = complete_rejected_media(text, &answer.to_sdp_string());
    }
}

/// RFC 3264 §6: a rejected medium (port 0) still lists a format, and sends nothing. str0m
/// writes `m=audio 0 UDP/TLS/RTP/SAVPF` with no format (and its usual direction), which strict
/// parsers (aiortc) refuse: give it the offer's first format for that medium, and `inactive`.
fn complete_rejected_media(offer: &str, answer: &str) -> String {
    // The offer's media sections: (m= line body, rtpmap lines).
    let mut sections: Vec<(&str, Vec<&str>)> = Vec::new();
    for l in offer.lines().map(str::trim) {
        if let Some(m) = l.strip_prefix("m=") {
            sections.push((m, Vec::new()));
        } else if let (Some(last), true) = (sections.last_mut(), l.starts_with("a=rtpmap:")) {
            last.1.push(l);
        }
    }
    let mut out = String::with_capacity(answer.len() + 64);
    let mut index = None::<usize>;
    let mut rejected = false;
    for line in answer.split("\r\n").filter(|l| !l.is_empty()) {
        let mut line = line.to_string();
        let mut extra = None;
        if let Some(m) = line.strip_prefix("m=") {
            index = Some(index.map_or(0, |i| i + 1));
            let parts: Vec<&str> = m.split_whitespace().collect();
            rejected = parts.get(1) == Some(&"0");
            if rejected && parts.len() == 3 {
                let section = index.and_then(|i| sections.get(i));
                let fmt = section
                    .and_then(|(m, _)| m.split_whitespace().nth(3))
                    .unwrap_or("0");
                line = format!("m={} 0 {} {fmt}", parts[0], parts[2]);
                let prefix = format!("a=rtpmap:{fmt} ");
                extra = section
                    .and_then(|(_, maps)| maps.iter().find(|l| l.starts_with(&prefix)))
                    .map(|l| l.to_string());
            }
        } else if rejected && matches!(line.as_str(), "a=sendonly" | "a=recvonly" | "a=sendrecv") {
            line = "a=inactive".into();
        }
        out.push_str(&line);
        out.push_str("\r\n");
        if let Some(e) = extra {
            out.push_str(&e);
            out.push_str("\r\n");
        }
    }
    out
}

/// A viewer's tracks in one media stream: browsers synchronise audio and video (lip sync,
/// from the RTCP sender reports) only between tracks of one stream (the `msid` stream id),
/// and str0m gives each medium it answers a random one of its own.
fn one_media_stream(answer: &str) -> String {
    let id_of = |l: &str| -> Option<String> {
        let rest = l
            .strip_prefix("a=msid:")
            .or_else(|| l.split_once(" msid:").map(|(_, r)| r))?;
        rest.split_whitespace().next().map(str::to_string)
    };
    let Some(stream) = answer
        .split("\r\n")
        .filter(|l| l.starts_with("a=msid:") || l.starts_with("a=ssrc:"))
        .find_map(id_of)
    else {
        return answer.to_string();
    };
    let mut out = String::with_capacity(answer.len());
    for line in answer.split("\r\n").filter(|l| !l.is_empty()) {
        let fixed = if line.starts_with("a=msid-semantic:") {
            format!("a=msid-semantic: WMS {stream}")
        } else if let (true, Some(id)) = (
            line.starts_with("a=msid:") || line.starts_with("a=ssrc:"),
            id_of(line),
        ) {
            line.replacen(&format!("msid:{id}"), &format!("msid:{stream}"), 1)
        } else {
            line.to_string()
        };
        out.push_str(&fixed);
        out.push_str("\r\n");
    }
    out
}

fn codec_sdp_name(c: RtcCodec) -> &'static str {
    match c {
        RtcCodec::H264 => "H264",
        RtcCodec::H265 => "H265",
        RtcCodec::Vp8 => "VP8",
        RtcCodec::Vp9 => "VP9",
        RtcCodec::Av1 => "AV1",
        RtcCodec::Opus => "OPUS",
        RtcCodec::PCMU => "PCMU",
        RtcCodec::PCMA => "PCMA",
        _ => "?",
    }
}

pub(crate) fn enable(cfg: RtcConfig, c: RtcCodec) -> RtcConfig {
    match c {
        RtcCodec::H264 => cfg.enable_h264(true),
        RtcCodec::H265 => cfg.enable_h265(true),
        RtcCodec::Vp8 => cfg.enable_vp8(true),
        RtcCodec::Vp9 => cfg.enable_vp9(true),
        RtcCodec::Av1 => cfg.enable_av1(true),
        RtcCodec::Opus => cfg.enable_opus(true, false),
        RtcCodec::PCMU => cfg.enable_pcmu(true, false),
        RtcCodec::PCMA => cfg.enable_pcma(true, false),
        _ => cfg,
    }
}

/// A track of the path that a WHEP viewer receives.
struct OutTrack {
    track: TrackId,
    codec: RtcCodec,
    kind: MediaKind,
    clock: u32,
    mid: Option<Mid>,
    pt: Option<Pt>,
    /// RTP mode: the next sequence number of this viewer's packets on the track.
    seq: u64,
}

struct Whep {
    reader: Reader,
    /// The stream with its AAC track as Opus (the audio bridge), when the viewer gets it so.
    transcoded: Option<Arc<tidegate_core::Transcoded>>,
    /// Every track is cut once per stream by the engine's [`media::RtcMuxer`] and written as
    /// RTP (str0m's RTP mode) by the stream's [`writer`]; otherwise (VP8, VP9, AV1) this
    /// session reads the stream's frames (`sub`) and str0m's packetizers cut them.
    rtp_mode: bool,
    sub: Option<StreamReader>,
    /// RTP mode: the viewer's place with its stream's writer, once connected.
    joined: Option<writer::Joined>,
}

impl Whep {
    /// The stream the viewer's frames come from: the path's, or its transcoded view.
    fn stream(&self) -> &Arc<tidegate_core::Stream> {
        match &self.transcoded {
            Some(t) => t.stream(),
            None => self.reader.stream(),
        }
    }
}

/// Whether `track` (AAC) reaches this viewer as Opus, and the running bridge if so.
fn bridge_aac(
    reader: &Reader,
    track: &tidegate_core::Track,
    offered: &[String],
) -> Result<Arc<tidegate_core::Transcoded>, String> {
    let conf = reader.conf();
    if !conf.audio_transcode {
        return Err("browsers' WebRTC has no AAC, and audioTranscode is off for this path".into());
    }
    if !offered.iter().any(|o| o == codec_sdp_name(RtcCodec::Opus)) {
        return Err("browsers' WebRTC has no AAC, and the client did not offer Opus".into());
    }
    if let Some(why) = tidegate_transcode::why_not_opus(track) {
        return Err(format!(
            "browsers' WebRTC has no AAC, and it cannot be transcoded: {why}"
        ));
    }
    tidegate_transcode::aac_to_opus(reader.stream(), conf.audio_transcode_bitrate)
        .map_err(|e| e.to_string())
}

/// A session's `Rtc` and what the stream's writer needs of it (RTP-mode viewers), shared by
/// the session's task and the writer through a [`writer::Cell`].
pub(crate) struct Core {
    rtc: Rtc,
    /// WHEP: the tracks the viewer receives.
    out: Vec<OutTrack>,
    /// Events the writer took from the `Rtc`, for the session's task.
    events: Vec<Event>,
    /// Set by the writer: why the session ends.
    pub ended: Option<String>,
    /// When the session's task next gives the `Rtc` time.
    wake_at: Instant,
    /// The writer's turn left the `Rtc` wanting time before `wake_at`.
    early: bool,
    /// The peer is connected (the writer writes only then).
    connected: bool,
    /// A viewer that joined waits for a video keyframe (when it receives video).
    waiting_key: bool,
    /// The wall-clock times given to str0m for its sender reports.
    wallclock: Wallclock,
}

/// Wall-clock times for a viewer's frames, from their timestamps: one mapping for every
/// track, so that each track's RTCP sender reports map RTP time to the same clock and the
/// viewer's lip sync follows the publisher's timestamps, not the order or jitter with which
/// each track's frames arrived (or how late a transcoder finished them). The mapping is the
/// earliest arrival seen (arrival less time), so no frame's wall-clock time is in the future
/// (str0m's sender reports need that); it starts again after a jump in the timestamps.
#[derive(Default)]
struct Wallclock {
    /// An arrival instant and the frame's time (µs) then.
    anchor: Option<(Instant, i64)>,
}

impl Wallclock {
    /// A frame later than the mapping by more than this is a jump in the timestamps.
    const JUMP: Duration = Duration::from_secs(1);

    fn at(&mut self, f: &Frame, clock: u32) -> Instant {
        let us = tidegate_core::rescale(f.pts, clock, 1_000_000);
        if let Some((at, base)) = self.anchor {
            let d = us - base;
            let mapped = if d >= 0 {
                at.checked_add(Duration::from_micros(d as u64))
            } else {
                at.checked_sub(Duration::from_micros(d.unsigned_abs()))
            };
            if let Some(t) = mapped {
                if t <= f.received && f.received - t <= Self::JUMP {
                    return t;
                }
            }
        }
        // The first frame, one that came earlier than the mapping (the mapping moves to it),
        // or a jump.
        self.anchor = Some((f.received, us));
        f.received
    }
}

impl Core {
    fn new(rtc: Rtc, out: Vec<OutTrack>) -> Core {
        Core {
            rtc,
            out,
            events: Vec::new(),
            ended: None,
            wake_at: Instant::now(),
            early: false,
            connected: false,
            waiting_key: false,
            wallclock: Wallclock::default(),
        }
    }

    /// Puts out what the `Rtc` has until it wants time to pass: UDP datagrams into `outbox`,
    /// ICE-TCP frames at once, events kept for the session's task. str0m's pacer (none set: its
    /// null pacer) lets one packet out per timeout, so timeouts already due are run here,
    /// without a timer each. Returns the next timeout.
    fn pump(&mut self, inner: &Inner, outbox: &mut Outbox) -> Result<Instant, String> {
        let mut due = 0;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if t <= Instant::now() && due < MAX_DUE_PER_TURN {
                        due += 1;
                        self.rtc
                            .handle_input(Input::Timeout(Instant::now()))
                            .map_err(|e| format!("timer: {e}"))?;
                        continue;
                    }
                    return Ok(t);
                }
                Ok(Output::Transmit(t)) => {
                    if t.proto == Protocol::Udp && inner.socket.is_some() {
                        outbox.push(t.destination, t.contents.into());
                    } else {
                        inner.transmit_tcp(&t);
                    }
                }
                Ok(Output::Event(e)) => self.events.push(e),
                Err(e) => return Err(format!("WebRTC error: {e}")),
            }
        }
    }

    /// The writer's turn for this viewer: writes the batch's frames of its tracks (their
    /// payloads shared with every viewer), then puts out its datagrams. True when a frame was
    /// written.
    pub(crate) fn write(
        &mut self,
        made: &[writer::Made],
        inner: &Inner,
        outbox: &mut Outbox,
    ) -> bool {
        if !self.connected || self.ended.is_some() {
            return false;
        }
        let mut wrote = false;
        for (f, payloads) in made {
            let Some(out) = self.out.iter_mut().find(|t| t.track == f.track) else {
                continue;
            };
            let Some(mid) = out.mid else {
                continue;
            };
            let video = out.kind == MediaKind::Video;
            if self.waiting_key {
                if !(video && f.keyframe) {
                    continue;
                }
                self.waiting_key = false;
            }
            if video && f.pts != f.dts {
                // B-frames appeared after the answer: the session ends with the reason.
                self.ended = Some(BFRAMES.to_string());
                return wrote;
            }
            let pt = match out.pt {
                Some(pt) => pt,
                None => {
                    let Some(pt) = negotiated_pt(&self.rtc, mid, out.codec) else {
                        continue;
                    };
                    out.pt = Some(pt);
                    pt
                }
            };
            let time = media::rtp_time(f.pts, out.clock, out.codec);
            let wall = self.wallclock.at(f, out.clock);
            let mut api = self.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                continue;
            };
            for (marker, p) in payloads {
                tx.write_rtp(
                    RtpWrite::new(pt, out.seq.into(), time, wall, p.clone())
                        .marker(*marker)
                        .nackable(video),
                );
                out.seq += 1;
            }
            wrote = true;
        }
        if wrote {
            // Packets written as RTP wait in str0m's send queue for time to move on.
            let r = self
                .rtc
                .handle_input(Input::Timeout(Instant::now()))
                .map_err(|e| format!("timer: {e}"))
                .and_then(|_| self.pump(inner, outbox));
            match r {
                Ok(t) if t < self.wake_at => self.early = true,
                Ok(_) => {}
                Err(e) => {
                    self.ended.get_or_insert(e);
                }
            }
        }
        wrote
    }

    /// The session's task has something to do that the writer left it.
    pub(crate) fn wants_task(&self) -> bool {
        !self.events.is_empty() || self.ended.is_some() || self.early
    }
}

enum RoleState {
    Whip(Box<Ingest>),
    Whep(Box<Whep>),
}

/// Validates the offer and the client, takes the path, answers, and starts the session task.
pub(crate) async fn create(inner: &Arc<Inner>, req: Request<'_>) -> Result<Created, Refused> {
    let Some(permit) = inner.limiter.admit(req.remote.ip(), true) else {
        return Err(Refused::new(
            503,
            "too many WebRTC sessions (maxConnections, maxConnectionsPerIP)".to_string(),
        ));
    };
    let offer = SdpOffer::from_sdp_string(req.offer).map_err(|e| {
        // The parser's message carries pointers; keep its human lines.
        let text = e.to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split(" at PointerOffset").next().unwrap_or(l).trim())
            .filter(|l| !l.is_empty())
            .collect();
        Refused::new(400, format!("invalid SDP offer: {}", lines.join("; ")))
    })?;
    let offered = offered_codecs(req.offer);
    let action = match req.role {
        Role::Whip => Action::Publish,
        Role::Whep => Action::Read,
    };
    let id = inner.paths.new_session_id();
    let mut ask = AuthRequest::new(action, req.path, "webrtc", req.creds.clone())
        .with_query(req.query)
        .with_id(id);
    let (_, grant) = inner.paths.authorize_path(&mut ask).await?;
    let path = ask.path.clone();
    let req = Request { path: &path, ..req };
    let info = SessionInfo {
        id,
        kind: "webRTCSession",
        remote: Some(req.remote),
        query: req.query.to_string(),
    };
    let mut cfg = RtcConfig::new()
        .set_ice_lite(true)
        .clear_codecs()
        .set_stats_interval(Some(Duration::from_secs(1)))
        // Sender reports once a second for audio too (str0m's default is every 5 s): a browser
        // synchronises audio with video only after two reports of each, so lip sync would
        // wait ten seconds.
        .set_rtcp_report_interval_audio(Duration::from_secs(1));
    let mut warnings = Vec::new();
    // A viewer's tracks: carried, and left out with why (the API shows it).
    let mut carriage: Option<tidegate_core::Carriage> = None;
    let mut whep_out = Vec::new();
    let state = match req.role {
        Role::Whip => {
            // One video and one audio codec, the most widely re-muxable first, so that the
            // publisher cannot pick one that no egress carries when it has a better one.
            let video = [
                RtcCodec::H264,
                RtcCodec::Vp8,
                RtcCodec::Vp9,
                RtcCodec::H265,
                RtcCodec::Av1,
            ]
            .into_iter()
            .find(|c| offered.iter().any(|o| o == codec_sdp_name(*c)));
            let audio = [RtcCodec::Opus, RtcCodec::PCMU, RtcCodec::PCMA]
                .into_iter()
                .find(|c| offered.iter().any(|o| o == codec_sdp_name(*c)));
            if video.is_none() && audio.is_none() {
                return Err(Refused::new(
                    400,
                    "the offer has no codec Tidegate takes over WHIP (H264, VP8, VP9, H265, AV1, Opus, PCMU, PCMA)",
                ));
            }
            for c in [video, audio].into_iter().flatten() {
                cfg = enable(cfg, c);
            }
            let publisher = inner.paths.publish(req.path, info.clone())?;
            RoleState::Whip(Box::new(Ingest::new(publisher, 0)))
        }
        Role::Whep => {
            let reader = inner.paths.read_or_demand(req.path, info.clone()).await?;
            if reader
                .stream()
                .stats()
                .reordered_video
                .load(Ordering::Relaxed)
            {
                return Err(Refused::new(400, BFRAMES));
            }
            let desc = reader.desc();
            let mut out = Vec::new();
            let mut have_video = false;
            let mut have_audio = false;
            let mut c_out = tidegate_core::Carriage::default();
            let mut transcoded = None;
            for t in &desc.tracks {
                let video = t.codec().is_video();
                let name = t.codec().name();
                if (video && have_video) || (!video && have_audio) {
                    c_out.dropped.push((
                        name,
                        "a WebRTC viewer gets one video and one audio track".into(),
                    ));
                    continue;
                }
                let mut clock = t.clock_rate;
                let mut carried = name;
                let c = match media::rtc_codec(&t.params) {
                    Some(c) => c,
                    None if matches!(t.params, tidegate_core::CodecParams::Aac { .. }) => {
                        // The audio bridge: AAC → Opus, once per stream.
                        match bridge_aac(&reader, t, &offered) {
                            Ok(v) => {
                                transcoded = Some(v);
                                clock = 48_000;
                                carried = "MPEG-4 Audio → Opus";
                                RtcCodec::Opus
                            }
                            Err(why) => {
                                warnings
                                    .push(format!("track {} ({name}) is not sent: {why}", t.id));
                                c_out.dropped.push((name, why));
                                continue;
                            }
                        }
                    }
                    None => {
                        warnings.push(format!(
                            "track {} ({name}) is not sent: WebRTC cannot carry it",
                            t.id,
                        ));
                        c_out
                            .dropped
                            .push((name, format!("WebRTC cannot carry {name}")));
                        continue;
                    }
                };
                if !offered.iter().any(|o| o == codec_sdp_name(c)) {
                    warnings.push(format!(
                        "track {} ({name}) is not sent: the client did not offer it",
                        t.id,
                    ));
                    c_out
                        .dropped
                        .push((name, "the client did not offer it".into()));
                    continue;
                }
                c_out.carried.push(carried);
                cfg = enable(cfg, c);
                if video {
                    have_video = true;
                } else {
                    have_audio = true;
                }
                out.push(OutTrack {
                    track: t.id,
                    codec: c,
                    kind: if video {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    },
                    clock,
                    mid: None,
                    pt: None,
                    seq: u64::from(tidegate_core::text::random_u64() as u16),
                });
            }
            if out.is_empty() {
                return Err(Refused::new(
                    400,
                    format!(
                        "no track of '{}' can be sent to this client ({})",
                        req.path,
                        warnings.join("; ")
                    ),
                ));
            }
            carriage = Some(c_out);
            let rtp_mode = out.iter().all(|t| media::shared_packer(t.codec).is_some());
            cfg = cfg.set_rtp_mode(rtp_mode);
            // Viewers' transport-wide congestion feedback would feed a bandwidth estimate that
            // a relay of one encoding has no use for: not negotiated, so not sent to us.
            let mut exts = ExtensionMap::empty();
            for (id, e) in ExtensionMap::standard().iter() {
                if *e != Extension::TransportSequenceNumber {
                    exts.set(id, e.clone());
                }
            }
            cfg = cfg.set_extension_map(exts);
            whep_out = out;
            RoleState::Whep(Box::new(Whep {
                rtp_mode,
                reader,
                transcoded,
                sub: None,
                joined: None,
            }))
        }
    };
    let ufrag = random_hex(16);
    cfg = cfg.set_local_ice_credentials(IceCreds {
        ufrag: ufrag.clone(),
        pass: random_hex(32),
    });
    let mut rtc = cfg.build(Instant::now());
    for addr in &inner.candidates {
        match Candidate::host(*addr, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::debug!("[WebRTC] candidate {addr}: {e}"),
        }
    }
    for addr in &inner.tcp_candidates {
        let c = Candidate::builder()
            .tcp()
            .host(*addr)
            .tcptype(str0m::net::TcpType::Passive)
            .build();
        match c {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::debug!("[WebRTC] TCP candidate {addr}: {e}"),
        }
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| Refused::new(400, format!("cannot answer the offer: {e}")))?;
    let mut answer = complete_rejected_media(req.offer, &answer.to_sdp_string());
    if req.role == Role::Whep {
        answer = one_media_stream(&answer);
    }

    let guard = inner.sessions.add(id, req.remote);
    let role = match req.role {
        Role::Whip => "publisher",
        Role::Whep => "reader",
    };
    grant.enforce(
        guard.kick.clone(),
        format!("[WebRTC] {role} of '{}'", req.path),
    );
    guard.set(
        match req.role {
            Role::Whip => ConnState::Publish,
            Role::Whep => ConnState::Read,
        },
        req.path,
        req.query,
    );
    for w in &warnings {
        tracing::warn!(session = id, "[WebRTC] {w}");
    }
    guard.extra.update_notes(|n| n.warnings = warnings.clone());
    if let Some(c) = carriage {
        guard.counters.set_carriage(c);
    }
    let secret = random_hex(32);
    let (tx, rx) = mpsc::channel(1024);
    let (cand_tx, cand_rx) = mpsc::channel(16);
    let key = crate::next_key();
    inner.add_route(&ufrag, key, tx);
    inner.resources().insert(
        secret.clone(),
        Resource {
            path: req.path.to_string(),
            role: req.role,
            kick: guard.kick.clone(),
            candidates: cand_tx,
        },
    );
    tracing::info!(
        session = id,
        "[WebRTC] {} session created for '{}' from {}",
        req.role.name(),
        req.path,
        req.remote
    );
    let task = Task {
        inner: inner.clone(),
        key,
        role: req.role,
        secret: secret.clone(),
        rx,
        cand_rx,
        guard,
        _permit: permit,
    };
    // One span per session: protocol, session id, role, path, address.
    let span = tracing::info_span!(
        "webrtc",
        session = id,
        role = req.role.name(),
        path = req.path,
        remote = %req.remote
    );
    inner.tasks.spawn(tracing::Instrument::instrument(
        task.run(writer::Cell::new(Core::new(rtc, whep_out)), state),
        span,
    ));
    Ok(Created {
        answer,
        secret,
        ufrag,
    })
}

struct Task {
    inner: Arc<Inner>,
    key: u64,
    role: Role,
    secret: String,
    rx: mpsc::Receiver<Datagram>,
    cand_rx: mpsc::Receiver<String>,
    guard: ConnGuard<WebRtcStats>,
    /// Counted against the session limits while the session lives.
    _permit: tidegate_core::guard::ConnPermit,
}

enum RoleEvent {
    Frame(Result<Arc<Frame>, RecvError>),
    KeyframeWanted,
}

async fn role_event(state: &mut RoleState) -> RoleEvent {
    match state {
        RoleState::Whep(w) => match &mut w.sub {
            Some(s) => RoleEvent::Frame(s.recv().await),
            None => std::future::pending().await,
        },
        RoleState::Whip(i) => match &i.stream {
            Some(s) => {
                s.keyframe_requested().await;
                RoleEvent::KeyframeWanted
            }
            None => std::future::pending().await,
        },
    }
}

/// Per-session bookkeeping the event handlers share.
struct Ctx {
    connected: bool,
    ended: Option<String>,
    last_keyframe_request: Option<Instant>,
    egress_packets: HashMap<Mid, (u64, u64, u64)>,
    ingress_packets: HashMap<Mid, (u64, u64)>,
    bytes_sent: u64,
    /// Where the peer's last datagram came from (the remote side of the pair in use).
    last_source: Option<SocketAddr>,
    local_addr: SocketAddr,
    /// Ingress time of the frame just handed to str0m, until its packets are sent.
    sent_pending: Option<Instant>,
    /// UDP datagrams of this turn, sent together at its end.
    outbox: Outbox,
    /// The `Rtc` is alive (as of the last turn).
    alive: bool,
}

impl Ctx {
    fn keyframe_due(&mut self, now: Instant) -> bool {
        if self
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL)
        {
            return false;
        }
        self.last_keyframe_request = Some(now);
        true
    }
}

impl Task {
    async fn run(mut self, cell: Arc<writer::Cell>, mut state: RoleState) {
        let started = tokio::time::Instant::now();
        let handshake_deadline = started + self.inner.config.handshake_timeout;
        let kick = self.guard.kick.clone();
        let shutdown = self.inner.shutdown.clone();
        let udp_local = self
            .inner
            .socket
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let tcp_local = self
            .inner
            .tcp_candidates
            .first()
            .copied()
            .unwrap_or(udp_local);
        let local_addr = udp_local;
        let mut ctx = Ctx {
            connected: false,
            ended: None,
            last_keyframe_request: None,
            egress_packets: HashMap::new(),
            ingress_packets: HashMap::new(),
            bytes_sent: 0,
            last_source: None,
            local_addr,
            sent_pending: None,
            outbox: Default::default(),
            alive: true,
        };
        // Only a WHIP session watches its incoming layers for silence; a WHEP viewer's task
        // wakes for its peer, its timers and its writer alone.
        let whip = matches!(state, RoleState::Whip(_));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let turned = {
                let mut core = cell.lock();
                self.turn(&mut core, &mut state, &mut ctx)
            };
            self.flush(&mut ctx.outbox).await;
            if let RoleState::Whep(w) = &mut state {
                if ctx.connected && w.rtp_mode && w.joined.is_none() {
                    // Frames come from the stream's writer from now on.
                    w.joined = Some(writer::join(&self.inner, w.stream(), cell.clone()));
                }
            }
            let timeout = match turned {
                Ok(t) => t,
                Err(e) => {
                    ctx.ended.get_or_insert(e);
                    break;
                }
            };
            if let Some(received) = ctx.sent_pending.take() {
                self.inner.latency.observe(received.elapsed());
            }
            if ctx.ended.is_some() || !ctx.alive {
                break;
            }
            let now = Instant::now();
            let wake = tokio::time::Instant::now() + timeout.saturating_duration_since(now);
            let wake = if ctx.connected {
                wake
            } else {
                wake.min(handshake_deadline)
            };
            tokio::select! {
                _ = kick.cancelled() => {
                    ctx.ended = Some("closed by the client or the API".into());
                }
                _ = shutdown.cancelled() => {
                    ctx.ended = Some("server shutting down".into());
                }
                // The stream's writer left events, an end or an earlier timeout.
                _ = cell.wake.notified() => {}
                d = self.rx.recv() => {
                    let Some(d) = d else { break };
                    ctx.last_source = Some(d.source);
                    if d.tcp {
                        ctx.local_addr = tcp_local;
                    }
                    let Ok(contents) = d.data.as_ref().try_into() else { continue };
                    let input = Input::Receive(d.at, Receive {
                        proto: if d.tcp { Protocol::Tcp } else { Protocol::Udp },
                        source: d.source,
                        destination: if d.tcp { tcp_local } else { udp_local },
                        contents,
                    });
                    if let Err(e) = cell.lock().rtc.handle_input(input) {
                        tracing::debug!("[WebRTC] input: {e}");
                    }
                }
                c = self.cand_rx.recv() => {
                    if let Some(line) = c {
                        match Candidate::from_sdp_string(&line) {
                            Ok(c) => cell.lock().rtc.add_remote_candidate(c),
                            Err(e) => tracing::debug!("[WebRTC] candidate {line:?}: {e}"),
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if !ctx.connected && tokio::time::Instant::now() >= handshake_deadline {
                        ctx.ended = Some(format!(
                            "no connection within webrtcHandshakeTimeout ({:?})",
                            self.inner.config.handshake_timeout
                        ));
                    } else if let Err(e) = cell.lock().rtc.handle_input(Input::Timeout(Instant::now())) {
                        ctx.ended = Some(format!("timer: {e}"));
                    }
                }
                _ = tick.tick(), if whip => {
                    if let RoleState::Whip(i) = &mut state {
                        let quiet = i.tick(Instant::now());
                        if !quiet.is_empty() && ctx.keyframe_due(Instant::now()) {
                            let mut core = cell.lock();
                            for (mid, rid) in quiet {
                                if let Some(mut w) = core.rtc.writer(mid) {
                                    let _ = w.request_keyframe(Some(rid), KeyframeRequestKind::Pli);
                                }
                            }
                        }
                    }
                }
                ev = role_event(&mut state) => match ev {
                    RoleEvent::Frame(Ok(frame)) => {
                        if let RoleState::Whep(w) = &mut state {
                            let mut core = cell.lock();
                            // This frame and those that came with it leave in one turn.
                            let mut next = Some(frame);
                            let mut taken = 0;
                            while let Some(frame) = next.take() {
                                if let Err(e) = self.write_frame(&mut core, &frame) {
                                    ctx.ended = Some(e);
                                    break;
                                } else if core.out.iter().any(|t| t.track == frame.track) {
                                    // Measured once this frame's packets have left.
                                    ctx.sent_pending.get_or_insert(frame.received);
                                }
                                taken += 1;
                                if taken < MAX_FRAMES_PER_TURN {
                                    match w.sub.as_mut().map(|s| s.try_recv()) {
                                        Some(Ok(f)) => next = f,
                                        Some(Err(RecvError::Closed)) => {
                                            ctx.ended = Some("the publisher left".into());
                                        }
                                        None => {}
                                    }
                                }
                            }
                            // Written frames wait in str0m's send queue for time to move on.
                            if let Err(e) = core.rtc.handle_input(Input::Timeout(Instant::now())) {
                                ctx.ended = Some(format!("timer: {e}"));
                            }
                        }
                    }
                    RoleEvent::Frame(Err(RecvError::Closed)) => {
                        ctx.ended = Some("the publisher left".into());
                    }
                    RoleEvent::KeyframeWanted => {
                        if let (true, RoleState::Whip(i)) = (ctx.keyframe_due(Instant::now()), &state) {
                            request_keyframe(&mut cell.lock().rtc, &i.video_mids);
                        }
                    }
                },
            }
            if ctx.ended.is_some() {
                break;
            }
        }
        // Off the writer's list first, so that it writes no more to this session.
        if let RoleState::Whep(w) = &mut state {
            w.joined = None;
        }
        // Tell the peer (DTLS close_notify) on the way out when we can.
        {
            let mut core = cell.lock();
            let _ = core.rtc.close();
            while let Ok(Output::Transmit(t)) = core.rtc.poll_output() {
                if t.proto == Protocol::Udp && self.inner.socket.is_some() {
                    ctx.outbox.push(t.destination, t.contents.into());
                } else {
                    self.inner.transmit_tcp(&t);
                }
            }
        }
        self.flush(&mut ctx.outbox).await;
        self.inner.remove_routes(self.key);
        self.inner.resources().remove(&self.secret);
        tracing::info!(
            "[WebRTC] {} session closed: {}",
            self.role.name(),
            ctx.ended.as_deref().unwrap_or("connection ended")
        );
    }

    /// One turn of the session's task with its `Rtc`: puts out what it has, handles its
    /// events (and what they put out). Returns when it next wants time.
    fn turn(
        &mut self,
        core: &mut Core,
        state: &mut RoleState,
        ctx: &mut Ctx,
    ) -> Result<Instant, String> {
        if let Some(e) = core.ended.take() {
            if e == BFRAMES {
                self.guard
                    .extra
                    .update_notes(|n| n.warnings.push(BFRAMES.to_string()));
            }
            return Err(e);
        }
        core.early = false;
        let mut rounds = 0;
        loop {
            let t = core.pump(&self.inner, &mut ctx.outbox)?;
            let events = std::mem::take(&mut core.events);
            if events.is_empty() || rounds >= 8 {
                ctx.alive = core.rtc.is_alive();
                core.wake_at = t;
                return Ok(t);
            }
            for e in events {
                self.event(core, state, ctx, e);
            }
            rounds += 1;
        }
    }

    async fn flush(&self, outbox: &mut Outbox) {
        if let (false, Some(sock)) = (outbox.is_empty(), &self.inner.socket) {
            outbox.flush(sock.as_ref()).await;
        }
    }

    fn event(&mut self, core: &mut Core, state: &mut RoleState, ctx: &mut Ctx, e: Event) {
        let stats = &self.guard.extra;
        match e {
            Event::Connected => {
                ctx.connected = true;
                stats
                    .peer_connection_established
                    .store(true, Ordering::Relaxed);
                let (local, remote) = (ctx.local_addr, ctx.last_source);
                stats.update_notes(|n| {
                    n.local_candidate = local.to_string();
                    n.remote_candidate = remote.map(|r| r.to_string()).unwrap_or_default();
                });
                tracing::info!(
                    "[WebRTC] peer connection established ({} <-> {})",
                    local,
                    remote.map(|r| r.to_string()).unwrap_or_default()
                );
                if let RoleState::Whep(w) = state {
                    // Join live, at the next keyframe, and ask the publisher for one now.
                    let stream = w.stream().clone();
                    if w.rtp_mode {
                        // The stream's writer takes it from here (joined after this turn).
                        core.connected = true;
                        core.waiting_key = core.out.iter().any(|t| t.kind == MediaKind::Video);
                    } else {
                        w.sub = Some(stream.subscribe_from_next_keyframe());
                    }
                    stream.request_keyframe();
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                ctx.ended = Some("ICE disconnected (the peer went away)".into());
            }
            Event::MediaAdded(m) => match state {
                RoleState::Whip(i) => {
                    if m.direction.is_receiving() {
                        i.expected += 1;
                        if m.kind == MediaKind::Video {
                            i.video_mids.push(m.mid);
                        }
                    }
                }
                RoleState::Whep(_) => {
                    if let Some(t) = core
                        .out
                        .iter_mut()
                        .find(|t| t.kind == m.kind && t.mid.is_none())
                    {
                        t.mid = Some(m.mid);
                    }
                }
            },
            Event::MediaData(d) => {
                if let RoleState::Whip(i) = state {
                    if i.on_media(&d) == IngestAction::RequestKeyframe
                        && ctx.keyframe_due(Instant::now())
                    {
                        request_keyframe(&mut core.rtc, &i.video_mids);
                    }
                    stats
                        .rtp_packets_lost
                        .store(i.packets_lost, Ordering::Relaxed);
                    if let Some(rid) = i.layer_taken.take() {
                        stats.update_notes(|n| n.simulcast_layer = rid);
                    }
                }
            }
            Event::KeyframeRequest(_) => {
                if let RoleState::Whep(w) = state {
                    if ctx.keyframe_due(Instant::now()) {
                        w.reader.stream().request_keyframe();
                    }
                }
            }
            Event::PeerStats(s) => {
                self.guard
                    .counters
                    .received
                    .store(s.peer_bytes_rx, Ordering::Relaxed);
                self.guard
                    .counters
                    .sent
                    .store(s.peer_bytes_tx, Ordering::Relaxed);
                if let RoleState::Whep(w) = state {
                    w.reader
                        .add_bytes_sent(s.peer_bytes_tx.saturating_sub(ctx.bytes_sent));
                    ctx.bytes_sent = s.peer_bytes_tx;
                }
                if let Some(rtt) = s.rtt {
                    stats
                        .rtt_us
                        .store(rtt.as_micros() as u64, Ordering::Relaxed);
                }
                if let Some(p) = &s.selected_candidate_pair {
                    let (l, r) = (p.local.addr.to_string(), p.remote.addr.to_string());
                    stats.update_notes(|n| {
                        n.local_candidate = l;
                        n.remote_candidate = r;
                    });
                }
            }
            Event::MediaEgressStats(s) => {
                let lost = s.remote.as_ref().map_or(0, |r| r.packets_lost);
                ctx.egress_packets.insert(s.mid, (s.packets, lost, s.nacks));
                let (sent, lost, nacks) = ctx
                    .egress_packets
                    .values()
                    .fold((0, 0, 0), |(a, b, c), (p, l, n)| (a + p, b + l, c + n));
                stats.rtp_packets_sent.store(sent, Ordering::Relaxed);
                stats.rtp_packets_lost.store(lost, Ordering::Relaxed);
                stats.nacks.store(nacks, Ordering::Relaxed);
                if let Some(rtt) = s.rtt {
                    stats
                        .rtt_us
                        .store(rtt.as_micros() as u64, Ordering::Relaxed);
                }
            }
            Event::MediaIngressStats(s) => {
                ctx.ingress_packets.insert(s.mid, (s.packets, s.nacks));
                let (n, nacks) = ctx
                    .ingress_packets
                    .values()
                    .fold((0, 0), |(a, b), (p, k)| (a + p, b + k));
                stats.rtp_packets_received.store(n, Ordering::Relaxed);
                stats.nacks.store(nacks, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Frame mode (VP8, VP9, AV1): one frame to str0m's packetizer of its medium.
    fn write_frame(&mut self, core: &mut Core, frame: &Arc<Frame>) -> Result<(), String> {
        let Some(out) = core.out.iter_mut().find(|t| t.track == frame.track) else {
            return Ok(());
        };
        let Some(mid) = out.mid else {
            return Ok(());
        };
        if out.kind == MediaKind::Video && frame.pts != frame.dts {
            // B-frames appeared after the answer: end the session with the reason.
            self.guard
                .extra
                .update_notes(|n| n.warnings.push(BFRAMES.to_string()));
            return Err(BFRAMES.to_string());
        }
        let Some(writer) = core.rtc.writer(mid) else {
            return Ok(());
        };
        let pt = match out.pt {
            Some(pt) => pt,
            None => {
                let Some(pt) = writer
                    .payload_params()
                    .find(|p| p.spec().codec == out.codec)
                    .map(|p| p.pt())
                else {
                    return Ok(());
                };
                out.pt = Some(pt);
                pt
            }
        };
        // VP8, VP9 and AV1 frames are what str0m's packetizers take, as they are.
        let time = media::media_time(frame.pts, out.clock, out.codec);
        let wall = core.wallclock.at(frame, out.clock);
        if let Err(e) = writer.write(pt, wall, time, frame.data.to_vec()) {
            tracing::debug!("[WebRTC] write: {e}");
        }
        Ok(())
    }
}

/// RTP mode: the payload type the answer gave `codec` on medium `mid`.
fn negotiated_pt(rtc: &Rtc, mid: Mid, codec: RtcCodec) -> Option<Pt> {
    let remote = rtc.media(mid)?.remote_pts();
    let params = rtc.codec_config().params();
    params
        .iter()
        .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
        .or_else(|| params.iter().find(|p| p.spec().codec == codec))
        .map(|p| p.pt())
}

/// Asks a WHIP publisher for a keyframe (PLI) on each of its video media.
pub(crate) fn request_keyframe(rtc: &mut Rtc, mids: &[Mid]) {
    for &mid in mids {
        if let Some(mut w) = rtc.writer(mid) {
            if w.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
                let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_media_get_a_format_and_go_inactive() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n";
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=sendonly\r\nm=audio 0 UDP/TLS/RTP/SAVPF \r\na=mid:1\r\na=sendonly\r\n";
        let fixed = complete_rejected_media(offer, answer);
        assert_eq!(
            fixed,
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=sendonly\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=mid:1\r\na=inactive\r\n"
        );
    }

    #[test]
    fn a_viewers_tracks_share_one_media_stream() {
        let answer = "v=0\r\na=msid-semantic: WMS AAA BBB\r\nm=video 9 X 96\r\na=msid:AAA v1\r\n\
                      a=ssrc:1 cname:c1\r\na=ssrc:1 msid:AAA v1\r\nm=audio 9 X 111\r\n\
                      a=msid:BBB a1\r\na=ssrc:2 msid:BBB a1\r\n";
        assert_eq!(
            one_media_stream(answer),
            "v=0\r\na=msid-semantic: WMS AAA\r\nm=video 9 X 96\r\na=msid:AAA v1\r\n\
             a=ssrc:1 cname:c1\r\na=ssrc:1 msid:AAA v1\r\nm=audio 9 X 111\r\n\
             a=msid:AAA a1\r\na=ssrc:2 msid:AAA a1\r\n"
        );
    }

    #[test]
    fn offered_codec_names() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\n\
                   a=rtpmap:97 H264/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(offered_codecs(sdp), vec!["VP8", "H264", "OPUS"]);
    }
}
