//! The config API, MediaMTX's `/v3/config/…` endpoints, on the reload engine: a change is
//! made to the configuration document, the whole result is validated and applied as a reload
//! would apply a new file (only what changed is touched), then written back to the
//! configuration file atomically, so that a restart keeps it.
//!
//! **Comments:** the file is patched, not rewritten: the lines of the keys the change touches
//! are replaced (a changed map, such as one path's settings, is patched key by key), new keys
//! are added at the end of their map, removed ones are cut; every other line (comments,
//! blank lines, quoting) stays as the user wrote it. The patched text must parse back to the
//! new document; where it would not (or a value came from the environment), the document is
//! re-rendered whole, without comments. The file as it was before the API's first change is
//! kept beside it as `<file>.orig`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value as Json_};

use crate::config::yaml::{self, Entry, Node, Value};
use crate::config::{
    DEFAULT_CONFIG, DEPRECATED_PATH_KEYS, GLOBAL_KEYS, PATH_KEYS, RPI_CAMERA_KEYS,
};
use crate::reload::Reloader;

pub fn router(reloader: Arc<Reloader>) -> Router {
    Router::new()
        .route("/v3/config/global/get", get(global_get))
        .route("/v3/config/global/patch", patch(global_patch))
        .route("/v3/config/pathdefaults/get", get(defaults_get))
        .route("/v3/config/pathdefaults/patch", patch(defaults_patch))
        .route("/v3/config/paths/list", get(paths_list))
        .route("/v3/config/paths/get/{*name}", get(paths_get))
        .route("/v3/config/paths/add/{*name}", post(paths_add))
        .route("/v3/config/paths/patch/{*name}", patch(paths_patch))
        .route("/v3/config/paths/replace/{*name}", post(paths_replace))
        .route("/v3/config/paths/delete/{*name}", delete(paths_delete))
        .with_state(reloader)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "status": "error", "error": msg.into() })),
    )
        .into_response()
}

fn entries(node: Option<&Node>) -> Vec<Entry> {
    match node.map(|n| &n.value) {
        Some(Value::Map(m)) => m.clone(),
        _ => Vec::new(),
    }
}

fn find<'a>(m: &'a [Entry], key: &str) -> Option<&'a Node> {
    m.iter().find(|e| e.key == key).map(|e| &e.value)
}

fn set(m: &mut Vec<Entry>, key: &str, value: Node) {
    match m.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value,
        None => m.push(Entry {
            key: key.to_string(),
            line: 0,
            value,
        }),
    }
}

/// A key of a change: `null` takes it out (back to its default), anything else sets it.
fn put(m: &mut Vec<Entry>, key: &str, v: &Json_) {
    if v.is_null() {
        m.retain(|e| e.key != key);
    } else {
        set(m, key, to_node(v));
    }
}

fn map_node(m: Vec<Entry>) -> Node {
    Node {
        value: Value::Map(m),
        line: 0,
    }
}

/// The embedded defaults and the user's document (its top-level entries).
fn documents(r: &Reloader) -> (Vec<Entry>, Vec<Entry>) {
    let defaults = entries(yaml::parse(DEFAULT_CONFIG).ok().flatten().as_ref());
    let text = r.text();
    let user = entries(
        text.as_deref()
            .and_then(|t| yaml::parse(t).ok().flatten())
            .as_ref(),
    );
    (defaults, user)
}

/// A value as JSON, typed like the default it replaces (`yes` is a boolean where the default
/// is one, a string elsewhere).
fn to_json(node: &Node, like: Option<&Node>) -> Json_ {
    match &node.value {
        Value::Scalar(s, plain) => {
            let bool_like = |n: &Node| matches!(&n.value, Value::Scalar(d, true) if matches!(d.to_ascii_lowercase().as_str(), "yes" | "no" | "true" | "false"));
            let num_like =
                |n: &Node| matches!(&n.value, Value::Scalar(d, true) if d.parse::<f64>().is_ok());
            match like {
                Some(d) if bool_like(d) => match s.to_ascii_lowercase().as_str() {
                    "yes" | "true" | "on" => Json_::Bool(true),
                    "no" | "false" | "off" => Json_::Bool(false),
                    _ => Json_::String(s.clone()),
                },
                Some(d) if num_like(d) => s
                    .parse::<i64>()
                    .map(Json_::from)
                    .or_else(|_| s.parse::<f64>().map(Json_::from))
                    .unwrap_or_else(|_| Json_::String(s.clone())),
                None if *plain && matches!(s.as_str(), "yes" | "true") => Json_::Bool(true),
                None if *plain && matches!(s.as_str(), "no" | "false") => Json_::Bool(false),
                _ if node.is_null() => match like {
                    Some(d) if matches!(d.value, Value::Seq(_)) => json!([]),
                    _ => Json_::String(String::new()),
                },
                _ => Json_::String(s.clone()),
            }
        }
        Value::Seq(items) => {
            let like = like.and_then(|d| match &d.value {
                Value::Seq(v) => v.first(),
                _ => None,
            });
            Json_::Array(items.iter().map(|i| to_json(i, like)).collect())
        }
        Value::Map(m) => Json_::Object(
            m.iter()
                .map(|e| (e.key.clone(), to_json(&e.value, None)))
                .collect(),
        ),
    }
}

