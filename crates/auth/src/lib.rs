//! Who may publish, read and administer, decided in one place for every protocol and every
//! HTTP surface (MediaMTX's `internal/auth/manager.go` is the model; names and defaults are
//! its own).
//!
//! - `authMethod: internal`: `authInternalUsers` (names and passwords plain, `sha256:` or
//!   `argon2:`; IP ranges; `{action, path}` permissions, `~regex` paths). The old per-path
//!   `publishUser`/`readUser`/`…IPs` keys still decide publish and read on their path.
//! - `authMethod: http`: a POST of MediaMTX's JSON body to `authHTTPAddress`; 2xx allows.
//!   Bounded by `readTimeout`; a failing server refuses (fails closed). Live sessions are asked
//!   about again every `authHTTPRecheckPeriod` (0: never), like nginx-rtmp's `on_update`.
//! - `authMethod: jwt`: a JWT verified against `authJWTJWKS` (see [`jwt`]); the session ends at
//!   its `exp`.
//!
//! Whatever the method, a stream key ([`keys`]: `?key=`, a password or bearer token that looks
//! like one, or the last URL segment of a path with `streamKeyInPath`) is checked against the
//! key store first; a path with `streamKeyRequired` takes publishers with a valid key only.
//! Sessions opened with a key end when it expires, is revoked, or is rotated out after its grace
//! period: a poller looks at the keys live sessions hold twice a second (other processes that
//! share the store revoke too).
//!
//! Every failed attempt with credentials is delayed and counted per address ([`limiter`]), and
//! logged with protocol, action, path and address, never with the secret.

mod error;
pub mod fetch;
pub mod jwt;
pub mod keys;
pub mod limiter;
pub mod secret;
pub mod users;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tidegate_core::{AuthError, AuthFuture, AuthRequest, Authenticator, Grant, PathConf};

pub use error::AccessError;
pub use jwt::JwtConfig;
pub use secret::Secret;
pub use users::{default_users, localhost, InternalUser, Permission};

use limiter::{Before, Limiter};
use users::{covered, Match};

/// `authMethod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    #[default]
    Internal,
    Http,
    Jwt,
}

/// Every auth setting, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthConfig {
    pub method: Method,
    pub internal_users: Vec<InternalUser>,
    /// Some path has `publishUser`/`readUser`/`…IPs`: those keys decide publish and read on
    /// their path (MediaMTX's deprecated-credentials mode), the users list the rest.
    pub path_credentials: bool,
    pub http_address: String,
    pub http_fingerprint: String,
    /// Actions not sent to the HTTP server: `authInternalUsers` decides them instead.
    pub http_exclude: Vec<Permission>,
    /// How often a live session's HTTP decision is asked again; zero: never.
    pub http_recheck: Duration,
    pub jwt: JwtConfig,
    /// Actions that need no JWT: `authInternalUsers` decides them instead.
    pub jwt_exclude: Vec<Permission>,
    /// Whether HLS and WebRTC may carry the token in the URL's query (RTMP, RTSP and SRT
    /// always may: they have nowhere else).
    pub jwt_in_http_query: bool,
    /// Bound on each call to the HTTP auth server or the JWKS URL.
    pub timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: Method::Internal,
            internal_users: default_users(),
            path_credentials: false,
            http_address: String::new(),
            http_fingerprint: String::new(),
            http_exclude: Vec::new(),
            http_recheck: Duration::ZERO,
            jwt: JwtConfig {
                claim_key: "mediamtx_permissions".into(),
                ..JwtConfig::default()
            },
            jwt_exclude: Vec::new(),
            jwt_in_http_query: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A live grant, held weakly: who or which key it came from, and how to take it back.
struct Live {
    /// The internal user's name, or the stream key's id.
    owner: String,
    alive: std::sync::Weak<()>,
    revoked: tokio_util::sync::CancellationToken,
    why: Arc<Mutex<Option<String>>>,
}

impl Live {
    /// Tracks `grant` (giving it the strong handle) under `owner`.
    fn of(owner: &str, grant: &mut Grant) -> Live {
        let hold = Arc::new(());
        let alive = Arc::downgrade(&hold);
        grant.hold = Some(hold);
        Live {
            owner: owner.to_string(),
            alive,
            revoked: grant.revoked.clone(),
            why: grant.why.clone(),
        }
    }

