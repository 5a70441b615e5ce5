//! Reloading the configuration without dropping what the change does not concern: the
//! file is watched (and `SIGHUP` reloads it), the new configuration is validated whole
//! first (an invalid file changes nothing; the error names the key and the line), then only
//! what changed is touched (docs/operations.md#reload):
//! - paths: a live path whose settings are the same keeps its publisher and readers; a
//!   changed or removed one has its sessions closed (logged); pulled sources and `runOnInit`
//!   commands restart only where their path changed;
//! - the log level, global hooks and the authentication settings apply at once;
//! - TLS certificates are read again: new connections get the new one;
//! - a changed TCP listener address moves that listener alone (crate::listeners): the new
//!   address is bound, then the old listener closed; its open connections go on;
//! - other keys (UDP addresses, protocol settings) are named in the log as needing a
//!   restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidegate_core::PathManager;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::yaml::{self, Node, Value};
use crate::config::{Config, ConfigError};

/// Top-level keys a reload applies while running; any other key that changed needs a restart.
const LIVE_KEYS: &[&str] = &[
    "logLevel",
    "dumpPackets",
    "maxConnections",
    "maxConnectionsPerIP",
    "runOnConnect",
    "runOnConnectRestart",
    "runOnDisconnect",
    "pathDefaults",
    "paths",
    "rtmpServerKey",
    "rtmpServerCert",
    "rtspServerKey",
    "rtspServerCert",
    "webrtcServerKey",
    "webrtcServerCert",
    "hlsServerKey",
    "hlsServerCert",
    "apiServerKey",
    "apiServerCert",
    "metricsServerKey",
    "metricsServerCert",
    "playbackServerKey",
    "playbackServerCert",
];

/// The configuration file (if any) and the environment it is read with.
pub(crate) type Source = (Option<PathBuf>, Vec<(String, String)>);

/// What a reload did, for the log and the tests.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Live paths whose sessions were closed, with why.
    pub closed: Vec<(String, &'static str)>,
    /// TLS listeners that now serve a new certificate.
    pub certificates: Vec<&'static str>,
    /// Changed keys that take effect only after a restart.
    pub restart: Vec<String>,
    /// Listeners moved to a new address: (listener, from, to).
    pub moved: Vec<(&'static str, std::net::SocketAddr, std::net::SocketAddr)>,
}

pub struct Reloader {
    pub(crate) current: Mutex<(Config, Option<String>)>,
    pub(crate) paths: PathManager,
    pub(crate) relays: Arc<crate::relays::Relays>,
    pub(crate) hooks: crate::hooks::HooksHandle,
    pub(crate) auth: Arc<tidegate_auth::AuthManager>,
    pub(crate) certs: Vec<(&'static str, Arc<crate::tls::CertStore>)>,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Reloads one at a time.
    pub(crate) serial: tokio::sync::Mutex<()>,
    /// Config API changes one at a time (each reads, changes and writes the document).
    pub(crate) api: tokio::sync::Mutex<()>,
    /// The file the configuration came from and the environment it was read with.
    pub(crate) source: Mutex<Source>,
    /// The file's content as last read or written, so that the watcher does not reload what
    /// the API itself wrote.
    pub(crate) seen: Mutex<Option<Vec<u8>>>,
    pub(crate) listeners: Arc<crate::listeners::Listeners>,
}

/// Whether two nodes hold the same value (lines aside).
pub(crate) fn same(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Scalar(x, _), Value::Scalar(y, _)) => x == y,
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(a, b)| a.key == b.key && same(&a.value, &b.value))
        }
        _ => false,
    }
}

/// Top-level keys whose value differs between two files (added and removed keys too).
fn changed_keys(old: Option<&str>, new: Option<&str>) -> Vec<String> {
    let entries = |t: Option<&str>| -> Vec<(String, Node)> {
        match t.map(yaml::parse) {
            Some(Ok(Some(Node {
                value: Value::Map(m),
                ..
            }))) => m.into_iter().map(|e| (e.key, e.value)).collect(),
            _ => Vec::new(),
        }
    };
    let (a, b) = (entries(old), entries(new));
    let mut keys: Vec<String> = Vec::new();
    for (k, v) in &a {
        if b.iter()
            .find(|(n, _)| n == k)
            .is_none_or(|(_, w)| !same(v, w))
        {
            keys.push(k.clone());
        }
    }
    for (k, _) in &b {
        if !a.iter().any(|(n, _)| n == k) {
            keys.push(k.clone());
        }
    }
    keys
}

