//! Who may publish, read or administer: the question every protocol asks, asked one way.
//!
//! A protocol crate builds an [`AuthRequest`] (what the client wants, on which path, with what
//! credentials) and asks the [`PathManager`](crate::PathManager), which asks the installed
//! [`Authenticator`]. The server installs `tidegate-auth`'s manager (internal users, HTTP, JWT,
//! stream keys); without one, [`PathRules`] applies the path's own `publishUser`/`readUser`/
//! `…IPs` keys, as before. An answer is a [`Grant`]: who was let in, until when, and a token
//! that fires if the right is taken back (a key revoked, a user removed on reload). The
//! session hands its kick token to [`Grant::enforce`], one helper for every protocol.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::path::PathConf;

/// What a client wants to do. The names are MediaMTX's (`authInternalUsers` permissions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Read,
    Playback,
    Api,
    Metrics,
    Pprof,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Publish,
        Action::Read,
        Action::Playback,
        Action::Api,
        Action::Metrics,
        Action::Pprof,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Read => "read",
            Action::Playback => "playback",
            Action::Api => "api",
            Action::Metrics => "metrics",
            Action::Pprof => "pprof",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the action is about a path (publish, read, playback).
    pub fn on_path(self) -> bool {
        matches!(self, Action::Publish | Action::Read | Action::Playback)
    }
}

/// Checks a password the client did not send in the clear (RTSP Digest): given the user name
/// and plain password a rule expects, says whether the client proved it knows them.
pub type Proof = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// What a client presented.
#[derive(Clone)]
pub struct Credentials {
    pub user: Option<String>,
    pub pass: Option<String>,
    /// A bearer token (JWT), from `Authorization: Bearer`, `?jwt=` or `?token=`.
    pub token: Option<String>,
    /// The token came from the URL's query (`?jwt=`, `?token=`), not a header.
    pub token_from_query: bool,
    /// A stream key given where no other field fits (the last URL segment of a path with
    /// `streamKeyInPath`); `?key=` and key-shaped passwords are found by the authenticator.
    pub key: Option<String>,
    pub ip: IpAddr,
    /// RTSP Digest: the client's answer, checked against each candidate's plain password.
    pub proof: Option<Proof>,
}

impl Credentials {
    /// User and password as given (either may be absent), no token, no proof.
    pub fn new(user: Option<String>, pass: Option<String>, ip: IpAddr) -> Credentials {
        Credentials {
            user,
            pass,
            token: None,
            token_from_query: false,
            key: None,
            ip,
            proof: None,
        }
    }

    /// Whether the client presented anything at all (a refusal of nothing is a challenge, not
    /// a failed attempt).
    pub fn presented(&self) -> bool {
        let some = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        some(&self.user)
            || some(&self.pass)
            || some(&self.token)
            || some(&self.key)
            || self.proof.is_some()
    }
}

impl std::fmt::Debug for Credentials {
    // Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("ip", &self.ip)
            .field("proof", &self.proof.is_some())
            .finish()
    }
}

/// One question: may these credentials do `action` (on `path`)?
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub action: Action,
    /// The path name; empty for `api`, `metrics` and `pprof`.
    pub path: String,
    /// The URL query the client used, without `?` (credentials stripped where the protocol
    /// carried them in it).
    pub query: String,
    /// `rtmp`, `rtsp`, `srt`, `webrtc`, `hls`, or the HTTP surface (`api`, `metrics`, …).
    pub protocol: &'static str,
    /// The session's id, when it has one.
    pub id: Option<String>,
    pub creds: Credentials,
}

impl AuthRequest {
    pub fn new(action: Action, path: &str, protocol: &'static str, creds: Credentials) -> Self {
        AuthRequest {
            action,
            path: path.to_string(),
            query: String::new(),
            protocol,
            id: None,
            creds,
        }
    }

    pub fn with_query(mut self, query: &str) -> Self {
        self.query = query.trim_start_matches('?').to_string();
        self
    }

    pub fn with_id(mut self, id: impl ToString) -> Self {
        self.id = Some(id.to_string());
        self
    }
}

/// Why a client was refused. The text never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("IP {0} is not allowed to {1}")]
    IpNotAllowed(IpAddr, &'static str),
    #[error("credentials are required")]
    CredentialsRequired,
    #[error("wrong user or password")]
    WrongCredentials,
    /// Refused by a rule, with the reason (no permission, bad token, expired key…).
    #[error("{0}")]
    Denied(String),
    /// The authority could not be asked (HTTP auth server down, JWKS unreachable): refused.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
    /// Too many failed attempts from this address: refused without checking.
    #[error("too many failed attempts from {0}; try again later")]
    RateLimited(IpAddr),
}

impl AuthError {
    /// Whether the client should be asked for credentials (401 with a challenge) rather than
    /// told it failed: nothing was presented.
    pub fn asks_credentials(&self) -> bool {
        matches!(self, AuthError::CredentialsRequired)
    }
}

