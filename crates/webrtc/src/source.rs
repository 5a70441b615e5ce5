//! `source: whep://…` / `wheps://…`: a WHEP client that publishes the path from another
//! server's WebRTC (Tidegate, MediaMTX, a WHEP-capable CDN).
//!
//! The client offers to receive video and audio (every codec the path model carries over
//! WebRTC), posts the offer to the URL (`http://` for `whep://`, `https://` for `wheps://`;
//! `whepBearerToken` or the URL's user and password as credentials), and runs a full ICE agent
//! (controlling) with one host candidate: the local address the route to the server leaves
//! from. The media go through the same ingest as a WHIP publisher's (keyframe requests on
//! loss, parameters from the first keyframe). The session is deleted on the server when the
//! pull ends.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::format::Codec as RtcCodec;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, RtcConfig};
use tidegate_core::relay::{with_backoff, RelayStatus};
use tidegate_core::{PathManager, SessionInfo};
use tokio_util::sync::CancellationToken;

use crate::media::{Ingest, IngestAction};
use crate::session::{enable, request_keyframe};

/// Least time between two keyframe requests.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// What a WHEP source needs of its path's configuration.
#[derive(Clone, Debug)]
pub struct WhepSource {
    /// `whep://…` or `wheps://…`.
    pub url: String,
    /// `whepBearerToken`.
    pub bearer_token: String,
    /// `sourceFingerprint`, for `wheps://` to a self-signed server.
    pub fingerprint: String,
    /// `whepHandshakeTimeout`: from the offer to a connected peer.
    pub handshake_timeout: Duration,
}

/// The HTTP URL of a `whep(s)://` or `whip(s)://` URL, and Basic credentials from its user
/// and password.
pub(crate) fn http_url(url: &str) -> Result<(String, Option<String>), String> {
    let (scheme, rest) = if let Some(r) = url
        .strip_prefix("whep://")
        .or_else(|| url.strip_prefix("whip://"))
    {
        ("http", r)
    } else if let Some(r) = url
        .strip_prefix("wheps://")
        .or_else(|| url.strip_prefix("whips://"))
    {
        ("https", r)
    } else {
        return Err(format!("{url}: not a whep(s):// or whip(s):// URL"));
    };
    let mut u =
        url::Url::parse(&format!("{scheme}://{rest}")).map_err(|e| format!("{url}: {e}"))?;
    let basic = (!u.username().is_empty()).then(|| {
        use base64::Engine;
        let user = percent(u.username());
        let pass = percent(u.password().unwrap_or(""));
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    });
    let _ = u.set_username("");
    let _ = u.set_password(None);
    Ok((u.to_string(), basic))
}

fn percent(s: &str) -> String {
    tidegate_core::text::percent_decode(s, false)
}

/// A UDP socket on the local address the route to `server` leaves from (the one host
/// candidate of a client), and that address.
/// The `dumpPackets` file name of a WHEP source's HTTP connections (MediaMTX's).
fn dump_prefix(http_url: &str) -> &'static str {
    if http_url.starts_with("https:") {
        "wheps_source_conn"
    } else {
        "whep_source_conn"
    }
}

