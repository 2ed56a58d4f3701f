//! Signed checkpoints of the chain's head, in the style of Certificate
//! Transparency's signed tree heads.
//!
//! The hash chain alone shows an edit in the middle, but not rows removed
//! from the end, nor a chain re-hashed after an edit: whoever can write the
//! file can recompute every hash. A checkpoint is the head of the chain
//! (`seq` and `hash` of the last row) signed with an Ed25519 key, appended to
//! `<audit>.checkpoints` and optionally POSTed to a webhook ([`publish`]).
//! Once a checkpoint is kept somewhere the attacker cannot reach, the store
//! must still hold a row at that `seq` with that `hash`; `airlock audit
//! verify --checkpoint` checks exactly that ([`verify_checkpoints`]).
//!
//! The signed bytes are the UTF-8 text
//! `airlock-audit-checkpoint/v1\n{seq}\n{hash}\n{time}\n` (docs/audit.md).

pub mod publish;

use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{AuditBackend, Filter};

/// The environment variable that may hold the signing key's 32-byte seed.
pub const KEY_ENV: &str = "AIRLOCK_AUDIT_SIGNING_KEY";

/// Why a key or a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{what}: expected {len} bytes as hex or base64")]
    BadKeyText { what: String, len: usize },
    #[error("{what} is not a valid Ed25519 public key")]
    BadPublicKey { what: String },
    #[error("cannot read the audit signing key {path}: {reason}")]
    ReadKey { path: String, reason: String },
    #[error("cannot create the audit signing key {path}: {reason}")]
    CreateKey { path: String, reason: String },
    #[error(
        "no audit signing key: {path} does not exist (a gateway creates it at its first start)"
    )]
    NoKey { path: String },
    #[error(
        "refusing the audit signing key {path}: it is a symbolic link; point signing_key_file at the file itself"
    )]
    KeyIsSymlink { path: String },
    #[error("refusing the audit signing key {path}: it is not a regular file")]
    KeyNotAFile { path: String },
    #[error(
        "refusing the audit signing key {path}: it is owned by uid {owner}, not by this user (uid {euid}); run airlock as its owner, or `chown` the file"
    )]
    KeyNotOwned { path: String, owner: u32, euid: u32 },
    #[error(
        "refusing the audit signing key {path}: group or others may access it (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    KeyTooOpen { path: String, mode: u32 },
    #[error("not a valid checkpoint: {0}")]
    BadCheckpoint(&'static str),
}

/// One line of a checkpoints file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The last row's `seq`.
    pub seq: i64,
    /// The last row's `hash`.
    pub hash: String,
    /// When it was signed: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The signer's Ed25519 public key, base64 (convenience only: verify
    /// with a key you kept yourself).
    pub public_key: String,
    /// Ed25519 signature of [`signed_bytes`], base64.
    pub signature: String,
}

/// Checks what goes into [`signed_bytes`], so that one message has one
/// reading: `seq` at least 1, `hash` 64 lower-case hex digits, `time` RFC 3339
/// (neither can then hold the `\n` that separates the fields).
pub fn validate(seq: i64, hash: &str, time: &str) -> Result<(), CheckpointError> {
    if seq < 1 {
        return Err(CheckpointError::BadCheckpoint("seq must be 1 or more"));
    }
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hash.len() != 64 || !hash.bytes().all(lower_hex) {
        return Err(CheckpointError::BadCheckpoint(
            "hash must be 64 lower-case hex digits",
        ));
    }
    if chrono::DateTime::parse_from_rfc3339(time).is_err() {
        return Err(CheckpointError::BadCheckpoint(
            "time must be an RFC 3339 time",
        ));
    }
    Ok(())
}

/// The exact bytes a checkpoint's signature covers (unchecked: see [`validate`]).
pub fn signed_bytes(seq: i64, hash: &str, time: &str) -> Vec<u8> {
    format!("airlock-audit-checkpoint/v1\n{seq}\n{hash}\n{time}\n").into_bytes()
}

/// Base64 (standard alphabet, padded): how keys and signatures are written.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads `N` bytes written as hex or base64 (standard or URL-safe, padded or not).
pub fn decode_bytes<const N: usize>(text: &str, what: &str) -> Result<[u8; N], CheckpointError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    let decoded = if text.len() == 2 * N && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
    };
    decoded
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or_else(|| CheckpointError::BadKeyText {
            what: what.to_owned(),
            len: N,
        })
}

/// An Ed25519 public key given as hex or base64.
pub fn parse_public_key(text: &str, what: &str) -> Result<VerifyingKey, CheckpointError> {
    let bytes = decode_bytes::<32>(text, what)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| CheckpointError::BadPublicKey {
        what: what.to_owned(),
    })
}

