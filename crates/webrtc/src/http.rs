//! The HTTP side on `webrtcAddress`: WHIP (`POST /<path>/whip`) and WHEP (`POST /<path>/whep`)
//! with their session resources (`PATCH` trickle candidates, `DELETE`), `OPTIONS` with CORS and
//! ICE servers, and the built-in pages (`/<path>/publish`, `/<path>/`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use base64::Engine;
use tidegate_core::Credentials;

use crate::session::{self, Refused, Role};
use crate::Inner;

/// SDP offers and trickle fragments are small; anything bigger is refused unread.
const MAX_BODY: usize = 64 * 1024;

const PUBLISH_PAGE: &str = include_str!("publish.html");
const PLAY_PAGE: &str = include_str!("play.html");
const PAGE_SCRIPT: &str = include_str!("webrtc.js");

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new().fallback(handle).with_state(inner)
}

enum Target<'a> {
    Endpoint(&'a str, Role),
    Resource(&'a str, Role, &'a str),
    PublishPage,
    PlayPage,
    /// `webrtc.js`, what both pages share.
    PageScript,
    AddSlash,
}

fn role_of(s: &str) -> Option<Role> {
    match s {
        "whip" => Some(Role::Whip),
        "whep" => Some(Role::Whep),
        _ => None,
    }
}

fn parse_target(path: &str) -> Option<Target<'_>> {
    let p = path.strip_prefix('/')?;
    if let Some(name) = p.strip_suffix('/') {
        return (!name.is_empty()).then_some(Target::PlayPage);
    }
    let (head, last) = p.rsplit_once('/').unwrap_or(("", p));
    if let Some(role) = role_of(last) {
        return (!head.is_empty()).then_some(Target::Endpoint(head, role));
    }
    if last == "publish" && !head.is_empty() {
        return Some(Target::PublishPage);
    }
    if last == "webrtc.js" && !head.is_empty() {
        return Some(Target::PageScript);
    }
    if let Some((name, kind)) = head.rsplit_once('/') {
        if let Some(role) = role_of(kind) {
            return Some(Target::Resource(name, role, last));
        }
    }
    Some(Target::AddSlash)
}

fn credentials(headers: &HeaderMap, query: &str, remote: SocketAddr) -> Credentials {
    let mut user = None;
    let mut pass = None;
    let mut token = None;
    let mut bearer = false;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "user" => user = Some(tidegate_core::text::percent_decode(v, true)),
            "pass" => pass = Some(tidegate_core::text::percent_decode(v, true)),
            "token" | "jwt" => token = Some(tidegate_core::text::percent_decode(v, false)),
            _ => {}
        }
    }
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, value) = auth.split_once(' ').unwrap_or((auth, ""));
        let value = value.trim();
        let decoded = if scheme.eq_ignore_ascii_case("basic") {
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        } else if scheme.eq_ignore_ascii_case("bearer") {
            bearer = true;
            token = Some(value.to_string());
            Some(value.to_string())
        } else {
            None
        };
        if let Some(d) = decoded {
            // `user:pass`, or a bare token that stands for the password.
            match d.split_once(':') {
                Some((u, p)) => {
                    user = Some(u.to_string());
                    pass = Some(p.to_string());
                }
                None => {
                    user = None;
                    pass = Some(d);
                }
            }
        }
    }
    let mut creds = Credentials::new(user, pass, remote.ip());
    creds.token_from_query = token.is_some() && !bearer;
    creds.token = token;
    creds
}

fn cors(inner: &Inner, origin: Option<&str>, mut r: Response) -> Response {
    let h = r.headers_mut();
    let allow = tidegate_core::text::allowed_origin(&inner.config.allow_origins, origin);
    if let Some(v) = allow.and_then(|a| HeaderValue::from_str(a).ok()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("ETag, ID, Accept-Patch, Link, Location"),
    );
    r
}

fn ice_server_links(inner: &Inner, h: &mut HeaderMap) {
    for s in &inner.config.ice_servers {
        let mut v = format!("<{}>; rel=\"ice-server\"", s.url);
        if !s.username.is_empty() {
            v.push_str(&format!(
                "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                s.username, s.password
            ));
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.append(header::LINK, v);
        }
    }
}

fn json_error(status: u16, message: &str) -> Response {
    let body = serde_json::json!({ "status": "error", "error": message }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tidegate\""),
        );
    }
    r
}

fn page(text: &'static str, content_type: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn status(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = route(&inner, remote, method, &uri, &headers, body).await;
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    cors(&inner, origin, r)
}

