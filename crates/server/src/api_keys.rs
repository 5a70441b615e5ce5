//! `/v3/keys/…`: stream keys through the API (and so through `tidegate keys`).
//!
//! - `GET /v3/keys/list[?path=]`: every key (never the secret), with uses, last use and state.
//! - `GET /v3/keys/get/{id}`.
//! - `POST /v3/keys/create` `{path, action?, label?, notBefore?, expires?, validFor?, maxUses?,
//!   ips?}` (times RFC 3339, `validFor` a duration such as `2h`): the record and `key`, shown
//!   this once.
//! - `POST /v3/keys/rotate/{id}` `{grace?}` (default `60s`): a new key with the same settings;
//!   the old one works for `grace` more, then is dead (and its sessions end).
//! - `POST /v3/keys/revoke/{id}`: dead at once; its sessions end within a second, here and on
//!   every process that shares the key store.

use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tidegate_auth::keys::{KeyRecord, KeyStore, NewKey};
use tidegate_auth::AccessError;

use crate::api::ApiState;

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"status": "error", "error": msg.into()})),
    )
        .into_response()
}

fn store(s: &ApiState) -> Option<&KeyStore> {
    s.auth.keys().map(|k| k.as_ref())
}

fn no_store() -> Response {
    err(StatusCode::NOT_FOUND, "no key store is configured")
}

fn key_err(e: AccessError) -> Response {
    match e {
        AccessError::Store(m) => err(StatusCode::INTERNAL_SERVER_ERROR, m),
        other => err(StatusCode::BAD_REQUEST, other.to_string()),
    }
}

fn with_secret(rec: &KeyRecord, key: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(rec).unwrap_or_default();
    v["key"] = serde_json::Value::String(key.to_string());
    v
}

/// `?path=` (only that path's keys) and MediaMTX's paging.
pub async fn list(
    State(s): State<ApiState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(store) = store(&s) else {
        return no_store();
    };
    let (page, per_page) = match crate::api::page_params(&q) {
        Ok(p) => p,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    match store.list(q.get("path").cloned()).await {
        Ok(items) => {
            let count = items.len();
            let items: Vec<_> = items
                .into_iter()
                .skip(page.saturating_mul(per_page))
                .take(per_page)
                .collect();
            Json(serde_json::json!({
                "itemCount": count,
                "pageCount": count.div_ceil(per_page),
                "items": items,
            }))
            .into_response()
        }
        Err(e) => key_err(e),
    }
}

pub async fn get(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(store) = store(&s) else {
        return no_store();
    };
    match store.get(id).await {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, "key not found"),
        Err(e) => key_err(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    path: String,
    action: Option<String>,
    #[serde(default)]
    label: String,
    not_before: Option<String>,
    expires: Option<String>,
    valid_for: Option<String>,
    max_uses: Option<u64>,
    #[serde(default)]
    ips: Vec<String>,
}

fn time(field: &str, v: &Option<String>) -> Result<Option<SystemTime>, String> {
    v.as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| format!("{field}: expected an RFC 3339 time: {e}"))
        })
        .transpose()
}

pub async fn create(State(s): State<ApiState>, body: Option<Json<CreateBody>>) -> Response {
    let Some(store) = store(&s) else {
        return no_store();
    };
    let Some(Json(b)) = body else {
        return err(
            StatusCode::BAD_REQUEST,
            "expected a JSON body with at least a path",
        );
    };
    let parsed = (|| -> Result<NewKey, String> {
        let action = match b.action.as_deref() {
            None => None,
            Some(a) => Some(
                tidegate_core::Action::parse(a)
                    .filter(|a| {
                        matches!(
                            a,
                            tidegate_core::Action::Publish | tidegate_core::Action::Read
                        )
                    })
                    .ok_or_else(|| format!("action: expected publish or read, found '{a}'"))?,
            ),
        };
        let mut expires = time("expires", &b.expires)?;
        if let Some(d) = &b.valid_for {
            let d = humantime::parse_duration(d).map_err(|e| format!("validFor: {e}"))?;
            expires = Some(SystemTime::now() + d);
        }
        let ips = b
            .ips
            .iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("ips: not an address or range: '{s}'"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tidegate_core::path::validate_path_name(&b.path).map_err(|e| format!("path: {e}"))?;
        Ok(NewKey {
            path: b.path.clone(),
            action,
            label: b.label.clone(),
            not_before: time("notBefore", &b.not_before)?,
            expires,
            max_uses: b.max_uses,
            ips,
        })
    })();
    let new = match parsed {
        Ok(n) => n,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    match store.create(new).await {
        Ok((rec, key)) => {
            tracing::info!("[API] stream key {} created for '{}'", rec.id, rec.path);
            Json(with_secret(&rec, &key)).into_response()
        }
        Err(e) => key_err(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    grace: Option<String>,
}

pub async fn rotate(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<RotateBody>>,
) -> Response {
    let Some(store) = store(&s) else {
        return no_store();
    };
    let grace = match body.and_then(|Json(b)| b.grace) {
        None => Duration::from_secs(60),
        Some(g) => match humantime::parse_duration(&g) {
            Ok(d) => d,
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("grace: {e}")),
        },
    };
    match store.rotate(id.clone(), grace).await {
        Ok(Some((rec, key))) => {
            tracing::info!(
                "[API] stream key {id} rotated to {}; the old one dies in {}",
                rec.id,
                humantime::format_duration(grace)
            );
            Json(with_secret(&rec, &key)).into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "key not found"),
        Err(e) => key_err(e),
    }
}

pub async fn revoke(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(store) = store(&s) else {
        return no_store();
    };
    match store.revoke(id.clone()).await {
        Ok(Some(rec)) => {
            s.auth.revoke_key(&id, "its stream key was revoked");
            tracing::info!("[API] stream key {id} revoked");
            Json(rec).into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "key not found"),
        Err(e) => key_err(e),
    }
}
