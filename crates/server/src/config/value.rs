//! Typed readers for configuration values. Each returns a message that says what was
//! expected and what was found; the caller adds the key and line.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::yaml::{Node, Value};
use super::{Encryption, HlsVariant, LogFormat};

fn scalar<'a>(v: &'a Node, what: &str) -> Result<&'a str, String> {
    match &v.value {
        Value::Scalar(s, _) => Ok(s),
        Value::Seq(_) => Err(format!("expected {what}, found a list")),
        Value::Map(_) => Err(format!("expected {what}, found a map")),
    }
}

pub fn string(v: &Node) -> Result<String, String> {
    if v.is_null() {
        return Ok(String::new());
    }
    scalar(v, "a string").map(str::to_string)
}

/// Where RTSP readers are redirected (`sourceRedirect`, `fallback`): a path of this server
/// (`/other`) or an `rtsp://` / `rtsps://` URL; empty for none.
pub fn redirect_target(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Ok(s);
    }
    if let Some(path) = s.strip_prefix('/') {
        tidegate_core::path::validate_path_name(path).map_err(|e| format!("'{s}': {e}"))?;
    } else if !(s.starts_with("rtsp://") || s.starts_with("rtsps://"))
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("'{s}' is not a path (/name) or an RTSP URL"));
    }
    Ok(s)
}

pub fn boolean(v: &Node) -> Result<bool, String> {
    let s = scalar(v, "yes or no")?;
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        _ => Err(format!("expected yes or no, found '{s}'")),
    }
}

pub fn one_of(v: &Node, allowed: &[&str]) -> Result<String, String> {
    let s = scalar(v, "a word")?;
    if allowed.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected one of {}, found '{s}'",
            allowed.join(", ")
        ))
    }
}

pub fn log_format(v: &Node) -> Result<LogFormat, String> {
    match one_of(v, &["text", "json"])?.as_str() {
        "json" => Ok(LogFormat::Json),
        _ => Ok(LogFormat::Text),
    }
}

pub fn encryption(v: &Node) -> Result<Encryption, String> {
    // `no` is a boolean-looking word; accept its spellings.
    let s = scalar(v, "no, optional or strict")?;
    match s.to_ascii_lowercase().as_str() {
        "no" | "false" => Ok(Encryption::No),
        "optional" => Ok(Encryption::Optional),
        "strict" | "yes" | "true" => Ok(Encryption::Strict),
        _ => Err(format!("expected no, optional or strict, found '{s}'")),
    }
}

pub fn hls_variant(v: &Node) -> Result<HlsVariant, String> {
    match one_of(v, &["lowLatency", "fmp4", "mpegts"])?.as_str() {
        "fmp4" => Ok(HlsVariant::Fmp4),
        "mpegts" => Ok(HlsVariant::Mpegts),
        _ => Ok(HlsVariant::LowLatency),
    }
}

pub fn uint_in(v: &Node, min: u32, max: u32) -> Result<u32, String> {
    let s = scalar(v, "a whole number")?;
    let n: u64 = s
        .parse()
        .map_err(|_| format!("expected a whole number, found '{s}'"))?;
    if n < u64::from(min) || n > u64::from(max) {
        return Err(format!("must be between {min} and {max}, found {n}"));
    }
    Ok(n as u32)
}

/// `:1935` (every interface), `127.0.0.1:1935`, `[::1]:1935`, `localhost:1935`.
pub fn address(v: &Node) -> Result<SocketAddr, String> {
    let s = scalar(v, "an address like :1935")?;
    let bad = || format!("expected an address like ':1935' or '127.0.0.1:1935', found '{s}'");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ip: IpAddr = match host {
        "" => IpAddr::from([0, 0, 0, 0]),
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Go-style durations: `200ms`, `1s`, `1.5s`, `2m`, `1h30m`. A bare number is refused: its
/// unit would be a guess.
/// An address, or an empty string for "off" (MediaMTX's way of disabling a listener).
pub fn optional_address(v: &Node) -> Result<Option<SocketAddr>, String> {
    if v.is_null() || matches!(&v.value, Value::Scalar(s, _) if s.trim().is_empty()) {
        return Ok(None);
    }
    address(v).map(Some)
}

pub fn duration(v: &Node) -> Result<Duration, String> {
    let s = scalar(v, "a duration like 1s")?;
    parse_duration(s)
        .ok_or_else(|| format!("expected a duration like 200ms, 1s or 2m, found '{s}'"))
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    tidegate_core::text::go_duration(s)
}

/// A list, or (as environment variables give) one comma-separated string.
pub fn string_list(v: &Node) -> Result<Vec<String>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    match &v.value {
        Value::Seq(items) => items
            .iter()
            .map(|i| scalar(i, "a string").map(str::to_string))
            .collect(),
        Value::Scalar(s, _) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()),
        Value::Map(_) => Err("expected a list, found a map".into()),
    }
}