/// A JSON value as a document node.
fn to_node(v: &Json_) -> Node {
    let value = match v {
        Json_::Null => Value::Scalar(String::new(), true),
        Json_::Bool(b) => Value::Scalar(if *b { "yes" } else { "no" }.into(), true),
        Json_::Number(n) => Value::Scalar(n.to_string(), true),
        Json_::String(s) => Value::Scalar(s.clone(), false),
        Json_::Array(a) => Value::Seq(a.iter().map(to_node).collect()),
        Json_::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    line: 0,
                    value: to_node(v),
                })
                .collect(),
        ),
    };
    Node { value, line: 0 }
}

fn plain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:+-@=,".contains(c))
}

/// Words YAML (1.1, as the config reads them) would take for something else than a string.
fn ambiguous(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "yes" | "no" | "true" | "false" | "on" | "off" | "y" | "n" | "null" | "~"
    ) || s.parse::<f64>().is_ok()
}

fn scalar_text(s: &str, plain: bool) -> String {
    if plain && (s.is_empty() || plain_ok(s) || matches!(s, "~" | "null")) {
        s.to_string()
    } else if !plain && plain_ok(s) && !ambiguous(s) {
        // A string that reads back as the same string without quotes.
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
    }
}

fn key_text(k: &str) -> String {
    if plain_ok(k) {
        k.to_string()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

/// The document as YAML text.
/// `old` (the file's text) changed into `new` with its comments and layout kept: None where
/// that cannot be done safely (the caller then renders the document whole).
pub fn patch_text(old: &str, new: &[Entry]) -> Option<String> {
    let parsed = entries(yaml::parse(old).ok().flatten().as_ref());
    let lines: Vec<&str> = old.lines().collect();
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    patch_map(&parsed, new, &lines, 0, lines.len(), &mut edits)?;
    // Apply from the end so that earlier positions stay valid.
    edits.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    for (start, end, text) in edits {
        let replacement: Vec<String> = text.lines().map(str::to_string).collect();
        out.splice(start..end, replacement);
    }
    let mut text = out.join("\n");
    text.push('\n');
    // Safety: the patched text must say exactly the new document.
    let back = entries(yaml::parse(&text).ok().flatten().as_ref());
    let same_doc = back.len() == new.len()
        && new
            .iter()
            .all(|e| find(&back, &e.key).is_some_and(|b| crate::reload::same(b, &e.value)));
    same_doc.then_some(text)
}

/// The indentation of line `i` (0-based).
fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Whether a line says nothing (blank or a comment).
fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Edits (0-based `[start, end)` line ranges and their new text) that turn the map `old`,
/// whose block is lines `[start, end)`, into `new`.
fn patch_map(
    old: &[Entry],
    new: &[Entry],
    lines: &[&str],
    start: usize,
    end: usize,
    edits: &mut Vec<(usize, usize, String)>,
) -> Option<()> {
    // Each old entry's lines: from its key to the next key, less trailing comments and
    // blank lines (they belong to what follows).
    let mut spans = Vec::with_capacity(old.len());
    for (i, e) in old.iter().enumerate() {
        if e.line == 0 || e.line > lines.len() {
            return None; // from the environment, not the file
        }
        let s = e.line - 1;
        let mut t = old.get(i + 1).map_or(end, |n| n.line.saturating_sub(1));
        if t <= s || t > end {
            return None;
        }
        while t > s + 1 && is_filler(lines[t - 1]) {
            t -= 1;
        }
        spans.push((s, t));
    }
    let indent = old.first().map_or(0, |e| indent_of(lines[e.line - 1]));
    for (e, &(s, t)) in old.iter().zip(&spans) {
        match find(new, &e.key) {
            None => edits.push((s, t, String::new())),
            Some(v) if crate::reload::same(&e.value, v) => {}
            Some(v) => {
                // A map written in block style is patched inside; anything else is replaced.
                let block_map = matches!(&e.value.value, Value::Map(m) if !m.is_empty())
                    && matches!(&v.value, Value::Map(m) if !m.is_empty())
                    && e.value.line != e.line;
                if let (true, Value::Map(om), Value::Map(nm)) =
                    (block_map, &e.value.value, &v.value)
                {
                    patch_map(om, nm, lines, s + 1, t, edits)?;
                } else {
                    let mut text = String::new();
                    render_map(
                        &[Entry {
                            key: e.key.clone(),
                            line: 0,
                            value: v.clone(),
                        }],
                        indent,
                        &mut text,
                    );
                    edits.push((s, t, text));
                }
            }
        }
    }
    // New keys go after the last entry of the map.
    let added: Vec<Entry> = new
        .iter()
        .filter(|e| find(old, &e.key).is_none())
        .cloned()
        .collect();
    if !added.is_empty() {
        let at = spans.last().map_or(end, |&(_, t)| t);
        if old.is_empty() && start > 0 {
            return None; // an empty map has no block to add to
        }
        let mut text = String::new();
        render_map(&added, indent, &mut text);
        edits.push((at, at, text));
    }
    Some(())
}

pub fn render(m: &[Entry]) -> String {
    let mut out = String::new();
    render_map(m, 0, &mut out);
    out
}

fn render_map(m: &[Entry], indent: usize, out: &mut String) {
    for e in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key_text(&e.key));
        out.push(':');
        render_value(&e.value, indent, out);
    }
}

