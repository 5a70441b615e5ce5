//! Basic and Digest (MD5 as in RFC 2617, SHA-256 as in RFC 7616) credentials as cameras and
//! NVRs send them.

use base64::Engine;
use md5::{Digest, Md5};

pub const REALM: &str = "tidegate";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given {
    None,
    Basic { user: String, pass: String },
    Digest(DigestFields),
}

/// What a Digest `Authorization` header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFields {
    pub user: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// `MD5` (also when absent) or `SHA-256`.
    pub algorithm: String,
}

/// `rtspAuthMethods`: which schemes the server challenges with and accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Methods {
    pub basic: bool,
    pub digest: bool,
}

impl Default for Methods {
    fn default() -> Self {
        Methods {
            basic: true,
            digest: true,
        }
    }
}

/// The `WWW-Authenticate` values of a 401, strongest first (RFC 7616 §3.7: SHA-256 before MD5).
pub fn challenges(methods: Methods, nonce: &str) -> Vec<String> {
    let mut out = Vec::new();
    if methods.digest {
        out.push(format!(
            "Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=SHA-256"
        ));
        out.push(format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\""));
    }
    if methods.basic {
        out.push(format!("Basic realm=\"{REALM}\""));
    }
    out
}

fn unquote(v: &str) -> String {
    v.trim().trim_matches('"').to_string()
}

pub fn parse(header: Option<&str>) -> Given {
    let Some(h) = header else { return Given::None };
    if let Some(b) = h.strip_prefix("Basic ") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
            return Given::None;
        };
        let s = String::from_utf8_lossy(&raw).into_owned();
        return match s.split_once(':') {
            Some((u, p)) => Given::Basic {
                user: u.into(),
                pass: p.into(),
            },
            None => Given::None,
        };
    }
    if let Some(d) = h.strip_prefix("Digest ") {
        let f = |k: &str| {
            d.split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case(k))
                .map(|(_, v)| unquote(v))
                .unwrap_or_default()
        };
        return Given::Digest(DigestFields {
            user: f("username"),
            realm: f("realm"),
            nonce: f("nonce"),
            uri: f("uri"),
            response: f("response"),
            algorithm: f("algorithm"),
        });
    }
    Given::None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

fn sha256_hex(s: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes()).as_ref())
}

