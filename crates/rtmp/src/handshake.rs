//! The RTMP handshake, server side: C0+C1 in, S0+S1+S2 out, C2 in.
//!
//! Two forms, chosen by what the client sends:
//! - **digest** (the Flash Player 9 handshake, sent by ffmpeg, librtmp/OBS and Flash-era
//!   encoders): C1 carries an HMAC-SHA256 digest at one of two positions. The server answers
//!   with its own digest in S1 and an S2 signed with a key derived from the client's digest;
//!   clients that check (ffmpeg when playing) verify both.
//! - **plain**: C1 has no valid digest (GStreamer, simple clients): S2 echoes C1 and S1 has
//!   zero version bytes, which tells clients not to look for a digest.

use crate::RtmpError;
use aws_lc_rs::hmac;
use bytes::{Buf, BufMut, BytesMut};

/// The public keys of the Flash handshake: "Genuine Adobe Flash Player 001" /
/// "Genuine Adobe Flash Media Server 001", each followed by the same 32 bytes.
const KEY_TAIL: [u8; 32] = [
    0xf0, 0xee, 0xc2, 0x4a, 0x80, 0x68, 0xbe, 0xe8, 0x2e, 0x00, 0xd0, 0xd1, 0x02, 0x9e, 0x7e, 0x57,
    0x6e, 0xec, 0x5d, 0x2d, 0x29, 0x80, 0x6f, 0xab, 0x93, 0xb8, 0xe6, 0x36, 0xcf, 0xeb, 0x31, 0xae,
];
const PLAYER: &[u8] = b"Genuine Adobe Flash Player 001";
const SERVER: &[u8] = b"Genuine Adobe Flash Media Server 001";
/// The version S1 announces in the digest form (as Flash Media Server 4.5 did).
const SERVER_VERSION: u32 = 0x0405_0001;

fn key(prefix: &[u8], full: bool) -> Vec<u8> {
    let mut k = prefix.to_vec();
    if full {
        k.extend_from_slice(&KEY_TAIL);
    }
    k
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Where the digest of a 1536-byte C1/S1 lies under `scheme` (0: offset bytes at 8, 1: at 772).
fn digest_pos(packet: &[u8], scheme: usize) -> usize {
    let base = if scheme == 0 { 8 } else { 772 };
    let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    sum % 728 + base + 4
}

fn digest_of(packet: &[u8], pos: usize, key: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[&packet[..pos], &packet[pos + 32..]])
}

/// The client's digest and its scheme, if C1 carries a valid one.
fn client_digest(c1: &[u8]) -> Option<(usize, [u8; 32])> {
    let k = key(PLAYER, false);
    (0..2).find_map(|scheme| {
        let pos = digest_pos(c1, scheme);
        let d = digest_of(c1, pos, &k);
        (d[..] == c1[pos..pos + 32]).then(|| {
            let mut out = [0u8; 32];
            out.copy_from_slice(&c1[pos..pos + 32]);
            (scheme, out)
        })
    })
}

pub const HANDSHAKE_SIZE: usize = 1536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    C0C1,
    C2,
    Done,
}

pub struct Handshake {
    state: State,
    epoch: u32,
    digest: bool,
}

impl Handshake {
    /// `epoch` is the server's uptime in ms, written in S1.
    pub fn new(epoch: u32) -> Handshake {
        Handshake {
            state: State::C0C1,
            epoch,
            digest: false,
        }
    }

