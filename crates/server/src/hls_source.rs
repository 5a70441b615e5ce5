//! `source: http(s)://…/index.m3u8`: an HLS client that publishes the path from another
//! server's HLS (Tidegate's, MediaMTX's, nginx's, a CDN's).
//!
//! A multivariant playlist is followed to its variant of highest `BANDWIDTH`. Segments are
//! MPEG-TS (demuxed as an SRT publish is) or fMP4 with an `EXT-X-MAP` init section. When the
//! playlist has LL-HLS parts and the server can block playlist reloads, the client starts at
//! the last independent part and follows part by part with blocking reloads (`_HLS_msn`,
//! `_HLS_part`), so the path runs a part behind the origin; otherwise it starts at the last
//! segment and reloads the playlist every half target duration. One HTTP/1.1 connection per
//! origin is kept alive. Playlists are limited to 1 MiB and segments to 64 MiB.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tidegate_core::relay::{with_backoff, RelayStatus};
use tidegate_core::{PathManager, Publisher, SessionInfo, Stream, StreamDesc};
use tidegate_hls::follow::{best_variant, parse_media, step, Step};
use tidegate_mpegts::ingest::TsIngest;
use tidegate_record::demux::{fragment_frames, parse_init, stream_desc, InitTrack};
use tokio_util::sync::CancellationToken;

const MAX_PLAYLIST: usize = 1 << 20;
const MAX_MEDIA: usize = 64 << 20;
/// A request (other than a blocking reload) must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One kept-alive HTTP/1.1 connection to an origin (reopened when it closes or the origin
/// changes).
struct Client {
    fingerprint: String,
    conn: Option<(String, http1::SendRequest<Empty<Bytes>>)>,
}

impl Client {
    async fn get(&mut self, url: &url::Url, limit: usize, wait: Duration) -> Result<Bytes, String> {
        let host = url.host_str().ok_or("the URL has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let origin = format!("{}://{authority}", url.scheme());
        let reuse = matches!(&self.conn, Some((o, s)) if *o == origin && !s.is_closed());
        if !reuse {
            self.conn = None;
            let sender = match url.scheme() {
                "http" => {
                    let tcp = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        tokio::net::TcpStream::connect((host.as_str(), port)),
                    )
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| format!("connect: {e}"))?;
                    let _ = tcp.set_nodelay(true);
                    handshake(tcp).await?
                }
                "https" => {
                    let tls = tidegate_core::tls::connect(
                        &host,
                        port,
                        &self.fingerprint,
                        REQUEST_TIMEOUT,
                    )
                    .await?;
                    handshake(tls).await?
                }
                other => return Err(format!("unsupported scheme {other}")),
            };
            self.conn = Some((origin, sender));
        }
        let Some((_, sender)) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let mut req = hyper::Request::get(target)
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::USER_AGENT, "Tidegate");
        if !url.username().is_empty() {
            use base64::Engine;
            let user = urlencoding_decode(url.username());
            let pass = urlencoding_decode(url.password().unwrap_or(""));
            let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            req = req.header(hyper::header::AUTHORIZATION, format!("Basic {cred}"));
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let result = tokio::time::timeout(wait, async {
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = res.status();
            let body = Limited::new(res.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading {url}: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{url}: HTTP {status}"));
            }
            Ok(body)
        })
        .await;
        match result {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(format!("{url}: no answer within {wait:?}"))
            }
        }
    }
}

