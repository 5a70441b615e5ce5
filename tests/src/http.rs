//! A minimal HTTP/1.1 client for the control API and HTTP listeners: one request per
//! connection (`Connection: close`), or one answer read off a connection kept alive.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `method path` and returns (status, body). Bounded by a 10 s socket timeout.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("HTTP answer within 10 s");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    // Chunked bodies (axum uses them for some responses): join the chunks.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET and parse JSON; panics on a non-200 answer.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = request(addr, "GET", path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// An HTTP response with its raw head and body bytes.
pub struct Fetched {
    pub status: u16,
    /// The status line and headers, header names lower-cased.
    pub head: String,
    pub body: Vec<u8>,
    /// Time from sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `target` (path and query) with extra header lines; binary-safe, chunked bodies joined.
/// Bounded by a 15 s socket timeout.
pub fn fetch(addr: SocketAddr, target: &str, headers: &[&str]) -> Fetched {
    send(addr, "GET", target, headers, b"")
}

/// As [`fetch`], for answers that take long by design (a profile of N seconds): bounded by
/// `timeout` instead of 15 s.
pub fn fetch_within(addr: SocketAddr, target: &str, timeout: Duration) -> Fetched {
    send_within(addr, "GET", target, &[], b"", timeout)
}

/// Any request with a body (sent with its `Content-Length`); otherwise as [`fetch`].
pub fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &[u8],
) -> Fetched {
    send_within(addr, method, target, headers, body, Duration::from_secs(15))
}

fn send_within(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &[u8],
    timeout: Duration,
) -> Fetched {
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("HTTP answer within {timeout:?}: {e}"));
    let elapsed = start.elapsed();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let raw = &buf[split + 4..];
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let head_lc = head
        .lines()
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}:{v}", k.to_ascii_lowercase()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let body = if head_lc.contains("transfer-encoding: chunked") {
        dechunk_bytes(raw)
    } else {
        raw.to_vec()
    };
    Fetched {
        status,
        head: head_lc,
        body,
        elapsed,
    }
}

fn dechunk_bytes(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// One HTTP/1.1 answer read off a connection kept alive (the helpers above close theirs): the
/// status code and the body (by its Content-Length). Bounded by `c`'s read timeout.
pub fn answer_on(c: &mut TcpStream) -> Result<(u16, Vec<u8>), String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            Ok(_) => return Err(format!("closed after {} bytes of a head", got.len())),
            Err(e) => return Err(format!("{e} after {} bytes of a head", got.len())),
        }
        if got.len() > 16 * 1024 {
            return Err("a head over 16 KiB".into());
        }
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("no status in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(format!("no length in {head:?}"))?;
    let mut body = vec![0u8; length];
    c.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok((status, body))
}
