//! `forward: [whip://…]` / `whips://…`: a WHIP client that publishes a path's stream to another
//! server's WebRTC ingest (Tidegate, MediaMTX, a WHIP-capable CDN or service).
//!
//! The client offers to send one video and one audio track (the stream's, AAC bridged to Opus
//! as for WHEP viewers), posts the offer (`http://` for `whip://`, `https://` for `whips://`,
//! `whipBearerToken` or the URL's user and password as credentials, `destFingerprint` to pin
//! a self-signed certificate), and runs an ICE agent (controlling) with one host candidate, as the WHEP
//! source does. Frames go to str0m's packetizers (H.264/H.265 as Annex-B with their parameter
//! sets before each keyframe, so that the receiver can start on any of them). The session is
//! deleted on the server when the forward ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use str0m::change::SdpAnswer;
use str0m::format::Codec as RtcCodec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Event, IceConnectionState, Input, RtcConfig};
use tidegate_core::relay::{with_backoff, RelayStatus};
use tidegate_core::{CodecParams, CoreError, Frame, PathManager, RecvError, SessionInfo};
use tokio_util::sync::CancellationToken;

use crate::media::{media_time, rtc_codec};
use crate::session::enable;
use crate::source::{http_url, pump, receive, DeleteOnDrop};

/// How long the WHIP server has to connect after its answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards the stream of `path` to `url` until the stream ends or `cancel`, reconnecting
/// with backoff.
pub async fn push(
    url: String,
    fingerprint: String,
    bearer_token: String,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    with_backoff("forward", &path, &status, &cancel, || {
        push_once(
            &url,
            &fingerprint,
            &bearer_token,
            &paths,
            &path,
            &status,
            &cancel,
        )
    })
    .await;
}

/// One track the client sends.
struct Out {
    track: tidegate_core::TrackId,
    codec: RtcCodec,
    clock: u32,
    mid: Mid,
    /// H.264/H.265: the parameter sets sent before each keyframe (Annex-B).
    params: Vec<u8>,
}

