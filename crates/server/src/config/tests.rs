use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::load(Some(("test.yml", text)), Vec::new())
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(
        Some(("test.yml", text)),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn top_level_keys(text: &str, section: Option<&str>) -> Vec<String> {
    let root = yaml::parse(text).unwrap().unwrap();
    let Value::Map(entries) = root.value else {
        panic!("a map")
    };
    match section {
        None => entries.into_iter().map(|e| e.key).collect(),
        Some(s) => {
            let e = entries.into_iter().find(|e| e.key == s).unwrap();
            let Value::Map(inner) = e.value.value else {
                panic!("a map")
            };
            inner.into_iter().map(|e| e.key).collect()
        }
    }
}

#[test]
fn the_embedded_default_sets_every_key() {
    let keys = top_level_keys(DEFAULT_CONFIG, None);
    for (k, _) in GLOBAL_KEYS {
        if DEPRECATED_GLOBAL_KEYS.iter().any(|(o, _)| o == k) {
            continue;
        }
        assert!(
            keys.iter().any(|x| x == k),
            "{k} is missing from configs/tidegate.yml"
        );
    }
    let keys = top_level_keys(DEFAULT_CONFIG, Some("pathDefaults"));
    for (k, _) in PATH_KEYS {
        if DEPRECATED_PATH_KEYS.iter().any(|(o, _)| o == k) {
            continue;
        }
        assert!(keys.iter().any(|x| x == k), "pathDefaults.{k} is missing");
    }
}

#[test]
fn defaults() {
    let c = Config::load(None, Vec::new()).unwrap();
    assert_eq!(c.rtmp_address, "0.0.0.0:1935".parse().unwrap());
    assert_eq!(c.rtmps_address.port(), 1936);
    assert_eq!(c.rtsp_address.port(), 8554);
    assert_eq!(c.hls_address.port(), 8888);
    assert_eq!(c.webrtc_address.port(), 8889);
    assert_eq!(c.webrtc_local_udp_address.map(|a| a.port()), Some(8189));
    assert_eq!(c.webrtc_local_tcp_address, None);
    assert_eq!(c.srt_address.port(), 8890);
    assert_eq!(c.api_address, "127.0.0.1:9997".parse().unwrap());
    assert_eq!(c.metrics_address.port(), 9998);
    assert_eq!(c.rtmp_encryption, Encryption::No);
    assert_eq!(c.hls_variant, HlsVariant::LowLatency);
    assert_eq!(c.hls_segment_duration, Duration::from_secs(1));
    assert_eq!(c.hls_part_duration, Duration::from_millis(200));
    assert_eq!(c.hls_segment_count, 7);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.paths.len(), 1);
    assert_eq!(c.paths[0].name, "all_others");
    assert!(!c.paths[0].override_publisher);
}

#[test]
fn a_user_file_overrides_only_what_it_names() {
    let c = load("rtmpAddress: 127.0.0.1:0\nhlsSegmentDuration: 2s\n").unwrap();
    assert_eq!(c.rtmp_address, "127.0.0.1:0".parse().unwrap());
    assert_eq!(c.hls_segment_duration, Duration::from_secs(2));
    assert_eq!(c.hls_part_duration, Duration::from_millis(200));
    assert_eq!(
        c.paths[0].name, "all_others",
        "no paths key: the default paths stay"
    );
}

#[test]
fn paths_start_from_path_defaults() {
    let c = load(
        "pathDefaults:\n  maxReaders: 5\n  readUser: viewer\npaths:\n  cam1:\n    maxReaders: 2\n  '~^live/(.+)$':\n    overridePublisher: yes\n    publishIPs: [127.0.0.1, 10.0.0.0/8]\n",
    )
    .unwrap();
    assert_eq!(
        c.paths.len(),
        2,
        "the file's paths replace the default ones"
    );
    assert_eq!(c.paths[0].name, "cam1");
    assert_eq!(c.paths[0].max_readers, 2);
    assert_eq!(c.paths[0].read_user, "viewer");
    assert_eq!(c.paths[1].max_readers, 5);
    assert!(c.paths[1].override_publisher);
    assert_eq!(c.paths[1].publish_ips.len(), 2);
    let m = c.matcher().find("live/abc").unwrap();
    assert_eq!(m.captures, vec!["live/abc", "abc"]);
}

