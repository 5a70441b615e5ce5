//! TCP listeners a reload can move: when a listener's address key (`rtmpAddress`,
//! `hlsAddress`, `apiAddress`, …) changes, the new address is bound first (a failure leaves
//! the old listener as it is, logged), its accept loop started, and only then the old
//! listener closed: the move is logged once the old accept loop has ended (so the old address
//! refuses from then on). Connections accepted by the old one go on: only accepting moves.
//! UDP sockets (SRT, WebRTC, RTP/RTCP) are not moved: a changed UDP address is named as
//! needing a restart.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Starts an accept loop on a listener; it stops accepting (and drops the listener) when the
/// token is cancelled. Its task (the accept loop alone: connections have tasks of their own).
pub(crate) type Spawn =
    Box<dyn Fn(TcpListener, CancellationToken) -> tokio::task::JoinHandle<()> + Send + Sync>;

struct Rebindable {
    key: &'static str,
    name: &'static str,
    configured: SocketAddr,
    stop: CancellationToken,
    accepting: Option<tokio::task::JoinHandle<()>>,
    spawn: Spawn,
}

/// The server's movable listeners.
#[derive(Default)]
pub struct Listeners {
    list: Mutex<Vec<Rebindable>>,
}

/// The address `key` gives in `c`, if its listener is enabled there.
pub(crate) fn address(c: &Config, key: &str) -> Option<SocketAddr> {
    let rtmps = c.rtmp && c.rtmp_encryption != crate::config::Encryption::No;
    let rtsps = c.rtsp && c.rtsp_encryption != crate::config::Encryption::No;
    let (on, addr) = match key {
        "apiAddress" => (c.api, c.api_address),
        "metricsAddress" => (c.metrics, c.metrics_address),
        "pprofAddress" => (c.pprof, c.pprof_address),
        "playbackAddress" => (c.playback, c.playback_address),
        "hlsAddress" => (c.hls, c.hls_address),
        "webrtcAddress" => (c.webrtc, c.webrtc_address),
        "rtmpAddress" => (
            c.rtmp && c.rtmp_encryption != crate::config::Encryption::Strict,
            c.rtmp_address,
        ),
        "rtmpsAddress" => (rtmps, c.rtmps_address),
        "rtspAddress" => (
            c.rtsp && c.rtsp_encryption != crate::config::Encryption::Strict,
            c.rtsp_address,
        ),
        "rtspsAddress" => (rtsps, c.rtsps_address),
        _ => (false, c.api_address),
    };
    on.then_some(addr)
}

impl Listeners {
    /// Starts `spawn` on `listener` and keeps it movable under `key`.
    pub(crate) fn start(
        &self,
        key: &'static str,
        name: &'static str,
        configured: SocketAddr,
        listener: TcpListener,
        shutdown: &CancellationToken,
        spawn: Spawn,
    ) {
        let stop = shutdown.child_token();
        let accepting = Some(spawn(listener, stop.clone()));
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Rebindable {
                key,
                name,
                configured,
                stop,
                accepting,
                spawn,
            });
    }

    /// Moves every listener whose address changed in `new`. Returns the keys it handled
    /// (moved, or not movable with the error logged) so the reload does not name them as
    /// needing a restart; and what moved, as (listener, from, to).
    pub(crate) async fn apply(
        &self,
        new: &Config,
        shutdown: &CancellationToken,
    ) -> (
        Vec<&'static str>,
        Vec<(&'static str, SocketAddr, SocketAddr)>,
    ) {
        let wanted: Vec<(usize, &'static str, &'static str, SocketAddr, SocketAddr)> = self
            .list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let to = address(new, r.key)?;
                (to != r.configured).then_some((i, r.key, r.name, r.configured, to))
            })
            .collect();
        let (mut handled, mut moved) = (Vec::new(), Vec::new());
        for (i, key, name, from, to) in wanted {
            handled.push(key);
            let listener = match tidegate_core::handover::tcp(name, to) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(
                        "[reload] {key}: cannot listen on {to}: {e}; [{name}] stays on {from}"
                    );
                    continue;
                }
            };
            let local = listener.local_addr().unwrap_or(to);
            let old = {
                let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
                let Some(r) = list.get_mut(i) else { continue };
                let stop = shutdown.child_token();
                let accepting = (r.spawn)(listener, stop.clone());
                r.stop.cancel();
                r.stop = stop;
                r.configured = to;
                r.accepting.replace(accepting)
            };
            // The old accept loop returns as soon as it sees its token cancelled, dropping
            // the old listener; bounded all the same.
            if let Some(old) = old {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), old).await;
            }
            tracing::info!(
                "[reload] [{name}] listener moved from {from} to {local}; open connections are kept"
            );
            moved.push((name, from, local));
        }
        (handled, moved)
    }

    /// Stops accepting on every listener (a new process took them over).
    pub(crate) fn stop_all(&self) {
        for r in self.list.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            r.stop.cancel();
        }
    }

    /// Stops accepting on every listener but the control surfaces' (API, metrics, pprof), so
    /// that probes and scrapes go on; connections already accepted go on too.
    pub(crate) fn stop_clients(&self) {
        for r in self.list.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !matches!(r.key, "apiAddress" | "metricsAddress" | "pprofAddress") {
                r.stop.cancel();
            }
        }
    }
}
