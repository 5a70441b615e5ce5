//! Prometheus metrics on `/metrics`, in the text exposition format. Names follow MediaMTX's
//! (`paths`, `paths_bytes_received`, …) so that existing dashboards keep working. The text is
//! rendered directly from the registry on each scrape: there is nothing to keep in sync.

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

use tidegate_core::PathManager;

use crate::api::{ApiState, ConnExtra};
use crate::hooks::HookStats;

#[derive(Clone)]
struct MetricsState {
    api: ApiState,
    hls_on: bool,
    webrtc: Option<tidegate_webrtc::WebRtc>,
    hooks: Arc<HookStats>,
}

pub fn router(
    api: ApiState,
    hls_on: bool,
    webrtc: Option<tidegate_webrtc::WebRtc>,
    hooks: Arc<HookStats>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(MetricsState {
            api,
            hls_on,
            webrtc,
            hooks,
        })
}

/// `msRTT` → `ms_rtt`, `packetsSentNAK` → `packets_sent_nak`: the API's camelCase names as
/// MediaMTX's metric suffixes.
pub fn snake(camel: &str) -> String {
    let c: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, ch) in c.iter().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            let prev = c[i - 1];
            let next_lower = c.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('_');
            }
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// Writes `# HELP` and `# TYPE`.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// MediaMTX's `?type=` and `?path=` filters.
pub struct Filter {
    kind: Option<String>,
    path: Option<String>,
}

impl Filter {
    fn kind(&self, k: &str) -> bool {
        self.kind.as_deref().is_none_or(|t| t == k)
    }

    fn path(&self, p: &str) -> bool {
        self.path.as_deref().is_none_or(|x| x == p)
    }
}

/// The async runtime's own counters: a task that outlives its session shows here first
/// (`cargo xtask soak` watches it).
fn render_runtime(out: &mut String) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let m = handle.metrics();
    family(
        out,
        "tidegate_runtime_alive_tasks",
        "gauge",
        "Tasks alive in the async runtime.",
    );
    let _ = writeln!(out, "tidegate_runtime_alive_tasks {}", m.num_alive_tasks());
    family(
        out,
        "tidegate_runtime_workers",
        "gauge",
        "Worker threads of the async runtime.",
    );
    let _ = writeln!(out, "tidegate_runtime_workers {}", m.num_workers());
}

