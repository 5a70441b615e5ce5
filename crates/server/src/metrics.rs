//! Prometheus metrics on `/metrics`, in the text exposition format. Names follow MediaMTX's
//! (`paths`, `paths_bytes_received`, …) so that existing dashboards keep working. The text is
//! rendered directly from the registry on each scrape: there is nothing to keep in sync.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

use tidegate_core::PathManager;

use crate::hooks::HookStats;

#[derive(Clone)]
struct MetricsState {
    paths: PathManager,
    hls: Option<tidegate_hls::Hls>,
    webrtc: Option<tidegate_webrtc::WebRtc>,
    recorder: tidegate_record::Recorder,
    hooks: Arc<HookStats>,
    webhooks: Arc<crate::webhooks::Webhooks>,
}

pub fn router(
    paths: PathManager,
    hls: Option<tidegate_hls::Hls>,
    webrtc: Option<tidegate_webrtc::WebRtc>,
    recorder: tidegate_record::Recorder,
    hooks: Arc<HookStats>,
    webhooks: Arc<crate::webhooks::Webhooks>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(MetricsState {
            paths,
            hls,
            webrtc,
            recorder,
            hooks,
            webhooks,
        })
}

/// Hooks: Tidegate's own counters.
pub fn render_hooks(h: &HookStats, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    for (name, help, kind, v) in [
        (
            "tidegate_hooks_started_total",
            "hook commands started (each restart counts)",
            "counter",
            h.started.load(Relaxed),
        ),
        (
            "tidegate_hooks_failed_total",
            "hook commands that could not start or exited with a failure status",
            "counter",
            h.failed.load(Relaxed),
        ),
        (
            "tidegate_hooks_refused_total",
            "hooks not started because too many hook commands were running",
            "counter",
            h.refused.load(Relaxed),
        ),
        (
            "tidegate_hooks_running",
            "hook commands running now",
            "gauge",
            h.running.load(Relaxed) as u64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {v}");
    }
}

/// Recording: Tidegate's own counters.
pub fn render_record(r: &tidegate_record::Recorder, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = r.stats();
    for (name, help, kind, v) in [
        (
            "tidegate_record_paths",
            "paths being recorded now",
            "gauge",
            r.recording().len() as u64,
        ),
        (
            "tidegate_record_bytes_written_total",
            "bytes of media parts written to recordings",
            "counter",
            s.bytes_written.load(Relaxed),
        ),
        (
            "tidegate_record_parts_dropped_total",
            "recording parts dropped because the disk did not keep up",
            "counter",
            s.parts_dropped.load(Relaxed),
        ),
        (
            "tidegate_record_errors_total",
            "segment files that could not be created or written",
            "counter",
            s.errors.load(Relaxed),
        ),
        (
            "tidegate_record_segments_deleted_total",
            "segments deleted by retention or the API",
            "counter",
            s.segments_deleted.load(Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {v}");
    }
}

/// Webhooks: Tidegate's own, by URL.
pub fn render_webhooks(w: &crate::webhooks::Webhooks, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    type Get = fn(&crate::webhooks::Webhook) -> u64;
    let families: [(&str, &str, &str, Get); 5] = [
        (
            "tidegate_webhook_delivered_total",
            "counter",
            "events a webhook's receiver accepted",
            |h| h.stats.delivered.load(Relaxed),
        ),
        (
            "tidegate_webhook_failed_attempts_total",
            "counter",
            "delivery attempts that failed (each retry counts)",
            |h| h.stats.failed_attempts.load(Relaxed),
        ),
        (
            "tidegate_webhook_given_up_total",
            "counter",
            "events the receiver refused until they were given up",
            |h| h.stats.given_up.load(Relaxed),
        ),
        (
            "tidegate_webhook_dropped_total",
            "counter",
            "events dropped because the webhook's queue was full",
            |h| h.stats.dropped.load(Relaxed),
        ),
        (
            "tidegate_webhook_queued",
            "gauge",
            "events waiting for delivery",
            |h| h.queued() as u64,
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for h in &w.hooks {
            let _ = writeln!(out, "{name}{{url=\"{}\"}} {}", label(&h.conf.url), get(h));
        }
    }
}

/// WebRTC: `webrtc_sessions` (MediaMTX's name) and the egress latency histogram (ours).
pub fn render_webrtc(w: &tidegate_webrtc::WebRtc, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP webrtc_sessions WebRTC sessions (WHIP and WHEP)"
    );
    let _ = writeln!(out, "# TYPE webrtc_sessions gauge");
    let _ = writeln!(out, "webrtc_sessions {}", w.sessions().list().len());
    let (buckets, count, sum) = w.egress_latency().snapshot();
    let name = "webrtc_egress_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} time from a frame entering the gateway to its packets leaving for a WHEP viewer"
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, n) in tidegate_webrtc::LATENCY_BUCKETS.iter().zip(&buckets) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HLS muxers as MediaMTX names them: `hls_muxers` and `hls_muxers_bytes_sent`, by path.
pub fn render_hls(hls: &tidegate_hls::Hls, out: &mut String) {
    let muxers = hls.muxers();
    let _ = writeln!(out, "# HELP hls_muxers 1 for every HLS muxer");
    let _ = writeln!(out, "# TYPE hls_muxers gauge");
    for m in &muxers {
        let _ = writeln!(out, "hls_muxers{{name=\"{}\"}} 1", label(&m.path));
    }
    let _ = writeln!(
        out,
        "# HELP hls_muxers_bytes_sent bytes an HLS muxer has served"
    );
    let _ = writeln!(out, "# TYPE hls_muxers_bytes_sent counter");
    for m in &muxers {
        let _ = writeln!(
            out,
            "hls_muxers_bytes_sent{{name=\"{}\"}} {}",
            label(&m.path),
            m.bytes_sent
        );
    }
}

pub fn render(paths: &PathManager) -> String {
    let list = paths.list();
    let mut out = String::new();
    let families: [(&str, &str, &str); 5] = [
        ("paths", "gauge", "1 for every path, with its state"),
        (
            "paths_bytes_received",
            "counter",
            "bytes received from the path's publisher",
        ),
        (
            "paths_bytes_sent",
            "counter",
            "bytes sent to the path's readers",
        ),
        ("paths_readers", "gauge", "readers of the path"),
        (
            "paths_reader_skips",
            "counter",
            "times a reader fell behind and skipped to a keyframe",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for p in &list {
            let state = if p.ready { "ready" } else { "notReady" };
            let value = match i {
                0 => 1,
                1 => p.bytes_received,
                2 => p.bytes_sent,
                3 => p.readers.len() as u64,
                _ => p.reader_skips,
            };
            let _ = writeln!(
                out,
                "{name}{{name=\"{}\",state=\"{state}\"}} {value}",
                label(&p.name)
            );
        }
    }
    out
}

async fn metrics(State(state): State<MetricsState>) -> impl IntoResponse {
    let mut text = render(&state.paths);
    if let Some(hls) = &state.hls {
        render_hls(hls, &mut text);
    }
    render_record(&state.recorder, &mut text);
    render_hooks(&state.hooks, &mut text);
    render_webhooks(&state.webhooks, &mut text);
    if let Some(w) = &state.webrtc {
        render_webrtc(w, &mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
