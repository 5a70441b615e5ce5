//! The crate's one error: why a stream key, a token or a configured credential was not
//! accepted, or why the authority could not be asked. Said to the client and the log; it
//! never holds the secret itself. (`AccessError`, not `AuthError`: that name is tidegate-core's
//! refusal, which every protocol matches to choose 401 or 403; this crate's errors become one
//! of its variants in `lib.rs`.)

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("unknown stream key")]
    Unknown,
    #[error("the stream key is for another path or action")]
    OtherPath,
    #[error("the stream key was revoked")]
    Revoked,
    #[error("the stream key is not valid yet")]
    NotYet,
    #[error("the stream key has expired")]
    Expired,
    #[error("the stream key has been used its maximum number of times")]
    UsedUp,
    #[error("the stream key may not be used from {0}")]
    Address(IpAddr),
    #[error("key store: {0}")]
    Store(String),
    #[error("{0}")]
    Invalid(String),
    /// The JWKS could not be had: nothing could be checked.
    #[error("{0}")]
    JwksUnavailable(String),
    /// The token is not valid, or not for this.
    #[error("{0}")]
    TokenRefused(String),
    /// A permission (`{action, path}`) that cannot be used.
    #[error("{0}")]
    Permission(String),
    /// A configured user or password (`sha256:`, `argon2:`) that cannot be used.
    #[error("{0}")]
    Secret(String),
}