/// A multicast IPv4 range like `224.1.0.0/16`.
pub fn ipv4_net(v: &Node) -> Result<ipnet::Ipv4Net, String> {
    let s = scalar(v, "a range like 224.1.0.0/16")?;
    let net: ipnet::Ipv4Net = s
        .parse()
        .map_err(|_| format!("expected a range like '224.1.0.0/16', found '{s}'"))?;
    if !net.network().is_multicast() {
        return Err(format!("'{s}' is not a multicast range (224.0.0.0/4)"));
    }
    Ok(net.trunc())
}

/// A UDP/TCP port number.
pub fn port(v: &Node) -> Result<u16, String> {
    uint_in(v, 1, 65535).map(|p| p as u16)
}

/// A non-empty list whose items all come from `allowed`.
pub fn subset_of(v: &Node, allowed: &[&str]) -> Result<Vec<String>, String> {
    let items = string_list(v)?;
    if items.is_empty() {
        return Err(format!("expected at least one of {}", allowed.join(", ")));
    }
    for i in &items {
        if !allowed.contains(&i.as_str()) {
            return Err(format!("'{i}' is not one of {}", allowed.join(", ")));
        }
    }
    Ok(items)
}

/// `webrtcICEServers2`: a list of `{url, username, password}` maps.
pub fn ice_servers(v: &Node) -> Result<Vec<tidegate_webrtc::IceServer>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let Value::Seq(items) = &v.value else {
        return Err("expected a list of {url, username, password}".into());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Map(entries) = &item.value else {
            return Err(format!(
                "line {}: expected a map with url, username, password",
                item.line
            ));
        };
        let mut s = tidegate_webrtc::IceServer::default();
        for e in entries {
            let value = string(&e.value)?;
            match e.key.as_str() {
                "url" => s.url = value,
                "username" => s.username = value,
                "password" => s.password = value,
                "clientOnly" => {}
                other => return Err(format!("line {}: unknown key '{other}'", e.line)),
            }
        }
        let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|p| s.url.starts_with(p));
        if !scheme_ok {
            return Err(format!(
                "line {}: url must start with stun:, stuns:, turn: or turns:",
                item.line
            ));
        }
        out.push(s);
    }
    Ok(out)
}

/// IP addresses or CIDR ranges: `127.0.0.1`, `10.0.0.0/8`, `::1`.
pub fn ip_list(v: &Node) -> Result<Vec<IpNet>, String> {
    string_list(v)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("expected an IP address or range like 10.0.0.0/8, found '{s}'")
                })
        })
        .collect()
}

/// `publisher`, or a URL the server pulls from.
/// `sourceFailover`: URLs a path can pull from, each as `source` takes them.
pub fn source_list(v: &Node) -> Result<Vec<String>, String> {
    let list = string_list(v)?;
    for u in &list {
        if u == "publisher" || u == "redirect" || !u.contains("://") {
            return Err(format!("'{u}' is not a URL to pull from"));
        }
        source(&Node {
            value: crate::config::yaml::Value::Scalar(u.clone(), false),
            line: v.line,
        })?;
    }
    Ok(list)
}

