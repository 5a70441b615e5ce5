//! SRT in caller mode: pulling a remote SRT stream into a path (`source: srt://…`) and pushing
//! a path to a remote SRT listener (`push: srt://…`). Both reconnect with the relays' capped
//! backoff. URLs follow srt-live-transmit: `srt://host:port?streamid=…&passphrase=…&pbkeylen=16&latency=200`
//! (latency in milliseconds).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::io::{CallSettings, SrtConn};
use tidegate_core::relay::{with_backoff, RelayStatus};
use tidegate_core::{CoreError, PathManager, SessionInfo};
use tokio_util::sync::CancellationToken;

use crate::server::{publish, read, TsMuxer};
use crate::SrtError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A pulled source that sends nothing for this long is reconnected.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `srt://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrtUrl {
    pub host: String,
    pub port: u16,
    pub streamid: Option<String>,
    pub passphrase: Option<String>,
    pub key_size: u16,
    pub latency: Option<Duration>,
}

fn decode(v: &str) -> String {
    tidegate_core::text::percent_decode(v, false)
}

impl SrtUrl {
    pub fn parse(url: &str) -> Result<SrtUrl, SrtError> {
        SrtUrl::read(url).map_err(SrtError::Url)
    }

    fn read(url: &str) -> Result<SrtUrl, String> {
        let rest = url
            .strip_prefix("srt://")
            .ok_or_else(|| format!("not an srt:// URL: {url}"))?;
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: the port is missing (srt://host:port)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url}: bad port '{port}'"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url}: the host is missing"));
        }
        let mut u = SrtUrl {
            host: host.to_string(),
            port,
            streamid: None,
            passphrase: None,
            key_size: 0,
            latency: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "streamid" => u.streamid = Some(decode(v)),
                "passphrase" => {
                    let p = decode(v);
                    if !(10..=79).contains(&p.chars().count()) {
                        return Err(format!("{url}: a passphrase has 10 to 79 characters"));
                    }
                    u.passphrase = Some(p);
                }
                "pbkeylen" => {
                    u.key_size = match v {
                        "0" | "16" | "24" | "32" => v.parse().unwrap_or(0),
                        _ => return Err(format!("{url}: pbkeylen is 16, 24 or 32")),
                    }
                }
                "latency" => {
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| format!("{url}: latency is in milliseconds"))?;
                    u.latency = Some(Duration::from_millis(ms));
                }
                // Accepted for compatibility with libsrt URLs; caller mode is implied.
                "mode" | "transtype" => {}
                other => return Err(format!("{url}: unknown option '{other}'")),
            }
        }
        Ok(u)
    }
}

/// The URL as the API and logs show it: the passphrase replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let q: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("passphrase", _)) => "passphrase=***".to_string(),
            _ => p.to_string(),
        })
        .collect();
    format!("{base}?{}", q.join("&"))
}

async fn connect(u: &SrtUrl) -> Result<SrtConn, String> {
    let addr = tokio::net::lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("resolve {}: {e}", u.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", u.host))?;
    let how = CallSettings {
        stream_id: u.streamid.clone(),
        latency: u.latency,
        encryption: u.passphrase.clone().map(|p| (u.key_size, p)),
    };
    crate::io::call(addr, &how, CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => {
                "the SRT handshake did not complete within 10 s".to_string()
            }
            _ => format!("SRT connect: {e}"),
        })
}

fn watch_bytes(
    socket: &SrtConn,
    status: &Arc<RelayStatus>,
    sent: bool,
) -> tokio::task::JoinHandle<()> {
    let mut stats = socket.statistics();
    let status = status.clone();
    tokio::spawn(async move {
        loop {
            let s = stats.borrow_and_update().socket.clone();
            let b = if sent { s.tx_bytes } else { s.rx_bytes };
            status.bytes.store(b, Ordering::Relaxed);
            if stats.changed().await.is_err() {
                break;
            }
        }
    })
}

/// The parsed URL, or the relay marked failed with the reason.
fn parse_or_fail(url: &str, status: &RelayStatus) -> Option<SrtUrl> {
    SrtUrl::parse(url)
        .map_err(|e| {
            status.set_state("failed");
            status.set_error(&e.to_string());
        })
        .ok()
}

/// Pulls `url` into `path` (`source: srt://…`) until `cancel`, reconnecting when it drops.
pub async fn pull(
    url: String,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    let Some(parsed) = parse_or_fail(&url, &status) else {
        return;
    };
    with_backoff("source", &path, &status, &cancel, || async {
        status.set_state("connecting");
        let socket = connect(&parsed).await?;
        let publisher = paths
            .publish_source(
                &path,
                SessionInfo {
                    id: paths.new_session_id(),
                    kind: "srtSource",
                    remote: None,
                    query: String::new(),
                },
            )
            .map_err(|e| e.to_string())?;
        status.set_state("running");
        tracing::info!(path, url = status.url, "pulling");
        let watcher = watch_bytes(&socket, &status, false);
        let kick = publisher.kicked();
        let r = publish(socket, publisher, SOURCE_TIMEOUT, &kick, cancel.clone()).await;
        watcher.abort();
        r?;
        Err("the source ended the stream".to_string())
    })
    .await;
}

