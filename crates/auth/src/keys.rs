//! Stream keys: per path, with a validity window, a label, optional use limit and IP ranges;
//! rotation (a new key; the old one valid for a grace period) and revocation (immediate: the
//! sessions it opened end). A key is shown once, at creation, and stored only as its SHA-256
//! (keys are 128 random bits: a fast hash cannot be guessed back).
//!
//! The store is an embedded SQLite file (rusqlite, bundled build): every Tidegate process that
//! opens the same file sees the same keys, and a key survives restarts. Calls run on tokio's
//! blocking pool, never on a runtime thread.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
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

/// Why a key is not accepted (said to the client and the log; never the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unknown stream key")]
    Unknown,
    #[error("the stream key is for another path or action")]
    OtherPath,
    #[error("the stream key was revoked")]
    Revoked,
    #[error("the stream key is not valid yet")]
    NotYet,
    #[error("the stream key has expired")]
    Expired,
    #[error("the stream key has been used its maximum number of times")]
    UsedUp,
    #[error("the stream key may not be used from {0}")]
    Address(IpAddr),
    #[error("key store: {0}")]
    Store(String),
    #[error("{0}")]
    Invalid(String),
}

/// The state of a key that a live session depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    Valid { expires: Option<SystemTime> },
    Revoked,
    Gone,
}

pub struct KeyStore {
    /// Opened on first use: a server where nobody uses keys never creates the file.
    db: Arc<Mutex<Option<Connection>>>,
    pub location: PathBuf,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_ms(v: Option<i64>) -> Option<SystemTime> {
    v.map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
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
    /// A store in the SQLite file at `location`, created (with its directory) on first use.
    pub fn open(location: PathBuf) -> Result<KeyStore, String> {
        Ok(KeyStore {
            db: Arc::new(Mutex::new(None)),
            location,
        })
    }

    fn connect(location: &std::path::Path) -> Result<Connection, KeyError> {
        let at =
            |e: &dyn std::fmt::Display| KeyError::Store(format!("{}: {e}", location.display()));
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

    /// Runs `f` on the connection (opened if need be), on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, KeyError> + Send + 'static,
    ) -> Result<T, KeyError> {
        let db = self.db.clone();
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = db.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Some(Self::connect(&location)?);
            }
            match guard.as_mut() {
                Some(c) => f(c),
                None => Err(KeyError::Store("not open".into())),
            }
        })
        .await
        .map_err(|e| KeyError::Store(e.to_string()))?
    }

    /// Creates a key; returns its record and the key itself (shown this once).
    pub async fn create(&self, new: NewKey) -> Result<(KeyRecord, String), KeyError> {
        self.with(move |c| insert(c, &new, None)).await
    }

    pub async fn list(&self, path: Option<String>) -> Result<Vec<KeyRecord>, KeyError> {
        self.with(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM stream_keys WHERE ?1 IS NULL OR path = ?1 ORDER BY created"
            );
            let mut st = c.prepare(&sql).map_err(store)?;
            let rows = st.query_map(params![path], record).map_err(store)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(store)
        })
        .await
    }

    pub async fn get(&self, id: String) -> Result<Option<KeyRecord>, KeyError> {
        self.with(move |c| get(c, &id)).await
    }

    /// Revokes a key at once. Returns its record, or None if there is no such key.
    pub async fn revoke(&self, id: String) -> Result<Option<KeyRecord>, KeyError> {
        self.with(move |c| {
            c.execute(
                "UPDATE stream_keys SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                params![id, ms(SystemTime::now())],
            )
            .map_err(store)?;
            get(c, &id)
        })
        .await
    }

    /// Issues a new key with the old one's settings; the old one stays valid for `grace`
    /// (at most until its own expiry), then is dead. Returns the new record and key.
    pub async fn rotate(
        &self,
        id: String,
        grace: Duration,
    ) -> Result<Option<(KeyRecord, String)>, KeyError> {
        self.with(move |c| {
            let tx = c.transaction().map_err(store)?;
            let Some(old) = get(&tx, &id)? else {
                return Ok(None);
            };
            if old.revoked.is_some() {
                return Err(KeyError::Revoked);
            }
            let new = NewKey {
                path: old.path.clone(),
                action: Action::parse(&old.action),
                label: old.label.clone(),
                not_before: None,
                expires: old.expires,
                max_uses: old.max_uses,
                ips: old.ips.iter().filter_map(|s| s.parse().ok()).collect(),
            };
            let (rec, secret) = insert(&tx, &new, None)?;
            let until = SystemTime::now() + grace;
            let until = match old.expires {
                Some(e) if e < until => e,
                _ => until,
            };
            tx.execute(
                "UPDATE stream_keys SET expires = ?2, rotated_to = ?3 WHERE id = ?1",
                params![id, ms(until), rec.id],
            )
            .map_err(store)?;
            tx.commit().map_err(store)?;
            Ok(Some((rec, secret)))
        })
        .await
    }

    /// Checks `secret` for `action` on `path` from `ip`; counts the use. The error says why
    /// it is refused.
    pub async fn check(
        &self,
        secret: String,
        path: String,
        action: Action,
        ip: IpAddr,
    ) -> Result<KeyRecord, KeyError> {
        self.with(move |c| {
            let now = SystemTime::now();
            let sql = format!("SELECT {COLUMNS} FROM stream_keys WHERE hash = ?1");
            let rec = c
                .query_row(&sql, params![hash(&secret)], record)
                .optional()
                .map_err(store)?
                .ok_or(KeyError::Unknown)?;
            if rec.path != path || rec.action != action.as_str() {
                return Err(KeyError::OtherPath);
            }
            if rec.revoked.is_some() {
                return Err(KeyError::Revoked);
            }
            if rec.not_before.is_some_and(|t| now < t) {
                return Err(KeyError::NotYet);
            }
            if rec.expires.is_some_and(|t| now >= t) {
                return Err(KeyError::Expired);
            }
            if rec.max_uses.is_some_and(|m| rec.uses >= m) {
                return Err(KeyError::UsedUp);
            }
            let nets: Vec<IpNet> = rec.ips.iter().filter_map(|s| s.parse().ok()).collect();
            if !nets.is_empty() && !nets.iter().any(|n| n.contains(&ip)) {
                return Err(KeyError::Address(ip));
            }
            c.execute(
                "UPDATE stream_keys SET uses = uses + 1, last_used = ?2, last_used_ip = ?3 WHERE id = ?1",
                params![rec.id, ms(now), ip.to_string()],
            )
            .map_err(store)?;
            Ok(rec)
        })
        .await
    }

    /// The states of keys live sessions depend on.
    pub async fn states(&self, ids: Vec<String>) -> Result<Vec<(String, KeyState)>, KeyError> {
        self.with(move |c| {
            let mut st = c
                .prepare("SELECT revoked, expires FROM stream_keys WHERE id = ?1")
                .map_err(store)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row = st
                    .query_row(params![id], |r| {
                        Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
                    })
                    .optional()
                    .map_err(store)?;
                let state = match row {
                    None => KeyState::Gone,
                    Some((Some(_), _)) => KeyState::Revoked,
                    Some((None, e)) => KeyState::Valid {
                        expires: from_ms(e),
                    },
                };
                out.push((id, state));
            }
            Ok(out)
        })
        .await
    }
}

