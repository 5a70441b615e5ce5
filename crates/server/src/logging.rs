//! Logs through `tracing`: human-readable text by default, JSON lines with `logFormat: json`.
//!
//! Text is coloured only when standard error is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>): a log written to a file, a pipe or journald carries no escapes.

use std::io::IsTerminal;

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

type Handle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Where a reload sets the level (`logLevel`); none when `RUST_LOG` decides.
static LEVEL: OnceLock<Handle> = OnceLock::new();

/// Installs the global subscriber, writing to each of `logDestinations`. `RUST_LOG`, when
/// set, wins over `logLevel` (and reloads do not change it). Fails when the log file cannot
/// be opened.
pub fn init(config: &Config) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    type Base = tracing_subscriber::layer::Layered<
        tracing_subscriber::reload::Layer<EnvFilter, tracing_subscriber::Registry>,
        tracing_subscriber::Registry,
    >;
    type Boxed = Box<dyn Layer<Base> + Send + Sync>;
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(config.log_level.as_str()));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let json = config.log_format == LogFormat::Json || config.log_structured;
    let mut layers: Vec<Boxed> = Vec::new();
    let wants = |d: &str| config.log_destinations.iter().any(|x| x == d);
    if wants("stdout") {
        layers.push(if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_ansi(colour)
                .with_writer(std::io::stderr)
                .boxed()
        });
    }
    if wants("file") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_file)
            .map_err(|e| format!("logFile: cannot open {}: {e}", config.log_file))?;
        let file = std::sync::Mutex::new(file);
        layers.push(if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(file)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .boxed()
        });
    }
    if wants("syslog") {
        layers.push(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_ansi(false)
                .with_writer(Syslog::new(&config.syslog_prefix))
                .boxed(),
        );
    }
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
    // Already installed (tests starting several servers): keep the first.
    if result.is_ok() && !fixed {
        let _ = LEVEL.set(handle);
    }
    Ok(())
}

/// The `syslog` destination: each event is one datagram to the local syslog socket, RFC 3164
/// style (`<PRI>TAG[PID]: message`, facility daemon). Without a syslog socket, lines are
/// dropped (a warning on standard error once).
struct Syslog {
    socket: Option<std::os::unix::net::UnixDatagram>,
    tag: String,
}

impl Syslog {
    fn new(prefix: &str) -> Syslog {
        let socket = ["/dev/log", "/var/run/syslog"].iter().find_map(|p| {
            let s = std::os::unix::net::UnixDatagram::unbound().ok()?;
            s.connect(p).ok()?;
            Some(s)
        });
        if socket.is_none() {
            eprintln!(
                "tidegate: logDestinations: no syslog socket (/dev/log): syslog lines are dropped"
            );
        }
        Syslog {
            socket,
            tag: format!("{prefix}[{}]", std::process::id()),
        }
    }
}

/// One syslog line being formatted; sent when dropped.
struct SyslogLine<'a> {
    to: &'a Syslog,
    severity: u8,
    buf: Vec<u8>,
}

impl std::io::Write for SyslogLine<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // A line longer than a datagram should carry is cut (8 KiB).
        let room = 8192usize.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&b[..b.len().min(room)]);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        let Some(s) = &self.to.socket else { return };
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        // Facility daemon (3).
        let line = format!("<{}>{}: {}", 3 * 8 + self.severity, self.to.tag, text);
        let _ = s.send(line.as_bytes());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;
    fn make_writer(&'a self) -> SyslogLine<'a> {
        SyslogLine {
            to: self,
            severity: 6,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine<'a> {
        let severity = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        SyslogLine {
            to: self,
            severity,
            buf: Vec::new(),
        }
    }
}

/// Sets the log level (`error`, `warn`, `info`, `debug`) from now on. False when the level
/// is not ours to set (`RUST_LOG`, or another subscriber: tests).
pub fn set_level(level: &str) -> bool {
    LEVEL
        .get()
        .is_some_and(|h| h.reload(EnvFilter::new(level)).is_ok())
}

/// Colour on a terminal only, and never when `NO_COLOR` holds a value.
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }
}
