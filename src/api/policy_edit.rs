//! Editing an upstream's policy from the dashboard:
//! `GET /api/policy/{upstream}`, `POST /api/policy/{upstream}/check` and
//! `PUT /api/policy/{upstream}`.
//!
//! A save is checked exactly as `airlock check` checks a file (the same
//! parser, the same messages with line and column), then written atomically
//! (a temporary file beside it, renamed over it) after the previous version
//! is copied to `<file>.prev`. The gateway's policy watcher picks the new
//! file up as it would any edit; the answer waits (briefly) until it is in
//! force. Every save is an audit row (`policy.changed`: who, the file, the
//! SHA-256 of the old and new text and of their diff) and a
//! `policy.changed` event. Only admins may save.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, Approver};
use crate::config::Role;
use crate::gateway::Gateway;
use crate::policy::{self, Format, LoadError};

/// Longest policy text accepted (the API's body limit is larger).
const MAX_POLICY: usize = 1024 * 1024;
/// How long a save waits for the watcher to put the new file in force.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyBody {
    /// The whole new policy file.
    text: String,
    /// SHA-256 (hex) of the file the editor started from; when given and
    /// the file changed since, the save is refused (409).
    #[serde(default)]
    base_sha256: Option<String>,
}

pub(super) async fn get_policy(
    State(gw): State<Gateway>,
    approver: Approver,
    Path(upstream): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (up, file) = target(&gw, &upstream)?;
    let in_force = up.policy();
    let (text, sha256) = match &file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (Some(text.clone()), Some(sha_hex(text.as_bytes()))),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "policy_unreadable",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        },
        None => (None, None),
    };
    let converted = match (in_force.format, &text) {
        (Format::Airlock, _) | (_, None) => None,
        (_, Some(_)) => Some(policy::convert::to_airlock(&in_force)),
    };
    Ok(Json(json!({
        "upstream": upstream,
        "file": file.as_ref().map(|p| p.display().to_string()),
        "format": in_force.format.as_str(),
        "text": text,
        "sha256": sha256,
        "default": in_force.default.as_str(),
        "problem": up.policy_status.problem().map(|p| p.name()),
        "role": approver.role,
        "can_edit": approver.role >= Role::Admin && file.is_some(),
        "converted": converted.as_ref().map(|c| json!({
            "text": c.text, "dropped": c.dropped,
        })),
    })))
}

pub(super) async fn check_policy(
    State(gw): State<Gateway>,
    _approver: Approver,
    Path(upstream): Path<String>,
    body: Result<Json<PolicyBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = super::json_body(body)?;
    let (_, file) = target(&gw, &upstream)?;
    let name = display_name(file.as_deref(), &upstream);
    let compiled = validate(&body.text, &name)?;
    let old = file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let diff = unified_diff(&old, &body.text, &name);
    Ok(Json(json!({
        "ok": true,
        "format": compiled.format.as_str(),
        "summary": summary(&compiled),
        "warnings": policy::lint(&compiled),
        "diff": diff,
        "diff_sha256": sha_hex(diff.as_bytes()),
        "unchanged": old == body.text,
    })))
}

