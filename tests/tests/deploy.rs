//! deploy/: the Kubernetes overlays render (kubectl kustomize) and validate against the
//! Kubernetes schema (kubernetes-validate), their configurations start the server, the edge
//! overlay's configuration pulls from an origin, the container definition runs the README's
//! binary as a non-root user on the embedded configuration's ports, and a SIGTERM drains (the
//! readiness probe fails while open sessions play on).

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidegate_tests::http::fetch;
use tidegate_tests::peers::{
    decoded_frames, ffmpeg_decoding, ffmpeg_publish, free_port, PeerProcess,
};
use tidegate_tests::{peer, poll, run_bounded, scratch, server_binary};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn overlay(name: &str) -> PathBuf {
    repo().join("deploy/kubernetes/overlays").join(name)
}

/// `kubectl kustomize` of an overlay: the YAML, and its documents as JSON (PyYAML from the
/// peers' venv reads them).
fn render(name: &str, dir: &Path) -> (PathBuf, Vec<Value>) {
    let out = run_bounded(
        Command::new(peer("kubectl"))
            .arg("kustomize")
            .arg(overlay(name)),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, &out.stdout).unwrap();
    let json = run_bounded(
        Command::new(peer("python")).arg("-c").arg(format!(
            "import json, yaml; print(json.dumps([d for d in yaml.safe_load_all(open('{}')) if d]))",
            file.display()
        )),
        Duration::from_secs(30),
    );
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&json.stdout).unwrap();
    (file, docs)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The server's listeners, every one on a free loopback port, by `TIDEGATE_<KEY>` overrides.
struct Ports {
    rtmp: u16,
    rtsp: u16,
    api: u16,
    env: Vec<(String, String)>,
}

fn ports(dir: &Path, name: &str) -> Ports {
    let (rtmp, rtsp, api) = (free_port(), free_port(), free_port());
    let mut env = vec![
        ("RTMPADDRESS", rtmp),
        ("RTSPADDRESS", rtsp),
        ("HLSADDRESS", free_port()),
        ("APIADDRESS", api),
        ("METRICSADDRESS", free_port()),
        ("RTPADDRESS", free_port()),
        ("RTCPADDRESS", free_port()),
        ("WEBRTCADDRESS", free_port()),
        ("WEBRTCLOCALUDPADDRESS", free_port()),
        ("SRTADDRESS", free_port()),
    ]
    .into_iter()
    .map(|(k, p)| (format!("TIDEGATE_{k}"), format!("127.0.0.1:{p}")))
    .collect::<Vec<_>>();
    env.push((
        "TIDEGATE_KEYSTORE".into(),
        dir.join(format!("{name}-keys.db")).display().to_string(),
    ));
    Ports {
        rtmp,
        rtsp,
        api,
        env,
    }
}

fn start(dir: &Path, name: &str, config: &Path, p: &Ports, extra: &[(&str, &str)]) -> PeerProcess {
    start_binary(&server_binary(), dir, name, config, p, extra)
}

/// [`start`] with the binary at `bin`.
fn start_binary(
    bin: &Path,
    dir: &Path,
    name: &str,
    config: &Path,
    p: &Ports,
    extra: &[(&str, &str)],
) -> PeerProcess {
    let mut cmd = Command::new(bin);
    cmd.arg(config).envs(p.env.iter().map(|(k, v)| (k, v)));
    cmd.envs(extra.iter().copied());
    let server = PeerProcess::spawn(name, &mut cmd, dir);
    let api: SocketAddr = format!("127.0.0.1:{}", p.api).parse().unwrap();
    poll(
        Duration::from_secs(30),
        || format!("{name}: /readyz never answered 200:\n{}", server.stderr()),
        || (status(api, "/readyz") == Some(200)).then_some(()),
    );
    server
}

