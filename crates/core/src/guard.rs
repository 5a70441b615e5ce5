//! What keeps one bad condition from flooding the server: accept loops that back off when the
//! process runs out of file descriptors, and third-party parser panics that are contained
//! without printing a panic message per packet.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// The first pause after a failed `accept`, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per this long, per listener or per contained parser.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// An accept loop's answer to failures. Out of file descriptors (`EMFILE`, `ENFILE`) a
/// listener stays readable, so a loop that retried at once would spin a core until one is
/// freed: each failure in a row doubles the pause (10 ms up to 1 s), and the log gets one line
/// at the first failure, then one per 10 s with the count since.
pub struct AcceptBackoff {
    name: &'static str,
    pause: Duration,
    failures: u64,
    logged: Option<Instant>,
}

impl AcceptBackoff {
    /// `name` is the listener's, for the log (`RTMP`, `RTSP`, `HLS`, …).
    pub fn new(name: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            name,
            pause: FIRST_PAUSE,
            failures: 0,
            logged: None,
        }
    }

    /// A connection was accepted: the next failure pauses briefly again.
    pub fn accepted(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// `accept` failed with `e`: logs (rate-limited) and pauses before the next try.
    pub async fn failed(&mut self, e: &std::io::Error) {
        self.failures += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let hint = match e.raw_os_error() {
                Some(24) | Some(23) => " (out of file descriptors: raise the limit, ulimit -n)",
                _ => "",
            };
            tracing::warn!(
                listener = self.name,
                failures = self.failures,
                "[{}] accept failed: {e}{hint}; pausing {:?}",
                self.name,
                self.pause
            );
            self.logged = Some(Instant::now());
            self.failures = 0;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }

    /// The pause the next failure will take.
    pub fn pause(&self) -> Duration {
        self.pause
    }
}

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`, 4096 on current
/// Linux): a burst of connections (viewers coming back after a blip) waits in the queue instead
/// of having its SYNs dropped and retried a second later, as with the 128 of `std`.
pub const LISTEN_BACKLOG: i32 = 4096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `std` sets).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    tokio::net::TcpListener::from_std(s.into())
}

thread_local! {
    /// Set while a contained third-party call runs on this thread: its panic is expected.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) the panic hook that keeps contained panics quiet: a panic inside
/// [`contain`] prints nothing there (the containment logs it, rate-limited); any other panic
/// goes to the hook that was installed before (the standard message).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(Cell::get) {
                return;
            }
            previous(info);
        }));
    });
}

/// A contained panic's count and the last time it was logged, by what panicked.
struct Contained {
    count: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

/// Runs `f`, a third-party call known to panic on some inputs; its panic becomes `None`. The
/// log gets one line per `what` at the first, then at most one per 10 s with the count since.
/// With [`install_panic_hook`] the standard panic message is not printed.
pub fn contain<R>(what: &'static str, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Option<R> {
    let was = CONTAINED.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(f);
    CONTAINED.with(|c| c.set(was));
    match r {
        Ok(v) => Some(v),
        Err(_) => {
            note_contained(what);
            None
        }
    }
}

fn note_contained(what: &'static str) {
    static SEEN: Mutex<Vec<(&'static str, &'static Contained)>> = Mutex::new(Vec::new());
    let entry = {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        match seen.iter().find(|(w, _)| *w == what) {
            Some((_, c)) => *c,
            None => {
                let c: &'static Contained = Box::leak(Box::new(Contained {
                    count: AtomicU64::new(0),
                    logged: Mutex::new(None),
                }));
                seen.push((what, c));
                c
            }
        }
    };
    let n = entry.count.fetch_add(1, Ordering::Relaxed) + 1;
    let mut logged = entry.logged.lock().unwrap_or_else(|e| e.into_inner());
    if logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
        tracing::warn!(
            contained = what,
            count = n,
            "{what} panicked on its input (contained: the input was dropped; {n} so far)"
        );
        *logged = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_panics_become_none_and_others_pass() {
        install_panic_hook();
        assert_eq!(contain("test parser", || 5), Some(5));
        let r: Option<u8> = contain("test parser", || panic!("boom"));
        assert_eq!(r, None);
        // Outside containment the flag is clear again.
        assert!(!CONTAINED.with(Cell::get));
    }

    #[tokio::test(start_paused = true)]
    async fn accept_failures_back_off_to_a_second() {
        let mut b = AcceptBackoff::new("test");
        let e = std::io::Error::from_raw_os_error(24);
        let start = tokio::time::Instant::now();
        for _ in 0..12 {
            b.failed(&e).await;
        }
        // 10 + 20 + … + 640 ms, then 1 s each: far from a spin.
        assert!(
            start.elapsed() >= Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(b.pause(), LONGEST_PAUSE);
        b.accepted();
        assert_eq!(b.pause(), FIRST_PAUSE);
    }
}

/// `maxConnections` and `maxConnectionsPerIP` (0: no limit), for every listener; a reload
/// changes them for the connections that come next.
static MAX_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static MAX_CONNECTIONS_PER_IP: AtomicU64 = AtomicU64::new(0);

/// Sets the connection limits every [`ConnLimiter`] applies from now on (0: none).
pub fn set_connection_limits(total: u64, per_ip: u64) {
    MAX_CONNECTIONS.store(total, Ordering::Relaxed);
    MAX_CONNECTIONS_PER_IP.store(per_ip, Ordering::Relaxed);
}

/// Connections and sessions of clients (every listener but the control surfaces: API,
/// metrics, pprof) open now, across listeners: what a drain waits for.
static CLIENT_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Set while the server drains: listeners that cannot stop accepting (the UDP ones: SRT,
/// WebRTC sessions) refuse new clients.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Clients' connections and sessions open now (see [`ConnLimiter::control`]).
pub fn client_connections() -> u64 {
    CLIENT_CONNECTIONS.load(Ordering::Relaxed)
}

/// From now on every client limiter refuses new connections ("draining"); `false` undoes it.
pub fn set_draining(on: bool) {
    DRAINING.store(on, Ordering::Relaxed);
}

/// Whether the server is draining.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// One listener's open connections, in all and by address, held against the limits.
pub struct ConnLimiter {
    name: &'static str,
    state: std::sync::Arc<Mutex<LimiterState>>,
    /// Whether its connections are clients' (counted in [`client_connections`], refused
    /// while draining).
    clients: bool,
}

#[derive(Default)]
struct LimiterState {
    total: u64,
    by_ip: std::collections::HashMap<std::net::IpAddr, u64>,
    /// When each refused address was last logged (one line per address per 10 s; the
    /// unspecified address stands for refusals over the total).
    logged: std::collections::HashMap<std::net::IpAddr, Instant>,
    /// Refusals since the last log line.
    refused: u64,
}

/// A connection counted against the limits until dropped.
pub struct ConnPermit {
    ip: Option<std::net::IpAddr>,
    state: std::sync::Arc<Mutex<LimiterState>>,
    client: bool,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if self.client {
            CLIENT_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = s.by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    s.by_ip.remove(&ip);
                }
            }
        }
    }
}

impl ConnLimiter {
    /// `name` is the listener's, for the log.
    pub fn new(name: &'static str) -> ConnLimiter {
        ConnLimiter {
            name,
            state: Default::default(),
            clients: true,
        }
    }

    /// A control surface's limiter (API, metrics, pprof): its connections are not clients'
    /// (a drain does not wait for them, and they are taken while draining, so that
    /// readiness probes and scrapes go on).
    pub fn control(name: &'static str) -> ConnLimiter {
        ConnLimiter {
            clients: false,
            ..ConnLimiter::new(name)
        }
    }

    /// A permit for a connection from `ip`, or None when a limit is reached (refusals over
    /// the total are logged once per 10 s, over an address's cap once per address per 10 s). `per_ip` false: the address is a trusted proxy's,
    /// which speaks for many clients, so only the total counts.
    pub fn admit(&self, ip: std::net::IpAddr, per_ip: bool) -> Option<ConnPermit> {
        let (max, max_ip) = (
            MAX_CONNECTIONS.load(Ordering::Relaxed),
            MAX_CONNECTIONS_PER_IP.load(Ordering::Relaxed),
        );
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = s.by_ip.get(&ip).copied().unwrap_or(0);
        let (why, per_address) = if self.clients && draining() {
            (Some("the server is draining".to_string()), false)
        } else if max > 0 && s.total >= max {
            (Some(format!("maxConnections ({max}) reached")), false)
        } else if per_ip && max_ip > 0 && from_ip >= max_ip {
            (
                Some(format!("maxConnectionsPerIP ({max_ip}) reached for {ip}")),
                true,
            )
        } else {
            (None, false)
        };
        if let Some(why) = why {
            let now = Instant::now();
            // Refusals for the total are logged per listener (the addresses may be many),
            // those for one address per address.
            let key = if per_address {
                ip
            } else {
                std::net::IpAddr::from([0, 0, 0, 0])
            };
            if s.logged.len() > 10_000 {
                s.logged.retain(|_, t| now.duration_since(*t) < LOG_EVERY);
            }
            s.refused += 1;
            if s.logged
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY)
            {
                let refused = std::mem::take(&mut s.refused);
                tracing::warn!(
                    listener = self.name,
                    refused,
                    "[{}] connection from {ip} refused: {why} ({refused} refused since the last line)",
                    self.name
                );
                s.logged.insert(key, now);
            }
            return None;
        }
        s.total += 1;
        let ip = per_ip.then_some(ip);
        if let Some(ip) = ip {
            *s.by_ip.entry(ip).or_insert(0) += 1;
        }
        if self.clients {
            CLIENT_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        }
        Some(ConnPermit {
            ip,
            state: self.state.clone(),
            client: self.clients,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn limits_count_connections_in_all_and_by_address() {
        let l = ConnLimiter::new("test");
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // The limits are process-wide: this test sets and restores them.
        set_connection_limits(3, 2);
        let p1 = l.admit(a, true).unwrap();
        let _p2 = l.admit(a, true).unwrap();
        assert!(l.admit(a, true).is_none(), "a third from one address");
        let _p3 = l.admit(b, true).unwrap();
        assert!(l.admit(b, true).is_none(), "a fourth in all");
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.admit(a, true).unwrap();
        // A trusted proxy's connections count in the total only.
        set_connection_limits(0, 1);
        let _p5 = l.admit(b, false).unwrap();
        let _p6 = l.admit(b, false).unwrap();
        set_connection_limits(0, 0);
        assert!(l.admit(a, true).is_some());
    }
}
