//! RTSP tunnelled over HTTP (Apple's QuickTime tunnelling, what ffmpeg's
//! `-rtsp_transport http`/`https`, GStreamer's `rtsph://` and VLC speak), on the RTSP listener
//! and, inside TLS, on the RTSPS one:
//!
//! - the client first sends `GET /path HTTP/1.x` with an `x-sessioncookie`: the answer is
//!   `200 OK` with `Content-Type: application/x-rtsp-tunnelled`, and that connection then
//!   carries everything the server sends (RTSP responses and interleaved media, as they are);
//! - then `POST /path HTTP/1.x` with the same cookie: its body, base64, carries what the
//!   client sends (RTSP requests, interleaved RTCP).
//!
//! The pair becomes one ordinary RTSP connection: reads come from the POST's decoded body,
//! writes (the stream's fan-out writer's too) go to the GET's socket. A GET that asks for a
//! WebSocket instead is RTSP over WebSocket ([`crate::ws`]). Limits: an HTTP head
//! of 8 KiB read within 10 s, 1 000 GETs waiting for their POST, 10 s to wait.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use tidegate_core::{SharedTcp, SinkIo, Transport, Writable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 8 << 10;
const MAX_WAITING: usize = 1000;
const PAIR_WITHIN: Duration = Duration::from_secs(10);

/// What a new connection on the RTSP port speaks.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Rtsp,
    HttpGet,
    HttpPost,
}

/// Looks at the first bytes without taking them.
pub async fn classify(sock: &TcpStream) -> Kind {
    let mut b = [0u8; 5];
    let peeked = tokio::time::timeout(PAIR_WITHIN, async {
        loop {
            match sock.peek(&mut b).await {
                Ok(n) if n >= 5 || n == 0 => return n,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => return 0,
            }
        }
    })
    .await
    .unwrap_or(0);
    match &b[..peeked.min(5)] {
        b"GET /" => Kind::HttpGet,
        b"POST " => Kind::HttpPost,
        _ => Kind::Rtsp,
    }
}

/// What a new connection on a stream without peek (TLS) speaks, from its first bytes, which
/// are returned to be read again (see [`Prefixed`]).
pub async fn read_kind<S: AsyncRead + Unpin>(sock: &mut S) -> (Kind, Vec<u8>) {
    let mut b = Vec::with_capacity(5);
    let _ = tokio::time::timeout(PAIR_WITHIN, async {
        let mut one = [0u8; 5];
        while b.len() < 5 {
            match sock.read(&mut one[..5 - b.len()]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => b.extend_from_slice(&one[..n]),
            }
        }
    })
    .await;
    let kind = match &b[..] {
        b"GET /" => Kind::HttpGet,
        b"POST " => Kind::HttpPost,
        _ => Kind::Rtsp,
    };
    (kind, b)
}

/// A transport whose first bytes were already read (one type for every place that peeks by
/// reading: the RTSP tunnel's detection here, the HLS listener's HTTP/1.1 lane).
pub use tidegate_core::prefixed::Prefixed;

/// A tunnel's GET (its connection, where the server's output goes) and when it came.
type Waiting = (Box<dyn Transport>, Instant);

/// GETs waiting for their POST, by cookie.
#[derive(Default)]
pub struct Tunnels {
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// Reads an HTTP request head (through the blank line); returns it and what came after.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    sock: &mut S,
) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = tokio::time::timeout(PAIR_WITHIN, async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(i + 4);
            }
            if buf.len() > MAX_HEAD {
                return Err("HTTP head over 8 KiB".to_string());
            }
            let n = sock
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed during the HTTP head".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| "no HTTP head within 10 s".to_string())??;
    let rest = buf.split_off(end);
    Ok((String::from_utf8_lossy(&buf).into_owned(), rest))
}

fn cookie(head: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-sessioncookie"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|c| !c.is_empty() && c.len() <= 128)
}