/// The key that signs checkpoints.
pub struct Signer {
    key: SigningKey,
    public: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(public key {})", self.public)
    }
}

impl Signer {
    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        let key = SigningKey::from_bytes(seed);
        let public = b64(key.verifying_key().as_bytes());
        Signer { key, public }
    }

    /// The public key, base64.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs a head; refuses fields [`validate`] rejects.
    pub fn sign(&self, seq: i64, hash: &str, time: &str) -> Result<Checkpoint, CheckpointError> {
        validate(seq, hash, time)?;
        let signature = self.key.sign(&signed_bytes(seq, hash, time));
        Ok(Checkpoint {
            seq,
            hash: hash.to_owned(),
            time: time.to_owned(),
            public_key: self.public.clone(),
            signature: b64(&signature.to_bytes()),
        })
    }
}

/// Whether `checkpoint` is valid ([`validate`]) and was signed by `key`.
pub fn signature_holds(checkpoint: &Checkpoint, key: &VerifyingKey) -> bool {
    if validate(checkpoint.seq, &checkpoint.hash, &checkpoint.time).is_err() {
        return false;
    }
    let Ok(bytes) = decode_bytes::<64>(&checkpoint.signature, "signature") else {
        return false;
    };
    let message = signed_bytes(checkpoint.seq, &checkpoint.hash, &checkpoint.time);
    key.verify_strict(&message, &Signature::from_bytes(&bytes))
        .is_ok()
}

/// Where the signing key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `AIRLOCK_AUDIT_SIGNING_KEY`.
    Env,
    /// `[audit] signing_key_file`, or `<audit>.key` made earlier.
    File(PathBuf),
    /// `<audit>.key`, just generated.
    Generated(PathBuf),
}

/// `<audit>.key`: the generated signing key, beside the store.
pub fn default_key_path(audit: &Path) -> PathBuf {
    sibling(audit, ".key")
}

/// `<audit>.checkpoints`: the checkpoints, one JSON object per line.
pub fn checkpoints_path(audit: &Path) -> PathBuf {
    sibling(audit, ".checkpoints")
}

fn sibling(audit: &Path, suffix: &str) -> PathBuf {
    let mut name = audit.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The signing key: `env_seed` (the value of [`KEY_ENV`]) if given, else
/// `key_file`, else `<audit>.key`, which is generated (mode 0600) when it
/// does not exist and `generate` is set.
pub fn load_signer(
    env_seed: Option<&str>,
    key_file: Option<&Path>,
    audit: &Path,
    generate: bool,
) -> Result<(Signer, KeySource), CheckpointError> {
    if let Some(seed) = env_seed {
        let seed = decode_bytes::<32>(seed, KEY_ENV)?;
        return Ok((Signer::from_seed(&seed), KeySource::Env));
    }
    let (path, may_create) = match key_file {
        Some(path) => (path.to_owned(), false),
        None => (default_key_path(audit), generate),
    };
    match read_key_file(&path) {
        Ok(text) => {
            let seed = decode_bytes::<32>(&text, &path.display().to_string())?;
            Ok((Signer::from_seed(&seed), KeySource::File(path)))
        }
        Err(e) if e.kind() == Some(std::io::ErrorKind::NotFound) && may_create => {
            generate_key(&path)
        }
        Err(e) if e.kind() == Some(std::io::ErrorKind::NotFound) => Err(CheckpointError::NoKey {
            path: path.display().to_string(),
        }),
        Err(KeyFileError::Io(e)) => Err(CheckpointError::ReadKey {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
        Err(KeyFileError::Refused(e)) => Err(e),
    }
}

enum KeyFileError {
    Io(std::io::Error),
    Refused(CheckpointError),
}

impl KeyFileError {
    fn kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            KeyFileError::Io(e) => Some(e.kind()),
            KeyFileError::Refused(_) => None,
        }
    }
}

/// Reads a key file that only its owner can reach: not through a symbolic
/// link (O_NOFOLLOW), a regular file, owned by the effective user, with no
/// access for group or others. Checked on the open file, so the checks and
/// the read see the same file.
fn read_key_file(path: &Path) -> Result<String, KeyFileError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = || path.display().to_string();
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        // O_NOFOLLOW on a symbolic link: ELOOP.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(KeyFileError::Refused(CheckpointError::KeyIsSymlink {
                path: shown(),
            }));
        }
        Err(e) => return Err(KeyFileError::Io(e)),
    };
    let meta = file.metadata().map_err(KeyFileError::Io)?;
    let refused = if !meta.is_file() {
        Some(CheckpointError::KeyNotAFile { path: shown() })
    } else if meta.uid() != nix::unistd::geteuid().as_raw() {
        Some(CheckpointError::KeyNotOwned {
            path: shown(),
            owner: meta.uid(),
            euid: nix::unistd::geteuid().as_raw(),
        })
    } else if meta.mode() & 0o077 != 0 {
        Some(CheckpointError::KeyTooOpen {
            path: shown(),
            mode: meta.mode() & 0o7777,
        })
    } else {
        None
    };
    if let Some(refused) = refused {
        return Err(KeyFileError::Refused(refused));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(KeyFileError::Io)?;
    Ok(text)
}

