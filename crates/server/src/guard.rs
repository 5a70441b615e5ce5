//! The permission an HTTP surface needs (`api`, `metrics`): every request to it is asked of
//! the auth manager, with Basic credentials, a Bearer token or `?token=`/`?jwt=`, and the
//! client's address. No credentials where some are needed: 401 with a Basic challenge.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use tidegate_core::{Action, AuthError, AuthRequest, CoreError, Credentials, PathManager};

#[derive(Clone)]
pub struct Guard {
    pub paths: PathManager,
    pub action: Action,
    /// What the logs and the HTTP auth server call this surface.
    pub protocol: &'static str,
}

/// Credentials of an HTTP request: Basic, Bearer, or `token`/`jwt` in the query.
pub fn credentials(req: &Request, remote: SocketAddr) -> Credentials {
    let mut creds = Credentials::new(None, None, remote.ip());
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, value) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                creds.user = Some(u.to_string());
                creds.pass = Some(p.to_string());
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            creds.token = Some(value.trim().to_string());
        }
    }
    if creds.token.is_none() {
        let query = req.uri().query().unwrap_or("");
        for pair in query.split('&') {
            if let Some(("token" | "jwt", v)) = pair.split_once('=') {
                creds.token = Some(tidegate_core::text::percent_decode(v, false));
                creds.token_from_query = true;
            }
        }
    }
    creds
}

pub async fn require(
    State(guard): State<Guard>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let creds = credentials(&req, remote);
    // Playback asks for a path: the one in `?path=`.
    let path = if guard.action == Action::Playback {
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix("path="))
            .map(|v| tidegate_core::text::percent_decode(v, true))
            .unwrap_or_default()
    } else {
        String::new()
    };
    let ask = AuthRequest::new(guard.action, &path, guard.protocol, creds)
        .with_query(req.uri().query().unwrap_or(""));
    match guard.paths.authorize(&ask).await {
        Ok(_) => next.run(req).await,
        Err(CoreError::Auth(e)) => refused(&e),
        Err(e) => {
            let mut r = Response::new(Body::from(format!("{e}\n")));
            *r.status_mut() = match e {
                CoreError::NotConfigured(_) | CoreError::InvalidName(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::FORBIDDEN,
            };
            r
        }
    }
}

fn refused(e: &AuthError) -> Response {
    let status = match e {
        AuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    let body = serde_json::json!({ "status": "error", "error": e.to_string() });
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tidegate\""),
        );
    }
    r
}
