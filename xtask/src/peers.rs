//! Installs the third-party peers the end-to-end tests drive. Idempotent: what is present is
//! only checked. Debian packages need root; the Python venv and npm packages go in the peers
//! directory (`$PEERS_DIR`, default `~/.cache/tidegate-peers`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::run;

const APT: &[&str] = &[
    "ffmpeg",
    "nginx",
    "libnginx-mod-rtmp",
    "libnginx-mod-stream",
    "srt-tools",
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-libav",
    "gstreamer1.0-rtsp",
    "gstreamer1.0-nice",
    "python3-gi",
    "gir1.2-gstreamer-1.0",
    "gir1.2-gst-plugins-base-1.0",
    "gir1.2-gst-rtsp-server-1.0",
    "chromium",
    "wrk",
    "python3-venv",
    "iproute2",
    "curl",
    "postgresql",
    "tshark",
    "systemd",
];

const PIP: &[(&str, &str)] = &[
    ("aiortc", "1.16.0"),
    ("imageio-ffmpeg", "0.8.1"),
    ("kubernetes-validate", "1.37.0"),
    ("prometheus_client", "0.26.0"),
    ("schemathesis", "4.32.5"),
    ("websockets", "17.4"),
];
const NPM: &[(&str, &str)] = &[
    ("playwright-core", "1.65.1"),
    ("node-media-server", "4.4.3"),
];

pub fn peers_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEERS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/tidegate-peers")
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn apt_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s == "install ok installed")
}

pub fn install(_root: &Path) -> Result<PathBuf, String> {
    let dir = peers_dir();
    std::fs::create_dir_all(dir.join("node")).map_err(|e| format!("{}: {e}", dir.display()))?;

    let mut missing: Vec<&str> = APT.iter().copied().filter(|p| !apt_installed(p)).collect();
    // kubectl renders the deploy/kubernetes overlays (`kubectl kustomize`): any kubectl on the
    // PATH will do (the kustomizations keep to what Debian's 1.20 renders too), else Debian's.
    let kubectl_on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join("kubectl").is_file());
    if !kubectl_on_path && !apt_installed("kubernetes-client") {
        missing.push("kubernetes-client");
    }
    if !missing.is_empty() {
        eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
        let root = output(Command::new("id").arg("-u")).is_some_and(|u| u == "0");
        let apt = |args: &[&str]| {
            let mut cmd = Command::new(if root { "apt-get" } else { "sudo" });
            if !root {
                cmd.args(["-E", "apt-get"]);
            }
            cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
            cmd
        };
        run(apt(&["update", "-qq"]).stdout(Stdio::null()))?;
        run(apt(&["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .stdout(Stdio::null()))?;
    }

    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("xtask: creating the Python venv in {}", venv.display());
        // Debian's python3 has venv (python3-venv, above); any python3 will do.
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let want_pip: Vec<String> = PIP
        .iter()
        .filter(|(name, ver)| {
            output(Command::new(&python).args([
                "-c",
                &format!("import importlib.metadata as m; print(m.version('{name}'))"),
            ]))
            .as_deref()
                != Some(*ver)
        })
        .map(|(n, v)| format!("{n}=={v}"))
        .collect();
    if !want_pip.is_empty() {
        eprintln!("xtask: pip install {}", want_pip.join(" "));
        run(Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "--only-binary=:all:",
            ])
            .args(&want_pip))?;
    }
    // FFmpeg 9 (with the WHIP muxer) ships inside imageio-ffmpeg.
    let ff9 = output(Command::new(&python).args([
        "-c",
        "import imageio_ffmpeg as i; print(i.get_ffmpeg_exe())",
    ]))
    .ok_or("imageio-ffmpeg has no ffmpeg binary")?;
    std::fs::create_dir_all(dir.join("bin")).map_err(|e| e.to_string())?;
    let link = dir.join("bin/ffmpeg9");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&ff9, &link).map_err(|e| format!("{}: {e}", link.display()))?;

    let node = dir.join("node");
    let pkg = node.join("package.json");
    if !pkg.exists() {
        std::fs::write(
            &pkg,
            "{\"name\":\"tidegate-test-peers\",\"private\":true}\n",
        )
        .map_err(|e| e.to_string())?;
    }
    let want_npm: Vec<String> = NPM
        .iter()
        .filter(|(name, ver)| {
            let manifest = node.join("node_modules").join(name).join("package.json");
            !std::fs::read_to_string(manifest)
                .is_ok_and(|m| m.contains(&format!("\"version\": \"{ver}\"")))
        })
        .map(|(n, v)| format!("{n}@{v}"))
        .collect();
    if !want_npm.is_empty() {
        eprintln!("xtask: npm install {}", want_npm.join(" "));
        run(Command::new("npm")
            .current_dir(&node)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .args(&want_npm))?;
    }

    // Quick checks that the peers work, so a broken install fails here, not mid-test.
    let checks: &[(&str, &[&str])] = &[
        ("ffmpeg", &["-hide_banner", "-version"]),
        ("srt-live-transmit", &["-version"]),
        ("gst-inspect-1.0", &["rtmp2sink"]),
        ("chromium", &["--version"]),
    ];
    for (cmd, args) in checks {
        if !quiet(Command::new(cmd).args(*args)) {
            return Err(format!("peer check failed: {cmd} {}", args.join(" ")));
        }
    }
    if !quiet(Command::new(&link).arg("-version")) {
        return Err(format!("{} does not run", link.display()));
    }
    Ok(dir)
}