    fn gone(&self) -> bool {
        self.alive.strong_count() == 0 || self.revoked.is_cancelled()
    }

    fn revoke(&self, why: &str) {
        if let Ok(mut w) = self.why.lock() {
            w.get_or_insert_with(|| why.to_string());
        }
        self.revoked.cancel();
    }
}

/// How often the keys of live sessions are looked at.
const KEY_POLL: Duration = Duration::from_millis(400);

/// The installed authenticator.
pub struct AuthManager {
    config: RwLock<Arc<AuthConfig>>,
    jwt: RwLock<Arc<jwt::Jwt>>,
    limiter: Limiter,
    /// Grants of live sessions, to end those whose user a reload removes.
    live: Mutex<Vec<Live>>,
    keys: Option<Arc<keys::KeyStore>>,
    /// Grants of live sessions opened with a key, by key id.
    key_live: Mutex<Vec<Live>>,
    /// HLS asks once per request (several a second per viewer): a key it checked in the last
    /// second is taken from here, not from the store, and not counted as another use.
    hls_keys: Mutex<std::collections::HashMap<HlsKey, (Instant, keys::KeyRecord)>>,
}

/// A key as HLS presented it: the key, the path, the client's address.
type HlsKey = (String, String, std::net::IpAddr);

/// How long an HLS request may rely on the previous check of the same key.
const HLS_KEY_FRESH: Duration = Duration::from_secs(1);
/// Keys remembered for HLS at most (the table is emptied when full).
const HLS_KEYS_MAX: usize = 10_000;

impl AuthManager {
    pub fn new(config: AuthConfig) -> Arc<AuthManager> {
        AuthManager::with_keys(config, None)
    }

