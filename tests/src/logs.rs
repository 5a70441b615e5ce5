//! The in-process servers' log, captured: [`crate::server::TestServer`] installs a tracing
//! subscriber (once per test binary) that writes into a buffer, so a test can check what the
//! server said (a refusal's log line). Tests in one binary share the buffer: they look for
//! lines naming their own paths.

use std::io::Write;
use std::sync::{Mutex, Once};

static BUFFER: Mutex<String> = Mutex::new(String::new());
/// At most this much is kept; the oldest half goes when it is reached.
const CAP: usize = 16 << 20;

struct Sink;

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut b = BUFFER.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() + data.len() > CAP {
            let cut = b.len() / 2;
            let cut = (cut..b.len())
                .find(|i| b.is_char_boundary(*i))
                .unwrap_or(b.len());
            b.drain(..cut);
        }
        b.push_str(&String::from_utf8_lossy(data));
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (info level), once.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Sink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

/// The captured lines that contain every one of `parts`.
pub fn lines_with(parts: &[&str]) -> Vec<String> {
    let b = BUFFER.lock().unwrap_or_else(|e| e.into_inner());
    b.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// Waits (polling, bounded by `limit`) until the log has a line with every one of `parts`.
pub fn wait_for(parts: &[&str], limit: std::time::Duration) {
    crate::poll(
        limit,
        || format!("no log line with {parts:?}"),
        || (!lines_with(parts).is_empty()).then_some(()),
    );
}
