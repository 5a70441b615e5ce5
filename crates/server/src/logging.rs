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

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `logLevel` (and reloads
/// do not change it).
pub fn init(config: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(config.log_level.as_str()));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(colour)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already installed (tests starting several servers): keep the first.
    if result.is_ok() && !fixed {
        let _ = LEVEL.set(handle);
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