pub fn source(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    const SCHEMES: &[&str] = &[
        "rtsp://",
        "rtsps://",
        "rtsp+http://",
        "rtsps+http://",
        "rtsp+ws://",
        "rtsps+ws://",
        "rtmp://",
        "rtmps://",
        "srt://",
        "http://",
        "https://",
        "udp://",
        "udp+mpegts://",
        "udp+rtp://",
        "unix+mpegts://",
        "unix+rtp://",
        "whep://",
        "wheps://",
        "moqt://",
    ];
    if s == "rpiCamera" {
        return Err(
            "Tidegate does not drive Raspberry Pi cameras: publish the camera to the path \
                    instead (rpicam-vid … | ffmpeg … -f rtsp rtsp://host:8554/path)"
                .into(),
        );
    }
    if s == "redirect" {
        return Ok(s);
    }
    if s.starts_with("srt://") {
        tidegate_srt::caller::SrtUrl::parse(&s).map_err(|e| e.to_string())?;
        return Ok(s);
    }
    if s == "publisher" || SCHEMES.iter().any(|p| s.starts_with(p)) {
        Ok(s)
    } else {
        Err(format!(
            "expected 'publisher' or a URL (rtsp://, rtmp://, srt://, http(s)://, …), found '{s}'"
        ))
    }
}

/// Push destinations: `rtmp://` or `rtmps://` URLs with an app and a stream name, or
/// `srt://host:port?…` URLs.
pub fn push_list(v: &Node) -> Result<Vec<String>, String> {
    let urls = string_list(v)?;
    for u in &urls {
        if u.starts_with("srt://") {
            tidegate_srt::caller::SrtUrl::parse(u).map_err(|e| e.to_string())?;
            continue;
        }
        let ok = (u.starts_with("rtmp://") || u.starts_with("rtmps://"))
            && u.splitn(5, '/').filter(|s| !s.is_empty()).count() >= 4;
        if !ok {
            return Err(format!(
                "expected rtmp://host[:port]/app/key, rtmps://… or srt://host:port?…, found '{u}'"
            ));
        }
    }
    Ok(urls)
}

/// SRT passphrases are 10 to 79 characters (empty: none).
pub fn srt_passphrase(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    if !s.is_empty() && !(10..=79).contains(&s.chars().count()) {
        return Err(format!(
            "an SRT passphrase must be 10 to 79 characters, found {}",
            s.chars().count()
        ));
    }
    Ok(s)
}

/// `rtspTransport`: how a pulled RTSP source asks for RTP.
pub fn rtsp_transport(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    match s.as_str() {
        "automatic" | "udp" | "tcp" | "multicast" => Ok(s),
        _ => Err(format!(
            "expected automatic, udp, tcp or multicast, found '{s}'"
        )),
    }
}

/// `sourceFingerprint`: a SHA-256 certificate fingerprint (empty: none).
pub fn fingerprint(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    if !s.is_empty() {
        tidegate_core::tls::parse_fingerprint(&s).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// `authMethod`: `internal`, `http` or `jwt`.
pub fn auth_method(v: &Node) -> Result<tidegate_auth::Method, String> {
    Ok(match one_of(v, &["internal", "http", "jwt"])?.as_str() {
        "http" => tidegate_auth::Method::Http,
        "jwt" => tidegate_auth::Method::Jwt,
        _ => tidegate_auth::Method::Internal,
    })
}

/// A list of `{action, path}` (`authHTTPExclude`, `authJWTExclude`, a user's `permissions`).
pub fn permissions(v: &Node) -> Result<Vec<tidegate_auth::Permission>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let Value::Seq(items) = &v.value else {
        return Err("expected a list of {action, path}".into());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Map(entries) = &item.value else {
            return Err(format!(
                "line {}: expected a map with action and path",
                item.line
            ));
        };
        let (mut action, mut path) = (None, String::new());
        for e in entries {
            match e.key.as_str() {
                "action" => {
                    let a = string(&e.value)?;
                    action = Some(tidegate_core::Action::parse(&a).ok_or_else(|| {
                        format!(
                            "line {}: action must be one of publish, read, playback, api, metrics, pprof; found '{a}'",
                            e.line
                        )
                    })?);
                }
                "path" => path = string(&e.value)?,
                other => return Err(format!("line {}: unknown key '{other}'", e.line)),
            }
        }
        let action =
            action.ok_or_else(|| format!("line {}: a permission needs an action", item.line))?;
        out.push(
            tidegate_auth::Permission::new(action, &path)
                .map_err(|e| format!("line {}: path: {e}", item.line))?,
        );
    }
    Ok(out)
}

/// `authInternalUsers`: a list of `{user, pass, ips, permissions}`.
pub fn internal_users(v: &Node) -> Result<Vec<tidegate_auth::InternalUser>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let Value::Seq(items) = &v.value else {
        return Err("expected a list of {user, pass, ips, permissions}".into());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Map(entries) = &item.value else {
            return Err(format!(
                "line {}: expected a map with user, pass, ips, permissions",
                item.line
            ));
        };
        let mut user = tidegate_auth::InternalUser {
            user: tidegate_auth::Secret::Plain(String::new()),
            pass: tidegate_auth::Secret::Plain(String::new()),
            ips: Vec::new(),
            permissions: Vec::new(),
        };
        for e in entries {
            let at = |m: String| format!("line {}: {}: {m}", e.line, e.key);
            match e.key.as_str() {
                "user" => {
                    user.user = tidegate_auth::Secret::parse(&string(&e.value)?)
                        .map_err(|x| at(x.to_string()))?
                }
                "pass" => {
                    user.pass = tidegate_auth::Secret::parse(&string(&e.value)?)
                        .map_err(|x| at(x.to_string()))?
                }
                "ips" => user.ips = ip_list(&e.value).map_err(at)?,
                "permissions" => user.permissions = permissions(&e.value).map_err(at)?,
                other => return Err(format!("line {}: unknown key '{other}'", e.line)),
            }
        }
        // As MediaMTX: a name is required, and `any` takes no password.
        if user.user.is_empty() {
            return Err(format!(
                "line {}: user must not be empty (use 'any' for anyone)",
                item.line
            ));
        }
        if user.is_any() && !user.pass.is_empty() {
            return Err(format!(
                "line {}: the 'any' user takes no password",
                item.line
            ));
        }
        out.push(user);
    }
    Ok(out)
}

