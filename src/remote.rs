//! The approvers' command line: `airlock pending|approve|deny`,
//! `airlock tools list|pin|accept` and `airlock grants list|revoke` against
//! a running gateway's API, authenticated by `AIRLOCK_APPROVER_TOKEN`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{DecideArgs, GrantsCommand, RemoteArgs, ToolsCommand};

fn client(remote: &RemoteArgs) -> anyhow::Result<(reqwest::Client, String)> {
    let token = std::env::var(&remote.token_env)
        .with_context(|| format!("set {} to an approver token", remote.token_env))?;
    let client = reqwest::Client::builder()
        .user_agent(concat!("airlock-cli/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok((client, token))
}

async fn error_text(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"].as_str().unwrap_or("no details");
    format!("HTTP {status}: {message}")
}

pub async fn pending(remote: RemoteArgs) -> anyhow::Result<ExitCode> {
    let (client, token) = client(&remote)?;
    let url = format!("{}/api/pending", remote.url.trim_end_matches('/'));
    let response = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        bail!("{}", error_text(response).await);
    }
    let body: Value = response.json().await?;
    let items = body["pending"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("No calls waiting.");
    }
    for item in items {
        let text = |k: &str| item[k].as_str().unwrap_or("-").to_owned();
        println!(
            "{}  {}  upstream={} agent={} rule={} expires={}",
            text("id"),
            text("tool"),
            text("upstream"),
            text("agent"),
            text("rule"),
            text("expires_at")
        );
        if let Some(reason) = item["reason"].as_str() {
            println!("    reason: {reason}");
        }
        println!("    arguments: {}", item["arguments"]);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn decide(args: DecideArgs, action: &str) -> anyhow::Result<ExitCode> {
    let (client, token) = client(&args.remote)?;
    let url = format!(
        "{}/api/pending/{}/{action}",
        args.remote.url.trim_end_matches('/'),
        args.id
    );
    let response = client
        .post(&url)
        .bearer_auth(token)
        .json(&decide_body(&args))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        eprintln!("airlock: {}", error_text(response).await);
        return Ok(ExitCode::FAILURE);
    }
    let body: Value = response.json().await?;
    println!(
        "{} {}",
        body["decision"].as_str().unwrap_or(action),
        args.id
    );
    if let Some(message) = body["message"].as_str() {
        println!("{message}");
    }
    if let Some(grant) = body.get("grant") {
        println!("{}", grant_line(grant));
    }
    Ok(ExitCode::SUCCESS)
}

fn decide_body(args: &DecideArgs) -> Value {
    let mut body = serde_json::json!({ "comment": args.comment });
    if let Some(minutes) = args.grant {
        body["grant"] = serde_json::json!({
            "minutes": minutes,
            "scope": args.grant_scope,
            "exact_arguments": args.exact_arguments,
        });
    }
    body
}

/// Sends one request; an error answer is printed and becomes exit status 1.
async fn send(
    remote: &RemoteArgs,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<Result<Value, ExitCode>> {
    let (client, token) = client(remote)?;
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let response = client
        .request(method, &url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        eprintln!("airlock: {}", error_text(response).await);
        return Ok(Err(ExitCode::FAILURE));
    }
    Ok(Ok(response.json().await?))
}

/// Path segment escaping for upstream and tool names.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn tools(command: ToolsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ToolsCommand::List { upstream, remote } => {
            let path = match &upstream {
                Some(u) => format!("/api/pins?upstream={}", segment(u)),
                None => "/api/pins".to_owned(),
            };
            let body = match send(&remote, reqwest::Method::GET, &path).await? {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            let pins = body["pins"].as_array().cloned().unwrap_or_default();
            if pins.is_empty() {
                println!(
                    "No tools pinned yet (tools are pinned when an agent or the dashboard first lists them)."
                );
            }
            for pin in pins {
                let text = |k: &str| pin[k].as_str().unwrap_or("-").to_owned();
                let status = if text("status") == "changed" {
                    "CHANGED"
                } else {
                    "pinned"
                };
                let print = text("fingerprint");
                println!(
                    "{}/{}  {status}  sha256:{}  pinned {}",
                    text("upstream"),
                    text("tool"),
                    &print[..print.len().min(16)],
                    text("pinned_at")
                );
                if let Some(diff) = pin["diff"].as_str() {
                    for line in diff.lines() {
                        println!("    {line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ToolsCommand::Pin { upstream, remote } => {
            let path = format!("/api/tools/{}/pin", segment(&upstream));
            match send(&remote, reqwest::Method::POST, &path).await? {
                Ok(body) => {
                    println!(
                        "{} tool definition(s) of {upstream} pinned anew ({} pinned in all)",
                        body["pinned"],
                        body["pins"].as_array().map_or(0, Vec::len)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
        ToolsCommand::Accept {
            upstream,
            tool,
            remote,
        } => {
            let path = format!(
                "/api/tools/{}/{}/accept",
                segment(&upstream),
                segment(&tool)
            );
            match send(&remote, reqwest::Method::POST, &path).await? {
                Ok(body) => {
                    println!(
                        "accepted {upstream}/{tool} (sha256:{})",
                        body["pin"]["fingerprint"].as_str().unwrap_or("-")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
    }
}

fn grant_line(g: &Value) -> String {
    let text = |k: &str| g[k].as_str().unwrap_or("-").to_owned();
    let who = match text("scope").as_str() {
        "session" => format!("session {}", text("session")),
        _ => format!("agent {}", text("agent")),
    };
    let args = if g["arguments"].is_null() {
        "any arguments".to_owned()
    } else {
        format!("arguments {}", g["arguments"])
    };
    format!(
        "{}  {}/{}  {who}  {args}  by {}  until {}",
        text("id"),
        text("upstream"),
        text("tool"),
        text("granted_by"),
        text("expires_at")
    )
}

pub async fn grants(command: GrantsCommand) -> anyhow::Result<ExitCode> {
    match command {
        GrantsCommand::List(remote) => {
            let body = match send(&remote, reqwest::Method::GET, "/api/grants").await? {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            let grants = body["grants"].as_array().cloned().unwrap_or_default();
            if grants.is_empty() {
                println!("No grants.");
            }
            for g in &grants {
                println!("{}", grant_line(g));
            }
            Ok(ExitCode::SUCCESS)
        }
        GrantsCommand::Revoke { id, remote } => {
            let path = format!("/api/grants/{}", segment(&id));
            match send(&remote, reqwest::Method::DELETE, &path).await? {
                Ok(_) => {
                    println!("revoked {id}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
    }
}
