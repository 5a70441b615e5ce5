//! The path registry driven through its public API, as a protocol crate would.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate_core::{
    CodecParams, CoreError, Frame, PathConf, PathEventKind, PathManager, PathMatcher, RecvError,
    SessionInfo, StreamConfig, StreamDesc, Track,
};

fn manager(paths: Vec<PathConf>) -> PathManager {
    PathManager::new(PathMatcher::new(paths).unwrap(), StreamConfig::default())
}

fn conf(name: &str) -> PathConf {
    PathConf {
        name: name.into(),
        ..PathConf::default()
    }
}

fn session(m: &PathManager, kind: &'static str) -> SessionInfo {
    SessionInfo {
        id: m.new_session_id(),
        kind,
        remote: Some("127.0.0.1:5000".parse().unwrap()),
        query: String::new(),
    }
}

fn desc() -> StreamDesc {
    StreamDesc {
        tracks: vec![
            Track {
                id: 0,
                params: CodecParams::H264 {
                    sps: Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1e]),
                    pps: Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]),
                },
                clock_rate: 90_000,
            },
            Track {
                id: 1,
                params: CodecParams::Aac {
                    config: Bytes::from_static(&[0x11, 0x90]),
                },
                clock_rate: 48_000,
            },
        ],
    }
}

fn frame(track: u32, n: i64, keyframe: bool) -> Frame {
    Frame {
        track,
        pts: n,
        dts: n,
        keyframe,
        data: Bytes::from_static(b"0123456789"),
        received: Instant::now(),
        params: None,
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("within 5 s")
}

#[tokio::test]
async fn publish_read_and_unregister_on_drop() {
    let m = manager(vec![conf("all_others")]);
    let mut events = m.events();
    let mut publisher = m.publish("live/a", session(&m, "rtmpConn")).unwrap();
    // Reserved but not ready: nobody can read yet.
    assert!(matches!(
        m.read("live/a", session(&m, "rtmpConn")),
        Err(CoreError::NoOnePublishing(_))
    ));
    let stream = publisher.start(desc());
    assert_eq!(
        within(events.recv()).await.unwrap().kind,
        PathEventKind::Ready
    );

    stream.write(frame(0, 0, true));
    stream.write(frame(1, 0, true));
    let mut reader = m.read("live/a", session(&m, "hlsMuxer")).unwrap();
    assert_eq!(
        within(events.recv()).await.unwrap().kind,
        PathEventKind::ReaderAdded
    );
    let first = within(reader.recv()).await.unwrap();
    assert!(first.keyframe && first.track == 0);
    reader.add_bytes_sent(10);

    let info = m.get("live/a").unwrap();
    assert!(info.ready);
    assert_eq!(info.conf_name, "all_others");
    assert_eq!(info.tracks, vec!["H264", "MPEG-4 Audio"]);
    assert_eq!(info.bytes_received, 20);
    assert_eq!(info.bytes_sent, 10);
    assert_eq!(info.readers.len(), 1);
    assert_eq!(info.source.unwrap().0, "rtmpConn");

    // The publisher vanishes: the reader ends promptly, the path is free again.
    drop(publisher);
    assert_eq!(
        within(events.recv()).await.unwrap().kind,
        PathEventKind::NotReady
    );
    assert!(
        within(reader.recv()).await.is_ok(),
        "the audio frame still in the ring"
    );
    assert_eq!(within(reader.recv()).await.unwrap_err(), RecvError::Closed);
    drop(reader);
    assert_eq!(
        within(events.recv()).await.unwrap().kind,
        PathEventKind::ReaderRemoved
    );
    assert!(m.get("live/a").is_none(), "an idle dynamic path disappears");
    let again = m.publish("live/a", session(&m, "rtmpConn"));
    assert!(again.is_ok());
}

#[tokio::test]
async fn second_publisher_is_refused() {
    let m = manager(vec![conf("cam")]);
    let _first = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    assert!(matches!(
        m.publish("cam", session(&m, "srtConn")),
        Err(CoreError::Busy(_))
    ));
}

#[tokio::test]
async fn override_publisher_replaces_and_kicks_the_old_one() {
    let m = manager(vec![PathConf {
        override_publisher: true,
        ..conf("cam")
    }]);
    let mut first = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    let old_stream = first.start(desc());
    let mut reader = m.read("cam", session(&m, "rtspSession")).unwrap();
    let kicked = first.kicked();
    let mut second = m.publish("cam", session(&m, "srtConn")).unwrap();
    within(kicked.cancelled()).await;
    assert!(old_stream.is_closed());
    assert_eq!(within(reader.recv()).await.unwrap_err(), RecvError::Closed);
    // The old session ending later does not free the new publisher's path.
    drop(first);
    let new_stream = second.start(desc());
    assert_eq!(m.get("cam").unwrap().source.unwrap().0, "srtConn");
    let mut r2 = m.read("cam", session(&m, "rtspSession")).unwrap();
    new_stream.write(frame(0, 1, true));
    assert_eq!(within(r2.recv()).await.unwrap().pts, 1);
}

#[tokio::test]
async fn unconfigured_and_invalid_paths_are_refused() {
    let m = manager(vec![conf(r"~^cam(\d+)$")]);
    assert!(matches!(
        m.publish("other", session(&m, "rtmpConn")),
        Err(CoreError::NotConfigured(_))
    ));
    assert!(matches!(
        m.publish("../etc", session(&m, "rtmpConn")),
        Err(CoreError::InvalidName(_))
    ));
    let found = m.find("cam7").unwrap();
    assert_eq!(found.captures, vec!["cam7", "7"]);
}

#[tokio::test]
async fn source_paths_refuse_publishers() {
    let m = manager(vec![PathConf {
        source: "rtsp://camera/stream".into(),
        ..conf("cam")
    }]);
    assert!(matches!(
        m.publish("cam", session(&m, "rtmpConn")),
        Err(CoreError::NotPublishable(_))
    ));
    assert!(m.publish_source("cam", session(&m, "rtspSource")).is_ok());
}

#[tokio::test]
async fn max_readers_is_enforced() {
    let m = manager(vec![PathConf {
        max_readers: 2,
        ..conf("cam")
    }]);
    let mut p = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    p.start(desc());
    let r1 = m.read("cam", session(&m, "rtmpConn")).unwrap();
    let _r2 = m.read("cam", session(&m, "rtmpConn")).unwrap();
    assert!(matches!(
        m.read("cam", session(&m, "rtmpConn")),
        Err(CoreError::TooManyReaders(_, 2))
    ));
    drop(r1);
    assert!(m.read("cam", session(&m, "rtmpConn")).is_ok());
}

#[tokio::test]
async fn configured_paths_are_listed_before_anyone_publishes() {
    let m = manager(vec![conf("cam"), conf("all_others")]);
    let list = m.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "cam");
    assert!(!list[0].ready);
}

