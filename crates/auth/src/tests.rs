use std::net::SocketAddr;
use std::sync::Arc;

use tidegate_core::{Action, AuthError, AuthRequest, Authenticator, Credentials, PathConf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn req(action: Action, path: &str, user: Option<&str>, pass: Option<&str>) -> AuthRequest {
    AuthRequest::new(
        action,
        path,
        "rtmp",
        Credentials::new(
            user.map(str::to_string),
            pass.map(str::to_string),
            "127.0.0.1".parse().unwrap(),
        ),
    )
}

fn user(name: &str, pass: &str, perms: &[(Action, &str)]) -> InternalUser {
    InternalUser {
        user: Secret::parse(name).unwrap(),
        pass: Secret::parse(pass).unwrap(),
        ips: Vec::new(),
        permissions: perms
            .iter()
            .map(|(a, p)| Permission::new(*a, p).unwrap())
            .collect(),
    }
}

#[tokio::test(start_paused = true)]
async fn internal_users_decide_and_the_defaults_keep_the_api_local() {
    let m = AuthManager::new(AuthConfig::default());
    assert!(m
        .authorize(&req(Action::Publish, "a", None, None), None)
        .await
        .is_ok());
    assert!(m
        .authorize(&req(Action::Api, "", None, None), None)
        .await
        .is_ok());
    let mut far = req(Action::Api, "", None, None);
    far.creds.ip = "192.0.2.7".parse().unwrap();
    assert_eq!(
        m.authorize(&far, None).await.unwrap_err(),
        AuthError::CredentialsRequired
    );

    let m = AuthManager::new(AuthConfig {
        internal_users: vec![user("alice", "secret", &[(Action::Publish, "~^live/")])],
        ..AuthConfig::default()
    });
    let g = m
        .authorize(
            &req(Action::Publish, "live/a", Some("alice"), Some("secret")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(g.user, "alice");
    assert_eq!(
        m.authorize(&req(Action::Publish, "live/a", None, None), None)
            .await
            .unwrap_err(),
        AuthError::CredentialsRequired
    );
    assert_eq!(
        m.authorize(
            &req(Action::Publish, "live/a", Some("alice"), Some("nope")),
            None
        )
        .await
        .unwrap_err(),
        AuthError::WrongCredentials
    );
    assert!(matches!(
        m.authorize(
            &req(Action::Read, "live/a", Some("alice"), Some("secret")),
            None
        )
        .await,
        Err(AuthError::Denied(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn path_credentials_decide_publish_and_read_on_their_path() {
    let m = AuthManager::new(AuthConfig {
        path_credentials: true,
        ..AuthConfig::default()
    });
    let conf = PathConf {
        publish_user: "pub".into(),
        publish_pass: "pw".into(),
        ..PathConf::default()
    };
    let ok = req(Action::Publish, "cam", Some("pub"), Some("pw"));
    assert!(m.authorize(&ok, Some(&conf)).await.is_ok());
    let bad = req(Action::Publish, "cam", Some("pub"), Some("no"));
    assert_eq!(
        m.authorize(&bad, Some(&conf)).await.unwrap_err(),
        AuthError::WrongCredentials
    );
    assert!(m
        .authorize(&req(Action::Read, "cam", None, None), Some(&conf))
        .await
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn failures_are_delayed_then_the_address_is_refused_at_once() {
    let m = AuthManager::new(AuthConfig {
        internal_users: vec![user("alice", "secret", &[(Action::Read, "")])],
        ..AuthConfig::default()
    });
    let start = tokio::time::Instant::now();
    for _ in 0..limiter::LIMIT {
        let r = m
            .authorize(&req(Action::Read, "x", Some("alice"), Some("guess")), None)
            .await;
        assert_eq!(r.unwrap_err(), AuthError::WrongCredentials);
    }
    // 250 ms, 500 ms, … capped at 3 s.
    assert!(start.elapsed() >= std::time::Duration::from_secs(10));
    // Past the limit even the right password is refused, and at once.
    let before = tokio::time::Instant::now();
    let r = m
        .authorize(&req(Action::Read, "x", Some("alice"), Some("secret")), None)
        .await;
    assert!(matches!(r, Err(AuthError::RateLimited(_))));
    assert_eq!(before.elapsed(), std::time::Duration::ZERO);
}

#[tokio::test]
async fn reload_ends_the_sessions_of_a_removed_user() {
    let cfg = AuthConfig {
        internal_users: vec![
            user("alice", "a", &[(Action::Read, "")]),
            user("bob", "b", &[(Action::Read, "")]),
        ],
        ..AuthConfig::default()
    };
    let m = AuthManager::new(cfg.clone());
    let alice = m
        .authorize(&req(Action::Read, "x", Some("alice"), Some("a")), None)
        .await
        .unwrap();
    let bob = m
        .authorize(&req(Action::Read, "x", Some("bob"), Some("b")), None)
        .await
        .unwrap();
    m.reload(AuthConfig {
        internal_users: vec![user("bob", "b", &[(Action::Read, "")])],
        ..cfg
    });
    assert!(alice.revoked.is_cancelled());
    assert!(!bob.revoked.is_cancelled());
}

/// A one-shot HTTP server on loopback that answers every request with `status` and sends
/// the request bodies it got on the channel.
async fn auth_server(status: u16) -> (SocketAddr, tokio::sync::mpsc::Receiver<serde_json::Value>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(serde_json::from_str(body).unwrap()).await;
                            let _ = s
                                .write_all(
                                    format!(
                                        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
                                    )
                                    .as_bytes(),
                                )
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn http_auth_posts_mediamtx_fields_and_fails_closed() {
    let (addr, mut bodies) = auth_server(200).await;
    let m = AuthManager::new(AuthConfig {
        method: Method::Http,
        http_address: format!("http://{addr}/auth"),
        ..AuthConfig::default()
    });
    let mut r = req(Action::Publish, "cam", Some("u"), Some("p"));
    r.query = "key=1".into();
    r.id = Some("7".into());
    assert!(m.authorize(&r, None).await.is_ok());
    let body = bodies.recv().await.unwrap();
    for (k, v) in [
        ("user", "u"),
        ("password", "p"),
        ("ip", "127.0.0.1"),
        ("action", "publish"),
        ("path", "cam"),
        ("protocol", "rtmp"),
        ("query", "key=1"),
        ("id", "7"),
        ("token", ""),
    ] {
        assert_eq!(body[k], v, "{k} in {body}");
    }

    let (addr, _bodies) = auth_server(401).await;
    let m = AuthManager::new(AuthConfig {
        method: Method::Http,
        http_address: format!("http://{addr}/auth"),
        ..AuthConfig::default()
    });
    assert!(matches!(
        m.authorize(&req(Action::Read, "cam", None, None), None)
            .await,
        Err(AuthError::Denied(_))
    ));

    // Nobody listens: refused, quickly, as unavailable.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let m = AuthManager::new(AuthConfig {
        method: Method::Http,
        http_address: format!("http://127.0.0.1:{port}/auth"),
        timeout: std::time::Duration::from_secs(2),
        ..AuthConfig::default()
    });
    assert!(matches!(
        m.authorize(&req(Action::Read, "cam", None, None), None)
            .await,
        Err(AuthError::Unavailable(_))
    ));
    // What authHTTPExclude lists is not sent to the server: the internal users decide it
    // (localhost may use the API).
    let m = AuthManager::new(AuthConfig {
        method: Method::Http,
        http_address: format!("http://127.0.0.1:{port}/auth"),
        http_exclude: vec![Permission::any_path(Action::Api)],
        ..AuthConfig::default()
    });
    assert!(m
        .authorize(&req(Action::Api, "", None, None), None)
        .await
        .is_ok());
}

#[tokio::test]
async fn grants_nobody_holds_are_forgotten() {
    let m = AuthManager::new(AuthConfig {
        internal_users: vec![user("alice", "a", &[(Action::Read, "")])],
        ..AuthConfig::default()
    });
    // HLS asks once per request and drops the grant: the manager must not keep them all.
    for _ in 0..100 {
        let g = m
            .authorize(&req(Action::Read, "x", Some("alice"), Some("a")), None)
            .await
            .unwrap();
        drop(g);
    }
    let held = m
        .authorize(&req(Action::Read, "x", Some("alice"), Some("a")), None)
        .await
        .unwrap();
    assert_eq!(m.live.lock().unwrap().len(), 1);
    drop(held);
}

#[tokio::test]
async fn hls_requests_with_a_key_hit_the_store_once_a_second() {
    let file = std::env::temp_dir().join(format!("tidegate-hls-keys-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let store = Arc::new(keys::KeyStore::open(file.to_str().unwrap()).unwrap());
    let (rec, key) = store
        .create(keys::NewKey {
            path: "cam".into(),
            action: Some(Action::Read),
            ..keys::NewKey::default()
        })
        .await
        .unwrap();
    let m = AuthManager::with_keys(AuthConfig::default(), Some(store.clone()));
    let mut r = req(Action::Read, "cam", None, Some(&key));
    r.protocol = "hls";
    for _ in 0..20 {
        assert!(m.authorize(&r, None).await.is_ok());
    }
    assert_eq!(store.get(rec.id.clone()).await.unwrap().unwrap().uses, 1);
    // Revoked here: the remembered check goes at once.
    store.revoke(rec.id.clone()).await.unwrap();
    m.revoke_key(&rec.id, "revoked");
    assert!(m.authorize(&r, None).await.is_err());
    let _ = std::fs::remove_file(&file);
}
