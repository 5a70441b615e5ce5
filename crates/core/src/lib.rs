//! Tidegate's core: the codec-agnostic packet model every protocol converts to and from, the
//! path registry that decides who may publish and read where, and the stream fan-out that
//! carries one publisher's frames to any number of readers.
//!
//! A protocol crate only ever talks to this crate:
//!
//! 1. it asks the [`PathManager`] for a [`Publisher`] (which reserves the path), then calls
//!    [`Publisher::start`] with the tracks once it knows them and writes [`Frame`]s into the
//!    returned [`Stream`];
//! 2. or it asks for a [`Reader`], which yields frames starting at a keyframe.
//!
//! Both handles unregister when dropped, so a session that ends for any reason frees its path.

pub mod auth;
pub mod conns;
pub mod dump;
pub mod fanout;
pub mod guard;
pub mod handover;
pub mod latency;
pub mod media;
pub mod path;
pub mod prefixed;
pub mod proxy_protocol;
pub mod registry;
pub mod relay;
pub mod stream;
pub mod text;
pub mod tls;
pub mod transcode;
pub mod udp;
pub mod udp_batch;

pub use auth::{
    Action, AuthError, AuthFuture, AuthRequest, Authenticator, Credentials, Grant, PathRules, Proof,
};
/// Re-exported so that protocol crates and tests share one `Bytes`.
pub use bytes::Bytes;
pub use conns::{
    ConnEvent, ConnEventKind, ConnGuard, ConnInfo, ConnRegistry, ConnState, PullFigures,
    ReaderFigures, ReaderProbe, SinkCounted,
};
pub use fanout::{
    Attached, Egress, EgressReader, Muxer, SharedTcp, SharedTls, Sink, SinkIo, SinkLimits,
    SinkStatus, Transport, Writable,
};
pub use media::{
    rescale, Carriage, Codec, CodecParams, Frame, G711Law, StreamDesc, Track, TrackId,
};
pub use path::{
    ForwardDest, HookConf, OfflineTrack, PathConf, PathMatch, PathMatcher, PathNameError,
    RecordConf,
};
pub use registry::{
    CoreError, Fallback, PathEvent, PathEventKind, PathInfo, PathManager, Publisher, Reader,
    SessionId, SessionInfo,
};
pub use stream::{RecvError, Stream, StreamConfig, StreamReader, StreamStats};
pub use transcode::{Plan, TrackTranscoder, Transcoded};
