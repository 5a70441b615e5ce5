//! SRTP and SRTCP (RFC 3711) with the one suite RTSP cameras and clients use:
//! `AES_CM_128_HMAC_SHA1_80` (AES-128 in counter mode, HMAC-SHA1 tags of 80 bits), no MKI,
//! key derivation rate 0. Keys come from MIKEY in RTSPS (see the RTSP crate).
//!
//! A [`Context`] holds the session keys of one master key and the rollover counter of each
//! SSRC it has seen, for one direction: [`Context::protect_rtp`] / [`Context::protect_rtcp`]
//! on the sending side, [`Context::unprotect_rtp`] / [`Context::unprotect_rtcp`] on the
//! receiving side (these check the tag first and refuse a forged or replayed packet).
//!
//! Our own implementation: the crates that exist are tied to a WebRTC stack (webrtc-srtp) or
//! to libsrtp through C bindings; this is 200 lines over aws-lc-rs's AES-CTR and HMAC (the
//! workspace's one crypto provider, docs/design.md).

use std::collections::HashMap;

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
use aws_lc_rs::hmac;

use crate::RtpError;

/// Master key plus master salt, as MIKEY and libsrtp carry them.
pub const MASTER_LEN: usize = 30;
const KEY_LEN: usize = 16;
const SALT_LEN: usize = 14;
const AUTH_KEY_LEN: usize = 20;
/// The HMAC-SHA1-80 tag.
pub const TAG_LEN: usize = 10;
/// At most this many SSRCs are tracked per context (a peer cannot grow it without bound).
const MAX_SSRCS: usize = 64;
/// Packets this far behind the newest are refused as replays (RFC 3711's minimum window).
const REPLAY_WINDOW: u64 = 64;

/// A fresh master key and salt from the operating system's CSPRNG (None if it failed).
pub fn random_master() -> Option<[u8; MASTER_LEN]> {
    let mut k = [0u8; MASTER_LEN];
    aws_lc_rs::rand::fill(&mut k).ok()?;
    Some(k)
}

/// AES-128 in counter mode with `key` (16 bytes: it cannot fail).
fn aes_cm(key: &[u8; KEY_LEN]) -> EncryptingKey {
    UnboundCipherKey::new(&AES_128, key)
        .and_then(EncryptingKey::ctr)
        .unwrap_or_else(|_| unreachable!("a 16-byte AES-128 key"))
}

/// Applies `key`'s AES-CM keystream from counter block `iv` to `data` (encrypts or decrypts).
fn apply(key: &EncryptingKey, iv: [u8; 16], data: &mut [u8]) -> Result<(), RtpError> {
    key.less_safe_encrypt(data, EncryptionContext::Iv128(iv.into()))
        .map(|_| ())
        .map_err(|_| RtpError::SrtpCipher)
}

struct Keys {
    enc: EncryptingKey,
    salt: [u8; SALT_LEN],
    auth: hmac::Key,
}

/// One of RFC 3711's key derivations (section 4.3.1, rate 0): AES-CM of the master key over
/// the master salt with `label` in its eighth byte.
fn derive(master: &[u8; MASTER_LEN], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..SALT_LEN].copy_from_slice(&master[KEY_LEN..]);
    iv[7] ^= label;
    out.fill(0);
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&master[..KEY_LEN]);
    apply(&aes_cm(&key), iv, out).unwrap_or_else(|_| unreachable!("AES-CM over a few bytes"));
}

impl Keys {
    fn new(master: &[u8; MASTER_LEN], first_label: u8) -> Keys {
        let (mut enc, mut salt, mut auth) = ([0u8; KEY_LEN], [0u8; SALT_LEN], [0u8; AUTH_KEY_LEN]);
        derive(master, first_label, &mut enc);
        derive(master, first_label + 1, &mut auth);
        derive(master, first_label + 2, &mut salt);
        Keys {
            enc: aes_cm(&enc),
            salt,
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
        }
    }

    /// Applies the AES-CM keystream of (ssrc, index) to `data` (encrypts or decrypts).
    fn crypt(&self, ssrc: u32, index: u64, data: &mut [u8]) -> Result<(), RtpError> {
        let mut iv = [0u8; 16];
        iv[..SALT_LEN].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        apply(&self.enc, iv, data)
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.auth);
        for p in parts {
            ctx.update(p);
        }
        let full = ctx.sign();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        t
    }
}