/// The status of `GET target`, or None while nothing listens.
fn status(addr: SocketAddr, target: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The ConfigMap's `tidegate.yml` of a rendered overlay, written to `dir`.
fn config_of(docs: &[Value], dir: &Path, name: &str) -> PathBuf {
    let maps = of_kind(docs, "ConfigMap");
    assert_eq!(maps.len(), 1, "{name}: one ConfigMap");
    let text = maps[0]["data"]["tidegate.yml"].as_str().unwrap();
    let file = dir.join(format!("{name}.yml"));
    std::fs::write(&file, text).unwrap();
    file
}

/// Every overlay renders and passes the Kubernetes schema (strict: no unknown field); the
/// pods run as non-root on a read-only root filesystem, probe /livez and /readyz on the API
/// port, mount the ConfigMap where the binary finds it, give SIGTERM's drain time to end, and
/// every container port is in a Service of its protocol; the edge has an autoscaler on the
/// readers metric aimed at its Deployment and pulls from the origin overlay's Service; each
/// configuration passes `tidegate check`.
#[test]
fn kustomize_overlays_render_and_pass_the_kubernetes_schema() {
    let dir = scratch("deploy-kustomize");
    let mut rendered = std::collections::HashMap::new();
    for name in ["single", "origin", "edge"] {
        let (file, docs) = render(name, &dir);
        let out = run_bounded(
            Command::new(peer("kubernetes-validate"))
                .args(["--strict", "--no-warn", "-k", "1.30.0"])
                .arg(&file),
            Duration::from_secs(120),
        );
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !report.contains("ERROR"),
            "{name}: {report}"
        );
        assert_eq!(
            report.matches("passed for resource").count(),
            docs.len(),
            "{name}: every resource validated: {report}"
        );

        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 1, "{name}");
        let pod = &deployments[0]["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let c = &pod["containers"][0];
        assert!(
            c["args"].is_null() && c["command"].is_null(),
            "{name}: the image's entrypoint as it is"
        );
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{name}"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez", "{name}");
        let api_port = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == c["readinessProbe"]["httpGet"]["port"])
            .expect("the probe's port is a named container port")["containerPort"]
            .clone();
        assert_eq!(api_port, 9997, "{name}");
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(
            mounts.iter().any(|m| m["mountPath"] == "/etc/tidegate"),
            "{name}: the configuration where the binary finds it"
        );
        // Every container port is served by a Service of the same protocol, none mixes two.
        let services = of_kind(&docs, "Service");
        for s in &services {
            let protos: std::collections::HashSet<&str> = s["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["protocol"].as_str().unwrap_or("TCP"))
                .collect();
            assert_eq!(protos.len(), 1, "{name}: {s}");
        }
        for p in c["ports"].as_array().unwrap() {
            assert!(
                services.iter().any(|s| s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|sp| sp["targetPort"] == p["name"] && sp["protocol"] == p["protocol"])),
                "{name}: container port {p} has no Service"
            );
        }
        assert_eq!(of_kind(&docs, "PodDisruptionBudget").len(), 1, "{name}");

        // The configuration: valid, and its drain fits in the grace period with the preStop.
        let config = config_of(&docs, &dir, name);
        let check = run_bounded(
            Command::new(server_binary()).arg("check").arg(&config),
            Duration::from_secs(30),
        );
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let text = std::fs::read_to_string(&config).unwrap();
        let drain: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("drainPeriod: "))
            .and_then(|v| v.trim().strip_suffix('s'))
            .and_then(|v| v.parse().ok())
            .expect("drainPeriod in seconds");
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > drain + 5,
            "{name}: grace {grace} s, drain {drain} s"
        );
        rendered.insert(name, docs);
    }

    let edge = &rendered["edge"];
    let hpa = of_kind(edge, "HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1);
    let deployment = of_kind(edge, "Deployment")[0]["metadata"]["name"].clone();
    assert_eq!(hpa[0]["spec"]["scaleTargetRef"]["name"], deployment);
    assert!(hpa[0]["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["pods"]["metric"]["name"] == "tidegate_readers"));
    // The edge pulls from a Service the origin overlay defines, on its RTSP port.
    let config = of_kind(edge, "ConfigMap")[0]["data"]["tidegate.yml"]
        .as_str()
        .unwrap()
        .to_string();
    let origin_services: Vec<String> = of_kind(&rendered["origin"], "Service")
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let source = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("source: rtsp://"))
        .expect("the edge pulls over RTSP");
    let host = source.split(':').next().unwrap();
    assert!(
        origin_services.iter().any(|s| s == host),
        "{host} not in {origin_services:?}"
    );
}

/// The edge overlay's configuration, pointed at an origin on loopback: an ffmpeg RTMP publish
/// on the origin is decoded by RTMP readers on the edge (two of them, one upstream pull), and a
/// publish that lands on the edge is refused with the reason in the edge's log.
#[test]
fn the_edge_overlay_pulls_from_the_origin_overlay() {
    let dir = scratch("deploy-edge");
    let (_, origin_docs) = render("origin", &dir);
    let (_, edge_docs) = render("edge", &dir);
    let origin_conf = config_of(&origin_docs, &dir, "origin");
    let edge_conf = config_of(&edge_docs, &dir, "edge");
    let op = ports(&dir, "origin");
    let ep = ports(&dir, "edge");
    let text = std::fs::read_to_string(&edge_conf).unwrap();
    assert!(text.contains("origin-tidegate-tcp:8554"));
    std::fs::write(
        &edge_conf,
        text.replace(
            "origin-tidegate-tcp:8554",
            &format!("127.0.0.1:{}", op.rtsp),
        ),
    )
    .unwrap();
    let _origin = start(&dir, "origin", &origin_conf, &op, &[]);
    let edge = start(&dir, "edge", &edge_conf, &ep, &[]);
    let mut publisher = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{}/live/cam", op.rtmp),
        30,
        "flv",
        &dir,
    );
    let origin_api: SocketAddr = format!("127.0.0.1:{}", op.api).parse().unwrap();
    poll(
        Duration::from_secs(20),
        || format!("no publish on the origin: {}", publisher.stderr()),
        || {
            fetch(origin_api, "/v3/paths/get/live/cam", &[])
                .text()
                .contains("\"ready\":true")
                .then_some(())
        },
    );
    let url = format!("rtmp://127.0.0.1:{}/live/cam", ep.rtmp);
    let mut a = ffmpeg_decoding(&url, 6, &dir, "reader-a");
    let mut b = ffmpeg_decoding(&url, 6, &dir, "reader-b");
    // Meanwhile: the origin serves one RTSP reader (the edge's pull) for both.
    let pulls = poll(
        Duration::from_secs(20),
        || "the edge never pulled from the origin".to_string(),
        || {
            let list = fetch(origin_api, "/v3/rtspsessions/list", &[]).text();
            let v: Value = serde_json::from_str(&list).ok()?;
            let n = v["items"]
                .as_array()?
                .iter()
                .filter(|s| s["state"] == "read")
                .count();
            (n > 0).then_some(n)
        },
    );
    assert_eq!(pulls, 1);
    let (fa, fb) = (decoded_frames(&mut a), decoded_frames(&mut b));
    assert!(
        fa >= 120 && fb >= 120,
        "frames decoded on the edge: {fa}, {fb}"
    );
    let list = fetch(origin_api, "/v3/rtspsessions/list", &[]).text();
    assert_eq!(list.matches("\"state\":\"read\"").count(), 1, "{list}");

    // A publish on the edge: refused.
    let mut refused = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{}/live/other", ep.rtmp),
        5,
        "flv",
        &dir,
    );
    assert!(!refused.wait(Duration::from_secs(30)).success());
    poll(
        Duration::from_secs(10),
        || format!("no refusal in the edge's log:\n{}", edge.stderr()),
        || {
            (edge.stdout() + &edge.stderr())
                .contains("takes its stream from a source, it cannot be published to")
                .then_some(())
        },
    );
    publisher.kill9();
}

