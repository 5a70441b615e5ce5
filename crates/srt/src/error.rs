//! The crate's one error: why an SRT URL or a stream id was not accepted.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtError {
    #[error("{0}")]
    Url(String),
    #[error("stream id: {0}")]
    StreamId(String),
}