fn urlencoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("a={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn handshake<S>(io: S) -> Result<http1::SendRequest<Empty<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What a fetched piece of media goes into.
enum Demux {
    Ts(Box<TsIngest>),
    Fmp4 {
        map: String,
        tracks: Vec<InitTrack>,
        stream: Arc<Stream>,
    },
    None,
}

/// Pulls `url` into `path` until `cancel`, reconnecting with backoff.
pub async fn pull(
    url: String,
    fingerprint: String,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    with_backoff("source", &path, &status, &cancel, || {
        run(&url, &fingerprint, &paths, &path, &status)
    })
    .await;
}

async fn run(
    url: &str,
    fingerprint: &str,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
) -> Result<(), String> {
    let mut client = Client {
        fingerprint: fingerprint.to_string(),
        conn: None,
    };
    status.set_state("connecting");
    let top = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    let text = fetch_text(&mut client, &top, REQUEST_TIMEOUT).await?;
    let media_url = match best_variant(&text) {
        Some(v) => top.join(&v).map_err(|e| format!("variant URI {v}: {e}"))?,
        None => top.clone(),
    };
    let mut playlist = if media_url == top {
        parse_media(&text)?
    } else {
        parse_media(&fetch_text(&mut client, &media_url, REQUEST_TIMEOUT).await?)?
    };
    let mut publisher = paths
        .publish_source(
            path,
            SessionInfo {
                id: paths.new_session_id(),
                kind: "hlsSource",
                remote: None,
                query: String::new(),
            },
        )
        .map_err(|e| e.to_string())?;
    let kick = publisher.kicked();
    status.set_state("running");
    tracing::info!(
        path,
        url = status.url,
        low_latency = playlist.low_latency(),
        "[HLS source] pulling {media_url}"
    );
    let mut demux = Demux::None;
    let mut at = playlist.start().ok_or("the playlist has no segment yet")?;
    loop {
        if kick.is_cancelled() {
            return Err("the path's publisher was replaced".into());
        }
        match step(&playlist, at) {
            Step::Fetch { uri, map, next } => {
                if !uri.is_empty() {
                    let u = media_url
                        .join(&uri)
                        .map_err(|e| format!("URI {uri}: {e}"))?;
                    let data = client.get(&u, MAX_MEDIA, REQUEST_TIMEOUT).await?;
                    status.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    feed(
                        &mut client,
                        &media_url,
                        &mut demux,
                        map,
                        &mut publisher,
                        data,
                    )
                    .await?;
                }
                at = next;
            }
            Step::Wait => {
                if playlist.endlist {
                    return Err("the playlist ended".into());
                }
                let (reload, wait) = if playlist.can_block_reload {
                    let part = at
                        .part
                        .map(|p| format!("&_HLS_part={p}"))
                        .unwrap_or_default();
                    let mut u = media_url.clone();
                    let q = match media_url.query() {
                        Some(q) => format!("{q}&_HLS_msn={}{part}", at.msn),
                        None => format!("_HLS_msn={}{part}", at.msn),
                    };
                    u.set_query(Some(&q));
                    (u, REQUEST_TIMEOUT + secs(playlist.target_duration * 3.0))
                } else {
                    tokio::time::sleep(
                        secs(playlist.target_duration / 2.0)
                            .clamp(Duration::from_millis(100), Duration::from_secs(5)),
                    )
                    .await;
                    (media_url.clone(), REQUEST_TIMEOUT)
                };
                playlist = parse_media(&fetch_text(&mut client, &reload, wait).await?)?;
            }
            Step::Behind => {
                let from = at;
                at = playlist.start().ok_or("the playlist has no segment")?;
                status.drops.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path, ?from, to = ?at, "[HLS source] fell behind the playlist: on from its end");
            }
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 3600.0))
}

async fn fetch_text(client: &mut Client, url: &url::Url, wait: Duration) -> Result<String, String> {
    let b = client.get(url, MAX_PLAYLIST, wait).await?;
    String::from_utf8(b.to_vec()).map_err(|_| format!("{url}: the playlist is not UTF-8"))
}

/// Demuxes one segment or part into the path (starting its stream from the first one).
async fn feed(
    client: &mut Client,
    media_url: &url::Url,
    demux: &mut Demux,
    map: Option<String>,
    publisher: &mut Publisher,
    data: Bytes,
) -> Result<(), String> {
    match map {
        None => {
            if !matches!(demux, Demux::Ts(_)) {
                if !matches!(demux, Demux::None) {
                    return Err("the source changed from fMP4 to MPEG-TS".into());
                }
                *demux = Demux::Ts(Box::default());
            }
            let Demux::Ts(ts) = demux else { unreachable!() };
            ts.feed(&data, publisher, "HLS source");
        }
        Some(map) => {
            let current = match demux {
                Demux::Fmp4 { map: m, .. } => Some(m.clone()),
                Demux::None => None,
                Demux::Ts(_) => return Err("the source changed from MPEG-TS to fMP4".into()),
            };
            if current.as_deref() != Some(map.as_str()) {
                let u = media_url
                    .join(&map)
                    .map_err(|e| format!("map URI {map}: {e}"))?;
                let init = client.get(&u, MAX_PLAYLIST, REQUEST_TIMEOUT).await?;
                let tracks = parse_init(&init).map_err(|e| format!("init section: {e}"))?;
                let desc: StreamDesc = stream_desc(&tracks);
                if desc.tracks.is_empty() {
                    return Err("no track of the source can be carried".into());
                }
                let stream = match demux {
                    Demux::Fmp4 { stream, .. } if stream.desc() == desc => stream.clone(),
                    Demux::Fmp4 { .. } => return Err("the source's tracks changed".into()),
                    _ => {
                        for t in tracks.iter().filter(|t| t.track.is_none()) {
                            tracing::info!(
                                track = t.id,
                                entry = %String::from_utf8_lossy(&t.entry),
                                "[HLS source] track not carried (its codec is not read)"
                            );
                        }
                        tracing::info!(tracks = ?desc.codec_names(), "[HLS source] publishing");
                        publisher.start(desc)
                    }
                };
                *demux = Demux::Fmp4 {
                    map,
                    tracks,
                    stream,
                };
            }
            let Demux::Fmp4 { tracks, stream, .. } = demux else {
                unreachable!()
            };
            let frames = fragment_frames(tracks, &data).map_err(|e| format!("fragment: {e}"))?;
            for f in frames {
                stream.write(f);
            }
        }
    }
    Ok(())
}
