//! `airlock audit …`: verify, export and public-key, reading the store
//! directly (read-only).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::audit::{self, checkpoint};
use crate::cli::AuditCommand;

/// `airlock audit verify|export|public-key`.
pub(super) fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            audit: path,
            checkpoint,
            public_key,
        } => verify(&path, checkpoint.as_deref(), public_key.as_deref()),
        AuditCommand::PublicKey {
            audit: path,
            key_file,
        } => {
            let env = std::env::var(checkpoint::KEY_ENV).ok();
            let env = env.as_deref().filter(|v| !v.trim().is_empty());
            let (signer, _) = checkpoint::load_signer(env, key_file.as_deref(), &path, false)?;
            println!("{}", signer.public_key());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export {
            format,
            since,
            until,
            matching,
            audit: path,
        } => {
            for (flag, value) in [("--since", &since), ("--until", &until)] {
                if let Some(v) = value {
                    chrono::DateTime::parse_from_rfc3339(v).with_context(|| {
                        format!("{flag} must be an RFC 3339 time like 2026-11-25T10:00:00Z")
                    })?;
                }
            }
            let utc = |v: Option<String>| {
                v.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| {
                        t.with_timezone(&chrono::Utc)
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    })
            };
            let mut db = audit::Sqlite::open_existing(&path)?;
            let filter = audit::Filter {
                since: utc(since),
                until: utc(until),
                tool: matching.tool,
                upstream: matching.upstream,
                agent: matching.agent,
                decision: matching.decision,
                decider: matching.decider,
                ..Default::default()
            };
            use audit::AuditBackend;
            let entries = db.query(&filter, false)?;
            let stdout = std::io::stdout();
            audit::export(&entries, format, &mut stdout.lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `airlock audit verify`: the chain, then (with `--checkpoint`) every
/// checkpoint against the store. Prints every problem; exit 1 if any.
fn verify(
    path: &Path,
    checkpoints: Option<&Path>,
    public_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let key = public_key
        .map(|k| checkpoint::parse_public_key(k, "--public-key"))
        .transpose()?;
    let text = match checkpoints {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the checkpoints file {}", file.display()))?,
        ),
        None => None,
    };
    let mut db = audit::Sqlite::open_existing(path)?;
    let mut failed = false;
    let chain = match audit::verify(&mut db) {
        Ok(rows) => format!("{rows} row(s), hash chain intact"),
        Err(problem) => {
            eprintln!("error: {}: {problem}", path.display());
            failed = true;
            String::new()
        }
    };
    let (Some(file), Some(text)) = (checkpoints, text) else {
        if failed {
            return Ok(ExitCode::FAILURE);
        }
        println!("ok: {}: {chain}", path.display());
        return Ok(ExitCode::SUCCESS);
    };
    if key.is_none() {
        eprintln!(
            "warning: no --public-key: each checkpoint is checked against the key written in it, \
which proves nothing against someone who re-signed the file with a key of their own; \
pass the public key you kept (airlock audit public-key)"
        );
    }
    let report = checkpoint::verify_checkpoints(&mut db, &text, key.as_ref())?;
    if key.is_none() && report.keys_seen.len() > 1 {
        eprintln!(
            "warning: {}: the checkpoints carry {} different public keys",
            file.display(),
            report.keys_seen.len()
        );
    }
    for problem in &report.problems {
        eprintln!("error: {}: {problem}", file.display());
    }
    if report.verified == 0 && report.problems.is_empty() {
        eprintln!("error: {}: no checkpoints in the file", file.display());
        failed = true;
    }
    if failed || !report.problems.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    let latest = report.latest.expect("a verified checkpoint");
    println!(
        "ok: {}: {chain}; {} checkpoint(s) in {} verified, the latest at row {} ({}); {} row(s) written after it are not covered by a checkpoint",
        path.display(),
        report.verified,
        file.display(),
        latest.seq,
        latest.time,
        report.last_seq - latest.seq,
    );
    Ok(ExitCode::SUCCESS)
}
