//! Native event webhooks (Tidegate's own; MediaMTX has only commands): JSON POSTs of the
//! server's events to the URLs in `webhooks`, signed with HMAC-SHA256, each webhook with its
//! own bounded queue and one delivery task, so that a slow or dead receiver never holds up a
//! session and events reach a receiver in the order they happened. A failed delivery is
//! retried with backoff (a receiver that is down gets every event when it is back, up to
//! the queue's bound); a receiver that refuses an event (4xx) gets it at most 3 times.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tidegate_core::{ConnEvent, ConnEventKind, PathEvent, PathEventKind};
use tidegate_record::{Recorder, SegmentEventKind};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The events a webhook can ask for.
pub const EVENTS: &[&str] = &[
    "publish",
    "unpublish",
    "read",
    "unread",
    "connect",
    "disconnect",
    "recordSegmentCreate",
    "recordSegmentComplete",
];

/// Events waiting per webhook at most; past it the oldest is dropped (counted).
pub const QUEUE: usize = 10_000;
/// One delivery attempt, connection to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Attempts at an event the receiver refuses (a 4xx other than 408 and 429).
const REFUSED_ATTEMPTS: u32 = 3;

/// One entry of `webhooks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConf {
    pub url: String,
    /// Empty: every event.
    pub events: Vec<String>,
    /// HMAC-SHA256 key of the `X-Tidegate-Signature` header; empty: not signed.
    pub secret: String,
    /// SHA-256 fingerprint of an `https://` receiver's self-signed certificate.
    pub fingerprint: String,
}

