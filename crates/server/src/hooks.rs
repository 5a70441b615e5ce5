//! Commands run on events (`runOn…`), as MediaMTX runs them: through `/bin/sh -c`, with what
//! the event is about in `MTX_*` environment variables. A hook never holds up what triggered
//! it: it is started and reaped in the background, and its failure is logged.

use tidegate_record::{Recorder, SegmentEventKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts `command` with `env` in the background.
pub fn run(what: &'static str, command: &str, env: Vec<(String, String)>, tasks: &TaskTracker) {
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

/// What every hook gets, as in MediaMTX: `MTX_PATH` (and its old name `RTSP_PATH`),
/// `RTSP_PORT` when RTSP is served, and `G1`, `G2`, … for the capture groups of a `~regex` path.
pub fn path_env(
    paths: &tidegate_core::PathManager,
    path: &str,
    rtsp_port: Option<u16>,
) -> Vec<(String, String)> {
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

/// `runOnRecordSegmentCreate` and `runOnRecordSegmentComplete`.
pub fn record_hooks(
    recorder: &Recorder,
    paths: &tidegate_core::PathManager,
    rtsp_port: Option<u16>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let paths = paths.clone();
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
            let mut env = path_env(&paths, &ev.path, rtsp_port);
            env.push(("MTX_SEGMENT_PATH".into(), ev.file.display().to_string()));
            if ev.kind == SegmentEventKind::Complete {
                // Seconds, the shortest form that reads back the same (`3600.021`).
                env.push((
                    "MTX_SEGMENT_DURATION".into(),
                    ev.duration.max(0.0).to_string(),
                ));
            }
            run(what, command, env, &tasks2);
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