/// SIGTERM with a drain period (the pods' configuration): /readyz turns 503 at once and /livez
/// stays 200, new RTMP connections are refused, the RTMP reader already playing decodes its
/// whole 10 s, and once the last client leaves the server exits without waiting out the
/// period.
#[test]
fn sigterm_drains_open_sessions_while_readiness_fails() {
    let dir = scratch("deploy-drain");
    let (_, docs) = render("single", &dir);
    let conf = config_of(&docs, &dir, "single");
    let p = ports(&dir, "single");
    let mut server = start(
        &dir,
        "server",
        &conf,
        &p,
        &[("TIDEGATE_DRAINPERIOD", "40s")],
    );
    let api: SocketAddr = format!("127.0.0.1:{}", p.api).parse().unwrap();
    assert_eq!(fetch(api, "/livez", &[]).status, 200);
    let mut publisher = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{}/live/cam", p.rtmp),
        60,
        "flv",
        &dir,
    );
    poll(
        Duration::from_secs(20),
        || format!("no publish: {}", publisher.stderr()),
        || {
            fetch(api, "/v3/paths/get/live/cam", &[])
                .text()
                .contains("\"ready\":true")
                .then_some(())
        },
    );
    let mut reader = ffmpeg_decoding(
        &format!("rtmp://127.0.0.1:{}/live/cam", p.rtmp),
        10,
        &dir,
        "reader",
    );
    poll(
        Duration::from_secs(20),
        || "the reader never joined".to_string(),
        || {
            fetch(api, "/v3/rtmpconns/list", &[])
                .text()
                .contains("\"state\":\"read\"")
                .then_some(())
        },
    );
    let term = Instant::now();
    let kill = Command::new(peer("kill"))
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    poll(
        Duration::from_secs(5),
        || "/readyz still 200 after SIGTERM".to_string(),
        || (fetch(api, "/readyz", &[]).status == 503).then_some(()),
    );
    assert_eq!(fetch(api, "/livez", &[]).status, 200);
    // No new client: the RTMP listener is closed.
    poll(
        Duration::from_secs(5),
        || "the RTMP listener still accepts while draining".to_string(),
        || {
            TcpStream::connect(("127.0.0.1", p.rtmp))
                .is_err()
                .then_some(())
        },
    );
    let frames = decoded_frames(&mut reader);
    assert!(
        frames >= 240,
        "the draining server cut its reader short: {frames} frames in 10 s"
    );
    assert!(term.elapsed() < Duration::from_secs(40));
    // The publisher is the last client: once it leaves, the server exits.
    publisher.kill9();
    let left = Instant::now();
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}: {}", server.stderr());
    assert!(left.elapsed() < Duration::from_secs(15));
    let log = server.stdout() + &server.stderr();
    assert!(log.contains("drained: every client has left"), "{log}");
}