/// Per-SSRC state: the RTP rollover counter and highest sequence number (RFC 3711 3.3.1),
/// the SRTCP index, and the replay windows.
#[derive(Default, Clone, Copy)]
struct SsrcState {
    started: bool,
    /// Before the first packet: the rollover counter it carries (MIKEY's, else 0).
    first_roc: u32,
    roc: u32,
    s_l: u16,
    rtp_seen: u64,
    rtcp_index: u32,
    rtcp_max: Option<u32>,
    rtcp_seen: u64,
}

impl SsrcState {
    /// The packet index guessed from `seq` (Appendix A).
    fn guess(&self, seq: u16) -> u64 {
        if !self.started {
            return u64::from(self.first_roc) << 16 | u64::from(seq);
        }
        let roc = i64::from(self.roc);
        let v = if self.s_l < 32768 {
            if i64::from(seq) - i64::from(self.s_l) > 32768 {
                roc - 1
            } else {
                roc
            }
        } else if i64::from(self.s_l) - 32768 > i64::from(seq) {
            roc + 1
        } else {
            roc
        };
        (v.max(0) as u64) << 16 | u64::from(seq)
    }

    fn newest(&self) -> u64 {
        u64::from(self.roc) << 16 | u64::from(self.s_l)
    }

    /// Refuses an index at or behind the window's packets already seen.
    fn check_replay(&self, index: u64) -> Result<(), RtpError> {
        if !self.started || index > self.newest() {
            return Ok(());
        }
        let back = self.newest() - index;
        if back >= REPLAY_WINDOW || self.rtp_seen & (1 << back) != 0 {
            return Err(RtpError::SrtpReplay);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if !self.started || index > self.newest() {
            let shift = if self.started {
                index - self.newest()
            } else {
                REPLAY_WINDOW
            };
            self.rtp_seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.rtp_seen << shift
            } | 1;
            self.roc = (index >> 16) as u32;
            self.s_l = index as u16;
            self.started = true;
        } else {
            self.rtp_seen |= 1 << (self.newest() - index);
        }
    }
}

/// The SRTP state of one direction of one session.
pub struct Context {
    rtp: Keys,
    rtcp: Keys,
    ssrcs: HashMap<u32, SsrcState>,
}

/// Where an RTP packet's payload starts (after CSRCs and the header extension).
fn rtp_header_len(p: &[u8]) -> Result<usize, RtpError> {
    if p.len() < 12 {
        return Err(RtpError::SrtpTruncated);
    }
    let mut n = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let ext = p.get(n + 2..n + 4).ok_or(RtpError::SrtpTruncated)?;
        n += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if n > p.len() {
        return Err(RtpError::SrtpTruncated);
    }
    Ok(n)
}

impl Context {
    /// `master` is the 16-byte master key followed by the 14-byte master salt.
    pub fn new(master: &[u8; MASTER_LEN]) -> Context {
        Context {
            rtp: Keys::new(master, 0),
            rtcp: Keys::new(master, 3),
            ssrcs: HashMap::new(),
        }
    }

    fn state(&mut self, ssrc: u32) -> Result<&mut SsrcState, RtpError> {
        if !self.ssrcs.contains_key(&ssrc) && self.ssrcs.len() >= MAX_SSRCS {
            return Err(RtpError::SrtpTooManySsrcs);
        }
        Ok(self.ssrcs.entry(ssrc).or_default())
    }

    /// The rollover counter of `ssrc`'s first packet, as a key exchange gives it (MIKEY's
    /// SRTP-ID map): for a receiver joining a stream that has already wrapped its sequence
    /// numbers. Ignored once a packet of `ssrc` went through.
    pub fn set_roc(&mut self, ssrc: u32, roc: u32) -> Result<(), RtpError> {
        let st = self.state(ssrc)?;
        if !st.started {
            st.first_roc = roc;
        }
        Ok(())
    }

    /// The rollover counter of the newest packet of `ssrc` seen or sent, if any.
    pub fn roc(&self, ssrc: u32) -> Option<u32> {
        self.ssrcs.get(&ssrc).filter(|s| s.started).map(|s| s.roc)
    }

