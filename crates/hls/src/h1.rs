//! Request heads for the server's HTTP/1.1 lane (the HLS listener answers players' requests
//! without hyper; the lane's connection loop is in the server crate, `h1.rs`): which heads it
//! takes, and what of them the routes read. Parsing is `httparse`'s (hyper's own parser);
//! what is built on it is checked by the `hls_h1` fuzz target.

use crate::reply::{Request, Verb};

/// The longest request head the lane reads; a longer one goes to hyper (which refuses it).
pub const MAX_HEAD: usize = 16 << 10;
/// The most headers of a request the lane reads; more go to hyper.
pub const MAX_HEADERS: usize = 48;

/// What [`parse`] found at the start of a buffer.
pub enum Parsed {
    /// A whole head the lane takes, this many bytes long.
    Complete(usize),
    /// Not a whole head yet.
    Partial,
    /// A head for hyper.
    NotOurs,
}

/// Whether `buf` starts with a whole request head the lane takes.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match take(buf, &mut headers) {
        Ok((n, _)) => Parsed::Complete(n),
        Err(p) => p,
    }
}

/// Whether `buf` holds the empty line that ends a request head (CRLF or bare LF, as
/// `httparse` reads them): the lane parses a head once it is whole, once.
pub fn head_complete(buf: &[u8]) -> bool {
    let mut at = 0;
    while let Some(i) = buf[at..].iter().position(|b| *b == b'\n') {
        let i = at + i;
        match buf.get(i + 1) {
            Some(b'\n') => return true,
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return true,
            _ => at = i + 1,
        }
    }
    false
}

/// The head at the start of `buf`, parsed into `headers`, with its length, when it is whole
/// and the lane takes it; otherwise what [`parse`] would say.
pub fn take<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<(usize, httparse::Request<'h, 'b>), Parsed> {
    let mut req = httparse::Request::new(headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(Parsed::Partial),
        // Malformed, HTTP/2's preface, too many headers: hyper answers.
        Err(_) => return Err(Parsed::NotOurs),
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
        Ok((n, req))
    } else {
        Err(Parsed::NotOurs)
    }
}

/// What the lane reads of a request head.
pub struct Head<'a> {
    pub request: Request<'a>,
    pub http10: bool,
    /// The connection ends after this reply.
    pub close: bool,
}

impl<'a> Head<'a> {
    /// What the lane reads of `req`.
    pub fn of(req: &httparse::Request<'_, 'a>) -> Head<'a> {
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
    pub fn forwarded_for<'h>(
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

/// For the fuzz target: a buffer through [`parse`], [`head_complete`], [`take`] and
/// [`Head::of`], as the lane reads it.
#[doc(hidden)]
pub fn parse_for_fuzzing(buf: &[u8]) -> usize {
    let whole = head_complete(buf);
    let Parsed::Complete(n) = parse(buf) else {
        return usize::from(whole);
    };
    // A whole head has its empty line.
    assert!(whole, "a complete head without its empty line");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok((_, req)) = take(buf, &mut headers) else {
        return 0;
    };
    let head = Head::of(&req);
    let r = head.request;
    n + r.path.len()
        + r.query.map_or(0, str::len)
        + r.authorization.map_or(0, str::len)
        + r.origin.map_or(0, str::len)
        + head
            .forwarded_for(&req)
            .flatten()
            .map(str::len)
            .sum::<usize>()
        + usize::from(head.close)
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
        assert!(head_complete(ours) && !head_complete(&ours[..ours.len() - 1]));
        assert!(head_complete(b"GET / HTTP/1.0\n\n") && !head_complete(b"GET / HTTP/1.0\r\n"));
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
}
