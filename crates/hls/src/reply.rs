//! What the HLS routes take and give, apart from any HTTP library: a [`Request`] is the few
//! things of a request they read, a [`Reply`] the status, the few headers and the body they
//! answer with. Two fronts use them: axum (every HTTP version, TLS, the RTMPT routes beside
//! HLS) converts them to and from its types; the server's HTTP/1.1 lane for players' requests
//! reads a request head with `httparse` and writes the reply's head and body itself, so that
//! a playlist or part request costs no header map, no URI parse and no boxed body
//! (docs/performance.md, "LL-HLS").

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::stream::BoxStream;

/// The method of a request, as far as the routes care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Options,
    Other,
}

/// A request, as the HLS routes read it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub verb: Verb,
    /// The target's path (percent-encoded, as sent).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub accept_encoding: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// The request of an axum front.
    pub(crate) fn of(parts: &'a axum::http::request::Parts) -> Request<'a> {
        let h = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
        Request {
            verb: match parts.method {
                axum::http::Method::GET => Verb::Get,
                axum::http::Method::HEAD => Verb::Head,
                axum::http::Method::OPTIONS => Verb::Options,
                _ => Verb::Other,
            },
            path: parts.uri.path(),
            query: parts.uri.query(),
            authorization: h(header::AUTHORIZATION),
            accept_encoding: h(header::ACCEPT_ENCODING),
            origin: h(header::ORIGIN),
            user_agent: h(header::USER_AGENT),
        }
    }
}

