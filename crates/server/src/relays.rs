//! Starts and stops relays: pulled sources (`source: rtmp://…`) at start-up, and pushes
//! (`push:`) whenever a path with destinations becomes ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tidegate_core::{PathEventKind, PathManager};
use tidegate_rtmp::RelayStatus;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// A pulled source and what started it.
struct Pull {
    conf: Arc<tidegate_core::PathConf>,
    status: Arc<RelayStatus>,
    /// Cancels an always-on pull; None for an on-demand one (its task owns its runs).
    cancel: Option<CancellationToken>,
}

/// The relays: their status for the API, and the pulls by path, which a reload changes.
#[derive(Default)]
pub struct Relays {
    pushes: Mutex<HashMap<String, Vec<Arc<RelayStatus>>>>,
    pulls: Mutex<HashMap<String, Pull>>,
    /// Pulls of names matched by a `~regex` (or `all_others`) path whose source is a URL
    /// template (`rtsp://origin/$G1`): made when a reader asks for a name, by that name, with
    /// the template's path configuration they came from.
    dynamic: Mutex<HashMap<String, (Pull, Arc<tidegate_core::PathConf>)>>,
    /// `readTimeout`: how long a received (UDP, Unix) source may be silent.
    read_timeout: Mutex<std::time::Duration>,
    /// The offline streams of `alwaysAvailable` paths.
    offline: crate::offline::Offline,
}

/// The schemes Tidegate pulls.
const PULLED: [&str; 16] = [
    "rtsp+http://",
    "rtsps+http://",
    "rtsp+ws://",
    "rtsps+ws://",
    "whep://",
    "wheps://",
    "http://",
    "https://",
    "rtmp://",
    "rtmps://",
    "srt://",
    "rtsp://",
    "rtsps://",
    "udp+mpegts://",
    "unix+mpegts://",
    "udp+rtp://",
];

/// Whether a path name is a `~regex` or `all_others` (a template for many names).
pub fn is_template(name: &str) -> bool {
    name.starts_with('~') || name == "all_others" || name == "all"
}

/// A source URL of a template path for one name: `$G1`, `$G2`, … become the regular
/// expression's capture groups, `$MTX_QUERY` the first reader's query string, `$MTX_PATH`
/// the name.
pub fn expand_source(template: &str, name: &str, captures: &[String], query: &str) -> String {
    let mut out = template
        .replace("$MTX_QUERY", query)
        .replace("$MTX_PATH", name);
    // $G10 before $G1.
    for (i, g) in captures.iter().enumerate().skip(1).rev() {
        out = out.replace(&format!("$G{i}"), g);
    }
    out
}

/// A relay URL as the API and logs show it: stream keys and passphrases hidden.
pub fn shown_url(url: &str) -> String {
    if url.starts_with("srt://") {
        tidegate_srt::caller::redact(url)
    } else {
        tidegate_rtmp::redact(url)
    }
}

