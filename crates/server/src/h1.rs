//! The HTTP/1.1 lane of the HLS listener: what players ask for most (playlists with blocking
//! reload, parts, segments), answered without hyper and axum.
//!
//! At 2000 LL-HLS clients a request through hyper and axum cost about twice what a server that
//! only writes prepared bytes costs (docs/performance.md, "LL-HLS"): a header map built and
//! hashed per request, a URI parsed, a boxed body polled frame by frame, a service cloned. This
//! lane reads a request head with `httparse` (hyper's own parser) into a buffer it keeps for
//! the connection, asks the HLS routes for their [`Reply`](tidegate_hls::reply::Reply) (the
//! same code the axum front calls, so the answers are the same), and writes the head and the
//! body in one vectored write.
//!
//! It takes only what it knows: GET, HEAD and OPTIONS over HTTP/1.0 or 1.1 with no body, no
//! `Upgrade` and no `Expect`, a target in origin form, a head under [`MAX_HEAD`] with at most
//! [`MAX_HEADERS`] headers. On anything else (an RTMPT POST, HTTP/2's preface, a malformed or
//! oversized head) the connection goes to hyper for the rest of its life, with the bytes read
//! so far ([`Rewind`]), and hyper answers as it did before this lane existed.

use std::cell::RefCell;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use tidegate_hls::reply::{ReplyBody, Request, Verb};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The longest request head the lane reads; a longer one goes to hyper (which refuses it).
pub const MAX_HEAD: usize = 16 << 10;
/// The most headers of a request the lane reads; more go to hyper.
pub const MAX_HEADERS: usize = 48;

/// Serves requests on `io` until the client closes, a reply says close, `header_timeout`
/// passes without a whole request head, or a write fails (`None`); or until a request the lane
/// does not take (`Some`: the connection, its unread bytes first, for hyper).
pub async fn serve<S>(
    hls: &tidegate_hls::Hls,
    mut io: S,
    peer: SocketAddr,
    trusted: &[ipnet::IpNet],
    header_timeout: Duration,
) -> Option<Rewind<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    // A whole head within `header_timeout` of the wait for it (as hyper's
    // `header_read_timeout`). One timer for the connection, moved only when it fires early
    // for the current head: a timer set and cleared per request costs more than the request's
    // parse.
    let mut timer = std::pin::pin!(tokio::time::sleep(header_timeout));
    loop {
        let waiting_since = tokio::time::Instant::now();
        let head_len = loop {
            match parse(&buf) {
                Parsed::Complete(n) => break n,
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::NotOurs => {
                    return Some(Rewind {
                        pre: buf.freeze(),
                        io,
                    })
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                },
                () = &mut timer => {
                    let deadline = waiting_since + header_timeout;
                    if tokio::time::Instant::now() >= deadline {
                        return None;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        // Parsed whole above: cannot fail now.
        if !matches!(parsed.parse(&buf), Ok(httparse::Status::Complete(_))) {
            return None;
        }
        let head = Head::of(&parsed);
        let client = crate::http::client_address_of(peer, head.forwarded_for(&parsed), trusted);
        let reply = hls.answer(client, &head.request).await;
        let (http10, is_head) = (head.http10, head.request.verb == Verb::Head);
        let streamed = matches!(reply.body, ReplyBody::Stream(_));
        let close = head.close || (http10 && streamed && !is_head);
        out.clear();
        reply.write_head(&mut out, http10, close, &date());
        buf.advance(head_len);
        let sent = if is_head {
            write_all(&mut io, &mut [IoSlice::new(&out)]).await
        } else {
            match reply.body {
                ReplyBody::Full(b) => {
                    write_all(&mut io, &mut [IoSlice::new(&out), IoSlice::new(&b)]).await
                }
                ReplyBody::Parts(parts) => {
                    let mut slices = Vec::with_capacity(parts.len() + 1);
                    slices.push(IoSlice::new(&out));
                    slices.extend(parts.iter().map(|p| IoSlice::new(p)));
                    write_all(&mut io, &mut slices).await
                }
                ReplyBody::Stream(s) => stream(&mut io, &out, s, http10).await,
            }
        };
        if !sent || io.flush().await.is_err() {
            return None;
        }
        if close {
            let _ = io.shutdown().await;
            return None;
        }
        // A buffer that grew for one long head goes back to its usual size when empty.
        if buf.is_empty() && buf.capacity() > 2 * MAX_HEAD {
            buf = BytesMut::with_capacity(4096);
        }
    }
}

enum Parsed {
    Complete(usize),
    Partial,
    NotOurs,
}

/// Whether `buf` starts with a whole request head the lane takes.
fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Malformed, HTTP/2's preface, too many headers: hyper answers.
        Err(_) => return Parsed::NotOurs,
    };
    let ours = matches!(req.method, Some("GET" | "HEAD" | "OPTIONS"))
        && req.path.is_some_and(|p| p.starts_with('/'))
        && req.headers.iter().all(|h| {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                h.value.iter().all(|b| *b == b'0') && !h.value.is_empty()
            } else {
                !(name.eq_ignore_ascii_case("transfer-encoding")
                    || name.eq_ignore_ascii_case("upgrade")
                    || name.eq_ignore_ascii_case("expect"))
            }
        });
    if ours {
        Parsed::Complete(n)
    } else {
        Parsed::NotOurs
    }
}