    /// Whether the client used the digest (Flash Player 9) form.
    pub fn used_digest(&self) -> bool {
        self.digest
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes what it can from `input`, appending replies to `out`. Returns whether the
    /// handshake is complete (the rest of `input` is then chunk data).
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, RtmpError> {
        if self.state == State::C0C1 {
            if input.is_empty() {
                return Ok(false);
            }
            if input[0] != 3 {
                return Err(RtmpError::Version(input[0]));
            }
            if input.len() < 1 + HANDSHAKE_SIZE {
                return Ok(false);
            }
            input.advance(1);
            let c1 = input.split_to(HANDSHAKE_SIZE);
            out.reserve(1 + 2 * HANDSHAKE_SIZE);
            out.put_u8(3);
            // The random parts need no secrecy (the handshake authenticates nothing): a cheap
            // pattern derived from the client's bytes will do.
            let mut s1 = BytesMut::with_capacity(HANDSHAKE_SIZE);
            s1.put_u32(self.epoch);
            let digest = client_digest(&c1);
            self.digest = digest.is_some();
            s1.put_u32(if digest.is_some() { SERVER_VERSION } else { 0 });
            for (i, b) in c1[8..].iter().enumerate() {
                s1.put_u8(b ^ (i as u8).wrapping_mul(31) ^ 0x5a);
            }
            match digest {
                Some((scheme, client)) => {
                    let pos = digest_pos(&s1, scheme);
                    let d = digest_of(&s1, pos, &key(SERVER, false));
                    s1[pos..pos + 32].copy_from_slice(&d);
                    out.put_slice(&s1);
                    // S2: random, signed with a key derived from the client's digest.
                    let mut s2: Vec<u8> = c1.iter().map(|b| b.rotate_left(3)).collect();
                    let k = hmac_sha256(&key(SERVER, true), &[&client]);
                    let sig = hmac_sha256(&k, &[&s2[..HANDSHAKE_SIZE - 32]]);
                    s2[HANDSHAKE_SIZE - 32..].copy_from_slice(&sig);
                    out.put_slice(&s2);
                }
                None => {
                    out.put_slice(&s1);
                    // S2: C1's time, our time, C1's random echo.
                    out.put_slice(&c1[0..4]);
                    out.put_u32(self.epoch);
                    out.put_slice(&c1[8..]);
                }
            }
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

    /// A Flash-style client: C1 with a digest, then the checks ffmpeg makes on S1 and S2.
    #[test]
    fn digest_handshake_verifies_like_a_flash_client() {
        for scheme in 0..2 {
            let mut c1: Vec<u8> = (0..HANDSHAKE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
            c1[4..8].copy_from_slice(&[9, 0, 124, 2]); // client version, as ffmpeg sends
            let pos = digest_pos(&c1, scheme);
            let d = digest_of(&c1, pos, &key(PLAYER, false));
            c1[pos..pos + 32].copy_from_slice(&d);
            assert!(client_digest(&c1).is_some());

            let mut h = Handshake::new(1);
            let mut input = BytesMut::new();
            input.put_u8(3);
            input.put_slice(&c1);
            let mut out = BytesMut::new();
            h.feed(&mut input, &mut out).unwrap();
            let s1 = &out[1..1 + HANDSHAKE_SIZE];
            let s2 = &out[1 + HANDSHAKE_SIZE..];
            assert!(s1[4] >= 3, "a version ffmpeg checks");
            // The server digest in S1, with the server key.
            let spos = digest_pos(s1, scheme);
            assert_eq!(
                digest_of(s1, spos, &key(SERVER, false))[..],
                s1[spos..spos + 32]
            );
            // The S2 signature, with a key derived from the client's digest.
            let k = hmac_sha256(&key(SERVER, true), &[&c1[pos..pos + 32]]);
            let sig = hmac_sha256(&k, &[&s2[..HANDSHAKE_SIZE - 32]]);
            assert_eq!(&sig[..], &s2[HANDSHAKE_SIZE - 32..]);
        }
    }

    #[test]
    fn a_client_without_digest_gets_the_plain_handshake() {
        let mut h = Handshake::new(1);
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&[0u8; HANDSHAKE_SIZE]);
        let mut out = BytesMut::new();
        h.feed(&mut input, &mut out).unwrap();
        assert_eq!(&out[5..9], &[0, 0, 0, 0], "S1 version zero");
        assert_eq!(
            &out[1 + HANDSHAKE_SIZE + 8..],
            &[0u8; HANDSHAKE_SIZE - 8][..],
            "S2 echoes C1"
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let mut h = Handshake::new(0);
        let mut input = BytesMut::from(&[6u8][..]);
        assert_eq!(
            h.feed(&mut input, &mut BytesMut::new()),
            Err(RtmpError::Version(6))
        );
    }
}