/// Asks again whether a live session may go on: `Err(reason)` ends it. A transport failure
/// is not a refusal (the checker logs it and answers `Ok`).
pub type Recheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A yes: who, until when, and a token that fires when the right is taken back.
#[derive(Clone)]
pub struct Grant {
    /// The user or subject let in (empty for anonymous).
    pub user: String,
    /// When the right ends by itself (a JWT's `exp`, a stream key's `expires`).
    pub expires: Option<SystemTime>,
    /// Cancelled when the right is taken back (revoked key, user removed, HTTP re-check
    /// refused); the reason is in `why`.
    pub revoked: CancellationToken,
    pub why: Arc<std::sync::Mutex<Option<String>>>,
    /// Cancelled when the session that holds the grant has ended (by [`Grant::enforce`]), so
    /// that whoever tracks live grants can let go of it.
    pub done: CancellationToken,
    /// Asked again every period while the session lives (HTTP auth's re-check).
    pub recheck: Option<(Duration, Recheck)>,
    /// Kept alive by every clone of the grant: whoever tracks live grants holds it weakly, and
    /// lets go when the last clone (the session's) is dropped.
    pub hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("user", &self.user)
            .field("expires", &self.expires)
            .field("revoked", &self.revoked.is_cancelled())
            .field("recheck", &self.recheck.as_ref().map(|(d, _)| d))
            .finish()
    }
}

impl Default for Grant {
    fn default() -> Self {
        Grant::anonymous()
    }
}

impl Grant {
    /// A grant that never ends by itself.
    pub fn anonymous() -> Grant {
        Grant::for_user("")
    }

    pub fn for_user(user: &str) -> Grant {
        Grant {
            user: user.to_string(),
            expires: None,
            revoked: CancellationToken::new(),
            why: Arc::new(std::sync::Mutex::new(None)),
            done: CancellationToken::new(),
            recheck: None,
            hold: None,
        }
    }

    /// Takes the right back, with the reason the session's log will give.
    pub fn revoke(&self, why: &str) {
        if let Ok(mut w) = self.why.lock() {
            w.get_or_insert_with(|| why.to_string());
        }
        self.revoked.cancel();
    }

    /// Ends the session (cancels `kick`) when the grant expires, is revoked or fails a
    /// re-check, logging why; returns at once when the session ends first. Spawned once per
    /// session: one helper shared by every protocol.
    pub fn enforce(self, kick: CancellationToken, what: String) {
        // Nothing can end this grant (no expiry, no re-check, nobody tracks it to revoke it):
        // no task for it, so that a thousand anonymous readers cost nothing here.
        if self.expires.is_none() && self.recheck.is_none() && self.hold.is_none() {
            return;
        }
        tokio::spawn(async move {
            let expiry = async {
                match self.expires {
                    Some(at) => {
                        let left = at
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let recheck = async {
                let Some((period, check)) = &self.recheck else {
                    return std::future::pending::<String>().await;
                };
                loop {
                    tokio::time::sleep(*period).await;
                    if let Err(why) = check().await {
                        return why;
                    }
                }
            };
            tokio::select! {
                _ = kick.cancelled() => {}
                _ = expiry => {
                    tracing::info!("{what}: closed, its credentials expired");
                    kick.cancel();
                }
                _ = self.revoked.cancelled() => {
                    let why = self
                        .why
                        .lock()
                        .ok()
                        .and_then(|w| w.clone())
                        .unwrap_or_else(|| "its right was revoked".into());
                    tracing::info!("{what}: closed, {why}");
                    kick.cancel();
                }
                why = recheck => {
                    tracing::info!("{what}: closed, {why}");
                    self.revoke(&why);
                    kick.cancel();
                }
            }
            self.done.cancel();
        });
    }
}

/// The boxed future an [`Authenticator`] answers with.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Grant, AuthError>> + Send + 'a>>;

/// Decides who may do what. `conf` is the configuration of the path the request is about
/// (None for api/metrics/pprof).
pub trait Authenticator: Send + Sync + 'static {
    fn authorize<'a>(&'a self, req: &'a AuthRequest, conf: Option<&'a PathConf>) -> AuthFuture<'a>;
}

/// The path's own `publishUser`/`publishPass`/`publishIPs` (and `read…`) keys; anything that
/// is not about a path is allowed. What the registry uses when no authenticator is installed.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathRules;

impl Authenticator for PathRules {
    fn authorize<'a>(&'a self, req: &'a AuthRequest, conf: Option<&'a PathConf>) -> AuthFuture<'a> {
        let r = match conf {
            Some(c) => c
                .authorize(req.action, &req.creds)
                .map(|_| Grant::anonymous()),
            None => Ok(Grant::anonymous()),
        };
        Box::pin(std::future::ready(r))
    }
}

