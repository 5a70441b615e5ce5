//! Commands run on events (`runOn…`), as MediaMTX runs them: through `/bin/sh -c`, with what
//! the event is about in `MTX_*` environment variables. A hook never holds up what triggered
//! it: it is started and reaped in the background, and its failure is logged.

use std::time::Duration;

use tidegate_record::{Recorder, SegmentEventKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts `command` with `env` in the background.
pub fn run(
    what: &'static str,
    command: &str,
    env: Vec<(&'static str, String)>,
    tasks: &TaskTracker,
) {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec {command}"))
        .envs(env)
        .stdin(std::process::Stdio::null());
    match cmd.spawn() {
        Ok(mut child) => {
            tasks.spawn(async move {
                match child.wait().await {
                    Ok(s) if s.success() => {}
                    Ok(s) => tracing::warn!("[hook] {what} exited with {s}"),
                    Err(e) => tracing::warn!("[hook] {what}: {e}"),
                }
            });
        }
        Err(e) => tracing::error!("[hook] cannot run {what} ({command}): {e}"),
    }
}

/// `runOnRecordSegmentCreate` and `runOnRecordSegmentComplete`.
pub fn record_hooks(recorder: &Recorder, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let mut events = recorder.events();
    let (tasks2, shutdown) = (tasks.clone(), shutdown.clone());
    tasks.spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = shutdown.cancelled() => return,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
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
            let mut env = vec![
                ("MTX_PATH", ev.path.clone()),
                ("MTX_SEGMENT_PATH", ev.file.display().to_string()),
            ];
            if ev.kind == SegmentEventKind::Complete {
                env.push((
                    "MTX_SEGMENT_DURATION",
                    format!(
                        "{}",
                        Duration::from_secs_f64(ev.duration.max(0.0)).as_secs_f64()
                    ),
                ));
            }
            run(what, command, env, &tasks2);
        }
    });
}