    /// A manager with a stream-key store. Must be called within a tokio runtime when `keys`
    /// is given (the revocation poller is spawned on it).
    pub fn with_keys(config: AuthConfig, keys: Option<Arc<keys::KeyStore>>) -> Arc<AuthManager> {
        let jwt = jwt::Jwt::new(config.jwt.clone(), config.timeout);
        let m = Arc::new(AuthManager {
            config: RwLock::new(Arc::new(config)),
            jwt: RwLock::new(Arc::new(jwt)),
            limiter: Limiter::default(),
            live: Mutex::new(Vec::new()),
            keys,
            key_live: Mutex::new(Vec::new()),
            hls_keys: Mutex::new(std::collections::HashMap::new()),
        });
        if m.keys.is_some() {
            let weak = Arc::downgrade(&m);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(KEY_POLL).await;
                    let Some(m) = weak.upgrade() else { return };
                    m.poll_keys().await;
                }
            });
        }
        m
    }

    pub fn keys(&self) -> Option<&Arc<keys::KeyStore>> {
        self.keys.as_ref()
    }

    /// Ends the live sessions opened with key `id` (a revocation here; other processes see it
    /// through the poller).
    pub fn revoke_key(&self, id: &str, why: &str) {
        self.hls_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, rec)| rec.id != id);
        let live = self.key_live.lock().unwrap_or_else(|e| e.into_inner());
        for l in live.iter().filter(|l| l.owner == id) {
            l.revoke(why);
        }
    }

    /// Looks at the keys live sessions hold: revoked, deleted or expired (a rotation shortens
    /// the old key's life) ends them.
    async fn poll_keys(&self) {
        let Some(store) = &self.keys else { return };
        let ids: Vec<String> = {
            let mut live = self.key_live.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|l| !l.gone());
            let mut ids: Vec<String> = live.iter().map(|l| l.owner.clone()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        if ids.is_empty() {
            return;
        }
        let states = match store.states(ids).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("[auth] cannot look at the stream keys of live sessions: {e}");
                return;
            }
        };
        let now = std::time::SystemTime::now();
        for (id, state) in states {
            let why = match state {
                keys::KeyState::Revoked => "its stream key was revoked",
                keys::KeyState::Gone => "its stream key was deleted",
                keys::KeyState::Valid { expires: Some(e) } if e <= now => "its stream key expired",
                keys::KeyState::Valid { .. } => continue,
            };
            self.revoke_key(&id, why);
        }
    }

    /// The stream key a request carries, if any: the last URL segment of a `streamKeyInPath`
    /// path, or `?key=`, a password or a token that looks like one of ours (`tgk_…`). Any
    /// `?key=` counts on a path that requires a key; elsewhere a `key` that is not one of
    /// ours is left to the auth method (MediaMTX users' HTTP auth servers read their own).
    fn presented_key(req: &AuthRequest, required: bool) -> Option<String> {
        if let Some(k) = &req.creds.key {
            return Some(k.clone());
        }
        for pair in req.query.split('&') {
            if let Some(("key", v)) = pair.split_once('=') {
                let v = tidegate_core::text::percent_decode(v, false);
                if required || keys::looks_like_key(&v) {
                    return Some(v);
                }
            }
        }
        [&req.creds.pass, &req.creds.token]
            .into_iter()
            .flatten()
            .find(|v| keys::looks_like_key(v))
            .cloned()
    }

    /// A key decides, when one is presented or the path requires one for publishing.
    async fn by_key(
        &self,
        req: &AuthRequest,
        conf: Option<&PathConf>,
    ) -> Option<Result<Grant, AuthError>> {
        let required = req.action == tidegate_core::Action::Publish
            && conf.is_some_and(|c| c.stream_key_required);
        let key = Self::presented_key(req, required);
        let Some(key) = key else {
            return required.then(|| {
                Err(AuthError::Denied(
                    "a stream key is required to publish here".into(),
                ))
            });
        };
        let Some(store) = &self.keys else {
            return Some(Err(AuthError::Denied("no key store is configured".into())));
        };
        let hls = req.protocol == "hls";
        let cached = hls
            .then(|| {
                let now = Instant::now();
                let map = self.hls_keys.lock().unwrap_or_else(|e| e.into_inner());
                map.get(&(key.clone(), req.path.clone(), req.creds.ip))
                    .filter(|(at, rec)| {
                        now.duration_since(*at) < HLS_KEY_FRESH
                            && rec.action == req.action.as_str()
                            && rec.expires.is_none_or(|e| e > std::time::SystemTime::now())
                    })
                    .map(|(_, rec)| rec.clone())
            })
            .flatten();
        let checked = match cached {
            Some(rec) => Ok(rec),
            None => {
                store
                    .check(key.clone(), req.path.clone(), req.action, req.creds.ip)
                    .await
            }
        };
        if let (true, Ok(rec)) = (hls, &checked) {
            let mut map = self.hls_keys.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= HLS_KEYS_MAX {
                map.clear();
            }
            map.entry((key, req.path.clone(), req.creds.ip))
                .or_insert_with(|| (Instant::now(), rec.clone()));
        }
        match checked {
            Ok(rec) => {
                let mut grant = Grant::for_user(&format!(
                    "key {}{}",
                    rec.id,
                    if rec.label.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", rec.label)
                    }
                ));
                grant.expires = rec.expires;
                let mut live = self.key_live.lock().unwrap_or_else(|e| e.into_inner());
                live.retain(|l| !l.gone());
                live.push(Live::of(&rec.id, &mut grant));
                Some(Ok(grant))
            }
            Err(AccessError::Store(e)) => {
                tracing::error!("[auth] key store: {e}; refusing");
                Some(Err(AuthError::Unavailable(e)))
            }
            Err(e) => Some(Err(AuthError::Denied(e.to_string()))),
        }
    }

    fn config(&self) -> Arc<AuthConfig> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn jwt(&self) -> Arc<jwt::Jwt> {
        self.jwt
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// `POST /v3/auth/jwks/refresh`: the next token fetches the JWKS again.
    pub async fn refresh_jwks(&self) {
        self.jwt().refresh().await;
    }

    /// Applies new settings. Sessions of internal users that are no longer in the list end,
    /// with a log line saying so.
    pub fn reload(&self, config: AuthConfig) {
        let old = self.config();
        if old.jwt != config.jwt || old.timeout != config.timeout {
            if let Ok(mut j) = self.jwt.write() {
                *j = Arc::new(jwt::Jwt::new(config.jwt.clone(), config.timeout));
            }
        }
        let kept: Vec<String> = config
            .internal_users
            .iter()
            .filter_map(|u| u.user.plain().map(str::to_string))
            .collect();
        let internal = config.method == Method::Internal;
        if let Ok(mut c) = self.config.write() {
            *c = Arc::new(config);
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|l| !l.gone());
        for l in live.iter() {
            if internal && !l.owner.is_empty() && !kept.contains(&l.owner) {
                l.revoke(&format!(
                    "user '{}' was removed from the configuration",
                    l.owner
                ));
            }
        }
    }

    /// Failures from `ip` in the last minute.
    pub fn failures(&self, ip: std::net::IpAddr) -> usize {
        self.limiter.failures(ip, Instant::now())
    }

    /// Remembers a named user's grant (weakly: a grant nobody holds any more is forgotten),
    /// so that a reload that removes the user can end the session.
    fn track(&self, grant: &mut Grant) {
        if grant.user.is_empty() || grant.hold.is_some() {
            return;
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|l| !l.gone());
        live.push(Live::of(&grant.user.clone(), grant));
    }

    async fn decide(
        &self,
        config: &Arc<AuthConfig>,
        req: &AuthRequest,
        conf: Option<&PathConf>,
    ) -> Result<Grant, AuthError> {
        match config.method {
            Method::Internal => internal(config, req, conf).await,
            Method::Http if covered(&config.http_exclude, req) => internal(config, req, conf).await,
            Method::Http => http(config, req).await,
            Method::Jwt if covered(&config.jwt_exclude, req) => internal(config, req, conf).await,
            Method::Jwt => self.by_jwt(config, req).await,
        }
    }

    async fn by_jwt(&self, config: &AuthConfig, req: &AuthRequest) -> Result<Grant, AuthError> {
        let http = matches!(req.protocol, "hls" | "webrtc") || !req.action.on_path();
        let from_query_refused = req.creds.token_from_query && http && !config.jwt_in_http_query;
        let token = req
            .creds
            .token
            .as_deref()
            .filter(|t| !t.is_empty() && !from_query_refused)
            .or(req.creds.pass.as_deref().filter(|p| !p.is_empty()));
        let Some(token) = token else {
            return Err(AuthError::CredentialsRequired);
        };
        let v = self.jwt().verify(token).await.map_err(|e| match e {
            AccessError::JwksUnavailable(e) => {
                tracing::error!("[auth] {e}; refusing");
                AuthError::Unavailable(e)
            }
            other => AuthError::Denied(other.to_string()),
        })?;
        if !covered(&v.permissions, req) {
            return Err(AuthError::Denied(format!(
                "the token does not allow {} on '{}'",
                req.action.as_str(),
                req.path
            )));
        }
        let mut grant = Grant::for_user(&v.subject);
        grant.expires = v.expires;
        Ok(grant)
    }
}