/// Empty, or an `http://` / `https://` URL.
pub fn http_url(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    if !s.is_empty() && !s.starts_with("http://") && !s.starts_with("https://") {
        return Err(format!("expected an http:// or https:// URL, found '{s}'"));
    }
    Ok(s)
}

/// `keyStore`: a SQLite file (`./tidegate-keys.db`, or `sqlite:<file>`), or a
/// `postgres://user:pass@host/db` URL.
pub fn key_store(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    tidegate_auth::keys::KeyStore::open(&s).map_err(|e| e.to_string())?;
    Ok(s)
}

/// A duration that must not be zero.
pub fn positive_duration(v: &Node) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A size in bytes: a number, optionally with `K`, `M`, `G` (or `KB`, `MB`, `GB`, `KiB`,
/// `MiB`, `GiB`), powers of 1024 all of them, as MediaMTX reads `recordMaxPartSize: 50M`.
pub fn size(v: &Node) -> Result<u64, String> {
    let s = scalar(v, "a size like 50M")?.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "KiB" => 1024.0,
        "M" | "MB" | "MiB" => 1024.0 * 1024.0,
        "G" | "GB" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("expected a size like 50M or 1G, found '{s}'")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a size like 50M or 1G, found '{s}'"))?;
    let bytes = n * scale;
    if !(1.0..=1e12).contains(&bytes) {
        return Err(format!("'{s}' is out of range (1 byte to 1T)"));
    }
    Ok(bytes as u64)
}

/// A size that may be 0 (`udpReadBufferSize: 0`: the system's default); at most 1G.
pub fn size_or_zero(v: &Node) -> Result<u64, String> {
    if scalar(v, "a size like 8M")?.trim() == "0" {
        return Ok(0);
    }
    let n = size(v)?;
    if n > 1 << 30 {
        return Err("at most 1G".into());
    }
    Ok(n)
}

/// `recordPath`: a template with `%path` and a start time (see `tidegate-record`).
pub fn record_path(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    tidegate_record::Template::new(&s).map_err(|e| e.to_string())?;
    Ok(s)
}

/// `webhooks`: a list of `{url, events, secret, fingerprint}`.
pub fn webhooks(v: &Node) -> Result<Vec<crate::webhooks::WebhookConf>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let Value::Seq(items) = &v.value else {
        return Err("expected a list of {url, events, secret}".into());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Map(entries) = &item.value else {
            return Err(format!(
                "line {}: expected a map with url, events, secret",
                item.line
            ));
        };
        let mut w = crate::webhooks::WebhookConf {
            url: String::new(),
            events: Vec::new(),
            secret: String::new(),
            fingerprint: String::new(),
        };
        for e in entries {
            match e.key.as_str() {
                "url" => w.url = string(&e.value)?,
                "events" => w.events = string_list(&e.value)?,
                "secret" => w.secret = string(&e.value)?,
                "fingerprint" => w.fingerprint = fingerprint(&e.value)?,
                other => {
                    return Err(format!(
                        "line {}: unknown key '{other}' (url, events, secret, fingerprint)",
                        e.line
                    ))
                }
            }
        }
        if !(w.url.starts_with("http://") || w.url.starts_with("https://"))
            || url::Url::parse(&w.url).is_err()
        {
            return Err(format!(
                "line {}: url must be an http:// or https:// URL",
                item.line
            ));
        }
        for ev in &w.events {
            if !crate::webhooks::EVENTS.contains(&ev.as_str()) {
                return Err(format!(
                    "line {}: unknown event '{ev}' (one of {})",
                    item.line,
                    crate::webhooks::EVENTS.join(", ")
                ));
            }
        }
        out.push(w);
    }
    Ok(out)
}

