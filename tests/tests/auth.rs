//! Who may publish and read, with real clients: `authInternalUsers` with hashed passwords on
//! every protocol (ffmpeg over RTMP, RTSP, SRT and HLS; aiortc over WHIP and WHEP), HTTP auth
//! against an auth server stand-in that records what it is asked, JWT against a JWKS made in
//! the test (RS256 and ES256), sessions that end when their token expires, the API and metrics
//! behind their permission, and brute force slowed then refused, logged without the secret.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::Digest;
use tidegate_tests::http::{fetch, request};
use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, peer, run_bounded, scratch, server_binary};

const READY: Duration = Duration::from_secs(20);

fn frames_in(file: &Path) -> usize {
    ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30))
        .packets_of("video")
        .len()
}

/// ffmpeg reads `url` for 2 s: Some(video frames) when it succeeded, None when refused.
fn read_for_2s(url: &str, dir: &Path, name: &str) -> Option<usize> {
    let out = dir.join(format!("{name}.mkv"));
    let mut extra = Vec::new();
    if url.starts_with("rtsp") {
        extra = vec!["-rtsp_transport", "tcp"];
    }
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(&extra)
        .args(["-i", url, "-t", "2", "-c", "copy"])
        .arg(&out);
    let mut p = PeerProcess::spawn(&format!("read-{name}"), &mut cmd, dir);
    p.wait(Duration::from_secs(40))
        .success()
        .then(|| frames_in(&out))
}

fn sha256_b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s))
}

