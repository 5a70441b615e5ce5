//! Stream keys: per path, with a validity window, a label, optional use limit and IP ranges;
//! rotation (a new key; the old one valid for a grace period) and revocation (immediate: the
//! sessions it opened end). A key is shown once, at creation, and stored only as its SHA-256
//! (keys are 128 random bits: a fast hash cannot be guessed back).
//!
//! The store is an embedded SQLite file (rusqlite, bundled build) by default: every Tidegate
//! process that opens the same file sees the same keys, and a key survives restarts. SQLite
//! calls run on tokio's blocking pool, never on a runtime thread. For a fleet on several
//! machines the store is PostgreSQL (`postgres://…`, tokio-postgres): every node sees the same
//! keys, and a revocation on one ends the session on another (each node's poller looks at the
//! keys its live sessions hold).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::AccessError;
use ipnet::IpNet;
use rusqlite::{params, Connection, OptionalExtension};
use tidegate_core::Action;

/// What a key looks like: `tgk_` and 32 hex digits.
pub const PREFIX: &str = "tgk_";

/// One key, as stored (never the secret).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub id: String,
    pub path: String,
    /// `publish` or `read`.
    pub action: String,
    pub label: String,
    #[serde(serialize_with = "ser_time")]
    pub not_before: Option<SystemTime>,
    #[serde(serialize_with = "ser_time")]
    pub expires: Option<SystemTime>,
    pub max_uses: Option<u64>,
    pub uses: u64,
    pub ips: Vec<String>,
    #[serde(serialize_with = "ser_time")]
    pub created: Option<SystemTime>,
    #[serde(serialize_with = "ser_time")]
    pub revoked: Option<SystemTime>,
    /// The key this one was rotated to.
    pub rotated_to: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub last_used: Option<SystemTime>,
    pub last_used_ip: Option<String>,
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
        None => s.serialize_none(),
    }
}

/// What a new key is for.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub path: String,
    pub action: Option<Action>,
    pub label: String,
    pub not_before: Option<SystemTime>,
    pub expires: Option<SystemTime>,
    pub max_uses: Option<u64>,
    pub ips: Vec<IpNet>,
}

/// The state of a key that a live session depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    Valid { expires: Option<SystemTime> },
    Revoked,
    Gone,
}

pub struct KeyStore {
    backend: Backend,
    /// The file, or the PostgreSQL URL with its password hidden.
    pub location: String,
}

