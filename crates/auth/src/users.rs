//! `authInternalUsers`: users with a name (`any` for anyone), a password, allowed IP ranges,
//! and permissions (`{action, path}`, where `path` is empty for any path, `~regex`, or a name).

use ipnet::IpNet;
use regex::Regex;
use tidegate_core::{Action, AuthRequest};

use crate::secret::Secret;
use crate::AccessError;

/// One permission: an action, and for path actions which paths.
#[derive(Clone, Debug)]
pub struct Permission {
    pub action: Action,
    /// As written: empty (any path), `~regex`, or an exact name.
    pub path: String,
    regex: Option<Regex>,
}

impl PartialEq for Permission {
    fn eq(&self, other: &Self) -> bool {
        self.action == other.action && self.path == other.path
    }
}

impl Permission {
    /// A permission; a `~regex` path must compile.
    pub fn new(action: Action, path: &str) -> Result<Permission, AccessError> {
        let regex = match path.strip_prefix('~') {
            Some(re) => Some(
                Regex::new(re)
                    .map_err(|e| AccessError::Permission(format!("bad regular expression: {e}")))?,
            ),
            None => None,
        };
        Ok(Permission {
            action,
            path: path.to_string(),
            regex,
        })
    }

    /// `action` on any path.
    pub fn any_path(action: Action) -> Permission {
        Permission {
            action,
            path: String::new(),
            regex: None,
        }
    }

    /// Whether this permission covers `action` on `path` (path ignored for api, metrics and
    /// pprof, as in MediaMTX).
    pub fn covers(&self, action: Action, path: &str) -> bool {
        if self.action != action {
            return false;
        }
        if !action.on_path() || self.path.is_empty() {
            return true;
        }
        match &self.regex {
            Some(re) => re.is_match(path),
            None => self.path == path,
        }
    }
}

/// Whether any of `perms` covers the request.
pub fn covered(perms: &[Permission], req: &AuthRequest) -> bool {
    perms.iter().any(|p| p.covers(req.action, &req.path))
}

/// One entry of `authInternalUsers`.
#[derive(Clone, Debug, PartialEq)]
pub struct InternalUser {
    /// `any` (anyone, no password) or a name, plain or hashed.
    pub user: Secret,
    pub pass: Secret,
    /// Allowed client ranges; empty: any.
    pub ips: Vec<IpNet>,
    pub permissions: Vec<Permission>,
}

/// How a user matched, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// Allowed, as this user name (empty for `any`).
    Yes(String),
    /// This user covers the request but the credentials are not theirs.
    WrongCredentials,
    /// Not this user's to decide (IP or permission).
    NotCovered,
}

impl InternalUser {
    pub fn is_any(&self) -> bool {
        matches!(&self.user, Secret::Plain(u) if u == "any")
    }

    /// Checks the request against this user. Credentials are only looked at when the IP and
    /// the permissions fit.
    pub fn check(&self, req: &AuthRequest) -> Match {
        if !self.ips.is_empty() && !self.ips.iter().any(|n| n.contains(&req.creds.ip)) {
            return Match::NotCovered;
        }
        if !covered(&self.permissions, req) {
            return Match::NotCovered;
        }
        if self.is_any() {
            return Match::Yes(String::new());
        }
        let given_user = req.creds.user.as_deref().unwrap_or("");
        let ok = match (&req.creds.proof, self.user.plain(), self.pass.plain()) {
            // RTSP Digest: only plain credentials can be checked against it.
            (Some(proof), Some(u), Some(p)) => proof(u, p),
            (Some(_), _, _) => false,
            (None, _, _) => {
                let given_pass = req.creds.pass.as_deref().unwrap_or("");
                // Both checks run, so timing does not tell which failed.
                let u = self.user.check(given_user);
                let p = self.pass.check(given_pass);
                u && p
            }
        };
        if ok {
            Match::Yes(given_user.to_string())
        } else {
            Match::WrongCredentials
        }
    }

    /// Whether checking this user costs real CPU (argon2): such checks run off the runtime.
    pub fn is_slow(&self) -> bool {
        self.user.is_slow() || self.pass.is_slow()
    }
}

