//! Running one hook command: split like a shell splits words, `$VARIABLES` replaced, run
//! without a shell in a process group of its own, its output logged line by line (bounded
//! and rate-limited), ended with SIGINT to its group when its cause ends (SIGKILL if it is
//! still there after a grace period), restarted with backoff when asked.

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Hook processes running at once at most; past it a hook is not started (logged, counted):
/// a flood of connections must not become a flood of processes.
pub const MAX_RUNNING: usize = 512;
/// How long a command has to exit after SIGINT before its group gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The first restart waits this long, each next one twice as long, up to [`BACKOFF_MAX`];
/// a command that ran at least [`BACKOFF_MAX`] starts over at the first step.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A longer output line is cut (and marked) in the log.
const MAX_LINE: usize = 4096;
/// Output lines logged per second per command on average, and in a burst.
const LINES_PER_SEC: f64 = 20.0;
const LINES_BURST: f64 = 100.0;

/// What the hooks did, for the metrics.
#[derive(Default, Debug)]
pub struct HookStats {
    /// Processes started.
    pub started: AtomicU64,
    /// Commands that could not start or exited with a failure status.
    pub failed: AtomicU64,
    /// Hooks not started because [`MAX_RUNNING`] were running.
    pub refused: AtomicU64,
    pub running: AtomicUsize,
}

/// One command to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The setting it comes from (`runOnRead`), for the log.
    pub what: &'static str,
    /// What it is about (a path, a connection), for the log.
    pub label: String,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub restart: bool,
}

/// Starts commands on the server's task tracker; every command ends at shutdown.
#[derive(Clone)]
pub struct Runner {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    pub stats: Arc<HookStats>,
}

/// A command that runs until its cause ends: dropping it ends it.
#[derive(Debug)]
pub struct Running {
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Runner {
    pub fn new(tasks: TaskTracker, shutdown: CancellationToken) -> Runner {
        Runner {
            tasks,
            shutdown,
            stats: Arc::new(HookStats::default()),
        }
    }

    /// Runs `spec` until the returned handle is dropped (restarting it if `spec.restart`).
    pub fn start(&self, spec: Spec) -> Running {
        let stop = self.shutdown.child_token();
        self.tasks
            .spawn(supervise(spec, stop.clone(), self.stats.clone()));
        Running { stop }
    }

    /// Runs `spec` once, to its end (or the server's).
    pub fn once(&self, spec: Spec) {
        let stop = self.shutdown.child_token();
        self.tasks.spawn(supervise(
            Spec {
                restart: false,
                ..spec
            },
            stop,
            self.stats.clone(),
        ));
    }
}

/// The command's words, with `$NAME` / `${NAME}` replaced from `env`, then from the server's
/// own environment (MediaMTX's rules: Go's `os.Expand` on each word after splitting).
pub fn argv(command: &str, env: &[(String, String)]) -> Result<Vec<String>, String> {
    let words = shlex::split(command).ok_or("unbalanced quotes or a trailing backslash")?;
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
            .unwrap_or_default()
    };
    Ok(words.iter().map(|w| expand(w, &lookup)).collect())
}

/// Go's `os.Expand`: `$NAME` (letters, digits, `_`), `${NAME}`, `$` + one special character
/// (`*#$@!?-` or a digit); a `$` followed by nothing of these is kept; bad `${…` syntax is
/// dropped.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> String) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&s[last..i]);
            let rest = &s[i + 1..];
            let (name, w) = shell_name(rest);
            if name.is_empty() && w > 0 {
                // Bad syntax: dropped.
            } else if name.is_empty() {
                out.push('$');
            } else {
                out.push_str(&lookup(name));
            }
            i += 1 + w;
            last = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[last..]);
    out
}

fn special(c: u8) -> bool {
    matches!(c, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-') || c.is_ascii_digit()
}

fn shell_name(s: &str) -> (&str, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && special(b[1]) && b[2] == b'}' {
            return (&s[1..2], 3);
        }
        for i in 1..b.len() {
            if b[i] == b'}' {
                if i == 1 {
                    return ("", 2);
                }
                return (&s[1..i], i + 1);
            }
        }
        return ("", 1);
    }
    if special(b[0]) {
        return (&s[0..1], 1);
    }
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    (&s[..n], n)
}