pub(crate) fn bind_towards(
    server: SocketAddr,
) -> Result<(tokio::net::UdpSocket, SocketAddr), String> {
    let probe = std::net::UdpSocket::bind(SocketAddr::new(
        if server.is_ipv4() {
            [0, 0, 0, 0].into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    ))
    .and_then(|s| s.connect(server).and_then(|()| s.local_addr()))
    .map_err(|e| format!("no route to {server}: {e}"))?;
    let socket = std::net::UdpSocket::bind(SocketAddr::new(probe.ip(), 0))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .and_then(tokio::net::UdpSocket::from_std)
        .map_err(|e| format!("UDP: {e}"))?;
    tidegate_core::udp::tune(&socket);
    let local = socket.local_addr().map_err(|e| format!("UDP: {e}"))?;
    Ok((socket, local))
}

/// Sends what str0m has to send; returns when it next wants time, and the events it raised.
pub(crate) async fn pump(
    rtc: &mut str0m::Rtc,
    socket: &tokio::net::UdpSocket,
) -> Result<(Instant, Vec<Event>), String> {
    let mut events = Vec::new();
    loop {
        match rtc.poll_output().map_err(|e| format!("WebRTC: {e}"))? {
            Output::Timeout(t) => return Ok((t, events)),
            Output::Transmit(t) => {
                let _ = socket.send_to(&t.contents, t.destination).await;
            }
            Output::Event(e) => events.push(e),
        }
    }
}

/// A datagram from the server into str0m (what it cannot take is logged and dropped).
pub(crate) fn receive(
    rtc: &mut str0m::Rtc,
    data: &[u8],
    from: SocketAddr,
    local: SocketAddr,
    path: &str,
) {
    let Ok(contents) = data.try_into() else {
        return;
    };
    let input = Input::Receive(
        Instant::now(),
        Receive {
            proto: Protocol::Udp,
            source: from,
            destination: local,
            contents,
        },
    );
    if let Err(e) = rtc.handle_input(input) {
        tracing::debug!(path, "[WebRTC] client input: {e}");
    }
}

/// Pulls until `cancel`, reconnecting with backoff.
pub async fn pull(
    source: WhepSource,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    with_backoff("source", &path, &status, &cancel, || {
        run(&source, &paths, &path, &status, &cancel)
    })
    .await;
}

async fn run(
    source: &WhepSource,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
) -> Result<(), String> {
    status.set_state("connecting");
    let (url, basic) = http_url(&source.url)?;
    let parsed = url::Url::parse(&url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("the URL has no host")?.to_string();
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL has no port")?;
    let server = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let (socket, local) = bind_towards(server)?;

    let mut cfg = RtcConfig::new()
        .clear_codecs()
        .set_stats_interval(Some(Duration::from_secs(1)));
    for c in [
        RtcCodec::H264,
        RtcCodec::H265,
        RtcCodec::Vp8,
        RtcCodec::Vp9,
        RtcCodec::Av1,
        RtcCodec::Opus,
        RtcCodec::PCMU,
        RtcCodec::PCMA,
    ] {
        cfg = enable(cfg, c);
    }
    let mut rtc = cfg.build(Instant::now());
    let candidate = Candidate::host(local, "udp").map_err(|e| format!("candidate: {e}"))?;
    rtc.add_local_candidate(candidate);
    let mut api = rtc.sdp_api();
    let video = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or("no offer was made")?;

    let mut headers = vec![("Content-Type".to_string(), "application/sdp".to_string())];
    if !source.bearer_token.is_empty() {
        headers.push((
            "Authorization".into(),
            format!("Bearer {}", source.bearer_token),
        ));
    } else if let Some(b) = &basic {
        headers.push(("Authorization".into(), format!("Basic {b}")));
    }
    let answer = tidegate_auth::fetch::request_dumped(
        "POST",
        &url,
        offer.to_sdp_string().into_bytes(),
        &source.fingerprint,
        Duration::from_secs(10),
        headers.clone(),
        Some(dump_prefix(&url)),
    )
    .await?;
    if answer.status != 201 && answer.status != 200 {
        return Err(format!(
            "the WHEP server answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body).trim()
        ));
    }
    let text = String::from_utf8_lossy(&answer.body).to_string();
    // Media the server sends: m-lines of the answer not rejected (port 0).
    let expected = text
        .lines()
        .filter(|l| l.starts_with("m=") && l.split_whitespace().nth(1) != Some("0"))
        .count();
    let sdp = SdpAnswer::from_sdp_string(&text).map_err(|e| format!("the answer: {e}"))?;
    rtc.sdp_api()
        .accept_answer(pending, sdp)
        .map_err(|e| format!("the answer: {e}"))?;
    // The session's resource, deleted when the pull ends.
    let resource = answer
        .location
        .as_deref()
        .and_then(|l| parsed.join(l).ok())
        .map(|u| u.to_string());
    let _delete = DeleteOnDrop::new(resource, headers, source.fingerprint.clone());

    let publisher = paths
        .publish_source(
            path,
            SessionInfo {
                id: paths.new_session_id(),
                kind: "webRTCSource",
                remote: Some(server),
                query: String::new(),
            },
        )
        .map_err(|e| e.to_string())?;
    let kick = publisher.kicked();
    let mut ingest = Ingest::new(publisher, expected.max(1));
    ingest.video_mids.push(video);
    let started = Instant::now();
    let mut connected = false;
    let mut last_key: Option<Instant> = None;
    let mut buf = vec![0u8; 2048];
    loop {
        // Everything str0m has to say, then wait for a datagram or its next timer.
        let (next, events) = pump(&mut rtc, &socket).await?;
        for e in events {
            match e {
                Event::Connected => {
                    connected = true;
                    status.set_state("running");
                    tracing::info!(path, url = status.url, "[WebRTC] WHEP source connected");
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    return Err("ICE disconnected (the server went away)".into());
                }
                Event::MediaData(d) => {
                    let now = Instant::now();
                    if ingest.on_media(&d) == IngestAction::RequestKeyframe
                        && last_key.is_none_or(|k| now.duration_since(k) >= KEYFRAME_INTERVAL)
                    {
                        last_key = Some(now);
                        request_keyframe(&mut rtc, &ingest.video_mids);
                    }
                }
                Event::PeerStats(s) => {
                    status.bytes.store(s.peer_bytes_rx, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        if !connected && started.elapsed() > source.handshake_timeout {
            return Err(format!(
                "no connection within whepHandshakeTimeout ({:?})",
                source.handshake_timeout
            ));
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = kick.cancelled() => return Err("the path's publisher was replaced".into()),
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r.map_err(|e| format!("UDP: {e}"))?;
                receive(&mut rtc, &buf[..n], from, local, path);
            }
            _ = tokio::time::sleep(wait) => {
                rtc.handle_input(Input::Timeout(Instant::now()))
                    .map_err(|e| format!("WebRTC: {e}"))?;
                ingest.tick(Instant::now());
            }
        }
    }
}

/// Deletes the WHEP or WHIP session on the server (in the background) when the client ends.
pub(crate) struct DeleteOnDrop {
    resource: Option<String>,
    headers: Vec<(String, String)>,
    fingerprint: String,
}

impl DeleteOnDrop {
    /// `resource`: the session's URL (the answer's `Location`); `headers`: the request's
    /// (credentials; `Content-Type` is left out).
    pub(crate) fn new(
        resource: Option<String>,
        headers: Vec<(String, String)>,
        fingerprint: String,
    ) -> DeleteOnDrop {
        DeleteOnDrop {
            resource,
            headers,
            fingerprint,
        }
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let Some(url) = self.resource.take() else {
            return;
        };
        let headers: Vec<(String, String)> = std::mem::take(&mut self.headers)
            .into_iter()
            .filter(|(k, _)| k != "Content-Type")
            .collect();
        let fingerprint = std::mem::take(&mut self.fingerprint);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tidegate_auth::fetch::request_dumped(
                    "DELETE",
                    &url,
                    Vec::new(),
                    &fingerprint,
                    Duration::from_secs(5),
                    headers,
                    Some(dump_prefix(&url)),
                )
                .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whep_urls_become_http_urls_with_credentials() {
        assert_eq!(
            http_url("whep://127.0.0.1:8889/cam/whep").unwrap(),
            ("http://127.0.0.1:8889/cam/whep".to_string(), None)
        );
        let (u, b) = http_url("wheps://me:p%40ss@host/cam/whep").unwrap();
        assert_eq!(u, "https://host/cam/whep");
        assert_eq!(b.as_deref(), Some("bWU6cEBzcw=="));
        assert!(http_url("http://host/x").is_err());
    }
}