async fn push_once(
    url: &str,
    fingerprint: &str,
    bearer_token: &str,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let reader = match paths.read(
        path,
        SessionInfo::new(paths.new_session_id(), "webRTCForward", None),
    ) {
        Ok(r) => r,
        // The stream ended: the next publish starts a new forward.
        Err(CoreError::NoOnePublishing(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    // The tracks WebRTC carries: one video, one audio (AAC through the audio bridge).
    let desc = reader.desc();
    let mut bridge = None;
    let mut picked: Vec<(tidegate_core::Track, RtcCodec, u32)> = Vec::new();
    for t in &desc.tracks {
        let video = t.codec().is_video();
        if picked.iter().any(|(p, ..)| p.codec().is_video() == video) {
            continue;
        }
        match rtc_codec(&t.params) {
            Some(c) => picked.push((t.clone(), c, t.clock_rate)),
            None if matches!(t.params, CodecParams::Aac { .. }) => {
                if let Some(why) = tidegate_transcode::why_not_opus(t) {
                    tracing::warn!(path, "forward: the AAC track is not sent: {why}");
                    continue;
                }
                bridge = Some(
                    tidegate_transcode::aac_to_opus(
                        reader.stream(),
                        reader.conf().audio_transcode_bitrate,
                    )
                    .map_err(|e| e.to_string())?,
                );
                picked.push((t.clone(), RtcCodec::Opus, 48_000));
            }
            None => {
                tracing::warn!(
                    path,
                    "forward: track {} ({}) is not sent: WebRTC cannot carry it",
                    t.id,
                    t.codec().name()
                );
            }
        }
    }
    if picked.is_empty() {
        return Err("no track of this stream can travel over WebRTC".into());
    }
    let source = bridge
        .as_ref()
        .map_or(reader.stream(), |b| b.stream())
        .clone();
    let mut frames = source.subscribe();

    status.set_state("connecting");
    let (http, basic) = http_url(url)?;
    let parsed = url::Url::parse(&http).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("the URL has no host")?.to_string();
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL has no port")?;
    let server = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let (socket, local) = crate::source::bind_towards(server)?;

    let mut cfg = RtcConfig::new()
        .clear_codecs()
        .set_stats_interval(Some(Duration::from_secs(1)));
    for (_, c, _) in &picked {
        cfg = enable(cfg, *c);
    }
    let mut rtc = cfg.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| format!("candidate: {e}"))?);
    let mut api = rtc.sdp_api();
    let mut outs = Vec::new();
    for (t, c, clock) in &picked {
        let kind = if t.codec().is_video() {
            MediaKind::Video
        } else {
            MediaKind::Audio
        };
        let mid = api.add_media(kind, Direction::SendOnly, None, None, None);
        let params = match &t.params {
            CodecParams::H264 { sps, pps } => annexb(&[sps, pps]),
            CodecParams::H265 { vps, sps, pps } => annexb(&[vps, sps, pps]),
            _ => Vec::new(),
        };
        outs.push(Out {
            track: t.id,
            codec: *c,
            clock: *clock,
            mid,
            params,
        });
    }
    let (offer, pending) = api.apply().ok_or("no offer was made")?;
    let mut headers = vec![("Content-Type".to_string(), "application/sdp".to_string())];
    if !bearer_token.is_empty() {
        headers.push(("Authorization".into(), format!("Bearer {bearer_token}")));
    } else if let Some(b) = &basic {
        headers.push(("Authorization".into(), format!("Basic {b}")));
    }
    let dump = if http.starts_with("https:") {
        "whips_forward_conn"
    } else {
        "whip_forward_conn"
    };
    let answer = tidegate_auth::fetch::request_dumped(
        "POST",
        &http,
        offer.to_sdp_string().into_bytes(),
        fingerprint,
        Duration::from_secs(10),
        headers.clone(),
        Some(dump),
    )
    .await?;
    if answer.status != 201 && answer.status != 200 {
        return Err(format!(
            "the WHIP server answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body).trim()
        ));
    }
    let text = String::from_utf8_lossy(&answer.body).to_string();
    let sdp = SdpAnswer::from_sdp_string(&text).map_err(|e| format!("the answer: {e}"))?;
    rtc.sdp_api()
        .accept_answer(pending, sdp)
        .map_err(|e| format!("the answer: {e}"))?;
    let _delete = DeleteOnDrop::new(
        answer
            .location
            .as_deref()
            .and_then(|l| parsed.join(l).ok())
            .map(|u| u.to_string()),
        headers,
        fingerprint.to_string(),
    );

    let started = Instant::now();
    let mut connected = false;
    let mut waiting_key = true;
    // One wall clock for every track: the first frame's timestamp at the time it was sent.
    let mut origin: Option<(Instant, i64)> = None;
    let mut buf = vec![0u8; 2048];
    loop {
        let (next, events) = pump(&mut rtc, &socket).await?;
        for e in events {
            match e {
                Event::Connected => {
                    connected = true;
                    status.set_state("running");
                    tracing::info!(path, url = status.url, "[WebRTC] forwarding over WHIP");
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    return Err("ICE disconnected (the server went away)".into());
                }
                Event::PeerStats(s) => {
                    status.bytes.store(s.peer_bytes_tx, Ordering::Relaxed);
                }
                // The receiver lost a keyframe or a viewer joined it: ask our publisher.
                Event::KeyframeRequest(_) => source.request_keyframe(),
                _ => {}
            }
        }
        if !connected && started.elapsed() > HANDSHAKE_TIMEOUT {
            return Err(format!(
                "the WHIP server did not connect within {HANDSHAKE_TIMEOUT:?}"
            ));
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r.map_err(|e| format!("UDP: {e}"))?;
                receive(&mut rtc, &buf[..n], from, local, path);
            }
            f = frames.recv(), if connected => {
                let frame = match f {
                    Ok(f) => f,
                    // The stream ended: so does the forward, until the next publish.
                    Err(RecvError::Closed) => return Ok(()),
                };
                let Some(out) = outs.iter().find(|o| o.track == frame.track) else { continue };
                let video = out.codec.is_video();
                if waiting_key {
                    if !(video && frame.keyframe) {
                        continue;
                    }
                    waiting_key = false;
                }
                send(&mut rtc, out, &frame, &mut origin);
                rtc.handle_input(Input::Timeout(Instant::now()))
                    .map_err(|e| format!("WebRTC: {e}"))?;
            }
            _ = tokio::time::sleep(wait) => {
                rtc.handle_input(Input::Timeout(Instant::now()))
                    .map_err(|e| format!("WebRTC: {e}"))?;
            }
        }
    }
}

/// One frame to str0m's packetizer of its medium.
fn send(rtc: &mut str0m::Rtc, out: &Out, frame: &Frame, origin: &mut Option<(Instant, i64)>) {
    let Some(writer) = rtc.writer(out.mid) else {
        return;
    };
    let Some(pt) = writer
        .payload_params()
        .find(|p| p.spec().codec == out.codec)
        .map(|p| p.pt())
    else {
        return;
    };
    let pts_us = tidegate_core::rescale(frame.pts, out.clock, 1_000_000);
    let (at, base) = *origin.get_or_insert((Instant::now(), pts_us));
    let wall = at + Duration::from_micros(pts_us.saturating_sub(base).max(0) as u64);
    let data = match out.codec {
        RtcCodec::H264 | RtcCodec::H265 => {
            let Ok(nals) = tidegate_codec::nal::length_prefixed_to_annexb(&frame.data) else {
                return;
            };
            if frame.keyframe && !out.params.is_empty() {
                let mut v = out.params.clone();
                v.extend_from_slice(&nals);
                v
            } else {
                nals.to_vec()
            }
        }
        _ => frame.data.to_vec(),
    };
    let time = media_time(frame.pts, out.clock, out.codec);
    if let Err(e) = writer.write(pt, wall, time, data) {
        tracing::debug!("[WebRTC] WHIP forward write: {e}");
    }
}

/// Parameter sets as Annex-B.
fn annexb(nals: &[&Bytes]) -> Vec<u8> {
    let mut v = Vec::new();
    for n in nals {
        v.extend_from_slice(&[0, 0, 0, 1]);
        v.extend_from_slice(n);
    }
    v
}