impl Authenticator for AuthManager {
    fn authorize<'a>(&'a self, req: &'a AuthRequest, conf: Option<&'a PathConf>) -> AuthFuture<'a> {
        Box::pin(async move {
            let ip = req.creds.ip;
            // Formatted only when a line is logged.
            let what = Describe(req);
            if let Before::Refuse { first } = self.limiter.before(ip, Instant::now()) {
                if first {
                    tracing::warn!(
                        "[auth] {what}: {} failed attempts from {ip} within a minute; refusing it at once until they age out",
                        limiter::LIMIT
                    );
                }
                return Err(AuthError::RateLimited(ip));
            }
            let config = self.config();
            let decided = match self.by_key(req, conf).await {
                Some(r) => r,
                None => self.decide(&config, req, conf).await,
            };
            match decided {
                Ok(mut grant) => {
                    self.track(&mut grant);
                    Ok(grant)
                }
                Err(e)
                    if (req.creds.presented() || Self::presented_key(req, false).is_some())
                        && !matches!(e, AuthError::Unavailable(_)) =>
                {
                    let delay = self.limiter.failed(ip, Instant::now());
                    tracing::warn!("[auth] {what}: refused: {e}");
                    tokio::time::sleep(delay).await;
                    Err(e)
                }
                Err(e) => {
                    tracing::info!("[auth] {what}: refused: {e}");
                    Err(e)
                }
            }
        })
    }
}

/// `rtmp 127.0.0.1 publish 'cam1' (user 'bob')`: what the logs say of a request, without any
/// secret.
struct Describe<'a>(&'a AuthRequest);

