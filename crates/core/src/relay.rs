//! What relays (pulled sources, pushes) of every protocol share: the status the API shows and
//! the reconnect loop with capped exponential backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the API shows of one relay.
#[derive(Debug)]
pub struct RelayStatus {
    /// A UUID, for the API (`/v3/paths/forward/get`).
    pub id: String,
    /// When the relay was set up.
    pub created: std::time::SystemTime,
    /// The URL with the stream key hidden.
    pub url: String,
    state: Mutex<&'static str>,
    pub bytes: AtomicU64,
    pub reconnects: AtomicU64,
    pub drops: AtomicU64,
    last_error: Mutex<String>,
}

impl RelayStatus {
    /// `shown_url` is what the API and logs show: secrets (stream keys, passphrases) removed.
    pub fn new(shown_url: &str) -> RelayStatus {
        RelayStatus {
            id: crate::text::uuid_v4(),
            created: std::time::SystemTime::now(),
            url: shown_url.to_string(),
            state: Mutex::new("idle"),
            bytes: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }

    pub fn state(&self) -> &'static str {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_state(&self, s: &'static str) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn set_error(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e.to_string();
    }
}

/// Runs `attempt` until it is done for good (`Ok`) or `cancel` fires. After each failure it
/// waits a backoff from 1 s, doubling up to 30 s, reset after a run longer than 30 s (a fresh
/// failure, not a flapping one).
pub async fn with_backoff<F, Fut>(
    what: &str,
    path: &str,
    status: &RelayStatus,
    cancel: &CancellationToken,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt() => r,
        };
        let Err(e) = result else {
            status.set_state("idle");
            return;
        };
        // A pull that ran (media flowed) or lasted long starts over from the shortest wait:
        // an upstream that comes back is pulled again at once, not after the longest wait.
        if status.state() == "running" || started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(
            path,
            url = status.url,
            "{what}: {e}; reconnecting in {backoff:?}"
        );
        status.set_error(&e);
        status.set_state("reconnecting");
        status.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_pull_that_ran_retries_after_the_shortest_wait() {
        let status = RelayStatus::new("rtsp://upstream/x");
        let cancel = CancellationToken::new();
        let at: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
        let (at2, status2, cancel2) = (at.clone(), &status, cancel.clone());
        with_backoff("source", "x", &status, &cancel, move || {
            let at = at2.clone();
            let cancel = cancel2.clone();
            async move {
                let n = {
                    let mut at = at.lock().unwrap_or_else(|e| e.into_inner());
                    at.push(tokio::time::Instant::now());
                    at.len()
                };
                match n {
                    // Two failed connects: the waits grow (1 s, 2 s).
                    1 | 2 => Err("connect refused".to_string()),
                    // A pull that ran, then the upstream died.
                    3 => {
                        status2.set_state("running");
                        Err("the source ended the session".to_string())
                    }
                    _ => {
                        cancel.cancel();
                        Ok(())
                    }
                }
            }
        })
        .await;
        let at = at.lock().unwrap_or_else(|e| e.into_inner());
        let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, vec![1, 2, 1], "waits between attempts");
    }
}
