//! `airlock audit …`: verify, export and public-key, reading the store
//! directly (read-only).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;

use crate::audit::{self, checkpoint};
use crate::cli::{AuditCommand, StoreArg};

/// Where a command reads the history: the `--audit` SQLite file, or the
/// shared PostgreSQL store (`--store URL` / `--store-env NAME`).
pub(super) enum Source {
    File(PathBuf),
    Store(String),
}

impl Source {
    pub(super) fn pick(audit: PathBuf, store: &StoreArg) -> anyhow::Result<Source> {
        match (&store.store, &store.store_env) {
            (Some(url), _) => Ok(Source::Store(url.clone())),
            (None, Some(name)) => match std::env::var(name) {
                Ok(url) if !url.trim().is_empty() => Ok(Source::Store(url.trim().to_owned())),
                _ => {
                    anyhow::bail!("--store-env {name}: the environment variable {name} is not set")
                }
            },
            (None, None) => Ok(Source::File(audit)),
        }
    }

    /// How messages name it: the path, or the URL without its password.
    pub(super) fn label(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Store(url) => audit::redact_url(url),
        }
    }

    /// Opens it read-only, creating and changing nothing.
    pub(super) fn open(&self) -> anyhow::Result<Box<dyn audit::AuditBackend>> {
        Ok(match self {
            Source::File(path) => Box::new(audit::Sqlite::open_existing(path)?),
            Source::Store(url) => Box::new(audit::Postgres::open_existing(url)?),
        })
    }
}

/// `airlock audit verify|export|public-key`.
pub(super) fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            audit: path,
            store,
            checkpoint,
            public_key,
            public_key_file,
            trust_embedded_key,
        } => {
            let source = Source::pick(path, &store)?;
            let Some(checkpoints) = checkpoint else {
                return verify(&source, None);
            };
            let key = trusted_key(
                public_key.as_deref(),
                public_key_file.as_deref(),
                trust_embedded_key,
            )?;
            verify(&source, Some((&checkpoints, key)))
        }
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
            store,
        } => {
            let source = Source::pick(path, &store)?;
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
            let mut db = source.open()?;
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
            let entries = db.query(&filter, false)?;
            let stdout = std::io::stdout();
            audit::export(&entries, format, &mut stdout.lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The key checkpoints are checked with: `None` only when the caller said
/// `--trust-embedded-key`. Without any of the three, an error saying why:
/// checking each line with the key it carries passes a store and checkpoints
/// rewritten and re-signed with another key.
fn trusted_key(
    public_key: Option<&str>,
    public_key_file: Option<&Path>,
    trust_embedded_key: bool,
) -> anyhow::Result<Option<VerifyingKey>> {
    match (public_key, public_key_file) {
        (Some(text), _) => Ok(Some(checkpoint::parse_public_key(text, "--public-key")?)),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the public key file {}", file.display()))?;
            let what = format!("--public-key-file {}", file.display());
            Ok(Some(checkpoint::parse_public_key(&text, &what)?))
        }
        (None, None) if trust_embedded_key => Ok(None),
        (None, None) => anyhow::bail!(
            "--checkpoint needs the public key you kept: --public-key KEY or --public-key-file FILE \
(from `airlock audit public-key` or the gateway's start-up log). The key written in each checkpoint \
proves nothing: whoever rewrote the store can re-sign the file with a key of their own. \
To check against the embedded keys anyway, say --trust-embedded-key"
        ),
    }
}

/// `airlock audit verify`: the chain, then (with `--checkpoint`) every
/// checkpoint against the store, with the kept key (`None`: each line's
/// own, `--trust-embedded-key`). Prints every problem; exit 1 if any.
fn verify(
    source: &Source,
    checkpoints: Option<(&Path, Option<VerifyingKey>)>,
) -> anyhow::Result<ExitCode> {
    let (checkpoints, key) = match checkpoints {
        Some((file, key)) => (Some(file), key),
        None => (None, None),
    };
    let text = match checkpoints {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the checkpoints file {}", file.display()))?,
        ),
        None => None,
    };
    let mut db = source.open()?;
    let label = source.label();
    let mut failed = false;
    let chain = match audit::verify(db.as_mut()) {
        Ok(rows) => format!("{rows} row(s), hash chain intact"),
        Err(problem) => {
            eprintln!("error: {label}: {problem}");
            failed = true;
            String::new()
        }
    };
    let (Some(file), Some(text)) = (checkpoints, text) else {
        if failed {
            return Ok(ExitCode::FAILURE);
        }
        println!("ok: {label}: {chain}");
        return Ok(ExitCode::SUCCESS);
    };
    if key.is_none() {
        eprintln!(
            "warning: --trust-embedded-key: each checkpoint is checked against the key written in it, \
which proves nothing against someone who re-signed the file with a key of their own; \
pass the public key you kept (--public-key, from airlock audit public-key)"
        );
    }
    let report = checkpoint::verify_checkpoints(db.as_mut(), &text, key.as_ref())?;
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
        "ok: {label}: {chain}; {} checkpoint(s) in {} verified, the latest at row {} ({}); {} row(s) written after it are not covered by a checkpoint",
        report.verified,
        file.display(),
        latest.seq,
        latest.time,
        report.last_seq - latest.seq,
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        checkpoint::Signer::from_seed(&[7u8; 32])
            .public_key()
            .to_owned()
    }

    #[test]
    fn audit_verify_with_checkpoints_needs_a_kept_key_or_an_explicit_trust() {
        let refused = trusted_key(None, None, false).unwrap_err().to_string();
        assert!(
            refused.contains("--public-key") && refused.contains("--trust-embedded-key"),
            "{refused}"
        );
        assert!(trusted_key(None, None, true).unwrap().is_none());
        assert!(trusted_key(Some(&key()), None, false).unwrap().is_some());
        assert!(trusted_key(Some("nonsense"), None, false).is_err());
    }

    #[test]
    fn audit_verify_reads_the_kept_key_from_a_file() {
        let file = std::env::temp_dir().join(format!("airlock-pub-{}", uuid::Uuid::new_v4()));
        std::fs::write(&file, format!("{}\n", key())).unwrap();
        let from_file = trusted_key(None, Some(&file), false).unwrap();
        assert_eq!(from_file, trusted_key(Some(&key()), None, false).unwrap());
        std::fs::remove_file(&file).unwrap();
        let missing = trusted_key(None, Some(&file), false).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("cannot read the public key file"),
            "{missing}"
        );
    }

    #[test]
    fn audit_verify_flags_parse_and_conflict() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            crate::cli::Cli::try_parse_from(
                ["airlock", "audit", "verify", "--checkpoint", "c"]
                    .iter()
                    .chain(args),
            )
        };
        assert!(parse(&["--trust-embedded-key"]).is_ok());
        assert!(parse(&["--public-key-file", "k"]).is_ok());
        let key = key();
        assert!(parse(&["--public-key", &key, "--trust-embedded-key"]).is_err());
        assert!(parse(&["--public-key", &key, "--public-key-file", "k"]).is_err());
    }
}