fn argon2_phc(s: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"tidegate-e2e-slt").unwrap();
    argon2::Argon2::default()
        .hash_password(s.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn webrtc_peer(args: &[&str]) -> Command {
    let mut cmd = Command::new(peer("python"));
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
        .args(args);
    cmd
}

/// `authInternalUsers` with a SHA-256 publisher and an argon2 viewer: on RTMP, RTMPS, RTSP (Basic),
/// SRT, HLS, WHIP and WHEP the right credentials are let in (media read back) and wrong ones
/// refused (the client fails; no path is created).
#[test]
fn internal_users_with_hashed_passwords_on_every_protocol() {
    let dir = scratch("auth-internal");
    let (key, cert) = tidegate_tests::self_signed(&dir);
    let server = TestServer::start(&format!(
        "rtmpEncryption: optional\nrtmpServerKey: {}\nrtmpServerCert: {}\n\
         rtspAuthMethods: [basic]\n\
         authInternalUsers:\n\
         \x20 - user: pub\n    pass: sha256:{}\n    permissions:\n      - action: publish\n        path: ~^icam\n\
         \x20 - user: viewer\n    pass: argon2:{}\n    permissions:\n      - action: read\n        path: ~^icam\n\
         \x20 - user: any\n    ips: [127.0.0.1]\n    permissions:\n      - action: api\n",
        key.display(),
        cert.display(),
        sha256_b64("pubpass"),
        argon2_phc("viewpass"),
    ));
    let rtmp = server.rtmp_url("icam");

    // RTMP publish: wrong password refused, no path; right one publishes.
    let mut wrong = ffmpeg_publish(&format!("{rtmp}?user=pub&pass=nope"), 10, "flv", &dir);
    assert!(!wrong.wait(Duration::from_secs(20)).success());
    assert!(server.paths().get("icam").is_none_or(|p| !p.ready));
    let _publisher = ffmpeg_publish(&format!("{rtmp}?user=pub&pass=pubpass"), 60, "flv", &dir);
    server.wait_ready("icam", READY);

    // Readers: the publisher's credentials do not read; the viewer's do, on every protocol.
    let rtsp = server.rtsp_url("icam");
    let rtsp_with = |u: &str, p: &str| rtsp.replacen("rtsp://", &format!("rtsp://{u}:{p}@"), 1);
    let srt = |u: &str, p: &str| server.srt_url(&format!("read:icam:{u}:{p}"), "");
    let hls = format!("http://{}/icam/index.m3u8", server.hls_addr());
    let hls_with = |u: &str, p: &str| hls.replacen("http://", &format!("http://{u}:{p}@"), 1);
    let rtmps = server.rtmps_url("icam");
    let cases = [
        (
            "rtmp",
            format!("{rtmp}?user=viewer&pass=viewpass"),
            format!("{rtmp}?user=pub&pass=pubpass"),
        ),
        (
            "rtmps",
            format!("{rtmps}?user=viewer&pass=viewpass"),
            format!("{rtmps}?user=viewer&pass=x"),
        ),
        (
            "rtsp",
            rtsp_with("viewer", "viewpass"),
            rtsp_with("viewer", "wrong"),
        ),
        ("srt", srt("viewer", "viewpass"), srt("viewer", "nope")),
        (
            "hls",
            hls_with("viewer", "viewpass"),
            hls_with("viewer", "nope"),
        ),
    ];
    for (proto, good, bad) in &cases {
        let n = read_for_2s(good, &dir, &format!("{proto}-good"))
            .unwrap_or_else(|| panic!("{proto}: the viewer was refused"));
        assert!(n >= 30, "{proto}: {n} frames");
        assert_eq!(
            read_for_2s(bad, &dir, &format!("{proto}-bad")),
            None,
            "{proto}: wrong credentials were let in"
        );
    }
    // HLS without credentials: a 401 with a Basic challenge.
    let r = fetch(server.hls_addr(), "/icam/index.m3u8", &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());

    // WHEP (aiortc): the viewer plays; a wrong password is refused.
    let whep = server.webrtc_url("icam", "whep");
    let out = run_bounded(
        &mut webrtc_peer(&[
            "whep",
            &whep,
            "--seconds",
            "3",
            "--user",
            "viewer",
            "--pass",
            "viewpass",
        ]),
        Duration::from_secs(60),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        report["viewers"][0]["frames"].as_u64().unwrap_or(0) >= 45,
        "{report}"
    );
    let refused = run_bounded(
        &mut webrtc_peer(&[
            "whep",
            &whep,
            "--seconds",
            "2",
            "--user",
            "viewer",
            "--pass",
            "no",
        ]),
        Duration::from_secs(60),
    );
    assert!(!refused.status.success());
    let report: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["viewers"][0]["status"], 401, "{report}");

    // WHIP (aiortc) publishes to cam2 with the publisher's credentials; not with the viewer's.
    let whip = server.webrtc_url("icam2", "whip");
    let bad = run_bounded(
        &mut webrtc_peer(&[
            "whip",
            &whip,
            "--seconds",
            "2",
            "--user",
            "viewer",
            "--pass",
            "viewpass",
        ]),
        Duration::from_secs(60),
    );
    assert!(!bad.status.success());
    assert!(server.paths().get("icam2").is_none_or(|p| !p.ready));
    let mut whip_pub = PeerProcess::spawn(
        "whip",
        &mut webrtc_peer(&[
            "whip",
            &whip,
            "--seconds",
            "20",
            "--user",
            "pub",
            "--pass",
            "pubpass",
        ]),
        &dir,
    );
    server.wait_ready("icam2", READY);
    whip_pub.kill9();

    // Our side: every refusal is in the log, with protocol, address, action and path, and
    // never a password.
    for (proto, action, path) in [
        ("rtmp", "publish", "icam"),
        ("rtmp", "read", "icam"),
        ("rtsp", "read", "icam"),
        ("srt", "read", "icam"),
        ("hls", "read", "icam"),
        ("webrtc", "read", "icam"),
        ("webrtc", "publish", "icam2"),
    ] {
        let head = format!("[auth] {proto} 127.0.0.1 {action} '{path}'");
        let lines = tidegate_tests::logs::lines_with(&[&head, "refused"]);
        assert!(
            !lines.is_empty(),
            "no log line for a refused {proto} {action}"
        );
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("nope") && !l.contains("viewpass")),
            "{lines:?}"
        );
    }
}

/// A one-shot Python HTTP server (auth decisions and a JWKS), its port, and its request log.
struct AuthServer {
    _process: PeerProcess,
    port: u16,
    log: PathBuf,
}

