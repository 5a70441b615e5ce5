//! Hooks: commands run on the server's events, with MediaMTX's names and environment
//! (`runOnConnect`, `runOnInit`, `runOnDemand`, `runOnAvailable`, `runOnOnline`, `runOnRead`,
//! `runOnRecordSegment…`; docs/operations.md). A hook never holds up what triggered it: one
//! task takes the path and connection events and starts or ends commands; the commands run
//! on their own (see [`cmd`]). A command that lasts while its cause lasts (a reader reads) is
//! ended with SIGINT when the cause ends; its counterpart (`runOnUnread`) then runs once.
//!
//! Events come from broadcast channels: if this task falls behind and misses some, it
//! reconciles with the registries (who publishes, who reads, which connections are open), so a
//! command never outlives its cause.

pub mod cmd;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_core::{
    ConnEvent, ConnEventKind, PathConf, PathEvent, PathEventKind, PathManager, SessionId,
};
use tidegate_record::{Recorder, SegmentEventKind};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cmd::{HookStats, Runner, Running, Spec};

/// The ids of one listener's open connections, for reconciling after missed events.
pub trait ConnIds: Send + Sync {
    fn ids(&self) -> Vec<u64>;
}

impl<X: Default + Send + Sync + 'static> ConnIds for tidegate_core::ConnRegistry<X> {
    fn ids(&self) -> Vec<u64> {
        tidegate_core::ConnRegistry::ids(self)
    }
}

/// What every path hook gets, as in MediaMTX: `MTX_PATH` (and its old name `RTSP_PATH`),
/// `RTSP_PORT` when RTSP is served, and `G1`, `G2`, … for the capture groups of a `~regex` path.
pub fn path_env(paths: &PathManager, path: &str, rtsp_port: Option<u16>) -> Vec<(String, String)> {
    let mut env = vec![
        ("MTX_PATH".to_string(), path.to_string()),
        ("RTSP_PATH".to_string(), path.to_string()),
    ];
    if let Some(port) = rtsp_port {
        env.push(("RTSP_PORT".to_string(), port.to_string()));
    }
    if let Ok(m) = paths.find(path) {
        for (i, g) in m.captures.iter().enumerate().skip(1) {
            env.push((format!("G{i}"), g.clone()));
        }
    }
    env
}

/// The global hook settings.
#[derive(Clone, Debug, Default)]
pub struct GlobalHooks {
    pub run_on_connect: String,
    pub run_on_connect_restart: bool,
    pub run_on_disconnect: String,
}

/// Changes the hooks' settings (a reload).
#[derive(Clone)]
pub struct HooksHandle {
    tx: tokio::sync::mpsc::UnboundedSender<(GlobalHooks, Vec<PathConf>)>,
}

impl HooksHandle {
    /// New global hooks (for connections from now on) and exact-name paths: `runOnInit`
    /// commands of paths that are gone or whose command changed end, new ones start, the
    /// others go on.
    pub fn reconfigure(&self, global: GlobalHooks, exact: Vec<PathConf>) {
        let _ = self.tx.send((global, exact));
    }
}

