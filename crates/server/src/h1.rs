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
//! so far ([`Prefixed`]), and hyper answers as it did before this lane existed.

use std::cell::RefCell;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use tidegate_core::prefixed::Prefixed;
use tidegate_hls::h1::{head_complete, parse, take, Head, Parsed, MAX_HEAD, MAX_HEADERS};
use tidegate_hls::reply::{ReplyBody, Verb};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Serves requests on `io` until the client closes, a reply says close, `header_timeout`
/// passes without a whole request head, or a write fails (`None`); or until a request the lane
/// does not take (`Some`: the connection, its unread bytes first, for hyper).
pub async fn serve<S>(
    hls: &tidegate_hls::Hls,
    mut io: S,
    peer: SocketAddr,
    trusted: &[ipnet::IpNet],
    header_timeout: Duration,
) -> Option<Prefixed<S>>
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
        loop {
            // A whole head is parsed once, below. A part of one is parsed here only to hand
            // what the lane does not take (garbage, HTTP/2's preface) to hyper at once.
            if head_complete(&buf) {
                break;
            }
            match parse(&buf) {
                Parsed::Complete(_) => break,
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::NotOurs => return Some(Prefixed::new(buf.freeze(), io)),
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
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (head_len, parsed) = match take(&buf, &mut headers) {
            Ok(taken) => taken,
            Err(_) => return Some(Prefixed::new(buf.freeze(), io)),
        };
        let head = Head::of(&parsed);
        let client = crate::http::client_address_of(peer, head.forwarded_for(&parsed), trusted);
        let reply = hls.answer(client, &head.request).await;
        let (http10, is_head) = (head.http10, head.request.verb == Verb::Head);
        let streamed = matches!(reply.body, ReplyBody::Stream(_));
        let close = head.close || (http10 && streamed && !is_head);
        out.clear();
        with_date(|date| reply.write_head(&mut out, http10, close, date));
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

/// `f` with the `Date` header's value, formatted once a second per thread.
fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
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
        f(&d.1)
    })
}
