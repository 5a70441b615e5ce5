//! Pulled cameras: `source: rtsp://…` and `rtsps://…` read with retina, the RTSP client
//! library of the Moonfire NVR project, which copes with many real cameras' quirks.
//!
//! retina speaks plain TCP only. For `rtsps://` Tidegate opens the TLS connection itself
//! (verified against the Web PKI roots or pinned with `sourceFingerprint`) and hands retina a
//! one-shot loopback port that relays to it: retina's RTSP session then runs, interleaved
//! over TCP, inside that TLS connection. RTSPS over UDP would need SRTP, which retina lacks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use retina::client::{
    Credentials as RetinaCreds, InitialTimestampPolicy, PlayOptions, Session, SessionOptions,
    SetupOptions, TcpTransportOptions, Transport, UdpTransportOptions,
};
use retina::codec::{CodecItem, ParametersRef};
use tidegate_codec::{h264, h265};
use tidegate_core::relay::{with_backoff, RelayStatus};
use tidegate_core::{CodecParams, Frame, G711Law, PathManager, StreamDesc, Track};
use tokio_util::sync::CancellationToken;

use crate::ingest::{publish_camera, AbortOnDrop};

/// How a pulled source asks for RTP (`rtspTransport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceTransport {
    /// TCP first (it crosses NATs and firewalls); what MediaMTX tries second.
    Automatic,
    Udp,
    Tcp,
    /// Multicast, read by our own client (`client`): retina has none.
    Multicast,
}

/// When a pulled source runs.
#[derive(Clone, Debug)]
pub struct OnDemand {
    /// Only pull while someone reads.
    pub enabled: bool,
    /// Stop this long after the last reader left.
    pub close_after: Duration,
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL as the API shows it: the password hidden.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn params_of(
    p: ParametersRef<'_>,
    encoding: &str,
    clock: u32,
    channels: u8,
) -> Option<CodecParams> {
    match p {
        ParametersRef::Video(v) => match encoding {
            "h264" => {
                let c = h264::AvcConfig::parse(v.extra_data()).ok()?;
                Some(CodecParams::H264 {
                    sps: c.sps.first()?.clone(),
                    pps: c.pps.first()?.clone(),
                })
            }
            "h265" => {
                let c = h265::HevcConfig::parse(v.extra_data()).ok()?;
                Some(CodecParams::H265 {
                    vps: c.vps.first()?.clone(),
                    sps: c.sps.first()?.clone(),
                    pps: c.pps.first()?.clone(),
                })
            }
            _ => None,
        },
        ParametersRef::Audio(a) => match encoding {
            "mpeg4-generic" => Some(CodecParams::Aac {
                config: Bytes::copy_from_slice(a.extra_data()),
            }),
            "opus" => Some(CodecParams::Opus { channels }),
            "pcmu" | "pcma" => Some(CodecParams::G711 {
                law: if encoding == "pcmu" {
                    G711Law::MuLaw
                } else {
                    G711Law::ALaw
                },
                sample_rate: clock,
                channels,
            }),
            _ => None,
        },
        _ => None,
    }
}

fn carried(media: &str, encoding: &str) -> bool {
    matches!(
        (media, encoding),
        ("video", "h264" | "h265") | ("audio", "mpeg4-generic" | "opus" | "pcmu" | "pcma")
    )
}

/// Codecs retina cannot depacketize but Tidegate's own RTP depacketizers can.
fn ours(encoding: &str) -> bool {
    let e = encoding.to_ascii_uppercase();
    matches!(
        e.as_str(),
        "AC3"
            | "JPEG"
            | "MP4V-ES"
            | "MPV"
            | "MPA"
            | "G722"
            | "L16"
            | "L24"
            | "VP8"
            | "VP9"
            | "AV1"
            | "MP2T"
    ) || e.starts_with("G726-")
        || e.starts_with("AAL2-G726-")
}

/// Puts `upstream` (a camera's connection: TLS, a WebSocket, a dumped TCP one) behind a relay
/// on 127.0.0.1 that accepts one connection (for at most [`IO_TIMEOUT`]): returns the
/// `rtsp://127.0.0.1:<port>/…` URL retina reads it at (path and query kept) and the relay's
/// task.
async fn relay<S>(mut upstream: S, url: &url::Url) -> Result<(url::Url, AbortOnDrop), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| format!("cannot open the relay: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot open the relay: {e}"))?;
    let task = tokio::spawn(async move {
        let Ok(Ok((mut plain, _))) = tokio::time::timeout(IO_TIMEOUT, listener.accept()).await
        else {
            return;
        };
        drop(listener);
        let _ = plain.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut plain, &mut upstream).await;
    });
    let mut inner = url.clone();
    let rewritten = inner.set_scheme("rtsp").is_ok()
        && inner.set_host(Some("127.0.0.1")).is_ok()
        && inner.set_port(Some(local.port())).is_ok();
    if !rewritten {
        return Err(format!("cannot relay {}", redact(url.as_str())));
    }
    Ok((inner, AbortOnDrop(task)))
}

