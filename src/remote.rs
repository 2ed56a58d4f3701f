//! The approvers' command line: `airlock pending|approve|deny` against a
//! running gateway's API, authenticated by `AIRLOCK_APPROVER_TOKEN`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{DecideArgs, RemoteArgs};

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
        .json(&serde_json::json!({ "comment": args.comment }))
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
    Ok(ExitCode::SUCCESS)
}
