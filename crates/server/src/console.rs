//! The built-in console: one HTML page with a small script on the API listener (`/` and
//! `/console`), behind the `api` permission like the rest of the API. It draws what the API
//! already serves (`/v3/paths/list`, `/v3/keys/*`) and two things of its own:
//!
//! - `GET /v3/console/info`: where the players are (HLS and WebRTC listeners' ports and
//!   schemes) and the ingest listeners, for the preview and the publish URLs;
//! - `GET /v3/console/history`: the last five minutes, sampled every two seconds by one task:
//!   each path's inbound and outbound bitrate and readers, and each egress's mean latency
//!   (ingest to the readers' sockets) over each interval.
//!
//! No front-end build step: the page is plain HTML, CSS and script, embedded in the binary.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tidegate_core::PathManager;
use tokio_util::sync::CancellationToken;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
pub const KEEP: usize = 150;

const PAGE: &str = include_str!("console.html");

/// A listener the console links to.
#[derive(Clone, Debug, Serialize)]
pub struct Listener {
    pub port: u16,
    /// `http`, `https`, `rtmp`, `rtmps`, `rtsp`, `rtsps`, `srt`.
    pub scheme: &'static str,
}

/// The listeners the page needs, by name (`hls`, `webrtc`, `rtmp`, …).
pub type Listeners = BTreeMap<&'static str, Listener>;

/// One sample: per path (inbound kbit/s, outbound kbit/s, readers; no rates in a path's
/// first sample), per egress the mean latency in ms over the interval (None: nothing sent).
struct Sample {
    unix_ms: u64,
    paths: BTreeMap<String, (Option<f64>, Option<f64>, usize)>,
    latency: Vec<Option<f64>>,
}

/// What the sampler keeps.
#[derive(Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

/// The console's state: the history and the listeners.
#[derive(Clone)]
pub struct Console {
    history: Arc<Mutex<History>>,
    listeners: Arc<Listeners>,
}

/// The egresses whose latency is drawn, and where each histogram is.
fn latency_sources(
    webrtc: &Option<tidegate_webrtc::WebRtc>,
) -> Vec<(&'static str, (u64, f64), bool)> {
    let mut v: Vec<(&'static str, (u64, f64), bool)> = tidegate_core::latency::EGRESSES
        .iter()
        .filter_map(|e| {
            tidegate_core::latency::egress(e).map(|h| {
                let (_, count, sum) = h.snapshot();
                (*e, (count, sum), true)
            })
        })
        .collect();
    match webrtc {
        Some(w) => {
            let (_, count, sum) = w.egress_latency().snapshot();
            v.push(("webrtc", (count, sum), true));
        }
        None => v.push(("webrtc", (0, 0.0), false)),
    }
    v
}

impl Console {
    /// Starts the sampler; it ends with `shutdown`.
    pub fn start(
        paths: PathManager,
        webrtc: Option<tidegate_webrtc::WebRtc>,
        listeners: Listeners,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Console {
        let console = Console {
            history: Arc::new(Mutex::new(History::default())),
            listeners: Arc::new(listeners),
        };
        let history = console.history.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Previous totals: per path (received, sent), per egress (count, sum).
            let mut last_paths: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            let mut last_latency = latency_sources(&webrtc);
            let mut last_at = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = tokio::time::Instant::now();
                let secs = now.duration_since(last_at).as_secs_f64().max(0.001);
                last_at = now;
                let mut sample = Sample {
                    unix_ms: SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    paths: BTreeMap::new(),
                    latency: Vec::new(),
                };
                let mut totals = BTreeMap::new();
                for p in paths.list() {
                    let (rx, tx) = (p.bytes_received, p.bytes_sent);
                    let prev = last_paths.get(&p.name).copied();
                    let kbps = |a: u64, b: u64| a.saturating_sub(b) as f64 * 8.0 / 1000.0 / secs;
                    sample.paths.insert(
                        p.name.clone(),
                        (
                            prev.map(|(prx, _)| kbps(rx, prx)),
                            prev.map(|(_, ptx)| kbps(tx, ptx)),
                            p.readers.len(),
                        ),
                    );
                    totals.insert(p.name, (rx, tx));
                }
                last_paths = totals;
                let latency = latency_sources(&webrtc);
                for ((_, (c, s), on), (_, (pc, ps), _)) in latency.iter().zip(&last_latency) {
                    let n = c.saturating_sub(*pc);
                    sample.latency.push(if *on && n > 0 {
                        Some((s - ps) / n as f64 * 1000.0)
                    } else {
                        None
                    });
                }
                last_latency = latency;
                let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                if h.samples.len() == KEEP {
                    h.samples.pop_front();
                }
                h.samples.push_back(sample);
            }
        });
        console
    }

    /// `/`, `/console` and the console's two API routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/console", get(page))
            .route("/v3/console/info", get(info))
            .route("/v3/console/history", get(history))
            .with_state(self.clone())
    }
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Only this page's own script and the players it frames.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src 'self' data:; frame-src http: https:; connect-src 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    version: &'static str,
    listeners: Arc<Listeners>,
    interval_ms: u64,
}

