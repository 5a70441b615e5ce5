//! The crate's one error: why a recording could not be read, cut or named.

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an fMP4 segment: {0}")]
    Format(&'static str),
    #[error("no recording in the asked window")]
    Nothing,
    #[error("recordPath must contain %path")]
    NoPath,
    #[error("recordPath must contain either %s or all of %Y %m %d %H %M %S")]
    NoTime,
}
