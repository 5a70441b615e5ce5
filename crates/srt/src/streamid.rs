//! SRT stream ids in the two forms users send:
//! - MediaMTX's `publish:<path>[:user:pass]` and `read:<path>[:user:pass]`;
//! - the SRT Access Control form `#!::r=<path>,m=publish|request,u=<user>,s=<session>` (plus
//!   `p=<pass>` for a password, as MediaMTX accepts).

use crate::SrtError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Publish,
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamId {
    pub mode: Mode,
    pub path: String,
    pub user: Option<String>,
    pub pass: Option<String>,
}

/// Stream ids are at most 512 bytes in SRT; anything longer is refused.
const MAX_LEN: usize = 512;

pub fn parse(s: &str) -> Result<StreamId, SrtError> {
    read(s).map_err(SrtError::StreamId)
}

fn read(s: &str) -> Result<StreamId, String> {
    if s.len() > MAX_LEN {
        return Err("stream id longer than 512 bytes".into());
    }
    if let Some(rest) = s.strip_prefix("#!::") {
        let mut id = StreamId {
            mode: Mode::Read,
            path: String::new(),
            user: None,
            pass: None,
        };
        for kv in rest.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("bad stream id item '{kv}'"))?;
            match k {
                "r" => id.path = v.to_string(),
                "m" => {
                    id.mode = match v {
                        "publish" => Mode::Publish,
                        "request" => Mode::Read,
                        other => return Err(format!("stream id mode '{other}' is not supported")),
                    }
                }
                "u" => id.user = Some(v.to_string()),
                "p" => id.pass = Some(v.to_string()),
                _ => {} // s=session, t=type, h=host: accepted and unused
            }
        }
        if id.path.is_empty() {
            return Err("stream id has no r=<path>".into());
        }
        return Ok(id);
    }
    let mut parts = s.splitn(4, ':');
    let mode =
        match parts.next() {
            Some("publish") => Mode::Publish,
            Some("read") => Mode::Read,
            _ => return Err(
                "stream id must be publish:<path>, read:<path> or #!::r=<path>,m=publish|request"
                    .into(),
            ),
        };
    let path = parts.next().unwrap_or("").to_string();
    if path.is_empty() {
        return Err("stream id has no path".into());
    }
    let user = parts.next().map(str::to_string);
    let pass = parts.next().map(str::to_string);
    Ok(StreamId {
        mode,
        path,
        user,
        pass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms() {
        let a = parse("publish:cam1").unwrap();
        assert_eq!(
            (a.mode, a.path.as_str(), a.user),
            (Mode::Publish, "cam1", None)
        );
        let b = parse("read:live/x:bob:pw").unwrap();
        assert_eq!((b.mode, b.path.as_str()), (Mode::Read, "live/x"));
        assert_eq!(
            (b.user.as_deref(), b.pass.as_deref()),
            (Some("bob"), Some("pw"))
        );
        let c = parse("#!::r=live/test,m=publish,u=alice,s=123").unwrap();
        assert_eq!(
            (c.mode, c.path.as_str(), c.user.as_deref()),
            (Mode::Publish, "live/test", Some("alice"))
        );
        let d = parse("#!::m=request,r=cam").unwrap();
        assert_eq!((d.mode, d.path.as_str()), (Mode::Read, "cam"));
        for bad in [
            "",
            "play:x",
            "publish:",
            "#!::m=publish",
            "#!::r=x,m=bidirectional",
            "#!::garbage",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(&"a".repeat(600)).is_err());
    }
}
