//! `tidegate keys …`: stream keys through a running server's API.
//!
//! ```text
//! tidegate keys [--api URL] [--user U --pass P] list [--path P]
//! tidegate keys create PATH [--label L] [--valid-for 2h | --expires RFC3339] [--not-before RFC3339]
//!                           [--max-uses N] [--ip NET]... [--read]
//! tidegate keys get ID | rotate ID [--grace 60s] | revoke ID
//! ```
//!
//! It prints the API's JSON; `create` and `rotate` print the new key on a line of its own
//! first (`key: tgk_…`): it is shown this once.

use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct Keys {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9997")]
    pub api: String,
    /// User with the `api` permission (Basic auth), when the API needs one.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub pass: Option<String>,
    #[command(subcommand)]
    pub cmd: KeyCmd,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Every key (never the secrets), or a path's.
    List {
        #[arg(long)]
        path: Option<String>,
    },
    /// One key.
    Get { id: String },
    /// A new key for PATH; prints it once.
    Create {
        path: String,
        #[arg(long, default_value = "")]
        label: String,
        /// Valid for this long from now (`2h`, `30m`).
        #[arg(long)]
        valid_for: Option<String>,
        /// Valid until this time (RFC 3339).
        #[arg(long)]
        expires: Option<String>,
        /// Not valid before this time (RFC 3339).
        #[arg(long)]
        not_before: Option<String>,
        #[arg(long)]
        max_uses: Option<u64>,
        /// Allowed address or range (repeatable).
        #[arg(long = "ip")]
        ips: Vec<String>,
        /// A key to read with, instead of to publish.
        #[arg(long)]
        read: bool,
    },
    /// A new key with the same settings; the old one works for --grace more.
    Rotate {
        id: String,
        #[arg(long, default_value = "60s")]
        grace: String,
    },
    /// Kills a key now; the sessions it opened end.
    Revoke { id: String },
}

/// Runs the command; the exit code is 0 on a 2xx answer.
pub fn run(k: Keys) -> std::process::ExitCode {
    let (method, path, body) = match &k.cmd {
        KeyCmd::List { path } => (
            "GET",
            match path {
                Some(p) => format!("/v3/keys/list?path={}", encode(p)),
                None => "/v3/keys/list".into(),
            },
            None,
        ),
        KeyCmd::Get { id } => ("GET", format!("/v3/keys/get/{}", encode(id)), None),
        KeyCmd::Create {
            path,
            label,
            valid_for,
            expires,
            not_before,
            max_uses,
            ips,
            read,
        } => {
            let mut b = serde_json::json!({"path": path, "label": label, "ips": ips});
            if *read {
                b["action"] = "read".into();
            }
            for (k, v) in [
                ("validFor", valid_for),
                ("expires", expires),
                ("notBefore", not_before),
            ] {
                if let Some(v) = v {
                    b[k] = v.clone().into();
                }
            }
            if let Some(m) = max_uses {
                b["maxUses"] = (*m).into();
            }
            ("POST", "/v3/keys/create".to_string(), Some(b))
        }
        KeyCmd::Rotate { id, grace } => (
            "POST",
            format!("/v3/keys/rotate/{}", encode(id)),
            Some(serde_json::json!({ "grace": grace })),
        ),
        KeyCmd::Revoke { id } => ("POST", format!("/v3/keys/revoke/{}", encode(id)), None),
    };
    let url = format!("{}{path}", k.api.trim_end_matches('/'));
    let auth = k.user.as_ref().map(|u| {
        use base64::Engine;
        let raw = format!("{u}:{}", k.pass.as_deref().unwrap_or(""));
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate keys: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let answer = runtime.block_on(tidegate_auth::fetch::request_as(
        method,
        &url,
        body,
        "",
        Duration::from_secs(15),
        auth,
    ));
    match answer {
        Ok(a) => {
            let text = String::from_utf8_lossy(&a.body);
            let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            if let Some(key) = json.as_ref().and_then(|j| j["key"].as_str()) {
                println!("key: {key}");
            }
            match json {
                Some(j) => println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default()),
                None => println!("{text}"),
            }
            if (200..300).contains(&a.status) {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("tidegate keys: the API answered {}", a.status);
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tidegate keys: {url}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