async fn route(
    inner: &Arc<Inner>,
    remote: SocketAddr,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let query = uri.query().unwrap_or("");
    let Some(target) = parse_target(uri.path()) else {
        return json_error(404, "not found");
    };
    match (target, method) {
        (Target::Endpoint(..) | Target::Resource(..), Method::OPTIONS) => {
            let mut r = status(StatusCode::NO_CONTENT);
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("OPTIONS, GET, POST, PATCH, DELETE"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type, If-Match"),
            );
            h.insert("accept-post", HeaderValue::from_static("application/sdp"));
            ice_server_links(inner, h);
            r
        }
        (Target::Endpoint(path, role), Method::POST) => {
            let ctype = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ctype.starts_with("application/sdp") {
                return json_error(415, "the offer must be sent as application/sdp");
            }
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return json_error(413, "offer too large");
            };
            let Ok(offer) = std::str::from_utf8(&bytes) else {
                return json_error(400, "the offer is not UTF-8");
            };
            let req = session::Request {
                role,
                path,
                query,
                offer,
                creds: credentials(headers, query, remote),
                remote,
            };
            match session::create(inner, req).await {
                Ok(c) => {
                    let mut r = Response::new(Body::from(c.answer));
                    *r.status_mut() = StatusCode::CREATED;
                    let h = r.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/sdp"),
                    );
                    let kind = if role == Role::Whip { "whip" } else { "whep" };
                    if let Ok(v) = HeaderValue::from_str(&format!("/{path}/{kind}/{}", c.secret)) {
                        h.insert(header::LOCATION, v);
                    }
                    if let Ok(v) = HeaderValue::from_str(&c.secret) {
                        h.insert("id", v);
                    }
                    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", c.ufrag)) {
                        h.insert(header::ETAG, v);
                    }
                    h.insert(
                        "accept-patch",
                        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
                    );
                    ice_server_links(inner, h);
                    r
                }
                Err(Refused { status, message }) => {
                    tracing::info!(
                        "[WebRTC] {} from {remote} for '{path}' refused ({status}): {message}",
                        role.name()
                    );
                    json_error(status, &message)
                }
            }
        }
        (Target::Resource(path, role, secret), Method::PATCH) => {
            let found = inner
                .resources()
                .get(secret)
                .filter(|r| r.path == path && r.role == role)
                .map(|r| r.candidates.clone());
            let Some(tx) = found else {
                return json_error(404, "session not found");
            };
            let ctype = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ctype.starts_with("application/trickle-ice-sdpfrag") {
                return json_error(415, "expected application/trickle-ice-sdpfrag");
            }
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return json_error(413, "fragment too large");
            };
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines() {
                if let Some(c) = line.trim().strip_prefix("a=") {
                    if c.starts_with("candidate:") {
                        let _ = tx.try_send(c.to_string());
                    }
                }
            }
            status(StatusCode::NO_CONTENT)
        }
        (Target::Resource(path, role, secret), Method::DELETE) => {
            let found = inner
                .resources()
                .get(secret)
                .filter(|r| r.path == path && r.role == role)
                .map(|r| r.kick.clone());
            match found {
                Some(kick) => {
                    kick.cancel();
                    status(StatusCode::OK)
                }
                None => json_error(404, "session not found"),
            }
        }
        (Target::PublishPage, Method::GET) => page(PUBLISH_PAGE, "text/html; charset=utf-8"),
        (Target::PlayPage, Method::GET) => page(PLAY_PAGE, "text/html; charset=utf-8"),
        (Target::PageScript, Method::GET) => page(PAGE_SCRIPT, "text/javascript; charset=utf-8"),
        (Target::AddSlash, Method::GET) => {
            let mut r = status(StatusCode::MOVED_PERMANENTLY);
            let loc = match uri.query() {
                Some(q) => format!("{}/?{q}", uri.path()),
                None => format!("{}/", uri.path()),
            };
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        (Target::Endpoint(..) | Target::Resource(..), _) => json_error(405, "method not allowed"),
        _ => json_error(404, "not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(matches!(
            parse_target("/cam/1/whip"),
            Some(Target::Endpoint("cam/1", Role::Whip))
        ));
        assert!(matches!(
            parse_target("/cam/whep/abc"),
            Some(Target::Resource("cam", Role::Whep, "abc"))
        ));
        assert!(matches!(
            parse_target("/cam/publish"),
            Some(Target::PublishPage)
        ));
        assert!(matches!(parse_target("/cam/"), Some(Target::PlayPage)));
        assert!(matches!(
            parse_target("/cam/webrtc.js"),
            Some(Target::PageScript)
        ));
        assert!(matches!(parse_target("/cam"), Some(Target::AddSlash)));
        assert!(parse_target("/whip").is_none());
    }

    #[test]
    fn bearer_and_basic_credentials() {
        let remote: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        let c = credentials(&h, "", remote);
        assert_eq!(c.user.as_deref(), Some("user"));
        assert_eq!(c.pass.as_deref(), Some("pass"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        let c = credentials(&h, "", remote);
        assert_eq!((c.user, c.pass.as_deref()), (None, Some("tok")));
        let c = credentials(&HeaderMap::new(), "user=a&pass=b%20c", remote);
        assert_eq!(c.pass.as_deref(), Some("b c"));
    }
}