/// Pushes `path` to `url` (`push: srt://…`) while it has a publisher, until `cancel`.
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
    with_backoff("push", &path, &status, &cancel, || async {
        let reader = match paths.read(
            &path,
            SessionInfo {
                id: paths.new_session_id(),
                kind: "srtPush",
                remote: None,
                query: String::new(),
            },
        ) {
            Ok(r) => r,
            // The stream ended: the next publish starts a new push.
            Err(CoreError::NoOnePublishing(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let source = reader.stream().clone();
        let Some(egress) = TsMuxer::egress(&source) else {
            return Err("no track of this stream can travel in MPEG-TS".to_string());
        };
        status.set_state("connecting");
        let socket = connect(&parsed).await?;
        status.set_state("running");
        tracing::info!(path, url = status.url, "pushing");
        let watcher = watch_bytes(&socket, &status, true);
        let kick = CancellationToken::new();
        let r = read(socket, reader, &egress, &kick, cancel.clone(), None).await;
        watcher.abort();
        if cancel.is_cancelled() {
            return Ok(());
        }
        r?;
        // read() returns when the stream ends (Ok) or the peer went away; a stream that is
        // still published means the destination dropped us: reconnect.
        match paths.get(&path) {
            Some(p) if p.ready => Err("the destination closed the connection".to_string()),
            _ => Ok(()),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_libsrt_options() {
        let u = SrtUrl::parse(
            "srt://cam.example:9000?streamid=read:live/x&passphrase=0123456789ab&pbkeylen=32&latency=250&mode=caller",
        )
        .unwrap();
        assert_eq!(u.host, "cam.example");
        assert_eq!(u.port, 9000);
        assert_eq!(u.streamid.as_deref(), Some("read:live/x"));
        assert_eq!(u.passphrase.as_deref(), Some("0123456789ab"));
        assert_eq!(u.key_size, 32);
        assert_eq!(u.latency, Some(Duration::from_millis(250)));
        let u = SrtUrl::parse("srt://[::1]:9000?streamid=%23!::r=a,m=publish").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.streamid.as_deref(), Some("#!::r=a,m=publish"));
        for bad in [
            "rtmp://x/y",
            "srt://host",
            "srt://host:notaport",
            "srt://host:1?passphrase=short",
            "srt://host:1?pbkeylen=8",
            "srt://host:1?latency=fast",
            "srt://host:1?bogus=1",
        ] {
            assert!(SrtUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passphrases_are_redacted() {
        assert_eq!(
            redact("srt://h:1?streamid=a&passphrase=0123456789ab&latency=5"),
            "srt://h:1?streamid=a&passphrase=***&latency=5"
        );
    }
}