/// Writes a new seed (hex) to `path`, readable only by its owner. Two
/// gateways starting at once on one store: the second reads the first's,
/// with the checks of any key file (a file or link planted there is refused,
/// not used).
fn generate_key(path: &Path) -> Result<(Signer, KeySource), CheckpointError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let seed: [u8; 32] = rand::RngExt::random(&mut rand::rng());
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())?;
            file.sync_all()
        });
    match created {
        Ok(()) => Ok((
            Signer::from_seed(&seed),
            KeySource::Generated(path.to_owned()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load_signer(None, Some(path), path, false)
        }
        Err(e) => Err(CheckpointError::CreateKey {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The chain's head: the last row's `seq` and `hash`.
pub fn head(db: &mut dyn AuditBackend) -> Result<Option<(i64, String)>, super::AuditError> {
    let filter = Filter {
        limit: Some(1),
        ..Default::default()
    };
    Ok(db
        .query(&filter, true)?
        .into_iter()
        .next()
        .map(|e| (e.seq, e.hash)))
}

/// The hash of the row at `seq`, if there is one.
fn hash_at(db: &mut dyn AuditBackend, seq: i64) -> Result<Option<String>, super::AuditError> {
    Ok(super::row_at(db, seq)?.map(|e| e.hash))
}

/// What `verify --checkpoint` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Checkpoints whose signature and row both hold.
    pub verified: usize,
    /// The newest verified checkpoint (by `seq`).
    pub latest: Option<Checkpoint>,
    /// The store's last `seq` (0 when empty).
    pub last_seq: i64,
    /// One message per failed line, naming the line.
    pub problems: Vec<String>,
    /// Distinct public keys the lines carry.
    pub keys_seen: Vec<String>,
}

/// Checks every line of a checkpoints file against the store: its signature
/// (with `key`, else — proving nothing against a swapped key — the key the
/// line carries), and that the store still has a row at its `seq` with its
/// `hash`.
pub fn verify_checkpoints(
    db: &mut dyn AuditBackend,
    text: &str,
    key: Option<&VerifyingKey>,
) -> Result<Report, super::AuditError> {
    let mut report = Report {
        last_seq: head(db)?.map_or(0, |(seq, _)| seq),
        ..Default::default()
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let checkpoint: Checkpoint = match serde_json::from_str(line) {
            Ok(c) => c,
            Err(e) => {
                report
                    .problems
                    .push(format!("checkpoint line {n}: not a checkpoint ({e})"));
                continue;
            }
        };
        if let Err(e) = validate(checkpoint.seq, &checkpoint.hash, &checkpoint.time) {
            report.problems.push(format!("checkpoint line {n}: {e}"));
            continue;
        }
        if !report.keys_seen.contains(&checkpoint.public_key) {
            report.keys_seen.push(checkpoint.public_key.clone());
        }
        let at = format!(
            "checkpoint line {n} (row {}, signed {})",
            checkpoint.seq, checkpoint.time
        );
        let own_key;
        let key = match key {
            Some(key) => key,
            None => match parse_public_key(&checkpoint.public_key, "public_key") {
                Ok(k) => {
                    own_key = k;
                    &own_key
                }
                Err(e) => {
                    report.problems.push(format!("{at}: {e}"));
                    continue;
                }
            },
        };
        if !signature_holds(&checkpoint, key) {
            report.problems.push(format!(
                "{at}: the signature does not verify with public key {} — the checkpoint is forged or was altered",
                b64(key.as_bytes())
            ));
            continue;
        }
        match hash_at(db, checkpoint.seq)? {
            None => report.problems.push(format!(
                "{at}: row {} is missing — the store ends at row {}; rows were removed from the end of the history",
                checkpoint.seq, report.last_seq
            )),
            Some(hash) if hash != checkpoint.hash => report.problems.push(format!(
                "{at}: row {} has hash {hash}, but the checkpoint signed {} — the history up to row {} was rewritten (and re-hashed) after the checkpoint",
                checkpoint.seq, checkpoint.hash, checkpoint.seq
            )),
            Some(_) => {
                report.verified += 1;
                if report.latest.as_ref().is_none_or(|l| l.seq <= checkpoint.seq) {
                    report.latest = Some(checkpoint);
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
