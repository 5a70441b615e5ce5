//! HLS sessions, MediaMTX's `/v3/hlssessions`: one per viewer of a path, for the API.
//!
//! HTTP has no connection a viewer keeps, so a session is recognised by what its requests
//! share: the path, the client's address, the user it authenticated as and its `User-Agent`.
//! Nothing is added to the viewer's URLs (no cookie, no session query parameter), so playlists
//! and media stay cacheable by standard HTTP caches. A session ends when it has made no
//! request for [`IDLE`]; a CDN (`hlsCDNSecret`) is one session per path.
//!
//! **Kick**: the session ends, and its media requests (playlists other than the
//! multivariant one, segments, parts) are refused with 401 until the viewer asks for the
//! multivariant playlist again, which authenticates it anew: a player that is kicked stops.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A session that made no request for this long has ended.
pub const IDLE: Duration = Duration::from_secs(30);

/// At most this many sessions are tracked (past it, the oldest idle ones go first; new
/// viewers are still served, only not listed).
const MAX_SESSIONS: usize = 100_000;

#[derive(Clone, Debug)]
struct Key {
    path: String,
    ip: IpAddr,
    user: String,
    user_agent: String,
}

/// A session's identity, owned ([`Key`], in the maps) or borrowed from a request
/// ([`KeyRef`]): a request finds its session without making a string.
trait AsKey {
    fn parts(&self) -> (&str, IpAddr, &str, &str);
}

impl AsKey for Key {
    fn parts(&self) -> (&str, IpAddr, &str, &str) {
        (&self.path, self.ip, &self.user, &self.user_agent)
    }
}

struct KeyRef<'a> {
    path: &'a str,
    ip: IpAddr,
    user: &'a str,
    user_agent: &'a str,
}

impl AsKey for KeyRef<'_> {
    fn parts(&self) -> (&str, IpAddr, &str, &str) {
        (self.path, self.ip, self.user, self.user_agent)
    }
}

impl<'a> std::borrow::Borrow<dyn AsKey + 'a> for Key {
    fn borrow(&self) -> &(dyn AsKey + 'a) {
        self
    }
}

impl std::hash::Hash for dyn AsKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for dyn AsKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn AsKey + '_ {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self as &dyn AsKey).hash(h)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Key {}

/// The first 256 characters of a `User-Agent` (what a session keeps of it).
fn user_agent_prefix(ua: &str) -> &str {
    match ua.char_indices().nth(256) {
        Some((at, _)) => &ua[..at],
        None => ua,
    }
}

/// One viewer of one path.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub created: SystemTime,
    pub path: String,
    /// The address and port of its latest request.
    pub remote_addr: Mutex<SocketAddr>,
    /// The query string of its first request.
    pub query: String,
    pub user: String,
    pub user_agent: String,
    pub is_cdn: bool,
    pub outbound_bytes: AtomicU64,
    last_request: Mutex<Instant>,
}

impl Session {
    fn idle(&self) -> bool {
        self.last_request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= IDLE
    }

    /// Counts the bytes of `r`'s body: a body of known length (a playlist, a complete part or
    /// segment, held in memory) at once, and unchanged, so that it keeps its `Content-Length`
    /// (players, TVs and HTTP caches want it, and chunked framing costs every request); a
    /// streamed one (the open part) as its chunks are sent.
    pub(crate) fn count(self: &Arc<Self>, mut r: crate::reply::Reply) -> crate::reply::Reply {
        use crate::reply::ReplyBody;
        use futures::StreamExt;
        if let Some(n) = r.body.whole_len() {
            self.outbound_bytes.fetch_add(n as u64, Ordering::Relaxed);
            return r;
        }
        let body = std::mem::replace(&mut r.body, ReplyBody::Full(bytes::Bytes::new()));
        if let ReplyBody::Stream(s) = body {
            let me = self.clone();
            r.body = ReplyBody::Stream(
                s.map(move |chunk| {
                    if let Ok(c) = &chunk {
                        me.outbound_bytes
                            .fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                    chunk
                })
                .boxed(),
            );
        }
        r
    }
}

/// A request's identity, as [`Sessions::track`] takes it.
pub struct Seen<'a> {
    pub path: &'a str,
    pub remote: SocketAddr,
    pub user: &'a str,
    pub user_agent: &'a str,
    pub query: &'a str,
    pub is_cdn: bool,
    /// The multivariant playlist: a player starts (or starts again) here.
    pub entry: bool,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<Key, Arc<Session>>>,
    /// Kicked viewers, until they ask for the multivariant playlist again (or for `IDLE`).
    kicked: Mutex<HashMap<Key, Instant>>,
}

