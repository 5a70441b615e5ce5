//! Who may publish or read a path: the path's users and IP ranges. One place for every
//! protocol, so that RTMP, RTSP, SRT, WebRTC and HLS apply the same rules.

use std::net::IpAddr;

use crate::path::PathConf;

/// What a client wants to do with a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Publish,
    Read,
}

/// What a client presented.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: Option<String>,
    pub pass: Option<String>,
    pub ip: IpAddr,
}

/// Why a client was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("IP {0} is not allowed to {1}")]
    IpNotAllowed(IpAddr, &'static str),
    #[error("credentials are required")]
    CredentialsRequired,
    #[error("wrong user or password")]
    WrongCredentials,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Read => "read",
        }
    }
}

/// Constant-time comparison, so that a password cannot be guessed byte by byte from timing.
fn same(a: &str, b: &str) -> bool {
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
    /// Whether these credentials allow `action` on this path.
    pub fn authorize(&self, action: Action, creds: &Credentials) -> Result<(), AuthError> {
        let (user, pass, ips) = match action {
            Action::Publish => (&self.publish_user, &self.publish_pass, &self.publish_ips),
            Action::Read => (&self.read_user, &self.read_pass, &self.read_ips),
        };
        if !ips.is_empty() && !ips.iter().any(|net| net.contains(&creds.ip)) {
            return Err(AuthError::IpNotAllowed(creds.ip, action.verb()));
        }
        if user.is_empty() && pass.is_empty() {
            return Ok(());
        }
        let (Some(u), Some(p)) = (&creds.user, &creds.pass) else {
            return Err(AuthError::CredentialsRequired);
        };
        // Evaluate both comparisons, so timing does not reveal which one failed.
        let ok_user = same(u, user);
        let ok_pass = same(p, pass);
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
        Credentials {
            user: user.map(str::to_string),
            pass: pass.map(str::to_string),
            ip: ip.parse().unwrap(),
        }
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
}