enum Backend {
    /// Opened on first use: a server where nobody uses keys never creates the file.
    Sqlite {
        db: Arc<Mutex<Option<Connection>>>,
        file: PathBuf,
    },
    /// Connected on first use, and again after the connection is lost.
    Postgres {
        url: String,
        client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    },
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_ms(v: Option<i64>) -> Option<SystemTime> {
    v.map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn hash(secret: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a credential looks like one of our keys (so it is checked as a key, not a password).
pub fn looks_like_key(s: &str) -> bool {
    s.len() == PREFIX.len() + 32
        && s.starts_with(PREFIX)
        && s[PREFIX.len()..].chars().all(|c| c.is_ascii_hexdigit())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_keys (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    action TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL UNIQUE,
    not_before INTEGER,
    expires INTEGER,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    ips TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,
    revoked INTEGER,
    rotated_to TEXT,
    last_used INTEGER,
    last_used_ip TEXT
);
CREATE INDEX IF NOT EXISTS stream_keys_path ON stream_keys(path);
";

const COLUMNS: &str =
    "id, path, action, label, not_before, expires, max_uses, uses, ips, created, \
                       revoked, rotated_to, last_used, last_used_ip";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let ips: String = r.get(8)?;
    Ok(KeyRecord {
        id: r.get(0)?,
        path: r.get(1)?,
        action: r.get(2)?,
        label: r.get(3)?,
        not_before: from_ms(r.get(4)?),
        expires: from_ms(r.get(5)?),
        max_uses: r.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
        uses: r.get::<_, i64>(7)?.max(0) as u64,
        ips: ips
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created: from_ms(Some(r.get(9)?)),
        revoked: from_ms(r.get(10)?),
        rotated_to: r.get(11)?,
        last_used: from_ms(r.get(12)?),
        last_used_ip: r.get(13)?,
    })
}

impl KeyStore {
    /// A store in the SQLite file at `location` (created, with its directory, on first use),
    /// or in PostgreSQL when `location` is a `postgres://` URL.
    pub fn open(location: &str) -> Result<KeyStore, AccessError> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            location
                .parse::<tokio_postgres::Config>()
                .map_err(|e| AccessError::Store(format!("bad PostgreSQL URL: {e}")))?;
            return Ok(KeyStore {
                backend: Backend::Postgres {
                    url: location.to_string(),
                    client: tokio::sync::Mutex::new(None),
                },
                location: hide_password(location),
            });
        }
        let file = location.strip_prefix("sqlite:").unwrap_or(location);
        let file = file.strip_prefix("//").unwrap_or(file);
        if file.is_empty() {
            return Err(AccessError::Store(
                "expected a SQLite file or a postgres:// URL".into(),
            ));
        }
        Ok(KeyStore {
            backend: Backend::Sqlite {
                db: Arc::new(Mutex::new(None)),
                file: PathBuf::from(file),
            },
            location: file.to_string(),
        })
    }

    fn connect(location: &std::path::Path) -> Result<Connection, AccessError> {
        let at =
            |e: &dyn std::fmt::Display| AccessError::Store(format!("{}: {e}", location.display()));
        if let Some(dir) = location.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| at(&e))?;
        }
        let db = Connection::open(location).map_err(|e| at(&e))?;
        // Several processes may share the file: wait for a writer instead of failing.
        db.busy_timeout(Duration::from_secs(5))
            .and_then(|_| db.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|_| db.execute_batch(SCHEMA))
            .map_err(|e| at(&e))?;
        Ok(db)
    }

    /// Runs `f` on the SQLite connection (opened if need be), on the blocking pool.
    async fn with<T: Send + 'static>(
        db: &Arc<Mutex<Option<Connection>>>,
        file: &std::path::Path,
        f: impl FnOnce(&mut Connection) -> Result<T, AccessError> + Send + 'static,
    ) -> Result<T, AccessError> {
        let db = db.clone();
        let location = file.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut guard = db.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Some(Self::connect(&location)?);
            }
            match guard.as_mut() {
                Some(c) => f(c),
                None => Err(AccessError::Store("not open".into())),
            }
        })
        .await
        .map_err(|e| AccessError::Store(e.to_string()))?
    }

    /// Creates a key; returns its record and the key itself (shown this once).
    pub async fn create(&self, new: NewKey) -> Result<(KeyRecord, String), AccessError> {
        let (row, secret) = new_row(&new)?;
        match &self.backend {
            Backend::Sqlite { db, file } => Self::with(db, file, move |c| {
                sqlite_insert(c, &row)?;
                sqlite_get(c, &row.id)?
                    .ok_or_else(|| AccessError::Store("the new key vanished".into()))
            })
            .await
            .map(|r| (r, secret)),
            Backend::Postgres { url, client } => {
                let mut g = pg(client, url).await?;
                let c = pg_client(&mut g)?;
                pg_insert(c, &row).await?;
                let rec = pg_get(c, &row.id)
                    .await?
                    .ok_or_else(|| AccessError::Store("the new key vanished".into()))?;
                Ok((rec, secret))
            }
        }
    }

    pub async fn list(&self, path: Option<String>) -> Result<Vec<KeyRecord>, AccessError> {
        match &self.backend {
            Backend::Sqlite { db, file } => {
                Self::with(db, file, move |c| {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM stream_keys WHERE ?1 IS NULL OR path = ?1 ORDER BY created"
                    );
                    let mut st = c.prepare(&sql).map_err(store)?;
                    let rows = st.query_map(params![path], record).map_err(store)?;
                    rows.collect::<Result<Vec<_>, _>>().map_err(store)
                })
                .await
            }
            Backend::Postgres { url, client } => {
                let mut g = pg(client, url).await?;
                let c = pg_client(&mut g)?;
                let sql = format!(
                    "SELECT {COLUMNS} FROM stream_keys WHERE $1::TEXT IS NULL OR path = $1 ORDER BY created"
                );
                let rows = c.query(&sql, &[&path]).await.map_err(pg_err)?;
                rows.iter().map(pg_record).collect()
            }
        }
    }

    pub async fn get(&self, id: String) -> Result<Option<KeyRecord>, AccessError> {
        match &self.backend {
            Backend::Sqlite { db, file } => Self::with(db, file, move |c| sqlite_get(c, &id)).await,
            Backend::Postgres { url, client } => {
                let mut g = pg(client, url).await?;
                pg_get(pg_client(&mut g)?, &id).await
            }
        }
    }

    /// Revokes a key at once. Returns its record, or None if there is no such key.
    pub async fn revoke(&self, id: String) -> Result<Option<KeyRecord>, AccessError> {
        let now = ms(SystemTime::now());
        match &self.backend {
            Backend::Sqlite { db, file } => {
                Self::with(db, file, move |c| {
                    c.execute(
                        "UPDATE stream_keys SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                        params![id, now],
                    )
                    .map_err(store)?;
                    sqlite_get(c, &id)
                })
                .await
            }
            Backend::Postgres { url, client } => {
                let mut g = pg(client, url).await?;
                let c = pg_client(&mut g)?;
                c.execute(
                    "UPDATE stream_keys SET revoked = $2 WHERE id = $1 AND revoked IS NULL",
                    &[&id, &now],
                )
                .await
                .map_err(pg_err)?;
                pg_get(c, &id).await
            }
        }
    }

    /// Issues a new key with the old one's settings; the old one stays valid for `grace`
    /// (at most until its own expiry), then is dead. Returns the new record and key.
    pub async fn rotate(
        &self,
        id: String,
        grace: Duration,
    ) -> Result<Option<(KeyRecord, String)>, AccessError> {
        let until = SystemTime::now() + grace;
        match &self.backend {
            Backend::Sqlite { db, file } => {
                Self::with(db, file, move |c| {
                    let tx = c.transaction().map_err(store)?;
                    let Some(old) = sqlite_get(&tx, &id)? else {
                        return Ok(None);
                    };
                    let (row, secret, until) = successor(&old, until)?;
                    sqlite_insert(&tx, &row)?;
                    tx.execute(
                        "UPDATE stream_keys SET expires = ?2, rotated_to = ?3 WHERE id = ?1",
                        params![id, until, row.id],
                    )
                    .map_err(store)?;
                    let rec = sqlite_get(&tx, &row.id)?
                        .ok_or_else(|| AccessError::Store("the new key vanished".into()))?;
                    tx.commit().map_err(store)?;
                    Ok(Some((rec, secret)))
                })
                .await
            }
            Backend::Postgres { url, client } => {
                let mut g = pg(client, url).await?;
                let c = pg_client(&mut g)?;
                let tx = c.transaction().await.map_err(pg_err)?;
                let Some(old) = pg_get(&tx, &id).await? else {
                    return Ok(None);
                };
                let (row, secret, until) = successor(&old, until)?;
                pg_insert(&tx, &row).await?;
                tx.execute(
                    "UPDATE stream_keys SET expires = $2, rotated_to = $3 WHERE id = $1",
                    &[&id, &until, &row.id],
                )
                .await
                .map_err(pg_err)?;
                let rec = pg_get(&tx, &row.id)
                    .await?
                    .ok_or_else(|| AccessError::Store("the new key vanished".into()))?;
                tx.commit().await.map_err(pg_err)?;
                Ok(Some((rec, secret)))
            }
        }
    }

    /// Checks `secret` for `action` on `path` from `ip`; counts the use. The error says why
    /// it is refused.
    pub async fn check(
        &self,
        secret: String,
        path: String,
        action: Action,
        ip: IpAddr,
    ) -> Result<KeyRecord, AccessError> {
        let now = SystemTime::now();
        let h = hash(&secret);
        match &self.backend {
            Backend::Sqlite { db, file } => {
                Self::with(db, file, move |c| {
                    let sql = format!("SELECT {COLUMNS} FROM stream_keys WHERE hash = ?1");
                    let rec = c
                        .query_row(&sql, params![h], record)
                        .optional()
                        .map_err(store)?
                        .ok_or(AccessError::Unknown)?;
                    validate(&rec, &path, action, ip, now)?;
                    c.execute(
                        "UPDATE stream_keys SET uses = uses + 1, last_used = ?2, last_used_ip = ?3 WHERE id = ?1",
                        params![rec.id, ms(now), ip.to_string()],
                    )
                    .map_err(store)?;
                    Ok(rec)
                })
                .await
            }
            Backend::Postgres { url, client } => {
                let mut g = pg(client, url).await?;
                let c = pg_client(&mut g)?;
                let sql = format!("SELECT {COLUMNS} FROM stream_keys WHERE hash = $1");
                let row = c.query_opt(&sql, &[&h]).await.map_err(pg_err)?;
                let rec = pg_record(&row.ok_or(AccessError::Unknown)?)?;
                validate(&rec, &path, action, ip, now)?;
                c.execute(
                    "UPDATE stream_keys SET uses = uses + 1, last_used = $2, last_used_ip = $3 WHERE id = $1",
                    &[&rec.id, &ms(now), &ip.to_string()],
                )
                .await
                .map_err(pg_err)?;
                Ok(rec)
            }
        }
    }

    /// The states of keys live sessions depend on.
    pub async fn states(&self, ids: Vec<String>) -> Result<Vec<(String, KeyState)>, AccessError> {
        let rows: Vec<(String, Option<i64>, Option<i64>)> = match &self.backend {
            Backend::Sqlite { db, file } => {
                Self::with(db, file, move |c| {
                    let mut st = c
                        .prepare("SELECT revoked, expires FROM stream_keys WHERE id = ?1")
                        .map_err(store)?;
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        let row = st
                            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                            .map_err(store)?;
                        match row {
                            Some((revoked, expires)) => out.push((id, revoked, expires)),
                            None => out.push((id, None, Some(-1))),
                        }
                    }
                    Ok(out)
                })
                .await?
            }
            Backend::Postgres { url, client } => {
                let mut g = pg(client, url).await?;
                let c = pg_client(&mut g)?;
                let found = c
                    .query(
                        "SELECT id, revoked, expires FROM stream_keys WHERE id = ANY($1)",
                        &[&ids],
                    )
                    .await
                    .map_err(pg_err)?;
                ids.iter()
                    .map(|id| {
                        found
                            .iter()
                            .find(|r| r.try_get::<_, String>(0).is_ok_and(|v| &v == id))
                            .map_or(Ok((id.clone(), None, Some(-1))), |r| {
                                Ok((
                                    id.clone(),
                                    r.try_get(1).map_err(pg_err)?,
                                    r.try_get(2).map_err(pg_err)?,
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, AccessError>>()?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(id, revoked, expires)| {
                let state = match (revoked, expires) {
                    (_, Some(-1)) => KeyState::Gone,
                    (Some(_), _) => KeyState::Revoked,
                    (None, e) => KeyState::Valid {
                        expires: from_ms(e),
                    },
                };
                (id, state)
            })
            .collect())
    }
}

/// A new key's row: its fields and hash, and the key itself.
struct Row {
    id: String,
    path: String,
    action: &'static str,
    label: String,
    hash: String,
    not_before: Option<i64>,
    expires: Option<i64>,
    max_uses: Option<i64>,
    ips: String,
    created: i64,
}

fn new_row(new: &NewKey) -> Result<(Row, String), AccessError> {
    if new.path.is_empty() {
        return Err(AccessError::Invalid("a key needs a path".into()));
    }
    let action = new.action.unwrap_or(Action::Publish);
    if !matches!(action, Action::Publish | Action::Read) {
        return Err(AccessError::Invalid("a key is for publish or read".into()));
    }
    let secret = format!("{PREFIX}{}", tidegate_core::text::secret_hex(32));
    let ips: Vec<String> = new.ips.iter().map(ToString::to_string).collect();
    Ok((
        Row {
            id: tidegate_core::text::secret_hex(16),
            path: new.path.clone(),
            action: action.as_str(),
            label: new.label.clone(),
            hash: hash(&secret),
            not_before: new.not_before.map(ms),
            expires: new.expires.map(ms),
            max_uses: new.max_uses.map(|m| m as i64),
            ips: ips.join(","),
            created: ms(SystemTime::now()),
        },
        secret,
    ))
}

/// The key that replaces `old` (same settings), and when `old` dies: `until`, or its own
/// expiry if sooner.
fn successor(old: &KeyRecord, until: SystemTime) -> Result<(Row, String, i64), AccessError> {
    if old.revoked.is_some() {
        return Err(AccessError::Revoked);
    }
    let (row, secret) = new_row(&NewKey {
        path: old.path.clone(),
        action: Action::parse(&old.action),
        label: old.label.clone(),
        not_before: None,
        expires: old.expires,
        max_uses: old.max_uses,
        ips: old.ips.iter().filter_map(|s| s.parse().ok()).collect(),
    })?;
    let until = match old.expires {
        Some(e) if e < until => e,
        _ => until,
    };
    Ok((row, secret, ms(until)))
}

/// Whether `rec` lets `action` on `path` from `ip` at `now`.
fn validate(
    rec: &KeyRecord,
    path: &str,
    action: Action,
    ip: IpAddr,
    now: SystemTime,
) -> Result<(), AccessError> {
    if rec.path != path || rec.action != action.as_str() {
        return Err(AccessError::OtherPath);
    }
    if rec.revoked.is_some() {
        return Err(AccessError::Revoked);
    }
    if rec.not_before.is_some_and(|t| now < t) {
        return Err(AccessError::NotYet);
    }
    if rec.expires.is_some_and(|t| now >= t) {
        return Err(AccessError::Expired);
    }
    if rec.max_uses.is_some_and(|m| rec.uses >= m) {
        return Err(AccessError::UsedUp);
    }
    let nets: Vec<IpNet> = rec.ips.iter().filter_map(|s| s.parse().ok()).collect();
    if !nets.is_empty() && !nets.iter().any(|n| n.contains(&ip)) {
        return Err(AccessError::Address(ip));
    }
    Ok(())
}

fn hide_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_keys (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    action TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL UNIQUE,
    not_before BIGINT,
    expires BIGINT,
    max_uses BIGINT,
    uses BIGINT NOT NULL DEFAULT 0,
    ips TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL,
    revoked BIGINT,
    rotated_to TEXT,
    last_used BIGINT,
    last_used_ip TEXT
);
CREATE INDEX IF NOT EXISTS stream_keys_path ON stream_keys(path);
";

/// The PostgreSQL client, connected (and the schema made) if it is not.
async fn pg<'a>(
    slot: &'a tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    url: &str,
) -> Result<tokio::sync::MutexGuard<'a, Option<tokio_postgres::Client>>, AccessError> {
    let mut g = slot.lock().await;
    if g.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(url, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| AccessError::Store("PostgreSQL did not answer within 10 s".into()))?
        .map_err(pg_err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!("[auth] PostgreSQL key store connection lost: {e}");
            }
        });
        client.batch_execute(PG_SCHEMA).await.map_err(pg_err)?;
        *g = Some(client);
    }
    Ok(g)
}