fn render_value(v: &Node, indent: usize, out: &mut String) {
    match &v.value {
        Value::Scalar(s, plain) => {
            let t = scalar_text(s, *plain);
            if !t.is_empty() {
                out.push(' ');
                out.push_str(&t);
            }
            out.push('\n');
        }
        Value::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Value::Map(m) if m.is_empty() => out.push_str(" {}\n"),
        Value::Seq(items) => {
            out.push('\n');
            for i in items {
                match &i.value {
                    Value::Map(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        render_map(m, indent + 4, &mut inner);
                        let first = format!("{}- ", " ".repeat(indent + 2));
                        out.push_str(&first);
                        out.push_str(&inner[indent + 4..]);
                    }
                    _ => {
                        out.push_str(&" ".repeat(indent + 2));
                        out.push('-');
                        render_value(i, indent + 2, out);
                    }
                }
            }
        }
        Value::Map(m) => {
            out.push('\n');
            render_map(m, indent + 2, out);
        }
    }
}

/// Applies `user` (the new document) as a reload, then writes it back.
async fn commit(r: &Reloader, user: Vec<Entry>) -> Response {
    let text = r
        .text()
        .and_then(|old| patch_text(&old, &user))
        .unwrap_or_else(|| render(&user));
    match r.apply_text(text).await {
        Ok(()) => crate::api::ok(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

fn check_keys(o: &Map<String, Json_>, keys: &[&str], what: &str) -> Result<(), Box<Response>> {
    for (k, v) in o {
        if !keys.contains(&k.as_str()) {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("{what}: unknown key '{k}'"),
            )));
        }
        if inner_null(v) {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("{what}: {k}: null is allowed only as a key's whole value (its default)"),
            )));
        }
    }
    Ok(())
}

/// Refuses a value whose JSON type is not the one the key has (the type of its default, as
/// the GET endpoints give it): `"7"` for a number, `[false]` for a list of strings. Keys
/// without a default (older spellings) are checked by their setters alone.
fn check_types(
    o: &Map<String, Json_>,
    defaults: &[Entry],
    what: &str,
) -> Result<(), Box<Response>> {
    for (k, v) in o {
        let Some(d) = find(defaults, k) else { continue };
        if k == "forward" {
            continue; // URLs or objects, both
        }
        let mut like = to_json(d, Some(d));
        if like.as_array().is_some_and(|l| l.is_empty()) {
            // An empty default says nothing of its items: these lists hold objects, the rest
            // strings (addresses, hosts, origins).
            const OF_OBJECTS: &[&str] = &[
                "authHTTPExclude",
                "authJWTExclude",
                "webhooks",
                "webrtcICEServers2",
                "alwaysAvailableTracks",
            ];
            like = if OF_OBJECTS.contains(&k.as_str()) {
                json!([{}])
            } else {
                json!([""])
            };
        }
        if v.is_null() || same_type(v, &like) {
            continue;
        }
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("{what}: {k}: expected {}", json_type(&like)),
        )));
    }
    Ok(())
}

