//! Latency histograms, Prometheus-style (cumulative buckets, count, sum), and the process's
//! per-egress histograms: the time from a frame entering the gateway to its bytes leaving
//! for readers of one egress format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// A cumulative histogram of durations.
#[derive(Default, Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub const fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; 12],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1)
    }

    /// `n` observations of `d` (a batch's latency for each reader it served).
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(n, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64 * n, Ordering::Relaxed);
    }

    /// (cumulative count per bucket, total count, sum in seconds).
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// The egress formats with a histogram of their own.
pub const EGRESSES: [&str; 4] = ["rtmp", "rtsp", "srt", "hls"];

static HISTOGRAMS: [LatencyHistogram; 4] = [const { LatencyHistogram::new() }; 4];

/// The process's histogram for egress `name` (one of [`EGRESSES`]), None for another name.
pub fn egress(name: &str) -> Option<&'static LatencyHistogram> {
    EGRESSES
        .iter()
        .position(|e| *e == name)
        .map(|i| &HISTOGRAMS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = LatencyHistogram::new();
        h.observe(Duration::from_micros(300));
        h.observe_n(Duration::from_millis(3), 2);
        let (b, count, sum) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(b[0], 1); // ≤ 0.5 ms
        assert_eq!(b[2], 1); // ≤ 2 ms
        assert_eq!(b[3], 3); // ≤ 5 ms
        assert!((sum - 0.0063).abs() < 1e-9);
        assert!(egress("rtmp").is_some() && egress("nope").is_none());
    }
}
