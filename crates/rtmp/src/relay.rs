//! Relays over our RTMP client: pushing a path to a remote server (simulcast to Twitch,
//! YouTube, any RTMP/RTMPS ingest) and pulling a remote stream into a path (`source: rtmp://`).
//!
//! Each relay reads the path through its own ring position, so a slow or dead destination only
//! ever skips its own frames (counted as drops); it never slows the publisher, the readers or
//! the other destinations. Failures reconnect with a capped exponential backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_core::relay::with_backoff;
pub use tidegate_core::relay::RelayStatus;
use tidegate_core::{CoreError, PathManager, RecvError, SessionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientEvent, ClientSession, Mode, RtmpUrl};
use crate::ingest::Ingest;
use crate::mux::TagMaker;
use crate::server::{bridge_opus, stream_head};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `rtmp://host/app/KEY` shown as `rtmp://host/app/***`: stream keys are secrets.
pub fn redact(url: &str) -> String {
    match RtmpUrl::parse(url) {
        Ok(u) if !u.name.is_empty() => format!("{}/***", u.tc_url),
        _ => url.to_string(),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens the connection; `rtmps://` is checked against the Web PKI roots, or against
/// `fingerprint` (the path's `sourceFingerprint`) when it is set.
async fn connect(url: &RtmpUrl, fingerprint: &str) -> Result<Box<dyn Io>, String> {
    if url.tls {
        let tls = tidegate_core::tls::connect(&url.host, url.port, fingerprint, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Box::new(tidegate_core::dump::tls_client(
            tls,
            "rtmps_source_conn",
        )));
    }
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(tidegate_core::dump::tcp_client(
        tcp,
        "rtmp_source_conn",
    )))
}

async fn write(io: &mut Box<dyn Io>, data: &[u8]) -> Result<(), String> {
    if data.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(IO_TIMEOUT, io.write_all(data))
        .await
        .map_err(|_| "the server accepted no data for 10 s".to_string())?
        .map_err(|e| format!("write: {e}"))
}

/// Runs the session until the server starts the stream.
async fn start(
    io: &mut Box<dyn Io>,
    session: &mut ClientSession,
    buf: &mut [u8],
) -> Result<(), String> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let out = session.take_output();
        write(io, &out).await?;
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Started => return Ok(()),
                ClientEvent::Error { code, description } => {
                    return Err(format!("{code}: {description}"))
                }
                ClientEvent::Media { .. } => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, io.read(buf))
            .await
            .map_err(|_| "the server did not start the stream within 10 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        session.feed(&buf[..n]).map_err(|e| e.to_string())?;
    }
}

fn parse_or_fail(url: &str, status: &RelayStatus) -> Option<RtmpUrl> {
    match RtmpUrl::parse(url) {
        Ok(u) => Some(u),
        Err(e) => {
            status.set_state("failed");
            status.set_error(&e.to_string());
            None
        }
    }
}

/// Pushes `path` to `url` while it has a publisher, until `cancel`.
pub async fn push(
    url: String,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    let Some(parsed) = parse_or_fail(&url, &status) else {
        return;
    };
    with_backoff("push", &path, &status, &cancel, || {
        push_once(&parsed, &paths, &path, &status, &cancel)
    })
    .await;
}

