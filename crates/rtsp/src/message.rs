//! RTSP 1.0 messages (RFC 2326) off a TCP stream: requests, responses and `$`-framed
//! interleaved data, with limits on everything allocated. The one parser of the crate: the
//! server reads requests with it, the client (pulls and `forward`) responses.

use crate::RtspError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest request or status line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body (an SDP).
pub const MAX_BODY: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn cseq(&self) -> &str {
        self.header("CSeq").unwrap_or("0")
    }
}

/// A response to one of our requests (the client's side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header that may repeat (`WWW-Authenticate`).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Request(Request),
    Response(Response),
    Interleaved { channel: u8, data: Bytes },
}

/// Splits a byte stream into requests and interleaved frames.
#[derive(Default)]
pub struct Parser {
    buf: BytesMut,
}

impl Parser {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether part of a request (not of an interleaved frame) waits for the rest: a request
    /// that arrives a byte at a time (slowloris) is timed by the caller.
    pub fn partial_request(&self) -> bool {
        self.buf
            .iter()
            .find(|b| **b != b'\r' && **b != b'\n')
            .is_some_and(|b| *b != b'$')
    }

    pub fn poll(&mut self) -> Result<Option<Input>, RtspError> {
        // Clients may send CRLFs between messages.
        while self.buf.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
            self.buf.advance(1);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf[0] == b'$' {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            let channel = self.buf[1];
            self.buf.advance(4);
            let data = self.buf.split_to(len).freeze();
            return Ok(Some(Input::Interleaved { channel, data }));
        }
        let Some(end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_HEAD {
                return Err(RtspError::HeadTooLarge);
            }
            return Ok(None);
        };
        if end > MAX_HEAD {
            return Err(RtspError::HeadTooLarge);
        }
        // A response (the client's side) is read as cameras write it: bytes that are not
        // UTF-8 are replaced, header lines without ':' skipped and headers past the limit
        // dropped, as RTSP clients do. A request (the server's side) must be well formed.
        let response = self.buf.starts_with(b"RTSP/");
        let head = if response {
            String::from_utf8_lossy(&self.buf[..end])
        } else {
            std::borrow::Cow::Borrowed(
                std::str::from_utf8(&self.buf[..end])
                    .map_err(|_| RtspError::Malformed("not UTF-8"))?,
            )
        };
        let mut lines = head.split("\r\n");
        let first = lines.next().ok_or(RtspError::Malformed("empty"))?;
        let mut headers = Vec::new();
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                if response {
                    continue;
                }
                return Err(RtspError::Malformed("header without ':'"));
            };
            if headers.len() >= MAX_HEADERS {
                if response {
                    break;
                }
                return Err(RtspError::TooManyHeaders);
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .map(|(_, v)| match v.parse::<usize>() {
                Ok(n) => Ok(n),
                // A camera's answer with a Content-Length it did not mean: no body.
                Err(_) if response => Ok(0),
                Err(_) => Err(RtspError::Malformed("bad Content-Length")),
            })
            .transpose()?
            .unwrap_or(0);
        if len > MAX_BODY {
            return Err(RtspError::BodyTooLarge);
        }
        let first = start_line(first)?;
        if self.buf.len() < end + 4 + len {
            return Ok(None);
        }
        self.buf.advance(end + 4);
        let body = self.buf.split_to(len).freeze();
        Ok(Some(match first {
            StartLine::Request { method, uri } => Input::Request(Request {
                method,
                uri,
                headers,
                body,
            }),
            StartLine::Status { status, reason } => Input::Response(Response {
                status,
                reason,
                headers,
                body,
            }),
        }))
    }
}

enum StartLine {
    Request { method: String, uri: String },
    Status { status: u16, reason: String },
}