impl Sessions {
    /// The session of a request that passed authentication, made if new; None when the
    /// viewer was kicked and this is not a fresh start.
    pub fn track(&self, seen: Seen) -> Option<Arc<Session>> {
        let key = KeyRef {
            path: seen.path,
            ip: if seen.is_cdn {
                IpAddr::from([0, 0, 0, 0])
            } else {
                seen.remote.ip()
            },
            user: seen.user,
            user_agent: if seen.is_cdn {
                ""
            } else {
                user_agent_prefix(seen.user_agent)
            },
        };
        let key: &dyn AsKey = &key;
        {
            let mut kicked = self.kicked.lock().unwrap_or_else(|e| e.into_inner());
            if !kicked.is_empty() {
                kicked.retain(|_, t| t.elapsed() < IDLE);
                if kicked.contains_key(key) {
                    if !seen.entry {
                        return None;
                    }
                    kicked.remove(key);
                }
            }
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = live.get(key).filter(|s| !s.idle()) {
            *s.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            *s.remote_addr.lock().unwrap_or_else(|e| e.into_inner()) = seen.remote;
            return Some(s.clone());
        }
        let (path, ip, user, user_agent) = key.parts();
        let key = Key {
            path: path.to_string(),
            ip,
            user: user.to_string(),
            user_agent: user_agent.to_string(),
        };
        if live.len() >= MAX_SESSIONS {
            live.retain(|_, s| !s.idle());
            if live.len() >= MAX_SESSIONS {
                return Some(Arc::new(new_session(&seen, &key)));
            }
        }
        let s = Arc::new(new_session(&seen, &key));
        live.insert(key, s.clone());
        Some(s)
    }

    /// The sessions that have not ended, oldest first.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| !s.idle());
        let mut v: Vec<Arc<Session>> = live.values().cloned().collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        v
    }

    /// Ends a session (see the module's notes). False when there is none of that id.
    pub fn kick(&self, id: &str) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = live
            .iter()
            .find(|(_, s)| s.id == id && !s.idle())
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        live.remove(&key);
        tracing::info!("[HLS] session {id} kicked");
        self.kicked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Instant::now());
        true
    }
}

fn new_session(seen: &Seen, key: &Key) -> Session {
    Session {
        id: tidegate_core::text::uuid_v4(),
        created: SystemTime::now(),
        path: key.path.clone(),
        remote_addr: Mutex::new(seen.remote),
        query: seen.query.chars().take(1024).collect(),
        user: key.user.clone(),
        user_agent: key.user_agent.clone(),
        is_cdn: seen.is_cdn,
        outbound_bytes: AtomicU64::new(0),
        last_request: Mutex::new(Instant::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(ip: &str, ua: &'a str, entry: bool) -> Seen<'a> {
        Seen {
            path: "cam",
            remote: format!("{ip}:5000").parse().unwrap(),
            user: "",
            user_agent: ua,
            query: "",
            is_cdn: false,
            entry,
        }
    }

    #[test]
    fn viewers_are_told_apart_and_kicks_hold_until_a_fresh_start() {
        let s = Sessions::default();
        let a = s.track(seen("10.0.0.1", "hls.js", true)).unwrap();
        let a2 = s.track(seen("10.0.0.1", "hls.js", false)).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        let b = s.track(seen("10.0.0.1", "Safari", true)).unwrap();
        let c = s.track(seen("10.0.0.2", "hls.js", false)).unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(s.list().len(), 3);
        assert!(s.kick(&a.id));
        assert!(!s.kick(&a.id));
        assert_eq!(s.list().len(), 2);
        assert!(s.track(seen("10.0.0.1", "hls.js", false)).is_none());
        let again = s.track(seen("10.0.0.1", "hls.js", true)).unwrap();
        assert_ne!(again.id, a.id);
        assert!(s.track(seen("10.0.0.1", "hls.js", false)).is_some());
        // A long User-Agent is kept to its first 256 characters (multi-byte ones included):
        // the same viewer is found again without a string made for the lookup.
        let long = "é".repeat(300);
        let l1 = s.track(seen("10.0.0.3", &long, true)).unwrap();
        let l2 = s.track(seen("10.0.0.3", &long, false)).unwrap();
        assert!(Arc::ptr_eq(&l1, &l2));
        assert_eq!(l1.user_agent.chars().count(), 256);
        let other = format!("{}x", "é".repeat(256));
        let l3 = s.track(seen("10.0.0.3", &other, false)).unwrap();
        assert!(Arc::ptr_eq(&l1, &l3), "the same first 256 characters");
    }
}