/// MediaMTX's default list: anyone publishes, reads and plays back; api, metrics and pprof
/// from localhost only.
pub fn default_users() -> Vec<InternalUser> {
    let any = || Secret::Plain("any".into());
    let perm = Permission::any_path;
    vec![
        InternalUser {
            user: any(),
            pass: Secret::Plain(String::new()),
            ips: Vec::new(),
            permissions: vec![
                perm(Action::Publish),
                perm(Action::Read),
                perm(Action::Playback),
            ],
        },
        InternalUser {
            user: any(),
            pass: Secret::Plain(String::new()),
            ips: localhost(),
            permissions: vec![
                perm(Action::Api),
                perm(Action::Metrics),
                perm(Action::Pprof),
            ],
        },
    ]
}

/// 127.0.0.1/32 and ::1/128.
pub fn localhost() -> Vec<IpNet> {
    vec![
        IpNet::from(std::net::IpAddr::from([127, 0, 0, 1])),
        IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegate_core::Credentials;

    fn req(
        action: Action,
        path: &str,
        user: Option<&str>,
        pass: Option<&str>,
        ip: &str,
    ) -> AuthRequest {
        AuthRequest::new(
            action,
            path,
            "rtmp",
            Credentials::new(
                user.map(str::to_string),
                pass.map(str::to_string),
                ip.parse().unwrap(),
            ),
        )
    }

    #[test]
    fn permissions_match_action_and_path() {
        let any = Permission::new(Action::Read, "").unwrap();
        let exact = Permission::new(Action::Publish, "cam1").unwrap();
        let re = Permission::new(Action::Publish, "~^cams/(\\d+)$").unwrap();
        let api = Permission::new(Action::Api, "ignored").unwrap();
        assert!(any.covers(Action::Read, "x/y"));
        assert!(!any.covers(Action::Publish, "x"));
        assert!(exact.covers(Action::Publish, "cam1") && !exact.covers(Action::Publish, "cam10"));
        assert!(re.covers(Action::Publish, "cams/12") && !re.covers(Action::Publish, "cams/x"));
        assert!(api.covers(Action::Api, ""));
        assert!(Permission::new(Action::Read, "~(").is_err());
    }

    #[test]
    fn defaults_let_anyone_stream_and_only_localhost_administer() {
        let users = default_users();
        let first = |r: &AuthRequest| {
            users
                .iter()
                .map(|u| u.check(r))
                .find(|m| *m != Match::NotCovered)
        };
        assert_eq!(
            first(&req(Action::Publish, "a", None, None, "203.0.113.9")),
            Some(Match::Yes(String::new()))
        );
        assert_eq!(
            first(&req(Action::Api, "", None, None, "127.0.0.1")),
            Some(Match::Yes(String::new()))
        );
        assert_eq!(
            first(&req(Action::Api, "", None, None, "::1")),
            Some(Match::Yes(String::new()))
        );
        assert_eq!(
            first(&req(Action::Metrics, "", None, None, "10.0.0.1")),
            None
        );
    }

    #[test]
    fn named_users_need_their_password_from_their_ranges() {
        let u = InternalUser {
            user: Secret::parse("alice").unwrap(),
            pass: Secret::parse("sha256:K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=").unwrap(),
            ips: vec!["10.0.0.0/8".parse().unwrap()],
            permissions: vec![Permission::new(Action::Publish, "~^live/").unwrap()],
        };
        assert_eq!(
            u.check(&req(
                Action::Publish,
                "live/a",
                Some("alice"),
                Some("secret"),
                "10.1.2.3"
            )),
            Match::Yes("alice".into())
        );
        assert_eq!(
            u.check(&req(
                Action::Publish,
                "live/a",
                Some("alice"),
                Some("nope"),
                "10.1.2.3"
            )),
            Match::WrongCredentials
        );
        assert_eq!(
            u.check(&req(
                Action::Publish,
                "live/a",
                Some("alice"),
                Some("secret"),
                "11.0.0.1"
            )),
            Match::NotCovered
        );
        assert_eq!(
            u.check(&req(
                Action::Read,
                "live/a",
                Some("alice"),
                Some("secret"),
                "10.0.0.1"
            )),
            Match::NotCovered
        );
    }
}
