//! A UDP relay that drops a share of datagrams in both directions, deterministically from a
//! seed, and can delay what goes back to the client: a stand-in for `tc netem loss … delay …`,
//! which the test machines' kernel lacks (no sch_netem).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Datagrams forwarded and dropped, per direction.
#[derive(Default, Debug)]
pub struct LossStats {
    pub up_forwarded: AtomicU64,
    pub up_dropped: AtomicU64,
    pub down_forwarded: AtomicU64,
    pub down_dropped: AtomicU64,
}

pub struct LossyRelay {
    pub addr: SocketAddr,
    pub stats: Arc<LossStats>,
    stop: Arc<AtomicBool>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn drop(&mut self, percent: u64) -> bool {
        self.next() % 1000 < percent * 10
    }
}

impl LossyRelay {
    /// Relays one client to `target`, dropping `percent` % of datagrams each way.
    pub fn start(target: SocketAddr, percent: u64, seed: u64) -> LossyRelay {
        LossyRelay::start_delayed(target, percent, seed, Duration::ZERO)
    }

    /// As [`LossyRelay::start`], and what `target` sends back reaches the client `delay`
    /// later (a delay line in its own thread): the round trip grows by `delay`.
    pub fn start_delayed(
        target: SocketAddr,
        percent: u64,
        seed: u64,
        delay: Duration,
    ) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind");
        back.connect(target).expect("connect");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("addr");
        let stats = Arc::new(LossStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let front = Arc::new(front);
        let back = Arc::new(back);
        {
            let (front, back, stats, stop, client) = (
                front.clone(),
                back.clone(),
                stats.clone(),
                stop.clone(),
                client.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(seed | 1);
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *client.lock().expect("lock") = Some(from);
                    if rng.drop(percent) {
                        stats.up_dropped.fetch_add(1, Ordering::Relaxed);
                    } else if back.send(&buf[..n]).is_ok() {
                        stats.up_forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // The delay line: datagrams to the client with the time they are due.
        let (line, due) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>, SocketAddr)>();
        {
            let front = front.clone();
            std::thread::spawn(move || {
                // Ends when the sending thread (and its channel end) ends.
                while let Ok((at, data, to)) = due.recv() {
                    if let Some(wait) = at.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let _ = front.send_to(&data, to);
                }
            });
        }
        {
            let (front, back, stats, stop) = (front, back, stats.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1);
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = back.recv(&mut buf) else { continue };
                    let Some(to) = *client.lock().expect("lock") else {
                        continue;
                    };
                    if rng.drop(percent) {
                        stats.down_dropped.fetch_add(1, Ordering::Relaxed);
                    } else if delay.is_zero() {
                        if front.send_to(&buf[..n], to).is_ok() {
                            stats.down_forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if line
                        .send((std::time::Instant::now() + delay, buf[..n].to_vec(), to))
                        .is_ok()
                    {
                        stats.down_forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        LossyRelay { addr, stats, stop }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