fn err(text: &str) -> ConfigError {
    load(text).unwrap_err()
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = err("logLevel: info\n\nrtmpAdress: :1935\n");
    assert_eq!((e.line, e.key.as_str()), (3, "rtmpAdress"));
    assert!(e.message.contains("did you mean 'rtmpAddress'"), "{e}");
    assert_eq!(
        e.to_string(),
        "test.yml:3: rtmpAdress: unknown key (did you mean 'rtmpAddress'?)"
    );

    let e = err("paths:\n  cam:\n    readUsr: x\n");
    assert_eq!((e.line, e.key.as_str()), (3, "paths.cam.readUsr"));
    let e = err("pathDefaults:\n  colour: blue\n");
    assert_eq!((e.line, e.key.as_str()), (2, "pathDefaults.colour"));
    assert_eq!(e.message, "unknown key");
}

#[test]
fn wrong_types_and_bad_values_are_named_with_their_line() {
    let cases = [
        ("rtmp: [1, 2]\n", 1, "rtmp", "found a list"),
        ("api: maybe\n", 1, "api", "expected yes or no"),
        (
            "\nhlsSegmentCount: many\n",
            2,
            "hlsSegmentCount",
            "whole number",
        ),
        (
            "hlsSegmentCount: 1000\n",
            1,
            "hlsSegmentCount",
            "between 3 and 100",
        ),
        ("hlsPartDuration: 10\n", 1, "hlsPartDuration", "duration"),
        ("rtspAddress: 8554\n", 1, "rtspAddress", "address"),
        ("hlsVariant: dash\n", 1, "hlsVariant", "lowLatency"),
        ("rtmpEncryption: maybe\n", 1, "rtmpEncryption", "optional"),
        ("logLevel: loud\n", 1, "logLevel", "one of"),
        (
            "paths:\n  a:\n    maxReaders: -1\n",
            3,
            "paths.a.maxReaders",
            "whole number",
        ),
        (
            "paths:\n  a:\n    readIPs: [nope]\n",
            3,
            "paths.a.readIPs",
            "IP address",
        ),
        (
            "paths:\n  a:\n    srtReadPassphrase: short\n",
            3,
            "paths.a.srtReadPassphrase",
            "10 to 79",
        ),
        (
            "paths:\n  a:\n    source: ftp://x\n",
            3,
            "paths.a.source",
            "URL",
        ),
        (
            "paths:\n  a:\n    sourceFingerprint: ab:cd\n",
            3,
            "paths.a.sourceFingerprint",
            "SHA-256 fingerprint",
        ),
        ("paths:\n  a: 5\n", 2, "paths.a", "map of settings"),
        (
            "paths:\n  ok:\n  '~^(bad$':\n",
            3,
            "paths.~^(bad$",
            "regular expression",
        ),
        (
            "paths:\n  'bad name':\n",
            2,
            "paths.bad name",
            "letters, digits",
        ),
        (
            "webrtcAdditionalHosts: {a: b}\n",
            1,
            "webrtcAdditionalHosts",
            "found a map",
        ),
    ];
    for (text, line, key, msg) in cases {
        let e = err(text);
        assert_eq!((e.line, e.key.as_str()), (line, key), "{text:?} gave {e}");
        assert!(e.message.contains(msg), "{text:?} gave {e}");
    }
}