/// Whether a Digest response proves knowledge of `pass`.
pub fn digest_ok(method: &str, pass: &str, d: &DigestFields) -> bool {
    let DigestFields {
        user,
        realm,
        nonce,
        uri,
        response,
        algorithm,
    } = d;
    let h: fn(&str) -> String = if algorithm.is_empty() || algorithm.eq_ignore_ascii_case("MD5") {
        md5_hex
    } else if algorithm.eq_ignore_ascii_case("SHA-256") {
        sha256_hex
    } else {
        return false;
    };
    let ha1 = h(&format!("{user}:{realm}:{pass}"));
    let ha2 = h(&format!("{method}:{uri}"));
    let expect = h(&format!("{ha1}:{nonce}:{ha2}"));
    // Constant time over equal lengths.
    expect.len() == response.len()
        && expect
            .bytes()
            .zip(response.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0
}

/// A client's `Authorization` for a request, answering one of the `WWW-Authenticate`
/// `challenges` of a 401: Digest (SHA-256, then MD5) before Basic. None when no scheme is known.
pub fn authorization(
    challenges: &[&str],
    method: &str,
    uri: &str,
    user: &str,
    pass: &str,
) -> Option<String> {
    let digests: Vec<&str> = challenges
        .iter()
        .filter_map(|c| c.trim().strip_prefix("Digest "))
        .collect();
    let field = |d: &str, k: &str| {
        d.split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(k))
            .map(|(_, v)| unquote(v))
            .unwrap_or_default()
    };
    let pick = digests
        .iter()
        .find(|d| field(d, "algorithm").eq_ignore_ascii_case("SHA-256"))
        .or_else(|| {
            digests.iter().find(|d| {
                let a = field(d, "algorithm");
                a.is_empty() || a.eq_ignore_ascii_case("MD5")
            })
        });
    if let Some(d) = pick {
        let (realm, nonce, algorithm) =
            (field(d, "realm"), field(d, "nonce"), field(d, "algorithm"));
        let h: fn(&str) -> String = if algorithm.eq_ignore_ascii_case("SHA-256") {
            sha256_hex
        } else {
            md5_hex
        };
        let ha1 = h(&format!("{user}:{realm}:{pass}"));
        let ha2 = h(&format!("{method}:{uri}"));
        let response = h(&format!("{ha1}:{nonce}:{ha2}"));
        let alg = if algorithm.is_empty() {
            String::new()
        } else {
            format!(", algorithm={algorithm}")
        };
        return Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\"{alg}"
        ));
    }
    challenges
        .iter()
        .any(|c| c.trim().starts_with("Basic"))
        .then(|| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            format!("Basic {token}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_answers_our_own_challenges() {
        for (methods, scheme) in [
            (Methods::default(), "Digest"),
            (
                Methods {
                    basic: true,
                    digest: false,
                },
                "Basic",
            ),
        ] {
            let ch = challenges(methods, "n0nce");
            let refs: Vec<&str> = ch.iter().map(String::as_str).collect();
            let a = authorization(&refs, "DESCRIBE", "rtsp://h/cam", "bob", "pw").unwrap();
            assert!(a.starts_with(scheme), "{a}");
            match parse(Some(&a)) {
                Given::Digest(d) => {
                    assert_eq!(d.algorithm, "SHA-256");
                    assert!(digest_ok("DESCRIBE", "pw", &d));
                    assert!(!digest_ok("DESCRIBE", "other", &d));
                }
                Given::Basic { user, pass } => {
                    assert_eq!((user.as_str(), pass.as_str()), ("bob", "pw"))
                }
                Given::None => panic!("{a}"),
            }
        }
        assert_eq!(
            authorization(&["Bearer x"], "DESCRIBE", "u", "a", "b"),
            None
        );
    }

    #[test]
    fn rfc2617_style_digest_and_basic() {
        // The response a client computes for user/pass over DESCRIBE.
        let ha1 = md5_hex("bob:tidegate:pw");
        let ha2 = md5_hex("DESCRIBE:rtsp://h/cam");
        let resp = md5_hex(&format!("{ha1}:abc:{ha2}"));
        let h = format!("Digest username=\"bob\", realm=\"tidegate\", nonce=\"abc\", uri=\"rtsp://h/cam\", response=\"{resp}\"");
        match parse(Some(&h)) {
            Given::Digest(d) => {
                assert!(digest_ok("DESCRIBE", "pw", &d));
                assert!(!digest_ok("DESCRIBE", "nope", &d));
            }
            other => panic!("{other:?}"),
        }
        // RFC 7616 with SHA-256.
        let ha1 = sha256_hex("bob:tidegate:pw");
        let ha2 = sha256_hex("DESCRIBE:rtsp://h/cam");
        let resp = sha256_hex(&format!("{ha1}:abc:{ha2}"));
        let h = format!("Digest username=\"bob\", realm=\"tidegate\", nonce=\"abc\", uri=\"rtsp://h/cam\", response=\"{resp}\", algorithm=SHA-256");
        match parse(Some(&h)) {
            Given::Digest(d) => {
                assert_eq!(d.algorithm, "SHA-256");
                assert!(digest_ok("DESCRIBE", "pw", &d));
                assert!(!digest_ok("DESCRIBE", "nope", &d));
                // The same response claimed as MD5 fails; unknown algorithms fail.
                let md5 = DigestFields {
                    algorithm: "MD5".into(),
                    ..d.clone()
                };
                assert!(!digest_ok("DESCRIBE", "pw", &md5));
                let other = DigestFields {
                    algorithm: "SHA-512-256".into(),
                    ..d
                };
                assert!(!digest_ok("DESCRIBE", "pw", &other));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            challenges(
                Methods {
                    basic: false,
                    digest: true
                },
                "n"
            ),
            vec![
                "Digest realm=\"tidegate\", nonce=\"n\", algorithm=SHA-256".to_string(),
                "Digest realm=\"tidegate\", nonce=\"n\"".to_string()
            ]
        );
        assert_eq!(
            challenges(
                Methods {
                    basic: true,
                    digest: false
                },
                "n"
            )
            .len(),
            1
        );
        assert_eq!(
            parse(Some("Basic Ym9iOnB3")),
            Given::Basic {
                user: "bob".into(),
                pass: "pw".into()
            }
        );
        assert_eq!(parse(Some("Bearer x")), Given::None);
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
