//! The RTMP handshake, server side: C0+C1 in, S0+S1+S2 out, C2 in.
//!
//! This is the plain handshake: S2 echoes C1, S1 carries zero version bytes, which tells
//! digest-capable clients (ffmpeg, librtmp/OBS, GStreamer) not to validate a server digest.

use bytes::{Buf, BufMut, BytesMut};

pub const HANDSHAKE_SIZE: usize = 1536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("RTMP version {0} is not supported (only 3; RTMPE/RTMPT are not)")]
    Version(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    C0C1,
    C2,
    Done,
}

pub struct Handshake {
    state: State,
    epoch: u32,
}

impl Handshake {
    /// `epoch` is the server's uptime in ms, written in S1.
    pub fn new(epoch: u32) -> Handshake {
        Handshake {
            state: State::C0C1,
            epoch,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes what it can from `input`, appending replies to `out`. Returns whether the
    /// handshake is complete (the rest of `input` is then chunk data).
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<bool, HandshakeError> {
        if self.state == State::C0C1 {
            if input.is_empty() {
                return Ok(false);
            }
            if input[0] != 3 {
                return Err(HandshakeError::Version(input[0]));
            }
            if input.len() < 1 + HANDSHAKE_SIZE {
                return Ok(false);
            }
            input.advance(1);
            let c1 = input.split_to(HANDSHAKE_SIZE);
            out.reserve(1 + 2 * HANDSHAKE_SIZE);
            out.put_u8(3);
            // S1: time, four zero bytes, then filler. The filler needs no secrecy in the plain
            // handshake; a cheap pattern derived from the client's bytes will do.
            out.put_u32(self.epoch);
            out.put_u32(0);
            for (i, b) in c1[8..].iter().enumerate() {
                out.put_u8(b ^ (i as u8).wrapping_mul(31) ^ 0x5a);
            }
            // S2: C1's time, our time, C1's random echo.
            out.put_slice(&c1[0..4]);
            out.put_u32(self.epoch);
            out.put_slice(&c1[8..]);
            self.state = State::C2;
        }
        if self.state == State::C2 {
            if input.len() < HANDSHAKE_SIZE {
                return Ok(false);
            }
            input.advance(HANDSHAKE_SIZE);
            self.state = State::Done;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_byte_by_byte() {
        let mut h = Handshake::new(7);
        let mut out = BytesMut::new();
        let mut c = vec![3u8];
        c.extend((0..HANDSHAKE_SIZE).map(|i| i as u8));
        c.extend(vec![9u8; HANDSHAKE_SIZE]);
        c.extend_from_slice(b"chunk");
        let mut input = BytesMut::new();
        let mut done = false;
        for b in c {
            input.put_u8(b);
            done = h.feed(&mut input, &mut out).unwrap();
            if done {
                break;
            }
        }
        assert!(done);
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(out[0], 3);
        assert_eq!(
            &out[1 + HANDSHAKE_SIZE + 8..],
            &(8..HANDSHAKE_SIZE).map(|i| i as u8).collect::<Vec<_>>()[..]
        );
        assert!(input.is_empty(), "leftover is chunk data, not yet fed");
    }

    #[test]
    fn other_versions_are_refused() {
        let mut h = Handshake::new(0);
        let mut input = BytesMut::from(&[6u8][..]);
        assert_eq!(
            h.feed(&mut input, &mut BytesMut::new()),
            Err(HandshakeError::Version(6))
        );
    }
}