fn same_type(v: &Json_, like: &Json_) -> bool {
    match (v, like) {
        (Json_::String(_), Json_::String(_))
        | (Json_::Bool(_), Json_::Bool(_))
        | (Json_::Number(_), Json_::Number(_))
        | (Json_::Object(_), Json_::Object(_)) => true,
        (Json_::Array(items), Json_::Array(l)) => match l.first() {
            Some(first) => items.iter().all(|i| same_type(i, first)),
            None => true,
        },
        _ => false,
    }
}

fn json_type(v: &Json_) -> &'static str {
    match v {
        Json_::String(_) => "a string",
        Json_::Bool(_) => "a boolean",
        Json_::Number(_) => "a number",
        Json_::Object(_) => "an object",
        Json_::Array(l) => match l.first() {
            Some(Json_::String(_)) => "a list of strings",
            Some(Json_::Bool(_)) => "a list of booleans",
            Some(Json_::Number(_)) => "a list of numbers",
            Some(Json_::Object(_)) => "a list of objects",
            _ => "a list",
        },
        Json_::Null => "null",
    }
}

/// Whether a value holds `null` inside a list or an object (a key's whole value may be null:
/// that resets it; inside a value it means nothing).
fn inner_null(v: &Json_) -> bool {
    match v {
        Json_::Array(a) => a.iter().any(|e| e.is_null() || inner_null(e)),
        Json_::Object(o) => o.values().any(|e| e.is_null() || inner_null(e)),
        _ => false,
    }
}

fn global_keys() -> Vec<&'static str> {
    GLOBAL_KEYS.iter().map(|(k, _)| *k).collect()
}

/// Keys a patch may set: the current names, older spellings and the `rpiCamera…` keys.
fn patchable_path_keys() -> Vec<&'static str> {
    PATH_KEYS
        .iter()
        .map(|(k, _)| *k)
        .chain(RPI_CAMERA_KEYS.iter().copied())
        .collect()
}

fn path_keys() -> Vec<&'static str> {
    PATH_KEYS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !DEPRECATED_PATH_KEYS.iter().any(|(o, _)| o == k))
        .collect()
}

async fn global_get(State(r): State<Arc<Reloader>>) -> Json<Json_> {
    let (defaults, user) = documents(&r);
    let mut o = Map::new();
    for k in global_keys() {
        let d = find(&defaults, k);
        if let Some(v) = find(&user, k).or(d) {
            o.insert(k.to_string(), to_json(v, d));
        }
    }
    Json(Json_::Object(o))
}

async fn global_patch(State(r): State<Arc<Reloader>>, Json(body): Json<Json_>) -> Response {
    let Some(o) = body.as_object() else {
        return error(StatusCode::BAD_REQUEST, "expected a JSON object");
    };
    if let Err(e) = check_keys(o, &global_keys(), "global") {
        return *e;
    }
    let _one = r.api_lock().await;
    let (defaults, mut user) = documents(&r);
    if let Err(e) = check_types(o, &defaults, "global") {
        return *e;
    }
    for (k, v) in o {
        put(&mut user, k, v);
    }
    commit(&r, user).await
}

/// The effective value of each path key: the path's own, else `pathDefaults`' (the user's,
/// else the embedded one).
fn effective_path(own: &[Entry], defaults: &[Entry], user: &[Entry]) -> Map<String, Json_> {
    let dd = entries(find(defaults, "pathDefaults"));
    let ud = entries(find(user, "pathDefaults"));
    let mut o = Map::new();
    for k in path_keys() {
        let d = find(&dd, k);
        if let Some(v) = find(own, k).or(find(&ud, k)).or(d) {
            o.insert(k.to_string(), to_json(v, d));
        }
    }
    o
}

async fn defaults_get(State(r): State<Arc<Reloader>>) -> Json<Json_> {
    let (defaults, user) = documents(&r);
    Json(Json_::Object(effective_path(&[], &defaults, &user)))
}