/// Constant-time comparison, so that a password cannot be guessed byte by byte from timing.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl PathConf {
    /// Whether these credentials allow `action` on this path by the path's own keys
    /// (`publishUser`, `readIPs`, …). Actions other than publish and read are not the path's
    /// to decide: allowed here.
    pub fn authorize(&self, action: Action, creds: &Credentials) -> Result<(), AuthError> {
        let (user, pass, ips) = match action {
            Action::Publish => (&self.publish_user, &self.publish_pass, &self.publish_ips),
            Action::Read => (&self.read_user, &self.read_pass, &self.read_ips),
            _ => return Ok(()),
        };
        if !ips.is_empty() && !ips.iter().any(|net| net.contains(&creds.ip)) {
            return Err(AuthError::IpNotAllowed(creds.ip, action.as_str()));
        }
        if user.is_empty() && pass.is_empty() {
            return Ok(());
        }
        let (Some(u), given_pass) = (&creds.user, &creds.pass) else {
            return Err(AuthError::CredentialsRequired);
        };
        // Evaluate both comparisons, so timing does not reveal which one failed.
        let ok_user = same(u, user);
        let ok_pass = match (given_pass, &creds.proof) {
            (_, Some(proof)) => proof(user, pass),
            (Some(p), None) => same(p, pass),
            (None, None) => return Err(AuthError::CredentialsRequired),
        };
        if ok_user && ok_pass {
            Ok(())
        } else {
            Err(AuthError::WrongCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>, pass: Option<&str>, ip: &str) -> Credentials {
        Credentials::new(
            user.map(str::to_string),
            pass.map(str::to_string),
            ip.parse().unwrap(),
        )
    }

    #[test]
    fn open_path_allows_everyone() {
        let c = PathConf::default();
        assert!(c
            .authorize(Action::Publish, &creds(None, None, "10.0.0.1"))
            .is_ok());
        assert!(c
            .authorize(Action::Read, &creds(Some("x"), Some("y"), "::1"))
            .is_ok());
    }

    #[test]
    fn users_and_ips_are_checked_per_action() {
        let c = PathConf {
            publish_user: "pub".into(),
            publish_pass: "secret".into(),
            read_ips: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..PathConf::default()
        };
        assert_eq!(
            c.authorize(Action::Publish, &creds(None, None, "127.0.0.1")),
            Err(AuthError::CredentialsRequired)
        );
        assert_eq!(
            c.authorize(
                Action::Publish,
                &creds(Some("pub"), Some("wrong"), "127.0.0.1")
            ),
            Err(AuthError::WrongCredentials)
        );
        assert_eq!(
            c.authorize(
                Action::Publish,
                &creds(Some("pub"), Some("secre"), "127.0.0.1")
            ),
            Err(AuthError::WrongCredentials)
        );
        assert!(c
            .authorize(
                Action::Publish,
                &creds(Some("pub"), Some("secret"), "8.8.8.8")
            )
            .is_ok());
        assert!(c
            .authorize(Action::Read, &creds(None, None, "127.0.0.5"))
            .is_ok());
        assert!(c.authorize(Action::Read, &creds(None, None, "::1")).is_ok());
        assert!(matches!(
            c.authorize(Action::Read, &creds(None, None, "192.168.1.1")),
            Err(AuthError::IpNotAllowed(..))
        ));
    }

    #[test]
    fn a_proof_stands_for_the_password() {
        let c = PathConf {
            publish_user: "pub".into(),
            publish_pass: "secret".into(),
            ..PathConf::default()
        };
        let mut good = creds(Some("pub"), None, "127.0.0.1");
        good.proof = Some(Arc::new(|u, p| u == "pub" && p == "secret"));
        assert!(c.authorize(Action::Publish, &good).is_ok());
        let mut bad = creds(Some("pub"), None, "127.0.0.1");
        bad.proof = Some(Arc::new(|_, _| false));
        assert_eq!(
            c.authorize(Action::Publish, &bad),
            Err(AuthError::WrongCredentials)
        );
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("write"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_ends_its_session_at_expiry_or_revocation() {
        let kick = CancellationToken::new();
        let mut g = Grant::for_user("u");
        g.expires = Some(SystemTime::now() + Duration::from_secs(5));
        g.clone().enforce(kick.clone(), "test".into());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!kick.is_cancelled());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(kick.is_cancelled());

        let kick = CancellationToken::new();
        let mut g = Grant::for_user("u");
        // Tracked (someone may revoke it), as the auth manager's grants are.
        g.hold = Some(Arc::new(()));
        g.clone().enforce(kick.clone(), "test".into());
        tokio::task::yield_now().await;
        assert!(!kick.is_cancelled());
        g.revoke("key revoked");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(kick.is_cancelled());
    }
}