/// Opens TLS to an `rtsps://` source and returns the `rtsp://127.0.0.1:<port>/…` URL that
/// reaches it through a relay accepting one connection (for at most [`IO_TIMEOUT`]), with the
/// relay's task. The URL keeps the path and query; the TLS errors (fingerprint, issuer) are
/// the caller's to report.
async fn tls_tunnel(url: &url::Url, fingerprint: &str) -> Result<(url::Url, AbortOnDrop), String> {
    let host = url.host_str().ok_or("the rtsps:// URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port().unwrap_or(322);
    let tls = tidegate_core::dump::tls_client(
        tidegate_core::tls::connect(host, port, fingerprint, IO_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?,
        "rtsps_source_conn",
    );
    relay(tls, url).await
}

/// `dumpPackets` for a plain `rtsp://` camera read over TCP by retina: the connection to the
/// camera is ours (and dumped as `rtsp_source_conn_…`), behind a local relay retina reads.
async fn dumped_relay(url: &url::Url) -> Result<(url::Url, AbortOnDrop), String> {
    let host = url.host_str().ok_or("the rtsp:// URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let camera = open_camera(host, url.port().unwrap_or(554), false, "").await?;
    relay(camera, url).await
}

/// A connection to a camera's host: TCP, or TLS pinned by `fingerprint` (dumped as a
/// source connection with `dumpPackets`).
async fn open_camera(
    host: &str,
    port: u16,
    tls: bool,
    fingerprint: &str,
) -> Result<Box<dyn Stream>, String> {
    if tls {
        Ok(Box::new(tidegate_core::dump::tls_client(
            tidegate_core::tls::connect(host, port, fingerprint, IO_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?,
            "rtsps_source_conn",
        )))
    } else {
        let tcp = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect((host, port)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(Box::new(tidegate_core::dump::tcp_client(
            tcp,
            "rtsp_source_conn",
        )))
    }
}

/// An HTTP answer's head, read byte by byte so that what follows (the camera's RTSP) stays in
/// the stream; at most 8 KiB, within [`IO_TIMEOUT`]. `what` names the request in errors.
async fn answer_head(sock: &mut Box<dyn Stream>, what: &str) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, async {
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > 8192 {
                return Err(format!("{what}: answer head over 8 KiB"));
            }
            let mut b = [0u8; 1];
            sock.read_exact(&mut b)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            answer.push(b[0]);
        }
        Ok(())
    })
    .await
    .map_err(|_| format!("{what}: no answer within 10 s"))??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// `rtsp+http://` and `rtsps+http://`: RTSP tunnelled over HTTP(S) (the QuickTime tunnel the
/// server side of [`crate::tunnel`] speaks): a GET that carries the camera's side and a POST
/// that carries ours in base64, both with one `x-sessioncookie`, behind a local relay that
/// retina reads as a plain RTSP server over TCP.
async fn http_tunnel(url: &url::Url, fingerprint: &str) -> Result<(url::Url, AbortOnDrop), String> {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.host_str().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = url.scheme() == "rtsps+http";
    let port = url.port().unwrap_or(if tls { 443 } else { 80 });
    let mut target = url.path().to_string();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let cookie = tidegate_core::text::secret_hex(16);
    let mut get = open_camera(&host, port, tls, fingerprint).await?;
    let head = format!(
        "GET {target} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: Tidegate\r\n\
         x-sessioncookie: {cookie}\r\nAccept: application/x-rtsp-tunnelled\r\n\
         Pragma: no-cache\r\nCache-Control: no-cache\r\n\r\n"
    );
    get.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("tunnel GET: {e}"))?;
    let answer = answer_head(&mut get, "tunnel GET").await?;
    let status_line = answer.lines().next().unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("tunnel GET answered {status_line:?}"));
    }
    let mut post = open_camera(&host, port, tls, fingerprint).await?;
    let head = format!(
        "POST {target} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: Tidegate\r\n\
         x-sessioncookie: {cookie}\r\nContent-Type: application/x-rtsp-tunnelled\r\n\
         Pragma: no-cache\r\nCache-Control: no-cache\r\nContent-Length: 32767\r\n\
         Expires: Sun, 9 Jan 1972 00:00:00 GMT\r\n\r\n"
    );
    post.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("tunnel POST: {e}"))?;
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| format!("cannot open the tunnel relay: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot open the tunnel relay: {e}"))?;
    let task = tokio::spawn(async move {
        let Ok(Ok((plain, _))) = tokio::time::timeout(IO_TIMEOUT, listener.accept()).await else {
            return;
        };
        drop(listener);
        let _ = plain.set_nodelay(true);
        let (mut from_retina, mut to_retina) = plain.into_split();
        let down = tokio::io::copy(&mut get, &mut to_retina);
        let up = async {
            let mut buf = vec![0u8; 16 << 10];
            let engine = &base64::engine::general_purpose::STANDARD;
            loop {
                let n = match from_retina.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if post
                    .write_all(engine.encode(&buf[..n]).as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        };
        tokio::select! {
            _ = down => {}
            _ = up => {}
        }
    });
    let mut inner = url.clone();
    let rewritten = inner.set_scheme("rtsp").is_ok()
        && inner.set_host(Some("127.0.0.1")).is_ok()
        && inner.set_port(Some(local.port())).is_ok();
    if !rewritten {
        return Err(format!("cannot relay {}", redact(url.as_str())));
    }
    Ok((inner, AbortOnDrop(task)))
}

/// `rtsp+ws://` and `rtsps+ws://`: RTSP over a WebSocket (ONVIF's `rtsp.onvif.org`
/// subprotocol, see [`crate::ws`]) on the camera's RTSP(S) port, behind a local relay that
/// retina reads as a plain RTSP server over TCP.
async fn ws_tunnel(url: &url::Url, fingerprint: &str) -> Result<(url::Url, AbortOnDrop), String> {
    use tokio::io::AsyncWriteExt;
    let host = url.host_str().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = url.scheme() == "rtsps+ws";
    let port = url.port().unwrap_or(if tls { 322 } else { 554 });
    let mut sock = open_camera(&host, port, tls, fingerprint).await?;
    let key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        tidegate_core::text::secret_hex(8).as_bytes(),
    );
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: Tidegate\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        crate::ws::SUBPROTOCOL
    );
    sock.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("WebSocket: {e}"))?;
    let text = answer_head(&mut sock, "WebSocket").await?;
    let status_line = text.lines().next().unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("101") {
        return Err(format!("WebSocket upgrade answered {status_line:?}"));
    }
    let expected = crate::ws::accept_key(&key);
    if !text.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == expected
        })
    }) {
        return Err("WebSocket upgrade without the right Sec-WebSocket-Accept".into());
    }
    let ws = crate::ws::WsStream::new(sock, true, b"");
    relay(ws, url).await
}