    /// Encrypts and tags an RTP packet. The rollover counter of its SSRC starts at 0 with the
    /// first packet this context protects, as a receiver that was given no ROC assumes.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, RtpError> {
        let head = rtp_header_len(packet)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let st = self.state(ssrc)?;
        let index = st.guess(seq);
        st.accept(index);
        let roc = (index >> 16) as u32;
        let mut out = Vec::with_capacity(packet.len() + TAG_LEN);
        out.extend_from_slice(packet);
        self.rtp.crypt(ssrc, index, &mut out[head..])?;
        let tag = self.rtp.tag(&[&out, &roc.to_be_bytes()]);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Checks the tag of an SRTP packet, refuses replays, and decrypts it.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, RtpError> {
        if packet.len() < 12 + TAG_LEN {
            return Err(RtpError::SrtpTruncated);
        }
        let (body, tag) = packet.split_at(packet.len() - TAG_LEN);
        let head = rtp_header_len(body)?;
        let seq = u16::from_be_bytes([body[2], body[3]]);
        let ssrc = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
        let st = *self.state(ssrc)?;
        let index = st.guess(seq);
        st.check_replay(index)?;
        let roc = (index >> 16) as u32;
        let want = self.rtp.tag(&[body, &roc.to_be_bytes()]);
        if !constant_time_eq(&want, tag) {
            return Err(RtpError::SrtpAuth);
        }
        let mut out = body.to_vec();
        self.rtp.crypt(ssrc, index, &mut out[head..])?;
        self.state(ssrc)?.accept(index);
        Ok(out)
    }