/// An RTMP handshake on `port` (C0+C1 sent, S0+S1 read back) within 5 s: what a client whose
/// connection is accepted and served gets.
fn rtmp_handshake(port: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(7u8, 1536));
    s.write_all(&c0c1).map_err(|e| format!("C0C1: {e}"))?;
    let mut s0s1 = vec![0u8; 1537];
    s.read_exact(&mut s0s1).map_err(|e| format!("S0S1: {e}"))?;
    (s0s1[0] == 3)
        .then_some(())
        .ok_or("S0 is not version 3".into())
}

/// Upgrades without drops: a binary (a copy, as installed) serves an ffmpeg RTMP publisher
/// read by ffmpeg over RTMP (recorded) and SRT (decoded) and by hls.js over LL-HLS; the file is
/// replaced by a new binary (renamed over it, as package managers do) and the server gets
/// SIGUSR2. The new binary runs from the same path and takes the listening sockets; every
/// reader plays on without reconnecting (the ffmpeg readers would exit on a lost connection):
/// the RTMP recording has every frame (30 fps, no gap over 0.1 s, timestamps increasing),
/// SRT decodes its whole run, hls.js keeps playing. An RTMP handshake every 100 ms is
/// answered throughout; a reader that joins after the upgrade is served by the new process
/// from the old one's publisher. When the publisher leaves, the old process exits; the
/// publisher comes back to the new one.
#[test]
fn sigusr2_upgrades_the_binary_without_dropping_anyone() {
    let (dir, installed, conf, p) = installed_copy("deploy-upgrade");
    let hls_port = port_env(&p, "TIDEGATE_HLSADDRESS");
    let srt_port = port_env(&p, "TIDEGATE_SRTADDRESS");
    // systemd's notification socket, as a Type=notify unit has it.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let notified = || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a systemd notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut old = start_binary(
        &installed,
        &dir,
        "old",
        &conf,
        &p,
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    assert_eq!(notified(), format!("MAINPID={}\nREADY=1", old.pid()));
    let rtmp = |path: &str| format!("rtmp://127.0.0.1:{}/{path}", p.rtmp);
    let api: SocketAddr = format!("127.0.0.1:{}", p.api).parse().unwrap();
    let ready = |path: &str| {
        fetch(api, &format!("/v3/paths/get/{path}"), &[])
            .text()
            .contains("\"ready\":true")
    };
    let mut publisher = ffmpeg_publish(&rtmp("live/cam"), 120, "flv", &dir);
    poll(
        Duration::from_secs(20),
        || format!("no publish: {}", publisher.stderr()),
        || ready("live/cam").then_some(()),
    );

    // Publishers over UDP too, whose datagrams must keep reaching the old process: ffmpeg
    // over SRT and over RTSP with RTP on UDP, aiortc over WHIP.
    let mut srt_publisher = ffmpeg_publish(
        &format!("srt://127.0.0.1:{srt_port}?streamid=publish:live/srt&latency=200000"),
        120,
        "mpegts",
        &dir,
    );
    let whep_port = port_env(&p, "TIDEGATE_WEBRTCADDRESS");
    let mut whip_publisher = {
        let mut cmd = Command::new(peer("python"));
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
            .arg("whip")
            .arg(format!("http://127.0.0.1:{whep_port}/live/whip/whip"))
            .args(["--seconds", "120"]);
        PeerProcess::spawn("aiortc-whip", &mut cmd, &dir)
    };
    let mut rtsp_publisher = {
        let mut cmd = Command::new(peer("ffmpeg"));
        cmd.args(tidegate_tests::peers::synthetic_source(120, "640x360"))
            .args(["-f", "rtsp", "-rtsp_transport", "udp"])
            .arg(format!("rtsp://127.0.0.1:{}/live/rtspudp", p.rtsp));
        PeerProcess::spawn("ffmpeg-rtsp-udp", &mut cmd, &dir)
    };
    for path in ["live/srt", "live/whip", "live/rtspudp"] {
        poll(
            Duration::from_secs(30),
            || format!("no publish on {path}"),
            || ready(path).then_some(()),
        );
    }

    // Handshakes every 100 ms from now until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (stop, port) = (stop.clone(), p.rtmp);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match rtmp_handshake(port) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
    };
    let recording = dir.join("rtmp-reader.mkv");
    let mut rtmp_reader =
        tidegate_tests::peers::ffmpeg_read(&rtmp("live/cam"), 20, &recording, &dir);
    let mut srt_reader = ffmpeg_decoding(
        &format!("srt://127.0.0.1:{srt_port}?streamid=read:live/cam&latency=200000"),
        20,
        &dir,
        "srt-reader",
    );
    let mut hlsjs = tidegate_tests::peers::hlsjs_player(
        &format!("http://127.0.0.1:{hls_port}/live/cam/"),
        24,
        &dir,
    );
    let mut srt_published = ffmpeg_decoding(&rtmp("live/srt"), 20, &dir, "srt-published");
    let mut whip_published = ffmpeg_decoding(&rtmp("live/whip"), 20, &dir, "whip-published");
    let mut rtsp_published = ffmpeg_decoding(&rtmp("live/rtspudp"), 20, &dir, "rtsp-published");
    let whep = std::thread::spawn(move || {
        tidegate_tests::peers::aiortc_whep_viewer(
            |c| c,
            &format!("http://127.0.0.1:{whep_port}/live/cam/whep"),
            20,
        )
    });
    poll(
        Duration::from_secs(20),
        || "the readers never joined".to_string(),
        || {
            let v = fetch(api, "/v3/paths/get/live/cam", &[]).text();
            (v.matches("\"type\":\"rtmpConn\"").count() >= 1
                && v.contains("\"type\":\"srtConn\"")
                && v.contains("\"type\":\"webRTCSession\""))
            .then_some(())
        },
    );
    // The readers play a while before the upgrade (the path has sent them 1.5 MB).
    poll(
        Duration::from_secs(30),
        || "the readers got nothing".to_string(),
        || {
            let v: Value =
                serde_json::from_str(&fetch(api, "/v3/paths/get/live/cam", &[]).text()).ok()?;
            (v["bytesSent"].as_u64()? >= 1_500_000).then_some(())
        },
    );

    // The new binary is installed over the old one's file, and the server told.
    let staged = dir.join("tidegate.new");
    std::fs::copy(server_binary(), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    let signalled = Instant::now();
    let kill = Command::new(peer("kill"))
        .args(["-USR2", &old.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let new_pid: u32 = poll(
        Duration::from_secs(30),
        || format!("no new process serves:\n{}", old.stderr()),
        || {
            let log = old.stdout() + &old.stderr();
            let line = log
                .lines()
                .find(|l| l.contains("serves in this one's place"))?;
            line.split("process ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        },
    );
    eprintln!(
        "upgrade: process {new_pid} serves {:?} after SIGUSR2",
        signalled.elapsed()
    );
    // systemd is told that the new process is the service's main one.
    assert_eq!(notified(), format!("MAINPID={new_pid}\nREADY=1"));
    // The new process runs the installed file; the old one's file is the replaced one.
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe(new_pid), installed);
    assert!(exe(old.pid()).to_string_lossy().ends_with("(deleted)"));
    // The API is the new process's now, and ready.
    assert_eq!(fetch(api, "/readyz", &[]).status, 200);

    // A reader that joins now is served by the new process, from the old one's publisher.
    let mut late = ffmpeg_decoding(&rtmp("live/cam"), 6, &dir, "late-reader");
    let late_frames = decoded_frames(&mut late);
    assert!(
        late_frames >= 120,
        "a reader after the upgrade: {late_frames} frames in 6 s"
    );

    // Every reader played its whole run on its first connection.
    assert!(
        rtmp_reader.wait(Duration::from_secs(60)).success(),
        "{}",
        rtmp_reader.stderr()
    );
    let pts = tidegate_tests::video_timeline(&recording);
    let gap = pts.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!(pts.windows(2).all(|w| w[1] > w[0]), "timestamps go back");
    assert!(
        pts.len() >= 585,
        "RTMP reader: {} frames in 20 s",
        pts.len()
    );
    assert!(gap < 0.1, "RTMP reader: a {gap:.3} s gap");
    let srt_frames = decoded_frames(&mut srt_reader);
    assert!(srt_frames >= 540, "SRT reader: {srt_frames} frames in 20 s");
    let r = tidegate_tests::peers::hlsjs_report(&mut hlsjs, Duration::from_secs(90));
    let trace = r["trace"].as_array().unwrap();
    let end = trace.last().unwrap()[0].as_f64().unwrap();
    let frames = |t: f64| tidegate_tests::peers::hlsjs_frames_at(&r, t);
    let last8 = frames(end) - frames(end - 8.0);
    assert!(last8 >= 200, "hls.js: {last8} frames in its last 8 s: {r}");
    // The UDP publishers' streams went on in the old process: their datagrams stayed there.
    let from_srt = decoded_frames(&mut srt_published);
    assert!(from_srt >= 540, "SRT publisher: {from_srt} frames in 20 s");
    let from_whip = decoded_frames(&mut whip_published);
    assert!(
        from_whip >= 400,
        "WHIP publisher: {from_whip} frames in 20 s"
    );
    let from_rtsp = decoded_frames(&mut rtsp_published);
    assert!(
        from_rtsp >= 540,
        "RTSP/UDP publisher: {from_rtsp} frames in 20 s"
    );
    eprintln!("upgrade: read from the SRT publisher {from_srt} frames, from the WHIP one {from_whip}, from the RTSP/UDP one {from_rtsp}");
    // The WHEP session (its UDP datagrams kept by the old process) played through.
    let v = whep.join().unwrap();
    let whep_frames = v["frames"].as_u64().unwrap_or(0);
    assert!(whep_frames >= 300, "WHEP: {v}");
    assert!(v["pts_span_s"].as_f64().unwrap_or(0.0) >= 17.0, "WHEP: {v}");
    assert!(
        v["largest_gap_s"].as_f64().unwrap_or(9.0) < 1.0,
        "WHEP: {v}"
    );
    eprintln!(
        "upgrade: RTMP reader {} frames (largest gap {gap:.3} s), SRT {srt_frames}, WHEP {whep_frames} (largest gap {} s), late RTMP {late_frames}, hls.js {last8} in its last 8 s",
        pts.len(),
        v["largest_gap_s"]
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = prober.join().unwrap();
    assert!(
        failed.is_empty(),
        "refused handshakes ({ok} served): {failed:?}"
    );
    assert!(ok >= 100, "{ok} handshakes");

    // The publishers leave: the old process has no client left and exits.
    publisher.kill9();
    srt_publisher.kill9();
    whip_publisher.kill9();
    rtsp_publisher.kill9();
    let status = old.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!((old.stdout() + &old.stderr()).contains("drained: every client has left"));
    // The publisher comes back, to the new process, which serves it whole.
    let mut back = ffmpeg_publish(&rtmp("live/cam"), 60, "flv", &dir);
    poll(
        Duration::from_secs(20),
        || format!("no publish to the new process: {}", back.stderr()),
        || ready("live/cam").then_some(()),
    );
    let mut reader = ffmpeg_decoding(&rtmp("live/cam"), 4, &dir, "after-reader");
    assert!(decoded_frames(&mut reader) >= 90);
    back.kill9();
    let term = Command::new(peer("kill"))
        .args(["-TERM", &new_pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
}

/// An upgrade to a binary that does not start (here a script that exits at once) changes
/// nothing: the error is logged, the old process goes on accepting on every listener, SRT
/// included (its socket read again), and a later upgrade can be tried.
#[test]
fn a_failed_upgrade_leaves_the_server_serving() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, installed, conf, p) = installed_copy("deploy-upgrade-failed");
    let srt_port = port_env(&p, "TIDEGATE_SRTADDRESS");
    let server = start_binary(&installed, &dir, "server", &conf, &p, &[]);
    let broken = dir.join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &installed).unwrap();
    let kill = Command::new(peer("kill"))
        .args(["-USR2", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    poll(
        Duration::from_secs(30),
        || format!("no failed upgrade logged:\n{}", server.stderr()),
        || {
            let log = server.stdout() + &server.stderr();
            log.contains("[upgrade] failed, this process goes on serving: the new process exited")
                .then_some(())
        },
    );
    let api: SocketAddr = format!("127.0.0.1:{}", p.api).parse().unwrap();
    assert_eq!(fetch(api, "/readyz", &[]).status, 200);
    rtmp_handshake(p.rtmp).unwrap();
    let mut publisher = ffmpeg_publish(
        &format!("srt://127.0.0.1:{srt_port}?streamid=publish:live/cam&latency=200000"),
        30,
        "mpegts",
        &dir,
    );
    poll(
        Duration::from_secs(20),
        || {
            format!(
                "no SRT publish after a failed upgrade: {}",
                publisher.stderr()
            )
        },
        || {
            fetch(api, "/v3/paths/get/live/cam", &[])
                .text()
                .contains("\"ready\":true")
                .then_some(())
        },
    );
    let mut reader = ffmpeg_decoding(
        &format!("rtmp://127.0.0.1:{}/live/cam", p.rtmp),
        4,
        &dir,
        "reader",
    );
    let frames = decoded_frames(&mut reader);
    assert!(frames >= 90, "{frames} frames after a failed upgrade");
    publisher.kill9();
    assert!(server.stderr().contains("broken build"));
    assert!(server.pid() > 0 && exe_alive(server.pid()));
}

/// Whether process `pid` still runs.
fn exe_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/exe")).exists()
}

/// A scratch directory `name` with a copy of the binary installed in it (as a package
/// installs it, to be replaced by an upgrade), a configuration with every path open, and
/// ports.
fn installed_copy(name: &str) -> (PathBuf, PathBuf, PathBuf, Ports) {
    let dir = scratch(name);
    let installed = dir.join("tidegate");
    std::fs::copy(server_binary(), &installed).unwrap();
    let conf = dir.join("upgrade.yml");
    std::fs::write(&conf, "paths:\n  all_others:\n").unwrap();
    let p = ports(&dir, name);
    (dir, installed, conf, p)
}

/// The port a [`Ports`] environment variable gives.
fn port_env(p: &Ports, key: &str) -> u16 {
    let v = &p.env.iter().find(|(k, _)| k == key).unwrap().1;
    v.rsplit(':').next().unwrap().parse().unwrap()
}

/// The container definition: built from a Rust image into a slim one, it runs the README's
/// binary (`cargo run --release` runs `tidegate` with no argument: the embedded configuration,
/// or /etc/tidegate/tidegate.yml when mounted) as a numeric non-root user, declares every port
/// the embedded configuration listens on, and the pods' container ports are among them. Where a
/// container engine answers (not on this project's test machines: docker's client only), the
/// image is built and `tidegate check` runs in it.
#[test]
fn the_container_image_runs_the_readme_binary_as_non_root_on_the_default_ports() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("cargo run --release"),
        "the README's first command"
    );
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: {stages:?}");
    assert!(dockerfile.contains("cargo build --release --locked -p tidegate"));
    let entry = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).unwrap();
    assert_eq!(
        entry,
        ["/usr/local/bin/tidegate"],
        "the binary with no argument"
    );
    assert!(!dockerfile.lines().any(|l| l.starts_with("CMD ")));
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid: u32 = user.split(':').next().unwrap().parse().expect("numeric");
    assert!(uid >= 1000);
    let exposed: std::collections::HashSet<String> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect();
    // The embedded configuration's listeners that are on by default.
    let embedded = std::fs::read_to_string(repo().join("configs/tidegate.yml")).unwrap();
    let port_of = |key: &str| -> u16 {
        embedded
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .and_then(|v| v.trim().rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{key} in the embedded configuration"))
    };
    for (key, proto) in [
        ("rtmpAddress", "tcp"),
        ("rtspAddress", "tcp"),
        ("rtpAddress", "udp"),
        ("rtcpAddress", "udp"),
        ("hlsAddress", "tcp"),
        ("webrtcAddress", "tcp"),
        ("webrtcLocalUDPAddress", "udp"),
        ("srtAddress", "udp"),
        ("apiAddress", "tcp"),
        ("metricsAddress", "tcp"),
    ] {
        let want = format!("{}/{proto}", port_of(key));
        assert!(exposed.contains(&want), "{key}: {want} not in {exposed:?}");
    }
    let dir = scratch("deploy-image");
    let (_, docs) = render("single", &dir);
    for p in of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
    {
        let want = format!(
            "{}/{}",
            p["containerPort"],
            p["protocol"].as_str().unwrap().to_lowercase()
        );
        assert!(exposed.contains(&want), "{want} not in {exposed:?}");
    }
    // The engine is optional here (the issue: "builds where a container engine exists").
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if engine {
        let tag = format!("tidegate-test:{}", std::process::id());
        let build = run_bounded(
            Command::new("docker")
                .args(["build", "-t", &tag])
                .arg(repo()),
            Duration::from_secs(1800),
        );
        assert!(
            build.status.success(),
            "{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let check = run_bounded(
            Command::new("docker").args(["run", "--rm", "--read-only", &tag, "check"]),
            Duration::from_secs(60),
        );
        assert!(check.status.success());
        assert!(String::from_utf8_lossy(&check.stdout).contains("embedded default"));
    } else {
        eprintln!("no container engine answers `docker info`: the image is not built here");
    }
}

/// The systemd unit: `systemd-analyze verify` reads every directive of it without a complaint
/// (an unknown key or a bad value is a message), and it is hardened: no new privileges, a
/// read-only system, only the capability for low ports, a drain-sized stop timeout.
#[test]
fn the_systemd_unit_is_hardened_and_verifies_cleanly() {
    let dir = scratch("deploy-systemd");
    let unit = std::fs::read_to_string(repo().join("deploy/tidegate.service")).unwrap();
    for want in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Type=notify",
        "NotifyAccess=all",
    ] {
        assert!(unit.contains(want), "{want}");
    }
    let file = dir.join("tidegate.service");
    std::fs::write(
        &file,
        unit.replace(
            "/usr/local/bin/tidegate",
            &server_binary().display().to_string(),
        ),
    )
    .unwrap();
    let out = run_bounded(
        Command::new(peer("systemd-analyze"))
            .arg("verify")
            .arg(&file),
        Duration::from_secs(60),
    );
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