/// MediaMTX's older `webrtcICEServers`: `stun:host:port`, or `turn:user:pass:host:port`.
pub fn legacy_ice_servers(v: &Node) -> Result<Vec<tidegate_webrtc::IceServer>, String> {
    let mut out = Vec::new();
    for s in string_list(v)? {
        let (scheme, rest) = s.split_once(':').ok_or_else(|| {
            format!("expected stun:host:port or turn:user:pass:host:port, found '{s}'")
        })?;
        let server = match scheme {
            "stun" | "stuns" => tidegate_webrtc::IceServer {
                url: s.clone(),
                ..Default::default()
            },
            "turn" | "turns" => {
                let parts: Vec<&str> = rest.splitn(3, ':').collect();
                match parts.as_slice() {
                    [user, pass, host] if host.contains(':') => tidegate_webrtc::IceServer {
                        url: format!("{scheme}:{host}"),
                        username: user.to_string(),
                        password: pass.to_string(),
                    },
                    _ => tidegate_webrtc::IceServer {
                        url: s.clone(),
                        ..Default::default()
                    },
                }
            }
            _ => {
                return Err(format!(
                    "url must start with stun:, stuns:, turn: or turns:, found '{s}'"
                ))
            }
        };
        out.push(server);
    }
    Ok(out)
}

/// MediaMTX's plain credentials (`hlsCDNSecret`): letters, digits and `!$()*+.;<=>[]^_-@#&`.
pub fn plain_credential(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    let ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "!$()*+.;<=>[]^_-@#&".contains(c));
    if !ok {
        return Err("contains unsupported characters; supported are letters, digits and !$()*+.;<=>[]^_-@#&".into());
    }
    Ok(s)
}

/// `forward`: destinations, each a URL or a map with `dest`, `destFingerprint`,
/// `whipBearerToken`. `rtmp(s)://`, `srt://`, `rtsp(s)://` and `whip(s)://` URLs.
pub fn forward_list(v: &Node) -> Result<Vec<tidegate_core::ForwardDest>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let Value::Seq(items) = &v.value else {
        return Err("expected a list of destinations".into());
    };
    let mut out = Vec::new();
    for item in items {
        let mut d = tidegate_core::ForwardDest::default();
        match &item.value {
            Value::Scalar(s, _) => d.dest = s.clone(),
            Value::Map(entries) => {
                for e in entries {
                    match e.key.as_str() {
                        "dest" => d.dest = string(&e.value)?,
                        "destFingerprint" => d.dest_fingerprint = fingerprint(&e.value)?,
                        "whipBearerToken" => d.whip_bearer_token = string(&e.value)?,
                        other => return Err(format!("line {}: unknown key '{other}'", e.line)),
                    }
                }
            }
            Value::Seq(_) => return Err(format!("line {}: expected a destination", item.line)),
        }
        const SCHEMES: &[&str] = &[
            "rtmp://", "rtmps://", "srt://", "rtsp://", "rtsps://", "whip://", "whips://",
        ];
        if !SCHEMES.iter().any(|p| d.dest.starts_with(p)) {
            return Err(format!(
                "line {}: dest must be an rtmp(s)://, srt://, rtsp(s):// or whip(s):// URL, found '{}'",
                item.line, d.dest
            ));
        }
        if d.dest.starts_with("srt://") {
            tidegate_srt::caller::SrtUrl::parse(&d.dest).map_err(|e| e.to_string())?;
        }
        out.push(d);
    }
    Ok(out)
}