impl Relays {
    pub fn pushes(&self, path: &str) -> Vec<Arc<RelayStatus>> {
        self.pushes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Every push destination, with its path.
    pub fn all_pushes(&self) -> Vec<(String, Arc<RelayStatus>)> {
        let mut v: Vec<(String, Arc<RelayStatus>)> = self
            .pushes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|(p, rs)| rs.iter().map(move |r| (p.clone(), r.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn source(&self, path: &str) -> Option<Arc<RelayStatus>> {
        let exact = self
            .pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .map(|p| p.status.clone());
        exact.or_else(|| {
            self.dynamic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
                .map(|(p, _)| p.status.clone())
        })
    }

    /// Starts the pulls `confs` ask for and stops those they no longer ask for (or ask for
    /// differently); pulls whose path configuration is the same go on untouched.
    pub fn apply_sources(
        &self,
        confs: &[tidegate_core::PathConf],
        paths: &PathManager,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        self.offline.apply(confs, paths, tasks, shutdown);
        let mut wanted: HashMap<String, &tidegate_core::PathConf> = HashMap::new();
        for conf in confs {
            if conf.source == "publisher" {
                continue;
            }
            let pulled = PULLED.iter().any(|p| conf.source.starts_with(p));
            if !pulled {
                if conf.source != "redirect" {
                    tracing::warn!(
                        path = conf.name,
                        "source {} is not pulled (this build pulls rtsp(s)://, rtmp(s)://, srt://, http(s):// (HLS), whep(s)://, rtsp(s)+http://, rtsp(s)+ws://, udp+mpegts://, udp+rtp:// and unix+mpegts://)",
                        shown_url(&conf.source)
                    );
                }
                continue;
            }
            if is_template(&conf.name) {
                // Pulled per name when a reader asks (`dynamic`).
                continue;
            }
            wanted.insert(conf.name.clone(), conf);
        }
        // A dynamic pull whose template path changed (or went) stops.
        self.dynamic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, (_, template)| {
                let same = paths.find(name).is_ok_and(|m| *m.conf == **template);
                if !same {
                    tracing::info!(
                        path = name,
                        "the pulled source's configuration changed: it stops"
                    );
                }
                same
            });
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<String> = pulls
            .iter()
            .filter(|(name, p)| wanted.get(*name).is_none_or(|c| **c != *p.conf))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(p) = pulls.remove(&name) {
                tracing::info!(
                    path = name,
                    "the pulled source's configuration changed: it stops"
                );
                if let Some(c) = p.cancel {
                    c.cancel();
                }
            }
        }
        for (name, conf) in wanted {
            if pulls.contains_key(&name) {
                continue;
            }
            let status = Arc::new(RelayStatus::new(&shown_url(&conf.source)));
            let cancel = (!conf.source_on_demand).then(|| {
                let token = shutdown.child_token();
                tasks.spawn(source(
                    conf,
                    self.read_timeout(),
                    paths.clone(),
                    status.clone(),
                    token.clone(),
                ));
                token
            });
            pulls.insert(
                name,
                Pull {
                    conf: Arc::new(conf.clone()),
                    status,
                    cancel,
                },
            );
        }
    }

    /// The on-demand pull configured for `path`, if any (a dynamic one included).
    fn on_demand(&self, path: &str) -> Option<(Arc<tidegate_core::PathConf>, Arc<RelayStatus>)> {
        let exact = self
            .pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .filter(|p| p.cancel.is_none())
            .map(|p| (p.conf.clone(), p.status.clone()));
        exact.or_else(|| {
            self.dynamic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
                .map(|(p, _)| (p.conf.clone(), p.status.clone()))
        })
    }

    /// A pull for `name` from the template path it matches (`~^(.+)$` with
    /// `source: rtsp://origin/$G1`), made on a reader's demand; None when its path pulls
    /// nothing.
    fn make_dynamic(
        &self,
        name: &str,
        query: &str,
        paths: &PathManager,
    ) -> Option<(Arc<tidegate_core::PathConf>, Arc<RelayStatus>)> {
        let m = paths.find(name).ok()?;
        let template = m.conf.clone();
        if !is_template(&template.name)
            || !template.source_on_demand
            || !PULLED.iter().any(|p| template.source.starts_with(p))
        {
            return None;
        }
        let mut conf = (*template).clone();
        conf.source = expand_source(&template.source, name, &m.captures, query);
        conf.source_failover = template
            .source_failover
            .iter()
            .map(|t| expand_source(t, name, &m.captures, query))
            .collect();
        conf.name = name.to_string();
        let conf = Arc::new(conf);
        let status = Arc::new(RelayStatus::new(&shown_url(&conf.source)));
        self.dynamic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.to_string(),
                (
                    Pull {
                        conf: conf.clone(),
                        status: status.clone(),
                        cancel: None,
                    },
                    template,
                ),
            );
        Some((conf, status))
    }

    fn read_timeout(&self) -> std::time::Duration {
        *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_dynamic(&self, name: &str) {
        self.dynamic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

/// The `destFingerprint` of a `forward` destination (empty when none).
fn fingerprint_of(conf: &tidegate_core::PathConf, dest: &str) -> String {
    conf.forward
        .iter()
        .find(|f| f.dest == dest)
        .map(|f| f.dest_fingerprint.clone())
        .unwrap_or_default()
}

pub fn start(
    config: &Config,
    paths: &PathManager,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Arc<Relays> {
    let relays = Arc::new(Relays::default());
    *relays
        .read_timeout
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = config.read_timeout;
    relays.apply_sources(&config.paths, paths, tasks, shutdown);
    tasks.spawn(on_demand_sources(
        relays.clone(),
        paths.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    {
        let mut events = paths.events();
        let paths = paths.clone();
        let relays2 = relays.clone();
        let tasks2 = tasks.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.recv() => ev,
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("push manager missed {n} path events");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if ev.kind != PathEventKind::Ready {
                    continue;
                }
                let Ok(m) = paths.find(&ev.path) else {
                    continue;
                };
                // `push` and `forward` (MediaMTX's newer name; the configuration admits only
                // the destinations that are pushed the same way).
                let dests: Vec<String> = m
                    .conf
                    .push
                    .iter()
                    .cloned()
                    .chain(m.conf.forward.iter().map(|f| f.dest.clone()))
                    .collect();
                if dests.is_empty() {
                    continue;
                }
                let statuses: Vec<Arc<RelayStatus>> = dests
                    .iter()
                    .map(|u| {
                        let dest = expand_source(u, &ev.path, &m.captures, "");
                        Arc::new(RelayStatus::new(&crate::relays::shown_url(&dest)))
                    })
                    .collect();
                relays2
                    .pushes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ev.path.clone(), statuses.clone());
                for (url, status) in dests.iter().zip(statuses) {
                    // Each push ends by itself when the stream it reads ends. `$G1…` and
                    // `$MTX_PATH` name the path being pushed (a regex path forwards each
                    // name to its own destination: an ingest edge's `rtmp://origin/$G1`).
                    let (u, p, name, c) = (
                        expand_source(url, &ev.path, &m.captures, ""),
                        paths.clone(),
                        ev.path.clone(),
                        shutdown.clone(),
                    );
                    if u.starts_with("srt://") {
                        tasks2.spawn(tidegate_srt::caller::push(u, p, name, status, c));
                    } else if u.starts_with("rtsp://") || u.starts_with("rtsps://") {
                        let fp = fingerprint_of(&m.conf, url);
                        tasks2.spawn(tidegate_rtsp::client::push(u, fp, p, name, status, c));
                    } else if u.starts_with("whip://") || u.starts_with("whips://") {
                        let fp = fingerprint_of(&m.conf, url);
                        let token = m
                            .conf
                            .forward
                            .iter()
                            .find(|f| &f.dest == url)
                            .map(|f| f.whip_bearer_token.clone())
                            .unwrap_or_default();
                        tasks2.spawn(tidegate_webrtc::forward::push(
                            u, fp, token, p, name, status, c,
                        ));
                    } else {
                        tasks2.spawn(tidegate_rtmp::push(u, p, name, status, c));
                    }
                }
            }
        });
    }
    relays
}

/// The pull of `conf.source`, whatever its protocol, until `cancel`.
/// A path's pull: from `source`, or with `sourceFailover`, from each of its URLs in turn: a
/// pull that fails moves to the next URL at once (after a pause of 1 s when that one has not
/// run either, so that a dead list is not hammered). The path's readers wait for the stream
/// to come back as for a publisher that reconnects (`publisherReconnectGrace`).
fn source(
    conf: &tidegate_core::PathConf,
    read_timeout: std::time::Duration,
    paths: PathManager,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    if conf.source_failover.is_empty() {
        return source_once(conf, read_timeout, paths, status, cancel);
    }
    let conf = conf.clone();
    Box::pin(async move {
        let urls: Vec<String> = std::iter::once(conf.source.clone())
            .chain(conf.source_failover.iter().cloned())
            .collect();
        let mut i = 0;
        let mut failed_in_a_row = 0usize;
        loop {
            let mut c = conf.clone();
            c.source = urls[i].clone();
            let attempt = cancel.child_token();
            status.set_state("connecting");
            let mut pull = source_once(
                &c,
                read_timeout,
                paths.clone(),
                status.clone(),
                attempt.clone(),
            );
            let mut ran = false;
            let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
            let failed = loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut pull => return,
                    _ = poll.tick() => {
                        match status.state() {
                            "running" => ran = true,
                            "reconnecting" => break true,
                            _ => {}
                        }
                    }
                }
            };
            attempt.cancel();
            drop(pull);
            if !failed {
                return;
            }
            failed_in_a_row = if ran { 0 } else { failed_in_a_row + 1 };
            let next = (i + 1) % urls.len();
            tracing::warn!(
                path = conf.name,
                "source {} failed ({}); pulling from {}",
                shown_url(&urls[i]),
                status.last_error(),
                shown_url(&urls[next])
            );
            i = next;
            // A whole round that never ran: wait before the next one.
            if failed_in_a_row >= urls.len() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    })
}

/// One URL's pull, reconnecting to it with backoff until cancelled.
fn source_once(
    conf: &tidegate_core::PathConf,
    read_timeout: std::time::Duration,
    paths: PathManager,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let (url, name) = (conf.source.clone(), conf.name.clone());
    let fingerprint = conf.source_fingerprint.clone();
    if [
        "rtsp://",
        "rtsps://",
        "rtsp+http://",
        "rtsps+http://",
        "rtsp+ws://",
        "rtsps+ws://",
    ]
    .iter()
    .any(|s| url.starts_with(s))
    {
        use tidegate_rtsp::source::SourceTransport;
        let transport = match conf.rtsp_transport.as_str() {
            "udp" => SourceTransport::Udp,
            "tcp" => SourceTransport::Tcp,
            "multicast" => SourceTransport::Multicast,
            _ => SourceTransport::Automatic,
        };
        let play = match tidegate_rtsp::client::PlayOptions::new(
            &conf.rtsp_range_type,
            &conf.rtsp_range_start,
            &conf.rtsp_scale,
            conf.rtsp_udp_source_port_range,
        ) {
            Ok(p) => p,
            // Checked when the configuration was loaded.
            Err(e) => {
                tracing::error!(path = name, "{e}");
                tidegate_rtsp::client::PlayOptions::default()
            }
        };
        let play = tidegate_rtsp::client::PlayOptions {
            absolute: conf.use_absolute_timestamp,
            ..play
        };
        Box::pin(tidegate_rtsp::source::pull(
            url,
            transport,
            fingerprint,
            conf.rtsp_any_port,
            play,
            paths,
            name,
            status,
            cancel,
        ))
    } else if url.starts_with("whep://") || url.starts_with("wheps://") {
        Box::pin(tidegate_webrtc::source::pull(
            tidegate_webrtc::source::WhepSource {
                url,
                bearer_token: conf.whep_bearer_token.clone(),
                fingerprint,
                handshake_timeout: conf.whep_handshake_timeout,
            },
            paths,
            name,
            status,
            cancel,
        ))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        Box::pin(crate::hls_source::pull(
            url,
            fingerprint,
            paths,
            name,
            status,
            cancel,
        ))
    } else if url.starts_with("udp+mpegts://") {
        Box::pin(crate::ts_source::udp_mpegts(
            url,
            read_timeout,
            paths,
            name,
            status,
            cancel,
        ))
    } else if url.starts_with("udp+rtp://") {
        Box::pin(crate::ts_source::udp_rtp(
            url,
            conf.rtp_sdp.clone(),
            read_timeout,
            paths,
            name,
            status,
            cancel,
        ))
    } else if url.starts_with("unix+mpegts://") {
        Box::pin(crate::ts_source::unix_mpegts(
            url,
            read_timeout,
            paths,
            name,
            status,
            cancel,
        ))
    } else if url.starts_with("srt://") {
        Box::pin(tidegate_srt::caller::pull(url, paths, name, status, cancel))
    } else {
        Box::pin(tidegate_rtmp::pull(
            url,
            fingerprint,
            paths,
            name,
            status,
            cancel,
        ))
    }
}

/// Starts on-demand sources when a reader asks (a `Demand` path event) and stops each
/// `sourceOnDemandCloseAfter` after its last reader left.
async fn on_demand_sources(
    relays: Arc<Relays>,
    paths: PathManager,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut events = paths.events();
    type Run = (
        CancellationToken,
        std::time::Instant,
        Arc<tidegate_core::PathConf>,
    );
    let mut running: HashMap<String, Run> = HashMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                if ev.kind != PathEventKind::Demand || running.contains_key(&ev.path) {
                    continue;
                }
                let Some((conf, status)) = relays
                    .on_demand(&ev.path)
                    .or_else(|| relays.make_dynamic(&ev.path, &ev.query, &paths))
                else {
                    continue;
                };
                tracing::info!(path = ev.path, "starting the on-demand source");
                let token = shutdown.child_token();
                tasks.spawn(source(
                    &conf,
                    relays.read_timeout(),
                    paths.clone(),
                    status,
                    token.clone(),
                ));
                running.insert(ev.path.clone(), (token, std::time::Instant::now(), conf));
            }
            _ = tick.tick() => {
                let mut stop = Vec::new();
                for (name, (token, last_busy, conf)) in running.iter_mut() {
                    let busy = paths.get(name).is_some_and(|p| !p.readers.is_empty());
                    if busy {
                        *last_busy = std::time::Instant::now();
                    }
                    // A reload that removed or changed the source ends its run at once.
                    let close_after = relays
                        .on_demand(name)
                        .filter(|s| Arc::ptr_eq(&s.0, conf))
                        .map(|s| s.0.source_on_demand_close_after);
                    if close_after.is_none_or(|c| last_busy.elapsed() >= c) {
                        token.cancel();
                        stop.push(name.clone());
                    }
                }
                for name in stop {
                    tracing::info!(path = name, "closing the on-demand source: no readers");
                    running.remove(&name);
                    relays.drop_dynamic(&name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_sources_take_the_name_apart() {
        let caps: Vec<String> = ["live/cam12", "live", "cam12"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            expand_source(
                "rtsp://origin:8554/$G1/$G2?q=$MTX_QUERY",
                "live/cam12",
                &caps,
                "a=1"
            ),
            "rtsp://origin:8554/live/cam12?q=a=1"
        );
        let many: Vec<String> = (0..12).map(|i| format!("g{i}")).collect();
        assert_eq!(expand_source("$G10-$G1", "x", &many, ""), "g10-g1");
        assert!(is_template("~^(.+)$") && is_template("all_others") && !is_template("cam"));
    }
}