async fn info(State(c): State<Console>) -> Json<Info> {
    Json(Info {
        version: concat!("v", env!("CARGO_PKG_VERSION")),
        listeners: c.listeners.clone(),
        interval_ms: INTERVAL.as_millis() as u64,
    })
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct PathSeries {
    inbound_kbps: Vec<Option<f64>>,
    outbound_kbps: Vec<Option<f64>>,
    readers: Vec<Option<usize>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryJson {
    interval_ms: u64,
    /// Sample times, Unix milliseconds.
    times: Vec<u64>,
    paths: BTreeMap<String, PathSeries>,
    /// Mean latency (ms) per egress and interval; null where nothing was sent.
    latency_ms: BTreeMap<&'static str, Vec<Option<f64>>>,
}

fn render(h: &History) -> HistoryJson {
    let n = h.samples.len();
    let mut paths: BTreeMap<String, PathSeries> = BTreeMap::new();
    let names: Vec<&'static str> = tidegate_core::latency::EGRESSES
        .iter()
        .copied()
        .chain(std::iter::once("webrtc"))
        .collect();
    let mut latency: BTreeMap<&'static str, Vec<Option<f64>>> =
        names.iter().map(|e| (*e, Vec::with_capacity(n))).collect();
    for (i, s) in h.samples.iter().enumerate() {
        for (name, (rx, tx, readers)) in &s.paths {
            let e = paths.entry(name.clone()).or_insert_with(|| PathSeries {
                inbound_kbps: vec![None; i],
                outbound_kbps: vec![None; i],
                readers: vec![None; i],
            });
            e.inbound_kbps.push(rx.map(|v| (v * 10.0).round() / 10.0));
            e.outbound_kbps.push(tx.map(|v| (v * 10.0).round() / 10.0));
            e.readers.push(Some(*readers));
        }
        // Paths absent from this sample get a gap.
        for e in paths.values_mut() {
            for v in [&mut e.inbound_kbps, &mut e.outbound_kbps] {
                if v.len() < i + 1 {
                    v.push(None);
                }
            }
            if e.readers.len() < i + 1 {
                e.readers.push(None);
            }
        }
        for (j, name) in names.iter().enumerate() {
            let v = s.latency.get(j).copied().flatten();
            if let Some(l) = latency.get_mut(name) {
                l.push(v.map(|ms| (ms * 100.0).round() / 100.0));
            }
        }
    }
    HistoryJson {
        interval_ms: INTERVAL.as_millis() as u64,
        times: h.samples.iter().map(|s| s.unix_ms).collect(),
        paths,
        latency_ms: latency,
    }
}

async fn history(State(c): State<Console>) -> Json<HistoryJson> {
    let h = c.history.lock().unwrap_or_else(|e| e.into_inner());
    Json(render(&h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: u64, paths: &[(&str, f64)]) -> Sample {
        Sample {
            unix_ms: t,
            paths: paths
                .iter()
                .map(|(n, k)| (n.to_string(), (Some(*k), Some(*k * 2.0), 1)))
                .collect(),
            latency: vec![Some(1.5), None, None, None, None],
        }
    }

    #[test]
    fn series_are_aligned_with_gaps_where_a_path_was_absent() {
        let mut h = History::default();
        h.samples.push_back(sample(1, &[("a", 10.0)]));
        h.samples.push_back(sample(2, &[("a", 11.0), ("b", 5.0)]));
        h.samples.push_back(sample(3, &[("b", 6.0)]));
        let j = render(&h);
        assert_eq!(j.times, vec![1, 2, 3]);
        assert_eq!(
            j.paths["a"].inbound_kbps,
            vec![Some(10.0), Some(11.0), None]
        );
        assert_eq!(j.paths["b"].inbound_kbps, vec![None, Some(5.0), Some(6.0)]);
        assert_eq!(
            j.paths["b"].outbound_kbps,
            vec![None, Some(10.0), Some(12.0)]
        );
        assert_eq!(j.paths["a"].readers, vec![Some(1), Some(1), None]);
        assert_eq!(j.latency_ms["rtmp"], vec![Some(1.5); 3]);
        assert_eq!(j.latency_ms["webrtc"], vec![None; 3]);
        for s in j.paths.values() {
            assert_eq!(s.inbound_kbps.len(), 3);
            assert_eq!(s.readers.len(), 3);
        }
    }
}