pub(super) async fn put_policy(
    State(gw): State<Gateway>,
    approver: Approver,
    headers: HeaderMap,
    Path(upstream): Path<String>,
    body: Result<Json<PolicyBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    approver.require(Role::Admin, "editing a policy")?;
    let body = super::json_body(body)?;
    let (up, file) = target(&gw, &upstream)?;
    let Some(path) = file else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_policy_file",
            format!(
                "upstream `{upstream}` has no policy file to save to; name one (`--policy FILE` or `policy = \"…\"` in airlock.toml) and restart"
            ),
        ));
    };
    let name = path.display().to_string();
    let compiled = validate(&body.text, &name)?;
    let warnings = policy::lint(&compiled);
    let old = std::fs::read_to_string(&path).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_unreadable",
            format!("cannot read {name}: {e}"),
        )
    })?;
    let old_sha = sha_hex(old.as_bytes());
    if let Some(base) = &body.base_sha256
        && !base.eq_ignore_ascii_case(&old_sha)
    {
        let mut err = ApiError::new(
            StatusCode::CONFLICT,
            "policy_changed",
            format!(
                "{name} changed since you opened it (someone else saved, or it was edited on disk); reload it and apply your changes again"
            ),
        );
        err.extra = Some(json!({ "sha256": old_sha }));
        return Err(err);
    }
    let new_sha = sha_hex(body.text.as_bytes());
    let diff = unified_diff(&old, &body.text, &name);
    let diff_sha = sha_hex(diff.as_bytes());
    if old == body.text {
        return Ok(Json(json!({
            "saved": false, "unchanged": true, "sha256": old_sha, "warnings": warnings,
        })));
    }
    let mut reloads = up.policy_reloads();
    let prev = write_atomically(&path, &old, &body.text).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "policy_write_failed",
            format!("cannot write {name}: {e}"),
        )
    })?;
    let channel = approver.channel(&headers);
    let record = crate::audit::Record {
        decision: "policy.changed",
        upstream: Some(upstream.clone()),
        decider: Some(approver.name.clone()),
        channel: Some(channel.to_owned()),
        reason: Some(format!("policy file {name} saved (diff sha256:{diff_sha})")),
        arguments: Some(
            json!({
                "file": name,
                "previous_file": prev.display().to_string(),
                "previous_sha256": old_sha,
                "sha256": new_sha,
                "diff_sha256": diff_sha,
                "format": compiled.format.as_str(),
            })
            .to_string(),
        ),
        ..Default::default()
    };
    let audited = gw.audit.commit(record).await;
    if let Err(e) = &audited {
        tracing::error!(%upstream, "policy saved but its audit row failed: {e}");
    }
    let reloaded = tokio::time::timeout(RELOAD_WAIT, reloads.changed())
        .await
        .is_ok_and(|r| r.is_ok());
    tracing::info!(%upstream, approver = %approver.name, file = %name, "policy saved from the dashboard");
    gw.events.publish(
        "policy.changed",
        json!({
            "upstream": upstream, "by": approver.name, "channel": channel,
            "sha256": new_sha, "diff_sha256": diff_sha,
        }),
    );
    Ok(Json(json!({
        "saved": true,
        "reloaded": reloaded,
        "file": name,
        "previous_file": prev.display().to_string(),
        "sha256": new_sha,
        "previous_sha256": old_sha,
        "diff_sha256": diff_sha,
        "audit_seq": audited.as_ref().ok().map(|e| e.seq),
        "warnings": warnings,
    })))
}

/// The upstream and its policy file (None: it runs without one).
fn target(
    gw: &Gateway,
    upstream: &str,
) -> Result<
    (
        std::sync::Arc<crate::gateway::UpstreamRuntime>,
        Option<PathBuf>,
    ),
    ApiError,
> {
    let up = gw
        .upstreams
        .get(upstream)
        .cloned()
        .ok_or_else(|| super::tools::unknown_upstream(gw, upstream))?;
    let file = gw
        .config
        .upstreams
        .iter()
        .find(|u| u.name == upstream)
        .and_then(|u| u.policy.clone());
    Ok((up, file))
}

fn display_name(file: Option<&FsPath>, upstream: &str) -> String {
    file.map_or_else(|| format!("{upstream}.json"), |p| p.display().to_string())
}

/// Compiles the text as `airlock check` does; an invalid policy is a 422
/// whose message is `airlock check`'s, with `line` and `column` apart too.
fn validate(text: &str, name: &str) -> Result<policy::Policy, ApiError> {
    if text.len() > MAX_POLICY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "policy_too_large",
            format!("a policy may be at most {MAX_POLICY} bytes"),
        ));
    }
    policy::parse_str(text, name).map_err(|e| {
        let (line, column) = match &e {
            LoadError::Invalid { line, column, .. } => (Some(*line), Some(*column)),
            LoadError::Read { .. } => (None, None),
        };
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            e.to_string(),
        );
        err.extra = Some(json!({ "line": line, "column": column }));
        err
    })
}

/// What `airlock check` prints after `ok:`.
fn summary(p: &policy::Policy) -> String {
    format!(
        "{}, {} rule(s), default {}",
        p.format.as_str(),
        p.rules().len(),
        p.default.as_str()
    )
}

pub(super) fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `<file>.prev`, beside the file.
fn prev_path(path: &FsPath) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

