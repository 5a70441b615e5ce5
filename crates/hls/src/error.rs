//! The crate's one error: why a playlist Tidegate pulls (`source: http(s)://…m3u8`) was not
//! usable.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlsError {
    #[error("playlist: {0}")]
    Playlist(String),
}