/// `url.QueryEscape`, as MediaMTX encodes `MTX_QUERY`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(c as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{c:02X}")),
        }
    }
    out
}

enum Outcome {
    Exited(ExitStatus),
    Stopped,
    SpawnFailed(std::io::Error),
}

async fn supervise(spec: Spec, stop: CancellationToken, stats: Arc<HookStats>) {
    let (what, label) = (spec.what, spec.label.as_str());
    let argv = match argv(&spec.command, &spec.env) {
        Ok(a) => a,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "[hook] {what} ({label}): cannot run '{}': {e}",
                spec.command
            );
            return;
        }
    };
    let mut backoff = BACKOFF_FIRST;
    loop {
        let began = Instant::now();
        if stats.running.fetch_add(1, Ordering::Relaxed) >= MAX_RUNNING {
            stats.running.fetch_sub(1, Ordering::Relaxed);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "[hook] {what} ({label}) not started: {MAX_RUNNING} hook commands are running"
            );
        } else {
            stats.started.fetch_add(1, Ordering::Relaxed);
            tracing::info!("[hook] {what} ({label}) started: {}", spec.command);
            let outcome = run_once(&spec, &argv, &stop).await;
            stats.running.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Outcome::Stopped => {
                    tracing::info!("[hook] {what} ({label}) stopped");
                    return;
                }
                Outcome::SpawnFailed(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("[hook] {what} ({label}): cannot start '{}': {e}", argv[0]);
                }
                Outcome::Exited(status) => {
                    if !status.success() {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!("[hook] {what} ({label}) exited: {status}");
                }
            }
        }
        if !spec.restart {
            return;
        }
        if stop.is_cancelled() {
            tracing::info!("[hook] {what} ({label}) stopped");
            return;
        }
        if began.elapsed() >= BACKOFF_MAX {
            backoff = BACKOFF_FIRST;
        }
        tracing::info!(
            "[hook] {what} ({label}) restarts in {} s",
            backoff.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => {
                tracing::info!("[hook] {what} ({label}) stopped");
                return;
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn run_once(spec: &Spec, argv: &[String], stop: &CancellationToken) -> Outcome {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::SpawnFailed(e),
    };
    let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    let signal = |sig: nix::sys::signal::Signal| {
        if let Some(g) = group {
            let _ = nix::sys::signal::killpg(g, sig);
        }
    };
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let mut log = LineLog::new(spec.what, &spec.label);
    let (mut obuf, mut ebuf) = (vec![0u8; 4096], vec![0u8; 4096]);
    let mut stopping: Option<tokio::time::Instant> = None;
    // While its output is over the rate limit, the command's pipes are not read for a while:
    // a command that floods is slowed down by its own full pipe, not the server.
    let mut paused: Option<tokio::time::Instant> = None;
    loop {
        if log.over_limit() && paused.is_none() {
            paused = Some(tokio::time::Instant::now() + Duration::from_millis(100));
        }
        tokio::select! {
            status = child.wait() => {
                log.flush();
                return match (stopping, status) {
                    (Some(_), _) => Outcome::Stopped,
                    (None, Ok(s)) => Outcome::Exited(s),
                    (None, Err(e)) => Outcome::SpawnFailed(e),
                };
            }
            n = read(&mut out, &mut obuf), if paused.is_none() => match n {
                Some(n) => log.feed(&obuf[..n]),
                None => out = None,
            },
            n = read(&mut err, &mut ebuf), if paused.is_none() => match n {
                Some(n) => log.feed(&ebuf[..n]),
                None => err = None,
            },
            _ = sleep_until(paused), if paused.is_some() => paused = None,
            _ = stop.cancelled(), if stopping.is_none() => {
                signal(nix::sys::signal::Signal::SIGINT);
                stopping = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = sleep_until(stopping), if stopping.is_some() => {
                tracing::warn!(
                    "[hook] {} ({}) still running {} s after SIGINT: killed",
                    spec.what,
                    spec.label,
                    STOP_GRACE.as_secs()
                );
                signal(nix::sys::signal::Signal::SIGKILL);
                stopping = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads what a pipe has; None at its end (or when it is gone).
async fn read<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    match pipe {
        Some(p) => match p.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// A command's output as log lines: each at most [`MAX_LINE`] bytes, at most
/// [`LINES_PER_SEC`] a second on average (the rest counted and said once).
struct LineLog<'a> {
    what: &'static str,
    label: &'a str,
    line: Vec<u8>,
    cut: bool,
    tokens: f64,
    at: Instant,
    dropped: u64,
}

impl<'a> LineLog<'a> {
    fn new(what: &'static str, label: &'a str) -> LineLog<'a> {
        LineLog {
            what,
            label,
            line: Vec::new(),
            cut: false,
            tokens: LINES_BURST,
            at: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether lines are being dropped now (no token left).
    fn over_limit(&self) -> bool {
        self.dropped > 0 && self.tokens < 1.0
    }

    fn feed(&mut self, data: &[u8]) {
        for &c in data {
            if c == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE {
                self.line.push(c);
            } else {
                self.cut = true;
            }
        }
    }

    fn flush(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
        self.say_dropped();
    }

    /// One line for the lines the rate limit left out, if any.
    fn say_dropped(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(
                "[hook] {} ({}): {} lines of output not logged (rate limit)",
                self.what,
                self.label,
                self.dropped
            );
            self.dropped = 0;
        }
    }

    fn emit(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * LINES_PER_SEC)
            .min(LINES_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.say_dropped();
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches('\r');
            let more = if self.cut { " [cut]" } else { "" };
            tracing::info!("[hook {} {}] {text}{more}", self.what, self.label);
        } else {
            self.dropped += 1;
        }
        self.line.clear();
        self.cut = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("MTX_PATH".into(), "cam 1".into()),
            ("G1".into(), "7".into()),
        ]
    }

    #[test]
    fn words_are_split_then_expanded() {
        let a = argv(
            r#"ffmpeg -i "rtsp://x/$MTX_PATH" -f 'a b' out_${G1}.ts $ end$"#,
            &env(),
        )
        .unwrap();
        assert_eq!(
            a,
            [
                "ffmpeg",
                "-i",
                "rtsp://x/cam 1",
                "-f",
                "a b",
                "out_7.ts",
                "$",
                "end$"
            ]
        );
        // A value with spaces stays one word: expansion comes after splitting.
        assert_eq!(argv("echo $MTX_PATH", &env()).unwrap(), ["echo", "cam 1"]);
        assert!(argv("echo 'open", &env()).is_err());
        assert!(argv("   ", &env()).is_err());
    }

    #[test]
    fn expansion_follows_go_os_expand() {
        let look = |n: &str| format!("<{n}>");
        assert_eq!(expand("$A_1b-c", &look), "<A_1b>-c");
        assert_eq!(expand("${X Y}z", &look), "<X Y>z");
        assert_eq!(expand("$1$$", &look), "<1><$>");
        assert_eq!(expand("a${}b", &look), "ab");
        assert_eq!(expand("a${b", &look), "ab");
        assert_eq!(expand("a$/b", &look), "a$/b");
        assert_eq!(expand("a$", &look), "a$");
    }

    #[test]
    fn queries_are_escaped_as_go_does() {
        assert_eq!(query_escape("a=1&b=x y/é"), "a%3D1%26b%3Dx+y%2F%C3%A9");
    }

    #[test]
    fn output_lines_are_bounded() {
        let mut l = LineLog::new("runOnRead", "x");
        l.feed(&vec![b'a'; MAX_LINE * 3]);
        assert_eq!(l.line.len(), MAX_LINE);
        assert!(l.cut);
        l.feed(b"\n");
        assert!(l.line.is_empty() && !l.cut);
        for _ in 0..1000 {
            l.feed(b"spam\n");
        }
        assert!(l.dropped >= 1000 - LINES_BURST as u64 - 5);
    }
}