/// Keeps `old` as `<file>.prev`, then replaces the file by renaming a
/// synced temporary file over it: a reader (the watcher, an editor) sees
/// the old or the new file, never half of one. The file keeps its mode.
fn write_atomically(path: &FsPath, old: &str, new: &str) -> std::io::Result<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(FsPath::new("."));
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into());
    let nonce: u64 = rand::RngExt::random(&mut rand::rng());
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let write = |target: &FsPath, text: &str| -> std::io::Result<()> {
        let tmp = dir.join(format!(".{base}.{nonce:016x}.tmp"));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            if let Some(p) = &permissions {
                std::fs::set_permissions(&tmp, p.clone())?;
            }
            std::fs::rename(&tmp, target)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    };
    let prev = prev_path(path);
    write(&prev, old)?;
    write(path, new)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(prev)
}

/// A unified diff of two texts, line by line (`---`/`+++` headers, one
/// hunk per run of changes with three lines of context).
pub fn unified_diff(old: &str, new: &str, name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = line_ops(&a, &b);
    if ops.iter().all(|o| matches!(o, Op::Same(..))) {
        return String::new();
    }
    let mut out = format!("--- {name} (in force)\n+++ {name} (new)\n");
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !matches!(o, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    let mut i = 0;
    while i < changed.len() {
        let start = changed[i].saturating_sub(CONTEXT);
        let mut end = changed[i];
        while i < changed.len() && changed[i] <= end + 2 * CONTEXT {
            end = changed[i];
            i += 1;
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let (mut a0, mut b0) = (0, 0);
        for o in &ops[..start] {
            match o {
                Op::Same(..) => {
                    a0 += 1;
                    b0 += 1;
                }
                Op::Del(_) => a0 += 1,
                Op::Add(_) => b0 += 1,
            }
        }
        let hunk = &ops[start..end];
        let a_len = hunk.iter().filter(|o| !matches!(o, Op::Add(_))).count();
        let b_len = hunk.iter().filter(|o| !matches!(o, Op::Del(_))).count();
        out.push_str(&format!(
            "@@ -{},{a_len} +{},{b_len} @@\n",
            a0 + usize::from(a_len > 0),
            b0 + usize::from(b_len > 0)
        ));
        for o in hunk {
            match o {
                Op::Same(l) => out.push_str(&format!(" {l}\n")),
                Op::Del(l) => out.push_str(&format!("-{l}\n")),
                Op::Add(l) => out.push_str(&format!("+{l}\n")),
            }
        }
    }
    out
}

enum Op<'a> {
    Same(&'a str),
    Del(&'a str),
    Add(&'a str),
}

/// Longest-common-subsequence edit script; texts too big for the table are
/// shown as replaced whole (policies are small).
fn line_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops: Vec<Op<'a>> = a[..prefix].iter().map(|l| Op::Same(l)).collect();
    if ma.len().saturating_mul(mb.len()) > 4_000_000 {
        ops.extend(ma.iter().map(|l| Op::Del(l)));
        ops.extend(mb.iter().map(|l| Op::Add(l)));
    } else {
        let (n, m) = (ma.len(), mb.len());
        let mut t = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                t[i * (m + 1) + j] = if ma[i] == mb[j] {
                    t[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n && j < m {
            if ma[i] == mb[j] {
                ops.push(Op::Same(ma[i]));
                i += 1;
                j += 1;
            } else if t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1] {
                ops.push(Op::Del(ma[i]));
                i += 1;
            } else {
                ops.push(Op::Add(mb[j]));
                j += 1;
            }
        }
        ops.extend(ma[i..].iter().map(|l| Op::Del(l)));
        ops.extend(mb[j..].iter().map(|l| Op::Add(l)));
    }
    ops.extend(a[a.len() - suffix..].iter().map(|l| Op::Same(l)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_of_equal_texts_is_empty() {
        assert_eq!(unified_diff("a\nb\n", "a\nb\n", "p.json"), "");
    }

    #[test]
    fn diff_shows_changed_lines_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        let d = unified_diff(old, new, "p.json");
        assert!(
            d.starts_with("--- p.json (in force)\n+++ p.json (new)\n@@ -2,7 +2,7 @@\n"),
            "{d}"
        );
        assert!(d.contains("-5\n+five\n"), "{d}");
        assert!(!d.contains(" 1\n"), "{d}");
    }

    #[test]
    fn atomic_write_keeps_the_previous_version() {
        let dir = std::env::temp_dir().join(format!("airlock-pe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.json");
        std::fs::write(&file, "old").unwrap();
        let prev = write_atomically(&file, "old", "new").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&prev).unwrap(), "old");
        assert!(prev.ends_with("p.json.prev"));
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