/// A byte stream to a camera: TCP or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Pulls `url` into `path` until `cancel`, reconnecting with the relays' backoff. With
/// `on_demand.enabled`, the caller starts this when a reader asks and cancels it when idle.
/// `fingerprint` pins an `rtsps://` camera's certificate (`sourceFingerprint`); `any_port`
/// (`rtspAnyPort`) takes UDP packets from any port of the camera.
#[allow(clippy::too_many_arguments)]
pub async fn pull(
    url: String,
    transport: SourceTransport,
    fingerprint: String,
    any_port: bool,
    play: crate::client::PlayOptions,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    let parsed = match url::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            status.set_state("failed");
            status.set_error(&format!("bad URL: {e}"));
            return;
        }
    };
    let tls = parsed.scheme() == "rtsps";
    let tunnelled = matches!(
        parsed.scheme(),
        "rtsp+http" | "rtsps+http" | "rtsp+ws" | "rtsps+ws"
    );
    // What retina cannot do goes to our own client: multicast, SRTP over UDP (rtsps://), UDP
    // from any port, and a PLAY with a Range or Scale, or from chosen UDP ports (over UDP:
    // our client has no TCP interleaving; over TCP, retina's PLAY is rewritten by a relay).
    // With `dumpPackets` on, UDP pulls are ours too: retina's UDP sockets are its own, ours
    // are dumped.
    let dumped_udp = tidegate_core::dump::enabled();
    let own = match transport {
        SourceTransport::Multicast => Some(crate::client::Mode::Multicast { srtp: tls }),
        SourceTransport::Udp if tls || any_port || dumped_udp || play.needs_own_client() => {
            Some(crate::client::Mode::Udp {
                srtp: tls,
                any_port,
            })
        }
        SourceTransport::Automatic if !tunnelled && play.needs_own_client() => {
            Some(crate::client::Mode::Udp {
                srtp: tls,
                any_port,
            })
        }
        _ => None,
    };
    if let Some(mode) = own {
        let (paths, path2, cancel2, fingerprint) = (&paths, &path, &cancel, &fingerprint);
        let (status2, play) = (&status, &play);
        with_backoff("source", &path, &status, &cancel, move || {
            crate::client::pull(
                parsed.clone(),
                mode,
                fingerprint,
                play,
                paths,
                path2,
                status2,
                cancel2,
            )
        })
        .await;
        return;
    }
    let absolute = play.absolute;
    let use_udp = std::sync::atomic::AtomicBool::new(transport == SourceTransport::Udp);
    let use_udp = &use_udp;
    // Set when the camera sends a codec only our own client carries: it reads from then on.
    let use_own = std::sync::atomic::AtomicBool::new(false);
    let use_own = &use_own;
    let (paths, path2, cancel2, fingerprint) = (&paths, &path, &cancel, &fingerprint);
    let status2 = &status;
    with_backoff("source", &path, &status, &cancel, move || {
        let parsed = parsed.clone();
        async move {
            let udp = use_udp.load(Ordering::Relaxed);
            let r = if use_own.load(Ordering::Relaxed) {
                let mode = crate::client::Mode::Udp {
                    srtp: false,
                    any_port: false,
                };
                crate::client::pull(
                    parsed,
                    mode,
                    "",
                    &crate::client::PlayOptions {
                        absolute,
                        ..Default::default()
                    },
                    paths,
                    path2,
                    status2,
                    cancel2,
                )
                .await
            } else {
                // Retina reads the camera directly, or through a local relay (TCP interleaved
                // then): an HTTP tunnel or a WebSocket, TLS, or, with dumpPackets, a dumped TCP
                // connection (retina's own socket cannot be watched).
                let own =
                    (transport != SourceTransport::Tcp && !tunnelled && !tls).then_some(use_own);
                let relayed = if tunnelled {
                    Some(if parsed.scheme().ends_with("+ws") {
                        ws_tunnel(&parsed, fingerprint).await
                    } else {
                        http_tunnel(&parsed, fingerprint).await
                    })
                } else if tls {
                    Some(tls_tunnel(&parsed, fingerprint).await)
                } else if !udp && tidegate_core::dump::enabled() {
                    Some(dumped_relay(&parsed).await)
                } else {
                    None
                };
                match relayed {
                    Some(Err(e)) => Err(e),
                    Some(Ok((inner, _relay))) => {
                        let how = How {
                            udp: false,
                            use_own: own,
                            absolute,
                        };
                        pull_once(inner, how, paths, path2, status2, cancel2).await
                    }
                    None => {
                        let how = How {
                            udp,
                            use_own: own,
                            absolute,
                        };
                        pull_once(parsed, how, paths, path2, status2, cancel2).await
                    }
                }
            };
            // `automatic`: TCP first, then UDP, alternating on failures (TCP only over TLS).
            if r.is_err()
                && transport == SourceTransport::Automatic
                && !tls
                && !use_own.load(Ordering::Relaxed)
            {
                use_udp.store(!udp, Ordering::Relaxed);
            }
            r
        }
    })
    .await;
}