#[tokio::test]
async fn api_kick_cancels_the_publisher() {
    let m = manager(vec![conf("cam")]);
    let p = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    let token = p.kicked();
    assert!(!m.kick_publisher("cam", Some(p.session().id + 1000)));
    assert!(m.kick_publisher("cam", Some(p.session().id)));
    within(token.cancelled()).await;
}

#[tokio::test]
async fn many_readers_share_one_frame_allocation() {
    let m = manager(vec![conf("cam")]);
    let mut p = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    let stream = p.start(desc());
    let mut readers: Vec<_> = (0..50)
        .map(|_| m.read("cam", session(&m, "rtmpConn")).unwrap())
        .collect();
    stream.write(frame(0, 0, true));
    let mut first: Option<Arc<Frame>> = None;
    for r in &mut readers {
        let f = within(r.recv()).await.unwrap();
        if let Some(prev) = &first {
            assert!(
                Arc::ptr_eq(prev, &f),
                "every reader gets the same frame, not a copy"
            );
        }
        first = Some(f);
    }
}

fn graced(name: &str) -> PathConf {
    PathConf {
        publisher_reconnect_grace: Duration::from_secs(5),
        ..conf(name)
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_publisher_within_the_grace_continues_the_readers_stream() {
    let m = manager(vec![graced("cam")]);
    let mut events = m.events();
    let mut first = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    let stream = first.start(desc());
    let mut reader = m.read("cam", session(&m, "rtmpConn")).unwrap();
    stream.write(frame(0, 90_000, true));
    stream.write(frame(1, 48_000, true));
    assert_eq!(within(reader.recv()).await.unwrap().dts, 90_000);
    assert_eq!(within(reader.recv()).await.unwrap().dts, 48_000);
    drop(first);
    // The path is not ready (hooks and webhooks say unpublish), the reader waits.
    assert!(!m.get("cam").unwrap().ready);
    assert_eq!(m.get("cam").unwrap().readers.len(), 1);
    assert!(!stream.is_closed());
    tokio::time::advance(Duration::from_secs(2)).await;

    // A new publisher, timestamps from zero again, 2 s later (frames say when they came).
    let mut second = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    let again = second.start(desc());
    assert!(Arc::ptr_eq(&again, &stream), "the same stream goes on");
    let later = |f: Frame| Frame {
        received: f.received + Duration::from_secs(2),
        ..f
    };
    again.write(later(frame(1, 0, true))); // before its first video keyframe: dropped
    again.write(later(frame(0, 0, false))); // not a keyframe: dropped
    again.write(later(frame(0, 3000, true)));
    again.write(later(frame(1, 1600, true)));
    let v = within(reader.recv()).await.unwrap();
    assert!(v.keyframe && v.track == 0);
    // After the old last frame (1 s), plus the 2 s nobody published, plus a margin.
    assert!(v.dts > 3 * 90_000 && v.dts < 4 * 90_000, "{}", v.dts);
    assert!(v.params.is_some(), "the first frame carries the parameters");
    let a = within(reader.recv()).await.unwrap();
    assert_eq!(a.track, 1);
    assert!(a.dts > 48_000 && a.params.is_some());
    // The events: ready, not ready, ready again.
    let kinds: Vec<PathEventKind> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| e.kind)
        .filter(|k| matches!(k, PathEventKind::Ready | PathEventKind::NotReady))
        .collect();
    assert_eq!(
        kinds,
        [
            PathEventKind::Ready,
            PathEventKind::NotReady,
            PathEventKind::Ready
        ]
    );
    // Received bytes (6 frames of 10, the 2 dropped ones too) are not counted twice.
    assert_eq!(m.get("cam").unwrap().bytes_received, 60);
}

#[tokio::test(start_paused = true)]
async fn past_the_grace_or_with_other_tracks_the_readers_end() {
    let m = manager(vec![graced("cam"), graced("cam2")]);
    let mut p = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    let stream = p.start(desc());
    let mut reader = m.read("cam", session(&m, "rtmpConn")).unwrap();
    drop(p);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(!stream.is_closed());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(within(reader.recv()).await.unwrap_err(), RecvError::Closed);
    drop(reader);
    let info = m.get("cam").unwrap();
    assert!(!info.ready && info.readers.is_empty() && info.source.is_none());

    let mut p = m.publish("cam2", session(&m, "rtmpConn")).unwrap();
    let stream = p.start(desc());
    let mut reader = m.read("cam2", session(&m, "rtmpConn")).unwrap();
    drop(p);
    let mut p = m.publish("cam2", session(&m, "srtConn")).unwrap();
    let mut other = desc();
    other.tracks.truncate(1);
    let new = p.start(other);
    assert!(!Arc::ptr_eq(&new, &stream));
    assert!(stream.is_closed());
    assert_eq!(within(reader.recv()).await.unwrap_err(), RecvError::Closed);
}

#[tokio::test]
async fn without_readers_or_grace_nothing_is_kept() {
    let m = manager(vec![graced("cam"), conf("plain")]);
    let mut p = m.publish("cam", session(&m, "rtmpConn")).unwrap();
    let stream = p.start(desc());
    drop(p);
    assert!(stream.is_closed(), "no reader: nothing to keep");
    let mut p = m.publish("plain", session(&m, "rtmpConn")).unwrap();
    let stream = p.start(desc());
    let _r = m.read("plain", session(&m, "rtmpConn")).unwrap();
    drop(p);
    assert!(stream.is_closed(), "no grace: the reader ends at once");
}
