//! RTSP over WebSocket (`rtsp+ws://`, `rtsps+ws://`): the ONVIF Streaming Specification's
//! tunnel, which MediaMTX (gortsplib) and browser players of ONVIF cameras speak. The client
//! opens a WebSocket (RFC 6455) with the subprotocol `rtsp.onvif.org` on the RTSP port; from
//! then on the RTSP byte stream (requests, responses, interleaved RTP/RTCP) travels in binary
//! messages, cut anywhere.
//!
//! Written here rather than taken from tungstenite: the whole of what RTSP needs is a
//! handshake and binary framing (this module), and the connection must stay a
//! [`Transport`] that the RTSP session reads and writes like any other. Limits: a frame's
//! payload is at most 1 MiB (larger ones close the connection); control frames at most 125
//! bytes, as the RFC says; pings are answered.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::RtspError;
use base64::Engine;
use tidegate_core::Transport;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The subprotocol of RTSP over WebSocket (ONVIF Streaming Specification).
pub const SUBPROTOCOL: &str = "rtsp.onvif.org";
/// The largest frame payload taken.
pub const MAX_PAYLOAD: usize = 1 << 20;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use aws_lc_rs::digest;
    let mut h = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finish())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Whether an HTTP request head asks for a WebSocket.
pub fn is_upgrade(head: &str) -> bool {
    header(head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The server's answer to a WebSocket request head, or why it is refused.
pub fn handshake_answer(head: &str) -> Result<String, RtspError> {
    answer(head).map_err(RtspError::WsHandshake)
}

fn answer(head: &str) -> Result<String, String> {
    let key = header(head, "sec-websocket-key").ok_or("no Sec-WebSocket-Key")?;
    if key.len() > 64 {
        return Err("Sec-WebSocket-Key too long".into());
    }
    let protocol = header(head, "sec-websocket-protocol")
        .map(|p| p.split(',').any(|x| x.trim() == SUBPROTOCOL))
        .unwrap_or(false);
    let mut a = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if protocol {
        a.push_str(&format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"));
    }
    a.push_str("\r\n");
    Ok(a)
}

/// One frame, encoded (masked with `mask` when the client sends it).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// What a frame said.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Payload of a binary (or continuation) frame.
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close,
}

/// Takes frames apart from bytes as they come.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// The server's side: every frame must be masked.
    pub expect_masked: bool,
}

impl Decoder {
    pub fn new(expect_masked: bool) -> Decoder {
        Decoder {
            buf: Vec::new(),
            expect_masked,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if its bytes are all here.
    pub fn poll(&mut self) -> Result<Option<Frame>, RtspError> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        if rsv != 0 {
            return Err(RtspError::WsOpcode(b[0]));
        }
        let masked = b[1] & 0x80 != 0;
        if self.expect_masked && !masked {
            return Err(RtspError::WsUnmasked);
        }
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if len > MAX_PAYLOAD as u64 {
            return Err(RtspError::WsTooLarge(len));
        }
        let control = opcode & 0x08 != 0;
        if control && (len > 125 || !fin) {
            return Err(RtspError::WsControl);
        }
        let key = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let k = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(k)
        } else {
            None
        };
        let len = len as usize;
        if b.len() < at + len {
            return Ok(None);
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(k) = key {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= k[i % 4];
            }
        }
        self.buf.drain(..at + len);
        match opcode {
            0x0 | 0x2 => Ok(Some(Frame::Data(payload))),
            0x1 => Err(RtspError::WsText),
            0x8 => Ok(Some(Frame::Close)),
            0x9 => Ok(Some(Frame::Ping(payload))),
            0xa => Ok(Some(Frame::Pong)),
            other => Err(RtspError::WsOpcode(other)),
        }
    }
}

/// A WebSocket connection as a byte stream: what is read is the binary messages' payload,
/// each write leaves as one binary message (masked from the client's side).
pub struct WsStream<S> {
    inner: S,
    decoder: Decoder,
    client: bool,
    /// Decoded payload not read yet.
    data: Vec<u8>,
    at: usize,
    /// An encoded frame being written, and the payload length to report when it is out.
    out: Vec<u8>,
    out_at: usize,
    out_len: usize,
    /// Pongs owed (written before the next frame).
    pong: Vec<u8>,
    closed: bool,
}

impl<S> WsStream<S> {
    /// `client`: our side opened it (frames we send are masked; frames we get are not).
    /// `rest`: bytes read past the handshake.
    pub fn new(inner: S, client: bool, rest: &[u8]) -> WsStream<S> {
        let mut decoder = Decoder::new(!client);
        decoder.feed(rest);
        WsStream {
            inner,
            decoder,
            client,
            data: Vec::new(),
            at: 0,
            out: Vec::new(),
            out_at: 0,
            out_len: 0,
            pong: Vec::new(),
            closed: false,
        }
    }

    fn mask(&self) -> Option<[u8; 4]> {
        self.client.then(|| {
            let r = tidegate_core::text::secret_hex(4);
            let b = r.as_bytes();
            [b[0], b[1], b[2], b[3]]
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.at < self.data.len() {
                let n = (self.data.len() - self.at).min(buf.remaining());
                let at = self.at;
                buf.put_slice(&self.data[at..at + n]);
                self.at += n;
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match self.decoder.poll() {
                Err(e) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e,
                    )))
                }
                Ok(Some(Frame::Data(d))) => {
                    self.data = d;
                    self.at = 0;
                    continue;
                }
                Ok(Some(Frame::Ping(p))) => {
                    let mask = self.mask();
                    let pong = encode(0xa, &p, mask);
                    // At most one pong owed (a flood of pings is answered once).
                    self.pong = pong;
                    continue;
                }
                Ok(Some(Frame::Pong)) => continue,
                Ok(Some(Frame::Close)) => {
                    self.closed = true;
                    continue;
                }
                Ok(None) => {}
            }
            let mut chunk = [0u8; 16 << 10];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.closed = true;
                        continue;
                    }
                    let filled = rb.filled().to_vec();
                    self.decoder.feed(&filled);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Writes what is in `out` until it is all on the inner stream.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.out_at < self.out.len() {
            let at = self.out_at;
            match Pin::new(&mut self.inner).poll_write(cx, &self.out[at..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => self.out_at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    /// Each call's bytes leave as one message; the call returns once the whole frame is
    /// written (a call after `Pending` goes on with the same frame, as `write_all` retries).
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.out_at >= self.out.len() {
            let mask = self.mask();
            let mut out = std::mem::take(&mut self.pong);
            let len = buf.len().min(MAX_PAYLOAD);
            out.extend_from_slice(&encode(0x2, &buf[..len], mask));
            self.out = out;
            self.out_at = 0;
            self.out_len = len;
        }
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(self.out_len)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

/// Written through its framing: the engine may not write to the socket under it.
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsStream<S> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key_is_accepted() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let head = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Protocol: rtsp.onvif.org\r\n\r\n";
        assert!(is_upgrade(head));
        let a = handshake_answer(head).unwrap();
        assert!(a.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") && a.contains(SUBPROTOCOL));
        assert!(handshake_answer("GET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn frames_go_both_ways_whole_or_cut_anywhere() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = encode(2, &payload, Some([1, 2, 3, 4]));
            let mut d = Decoder::new(true);
            for b in wire.chunks(7) {
                assert_eq!(d.poll(), Ok(None));
                d.feed(b);
            }
            assert_eq!(d.poll(), Ok(Some(Frame::Data(payload))));
        }
        let mut d = Decoder::new(true);
        d.feed(&encode(2, b"x", None));
        assert_eq!(d.poll(), Err(RtspError::WsUnmasked));
        let mut d = Decoder::new(false);
        d.feed(&[0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0]);
        assert_eq!(d.poll(), Err(RtspError::WsTooLarge(0x1000_0000)));
        let mut d = Decoder::new(false);
        d.feed(&encode(1, b"text", None));
        assert_eq!(d.poll(), Err(RtspError::WsText));
        let mut d = Decoder::new(false);
        d.feed(&encode(9, b"hi", None));
        d.feed(&encode(8, b"", None));
        assert_eq!(d.poll(), Ok(Some(Frame::Ping(b"hi".to_vec()))));
        assert_eq!(d.poll(), Ok(Some(Frame::Close)));
    }

    #[tokio::test]
    async fn a_stream_carries_bytes_over_frames() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64);
        let mut client = WsStream::new(a, true, b"");
        let mut server = WsStream::new(b, false, b"");
        let t = tokio::spawn(async move {
            client
                .write_all(b"OPTIONS rtsp://x/ RTSP/1.0\r\n")
                .await
                .unwrap();
            client.write_all(&[7u8; 1000]).await.unwrap();
            drop(client);
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        t.await.unwrap();
        assert_eq!(got.len(), 28 + 1000);
        assert!(got.starts_with(b"OPTIONS"));
    }
}
