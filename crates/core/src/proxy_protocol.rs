//! The PROXY protocol (HAProxy's; v1 text and v2 binary): a load balancer or proxy in front
//! of a TCP listener (`rtspTrustedProxies`, `rtmpTrustedProxies`) opens each connection with
//! a header naming the client it relays. Only connections from a trusted proxy are read for
//! one, and they must carry it (a trusted address without a header is refused: it would
//! otherwise let anyone behind the proxy look like the proxy).
//!
//! Exactly the header is read (v1 byte by byte up to its CRLF, at most 107 bytes; v2 its
//! 16-byte head and the length it states, at most 512 bytes), so what follows is the
//! protocol's own first bytes.

use std::net::{IpAddr, SocketAddr};

use crate::CoreError;
use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
const V2_MAX: usize = 512;

/// Whether `ip` is one of the trusted proxies.
pub fn trusted(proxies: &[ipnet::IpNet], ip: IpAddr) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// Reads the PROXY header: the client's address, or None when the proxy speaks for itself
/// (v1 `UNKNOWN`, v2 `LOCAL`).
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<SocketAddr>, CoreError> {
    header(s).await.map_err(CoreError::ProxyHeader)
}

async fn header<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<SocketAddr>, String> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.map_err(|e| format!("{e}"))?;
    match first[0] {
        b'P' => {
            let mut line = vec![b'P'];
            while !line.ends_with(b"\r\n") {
                if line.len() >= V1_MAX {
                    return Err("v1 line over 107 bytes".into());
                }
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.map_err(|e| format!("{e}"))?;
                line.push(b[0]);
            }
            v1(&line)
        }
        b'\r' => {
            let mut head = [0u8; 16];
            head[0] = b'\r';
            s.read_exact(&mut head[1..])
                .await
                .map_err(|e| format!("{e}"))?;
            let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
            if len > V2_MAX {
                return Err(format!("v2 length {len} over {V2_MAX}"));
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.map_err(|e| format!("{e}"))?;
            v2(&head, &body)
        }
        _ => Err("a trusted proxy's connection without a PROXY header".into()),
    }
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n` (or `TCP6`, or `UNKNOWN …`).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, CoreError> {
    v1(line).map_err(CoreError::ProxyHeader)
}

fn v1(line: &[u8]) -> Result<Option<SocketAddr>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not text")?;
    let parts: Vec<&str> = text.trim_end_matches("\r\n").split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| "bad source address")?;
            let port: u16 = sport.parse().map_err(|_| "bad source port")?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(format!("not understood: {text:?}")),
    }
}

/// A v2 header: its 16-byte head and the address block.
pub fn parse_v2(head: &[u8; 16], body: &[u8]) -> Result<Option<SocketAddr>, CoreError> {
    v2(head, body).map_err(CoreError::ProxyHeader)
}

fn v2(head: &[u8; 16], body: &[u8]) -> Result<Option<SocketAddr>, String> {
    if &head[..12] != V2_SIGNATURE {
        return Err("bad v2 signature".into());
    }
    if head[12] >> 4 != 2 {
        return Err("not version 2".into());
    }
    match head[12] & 0x0f {
        0 => return Ok(None), // LOCAL: the proxy's own connection (health checks)
        1 => {}
        c => return Err(format!("command {c}")),
    }
    match head[13] >> 4 {
        1 if body.len() >= 12 => {
            let ip = IpAddr::from([body[0], body[1], body[2], body[3]]);
            Ok(Some(SocketAddr::new(
                ip,
                u16::from_be_bytes([body[8], body[9]]),
            )))
        }
        2 if body.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::from(a),
                u16::from_be_bytes([body[32], body[33]]),
            )))
        }
        0 => Ok(None), // AF_UNSPEC
        _ => Err("address block too short or family unknown".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_leave_the_rest() {
        let mut data: &[u8] = b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 1935\r\n\x03rest";
        let a = read_header(&mut data).await.unwrap();
        assert_eq!(a, Some("203.0.113.7:4242".parse().unwrap()));
        assert_eq!(data, b"\x03rest");

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x1f, 0x90, 0x07, 0x8f,
        ]);
        v2.extend_from_slice(b"RTSP");
        let mut data: &[u8] = &v2;
        let a = read_header(&mut data).await.unwrap();
        assert_eq!(a, Some("198.51.100.9:8080".parse().unwrap()));
        assert_eq!(data, b"RTSP");

        let mut data: &[u8] = b"PROXY UNKNOWN\r\n";
        assert_eq!(read_header(&mut data).await.unwrap(), None);
        let mut data: &[u8] = b"\x03\x00";
        assert!(read_header(&mut data).await.is_err());
        let long = [b'P'; 200];
        let mut data: &[u8] = &long;
        assert!(read_header(&mut data).await.is_err());
        assert!(parse_v1(b"PROXY TCP4 nothing 1 2 3\r\n").is_err());
    }
}