/// A reply's body.
pub enum ReplyBody {
    /// Whole, in one piece.
    Full(Bytes),
    /// Whole, in pieces shared with the muxer (a segment's parts).
    Parts(Vec<Bytes>),
    /// Streamed as the muxer writes it (the open part, an LL-DASH segment): no length known.
    Stream(BoxStream<'static, std::io::Result<Bytes>>),
}

impl ReplyBody {
    /// Its length, when whole.
    pub fn whole_len(&self) -> Option<usize> {
        match self {
            ReplyBody::Full(b) => Some(b.len()),
            ReplyBody::Parts(p) => Some(p.iter().map(Bytes::len).sum()),
            ReplyBody::Stream(_) => None,
        }
    }
}

/// What the routes answer.
pub struct Reply {
    pub status: u16,
    /// `Content-Type` ("" for none).
    pub content_type: &'static str,
    /// `Cache-Control` ("" for none).
    pub cache_control: Cow<'static, str>,
    /// `Content-Encoding: gzip`.
    pub gzip: bool,
    /// `Vary: Accept-Encoding`.
    pub vary: bool,
    pub location: Option<String>,
    /// `WWW-Authenticate: Basic realm="tidegate"`.
    pub www_authenticate: bool,
    /// A CORS preflight's answer: the methods and headers allowed.
    pub preflight: bool,
    /// `Access-Control-Allow-Origin` (with `Access-Control-Allow-Credentials: true`, which every
    /// reply carries).
    pub allow_origin: Option<Cow<'static, str>>,
    pub body: ReplyBody,
}

impl Reply {
    pub(crate) fn new(status: u16, content_type: &'static str, body: ReplyBody) -> Reply {
        Reply {
            status,
            content_type,
            cache_control: Cow::Borrowed(""),
            gzip: false,
            vary: false,
            location: None,
            www_authenticate: false,
            preflight: false,
            allow_origin: None,
            body,
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The reply's status line and headers for HTTP/1.x (`Content-Length` when the body is
    /// whole, chunked framing when it is streamed over HTTP/1.1, and `Connection: close` when
    /// `close`), appended to `out`; `date` is the `Date` header's value.
    pub fn write_head(&self, out: &mut Vec<u8>, http10: bool, close: bool, date: &str) {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        use std::io::Write as _;
        out.reserve(256);
        let _ = write!(
            out,
            "HTTP/1.{} {} {reason}\r\n",
            if http10 { 0 } else { 1 },
            self.status
        );
        if !self.content_type.is_empty() {
            let _ = write!(out, "content-type: {}\r\n", self.content_type);
        }
        if !self.cache_control.is_empty() {
            let _ = write!(out, "cache-control: {}\r\n", self.cache_control);
        }
        if self.gzip {
            out.extend_from_slice(b"content-encoding: gzip\r\n");
        }
        if self.vary {
            out.extend_from_slice(b"vary: Accept-Encoding\r\n");
        }
        if let Some(l) = &self.location {
            let _ = write!(out, "location: {l}\r\n");
        }
        if self.www_authenticate {
            out.extend_from_slice(b"www-authenticate: Basic realm=\"tidegate\"\r\n");
        }
        if self.preflight {
            out.extend_from_slice(
                b"access-control-allow-methods: OPTIONS, GET, HEAD\r\n\
                 access-control-allow-headers: Authorization, Range\r\n",
            );
        }
        if let Some(o) = &self.allow_origin {
            let _ = write!(out, "access-control-allow-origin: {o}\r\n");
        }
        out.extend_from_slice(b"access-control-allow-credentials: true\r\n");
        match self.body.whole_len() {
            Some(n) => {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            None if !http10 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {}
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        let _ = write!(out, "date: {date}\r\n\r\n");
    }

    /// The axum response of this reply (`head`: a HEAD request's, without its body).
    pub(crate) fn into_response(self, head: bool) -> Response {
        let len = self.body.whole_len();
        let body = if head {
            Body::empty()
        } else {
            match self.body {
                ReplyBody::Full(b) => Body::from(b),
                ReplyBody::Parts(p) => Body::from_stream(futures::stream::iter(
                    p.into_iter().map(Ok::<_, std::convert::Infallible>),
                )),
                ReplyBody::Stream(s) => Body::from_stream(s),
            }
        };
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let h: &mut HeaderMap = r.headers_mut();
        if !self.content_type.is_empty() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
        }
        if !self.cache_control.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.cache_control) {
                h.insert(header::CACHE_CONTROL, v);
            }
        }
        if self.gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if self.vary {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if let Some(v) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(header::LOCATION, v);
        }
        if self.www_authenticate {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tidegate\""),
            );
        }
        if self.preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("OPTIONS, GET, HEAD"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Range"),
            );
        }
        if let Some(v) = self
            .allow_origin
            .and_then(|o| HeaderValue::from_str(&o).ok())
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if let Some(n) = len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_says_what_the_reply_carries() {
        let mut r = Reply::new(
            200,
            "application/vnd.apple.mpegurl",
            ReplyBody::Full(Bytes::from_static(b"#EXTM3U\n")),
        );
        r.cache_control = Cow::Borrowed("public, max-age=1");
        r.vary = true;
        r.allow_origin = Some(Cow::Borrowed("*"));
        let mut out = Vec::new();
        r.write_head(&mut out, false, false, "Sat, 05 Dec 2026 18:00:00 GMT");
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        for line in [
            "content-type: application/vnd.apple.mpegurl\r\n",
            "cache-control: public, max-age=1\r\n",
            "vary: Accept-Encoding\r\n",
            "access-control-allow-origin: *\r\n",
            "access-control-allow-credentials: true\r\n",
            "content-length: 8\r\n",
            "date: Sat, 05 Dec 2026 18:00:00 GMT\r\n\r\n",
        ] {
            assert!(s.contains(line), "{line:?} in {s}");
        }
        assert!(!s.contains("connection"), "{s}");
    }

    #[test]
    fn a_streamed_reply_is_chunked_over_http11_and_closed_over_http10() {
        let r = Reply::new(
            200,
            "video/mp4",
            ReplyBody::Stream(Box::pin(futures::stream::empty())),
        );
        let mut out = Vec::new();
        r.write_head(&mut out, false, false, "d");
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("transfer-encoding: chunked\r\n"), "{s}");
        assert!(!s.contains("content-length"), "{s}");
        let mut out = Vec::new();
        r.write_head(&mut out, true, true, "d");
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.0 200 OK\r\n"), "{s}");
        assert!(!s.contains("transfer-encoding"), "{s}");
        assert!(s.contains("connection: close\r\n"), "{s}");
    }
}