impl AuthServer {
    fn start(dir: &Path, name: &str, args: &[&str]) -> AuthServer {
        let port_file = dir.join(format!("{name}.port"));
        let log = dir.join(format!("{name}.jsonl"));
        let mut cmd = Command::new(peer("python"));
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/auth_server.py"))
            .args(["serve", "--port-file"])
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(args);
        let process = PeerProcess::spawn(name, &mut cmd, dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the auth server did not start: {}",
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        AuthServer {
            _process: process,
            port,
            log,
        }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// `authMethod: http`: MediaMTX's JSON body reaches the auth server (checked field by field);
/// 2xx lets in, 401 refuses; a slow auth server refuses within the timeout while other sessions
/// go on; a dead one refuses at once.
#[test]
fn http_auth_asks_the_auth_server_and_fails_closed() {
    let dir = scratch("auth-http");
    let auth = AuthServer::start(
        &dir,
        "auth",
        &[
            "--allow-user",
            "good",
            "--allow-user",
            "slow",
            "--allow-user",
            "later-denied",
            "--delay-user",
            "slow",
            "--delay",
            "30",
            "--deny-file",
            dir.join("deny").to_str().unwrap(),
        ],
    );
    let server = TestServer::start(&format!(
        "readTimeout: 3s\nauthMethod: http\nauthHTTPAddress: http://127.0.0.1:{}/auth\n\
         authHTTPExclude:\n  - action: api\n",
        auth.port
    ));
    let rtmp = server.rtmp_url("cam");

    // The slow one waits on the auth server; meanwhile a good publisher gets in at once.
    let started = Instant::now();
    let mut slow = ffmpeg_publish(&format!("{rtmp}?user=slow&pass=x"), 20, "flv", &dir);
    let _good = ffmpeg_publish(&format!("{rtmp}?user=good&pass=pw"), 60, "flv", &dir);
    server.wait_ready("cam", READY);
    let ready_after = started.elapsed();
    assert!(!slow.wait(Duration::from_secs(40)).success());
    let refused_after = started.elapsed();
    eprintln!("http auth: good publisher ready after {ready_after:?}, slow one refused after {refused_after:?}");
    // The slow decision held nobody else up: the good publisher was in first. The slow one is
    // refused by the 3 s timeout (plus ffmpeg's own time, more on a loaded machine), not by
    // the auth server's 30 s.
    assert!(
        ready_after < refused_after,
        "{ready_after:?} {refused_after:?}"
    );
    assert!(refused_after < Duration::from_secs(25), "{refused_after:?}");

    // A refused reader, and an allowed one over SRT.
    assert_eq!(
        read_for_2s(&format!("{rtmp}?user=bad&pass=x"), &dir, "bad"),
        None
    );
    let n = read_for_2s(&server.srt_url("read:cam:good:pw", ""), &dir, "srt").unwrap();
    assert!(n >= 30, "{n}");

    let bodies = auth.requests();
    let publish = bodies
        .iter()
        .find(|b| b["user"] == "good" && b["action"] == "publish")
        .unwrap_or_else(|| panic!("{bodies:?}"));
    assert_eq!(publish["password"], "pw");
    assert_eq!(publish["ip"], "127.0.0.1");
    assert_eq!(publish["path"], "cam");
    assert_eq!(publish["protocol"], "rtmp");
    assert_eq!(publish["query"], "user=good&pass=pw");
    assert_eq!(publish["token"], "");
    assert!(publish["id"].is_string(), "{publish}");
    let srt_read = bodies
        .iter()
        .find(|b| b["protocol"] == "srt")
        .unwrap_or_else(|| panic!("{bodies:?}"));
    assert_eq!(srt_read["action"], "read");
    assert!(bodies.iter().any(|b| b["user"] == "bad"));
    // The API was excluded: it never reached the auth server.
    let _ = request(server.api_addr(), "GET", "/v3/paths/list");
    assert!(!auth.requests().iter().any(|b| b["action"] == "api"));
    drop(server);

    // Re-check: a live publisher whose right the auth server takes back is ended at the next
    // re-check (every 500 ms here).
    let server = TestServer::start(&format!(
        "authMethod: http\nauthHTTPAddress: http://127.0.0.1:{}/auth\nauthHTTPRecheckPeriod: 500ms\n",
        auth.port
    ));
    let mut p = ffmpeg_publish(
        &format!("{}?user=later-denied&pass=x", server.rtmp_url("re")),
        60,
        "flv",
        &dir,
    );
    server.wait_ready("re", READY);
    let t = Instant::now();
    std::fs::write(dir.join("deny"), "later-denied").unwrap();
    server.wait_not_ready("re", Duration::from_secs(10));
    let ended = t.elapsed();
    eprintln!("http re-check: the refused publisher ended {ended:?} after the auth server changed its mind");
    assert!(ended <= Duration::from_millis(1500), "{ended:?}");
    assert!(!p.wait(Duration::from_secs(20)).success());
    drop(server);

    // A dead auth server: refused, not waited on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let server = TestServer::start(&format!(
        "authMethod: http\nauthHTTPAddress: http://127.0.0.1:{port}/auth\n"
    ));
    let mut p = ffmpeg_publish(
        &format!("{}?user=good&pass=pw", server.rtmp_url("cam")),
        10,
        "flv",
        &dir,
    );
    let t = Instant::now();
    assert!(!p.wait(Duration::from_secs(20)).success());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(server.paths().get("cam").is_none_or(|p| !p.ready));
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The JWT tooling of `auth_server.py`.
fn jwt_tool(args: &[&str]) -> String {
    let out = run_bounded(
        Command::new(peer("python"))
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/auth_server.py"))
            .args(args),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn mint(dir: &Path, kid: &str, claims: serde_json::Value) -> String {
    jwt_tool(&[
        "mint",
        "--dir",
        dir.to_str().unwrap(),
        "--kid",
        kid,
        "--claims",
        &claims.to_string(),
    ])
}

fn hls_status(addr: SocketAddr, token: &str) -> u16 {
    fetch(
        addr,
        "/cam/index.m3u8",
        &[&format!("Authorization: Bearer {token}")],
    )
    .status
}

/// `authMethod: jwt` with a JWKS served in the test: an RS256 token publishes (RTMP `?jwt=`),
/// an expired one, one for another audience and one without the permission are refused; an
/// ES256 token whose key is not in the JWKS yet is refused, then accepted once the JWKS has
/// it (refetched on the unknown kid); `POST /v3/auth/jwks/refresh` answers.
#[test]
fn jwt_from_a_jwks() {
    let dir = scratch("auth-jwt");
    let d = dir.to_str().unwrap();
    jwt_tool(&["keys", "--dir", d, "--kid", "r1", "--alg", "RS256"]);
    jwt_tool(&["keys", "--dir", d, "--kid", "e1", "--alg", "ES256"]);
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwt_tool(&["jwks", "--dir", d, "--kid", "r1"])).unwrap();
    let idp = AuthServer::start(&dir, "idp", &["--jwks", jwks.to_str().unwrap()]);
    let server = TestServer::start(&format!(
        "authMethod: jwt\nauthJWTJWKS: http://127.0.0.1:{}/jwks.json\nauthJWTAudience: tidegate\n\
         authJWTExclude:\n  - action: api\n",
        idp.port
    ));
    let perms = serde_json::json!([{"action": "publish", "path": "cam"}, {"action": "read", "path": "cam"}]);
    let claims = |exp: u64, aud: &str| serde_json::json!({"sub": "cam-operator", "aud": aud, "exp": exp, "mediamtx_permissions": perms});
    let good = mint(&dir, "r1", claims(now_s() + 120, "tidegate"));
    let expired = mint(&dir, "r1", claims(now_s() - 5, "tidegate"));
    let other_aud = mint(&dir, "r1", claims(now_s() + 120, "someone-else"));
    let no_perm = mint(
        &dir,
        "r1",
        serde_json::json!({"aud": "tidegate", "exp": now_s() + 120, "mediamtx_permissions": [{"action": "read", "path": "other"}]}),
    );
    let rtmp = server.rtmp_url("cam");
    for (what, token) in [
        ("expired", &expired),
        ("audience", &other_aud),
        ("permission", &no_perm),
    ] {
        let mut p = ffmpeg_publish(&format!("{rtmp}?jwt={token}"), 10, "flv", &dir);
        assert!(!p.wait(Duration::from_secs(20)).success(), "{what}: let in");
    }
    assert!(server.paths().get("cam").is_none_or(|p| !p.ready));
    let _publisher = ffmpeg_publish(&format!("{rtmp}?jwt={good}"), 60, "flv", &dir);
    server.wait_ready("cam", READY);
    assert_eq!(hls_status(server.hls_addr(), &good), 200);
    // The player's way: the token in the page's query is carried to every URI it is given.
    let r = fetch(
        server.hls_addr(),
        &format!("/cam/index.m3u8?jwt={good}"),
        &[],
    );
    assert_eq!(r.status, 200);
    let media = r
        .text()
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap_or_default()
        .to_string();
    assert!(media.contains(&format!("jwt={good}")), "{media}");
    let r = fetch(server.hls_addr(), &format!("/cam/{media}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());

    // ES256 with a key the JWKS does not have yet.
    let es = mint(&dir, "e1", claims(now_s() + 120, "tidegate"));
    assert_eq!(hls_status(server.hls_addr(), &es), 401);
    std::fs::write(
        &jwks,
        jwt_tool(&["jwks", "--dir", d, "--kid", "r1", "--kid", "e1"]),
    )
    .unwrap();
    // The unknown kid makes the JWKS be fetched again (at most every few seconds).
    let deadline = Instant::now() + Duration::from_secs(20);
    while hls_status(server.hls_addr(), &es) != 200 {
        assert!(Instant::now() < deadline, "the new key was never fetched");
        std::thread::sleep(Duration::from_millis(1000));
    }
    let fetched = idp.requests().iter().filter(|r| r["jwks"] == true).count();
    assert!(fetched >= 2, "{fetched} JWKS fetches");
    let (status, _) = request(server.api_addr(), "POST", "/v3/auth/jwks/refresh");
    assert_eq!(status, 200);
}

/// Tokens that expire mid-stream end their sessions within a second of `exp`: RTMP, SRT and
/// WHIP publishers, and RTMP, SRT and WHEP readers (the read path's publisher has a longer
/// token and carries on).
#[test]
fn sessions_end_when_their_token_expires() {
    let dir = scratch("auth-jwt-expiry");
    let d = dir.to_str().unwrap();
    jwt_tool(&["keys", "--dir", d, "--kid", "k", "--alg", "ES256"]);
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwt_tool(&["jwks", "--dir", d, "--kid", "k"])).unwrap();
    let idp = AuthServer::start(&dir, "idp", &["--jwks", jwks.to_str().unwrap()]);
    let server = TestServer::start(&format!(
        "authMethod: jwt\nauthJWTJWKS: http://127.0.0.1:{}/jwks.json\nauthJWTExclude:\n  - action: api\n",
        idp.port
    ));
    let token = |exp: u64| {
        mint(
            &dir,
            "k",
            serde_json::json!({"exp": exp, "mediamtx_permissions": [{"action": "publish"}, {"action": "read"}]}),
        )
    };
    let long = token(now_s() + 300);
    let _publisher = ffmpeg_publish(
        &format!("{}?jwt={long}", server.rtmp_url("cam")),
        90,
        "flv",
        &dir,
    );
    server.wait_ready("cam", READY);

    // Readers whose token ends in 8 s; a publisher (path cam2) whose token ends then too.
    let exp = now_s() + 8;
    let short = token(exp);
    let mut rtmp_reader = ffmpeg_read(
        &format!("{}?jwt={short}", server.rtmp_url("cam")),
        60,
        &dir.join("r.mkv"),
        &dir,
    );
    let mut srt_reader = PeerProcess::spawn(
        "srt-read",
        Command::new(peer("ffmpeg"))
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i"])
            .arg(server.srt_url(&format!("read:cam::{short}"), ""))
            .args(["-t", "60", "-c", "copy"])
            .arg(dir.join("s.ts")),
        &dir,
    );
    let mut whep = PeerProcess::spawn(
        "whep",
        &mut webrtc_peer(&[
            "whep",
            &server.webrtc_url("cam", "whep"),
            "--seconds",
            "30",
            "--token",
            &short,
        ]),
        &dir,
    );
    // Publishers with the short token: RTMP (cam2), SRT (cam3), WHIP (cam4).
    let mut short_pubs = vec![
        ffmpeg_publish(
            &format!("{}?jwt={short}", server.rtmp_url("cam2")),
            60,
            "flv",
            &dir,
        ),
        ffmpeg_publish(
            &server.srt_url(&format!("publish:cam3::{short}"), "&latency=200000"),
            60,
            "mpegts",
            &dir,
        ),
    ];
    let mut whip = PeerProcess::spawn(
        "whip",
        &mut webrtc_peer(&[
            "whip",
            &server.webrtc_url("cam4", "whip"),
            "--seconds",
            "30",
            "--token",
            &short,
        ]),
        &dir,
    );
    server.wait_readers("cam", 3, READY);
    let publishers = ["cam2", "cam3", "cam4"];
    for p in publishers {
        server.wait_ready(p, READY);
    }
    // Watch the sessions go, and note when.
    let kinds = ["rtmpConn", "srtConn", "webRTCSession"];
    let mut ended: Vec<Option<f64>> = vec![None; kinds.len()];
    let mut pub_ended: Vec<Option<f64>> = vec![None; publishers.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while (ended.iter().chain(&pub_ended).any(Option::is_none)) && Instant::now() < deadline {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let readers = server
            .paths()
            .get("cam")
            .map(|p| p.readers)
            .unwrap_or_default();
        for (i, k) in kinds.iter().enumerate() {
            if ended[i].is_none() && !readers.iter().any(|(kind, _)| kind == k) {
                ended[i] = Some(t);
            }
        }
        for (i, p) in publishers.iter().enumerate() {
            if pub_ended[i].is_none() && !server.paths().get(p).is_some_and(|p| p.ready) {
                pub_ended[i] = Some(t);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let exp = exp as f64;
    let sessions = kinds
        .iter()
        .map(|k| format!("{k} reader"))
        .chain(["RTMP publisher", "SRT publisher", "WHIP publisher"].map(String::from));
    for (what, e) in sessions.zip(ended.iter().chain(&pub_ended)) {
        let e = e.unwrap_or_else(|| panic!("the {what} did not end"));
        eprintln!("{what} ended {:+.3} s from exp", e - exp);
        assert!(
            e >= exp - 0.05 && e <= exp + 1.0,
            "{what}: {:+.3} s from exp",
            e - exp
        );
    }
    // The clients saw their sessions close; the long-token publisher is still there.
    for p in &mut short_pubs {
        assert!(!p.wait(Duration::from_secs(20)).success());
    }
    rtmp_reader.wait(Duration::from_secs(20));
    srt_reader.wait(Duration::from_secs(20));
    whep.kill9();
    whip.kill9();
    assert!(server.paths().get("cam").is_some_and(|p| p.ready));
}

/// The API and metrics need their permission: refused without (401 and a Basic challenge)
/// and with a wrong password, answered with the admin's.
#[test]
fn api_and_metrics_need_their_permission() {
    let server = TestServer::start(
        "authInternalUsers:\n\
         \x20 - user: admin\n    pass: adminpw\n    permissions:\n      - action: api\n      - action: metrics\n\
         \x20 - user: any\n    permissions:\n      - action: publish\n      - action: read\n",
    );
    for (addr, path) in [
        (server.api_addr(), "/v3/paths/list"),
        (server.metrics_addr(), "/metrics"),
    ] {
        let r = fetch(addr, path, &[]);
        assert_eq!(r.status, 401, "{path}");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic")));
        // admin:wrong, then admin:adminpw.
        let r = fetch(addr, path, &["Authorization: Basic YWRtaW46d3Jvbmc="]);
        assert_eq!(r.status, 401, "{path}");
        let r = fetch(addr, path, &["Authorization: Basic YWRtaW46YWRtaW5wdw=="]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

/// 50 wrong passwords from one address: the first are answered later and later, the rest
/// refused at once (the right password too, until the failures age out); the log names
/// protocol, path and address and never the password.
#[test]
fn brute_force_is_slowed_then_refused_and_logged_without_the_secret() {
    let dir = scratch("auth-brute");
    let conf = dir.join("tidegate.yml");
    let hls = tidegate_tests::peers::free_port();
    std::fs::write(
        &conf,
        format!(
            "api: no\nmetrics: no\nrtmp: no\nrtsp: no\nwebrtc: no\nsrt: no\nhlsAddress: 127.0.0.1:{hls}\n\
             authInternalUsers:\n  - user: bob\n    pass: right-one\n    permissions:\n      - action: read\n"
        ),
    )
    .unwrap();
    let server = PeerProcess::spawn("tidegate", Command::new(server_binary()).arg(&conf), &dir);
    let addr: SocketAddr = format!("127.0.0.1:{hls}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    use base64::Engine;
    let basic = |p: &str| {
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("bob:{p}"))
        )
    };
    let start = Instant::now();
    let mut times = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        let r = fetch(
            addr,
            "/cam/index.m3u8",
            &[&basic(&format!("guess-{i}-hunter2"))],
        );
        assert_eq!(r.status, 401);
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    let right = fetch(addr, "/cam/index.m3u8", &[&basic("right-one")]);
    eprintln!(
        "brute force: 50 attempts in {total:?}; first {:?}, 10th {:?}, 11th {:?}, 50th {:?}; then the right password: {}",
        times[0], times[9], times[10], times[49], right.status
    );
    // Slowed: the first ten waited more and more (250 ms steps); past them, refused at once.
    assert!(times[0] >= Duration::from_millis(200), "{times:?}");
    assert!(times[9] >= Duration::from_millis(2000), "{times:?}");
    assert!(
        times[10..].iter().all(|t| *t < Duration::from_millis(500)),
        "{times:?}"
    );
    assert!(total >= Duration::from_secs(10));
    assert_eq!(
        right.status, 401,
        "the right password is refused while rate-limited"
    );
    assert!(
        right.text().contains("too many failed attempts"),
        "{}",
        right.text()
    );
    let log = server.stderr();
    assert!(!log.contains("hunter2"), "a password in the log:\n{log}");
    assert!(!log.contains("right-one"), "a password in the log:\n{log}");
    let refusals = log
        .lines()
        .filter(|l| l.contains("hls 127.0.0.1 read 'cam' (user 'bob')") && l.contains("refused"))
        .count();
    assert!(refusals >= 10, "{refusals} refusals logged:\n{log}");
    // The crossing of the limit is logged once, not per refused attempt.
    assert_eq!(log.matches("within a minute").count(), 1, "{log}");
}

/// `curl -k` against the HTTPS API: (status, response head).
fn curl_api(url: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new(peer("curl"));
    cmd.args(["-sk", "-D", "-", "-o", "/dev/null", "--max-time", "10"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = run_bounded(cmd.arg(url), Duration::from_secs(20));
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// The API over HTTPS (curl); `X-Forwarded-For` is believed from a trusted proxy only (the
/// API permission is given to one remote address); CORS answers allowed origins only.
#[test]
fn api_over_https_behind_a_trusted_proxy() {
    let dir = scratch("auth-api-tls");
    let (key, cert) = tidegate_tests::self_signed(&dir);
    let conf = |trusted: &str| {
        format!(
            "apiEncryption: yes\napiServerKey: {}\napiServerCert: {}\n\
             apiAllowOrigins: ['https://*.example.com']\napiTrustedProxies: [{trusted}]\n\
             authInternalUsers:\n\
             \x20 - user: any\n    ips: [203.0.113.7]\n    permissions:\n      - action: api\n\
             \x20 - user: any\n    permissions:\n      - action: publish\n      - action: read\n",
            key.display(),
            cert.display()
        )
    };
    let server = TestServer::start(&conf("127.0.0.1"));
    let url = format!("https://{}/v3/paths/list", server.api_addr());
    // From the proxy itself: not allowed.
    assert_eq!(curl_api(&url, &[]).0, 401);
    // For the allowed client, through the trusted proxy: allowed.
    let (status, head) = curl_api(
        &url,
        &[
            "X-Forwarded-For: 198.51.100.1, 203.0.113.7",
            "Origin: https://app.example.com",
        ],
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example.com"),
        "{head}"
    );
    // A client that writes the allowed address leftmost gains nothing.
    assert_eq!(
        curl_api(&url, &["X-Forwarded-For: 203.0.113.7, 198.51.100.1"]).0,
        401
    );
    // An origin not listed gets no CORS header.
    let (_, head) = curl_api(
        &url,
        &["X-Forwarded-For: 203.0.113.7", "Origin: https://evil.org"],
    );
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    drop(server);
    // Without trusted proxies, X-Forwarded-For is ignored.
    let server = TestServer::start(&conf(""));
    let url = format!("https://{}/v3/paths/list", server.api_addr());
    assert_eq!(curl_api(&url, &["X-Forwarded-For: 203.0.113.7"]).0, 401);
}

/// Credentials at the edge (docs/deploy.md): an origin and an edge both check tokens against
/// the same JWKS (`authMethod: jwt`); the edge's `~^(.+)$` path pulls from the origin with the
/// first reader's query (`?$MTX_QUERY`, its `jwt=`), so the origin checks the token once per
/// pull. Two RTMP readers with a read token decode on the edge while the origin serves one
/// pull; a reader without a token, and one whose token is for another path, are refused by the
/// edge itself (the origin sees no other pull).
#[test]
fn an_edge_checks_the_origins_tokens_and_carries_them_to_the_origin() {
    let dir = scratch("auth-edge");
    let d = dir.to_str().unwrap();
    jwt_tool(&["keys", "--dir", d, "--kid", "k1", "--alg", "ES256"]);
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwt_tool(&["jwks", "--dir", d, "--kid", "k1"])).unwrap();
    let idp = AuthServer::start(&dir, "idp", &["--jwks", jwks.to_str().unwrap()]);
    let auth = format!(
        "authMethod: jwt\nauthJWTJWKS: http://127.0.0.1:{}/jwks.json\nauthJWTExclude:\n  - action: api\n",
        idp.port
    );
    let origin = TestServer::start(&auth);
    let origin_rtsp = origin.rtsp_url("");
    let edge = TestServer::start(&format!(
        "{auth}paths:\n  '~^(.+)$':\n    source: {origin_rtsp}$G1?$MTX_QUERY\n    rtspTransport: tcp\n    sourceOnDemand: yes\n"
    ));
    let token = |perms: serde_json::Value| {
        mint(
            &dir,
            "k1",
            serde_json::json!({"sub": "t", "exp": now_s() + 300, "mediamtx_permissions": perms}),
        )
    };
    let publish = token(serde_json::json!([{"action": "publish", "path": "live/cam"}]));
    let read = token(serde_json::json!([{"action": "read", "path": "live/cam"}]));
    let other = token(serde_json::json!([{"action": "read", "path": "live/other"}]));
    let _publisher = ffmpeg_publish(
        &format!("{}?jwt={publish}", origin.rtmp_url("live/cam")),
        90,
        "flv",
        &dir,
    );
    origin.wait_ready("live/cam", READY);
    let pulls = || origin.rtsp_reads();
    let readers: Vec<PeerProcess> = (0..2)
        .map(|i| {
            tidegate_tests::peers::ffmpeg_decoding(
                &format!("{}?jwt={read}", edge.rtmp_url("live/cam")),
                6,
                &dir,
                &format!("edge-reader-{i}"),
            )
        })
        .collect();
    edge.wait_ready("live/cam", READY);
    assert_eq!(pulls(), 1, "one pull for two readers");
    for mut r in readers {
        let frames = tidegate_tests::peers::decoded_frames(&mut r);
        assert!(
            frames >= 120,
            "an edge reader with a token: {frames} frames in 6 s"
        );
    }
    for (what, url) in [
        ("no token", edge.rtmp_url("live/cam")),
        (
            "another path's token",
            format!("{}?jwt={other}", edge.rtmp_url("live/cam")),
        ),
    ] {
        let t = Instant::now();
        let mut r = tidegate_tests::peers::ffmpeg_decoding(&url, 4, &dir, "refused-reader");
        assert!(!r.wait(Duration::from_secs(20)).success(), "{what}: let in");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: refused late"
        );
        assert!(
            r.stderr().contains("401") || r.stderr().contains("rror"),
            "{what}: {}",
            r.stderr()
        );
    }
    assert!(pulls() <= 1, "the origin was asked for more pulls");
}