/// Starts the hooks' task. `exact` are the configured exact-name paths (for `runOnInit`).
#[allow(clippy::too_many_arguments)]
pub fn start(
    runner: Runner,
    global: GlobalHooks,
    exact: Vec<PathConf>,
    paths: PathManager,
    conn_events: tokio::sync::broadcast::Receiver<ConnEvent>,
    conns: Vec<(&'static str, Arc<dyn ConnIds>)>,
    rtsp_port: Option<u16>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> HooksHandle {
    let mut state = State {
        runner,
        global,
        paths,
        rtsp_port,
        conns,
        init: HashMap::new(),
        conn: HashMap::new(),
        available: HashMap::new(),
        reads: HashMap::new(),
        demands: HashMap::new(),
    };
    state.apply_init(exact);
    let path_events = state.paths.events();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn(state.run(path_events, conn_events, rx, shutdown));
    HooksHandle { tx }
}

type Env = Vec<(String, String)>;

/// A command that lasts while its cause does, and the environment its counterpart gets.
struct Lasting {
    running: Option<Running>,
    env: Vec<(String, String)>,
    conf: Arc<PathConf>,
}

struct Available {
    session: SessionId,
    available: Option<Running>,
    online: Option<Running>,
    env: Vec<(String, String)>,
    conf: Arc<PathConf>,
}

struct Demand {
    running: Option<Running>,
    env: Vec<(String, String)>,
    conf: Arc<PathConf>,
    started: Instant,
    /// When it last had a reader.
    busy: Option<Instant>,
}

struct State {
    runner: Runner,
    global: GlobalHooks,
    paths: PathManager,
    rtsp_port: Option<u16>,
    conns: Vec<(&'static str, Arc<dyn ConnIds>)>,
    /// Held for the server's lifetime (or until a reload changes them): dropped (ended) at
    /// shutdown. With the command and restart flag they run with.
    init: HashMap<String, (String, bool, Running)>,
    conn: HashMap<(&'static str, u64), (Option<Running>, Env)>,
    available: HashMap<String, Available>,
    reads: HashMap<(String, SessionId), Lasting>,
    demands: HashMap<String, Demand>,
}

fn spec(
    what: &'static str,
    label: &str,
    command: &str,
    env: &[(String, String)],
    restart: bool,
) -> Spec {
    Spec {
        what,
        label: label.to_string(),
        command: command.to_string(),
        env: env.to_vec(),
        restart,
    }
}

impl State {
    /// Starts the `runOnInit` commands of `exact` that are not running as they are asked to,
    /// and ends the others.
    fn apply_init(&mut self, exact: Vec<PathConf>) {
        let wanted: HashMap<String, (String, bool)> = exact
            .into_iter()
            .filter(|c| !c.hooks.run_on_init.is_empty())
            .map(|c| (c.name, (c.hooks.run_on_init, c.hooks.run_on_init_restart)))
            .collect();
        self.init.retain(|name, (cmd, restart, _)| {
            wanted
                .get(name)
                .is_some_and(|(c, r)| c == cmd && r == restart)
        });
        for (name, (command, restart)) in wanted {
            if self.init.contains_key(&name) {
                continue;
            }
            let env = path_env(&self.paths, &name, self.rtsp_port);
            let running = self.runner.start(Spec {
                what: "runOnInit",
                label: name.clone(),
                command: command.clone(),
                env,
                restart,
            });
            self.init.insert(name, (command, restart, running));
        }
    }

    async fn run(
        mut self,
        mut path_events: tokio::sync::broadcast::Receiver<PathEvent>,
        mut conn_events: tokio::sync::broadcast::Receiver<ConnEvent>,
        mut reconfigure: tokio::sync::mpsc::UnboundedReceiver<(GlobalHooks, Vec<PathConf>)>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = path_events.recv() => match ev {
                    Ok(ev) => self.on_path(ev),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("[hook] {n} path events missed: reconciling");
                        self.reconcile_paths();
                    }
                    Err(RecvError::Closed) => return,
                },
                ev = conn_events.recv() => match ev {
                    Ok(ev) => self.on_conn(ev),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("[hook] {n} connection events missed: reconciling");
                        self.reconcile_conns();
                    }
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
                _ = tick.tick() => self.check_demands(),
                Some((global, exact)) = reconfigure.recv() => {
                    self.global = global;
                    self.apply_init(exact);
                }
            }
        }
    }

    fn on_path(&mut self, ev: PathEvent) {
        match ev.kind {
            PathEventKind::Ready => {
                self.available_start(&ev.path, ev.session, ev.session_kind, &ev.query)
            }
            PathEventKind::NotReady => self.available_end(&ev.path, Some(ev.session)),
            PathEventKind::ReaderAdded => {
                self.read_start(&ev.path, ev.session, ev.session_kind, &ev.query)
            }
            PathEventKind::ReaderRemoved => self.read_end(&ev.path, ev.session),
            PathEventKind::Demand => self.demand_start(&ev.path, &ev.query),
        }
    }

    fn conf(&self, path: &str) -> Option<Arc<PathConf>> {
        self.paths.find(path).ok().map(|m| m.conf)
    }

    fn available_start(&mut self, path: &str, session: SessionId, kind: &str, query: &str) {
        if self
            .available
            .get(path)
            .is_some_and(|a| a.session == session)
        {
            return; // The same publisher declared new tracks.
        }
        self.available_end(path, None);
        let Some(conf) = self.conf(path) else { return };
        let h = &conf.hooks;
        if h.run_on_available.is_empty()
            && h.run_on_unavailable.is_empty()
            && h.run_on_online.is_empty()
            && h.run_on_offline.is_empty()
        {
            return;
        }
        let mut env = path_env(&self.paths, path, self.rtsp_port);
        env.push(("MTX_QUERY".into(), cmd::query_escape(query)));
        env.push(("MTX_SOURCE_TYPE".into(), kind.to_string()));
        env.push(("MTX_SOURCE_ID".into(), session.to_string()));
        let start = |what, command: &String, restart| {
            (!command.is_empty())
                .then(|| self.runner.start(spec(what, path, command, &env, restart)))
        };
        let available = start(
            "runOnAvailable",
            &h.run_on_available,
            h.run_on_available_restart,
        );
        let online = start("runOnOnline", &h.run_on_online, h.run_on_online_restart);
        self.available.insert(
            path.to_string(),
            Available {
                session,
                available,
                online,
                env,
                conf: conf.clone(),
            },
        );
    }

    /// Ends the path's available/online commands (if `session` is the one they are about)
    /// and runs `runOnUnavailable` and `runOnOffline`.
    fn available_end(&mut self, path: &str, session: Option<SessionId>) {
        let Some(a) = self.available.get(path) else {
            return;
        };
        if session.is_some_and(|s| s != a.session) {
            return;
        }
        let Some(a) = self.available.remove(path) else {
            return;
        };
        drop((a.available, a.online));
        let h = &a.conf.hooks;
        if !h.run_on_unavailable.is_empty() {
            self.runner.once(spec(
                "runOnUnavailable",
                path,
                &h.run_on_unavailable,
                &a.env,
                false,
            ));
        }
        if !h.run_on_offline.is_empty() {
            self.runner
                .once(spec("runOnOffline", path, &h.run_on_offline, &a.env, false));
        }
    }

    fn read_start(&mut self, path: &str, session: SessionId, kind: &str, query: &str) {
        let Some(conf) = self.conf(path) else { return };
        let h = &conf.hooks;
        if h.run_on_read.is_empty() && h.run_on_unread.is_empty() {
            return;
        }
        let mut env = path_env(&self.paths, path, self.rtsp_port);
        env.push(("MTX_QUERY".into(), cmd::query_escape(query)));
        env.push(("MTX_READER_TYPE".into(), kind.to_string()));
        env.push(("MTX_READER_ID".into(), session.to_string()));
        let running = (!h.run_on_read.is_empty()).then(|| {
            self.runner.start(spec(
                "runOnRead",
                path,
                &h.run_on_read,
                &env,
                h.run_on_read_restart,
            ))
        });
        self.reads.insert(
            (path.to_string(), session),
            Lasting {
                running,
                env,
                conf: conf.clone(),
            },
        );
    }

    fn read_end(&mut self, path: &str, session: SessionId) {
        let Some(r) = self.reads.remove(&(path.to_string(), session)) else {
            return;
        };
        drop(r.running);
        if !r.conf.hooks.run_on_unread.is_empty() {
            self.runner.once(spec(
                "runOnUnread",
                path,
                &r.conf.hooks.run_on_unread,
                &r.env,
                false,
            ));
        }
    }

    fn demand_start(&mut self, path: &str, query: &str) {
        if self.demands.contains_key(path) {
            return;
        }
        let Some(conf) = self.conf(path) else { return };
        let h = &conf.hooks;
        if h.run_on_demand.is_empty() || conf.source != "publisher" {
            return;
        }
        let mut env = path_env(&self.paths, path, self.rtsp_port);
        env.push(("MTX_QUERY".into(), cmd::query_escape(query)));
        let running = self.runner.start(spec(
            "runOnDemand",
            path,
            &h.run_on_demand,
            &env,
            h.run_on_demand_restart,
        ));
        self.demands.insert(
            path.to_string(),
            Demand {
                running: Some(running),
                env,
                conf: conf.clone(),
                started: Instant::now(),
                busy: None,
            },
        );
    }

    /// Ends on-demand commands: `runOnDemandCloseAfter` after their last reader left, or
    /// when nobody published within `runOnDemandStartTimeout` and nobody reads.
    fn check_demands(&mut self) {
        if self.demands.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut end = Vec::new();
        for (name, d) in self.demands.iter_mut() {
            let info = self.paths.get(name);
            let readers = info.as_ref().is_some_and(|p| !p.readers.is_empty());
            let ready = info.as_ref().is_some_and(|p| p.ready);
            if readers {
                d.busy = Some(now);
                continue;
            }
            let h = &d.conf.hooks;
            let reason = match d.busy {
                Some(at) if now.duration_since(at) >= h.run_on_demand_close_after => {
                    "no readers any more"
                }
                None if !ready
                    && now.duration_since(d.started) >= h.run_on_demand_start_timeout =>
                {
                    "nobody published within runOnDemandStartTimeout"
                }
                None if ready
                    && now.duration_since(d.started)
                        >= h.run_on_demand_start_timeout + h.run_on_demand_close_after =>
                {
                    "no readers"
                }
                _ => continue,
            };
            end.push((name.clone(), reason));
        }
        for (name, reason) in end {
            if let Some(d) = self.demands.remove(&name) {
                tracing::info!(path = name, "[hook] runOnDemand ends: {reason}");
                drop(d.running);
                if !d.conf.hooks.run_on_un_demand.is_empty() {
                    self.runner.once(spec(
                        "runOnUnDemand",
                        &name,
                        &d.conf.hooks.run_on_un_demand,
                        &d.env,
                        false,
                    ));
                }
            }
        }
    }

    fn on_conn(&mut self, ev: ConnEvent) {
        let g = &self.global;
        if g.run_on_connect.is_empty() && g.run_on_disconnect.is_empty() {
            return;
        }
        let key = (ev.conn_type, ev.id);
        match ev.kind {
            ConnEventKind::Connected => self.conn_start(key),
            ConnEventKind::Disconnected => self.conn_end(key),
        }
    }

    fn conn_start(&mut self, key: (&'static str, u64)) {
        let mut env = Vec::new();
        if let Some(port) = self.rtsp_port {
            env.push(("RTSP_PORT".to_string(), port.to_string()));
        }
        env.push(("MTX_CONN_TYPE".into(), key.0.to_string()));
        env.push(("MTX_CONN_ID".into(), key.1.to_string()));
        let label = format!("{} {}", key.0, key.1);
        let g = &self.global;
        let running = (!g.run_on_connect.is_empty()).then(|| {
            self.runner.start(spec(
                "runOnConnect",
                &label,
                &g.run_on_connect,
                &env,
                g.run_on_connect_restart,
            ))
        });
        self.conn.insert(key, (running, env));
    }

    fn conn_end(&mut self, key: (&'static str, u64)) {
        let Some((running, env)) = self.conn.remove(&key) else {
            return;
        };
        drop(running);
        if !self.global.run_on_disconnect.is_empty() {
            let label = format!("{} {}", key.0, key.1);
            self.runner.once(spec(
                "runOnDisconnect",
                &label,
                &self.global.run_on_disconnect,
                &env,
                false,
            ));
        }
    }

    /// After missed path events: end what has no cause any more, start what has one.
    fn reconcile_paths(&mut self) {
        let list = self.paths.list();
        let mut sources = HashMap::new();
        let mut readers = HashSet::new();
        for p in &list {
            if let (true, Some((kind, id))) = (p.ready, p.source) {
                sources.insert(p.name.clone(), (kind, id));
            }
            for (kind, id) in &p.readers {
                readers.insert((p.name.clone(), *id, *kind));
            }
        }
        let stale: Vec<String> = self
            .available
            .iter()
            .filter(|(n, a)| sources.get(*n).is_none_or(|(_, id)| *id != a.session))
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            self.available_end(&n, None);
        }
        for (name, (kind, id)) in sources {
            if !self.available.contains_key(&name) {
                self.available_start(&name, id, kind, "");
            }
        }
        let gone: Vec<(String, SessionId)> = self
            .reads
            .keys()
            .filter(|(n, id)| !readers.iter().any(|(rn, rid, _)| rn == n && rid == id))
            .cloned()
            .collect();
        for (n, id) in gone {
            self.read_end(&n, id);
        }
        for (name, id, kind) in readers {
            if !self.reads.contains_key(&(name.clone(), id)) {
                self.read_start(&name, id, kind, "");
            }
        }
    }

    fn reconcile_conns(&mut self) {
        let g = &self.global;
        if g.run_on_connect.is_empty() && g.run_on_disconnect.is_empty() {
            return;
        }
        let mut open = HashSet::new();
        for (kind, reg) in &self.conns {
            for id in reg.ids() {
                open.insert((*kind, id));
            }
        }
        let gone: Vec<_> = self
            .conn
            .keys()
            .filter(|k| !open.contains(*k))
            .copied()
            .collect();
        for k in gone {
            self.conn_end(k);
        }
        for k in open {
            if !self.conn.contains_key(&k) {
                self.conn_start(k);
            }
        }
    }
}

/// `runOnRecordSegmentCreate` and `runOnRecordSegmentComplete`.
pub fn record_hooks(
    recorder: &Recorder,
    runner: Runner,
    paths: &PathManager,
    rtsp_port: Option<u16>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let paths = paths.clone();
    let mut events = recorder.events();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = shutdown.cancelled() => return,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("[hook] {n} segment events were missed");
                    continue;
                }
                Err(_) => return,
            };
            let (what, command) = match ev.kind {
                SegmentEventKind::Create => (
                    "runOnRecordSegmentCreate",
                    &ev.conf.record.run_on_segment_create,
                ),
                SegmentEventKind::Complete => (
                    "runOnRecordSegmentComplete",
                    &ev.conf.record.run_on_segment_complete,
                ),
            };
            if command.is_empty() {
                continue;
            }
            let mut env = path_env(&paths, &ev.path, rtsp_port);
            env.push(("MTX_SEGMENT_PATH".into(), ev.file.display().to_string()));
            if ev.kind == SegmentEventKind::Complete {
                // Seconds, the shortest form that reads back the same (`3600.021`).
                env.push((
                    "MTX_SEGMENT_DURATION".into(),
                    ev.duration.max(0.0).to_string(),
                ));
            }
            runner.once(spec(what, &ev.path, command, &env, false));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_get_the_path_its_groups_and_the_rtsp_port() {
        let conf = tidegate_core::PathConf {
            name: "~^cam(\\d+)/(main|sub)$".into(),
            ..Default::default()
        };
        let paths = tidegate_core::PathManager::new(
            tidegate_core::PathMatcher::new(vec![conf]).unwrap(),
            tidegate_core::StreamConfig::default(),
        );
        let env = path_env(&paths, "cam7/sub", Some(8554));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MTX_PATH"), Some("cam7/sub"));
        assert_eq!(get("RTSP_PATH"), Some("cam7/sub"));
        assert_eq!(get("RTSP_PORT"), Some("8554"));
        assert_eq!(get("G1"), Some("7"));
        assert_eq!(get("G2"), Some("sub"));
    }
}