/// `METHOD uri RTSP/1.0` or `RTSP/1.0 200 OK`.
fn start_line(line: &str) -> Result<StartLine, RtspError> {
    if let Some(rest) = line.strip_prefix("RTSP/") {
        // The three digits after the version, whatever follows them (`200 OK`, `200\tOK`).
        let after = rest.split_once(' ').map_or("", |(_, a)| a.trim_start());
        let status = after
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u16>().ok())
            .ok_or(RtspError::Malformed("bad status line"))?;
        return Ok(StartLine::Status {
            status,
            reason: after[3..].trim().to_string(),
        });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(RtspError::Malformed("bad request line"));
    };
    if !version.starts_with("RTSP/")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
    {
        return Err(RtspError::Malformed("bad request line"));
    }
    Ok(StartLine::Request {
        method: method.to_string(),
        uri: uri.to_string(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response with `CSeq` and the given headers and body.
pub fn response(
    status: u16,
    reason: &str,
    cseq: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(
        format!("RTSP/1.0 {status} {reason}\r\nCSeq: {cseq}\r\nServer: Tidegate\r\n").as_bytes(),
    );
    for (k, v) in headers {
        out.put_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() {
        out.put_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.freeze()
}

/// A request: `CSeq`, then the given headers (`Content-Length` added for a body).
pub fn request(
    method: &str,
    uri: &str,
    cseq: u32,
    headers: &[(&str, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `$ channel len data`.
pub fn interleaved(channel: u8, data: &[u8], out: &mut BytesMut) {
    out.put_u8(b'$');
    out.put_u8(channel);
    out.put_u16(data.len().min(0xffff) as u16);
    out.put_slice(&data[..data.len().min(0xffff)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_interleaved_frames_split_at_any_byte() {
        let raw = b"OPTIONS rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\n\r\n$\x01\x00\x03abcANNOUNCE rtsp://h/a RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 4\r\n\r\nv=0\n";
        for split in 0..raw.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            p.feed(&raw[..split]);
            while let Some(i) = p.poll().unwrap() {
                got.push(i);
            }
            p.feed(&raw[split..]);
            while let Some(i) = p.poll().unwrap() {
                got.push(i);
            }
            assert_eq!(got.len(), 3, "split at {split}");
            match &got[2] {
                Input::Request(r) => {
                    assert_eq!(r.method, "ANNOUNCE");
                    assert_eq!(r.cseq(), "2");
                    assert_eq!(&r.body[..], b"v=0\n");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn responses_come_after_interleaved_data_and_wait_for_their_body() {
        let mut p = Parser::default();
        p.feed(b"$\x00\x00\x02\x09\x09RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 4\r\n");
        p.feed(b"Session: ab;timeout=60\r\nWWW-Authenticate: Basic\r\nwww-authenticate: Digest\r\n\r\nv=0");
        assert!(matches!(
            p.poll(),
            Ok(Some(Input::Interleaved { channel: 0, .. }))
        ));
        assert_eq!(p.poll(), Ok(None), "the body is one byte short");
        p.feed(b"\n");
        let Ok(Some(Input::Response(r))) = p.poll() else {
            panic!("no response");
        };
        assert_eq!(
            (r.status, r.reason.as_str(), &r.body[..]),
            (200, "OK", &b"v=0\n"[..])
        );
        assert_eq!(r.header("session"), Some("ab;timeout=60"));
        assert_eq!(
            r.all("WWW-Authenticate").collect::<Vec<_>>(),
            ["Basic", "Digest"]
        );
        // A camera's sloppy answer is read the way the client always read it.
        let mut p = Parser::default();
        p.feed(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nno colon here\r\nServer: caf\xe9\r\n\r\n");
        let Ok(Some(Input::Response(r))) = p.poll() else {
            panic!("a sloppy answer was refused");
        };
        assert_eq!(r.header("cseq"), Some("3"));
        assert_eq!(r.header("server"), Some("caf\u{fffd}"));
        let mut p = Parser::default();
        p.feed(b"RTSP/1.0 200\tOK\r\nContent-Length: \r\n\r\n");
        assert!(
            matches!(
                p.poll(),
                Ok(Some(Input::Response(Response { status: 200, .. })))
            ),
            "an odd status line or an empty Content-Length"
        );
        let mut p = Parser::default();
        p.feed(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(p.poll().is_err());
        let mut p = Parser::default();
        p.feed(b"RTSP/1.0 2x0 OK\r\n\r\n");
        assert!(p.poll().is_err());
    }

    #[test]
    fn a_request_is_written_as_it_parses() {
        let raw = request(
            "ANNOUNCE",
            "rtsp://h/a",
            3,
            &[("Session", "x".into())],
            b"v=0\n",
        );
        let mut p = Parser::default();
        p.feed(&raw);
        let Ok(Some(Input::Request(r))) = p.poll() else {
            panic!("no request");
        };
        assert_eq!(
            (r.method.as_str(), r.cseq(), r.header("session")),
            ("ANNOUNCE", "3", Some("x"))
        );
        assert_eq!(&r.body[..], b"v=0\n");
    }

    #[test]
    fn limits_and_garbage() {
        let mut p = Parser::default();
        p.feed(&vec![b'A'; MAX_HEAD + 10]);
        assert_eq!(p.poll(), Err(RtspError::HeadTooLarge));
        let mut p = Parser::default();
        p.feed(b"DESCRIBE x RTSP/1.0\r\nContent-Length: 99999999\r\n\r\n");
        assert_eq!(p.poll(), Err(RtspError::BodyTooLarge));
        let mut p = Parser::default();
        p.feed(b"\x00\x01 garbage\r\n\r\n");
        assert!(p.poll().is_err());
        let mut p = Parser::default();
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        p.feed(format!("OPTIONS * RTSP/1.0\r\n{many}\r\n").as_bytes());
        assert_eq!(p.poll(), Err(RtspError::TooManyHeaders));
    }
}