/// What the lane reads of a request head.
struct Head<'a> {
    request: Request<'a>,
    http10: bool,
    /// The connection ends after this reply.
    close: bool,
}

impl<'a> Head<'a> {
    fn of(req: &httparse::Request<'_, 'a>) -> Head<'a> {
        let header = |name: &str| -> Option<&'a str> {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| visible(h.value))
        };
        let target = req.path.unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let http10 = req.version == Some(0);
        // HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes unless told to
        // keep it.
        let tokens = |token: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        let close = if http10 {
            !tokens("keep-alive")
        } else {
            tokens("close")
        };
        Head {
            request: Request {
                verb: match req.method {
                    Some("GET") => Verb::Get,
                    Some("HEAD") => Verb::Head,
                    Some("OPTIONS") => Verb::Options,
                    _ => Verb::Other,
                },
                path,
                query,
                authorization: header("authorization"),
                accept_encoding: header("accept-encoding"),
                origin: header("origin"),
                user_agent: header("user-agent"),
            },
            http10,
            close,
        }
    }

    /// The `X-Forwarded-For` values, in order (None for one that is not text).
    fn forwarded_for<'h>(
        &self,
        req: &'h httparse::Request<'_, 'a>,
    ) -> impl Iterator<Item = Option<&'a str>> + 'h {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| visible(h.value))
    }
}

/// A header value as text, when it is what `HeaderValue::to_str` takes (visible ASCII, space
/// and tab).
fn visible(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

/// Writes every slice; false when the connection failed.
async fn write_all<S: AsyncWrite + Unpin>(io: &mut S, mut slices: &mut [IoSlice<'_>]) -> bool {
    // Empty slices are dropped first (a zero-length write would look like a closed socket).
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match io.write_vectored(slices).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
        }
    }
    true
}

/// A streamed body: chunked over HTTP/1.1, as it comes over HTTP/1.0 (the connection then
/// closes); false when the connection failed or the body ended in an error (the client sees
/// a body cut short, as from hyper).
async fn stream<S: AsyncWrite + Unpin>(
    io: &mut S,
    head: &[u8],
    mut body: futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
    http10: bool,
) -> bool {
    if !write_all(io, &mut [IoSlice::new(head)]).await || io.flush().await.is_err() {
        return false;
    }
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return false };
        if chunk.is_empty() {
            continue;
        }
        let ok = if http10 {
            write_all(io, &mut [IoSlice::new(&chunk)]).await
        } else {
            let size = format!("{:x}\r\n", chunk.len());
            write_all(
                io,
                &mut [
                    IoSlice::new(size.as_bytes()),
                    IoSlice::new(&chunk),
                    IoSlice::new(b"\r\n"),
                ],
            )
            .await
        };
        if !ok || io.flush().await.is_err() {
            return false;
        }
    }
    http10 || write_all(io, &mut [IoSlice::new(b"0\r\n\r\n")]).await
}

/// The `Date` header's value, formatted once a second per thread.
fn date() -> String {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        d.1.clone()
    })
}

/// A connection handed on, with the bytes already read from it first.
pub struct Rewind<S> {
    pre: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let part = self.pre.split_to(n);
            buf.put_slice(&part);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_players_send_and_leaves_the_rest_to_hyper() {
        let ours = b"GET /live/cam/stream.m3u8?_HLS_msn=5&_HLS_part=2 HTTP/1.1\r\n\
                     Host: x\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n";
        assert!(matches!(parse(ours), Parsed::Complete(n) if n == ours.len()));
        assert!(matches!(parse(&ours[..20]), Parsed::Partial));
        for not_ours in [
            &b"POST /open/1 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://x/a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(
                matches!(parse(not_ours), Parsed::NotOurs),
                "{}",
                String::from_utf8_lossy(not_ours)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        let many = format!("GET /a HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(many.as_bytes()), Parsed::NotOurs));
    }

    #[test]
    fn reads_the_headers_the_routes_use() {
        let raw = b"GET /a/b.m3u8?x=1 HTTP/1.0\r\nAUTHORIZATION: Basic dTpw\r\n\
                    Origin: https://o\r\nUser-Agent: t\r\nConnection: Keep-Alive\r\n\
                    X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).is_ok());
        let head = Head::of(&req);
        assert_eq!(head.request.verb, Verb::Get);
        assert_eq!(head.request.path, "/a/b.m3u8");
        assert_eq!(head.request.query, Some("x=1"));
        assert_eq!(head.request.authorization, Some("Basic dTpw"));
        assert_eq!(head.request.origin, Some("https://o"));
        assert_eq!(head.request.accept_encoding, None);
        assert!(head.http10 && !head.close);
        let xff: Vec<_> = head.forwarded_for(&req).collect();
        assert_eq!(xff, vec![Some("10.0.0.1"), Some("10.0.0.2")]);
    }

    #[tokio::test]
    async fn a_rewound_connection_reads_what_was_read_before() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind {
            pre: Bytes::from_static(b"GET / HTTP/1.1\r\n"),
            io: a,
        };
        b.write_all(b"\r\n").await.unwrap();
        drop(b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }
}
