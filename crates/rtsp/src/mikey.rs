//! MIKEY (RFC 3830) as RTSPS uses it to hand out SRTP keys (RFC 4567: `a=key-mgmt:mikey` in
//! SDP, the `KeyMgmt` header in SETUP): a pre-shared-key message whose key payload is not
//! encrypted, because the RTSP connection carrying it is TLS. This is what GStreamer,
//! MediaMTX and Axis cameras exchange.
//!
//! [`build`] makes the message for one SRTP master key (key and salt, 30 bytes, as a TEK:
//! GStreamer reads the key data as key and salt together); [`parse`] reads such a message
//! from a peer, with the salt in the key data or in its own field.

use crate::RtspError;
use base64::Engine;

/// A MIKEY message larger than this is refused before it is parsed.
pub const MAX_LEN: usize = 4096;

// Payload types (RFC 3830, 6.1).
const PT_LAST: u8 = 0;
const PT_KEMAC: u8 = 1;
const PT_T: u8 = 5;
const PT_SP: u8 = 10;
const PT_RAND: u8 = 11;
const PT_GENERAL_EXT: u8 = 21;

/// One crypto session of the SRTP-ID map: a source and the rollover counter its packets
/// carry (RFC 3830, 6.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoSession {
    pub ssrc: u32,
    pub roc: u32,
}

/// A message carrying `master` (16-byte key then 14-byte salt), with an SRTP policy of
/// AES-CM-128, HMAC-SHA1, 80-bit tags, and RTP and RTCP both encrypted and authenticated.
pub fn build(master: &[u8; tidegate_rtp::srtp::MASTER_LEN]) -> Vec<u8> {
    build_with_sessions(master, &[])
}

/// As [`build`], listing `sessions` (at most 255) in the SRTP-ID map: a receiver joining a
/// stream applies each ROC to the first packet of its SSRC (GStreamer does).
pub fn build_with_sessions(
    master: &[u8; tidegate_rtp::srtp::MASTER_LEN],
    sessions: &[CryptoSession],
) -> Vec<u8> {
    let sessions = &sessions[..sessions.len().min(255)];
    let mut m = Vec::with_capacity(128 + 9 * sessions.len());
    // Common header: version 1, PSK init, next T, no verification, PRF MIKEY-1, random CSB
    // ID, the crypto sessions, SRTP-ID map: policy 0, SSRC, ROC each.
    m.extend_from_slice(&[1, 0, PT_T, 0]);
    m.extend_from_slice(&(tidegate_core::text::random_u64() as u32).to_be_bytes());
    m.extend_from_slice(&[sessions.len() as u8, 0]);
    for cs in sessions {
        m.push(0);
        m.extend_from_slice(&cs.ssrc.to_be_bytes());
        m.extend_from_slice(&cs.roc.to_be_bytes());
    }
    // T: NTP-UTC now.
    m.extend_from_slice(&[PT_RAND, 0]);
    m.extend_from_slice(&ntp_now().to_be_bytes());
    // RAND: 16 bytes.
    m.extend_from_slice(&[PT_SP, 16]);
    m.extend_from_slice(&tidegate_core::text::random_u64().to_be_bytes());
    m.extend_from_slice(&tidegate_core::text::random_u64().to_be_bytes());
    // SP: policy 0, SRTP.
    let params: &[(u8, u8)] = &[
        (0, 1),   // encryption: AES-CM
        (1, 16),  // session encryption key length
        (2, 1),   // authentication: HMAC-SHA-1
        (3, 20),  // session authentication key length
        (4, 14),  // session salt length
        (7, 1),   // SRTP encryption on
        (8, 1),   // SRTCP encryption on
        (10, 1),  // SRTP authentication on
        (11, 10), // authentication tag length
    ];
    m.extend_from_slice(&[PT_KEMAC, 0, 0]);
    m.extend_from_slice(&((params.len() * 3) as u16).to_be_bytes());
    for (t, v) in params {
        m.extend_from_slice(&[*t, 1, *v]);
    }
    // KEMAC: no encryption, no MAC; one key data sub-payload: a TEK, no validity.
    let mut key = vec![PT_LAST, 2 << 4];
    key.extend_from_slice(&(master.len() as u16).to_be_bytes());
    key.extend_from_slice(master);
    m.extend_from_slice(&[PT_LAST, 0]);
    m.extend_from_slice(&(key.len() as u16).to_be_bytes());
    m.extend_from_slice(&key);
    m.push(0); // MAC algorithm: none
    m
}

