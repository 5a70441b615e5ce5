//! `cargo xtask vendor hls.js|dash.js [VERSION]`: refreshes a player library the binary serves
//! from its npm package, so the built-in HLS and DASH pages work with no Internet access.
//!
//! It writes `crates/hls/assets/<lib>/` — the minified library (without its source-map
//! comment), the package's licence and a `VERSION` file — from `npm pack <package>@VERSION`
//! (default: the version already there).

use std::path::Path;
use std::process::Command;

use crate::run;

/// A vendored library: its name here, npm package, file in the package, licence file, and
/// the name it is written under.
struct Lib {
    name: &'static str,
    package: &'static str,
    file: &'static str,
    licence: &'static str,
    out: &'static str,
}

const LIBS: &[Lib] = &[
    Lib {
        name: "hls.js",
        package: "hls.js",
        file: "dist/hls.min.js",
        licence: "LICENSE",
        out: "hls.min.js",
    },
    Lib {
        name: "dash.js",
        package: "dashjs",
        // The player without DRM and Smooth Streaming: what a live DASH page needs.
        file: "dist/modern/umd/dash.mediaplayer.min.js",
        licence: "LICENSE.md",
        out: "dash.min.js",
    },
];

pub fn run_vendor(root: &Path, args: &[String]) -> Result<(), String> {
    let name = args.first().map(String::as_str).unwrap_or("");
    match LIBS.iter().find(|l| l.name == name) {
        Some(lib) => vendor(root, lib, args.get(1).map(String::as_str)),
        None => Err("usage: cargo xtask vendor hls.js|dash.js [VERSION]".into()),
    }
}

fn vendor(root: &Path, lib: &Lib, version: Option<&str>) -> Result<(), String> {
    let assets_dir = format!("crates/hls/assets/{}", lib.name);
    let assets = root.join(&assets_dir);
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
            &format!("{}@{version}", lib.package),
        ]))?;
        let tgz = tmp.join(format!("{}-{version}.tgz", lib.package));
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
        let js = std::fs::read_to_string(pkg.join(lib.file))
            .map_err(|e| format!("{}: {e}", lib.file))?;
        let js: String = js
            .lines()
            .filter(|l| !l.starts_with("//# sourceMappingURL="))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(assets.join(lib.out), js).map_err(|e| e.to_string())?;
        std::fs::copy(pkg.join(lib.licence), assets.join("LICENSE"))
            .map_err(|e| format!("{}: {e}", lib.licence))?;
        std::fs::write(assets.join("VERSION"), format!("{version}\n"))
            .map_err(|e| e.to_string())?;
        eprintln!("xtask: {} {version} vendored in {assets_dir}", lib.name);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