fn pg_client<'a>(
    g: &'a mut tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>,
) -> Result<&'a mut tokio_postgres::Client, AccessError> {
    g.as_mut()
        .ok_or_else(|| AccessError::Store("PostgreSQL is not connected".into()))
}

fn pg_err(e: tokio_postgres::Error) -> AccessError {
    AccessError::Store(format!("PostgreSQL: {e}"))
}

fn pg_record(r: &tokio_postgres::Row) -> Result<KeyRecord, AccessError> {
    let ips: String = r.try_get(8).map_err(pg_err)?;
    Ok(KeyRecord {
        id: r.try_get(0).map_err(pg_err)?,
        path: r.try_get(1).map_err(pg_err)?,
        action: r.try_get(2).map_err(pg_err)?,
        label: r.try_get(3).map_err(pg_err)?,
        not_before: from_ms(r.try_get(4).map_err(pg_err)?),
        expires: from_ms(r.try_get(5).map_err(pg_err)?),
        max_uses: r
            .try_get::<_, Option<i64>>(6)
            .map_err(pg_err)?
            .map(|v| v.max(0) as u64),
        uses: r.try_get::<_, i64>(7).map_err(pg_err)?.max(0) as u64,
        ips: ips
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created: from_ms(Some(r.try_get(9).map_err(pg_err)?)),
        revoked: from_ms(r.try_get(10).map_err(pg_err)?),
        rotated_to: r.try_get(11).map_err(pg_err)?,
        last_used: from_ms(r.try_get(12).map_err(pg_err)?),
        last_used_ip: r.try_get(13).map_err(pg_err)?,
    })
}