/// `alwaysAvailableTracks`: `{codec, sampleRate, channelCount, muLaw}` maps.
pub fn always_available_tracks(v: &Node) -> Result<Vec<tidegate_core::OfflineTrack>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let Value::Seq(items) = &v.value else {
        return Err("expected a list of tracks ({codec: H264}, …)".into());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Map(entries) = &item.value else {
            return Err(format!("line {}: expected a map with codec", item.line));
        };
        let mut codec = String::new();
        let (mut rate, mut channels, mut mu_law) = (None, None, None);
        for e in entries {
            match e.key.as_str() {
                "codec" => {
                    codec = one_of(
                        &e.value,
                        &[
                            "AV1",
                            "VP9",
                            "H265",
                            "H264",
                            "Opus",
                            "MPEG4Audio",
                            "G711",
                            "LPCM",
                        ],
                    )?
                }
                "sampleRate" => rate = Some(uint_in(&e.value, 1, 384_000)?),
                "channelCount" => channels = Some(uint_in(&e.value, 1, 8)? as u8),
                "muLaw" => mu_law = Some(boolean(&e.value)?),
                other => return Err(format!("line {}: unknown key '{other}'", e.line)),
            }
        }
        if codec.is_empty() {
            return Err(format!("line {}: a track needs a codec", item.line));
        }
        let g711 = codec == "G711";
        out.push(tidegate_core::OfflineTrack {
            sample_rate: rate.unwrap_or(if g711 { 8000 } else { 48_000 }),
            channel_count: channels.unwrap_or(if g711 { 1 } else { 2 }),
            mu_law: mu_law.unwrap_or(false),
            codec,
        });
    }
    Ok(out)
}

/// `rtspScale`: empty, or a non-zero number (negative plays backwards).
pub fn rtsp_scale(v: &Node) -> Result<String, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Ok(s);
    }
    match s.parse::<f64>() {
        Ok(x) if x != 0.0 && x.is_finite() => Ok(s),
        _ => Err(format!(
            "expected a non-zero number such as 2 or -1, found '{s}'"
        )),
    }
}

/// A `[first, last]` port range.
pub fn port_range(v: &Node) -> Result<(u16, u16), String> {
    let Value::Seq(items) = &v.value else {
        return Err("expected [first, last]".into());
    };
    let [a, b] = items.as_slice() else {
        return Err("expected two ports, [first, last]".into());
    };
    let (a, b) = (port(a)?, port(b)?);
    if a > b || a == 0 {
        return Err(format!(
            "expected first ≤ last, both above 0, found [{a}, {b}]"
        ));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Node {
        Node {
            value: Value::Scalar(s.into(), true),
            line: 1,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "1x", "s", "1.2.3s", "-1s", "1e400s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address(&n(":1935")).unwrap(),
            "0.0.0.0:1935".parse().unwrap()
        );
        assert_eq!(
            address(&n("127.0.0.1:80")).unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            address(&n("[::1]:80")).unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            address(&n("localhost:0")).unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        for bad in ["1935", ":99999", "host:1", ":", "a:b"] {
            assert!(address(&n(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn booleans_and_lists() {
        assert!(boolean(&n("yes")).unwrap());
        assert!(!boolean(&n("False")).unwrap());
        assert!(boolean(&n("maybe")).is_err());
        assert_eq!(string_list(&n("a, b,,c")).unwrap(), vec!["a", "b", "c"]);
        assert_eq!(ip_list(&n("127.0.0.1,10.0.0.0/8")).unwrap().len(), 2);
        assert!(ip_list(&n("10.0.0.300")).is_err());
        assert!(srt_passphrase(&n("short")).is_err());
        assert!(srt_passphrase(&n("long enough")).is_ok());
        assert!(source(&n("ftp://x")).is_err());
        assert!(push_list(&n("rtmp://a/live/key, rtmps://b:443/app/k")).is_ok());
        assert!(push_list(&n("rtmp://a/live")).is_err());
        assert!(push_list(&n("srt://a:1/x/y")).is_err());
    }
}
