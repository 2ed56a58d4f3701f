//! The login file: when the gateway made up its approver token (quick mode
//! without `AIRLOCK_APPROVER_TOKEN`), it writes a ready login link to
//! `<audit>.login`, readable only by the gateway's user. `airlock stdio`
//! cannot show the token anywhere else (stdout is the protocol, stderr often
//! lands in files an agent can read); `airlock serve` writes it too, so
//! `airlock login-link` can show the link again on the same machine after
//! the start-up text has scrolled away. The file goes away with the gateway.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::output::say;

/// Where a gateway with this audit store keeps its login link.
pub fn path(audit: &Path) -> PathBuf {
    let mut name = audit
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".login");
    audit.with_file_name(name)
}

/// The link the file holds: `{base}/login#token={token}`.
pub fn link(base: &str, token: &str) -> String {
    format!("{}/login#token={token}", base.trim_end_matches('/'))
}

/// Writes the file so only its owner can read it (replacing an old one).
pub fn write(path: &Path, link: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{link}\n").as_bytes())
}

/// Removes the file at shutdown, if it still holds this gateway's link
/// (another gateway on the same audit store may have written its own since).
pub fn remove(path: &Path, link: &str) {
    if std::fs::read_to_string(path).is_ok_and(|text| text.trim() == link) {
        let _ = std::fs::remove_file(path);
    }
}

/// `airlock login-link`: prints the running gateway's login link (or, with
/// `--token`, only its approver token) from the login file.
pub fn print(audit: &Path, token_only: bool) -> anyhow::Result<ExitCode> {
    let file = path(audit);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no login file at {}: no gateway with --audit {} is running with a generated token \
             (a token from AIRLOCK_APPROVER_TOKEN or [[approver]] is never written to disk: use that one)",
            file.display(),
            audit.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let link = text.trim();
    let Some((_, token)) = link.split_once("#token=") else {
        bail!("{} does not hold a login link", file.display());
    };
    if token_only {
        say(format_args!("{token}"));
    } else {
        say(format_args!("{link}"));
    }
    Ok(ExitCode::SUCCESS)
}
