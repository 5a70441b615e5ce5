//! `cargo xtask vendor hls.js [VERSION]`: refreshes the player library the binary serves from
//! the npm package, so the built-in HLS page works with no Internet access.
//!
//! It writes `crates/hls/assets/hls.js/` — `hls.min.js` (without its source-map comment), the
//! package's `LICENSE` and a `VERSION` file — from `npm pack hls.js@VERSION` (default: the version already there).

use std::path::Path;
use std::process::Command;

use crate::run;

const ASSETS: &str = "crates/hls/assets/hls.js";

pub fn run_vendor(root: &Path, args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("hls.js") => hls_js(root, args.get(1).map(String::as_str)),
        _ => Err("usage: cargo xtask vendor hls.js [VERSION]".into()),
    }
}

fn hls_js(root: &Path, version: Option<&str>) -> Result<(), String> {
    let assets = root.join(ASSETS);
    let current = std::fs::read_to_string(assets.join("VERSION")).unwrap_or_default();
    let version = version.unwrap_or(current.trim());
    if version.is_empty() {
        return Err("no version given and none vendored yet".into());
    }
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    {
        return Err(format!("not a version: {version}"));
    }
    let tmp = std::env::temp_dir().join(format!("tidegate-vendor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = (|| {
        run(Command::new("npm").current_dir(&tmp).args([
            "pack",
            "--silent",
            &format!("hls.js@{version}"),
        ]))?;
        let tgz = tmp.join(format!("hls.js-{version}.tgz"));
        run(Command::new("tar").current_dir(&tmp).arg("xzf").arg(&tgz))?;
        let pkg = tmp.join("package");
        let manifest = std::fs::read_to_string(pkg.join("package.json"))
            .map_err(|e| format!("package.json: {e}"))?;
        if !manifest.contains(&format!("\"version\": \"{version}\"")) {
            return Err(format!("npm served another version than {version}"));
        }
        std::fs::create_dir_all(&assets).map_err(|e| format!("{}: {e}", assets.display()))?;
        // The source map is not shipped: drop the line that would make a browser's devtools
        // ask the server for it.
        let js = std::fs::read_to_string(pkg.join("dist/hls.min.js"))
            .map_err(|e| format!("dist/hls.min.js: {e}"))?;
        let js: String = js
            .lines()
            .filter(|l| !l.starts_with("//# sourceMappingURL="))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(assets.join("hls.min.js"), js).map_err(|e| e.to_string())?;
        std::fs::copy(pkg.join("LICENSE"), assets.join("LICENSE"))
            .map_err(|e| format!("LICENSE: {e}"))?;
        std::fs::write(assets.join("VERSION"), format!("{version}\n"))
            .map_err(|e| e.to_string())?;
        eprintln!("xtask: hls.js {version} vendored in {ASSETS}");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