async fn pg_get<C: tokio_postgres::GenericClient>(
    c: &C,
    id: &str,
) -> Result<Option<KeyRecord>, AccessError> {
    let sql = format!("SELECT {COLUMNS} FROM stream_keys WHERE id = $1");
    match c.query_opt(&sql, &[&id]).await.map_err(pg_err)? {
        Some(r) => pg_record(&r).map(Some),
        None => Ok(None),
    }
}

async fn pg_insert<C: tokio_postgres::GenericClient>(c: &C, r: &Row) -> Result<(), AccessError> {
    c.execute(
        "INSERT INTO stream_keys (id, path, action, label, hash, not_before, expires, max_uses, ips, created)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &r.id,
            &r.path,
            &r.action,
            &r.label,
            &r.hash,
            &r.not_before,
            &r.expires,
            &r.max_uses,
            &r.ips,
            &r.created,
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

fn store(e: rusqlite::Error) -> AccessError {
    AccessError::Store(e.to_string())
}

fn sqlite_get(c: &Connection, id: &str) -> Result<Option<KeyRecord>, AccessError> {
    let sql = format!("SELECT {COLUMNS} FROM stream_keys WHERE id = ?1");
    c.query_row(&sql, params![id], record)
        .optional()
        .map_err(store)
}

fn sqlite_insert(c: &Connection, r: &Row) -> Result<(), AccessError> {
    c.execute(
        "INSERT INTO stream_keys (id, path, action, label, hash, not_before, expires, max_uses, ips, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            r.id,
            r.path,
            r.action,
            r.label,
            r.hash,
            r.not_before,
            r.expires,
            r.max_uses,
            r.ips,
            r.created
        ],
    )
    .map_err(store)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[tokio::test]
    async fn create_check_rotate_revoke_and_reopen() {
        let dir = std::env::temp_dir().join(format!("tidegate-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("keys.db");
        let store = KeyStore::open(file.to_str().unwrap()).unwrap();
        let (rec, key) = store
            .create(NewKey {
                path: "live".into(),
                label: "Sunday service".into(),
                max_uses: Some(3),
                ..NewKey::default()
            })
            .await
            .unwrap();
        assert!(looks_like_key(&key), "{key}");
        assert_eq!(rec.action, "publish");
        let check =
            |k: &str, p: &str, a: Action| store.check(k.to_string(), p.to_string(), a, ip());
        assert_eq!(
            check(&key, "live", Action::Publish).await.unwrap().id,
            rec.id
        );
        assert_eq!(
            check(&key, "other", Action::Publish).await,
            Err(AccessError::OtherPath)
        );
        assert_eq!(
            check(&key, "live", Action::Read).await,
            Err(AccessError::OtherPath)
        );
        assert_eq!(
            check(
                "tgk_00000000000000000000000000000000",
                "live",
                Action::Publish
            )
            .await,
            Err(AccessError::Unknown)
        );
        // The store never holds the key itself.
        let raw = std::fs::read(&file).unwrap();
        assert!(!raw.windows(key.len()).any(|w| w == key.as_bytes()));

        // Rotation: the old key works within the grace period, the new one too.
        let (new_rec, new_key) = store
            .rotate(rec.id.clone(), Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        assert!(check(&key, "live", Action::Publish).await.is_ok());
        assert!(check(&new_key, "live", Action::Publish).await.is_ok());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            check(&key, "live", Action::Publish).await,
            Err(AccessError::Expired)
        );
        assert_eq!(
            store.get(rec.id.clone()).await.unwrap().unwrap().rotated_to,
            Some(new_rec.id.clone())
        );

        // Use limit.
        assert!(check(&new_key, "live", Action::Publish).await.is_ok());
        assert!(check(&new_key, "live", Action::Publish).await.is_ok());
        assert_eq!(
            check(&new_key, "live", Action::Publish).await,
            Err(AccessError::UsedUp)
        );
        let r = store.get(new_rec.id.clone()).await.unwrap().unwrap();
        assert_eq!(r.uses, 3);
        assert_eq!(r.last_used_ip.as_deref(), Some("127.0.0.1"));

        // Revocation, seen by a second handle on the same file (another process would too).
        let (rec3, key3) = store
            .create(NewKey {
                path: "live".into(),
                ips: vec!["10.0.0.0/8".parse().unwrap()],
                ..NewKey::default()
            })
            .await
            .unwrap();
        assert_eq!(
            check(&key3, "live", Action::Publish).await,
            Err(AccessError::Address(ip()))
        );
        let other = KeyStore::open(file.to_str().unwrap()).unwrap();
        other.revoke(rec3.id.clone()).await.unwrap();
        assert_eq!(
            store.states(vec![rec3.id.clone()]).await.unwrap()[0].1,
            KeyState::Revoked
        );
        drop(store);
        let reopened = KeyStore::open(file.to_str().unwrap()).unwrap();
        assert_eq!(reopened.list(Some("live".into())).await.unwrap().len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