async fn defaults_patch(State(r): State<Arc<Reloader>>, Json(body): Json<Json_>) -> Response {
    let Some(o) = body.as_object() else {
        return error(StatusCode::BAD_REQUEST, "expected a JSON object");
    };
    if let Err(e) = check_keys(o, &patchable_path_keys(), "pathDefaults") {
        return *e;
    }
    let _one = r.api_lock().await;
    let (defaults, mut user) = documents(&r);
    if let Err(e) = check_types(o, &entries(find(&defaults, "pathDefaults")), "pathDefaults") {
        return *e;
    }
    let mut pd = entries(find(&user, "pathDefaults"));
    for (k, v) in o {
        put(&mut pd, k, v);
    }
    set(&mut user, "pathDefaults", map_node(pd));
    commit(&r, user).await
}

/// The configured paths, in file order: the user's, else the embedded defaults'.
fn path_entries(defaults: &[Entry], user: &[Entry]) -> Vec<Entry> {
    match find(user, "paths") {
        Some(_) => entries(find(user, "paths")),
        None => entries(find(defaults, "paths")),
    }
}

fn path_json(e: &Entry, defaults: &[Entry], user: &[Entry]) -> Json_ {
    let mut o = Map::new();
    o.insert("name".into(), Json_::String(e.key.clone()));
    o.extend(effective_path(&entries(Some(&e.value)), defaults, user));
    Json_::Object(o)
}

async fn paths_list(
    State(r): State<Arc<Reloader>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (defaults, user) = documents(&r);
    let items: Vec<Json_> = path_entries(&defaults, &user)
        .iter()
        .map(|e| path_json(e, &defaults, &user))
        .collect();
    let (page, per_page) = match crate::api::page_params(&q) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let item_count = items.len();
    let items: Vec<Json_> = items
        .into_iter()
        .skip(page.saturating_mul(per_page))
        .take(per_page)
        .collect();
    Json(json!({
        "itemCount": item_count,
        "pageCount": item_count.div_ceil(per_page),
        "items": items,
    }))
    .into_response()
}

async fn paths_get(State(r): State<Arc<Reloader>>, Path(name): Path<String>) -> Response {
    let (defaults, user) = documents(&r);
    match path_entries(&defaults, &user)
        .iter()
        .find(|e| e.key == name)
    {
        Some(e) => Json(path_json(e, &defaults, &user)).into_response(),
        None => error(StatusCode::NOT_FOUND, "path configuration not found"),
    }
}

/// The body of an add, patch or replace, without `name` (the URL has it).
fn path_body(body: &Json_) -> Result<Map<String, Json_>, Box<Response>> {
    let Some(o) = body.as_object() else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object",
        )));
    };
    let mut o = o.clone();
    o.remove("name");
    check_keys(&o, &patchable_path_keys(), "path")?;
    Ok(o)
}

enum Op {
    Add,
    Patch,
    Replace,
    Delete,
}

async fn path_op(r: &Reloader, name: String, body: Option<Json_>, op: Op) -> Response {
    let fields = match body.as_ref().map(path_body) {
        Some(Err(e)) => return *e,
        Some(Ok(o)) => o,
        None => Map::new(),
    };
    let _one = r.api_lock().await;
    let (defaults, mut user) = documents(r);
    if let Err(e) = check_types(&fields, &entries(find(&defaults, "pathDefaults")), "path") {
        return *e;
    }
    let mut list = path_entries(&defaults, &user);
    let at = list.iter().position(|e| e.key == name);
    match (op, at) {
        (Op::Add, Some(_)) => {
            return error(StatusCode::BAD_REQUEST, "path configuration already exists")
        }
        (Op::Add, None) => {
            let m: Vec<Entry> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    line: 0,
                    value: to_node(v),
                })
                .collect();
            list.push(Entry {
                key: name,
                line: 0,
                value: map_node(m),
            });
        }
        (_, None) => return error(StatusCode::NOT_FOUND, "path configuration not found"),
        (Op::Patch, Some(i)) => {
            let mut m = entries(Some(&list[i].value));
            for (k, v) in &fields {
                put(&mut m, k, v);
            }
            list[i].value = map_node(m);
        }
        (Op::Replace, Some(i)) => {
            let kept: Map<String, Json_> =
                fields.into_iter().filter(|(_, v)| !v.is_null()).collect();
            list[i].value = to_node(&Json_::Object(kept));
        }
        (Op::Delete, Some(i)) => {
            list.remove(i);
        }
    }
    set(&mut user, "paths", map_node(list));
    commit(r, user).await
}

async fn paths_add(
    State(r): State<Arc<Reloader>>,
    Path(name): Path<String>,
    Json(body): Json<Json_>,
) -> Response {
    path_op(&r, name, Some(body), Op::Add).await
}

