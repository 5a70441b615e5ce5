//! The crate's one error: why an audio bridge could not start or a frame could not be coded.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    /// libopus cannot be loaded here (the message says what to install).
    #[error("{0}")]
    Unavailable(String),
    /// A track the bridge does not take (channels, rate, AAC object type).
    #[error("{0}")]
    Unsupported(String),
    /// libopus, the AAC decoder or the resampler refused.
    #[error("{0}")]
    Codec(String),
    /// The stream's shared transcoded view could not be started.
    #[error("{0}")]
    Bridge(String),
}