fn store(e: rusqlite::Error) -> KeyError {
    KeyError::Store(e.to_string())
}

fn get(c: &Connection, id: &str) -> Result<Option<KeyRecord>, KeyError> {
    let sql = format!("SELECT {COLUMNS} FROM stream_keys WHERE id = ?1");
    c.query_row(&sql, params![id], record)
        .optional()
        .map_err(store)
}

fn insert(
    c: &Connection,
    new: &NewKey,
    id: Option<String>,
) -> Result<(KeyRecord, String), KeyError> {
    if new.path.is_empty() {
        return Err(KeyError::Invalid("a key needs a path".into()));
    }
    let action = new.action.unwrap_or(Action::Publish);
    if !matches!(action, Action::Publish | Action::Read) {
        return Err(KeyError::Invalid(
            "a key is for publish or read".to_string(),
        ));
    }
    let id = id.unwrap_or_else(|| tidegate_core::text::secret_hex(16));
    let secret = format!("{PREFIX}{}", tidegate_core::text::secret_hex(32));
    let ips: Vec<String> = new.ips.iter().map(ToString::to_string).collect();
    c.execute(
        "INSERT INTO stream_keys (id, path, action, label, hash, not_before, expires, max_uses, ips, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            id,
            new.path,
            action.as_str(),
            new.label,
            hash(&secret),
            new.not_before.map(ms),
            new.expires.map(ms),
            new.max_uses.map(|m| m as i64),
            ips.join(","),
            ms(SystemTime::now()),
        ],
    )
    .map_err(store)?;
    let rec = get(c, &id)?.ok_or_else(|| KeyError::Store("the new key vanished".into()))?;
    Ok((rec, secret))
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
        let store = KeyStore::open(file.clone()).unwrap();
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
            Err(KeyError::OtherPath)
        );
        assert_eq!(
            check(&key, "live", Action::Read).await,
            Err(KeyError::OtherPath)
        );
        assert_eq!(
            check(
                "tgk_00000000000000000000000000000000",
                "live",
                Action::Publish
            )
            .await,
            Err(KeyError::Unknown)
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
            Err(KeyError::Expired)
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
            Err(KeyError::UsedUp)
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
            Err(KeyError::Address(ip()))
        );
        let other = KeyStore::open(file.clone()).unwrap();
        other.revoke(rec3.id.clone()).await.unwrap();
        assert_eq!(
            store.states(vec![rec3.id.clone()]).await.unwrap()[0].1,
            KeyState::Revoked
        );
        drop(store);
        let reopened = KeyStore::open(file).unwrap();
        assert_eq!(reopened.list(Some("live".into())).await.unwrap().len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