async fn push_once(
    url: &RtmpUrl,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let session_info = SessionInfo {
        id: paths.new_session_id(),
        kind: "rtmpPush",
        remote: None,
        query: String::new(),
    };
    let mut reader = match paths.read(path, session_info) {
        Ok(r) => r,
        // The stream ended: the next publish starts a new push.
        Err(CoreError::NoOnePublishing(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    status.set_state("connecting");
    let mut io = connect(url, "").await?;
    let mut session = ClientSession::new(Mode::Publish, &url.app, &url.tc_url, &url.name);
    let mut buf = vec![0u8; 16 * 1024];
    start(&mut io, &mut session, &mut buf).await?;
    status.set_state("running");
    tracing::info!(path, url = status.url, "pushing");
    // RTMP ingests take AAC, not Opus: a WHIP publish is pushed with its audio bridged.
    let (view, why) = bridge_opus(&reader);
    if let Some(why) = why {
        tracing::warn!(
            path,
            url = status.url,
            "Opus is pushed as Enhanced RTMP Opus: {why}"
        );
    }
    let mut view_rx = view.as_ref().map(|v| v.stream().subscribe());
    let desc = view
        .as_ref()
        .map_or_else(|| reader.desc(), |v| v.stream().desc());
    for (type_id, body) in stream_head(&desc) {
        session.send_media(type_id, 0, &body);
    }
    let mut maker = TagMaker::new(&desc);
    let skips_before = reader.skips();
    loop {
        let out = session.take_output();
        write(&mut io, &out).await?;
        status.bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        status
            .drops
            .store(reader.skips() - skips_before, Ordering::Relaxed);
        tokio::select! {
            _ = cancel.cancelled() => {
                session.close();
                let _ = write(&mut io, &session.take_output()).await;
                return Ok(());
            }
            f = async {
                match &mut view_rx {
                    Some(rx) => rx.recv().await,
                    None => reader.recv().await,
                }
            } => match f {
                Ok(frame) => {
                    if let Some(tag) = maker.make(&frame) {
                        if let Some(seq) = &tag.sequence_header {
                            session.send_media(tag.type_id, tag.timestamp, seq);
                        }
                        session.send_media(tag.type_id, tag.timestamp, &tag.body);
                    }
                }
                Err(RecvError::Closed) => {
                    session.close();
                    let _ = write(&mut io, &session.take_output()).await;
                    return Ok(());
                }
            },
            r = io.read(&mut buf) => {
                let n = r.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("the server closed the connection".into());
                }
                session.feed(&buf[..n]).map_err(|e| e.to_string())?;
                while let Some(ev) = session.poll_event() {
                    if let ClientEvent::Error { code, description } = ev {
                        return Err(format!("{code}: {description}"));
                    }
                }
            }
        }
    }
}

/// Pulls `url` into `path` (`source: rtmp://…`) until `cancel`, reconnecting when it drops.
/// `fingerprint` pins an `rtmps://` server's certificate (`sourceFingerprint`).
pub async fn pull(
    url: String,
    fingerprint: String,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    let Some(parsed) = parse_or_fail(&url, &status) else {
        return;
    };
    with_backoff("source", &path, &status, &cancel, || async {
        pull_once(&parsed, &fingerprint, &paths, &path, &status).await?;
        Err("the source ended the stream".to_string())
    })
    .await;
}

async fn pull_once(
    url: &RtmpUrl,
    fingerprint: &str,
    paths: &PathManager,
    path: &str,
    status: &RelayStatus,
) -> Result<(), String> {
    status.set_state("connecting");
    let mut io = connect(url, fingerprint).await?;
    let mut session = ClientSession::new(Mode::Play, &url.app, &url.tc_url, &url.name);
    let mut buf = vec![0u8; 64 * 1024];
    start(&mut io, &mut session, &mut buf).await?;
    let publisher = paths
        .publish_source(
            path,
            SessionInfo {
                id: paths.new_session_id(),
                kind: "rtmpSource",
                remote: None,
                query: String::new(),
            },
        )
        .map_err(|e| e.to_string())?;
    let kicked = publisher.kicked();
    let mut ingest = Ingest::new(publisher);
    status.set_state("running");
    tracing::info!(path, url = status.url, "pulling");
    loop {
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Media {
                    type_id,
                    timestamp,
                    payload,
                } => {
                    status
                        .bytes
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    ingest
                        .on_message(type_id, timestamp, payload)
                        .map_err(|e| e.to_string())?;
                }
                ClientEvent::Error { code, description } => {
                    return Err(format!("{code}: {description}"))
                }
                ClientEvent::Started => {}
            }
        }
        let out = session.take_output();
        write(&mut io, &out).await?;
        let n = tokio::select! {
            _ = kicked.cancelled() => return Err("kicked".into()),
            r = tokio::time::timeout(IO_TIMEOUT, io.read(&mut buf)) => r
                .map_err(|_| "no data from the source for 10 s".to_string())?
                .map_err(|e| format!("read: {e}"))?,
        };
        if n == 0 {
            return Ok(());
        }
        session.feed(&buf[..n]).map_err(|e| e.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_are_redacted() {
        assert_eq!(
            redact("rtmp://live.twitch.tv/app/live_123_secret"),
            "rtmp://live.twitch.tv/app/***"
        );
        assert_eq!(
            redact("rtmps://h:443/live2/k?x=1"),
            "rtmps://h:443/live2/***"
        );
    }
}
