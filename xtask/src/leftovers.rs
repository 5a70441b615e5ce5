//! Finds the processes a test run left behind: every process whose environment carries the
//! run's marker (`NAME=VALUE`), wherever it was reparented, in whatever namespace. They are
//! killed, and described for the error.

use std::path::Path;

/// Kills every process (but this one) whose environment holds `name=value`; returns one line
/// per process killed: its pid and command line.
pub fn reap(name: &str, value: &str) -> Vec<String> {
    let needle = format!("{name}={value}");
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || !carries(&entry.path(), &needle) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        // SIGKILL: whatever it is, it outlived the test that started it.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        found.push(format!("  pid {pid}: {}", cmdline.trim()));
    }
    found
}

fn carries(proc_dir: &Path, needle: &str) -> bool {
    std::fs::read(proc_dir.join("environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::reap;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn a_marked_process_left_running_is_found_and_killed() {
        let value = format!("unit-{}", std::process::id());
        let mut child = Command::new("sleep")
            .arg("30")
            .env("LEFTOVER_TEST_MARK", &value)
            .spawn()
            .expect("sleep");
        // An unmarked process and another run's marker are not touched.
        let mut other = Command::new("sleep")
            .arg("30")
            .env("LEFTOVER_TEST_MARK", "another-run")
            .spawn()
            .expect("sleep");
        // A child just forked may not have run `sleep` yet (its environment is still ours):
        // wait until both show their marks.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (pid, mark) in [(child.id(), value.as_str()), (other.id(), "another-run")] {
            let want = format!("LEFTOVER_TEST_MARK={mark}");
            while !std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
                .unwrap_or(false)
            {
                assert!(Instant::now() < deadline, "sleep {pid} did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let found = reap("LEFTOVER_TEST_MARK", &value);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains(&child.id().to_string()) && found[0].contains("sleep 30"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the marked process still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(other.try_wait().expect("wait").is_none());
        let _ = other.kill();
        let _ = other.wait();
    }
}