impl Tunnels {
    /// A GET whose head was read already.
    pub async fn get_with_head<S: Transport>(
        &self,
        mut sock: S,
        head: &str,
        remote: SocketAddr,
    ) -> Result<(), String> {
        let Some(c) = cookie(head) else {
            let _ = sock
                .write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            return Err("HTTP GET without x-sessioncookie".into());
        };
        sock.write_all(
            b"HTTP/1.0 200 OK\r\nServer: Tidegate\r\nConnection: close\r\n\
              Cache-Control: no-store\r\nPragma: no-cache\r\n\
              Content-Type: application/x-rtsp-tunnelled\r\n\r\n",
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|_, (_, at)| at.elapsed() < PAIR_WITHIN);
        if w.len() >= MAX_WAITING {
            return Err(format!("{MAX_WAITING} HTTP tunnels waiting for their POST"));
        }
        tracing::debug!(%remote, "[RTSP] HTTP tunnel: GET, waiting for its POST");
        w.insert(c, (Box::new(sock), Instant::now()));
        Ok(())
    }

    /// A POST: paired with its GET into one RTSP connection's transport.
    pub(crate) async fn post<S: Transport>(&self, mut sock: S) -> Result<HttpTunnel, String> {
        let (head, rest) = read_head(&mut sock).await?;
        let c = cookie(&head).ok_or("HTTP POST without x-sessioncookie")?;
        let (get, _) = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c)
            .ok_or("HTTP POST with no GET of the same x-sessioncookie")?;
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        tokio::spawn(decode(sock, rest, ours));
        Ok(HttpTunnel {
            input: theirs,
            output: get,
        })
    }
}

/// The POST's base64 body, decoded into the connection's input, until either side ends.
/// Each 4-character group is decoded alone: clients encode each message separately, so the
/// body is a run of padded blocks.
async fn decode<S: AsyncRead + Unpin>(mut post: S, first: Vec<u8>, mut to_conn: DuplexStream) {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 << 10];
    let mut data = first;
    loop {
        pending.extend(data.iter().copied().filter(|c| !c.is_ascii_whitespace()));
        let whole = pending.len() - pending.len() % 4;
        let mut out = Vec::with_capacity(whole / 4 * 3);
        for group in pending[..whole].chunks(4) {
            match engine.decode(group) {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => {
                    tracing::info!("[RTSP] HTTP tunnel: the POST body is not base64: closed");
                    return;
                }
            }
        }
        pending.drain(..whole);
        if !out.is_empty() && to_conn.write_all(&out).await.is_err() {
            return;
        }
        data = match post.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => chunk[..n].to_vec(),
        };
    }
}

/// A tunnelled RTSP connection's transport: input from the POST, output to the GET.
pub struct HttpTunnel {
    input: DuplexStream,
    output: Box<dyn Transport>,
}

impl AsyncRead for HttpTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for HttpTunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.output).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.output).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.output).poll_shutdown(cx)
    }
}

impl Transport for HttpTunnel {
    fn shared_tcp(&self) -> Option<SharedTcp> {
        self.output.shared_tcp()
    }

    fn sink_io(&self) -> Option<(std::sync::Arc<dyn SinkIo>, std::sync::Arc<dyn Writable>)> {
        self.output.sink_io()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_read_from_the_head() {
        let head = "GET /cam HTTP/1.0\r\nx-sessioncookie: abc123\r\nAccept: x\r\n\r\n";
        assert_eq!(cookie(head).as_deref(), Some("abc123"));
        assert_eq!(cookie("GET / HTTP/1.0\r\n\r\n"), None);
    }

    #[tokio::test]
    async fn concatenated_padded_blocks_decode() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let e = &base64::engine::general_purpose::STANDARD;
        let body = format!("{}\r\n{}", e.encode("OPTIONS"), e.encode(" x\r\n"));
        client.write_all(body.as_bytes()).await.unwrap();
        drop(client);
        decode(server, Vec::new(), ours).await;
        let mut got = String::new();
        theirs.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "OPTIONS x\r\n");
    }
}