/// One connection registry as MediaMTX's `<prefix>{id,path,remoteAddr,state}` families (or
/// `{id}` only, for RTSP connections), with the protocol's own figures.
fn render_conns<X: ConnExtra>(
    out: &mut String,
    prefix: &str,
    reg: &tidegate_core::ConnRegistry<X>,
    session_labels: bool,
    extra: bool,
    filter: &Filter,
) {
    let list: Vec<_> = reg
        .list()
        .into_iter()
        .filter(|c| !session_labels || filter.path(&c.path))
        .collect();
    let labels = |c: &tidegate_core::ConnInfo<X>| {
        if session_labels {
            format!(
                "id=\"{}\",path=\"{}\",remoteAddr=\"{}\",state=\"{}\"",
                c.id,
                label(&c.path),
                c.remote,
                c.state.as_str()
            )
        } else {
            format!("id=\"{}\"", c.id)
        }
    };
    family(out, prefix, "gauge", "1 for every connection or session");
    for c in &list {
        let _ = writeln!(out, "{prefix}{{{}}} 1", labels(c));
    }
    for (suffix, help, get) in [
        (
            "inbound_bytes",
            "bytes received",
            (|c| c.bytes_received) as fn(&tidegate_core::ConnInfo<X>) -> u64,
        ),
        ("outbound_bytes", "bytes sent", |c| c.bytes_sent),
    ] {
        let name = format!("{prefix}_{suffix}");
        family(out, &name, "counter", help);
        for c in &list {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(c), get(c));
        }
    }
    if prefix == "srt_conns" {
        // MediaMTX's names for SRT's byte counters.
        for (name, get) in [
            (
                "srt_conns_bytes_received",
                (|c| c.bytes_received) as fn(&tidegate_core::ConnInfo<X>) -> u64,
            ),
            ("srt_conns_bytes_sent", |c| c.bytes_sent),
        ] {
            family(out, name, "counter", "bytes (MediaMTX's name)");
            for c in &list {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(c), get(c));
            }
        }
    }
    if session_labels {
        // Readers' lag and losses, where their egress reports them.
        type Get = fn(&tidegate_core::ReaderFigures) -> u64;
        let families: [(&str, &str, &str, Get); 4] = [
            (
                "outbound_frames_discarded",
                "counter",
                "media frames a reader lost by falling behind",
                |r| r.frames_discarded,
            ),
            (
                "outbound_skips",
                "counter",
                "times a reader fell behind and skipped to the next keyframe",
                |r| r.skips,
            ),
            (
                "outbound_queued_frames",
                "gauge",
                "media frames waiting for a reader's socket (its lag)",
                |r| r.queued_frames,
            ),
            (
                "outbound_queued_bytes",
                "gauge",
                "bytes waiting for a reader's socket",
                |r| r.queued_bytes,
            ),
        ];
        for (suffix, kind, help, get) in families {
            let name = format!("{prefix}_{suffix}");
            family(out, &name, kind, help);
            for c in &list {
                if let Some(r) = &c.reader {
                    let _ = writeln!(out, "{name}{{{}}} {}", labels(c), get(r));
                }
            }
        }
    }
    if !extra {
        return;
    }
    // The protocol's figures, one family each, in the order the first entry gives them.
    let figures: Vec<(String, Vec<(String, f64)>)> = list
        .iter()
        .map(|c| (labels(c), c.extra.metrics(c.state)))
        .collect();
    let mut names: Vec<String> = Vec::new();
    for (_, f) in &figures {
        for (k, _) in f {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    for k in names {
        let name = format!("{prefix}_{k}");
        family(
            out,
            &name,
            "gauge",
            "as in MediaMTX (see docs/operations.md)",
        );
        for (l, f) in &figures {
            if let Some((_, v)) = f.iter().find(|(n, _)| *n == k) {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
    }
}

/// Pushes (`push:`) as MediaMTX's forward destinations.
fn render_forwards(out: &mut String, relays: &crate::relays::Relays, filter: &Filter) {
    use std::sync::atomic::Ordering::Relaxed;
    let all: Vec<_> = relays
        .all_pushes()
        .into_iter()
        .filter(|(p, _)| filter.path(p))
        .collect();
    let labels = |i: usize, p: &str, r: &tidegate_rtmp::RelayStatus| {
        let protocol = r.url.split("://").next().unwrap_or("");
        format!(
            "id=\"{i}\",path=\"{}\",protocol=\"{protocol}\",state=\"{}\"",
            label(p),
            r.state()
        )
    };
    family(
        out,
        "forward_dests",
        "gauge",
        "1 for every push destination",
    );
    for (i, (p, r)) in all.iter().enumerate() {
        let _ = writeln!(out, "forward_dests{{{}}} 1", labels(i, p, r));
    }
    family(
        out,
        "forward_dests_outbound_bytes",
        "counter",
        "bytes sent to the destination",
    );
    for (i, (p, r)) in all.iter().enumerate() {
        let _ = writeln!(
            out,
            "forward_dests_outbound_bytes{{{}}} {}",
            labels(i, p, r),
            r.bytes.load(Relaxed)
        );
    }
}

/// `tidegate_egress_latency_seconds{egress}`: ingest to the readers' sockets, per egress.
fn render_latency(out: &mut String) {
    let name = "tidegate_egress_latency_seconds";
    family(
        out,
        name,
        "histogram",
        "time from a frame entering the gateway to its bytes being handed to the readers of an egress",
    );
    for egress in tidegate_core::latency::EGRESSES {
        let Some(h) = tidegate_core::latency::egress(egress) else {
            continue;
        };
        let (buckets, count, sum) = h.snapshot();
        for (le, n) in tidegate_core::latency::LATENCY_BUCKETS.iter().zip(&buckets) {
            let _ = writeln!(out, "{name}_bucket{{egress=\"{egress}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{egress=\"{egress}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "{name}_sum{{egress=\"{egress}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{egress=\"{egress}\"}} {count}");
    }
}

/// Families of one unlabelled sample each: (name, help, type, value).
fn scalars(out: &mut String, rows: &[(&str, &str, &str, u64)]) {
    for (name, help, kind, v) in rows {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
}

/// Hooks: Tidegate's own counters.
pub fn render_hooks(h: &HookStats, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    scalars(
        out,
        &[
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
        ],
    );
}

/// Recording: Tidegate's own counters.
pub fn render_record(r: &tidegate_record::Recorder, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = r.stats();
    scalars(
        out,
        &[
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
        ],
    );
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

/// WebRTC: the egress latency histogram (ours; `webrtc_sessions` are rendered with the
/// other sessions).
pub fn render_webrtc(w: &tidegate_webrtc::WebRtc, out: &mut String) {
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

/// HLS muxers as MediaMTX names them: `hls_muxers` and `hls_muxers_outbound_bytes` (and the
/// older `hls_muxers_bytes_sent`), by path.
pub fn render_hls(hls: &tidegate_hls::Hls, f: &Filter, out: &mut String) {
    let muxers: Vec<_> = hls
        .muxers()
        .into_iter()
        .filter(|m| f.path(&m.path))
        .collect();
    family(out, "hls_muxers", "gauge", "1 for every HLS muxer");
    for m in &muxers {
        let _ = writeln!(out, "hls_muxers{{name=\"{}\"}} 1", label(&m.path));
    }
    for name in ["hls_muxers_outbound_bytes", "hls_muxers_bytes_sent"] {
        family(out, name, "counter", "bytes an HLS muxer has served");
        for m in &muxers {
            let _ = writeln!(
                out,
                "{name}{{name=\"{}\"}} {}",
                label(&m.path),
                m.bytes_sent
            );
        }
    }
}

/// Paths: MediaMTX's `paths`, `paths_inbound_bytes`, `paths_outbound_bytes`,
/// `paths_inbound_frames_in_error`, `paths_readers{readerType}`, the older `paths_bytes_received` / `paths_bytes_sent`, and
/// Tidegate's `paths_reader_skips`.
pub fn render_paths(paths: &PathManager, f: &Filter, out: &mut String) {
    let list: Vec<_> = paths
        .list()
        .into_iter()
        .filter(|p| f.path(&p.name))
        .collect();
    let labels = |p: &tidegate_core::PathInfo| {
        let state = if p.ready { "ready" } else { "notReady" };
        format!("name=\"{}\",state=\"{state}\"", label(&p.name))
    };
    type Get = fn(&tidegate_core::PathInfo) -> u64;
    let families: [(&str, &str, &str, Get); 7] = [
        ("paths", "gauge", "1 for every path, with its state", |_| 1),
        (
            "paths_inbound_frames_in_error",
            "counter",
            "frames the ingest could not rebuild from damaged or incomplete input",
            |p| p.frames_in_error,
        ),
        (
            "paths_inbound_bytes",
            "counter",
            "bytes received from the path's publisher",
            |p| p.bytes_received,
        ),
        (
            "paths_outbound_bytes",
            "counter",
            "bytes sent to the path's readers",
            |p| p.bytes_sent,
        ),
        (
            "paths_bytes_received",
            "counter",
            "bytes received from the path's publisher (older name)",
            |p| p.bytes_received,
        ),
        (
            "paths_bytes_sent",
            "counter",
            "bytes sent to the path's readers (older name)",
            |p| p.bytes_sent,
        ),
        (
            "paths_reader_skips",
            "counter",
            "times a reader fell behind and skipped to a keyframe",
            |p| p.reader_skips,
        ),
    ];
    for (name, kind, help, get) in families {
        family(out, name, kind, help);
        for p in &list {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(p), get(p));
        }
    }
    family(
        out,
        "paths_readers",
        "gauge",
        "readers of the path, by reader type",
    );
    for p in &list {
        let mut kinds: Vec<&str> = p.readers.iter().map(|(k, _)| *k).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for k in kinds {
            let n = p.readers.iter().filter(|(r, _)| *r == k).count();
            let _ = writeln!(out, "paths_readers{{{},readerType=\"{k}\"}} {n}", labels(p));
        }
    }
}

async fn metrics(
    State(state): State<MetricsState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    let f = Filter {
        kind: q.get("type").cloned(),
        path: q.get("path").cloned(),
    };
    let a = &state.api;
    let mut text = String::new();
    if f.kind("paths") {
        render_paths(&a.paths, &f, &mut text);
    }
    if state.hls_on && f.kind("hls_muxers") {
        render_hls(&a.hls, &f, &mut text);
    }
    if f.kind("rtmp_conns") {
        render_conns(&mut text, "rtmp_conns", &a.rtmp_conns, true, false, &f);
    }
    if f.kind("rtmps_conns") {
        render_conns(&mut text, "rtmps_conns", &a.rtmps_conns, true, false, &f);
    }
    if f.kind("rtsp_conns") {
        render_conns(&mut text, "rtsp_conns", &a.rtsp_conns, false, false, &f);
    }
    if f.kind("rtsp_sessions") {
        render_conns(&mut text, "rtsp_sessions", &a.rtsp_conns, true, true, &f);
    }
    if f.kind("rtsps_conns") {
        render_conns(&mut text, "rtsps_conns", &a.rtsps_conns, false, false, &f);
    }
    if f.kind("rtsps_sessions") {
        render_conns(&mut text, "rtsps_sessions", &a.rtsps_conns, true, true, &f);
    }
    if f.kind("srt_conns") {
        render_conns(&mut text, "srt_conns", &a.srt_conns, true, true, &f);
    }
    if f.kind("webrtc_sessions") {
        render_conns(
            &mut text,
            "webrtc_sessions",
            &a.webrtc_sessions,
            true,
            true,
            &f,
        );
    }
    if f.kind("forward_dests") {
        render_forwards(&mut text, &a.relays, &f);
    }
    if f.kind.is_none() {
        render_runtime(&mut text);
        render_latency(&mut text);
        if let Some(w) = &state.webrtc {
            render_webrtc(w, &mut text);
        }
        render_record(&a.recorder, &mut text);
        render_hooks(&state.hooks, &mut text);
        render_webhooks(&a.webhooks, &mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_names_become_metric_suffixes() {
        assert_eq!(super::snake("msRTT"), "ms_rtt");
        assert_eq!(super::snake("packetsSentNAK"), "packets_sent_nak");
        assert_eq!(
            super::snake("msReceiveTsbPdDelay"),
            "ms_receive_tsb_pd_delay"
        );
        assert_eq!(super::snake("mbpsReceiveRate"), "mbps_receive_rate");
    }
}