async fn paths_patch(
    State(r): State<Arc<Reloader>>,
    Path(name): Path<String>,
    Json(body): Json<Json_>,
) -> Response {
    path_op(&r, name, Some(body), Op::Patch).await
}

async fn paths_replace(
    State(r): State<Arc<Reloader>>,
    Path(name): Path<String>,
    Json(body): Json<Json_>,
) -> Response {
    path_op(&r, name, Some(body), Op::Replace).await
}

async fn paths_delete(State(r): State<Arc<Reloader>>, Path(name): Path<String>) -> Response {
    path_op(&r, name, None, Op::Delete).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patched_file_keeps_its_comments() {
        let old = "# my server\n\
                   logLevel: info # chatty enough\n\
                   \n\
                   # the cameras\n\
                   paths:\n\
                   \x20 # front door\n\
                   \x20 door:\n\
                   \x20   source: rtsp://10.0.0.5/s # old camera\n\
                   \x20   sourceOnDemand: yes\n\
                   \x20 # back yard\n\
                   \x20 yard:\n\
                   \x20   source: rtsp://10.0.0.6/s\n\
                   \x20 gone:\n\
                   \x20   source: publisher\n";
        let mut doc = entries(yaml::parse(old).unwrap().as_ref());
        set(
            &mut doc,
            "logLevel",
            Node {
                value: Value::Scalar("debug".into(), true),
                line: 0,
            },
        );
        let Some(Entry {
            value: Node {
                value: Value::Map(paths),
                ..
            },
            ..
        }) = doc.iter_mut().find(|e| e.key == "paths")
        else {
            panic!("paths")
        };
        let Some(Entry {
            value: Node {
                value: Value::Map(door),
                ..
            },
            ..
        }) = paths.iter_mut().find(|e| e.key == "door")
        else {
            panic!("door")
        };
        set(
            door,
            "source",
            Node {
                value: Value::Scalar("rtsp://10.0.0.9/s".into(), true),
                line: 0,
            },
        );
        paths.retain(|e| e.key != "gone");
        paths.push(Entry {
            key: "new".into(),
            line: 0,
            value: map_node(vec![Entry {
                key: "source".into(),
                line: 0,
                value: Node {
                    value: Value::Scalar("publisher".into(), true),
                    line: 0,
                },
            }]),
        });
        let text = patch_text(old, &doc).expect("patched");
        for kept in [
            "# my server",
            "# the cameras",
            "  # front door",
            "  # back yard",
            "    sourceOnDemand: yes",
        ] {
            assert!(text.lines().any(|l| l == kept), "{kept:?} lost:\n{text}");
        }
        assert!(text.contains("logLevel: debug\n"), "{text}");
        assert!(text.contains("    source: rtsp://10.0.0.9/s\n"), "{text}");
        assert!(!text.contains("gone"), "{text}");
        assert!(text.contains("  new:\n    source: publisher\n"), "{text}");
        let back = entries(yaml::parse(&text).unwrap().as_ref());
        assert_eq!(render(&back), render(&doc));
    }

    #[test]
    fn a_rendered_document_parses_back_the_same() {
        let text = "logLevel: info\nrtmp: yes\nwebrtcICEServers2:\n  - url: stun:x\n    username: \"a b\"\n  - url: turn:y\nauthInternalUsers:\n  - user: any\n    ips: []\n    permissions:\n      - action: publish\n        path:\npaths:\n  cam:\n    source: rtsp://10.0.0.1:554/s\n  \"~^(.+)$\":\n  all_others:\n";
        let doc = entries(yaml::parse(text).unwrap().as_ref());
        let again = render(&doc);
        let back = entries(yaml::parse(&again).unwrap().as_ref());
        assert_eq!(render(&back), again, "{again}");
        assert_eq!(back.len(), doc.len());
        assert!(again.contains("\"~^(.+)$\":"), "{again}");
    }

    #[test]
    fn values_are_typed_like_their_defaults() {
        let n = |s: &str, plain| Node {
            value: Value::Scalar(s.into(), plain),
            line: 0,
        };
        assert_eq!(to_json(&n("no", true), Some(&n("yes", true))), json!(false));
        assert_eq!(to_json(&n("7", true), Some(&n("3", true))), json!(7));
        assert_eq!(
            to_json(&n("yes", false), Some(&n("x", false))),
            json!("yes")
        );
        assert_eq!(to_json(&n("10s", true), Some(&n("5s", true))), json!("10s"));
        assert_eq!(
            to_node(&json!(true)).value,
            Value::Scalar("yes".into(), true)
        );
    }
}
