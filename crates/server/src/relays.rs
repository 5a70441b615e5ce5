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

/// The relays' status, for the API.
#[derive(Default)]
pub struct Relays {
    pushes: Mutex<HashMap<String, Vec<Arc<RelayStatus>>>>,
    sources: Mutex<HashMap<String, Arc<RelayStatus>>>,
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

    pub fn source(&self, path: &str) -> Option<Arc<RelayStatus>> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }
}

pub fn start(
    config: &Config,
    paths: &PathManager,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Arc<Relays> {
    let relays = Arc::new(Relays::default());
    for conf in &config.paths {
        let pulled = ["rtmp://", "rtmps://", "srt://"]
            .iter()
            .any(|p| conf.source.starts_with(p));
        let exact = !conf.name.starts_with('~') && conf.name != "all_others" && conf.name != "all";
        if conf.source == "publisher" {
            continue;
        }
        if !(pulled && exact) {
            tracing::warn!(
                path = conf.name,
                "source {} is not pulled yet (this build pulls rtmp://, rtmps:// and srt:// on exact-name paths)",
                conf.source
            );
            continue;
        }
        let status = Arc::new(RelayStatus::new(&crate::relays::shown_url(&conf.source)));
        relays
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conf.name.clone(), status.clone());
        let (url, p, name, c) = (
            conf.source.clone(),
            paths.clone(),
            conf.name.clone(),
            shutdown.clone(),
        );
        if url.starts_with("srt://") {
            tasks.spawn(tidegate_srt::caller::pull(url, p, name, status, c));
        } else {
            tasks.spawn(tidegate_rtmp::pull(url, p, name, status, c));
        }
    }
    let has_push = config.paths.iter().any(|p| !p.push.is_empty());
    if has_push {
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
                if m.conf.push.is_empty() {
                    continue;
                }
                let statuses: Vec<Arc<RelayStatus>> = m
                    .conf
                    .push
                    .iter()
                    .map(|u| Arc::new(RelayStatus::new(&crate::relays::shown_url(u))))
                    .collect();
                relays2
                    .pushes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ev.path.clone(), statuses.clone());
                for (url, status) in m.conf.push.iter().zip(statuses) {
                    // Each push ends by itself when the stream it reads ends.
                    let (u, p, name, c) = (
                        url.clone(),
                        paths.clone(),
                        ev.path.clone(),
                        shutdown.clone(),
                    );
                    if u.starts_with("srt://") {
                        tasks2.spawn(tidegate_srt::caller::push(u, p, name, status, c));
                    } else {
                        tasks2.spawn(tidegate_rtmp::push(u, p, name, status, c));
                    }
                }
            }
        });
    }
    relays
}