/// How retina reads a camera.
#[derive(Clone, Copy)]
struct How<'a> {
    /// RTP over UDP (else interleaved in the RTSP connection).
    udp: bool,
    /// See [`pull_once`].
    use_own: Option<&'a std::sync::atomic::AtomicBool>,
    /// `useAbsoluteTimestamp`.
    absolute: bool,
}

/// `use_own`: when the camera has a track only our own client carries (see [`ours`]), this is
/// set and the attempt ends, so that the next one reads with it (over UDP).
async fn pull_once(
    mut url: url::Url,
    how: How<'_>,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let How {
        udp,
        use_own,
        absolute,
    } = how;
    status.set_state("connecting");
    let creds = (!url.username().is_empty()).then(|| RetinaCreds {
        username: url.username().to_string(),
        password: url.password().unwrap_or("").to_string(),
    });
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let options = SessionOptions::default()
        .creds(creds)
        .user_agent("Tidegate".to_string());
    let mut session = tokio::time::timeout(IO_TIMEOUT, Session::describe(url, options))
        .await
        .map_err(|_| "DESCRIBE timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let chosen: Vec<usize> = session
        .streams()
        .iter()
        .enumerate()
        .filter(|(_, s)| carried(s.media(), s.encoding_name()))
        .map(|(i, _)| i)
        .collect();
    let only_ours: Vec<String> = session
        .streams()
        .iter()
        .filter(|s| !carried(s.media(), s.encoding_name()) && ours(s.encoding_name()))
        .map(|s| s.encoding_name().to_ascii_uppercase())
        .collect();
    if !only_ours.is_empty() {
        if let Some(flag) = use_own {
            // Retina has no depacketizer for these: our own client reads the camera (UDP).
            flag.store(true, Ordering::Relaxed);
            return Err(format!(
                "the camera sends {}, which only Tidegate's own RTSP client reads: switching to it (UDP)",
                only_ours.join(", ")
            ));
        }
        tracing::warn!(
            path,
            "tracks left out ({}): with rtspTransport: tcp they cannot be read; automatic or udp can",
            only_ours.join(", ")
        );
    }
    if chosen.is_empty() {
        return Err("the source has no track Tidegate can carry".into());
    }
    for &i in &chosen {
        let tr = if udp {
            Transport::Udp(UdpTransportOptions::default())
        } else {
            Transport::Tcp(TcpTransportOptions::default())
        };
        tokio::time::timeout(
            IO_TIMEOUT,
            session.setup(i, SetupOptions::default().transport(tr)),
        )
        .await
        .map_err(|_| "SETUP timed out".to_string())?
        .map_err(|e| e.to_string())?;
    }
    let playing = tokio::time::timeout(
        IO_TIMEOUT,
        session.play(PlayOptions::default().initial_timestamp(InitialTimestampPolicy::Permissive)),
    )
    .await
    .map_err(|_| "PLAY timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let mut demuxed = playing.demuxed().map_err(|e| e.to_string())?;
    status.set_state("running");
    tracing::info!(path, url = status.url, udp, "pulling");

    let info = |d: &retina::client::Demuxed, i: usize| {
        let s = &d.streams()[i];
        let channels = s.channels().map_or(1, |c| c.get().min(8) as u8);
        (
            s.encoding_name().to_string(),
            s.clock_rate_hz(),
            channels,
            s.parameters()
                .and_then(|p| params_of(p, s.encoding_name(), s.clock_rate_hz(), channels)),
        )
    };
    let mut params: Vec<Option<CodecParams>> =
        chosen.iter().map(|&i| info(&demuxed, i).3).collect();
    let mut publisher = None;
    let mut stream = None;
    let mut absolute = crate::ingest::Absolute::new(absolute);
    let started = Instant::now();
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(IO_TIMEOUT, demuxed.next()) => r,
        };
        let item = match item {
            Err(_) => return Err("no data from the source for 10 s".into()),
            Ok(None) => return Err("the source ended the session".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(i))) => i,
        };
        let (sid, ts, keyframe, data, new_params) = match item {
            CodecItem::VideoFrame(f) => {
                let sid = f.stream_id();
                let ts = f.timestamp();
                let key = f.is_random_access_point();
                let newp = f.has_new_parameters();
                (sid, ts, key, f.into_data(), newp)
            }
            CodecItem::AudioFrame(f) => {
                (f.stream_id(), f.timestamp(), true, f.data().to_vec(), false)
            }
            CodecItem::Rtcp(r) => {
                // A sender report: the absolute time of an RTP time (useAbsoluteTimestamp).
                let idx = chosen.iter().position(|&c| c == r.stream_id());
                let sr = r.pkts().find_map(|p| p.as_sender_report().ok().flatten());
                if let (Some(idx), Some(ts), Some(sr)) = (idx, r.rtp_timestamp(), sr) {
                    absolute.on_sender_report(
                        idx,
                        ts.elapsed(),
                        tidegate_rtp::rtcp::ntp_time(sr.ntp_timestamp().0),
                    );
                }
                continue;
            }
            _ => continue,
        };
        let Some(idx) = chosen.iter().position(|&c| c == sid) else {
            continue;
        };
        status.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut changed = None;
        if new_params || params[idx].is_none() {
            let p = info(&demuxed, sid).3;
            if p.is_some() && p != params[idx] {
                if params[idx].is_some() {
                    changed = p.clone().map(Arc::new);
                }
                params[idx] = p;
            }
        }
        if stream.is_none() {
            if params.iter().any(Option::is_none) {
                if started.elapsed() > IO_TIMEOUT {
                    return Err("the source sent no codec parameters within 10 s".into());
                }
                continue;
            }
            let desc = StreamDesc {
                tracks: chosen
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| Track {
                        id: i as u32,
                        params: params[i].clone().unwrap_or(CodecParams::Mp3),
                        clock_rate: info(&demuxed, s).1,
                    })
                    .collect(),
            };
            let (p, s) = publish_camera(paths, path, desc)?;
            stream = Some(s);
            publisher = Some(p);
        }
        if publisher
            .as_ref()
            .is_some_and(|p| p.kicked().is_cancelled())
        {
            return Err("kicked".into());
        }
        if let Some(s) = stream.as_ref().filter(|s| absolute.admits(idx, s)) {
            let pts = ts.elapsed();
            s.write(Frame {
                track: idx as u32,
                pts,
                dts: pts,
                keyframe,
                data: Bytes::from(data),
                received: Instant::now(),
                params: changed,
            });
        }
    }
}