#[test]
fn syntax_errors_have_a_line() {
    let e = err("a: 1\nb: [\n");
    assert!(e.line >= 2, "{e}");
    let e = err("a: 1\na: 2\n");
    assert_eq!(e.line, 2);
    let e = err("- just\n- a list\n");
    assert!(e.message.contains("map of keys"));
}

#[test]
fn cross_key_rules() {
    let e = err("hlsPartDuration: 2s\n");
    assert_eq!(e.key, "hlsPartDuration");
}

#[test]
fn environment_overrides() {
    let c = load_env(
        "paths:\n  cam1:\n    readUser: file\n",
        &[
            ("TIDEGATE_RTMPADDRESS", "127.0.0.1:1940"),
            ("TIDEGATE_API", "no"),
            ("TIDEGATE_WEBRTCADDITIONALHOSTS", "192.168.1.2,example.com"),
            ("TIDEGATE_PATHDEFAULTS_MAXREADERS", "9"),
            ("TIDEGATE_PATHS_CAM1_READUSER", "env"),
            ("OTHER_VARIABLE", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.rtmp_address.port(), 1940);
    assert!(!c.api);
    assert_eq!(
        c.webrtc_additional_hosts,
        vec!["192.168.1.2", "example.com"]
    );
    assert_eq!(c.paths[0].max_readers, 9);
    assert_eq!(c.paths[0].read_user, "env");

    // A variable that names no setting is a warning with the nearest name, not an error.
    let c = load_env(
        "",
        &[("TIDEGATE_RTMPADRESS", ":1"), ("TIDEGATE_BIN", "/usr/bin")],
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[1]
            .contains("TIDEGATE_RTMPADRESS is not a setting (did you mean TIDEGATE_RTMPADDRESS?)"),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings[0].contains("TIDEGATE_BIN is not a setting"));
    let e = load_env("", &[("TIDEGATE_HLSSEGMENTCOUNT", "x")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("TIDEGATE_HLSSEGMENTCOUNT: (hlsSegmentCount) expected a whole number"),
        "{e}"
    );
}

#[test]
fn mediamtx_environment_overrides() {
    // MediaMTX's MTX_ names work; TIDEGATE_ wins over MTX_ for one key; MTX_PATHS_<NAME>_<KEY>
    // creates the path when no configured path has that name, as in MediaMTX.
    let c = load_env(
        "paths:\n  cam1:\n    readUser: file\n",
        &[
            ("MTX_RTMPADDRESS", "127.0.0.1:1941"),
            ("MTX_RTSPADDRESS", "127.0.0.1:8555"),
            ("TIDEGATE_RTSPADDRESS", "127.0.0.1:8556"),
            ("MTX_PATHS_CAM1_READUSER", "mtx"),
            ("MTX_PATHS_NEWCAM_SOURCE", "rtsp://127.0.0.1:554/x"),
            ("MTX_PATHDEFAULTS_MAXREADERS", "3"),
            ("MTX_PATH", "hook-variable"),
        ],
    )
    .unwrap();
    assert_eq!(c.rtmp_address.port(), 1941);
    assert_eq!(c.rtsp_address.port(), 8556);
    assert_eq!(c.paths[0].read_user, "mtx");
    assert_eq!(c.paths[1].name, "newcam");
    assert_eq!(c.paths[1].max_readers, 3);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let e = load_env("", &[("MTX_RTMPADDRESS", "nowhere")]).unwrap_err();
    assert_eq!(e.key, "MTX_RTMPADDRESS");
}

#[test]
fn docs_describe_every_key() {
    let docs = include_str!("../../../../docs/configuration.md");
    let names = GLOBAL_KEYS
        .iter()
        .map(|(k, _)| *k)
        .chain(PATH_KEYS.iter().map(|(k, _)| *k))
        .chain(["pathDefaults", "paths"]);
    for k in names {
        assert!(
            docs.contains(&format!("`{k}`")),
            "docs/configuration.md does not document `{k}`"
        );
    }
}

#[test]
fn hooks_are_read_with_mediamtx_names_and_old_spellings() {
    let c = load(
        "runOnConnect: a\nrunOnConnectRestart: yes\nrunOnDisconnect: b\n\
         pathDefaults:\n  runOnRead: r\n\
         paths:\n  cam:\n    runOnReady: x\n    runOnReadyRestart: yes\n    runOnNotReady: y\n    \
         runOnDemand: d\n    runOnDemandCloseAfter: 3s\n  other:\n    runOnAvailable: z\n",
    )
    .unwrap();
    assert_eq!(c.run_on_connect, "a");
    assert!(c.run_on_connect_restart);
    assert_eq!(c.run_on_disconnect, "b");
    let cam = c.paths.iter().find(|p| p.name == "cam").unwrap();
    assert_eq!(cam.hooks.run_on_available, "x");
    assert!(cam.hooks.run_on_available_restart);
    assert_eq!(cam.hooks.run_on_unavailable, "y");
    assert_eq!(cam.hooks.run_on_read, "r");
    assert_eq!(cam.hooks.run_on_demand, "d");
    assert_eq!(cam.hooks.run_on_demand_close_after, Duration::from_secs(3));
    assert_eq!(
        cam.hooks.run_on_demand_start_timeout,
        Duration::from_secs(10)
    );
    let other = c.paths.iter().find(|p| p.name == "other").unwrap();
    assert_eq!(other.hooks.run_on_available, "z");
}

#[test]
fn run_on_demand_needs_a_publisher_path() {
    let e = load("paths:\n  cam:\n    source: rtsp://10.0.0.1/s\n    runOnDemand: ffmpeg\n")
        .unwrap_err();
    assert_eq!(e.key, "paths.cam.runOnDemand");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("source is 'publisher'"), "{e}");
}

#[test]
fn run_on_init_needs_an_exact_name() {
    for name in ["'~^cam(\\d+)$'", "all_others"] {
        let e = load(&format!("paths:\n  {name}:\n    runOnInit: ffmpeg\n")).unwrap_err();
        assert!(e.key.ends_with(".runOnInit"), "{e}");
        assert!(e.message.contains("regular expression"), "{e}");
    }
    // The same on an exact name is fine.
    load("paths:\n  cam:\n    runOnInit: ffmpeg\n").unwrap();
}

#[test]
fn webhooks_are_checked() {
    let c = load(
        "webhooks:\n  - url: https://h.example/x\n    events: [publish, read]\n    secret: s\n",
    )
    .unwrap();
    assert_eq!(c.webhooks.len(), 1);
    assert_eq!(c.webhooks[0].events, ["publish", "read"]);
    assert_eq!(c.webhooks[0].secret, "s");
    let e = load("webhooks:\n  - url: http://h/x\n    events: [publsh]\n").unwrap_err();
    assert_eq!(e.key, "webhooks");
    assert!(e.message.contains("unknown event 'publsh'"), "{e}");
    let e = load("webhooks:\n  - url: ftp://h/x\n").unwrap_err();
    assert!(e.message.contains("http:// or https://"), "{e}");
    let e = load("webhooks:\n  - url: http://h/x\n    sekret: s\n").unwrap_err();
    assert!(e.message.contains("unknown key 'sekret'"), "{e}");
}

#[test]
fn mediamtx_older_spellings_hardware_keys_and_features_not_built() {
    let c = load(
        "readBufferCount: 256\nhlsAllowOrigin: https://a.example\nrtmpDisable: yes\n\
         protocols: [tcp]\nrecordPath: ./r/%path/%s\n\
         pathDefaults:\n  disablePublisherOverride: yes\n  sourceProtocol: tcp\n\
         \x20 rpiCameraWidth: 1920\n  rpiCameraAWBGains: [0, 0]\n",
    )
    .unwrap();
    assert_eq!(c.write_queue_size, 256);
    assert_eq!(c.hls_allow_origins, vec!["https://a.example"]);
    assert!(!c.rtmp);
    assert_eq!(c.rtsp_transports, vec!["tcp"]);
    assert_eq!(c.path_defaults.record.path, "./r/%path/%s");
    assert!(!c.path_defaults.override_publisher);
    assert_eq!(c.path_defaults.rtsp_transport, "tcp");
    let deprecated = c
        .warnings
        .iter()
        .filter(|w| w.contains("deprecated"))
        .count();
    assert_eq!(deprecated, 7, "{:#?}", c.warnings);
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("readBufferCount is deprecated") && w.contains("writeQueueSize")));

    for (text, key, what) in [
        (
            "paths:\n  cam:\n    source: rpiCamera\n",
            "paths.cam.source",
            "Raspberry Pi",
        ),
        (
            "pathDefaults:\n  alwaysAvailable: yes\n",
            "pathDefaults.alwaysAvailable",
            "must contain at least one track",
        ),
        (
            "paths:\n  \"~^(.+)$\":\n    alwaysAvailable: yes\n    alwaysAvailableTracks: [{codec: H264}]\n",
            "paths.~^(.+)$.alwaysAvailable",
            "regular expression",
        ),
        (
            "paths:\n  a:\n    alwaysAvailable: yes\n    alwaysAvailableTracks: [{codec: VP8}]\n",
            "paths.a.alwaysAvailableTracks",
            "expected one of AV1, VP9, H265, H264",
        ),
        (
            "paths:\n  a:\n    alwaysAvailable: yes\n    alwaysAvailableFile: /nonexistent.mp4\n",
            "paths.a.alwaysAvailable",
            "invalid 'alwaysAvailableFile'",
        ),
        (
            "pathDefaults:\n  forward: [ftp://x/a]\n",
            "pathDefaults.forward",
            "dest must be an rtmp(s)://",
        ),
        (
            "paths:\n  \"~^(.+)$\":\n    source: rtsp://origin/$G1\n",
            "paths.~^(.+)$.sourceOnDemand",
            "sourceOnDemand: yes",
        ),
        (
            "paths:\n  r:\n    source: redirect\n",
            "paths.r.sourceRedirect",
            "must be set",
        ),
        (
            "hlsSegmentMaxSize: 1K\n",
            "hlsSegmentMaxSize",
            "at least 64K",
        ),
    ] {
        let e = err(text);
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.message.contains(what), "{text}: {e}");
    }
    // forward to RTMP and SRT is pushed like push.
    let c = load(
        "pathDefaults:\n  forward:\n    - rtmp://a/live/k\n    - dest: srt://b:9000?streamid=publish:x\n",
    )
    .unwrap();
    let dests: Vec<&str> = c
        .path_defaults
        .forward
        .iter()
        .map(|f| f.dest.as_str())
        .collect();
    assert_eq!(
        dests,
        vec!["rtmp://a/live/k", "srt://b:9000?streamid=publish:x"]
    );
}

#[test]
fn redirects_name_a_path_or_an_rtsp_url() {
    let c = load("paths:\n  a:\n    source: redirect\n    sourceRedirect: /b\n  c:\n    fallback: rtsps://h:8322/x\n").unwrap();
    let conf = |n: &str| c.paths.iter().find(|p| p.name == n).unwrap().clone();
    assert_eq!(conf("a").source_redirect, "/b");
    assert_eq!(conf("c").fallback, "rtsps://h:8322/x");
    for bad in ["http://h/x", "/bad path", "b"] {
        let e = load(&format!("paths:\n  a:\n    fallback: \"{bad}\"\n")).unwrap_err();
        assert!(e.to_string().contains("fallback"), "{bad}: {e}");
    }
    let e = load("paths:\n  a:\n    source: redirect\n").unwrap_err();
    assert!(e.to_string().contains("sourceRedirect"), "{e}");
}