impl std::fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let req = self.0;
        write!(
            f,
            "{} {} {}",
            req.protocol,
            req.creds.ip,
            req.action.as_str()
        )?;
        if req.action.on_path() {
            write!(f, " '{}'", req.path)?;
        }
        if let Some(u) = req.creds.user.as_deref().filter(|u| !u.is_empty()) {
            write!(f, " (user '{u}')")?;
        }
        Ok(())
    }
}

/// `authMethod: internal` (and what HTTP and JWT exclude).
async fn internal(
    config: &Arc<AuthConfig>,
    req: &AuthRequest,
    conf: Option<&PathConf>,
) -> Result<Grant, AuthError> {
    if config.path_credentials {
        if let (Some(c), tidegate_core::Action::Publish | tidegate_core::Action::Read) =
            (conf, req.action)
        {
            c.authorize(req.action, &req.creds)?;
            return Ok(Grant::for_user(req.creds.user.as_deref().unwrap_or("")));
        }
    }
    let mut wrong = false;
    for (i, u) in config.internal_users.iter().enumerate() {
        let m = if u.is_slow() {
            // argon2 costs milliseconds of CPU by design: not on a runtime thread.
            let (config, req) = (config.clone(), req.clone());
            tokio::task::spawn_blocking(move || config.internal_users[i].check(&req))
                .await
                .unwrap_or(Match::WrongCredentials)
        } else {
            u.check(req)
        };
        match m {
            Match::Yes(user) => return Ok(Grant::for_user(&user)),
            Match::WrongCredentials => wrong = true,
            Match::NotCovered => {}
        }
    }
    if !req.creds.presented() {
        Err(AuthError::CredentialsRequired)
    } else if wrong {
        Err(AuthError::WrongCredentials)
    } else {
        Err(AuthError::Denied(format!(
            "no user may {} {}from {}",
            req.action.as_str(),
            if req.action.on_path() {
                format!("'{}' ", req.path)
            } else {
                String::new()
            },
            req.creds.ip
        )))
    }
}

/// The JSON MediaMTX posts to `authHTTPAddress`.
fn http_body(req: &AuthRequest) -> Vec<u8> {
    let body = serde_json::json!({
        "ip": req.creds.ip.to_string(),
        "user": req.creds.user.clone().unwrap_or_default(),
        "password": req.creds.pass.clone().unwrap_or_default(),
        "token": req.creds.token.clone().unwrap_or_default(),
        "action": req.action.as_str(),
        "path": req.path,
        "protocol": req.protocol,
        "id": req.id,
        "query": req.query,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// One question to the HTTP auth server: Ok on 2xx.
async fn ask_http(config: &AuthConfig, body: Vec<u8>) -> Result<(), AuthError> {
    let answer = fetch::request(
        "POST",
        &config.http_address,
        body,
        &config.http_fingerprint,
        config.timeout,
    )
    .await
    .map_err(|e| {
        tracing::error!(
            "[auth] the HTTP auth server {} cannot be asked: {e}; refusing",
            config.http_address
        );
        AuthError::Unavailable(e)
    })?;
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&answer.body);
    let text: String = text.trim().chars().take(200).collect();
    Err(AuthError::Denied(if text.is_empty() {
        format!("the HTTP auth server answered {}", answer.status)
    } else {
        format!("the HTTP auth server answered {}: {text}", answer.status)
    }))
}

/// `authMethod: http`.
async fn http(config: &Arc<AuthConfig>, req: &AuthRequest) -> Result<Grant, AuthError> {
    let body = http_body(req);
    ask_http(config, body.clone()).await?;
    let mut grant = Grant::for_user(req.creds.user.as_deref().unwrap_or(""));
    if !config.http_recheck.is_zero() {
        let period = config.http_recheck;
        let config = config.clone();
        let check: tidegate_core::auth::Recheck = Arc::new(move || {
            let (config, body) = (config.clone(), body.clone());
            Box::pin(async move {
                match ask_http(&config, body).await {
                    Ok(()) => Ok(()),
                    // The server could not be asked: the session goes on (logged above).
                    Err(AuthError::Unavailable(_)) => Ok(()),
                    Err(e) => Err(format!("the HTTP auth server no longer allows it ({e})")),
                }
            })
        });
        grant.recheck = Some((period, check));
    }
    Ok(grant)
}

#[cfg(test)]
mod tests;
