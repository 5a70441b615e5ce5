//! `recordPath`: where a segment goes, and back from a file name to its path and start time.
//!
//! Placeholders are MediaMTX's: `%path`, `%Y %m %d %H %M %S` (local time), `%f` (microseconds)
//! and `%s` (Unix seconds). The extension (`.mp4` or `.ts`) is added by the recorder. A file's
//! start time is read back from its name, so a template must hold either `%s` or all of
//! `%Y %m %d %H %M %S`; `%f` makes it exact to the microsecond.

use std::path::{Path, PathBuf};

use crate::RecordError;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use regex::Regex;

#[derive(Clone, Debug)]
pub struct Template {
    raw: String,
    /// Matches a whole file name made from this template (any path), with named groups.
    pattern: Regex,
}

const TIME_PARTS: [&str; 6] = ["%Y", "%m", "%d", "%H", "%M", "%S"];

impl Template {
    pub fn new(raw: &str) -> Result<Template, RecordError> {
        if !raw.contains("%path") {
            return Err(RecordError::NoPath);
        }
        if !raw.contains("%s") && !TIME_PARTS.iter().all(|p| raw.contains(p)) {
            return Err(RecordError::NoTime);
        }
        let mut re = String::from("^");
        let mut used: Vec<&str> = Vec::new();
        let mut rest = raw;
        while let Some(i) = rest.find('%') {
            re.push_str(&regex::escape(&rest[..i]));
            rest = &rest[i..];
            // Path names hold no `%`; non-greedy so that the template's own separators
            // after it still match.
            let (name, body, len) = if rest.starts_with("%path") {
                ("path", "[^%]+?", 5)
            } else {
                match rest.as_bytes().get(1) {
                    Some(b'Y') => ("Y", "\\d{4}", 2),
                    Some(b'm') => ("m", "\\d{2}", 2),
                    Some(b'd') => ("d", "\\d{2}", 2),
                    Some(b'H') => ("H", "\\d{2}", 2),
                    Some(b'M') => ("M", "\\d{2}", 2),
                    Some(b'S') => ("S", "\\d{2}", 2),
                    Some(b'f') => ("f", "\\d{6}", 2),
                    Some(b's') => ("s", "\\d+", 2),
                    _ => ("", "%", 1),
                }
            };
            if name.is_empty() {
                re.push('%');
            } else if used.contains(&name) {
                // A placeholder used twice only captures once.
                re.push_str(&format!("(?:{body})"));
            } else {
                used.push(name);
                re.push_str(&format!("(?P<{name}>{body})"));
            }
            rest = &rest[len..];
        }
        re.push_str(&regex::escape(rest));
        re.push_str("\\.(?P<ext>mp4|ts)$");
        let pattern = Regex::new(&re).map_err(|_| RecordError::NoPath)?;
        Ok(Template {
            raw: raw.to_string(),
            pattern,
        })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The file for a segment of `path` starting at `start` (microseconds since the epoch).
    pub fn render(&self, path: &str, start_us: i64, ext: &str) -> PathBuf {
        let ts = Timestamp::from_microsecond(start_us).unwrap_or(Timestamp::UNIX_EPOCH);
        let local = ts.to_zoned(TimeZone::system());
        let mut out = String::with_capacity(self.raw.len() + path.len() + 16);
        let mut rest = self.raw.as_str();
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(r) = rest.strip_prefix("%path") {
                out.push_str(path);
                rest = r;
                continue;
            }
            let s = match rest.as_bytes().get(1) {
                Some(b'Y') => format!("{:04}", local.year()),
                Some(b'm') => format!("{:02}", local.month()),
                Some(b'd') => format!("{:02}", local.day()),
                Some(b'H') => format!("{:02}", local.hour()),
                Some(b'M') => format!("{:02}", local.minute()),
                Some(b'S') => format!("{:02}", local.second()),
                Some(b'f') => format!("{:06}", start_us.rem_euclid(1_000_000)),
                Some(b's') => format!("{}", start_us.div_euclid(1_000_000)),
                _ => {
                    out.push('%');
                    rest = &rest[1..];
                    continue;
                }
            };
            out.push_str(&s);
            rest = &rest[2..];
        }
        out.push_str(rest);
        out.push('.');
        out.push_str(ext);
        PathBuf::from(out)
    }

    /// The directory under which every segment of every path lives: the template up to its
    /// first placeholder, cut at the last `/` before it.
    pub fn root(&self) -> PathBuf {
        let head = &self.raw[..self.raw.find('%').unwrap_or(self.raw.len())];
        match head.rfind('/') {
            Some(i) => PathBuf::from(&head[..=i]),
            None => PathBuf::from("."),
        }
    }

    /// The path name, start time (µs since the epoch) and extension of a file made from this
    /// template, or `None` when the name does not fit it.
    pub fn parse(&self, file: &Path) -> Option<(String, i64, String)> {
        let name = file.to_str()?;
        let c = self.pattern.captures(name)?;
        let path = c.name("path")?.as_str().to_string();
        let ext = c.name("ext")?.as_str().to_string();
        let micros = c
            .name("f")
            .and_then(|m| m.as_str().parse::<i64>().ok())
            .unwrap_or(0);
        if let Some(s) = c.name("s").and_then(|m| m.as_str().parse::<i64>().ok()) {
            return Some((path, s.checked_mul(1_000_000)? + micros, ext));
        }
        let num = |n: &str| -> Option<i16> { c.name(n)?.as_str().parse().ok() };
        let dt = jiff::civil::DateTime::new(
            num("Y")?,
            num("m")? as i8,
            num("d")? as i8,
            num("H")? as i8,
            num("M")? as i8,
            num("S")? as i8,
            0,
        )
        .ok()?;
        let zoned = dt.to_zoned(TimeZone::system()).ok()?;
        Some((path, zoned.timestamp().as_microsecond() + micros, ext))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_back() {
        let t = Template::new("./recordings/%path/%Y-%m-%d_%H-%M-%S-%f").unwrap();
        let us = 1_764_700_000_123_456;
        let f = t.render("live/cam1", us, "mp4");
        assert!(f.to_str().unwrap().starts_with("./recordings/live/cam1/"));
        assert_eq!(t.parse(&f), Some(("live/cam1".into(), us, "mp4".into())));
        assert_eq!(t.root(), PathBuf::from("./recordings/"));
        assert_eq!(t.parse(Path::new("./recordings/x/notatime.mp4")), None);
    }

    #[test]
    fn unix_seconds_work_alone() {
        let t = Template::new("/data/%path-%s").unwrap();
        let f = t.render("a", 1_700_000_000_999_999, "ts");
        assert_eq!(f, PathBuf::from("/data/a-1700000000.ts"));
        assert_eq!(
            t.parse(&f),
            Some(("a".into(), 1_700_000_000_000_000, "ts".into()))
        );
        assert_eq!(t.root(), PathBuf::from("/data/"));
    }

    #[test]
    fn templates_without_path_or_time_are_refused() {
        assert!(matches!(
            Template::new("./r/%Y%m%d").unwrap_err(),
            RecordError::NoPath
        ));
        assert!(matches!(
            Template::new("./r/%path/%Y").unwrap_err(),
            RecordError::NoTime
        ));
    }
}
