//! A user name or password as written in `authInternalUsers`: plain, `sha256:<base64>` (the
//! SHA-256 of the secret, base64) or `argon2:<PHC string>` (`$argon2id$v=19$m=…`), as
//! MediaMTX writes them.

use base64::Engine;

use crate::AccessError;
use tidegate_core::auth::same;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// The base64 of the SHA-256 of the secret.
    Sha256(String),
    /// A PHC string: `$argon2id$v=19$m=…,t=…,p=…$salt$hash`.
    Argon2(String),
}

impl Secret {
    /// Parses a configured value; an `argon2:` value must be a valid PHC string and a
    /// `sha256:` value valid base64 of 32 bytes.
    pub fn parse(s: &str) -> Result<Secret, AccessError> {
        Secret::read(s).map_err(AccessError::Secret)
    }

    fn read(s: &str) -> Result<Secret, String> {
        if let Some(h) = s.strip_prefix("sha256:") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(h)
                .map_err(|_| "a sha256: value must be base64".to_string())?;
            if raw.len() != 32 {
                return Err("a sha256: value must be the base64 of 32 bytes".into());
            }
            return Ok(Secret::Sha256(h.to_string()));
        }
        if let Some(h) = s.strip_prefix("argon2:") {
            let phc = argon2::PasswordHash::new(h)
                .map_err(|e| format!("an argon2: value must be a PHC string: {e}"))?;
            if !phc.algorithm.as_str().starts_with("argon2") || phc.hash.is_none() {
                return Err("an argon2: value must be a PHC string like $argon2id$v=19$m=…,t=…,p=…$salt$hash".into());
            }
            return Ok(Secret::Argon2(h.to_string()));
        }
        Ok(Secret::Plain(s.to_string()))
    }

    pub fn is_hashed(&self) -> bool {
        !matches!(self, Secret::Plain(_))
    }

    /// The plain value, if it is one.
    pub fn plain(&self) -> Option<&str> {
        match self {
            Secret::Plain(p) => Some(p),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Secret::Plain(p) if p.is_empty())
    }

    /// Whether `guess` is this secret. Constant time for plain and SHA-256; argon2 is slow by
    /// design (call it off the async threads).
    pub fn check(&self, guess: &str) -> bool {
        match self {
            Secret::Plain(p) => same(p, guess),
            Secret::Sha256(h) => {
                let d = base64::engine::general_purpose::STANDARD.encode(
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, guess.as_bytes()),
                );
                same(h, &d)
            }
            Secret::Argon2(phc) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(phc).is_ok_and(|hash| {
                    argon2::Argon2::default()
                        .verify_password(guess.as_bytes(), &hash)
                        .is_ok()
                })
            }
        }
    }

    /// Whether checking costs real CPU time (argon2).
    pub fn is_slow(&self) -> bool {
        matches!(self, Secret::Argon2(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sha256_and_argon2() {
        let p = Secret::parse("secret").unwrap();
        assert!(p.check("secret") && !p.check("secreT") && !p.check(""));
        // echo -n secret | openssl dgst -binary -sha256 | openssl base64
        let s = Secret::parse("sha256:K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=").unwrap();
        assert!(s.is_hashed());
        assert!(s.check("secret") && !s.check("Secret"));
        let a = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            argon2::Argon2::default()
                .hash_password(b"secret", &salt)
                .unwrap()
                .to_string()
        };
        let a = Secret::parse(&format!("argon2:{a}")).unwrap();
        assert!(a.check("secret") && !a.check("secret2"));
        assert!(Secret::parse("sha256:nope!").is_err());
        assert!(Secret::parse("sha256:AAAA").is_err());
        assert!(Secret::parse("argon2:$argon2id$broken").is_err());
    }
}
