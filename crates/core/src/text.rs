//! Small helpers every protocol needs for URLs and identifiers.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Percent-decodes a URL component; with `plus_as_space`, `+` is a space (query strings of
/// HTML forms and players). Invalid escapes are kept as they are; invalid UTF-8 is replaced.
pub fn percent_decode(v: &str, plus_as_space: bool) -> String {
    let b = v.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h << 4) | l);
                i += 3;
            }
            (b'+', _, _) if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a URL query component: everything but unreserved characters (RFC 3986)
/// and `/`.
pub fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An unpredictable 64-bit value (SipHash keyed from the OS's randomness by the standard
/// library, over a process-wide counter and the time): for session ids, nonces, SSRCs and
/// file-name prefixes. Not for key material.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(now);
    h.finish()
}

/// A random (version 4) UUID in its text form, for the ids MediaMTX's API gives as UUIDs.
pub fn uuid_v4() -> String {
    let (a, b) = (random_u64(), random_u64());
    let a = (a & !0xf000) | 0x4000; // version 4
    let b = (b & !(0xc000 << 48)) | (0x8000 << 48); // variant 10
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// `n` hex digits from the operating system's CSPRNG (aws-lc-rs's `rand::fill`): for anything a
/// client could abuse by guessing (ICE passwords, WHIP/WHEP resource ids, RTSP session ids).
pub fn secret_hex(n: usize) -> String {
    let mut raw = vec![0u8; n.div_ceil(2)];
    if aws_lc_rs::rand::fill(&mut raw).is_err() {
        // Never seen on a working Linux: fall back to SipHash keyed from the OS's randomness,
        // and say so.
        tracing::error!("the operating system's random number generator failed");
        for chunk in raw.chunks_mut(8) {
            let r = random_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
    let mut s: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n);
    s
}

/// CORS: the `Access-Control-Allow-Origin` value for a request's `Origin` under an allow list
/// (`*allowOrigins`): `*` when the list has `*`; the origin itself when it matches an entry
/// exactly or through one wildcard (`https://*.example.com`); none otherwise.
pub fn allowed_origin<'a>(allowed: &[String], origin: Option<&'a str>) -> Option<&'a str> {
    if allowed.iter().any(|a| a == "*") {
        return Some("*");
    }
    let origin = origin?;
    allowed
        .iter()
        .any(|a| origin_matches(a, origin))
        .then_some(origin)
}

/// One allow-list entry against an origin; `*` stands for any run of characters, once.
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => {
            origin.len() >= head.len() + tail.len()
                && origin.starts_with(head)
                && origin.ends_with(tail)
        }
        None => pattern == origin,
    }
}

/// A Go duration as MediaMTX writes them (`300ms`, `1.5m`, `2h45m`; units `ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`, `d`); None for a bare number (its unit would be a guess), anything
/// else, or more than 10^9 s. The configuration's durations and `rtspRangeStart` alike.
pub fn go_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return None;
    }
    Some(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_hex_is_hex_of_the_length_asked_and_differs() {
        let a = secret_hex(32);
        let b = secret_hex(32);
        assert_eq!(a.len(), 32);
        assert_eq!(secret_hex(7).len(), 7);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn decoding_and_randomness() {
        assert_eq!(percent_decode("a%20b+c%2", true), "a b c%2");
        assert_eq!(percent_decode("%23!::r=a+b", false), "#!::r=a+b");
        assert_eq!(percent_decode("%zz%", false), "%zz%");
        let (a, b) = (random_u64(), random_u64());
        assert_ne!(a, b);
    }

    #[test]
    fn uuids_and_origins() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36, "{u}");
        assert_eq!(&u[14..15], "4", "{u}");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(uuid_v4(), u);
        let list = vec!["https://*.example.com".to_string()];
        assert_eq!(
            allowed_origin(&list, Some("https://a.example.com")),
            Some("https://a.example.com")
        );
        assert_eq!(allowed_origin(&list, Some("https://evil.com")), None);
        assert_eq!(allowed_origin(&list, None), None);
        assert_eq!(allowed_origin(&["*".to_string()], None), Some("*"));
    }

    #[test]
    fn go_durations_read() {
        let d = |s| go_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(d("300ms"), Some(0.3));
        assert_eq!(d("1.5m"), Some(90.0));
        assert_eq!(d("2h45m"), Some(9900.0));
        assert_eq!(d("10s"), Some(10.0));
        assert_eq!(d("0"), Some(0.0));
        assert_eq!(d("10"), None);
        assert_eq!(d("5x"), None);
        assert_eq!(d(""), None);
        assert_eq!(d("999999999h"), None);
    }
}