impl Reloader {
    /// Reloads from `file` (its name and text; None: the embedded defaults alone) with the
    /// environment `env`. An invalid configuration changes nothing.
    pub async fn reload(
        &self,
        file: Option<(&str, &str)>,
        env: Vec<(String, String)>,
    ) -> Result<Report, ConfigError> {
        let _one = self.serial.lock().await;
        let new = Config::load(file, env)?;
        // Listeners whose address changed move first (binding is the one step that waits).
        let (moved_keys, moved) = self.listeners.apply(&new, &self.shutdown).await;
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (old, old_text) = &*cur;
        let mut report = Report {
            restart: changed_keys(old_text.as_deref(), file.map(|f| f.1))
                .into_iter()
                .filter(|k| {
                    !LIVE_KEYS.contains(&k.as_str())
                        && !k.starts_with("auth")
                        && !moved_keys.contains(&k.as_str())
                })
                .collect(),
            moved,
            ..Report::default()
        };
        report.closed = self.paths.reconfigure(new.matcher());
        self.relays
            .apply_sources(&new.paths, &self.paths, &self.tasks, &self.shutdown);
        self.hooks.reconfigure(
            crate::hooks::GlobalHooks {
                run_on_connect: new.run_on_connect.clone(),
                run_on_connect_restart: new.run_on_connect_restart,
                run_on_disconnect: new.run_on_disconnect.clone(),
            },
            crate::exact_paths(&new),
        );
        if old.auth != new.auth {
            self.auth.reload(new.auth.clone());
        }
        if old.dump_packets != new.dump_packets {
            tidegate_core::dump::configure(new.dump_packets, std::path::PathBuf::from("."));
            tracing::info!(
                "[reload] dumpPackets: {} for new connections",
                if new.dump_packets { "on" } else { "off" }
            );
        }
        if (old.max_connections, old.max_connections_per_ip)
            != (new.max_connections, new.max_connections_per_ip)
        {
            tidegate_core::guard::set_connection_limits(
                u64::from(new.max_connections),
                u64::from(new.max_connections_per_ip),
            );
            tracing::info!(
                "[reload] maxConnections {}, maxConnectionsPerIP {} for new connections",
                new.max_connections,
                new.max_connections_per_ip
            );
        }
        if old.log_level != new.log_level && crate::logging::set_level(&new.log_level) {
            tracing::info!("[reload] log level: {}", new.log_level);
        }
        for (what, store) in &self.certs {
            let Some((key, cert)) = crate::cert_files(&new, what) else {
                continue;
            };
            match store.reload(key, cert) {
                Ok(true) => report.certificates.push(what),
                Ok(false) => {}
                Err(e) => tracing::error!("[reload] {what}: {e}; the certificate in use stays"),
            }
        }
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        for (path, why) in &report.closed {
            tracing::info!(path = %path, "[reload] {why}: its sessions were closed");
        }
        for what in &report.certificates {
            tracing::info!("[reload] {what}: new certificate for new connections");
        }
        if !report.restart.is_empty() {
            tracing::warn!(
                "[reload] changed, takes effect after a restart: {}",
                report.restart.join(", ")
            );
        }
        tracing::info!(
            "[reload] configuration reloaded from {}",
            file.map_or("embedded default", |f| f.0)
        );
        *cur = (new, file.map(|f| f.1.to_string()));
        Ok(report)
    }

    /// The text of the configuration file in use (None: the embedded defaults alone).
    pub fn text(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    pub(crate) async fn api_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.api.lock().await
    }

    /// Applies `text` as the new configuration file (a config API change): validated and
    /// applied as a reload, then written back to the file atomically (the file as it was
    /// before the API's first change is kept as `<file>.orig`). Without a file the change
    /// lives in memory only.
    pub async fn apply_text(&self, text: String) -> Result<(), String> {
        let (file, env) = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let name = file
            .as_ref()
            .map_or("config API".to_string(), |f| f.display().to_string());
        self.reload(Some((&name, &text)), env)
            .await
            .map_err(|e| e.to_string())?;
        let Some(file) = file else {
            tracing::warn!("[config API] no configuration file: the change is kept in memory only");
            return Ok(());
        };
        let orig = file.with_extension("yml.orig");
        if !orig.exists() {
            let _ = std::fs::copy(&file, &orig);
        }
        let tmp = file.with_extension("yml.tmp");
        let write = std::fs::write(&tmp, text.as_bytes())
            .and_then(|_| std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &file));
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.into_bytes());
        match write {
            Ok(()) => {
                tracing::info!("[config API] written back to {}", file.display());
                Ok(())
            }
            Err(e) => {
                tracing::error!("[config API] cannot write {}: {e}", file.display());
                Err(format!(
                    "applied, but cannot write {}: {e} (a restart would lose the change)",
                    file.display()
                ))
            }
        }
    }

    /// Reads `path` and reloads; errors are logged.
    pub async fn reload_file(&self, path: &std::path::Path, env: Vec<(String, String)>) {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Err(e) => tracing::error!("[reload] cannot read {name}: {e}; nothing changed"),
            Ok(text) => {
                if let Err(e) = self.reload(Some((&name, &text)), env).await {
                    tracing::error!("[reload] {e}; nothing changed");
                }
            }
        }
    }

    /// Watches `path`: when its content changes (checked every second), it is reloaded.
    pub fn watch(self: &Arc<Self>, path: PathBuf, env: Vec<(String, String)>) {
        let this = self.clone();
        let shutdown = self.shutdown.clone();
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = (Some(path.clone()), env.clone());
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = std::fs::read(&path).ok();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = std::fs::read(&path).ok();
                // A file being written may be empty for an instant: wait for content.
                if now.as_ref().is_none_or(|n| n.is_empty()) {
                    continue;
                }
                {
                    let mut seen = this.seen.lock().unwrap_or_else(|e| e.into_inner());
                    if *seen == now {
                        continue;
                    }
                    *seen = now;
                }
                tracing::info!("[reload] {} changed", path.display());
                this.reload_file(&path, env.clone()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_ignore_lines_and_comments() {
        let a = "logLevel: info\nrtmpAddress: :1935\npaths:\n  a:\n";
        let b = "# a comment\nlogLevel: debug\n\nrtmpAddress: :1935\npaths:\n  a:\nhls: no\n";
        assert_eq!(changed_keys(Some(a), Some(b)), ["logLevel", "hls"]);
        assert!(changed_keys(Some(a), Some(a)).is_empty());
    }
}