impl WebhookConf {
    fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// A webhook's delivery figures, for the API.
#[derive(Default, Debug)]
pub struct Stats {
    pub delivered: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Events given up: refused by the receiver `REFUSED_ATTEMPTS` times.
    pub given_up: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    pub last_error: Mutex<String>,
    pub last_delivery: Mutex<Option<SystemTime>>,
}

pub struct Webhook {
    pub conf: WebhookConf,
    pub stats: Stats,
    queue: Mutex<VecDeque<(u64, &'static str, Vec<u8>)>>,
    notify: Notify,
}

impl Webhook {
    pub fn queued(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, &'static str, Vec<u8>)>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, id: u64, event: &'static str, body: Vec<u8>) {
        let mut q = self.lock();
        if q.len() >= QUEUE {
            q.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back((id, event, body));
        drop(q);
        self.notify.notify_one();
    }
}

/// The configured webhooks.
#[derive(Default)]
pub struct Webhooks {
    pub hooks: Vec<Arc<Webhook>>,
}

/// HMAC-SHA256 of `msg` under `key`, in hex.
pub fn sign(key: &[u8], msg: &[u8]) -> String {
    use aws_lc_rs::hmac;
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts the webhooks: one task turns events into JSON bodies, one task per webhook
/// delivers them.
pub fn start(
    confs: Vec<WebhookConf>,
    path_events: broadcast::Receiver<PathEvent>,
    conn_events: broadcast::Receiver<ConnEvent>,
    recorder: &Recorder,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Arc<Webhooks> {
    let hooks: Vec<Arc<Webhook>> = confs
        .into_iter()
        .map(|conf| {
            Arc::new(Webhook {
                conf,
                stats: Stats::default(),
                queue: Mutex::new(VecDeque::new()),
                notify: Notify::new(),
            })
        })
        .collect();
    let all = Arc::new(Webhooks {
        hooks: hooks.clone(),
    });
    if hooks.is_empty() {
        return all;
    }
    for h in &hooks {
        tasks.spawn(deliver(h.clone(), shutdown.clone()));
    }
    tasks.spawn(dispatch(
        hooks,
        path_events,
        conn_events,
        recorder.events(),
        shutdown.clone(),
    ));
    all
}

async fn dispatch(
    hooks: Vec<Arc<Webhook>>,
    mut path_events: broadcast::Receiver<PathEvent>,
    mut conn_events: broadcast::Receiver<ConnEvent>,
    mut record_events: broadcast::Receiver<tidegate_record::SegmentEvent>,
    shutdown: CancellationToken,
) {
    let mut seq = 0u64;
    let lagged = |what: &str, n: u64| {
        tracing::warn!("[webhooks] {n} {what} events were missed (the server was overloaded)");
        for h in &hooks {
            h.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    };
    loop {
        let (event, mut body) = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = path_events.recv() => match ev {
                Ok(ev) => path_body(&ev),
                Err(RecvError::Lagged(n)) => { lagged("path", n); continue }
                Err(RecvError::Closed) => return,
            },
            ev = conn_events.recv() => match ev {
                Ok(ev) => conn_body(&ev),
                Err(RecvError::Lagged(n)) => { lagged("connection", n); continue }
                Err(RecvError::Closed) => std::future::pending().await,
            },
            ev = record_events.recv() => match ev {
                Ok(ev) => record_body(&ev),
                Err(RecvError::Lagged(n)) => { lagged("recording", n); continue }
                Err(RecvError::Closed) => std::future::pending().await,
            },
        };
        if event.is_empty() {
            continue;
        }
        seq += 1;
        body["id"] = json!(seq);
        body["event"] = json!(event);
        body["time"] = json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        for h in &hooks {
            if h.conf.wants(event) {
                h.push(seq, event, bytes.clone());
            }
        }
    }
}

fn session(kind: &str, id: u64) -> Value {
    json!({"type": kind, "id": id.to_string()})
}

fn path_body(ev: &PathEvent) -> (&'static str, Value) {
    let (event, role) = match ev.kind {
        PathEventKind::Ready => ("publish", "source"),
        PathEventKind::NotReady => ("unpublish", "source"),
        PathEventKind::ReaderAdded => ("read", "reader"),
        PathEventKind::ReaderRemoved => ("unread", "reader"),
        PathEventKind::Demand => return ("", Value::Null),
    };
    let mut v = json!({
        "path": ev.path,
        "query": ev.query,
        "remoteAddr": ev.remote.map(|a| a.to_string()),
    });
    v[role] = session(ev.session_kind, ev.session);
    (event, v)
}

fn conn_body(ev: &ConnEvent) -> (&'static str, Value) {
    let event = match ev.kind {
        ConnEventKind::Connected => "connect",
        ConnEventKind::Disconnected => "disconnect",
    };
    (
        event,
        json!({
            "conn": session(ev.conn_type, ev.id),
            "remoteAddr": ev.remote.to_string(),
        }),
    )
}

fn record_body(ev: &tidegate_record::SegmentEvent) -> (&'static str, Value) {
    match ev.kind {
        SegmentEventKind::Create => (
            "recordSegmentCreate",
            json!({"path": ev.path, "segmentPath": ev.file.display().to_string()}),
        ),
        SegmentEventKind::Complete => (
            "recordSegmentComplete",
            json!({
                "path": ev.path,
                "segmentPath": ev.file.display().to_string(),
                "segmentDuration": ev.duration.max(0.0),
            }),
        ),
    }
}

/// Delivers the webhook's queue in order, one event at a time.
async fn deliver(hook: Arc<Webhook>, shutdown: CancellationToken) {
    loop {
        let next = hook.lock().front().cloned();
        let Some((id, event, body)) = next else {
            tokio::select! {
                _ = hook.notify.notified() => continue,
                _ = shutdown.cancelled() => return,
            }
        };
        let mut backoff = BACKOFF_FIRST;
        let mut refusals = 0;
        loop {
            match attempt(&hook.conf, id, event, &body).await {
                Ok(()) => {
                    hook.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    *hook
                        .stats
                        .last_delivery
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
                    break;
                }
                Err((refused, e)) => {
                    hook.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "[webhooks] {} event {id} ({event}): {e}; retrying in {:.1} s",
                        hook.conf.url,
                        backoff.as_secs_f64()
                    );
                    *hook
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = e;
                    if refused {
                        refusals += 1;
                        if refusals >= REFUSED_ATTEMPTS {
                            hook.stats.given_up.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                "[webhooks] {} refused event {id} ({event}) {REFUSED_ATTEMPTS} times: given up",
                                hook.conf.url
                            );
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        // Delivered or given up: the event leaves the queue (unless the queue dropped it
        // meanwhile, then the front is another one).
        let mut q = hook.lock();
        if q.front().is_some_and(|(i, _, _)| *i == id) {
            q.pop_front();
        }
    }
}

/// One POST. Err((refused, why)): `refused` when the receiver answered a 4xx that retrying
/// will not change.
async fn attempt(
    conf: &WebhookConf,
    id: u64,
    event: &str,
    body: &[u8],
) -> Result<(), (bool, String)> {
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut headers = vec![
        ("X-Tidegate-Event".to_string(), event.to_string()),
        ("X-Tidegate-Delivery".to_string(), id.to_string()),
        ("X-Tidegate-Timestamp".to_string(), ts.to_string()),
    ];
    if !conf.secret.is_empty() {
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(body);
        headers.push((
            "X-Tidegate-Signature".to_string(),
            format!("sha256={}", sign(conf.secret.as_bytes(), &msg)),
        ));
    }
    let answer = tidegate_auth::fetch::request_with(
        "POST",
        &conf.url,
        body.to_vec(),
        &conf.fingerprint,
        TIMEOUT,
        headers,
    )
    .await
    .map_err(|e| (false, e))?;
    match answer.status {
        200..=299 => Ok(()),
        408 | 429 => Err((false, format!("answered {}", answer.status))),
        s @ 400..=499 => Err((true, format!("answered {s}"))),
        s => Err((false, format!("answered {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_it() {
        let h = Webhook {
            conf: WebhookConf {
                url: "http://127.0.0.1:1/".into(),
                events: vec!["read".into()],
                secret: String::new(),
                fingerprint: String::new(),
            },
            stats: Stats::default(),
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
        };
        assert!(h.conf.wants("read") && !h.conf.wants("publish"));
        for i in 0..(QUEUE as u64 + 5) {
            h.push(i, "read", Vec::new());
        }
        assert_eq!(h.queued(), QUEUE);
        assert_eq!(h.stats.dropped.load(Ordering::Relaxed), 5);
        assert_eq!(h.lock().front().map(|e| e.0), Some(5));
    }
}