    /// Encrypts and tags a compound RTCP packet (SRTCP, E flag set).
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, RtpError> {
        if packet.len() < 8 {
            return Err(RtpError::SrtpTruncated);
        }
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let st = self.state(ssrc)?;
        let index = st.rtcp_index & 0x7fff_ffff;
        st.rtcp_index = st.rtcp_index.wrapping_add(1);
        let mut out = Vec::with_capacity(packet.len() + 4 + TAG_LEN);
        out.extend_from_slice(packet);
        self.rtcp.crypt(ssrc, u64::from(index), &mut out[8..])?;
        out.extend_from_slice(&(0x8000_0000 | index).to_be_bytes());
        let tag = self.rtcp.tag(&[&out]);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Checks and decrypts an SRTCP packet.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, RtpError> {
        if packet.len() < 8 + 4 + TAG_LEN {
            return Err(RtpError::SrtpTruncated);
        }
        let (body, tag) = packet.split_at(packet.len() - TAG_LEN);
        let want = self.rtcp.tag(&[body]);
        if !constant_time_eq(&want, tag) {
            return Err(RtpError::SrtpAuth);
        }
        let (rtcp, e_index) = body.split_at(body.len() - 4);
        let e_index = u32::from_be_bytes([e_index[0], e_index[1], e_index[2], e_index[3]]);
        let index = e_index & 0x7fff_ffff;
        let ssrc = u32::from_be_bytes([rtcp[4], rtcp[5], rtcp[6], rtcp[7]]);
        let st = self.state(ssrc)?;
        match st.rtcp_max {
            Some(max) if index <= max => {
                let back = u64::from(max - index);
                if back >= REPLAY_WINDOW || st.rtcp_seen & (1 << back) != 0 {
                    return Err(RtpError::SrtpReplay);
                }
                st.rtcp_seen |= 1 << back;
            }
            Some(max) => {
                let shift = u64::from(index - max);
                st.rtcp_seen = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    st.rtcp_seen << shift
                } | 1;
                st.rtcp_max = Some(index);
            }
            None => {
                st.rtcp_seen = 1;
                st.rtcp_max = Some(index);
            }
        }
        let mut out = rtcp.to_vec();
        if e_index & 0x8000_0000 != 0 {
            self.rtcp.crypt(ssrc, u64::from(index), &mut out[8..])?;
        }
        Ok(out)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3711 B.2's AES-CM keystream (the blocks it shares with NIST SP 800-38A F.5.1): the
    /// session salt F0F1..FCFD, SSRC 0, index 0, so that block n is counter F0F1..FCFD|n.
    #[test]
    fn the_keystream_is_rfc_3711_b2s() {
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C"));
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"));
        let keys = Keys {
            enc: aes_cm(&key),
            salt,
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &[0u8; AUTH_KEY_LEN]),
        };
        let mut stream = vec![0u8; 0xff02 * 16];
        keys.crypt(0, 0, &mut stream).unwrap();
        let block = |n: usize| &stream[n * 16..n * 16 + 16];
        assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711, appendix B.3: the session keys derived from a master key and salt.
    #[test]
    fn key_derivation_matches_rfc_3711() {
        let mut master = [0u8; MASTER_LEN];
        master[..16].copy_from_slice(&hex("E1F97A0D3E018BE0D64FA32C06DE4139"));
        master[16..].copy_from_slice(&hex("0EC675AD498AFEEBB6960B3AABE6"));
        let mut out = [0u8; 16];
        derive(&master, 0, &mut out);
        assert_eq!(out.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&master, 2, &mut salt);
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(&master, 1, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn rtp_round_trips_across_a_sequence_wrap_and_refuses_forgeries_and_replays() {
        let master = [7u8; MASTER_LEN];
        let (mut tx, mut rx) = (Context::new(&master), Context::new(&master));
        let mut seq = 65530u16;
        for i in 0..20u8 {
            let plain = rtp(seq, &[i; 100]);
            let sealed = tx.protect_rtp(&plain).unwrap();
            assert_eq!(sealed.len(), plain.len() + TAG_LEN);
            assert_eq!(&sealed[..12], &plain[..12], "the header stays clear");
            assert_ne!(&sealed[12..112], &plain[12..], "the payload is encrypted");
            let mut forged = sealed.clone();
            forged[20] ^= 1;
            assert_eq!(rx.unprotect_rtp(&forged), Err(RtpError::SrtpAuth));
            assert_eq!(rx.unprotect_rtp(&sealed).unwrap(), plain);
            assert_eq!(rx.unprotect_rtp(&sealed), Err(RtpError::SrtpReplay));
            seq = seq.wrapping_add(1);
        }
        assert_eq!(
            tx.ssrcs[&0xdead_beef].roc, 1,
            "the sender's ROC followed the wrap"
        );
        assert_eq!(rx.ssrcs[&0xdead_beef].roc, 1);
    }

    #[test]
    fn rtcp_round_trips_and_a_wrong_key_is_refused() {
        let (mut tx, mut rx) = (
            Context::new(&[1; MASTER_LEN]),
            Context::new(&[1; MASTER_LEN]),
        );
        let mut sr = vec![0x80, 200, 0, 6];
        sr.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        sr.extend_from_slice(&[9u8; 20]);
        for _ in 0..3 {
            let sealed = tx.protect_rtcp(&sr).unwrap();
            assert_eq!(sealed.len(), sr.len() + 4 + TAG_LEN);
            assert_eq!(rx.unprotect_rtcp(&sealed).unwrap(), sr);
            assert_eq!(rx.unprotect_rtcp(&sealed), Err(RtpError::SrtpReplay));
        }
        let sealed = tx.protect_rtcp(&sr).unwrap();
        let mut other = Context::new(&[2; MASTER_LEN]);
        assert_eq!(other.unprotect_rtcp(&sealed), Err(RtpError::SrtpAuth));
        assert_eq!(other.unprotect_rtp(&[0u8; 5]), Err(RtpError::SrtpTruncated));
    }

    #[test]
    fn a_receiver_told_the_roc_joins_after_a_wrap() {
        let master = [7u8; MASTER_LEN];
        let mut tx = Context::new(&master);
        let pkt = |seq: u16| {
            let mut p = vec![0x80, 96];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 9]);
            p.extend_from_slice(b"payload");
            p
        };
        tx.protect_rtp(&pkt(65535)).unwrap();
        let wrapped = tx.protect_rtp(&pkt(3)).unwrap();
        assert_eq!(tx.roc(9), Some(1));
        // Told nothing, a receiver assumes ROC 0 and the tag fails.
        assert_eq!(
            Context::new(&master).unprotect_rtp(&wrapped),
            Err(RtpError::SrtpAuth)
        );
        let mut rx = Context::new(&master);
        rx.set_roc(9, 1).unwrap();
        assert_eq!(rx.unprotect_rtp(&wrapped).unwrap(), pkt(3));
        assert_eq!(rx.roc(9), Some(1));
    }
}