/// `build` in base64, as `a=key-mgmt:mikey` and `KeyMgmt` carry it.
pub fn build_base64(master: &[u8; tidegate_rtp::srtp::MASTER_LEN]) -> String {
    base64::engine::general_purpose::STANDARD.encode(build(master))
}

fn ntp_now() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() + 2_208_988_800;
    (secs << 32) | ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RtspError> {
        if self.0.len() < n {
            return Err(RtspError::MikeyTruncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, RtspError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, RtspError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// The SRTP master key (key then salt) of a MIKEY message.
pub fn parse(data: &[u8]) -> Result<[u8; tidegate_rtp::srtp::MASTER_LEN], RtspError> {
    parse_with_sessions(data).map(|(key, _)| key)
}

/// A MIKEY message's key and its SRTP-ID map.
#[allow(clippy::type_complexity)]
pub fn parse_with_sessions(
    data: &[u8],
) -> Result<([u8; tidegate_rtp::srtp::MASTER_LEN], Vec<CryptoSession>), RtspError> {
    if data.len() > MAX_LEN {
        return Err(RtspError::MikeyTooLong);
    }
    let mut c = Cursor(data);
    let version = c.u8()?;
    let data_type = c.u8()?;
    let mut next = c.u8()?;
    c.take(1 + 4)?; // V/PRF, CSB ID
    let n_cs = usize::from(c.u8()?);
    let map_type = c.u8()?;
    if version != 1 {
        return Err(RtspError::MikeyUnsupported("version"));
    }
    if data_type != 0 && data_type != 1 {
        return Err(RtspError::MikeyUnsupported(
            "only pre-shared-key messages are read",
        ));
    }
    if map_type != 0 {
        return Err(RtspError::MikeyUnsupported("crypto session map"));
    }
    let mut sessions = Vec::with_capacity(n_cs);
    for _ in 0..n_cs {
        let cs = c.take(9)?; // policy, SSRC, ROC
        sessions.push(CryptoSession {
            ssrc: u32::from_be_bytes([cs[1], cs[2], cs[3], cs[4]]),
            roc: u32::from_be_bytes([cs[5], cs[6], cs[7], cs[8]]),
        });
    }
    let mut key = None;
    while next != PT_LAST {
        let this = next;
        next = c.u8()?;
        match this {
            PT_T => {
                let len = match c.u8()? {
                    0 | 1 => 8,
                    2 => 4,
                    _ => return Err(RtspError::MikeyUnsupported("timestamp type")),
                };
                c.take(len)?;
            }
            PT_RAND => {
                let len = usize::from(c.u8()?);
                c.take(len)?;
            }
            PT_SP => {
                c.take(2)?; // policy number, protocol
                let len = c.u16()?;
                c.take(len)?;
            }
            PT_GENERAL_EXT => {
                c.take(1)?;
                let len = c.u16()?;
                c.take(len)?;
            }
            PT_KEMAC => {
                let enc = c.u8()?;
                let len = c.u16()?;
                let body = c.take(len)?;
                let mac = c.u8()?;
                if enc != 0 || mac != 0 {
                    return Err(RtspError::MikeyUnsupported(
                        "encrypted or MACed key payload",
                    ));
                }
                key = Some(key_data(body)?);
            }
            _ => return Err(RtspError::MikeyUnsupported("payload type")),
        }
    }
    let key = key.ok_or(RtspError::MikeyUnsupported("no key payload"))?;
    Ok((key, sessions))
}

/// The first key data sub-payload of a KEMAC: key, plus its salt when separate.
fn key_data(body: &[u8]) -> Result<[u8; tidegate_rtp::srtp::MASTER_LEN], RtspError> {
    let mut c = Cursor(body);
    let _next = c.u8()?;
    let type_kv = c.u8()?;
    let (kind, kv) = (type_kv >> 4, type_kv & 0x0f);
    let len = c.u16()?;
    let mut key = c.take(len)?.to_vec();
    // TGK+SALT (1) and TEK+SALT (3) carry the salt in its own field.
    if kind == 1 || kind == 3 {
        let len = c.u16()?;
        key.extend_from_slice(c.take(len)?);
    }
    if kv > 2 {
        return Err(RtspError::MikeyUnsupported("key validity type"));
    }
    key.as_slice()
        .try_into()
        .map_err(|_| RtspError::MikeyKeyLength(key.len()))
}

/// The key of a base64 MIKEY message (`a=key-mgmt:mikey <b64>`, or `KeyMgmt`'s `data=`).
pub fn parse_base64(b64: &str) -> Result<[u8; tidegate_rtp::srtp::MASTER_LEN], RtspError> {
    parse_base64_with_sessions(b64).map(|(key, _)| key)
}

/// The key and SRTP-ID map of a base64 MIKEY message.
#[allow(clippy::type_complexity)]
pub fn parse_base64_with_sessions(
    b64: &str,
) -> Result<([u8; tidegate_rtp::srtp::MASTER_LEN], Vec<CryptoSession>), RtspError> {
    let b64 = b64.trim().trim_matches('"');
    if b64.len() > MAX_LEN * 4 / 3 + 4 {
        return Err(RtspError::MikeyTooLong);
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| RtspError::MikeyBase64)?;
    parse_with_sessions(&data)
}

/// The `data=` of a `KeyMgmt` header (`prot=mikey; uri="…"; data="…"`), if it is MIKEY.
pub fn key_mgmt_header_data(h: &str) -> Option<&str> {
    let mut mikey = false;
    let mut data = None;
    for part in h.split(';').map(str::trim) {
        if part.eq_ignore_ascii_case("prot=mikey") {
            mikey = true;
        } else if let Some(d) = part.strip_prefix("data=") {
            data = Some(d.trim_matches('"'));
        }
    }
    data.filter(|_| mikey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_we_build_parses_back() {
        let master: [u8; 30] = std::array::from_fn(|i| i as u8);
        assert_eq!(parse(&build(&master)), Ok(master));
        assert_eq!(parse_base64(&build_base64(&master)), Ok(master));
    }

    #[test]
    fn a_separate_salt_is_joined_to_the_key() {
        let mut m = build(&[0; 30]);
        // Rewrite the key sub-payload as TEK+SALT: 16 bytes of key, 14 of salt.
        let kemac = m.len() - 1 - (4 + 30) - 4;
        m.truncate(kemac);
        let mut sub = vec![0, 3 << 4, 0, 16];
        sub.extend_from_slice(&[1; 16]);
        sub.extend_from_slice(&[0, 14]);
        sub.extend_from_slice(&[2; 14]);
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&(sub.len() as u16).to_be_bytes());
        m.extend_from_slice(&sub);
        m.push(0);
        let key = parse(&m).unwrap();
        assert_eq!(&key[..16], &[1; 16]);
        assert_eq!(&key[16..], &[2; 14]);
    }

    #[test]
    fn bad_messages_are_refused_not_panicked_on() {
        let good = build(&[5; 30]);
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "a message cut at {n} bytes");
        }
        assert_eq!(parse(&vec![1; MAX_LEN + 1]), Err(RtspError::MikeyTooLong));
        assert_eq!(parse_base64("%%%"), Err(RtspError::MikeyBase64));
        let mut encrypted = good.clone();
        let kemac_enc = encrypted.len() - 1 - (4 + 30) - 2 - 1;
        encrypted[kemac_enc] = 1;
        assert!(matches!(
            parse(&encrypted),
            Err(RtspError::MikeyUnsupported(_))
        ));
    }

    #[test]
    fn key_mgmt_headers() {
        assert_eq!(
            key_mgmt_header_data(r#"prot=mikey; uri="rtsps://h/p/trackID=0"; data="AQID""#),
            Some("AQID")
        );
        assert_eq!(key_mgmt_header_data("prot=other; data=AQID"), None);
    }

    #[test]
    fn crypto_sessions_round_trip() {
        let key = [3u8; tidegate_rtp::srtp::MASTER_LEN];
        let cs = [
            CryptoSession {
                ssrc: 0x1234_5678,
                roc: 2,
            },
            CryptoSession { ssrc: 9, roc: 0 },
        ];
        let (k, got) = parse_with_sessions(&build_with_sessions(&key, &cs)).unwrap();
        assert_eq!((k, got.as_slice()), (key, &cs[..]));
        assert!(parse_with_sessions(&build(&key)).unwrap().1.is_empty());
    }
}
