use super::*;
use crate::audit::{Audit, Record, Redactor, Sqlite, row_hash, verify};

/// A directory of the test's own, deleted with everything in it (the store, its
/// -wal and -shm, keys, checkpoints, symlinks) when the returned value is dropped:
/// keep it bound until the test ends.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("airlock-checkpoint-test-")
        .tempdir()
        .unwrap()
}

fn signer() -> Signer {
    Signer::from_seed(&[7u8; 32])
}

/// A store of `n` rows in a scratch directory, which the caller keeps until it is done.
async fn store_with_rows(n: usize) -> (tempfile::TempDir, PathBuf, Audit) {
    let dir = scratch();
    let path = dir.path().join("audit.db");
    let audit = Audit::open(&path, Redactor::none()).unwrap();
    for i in 0..n {
        audit
            .record(Record {
                decision: "allowed",
                tool: Some("echo".into()),
                arguments: Some(format!(r#"{{"i":{i}}}"#)),
                ..Default::default()
            })
            .await;
    }
    audit.flush().await;
    (dir, path, audit)
}

/// Signs the current head of the store, as the gateway does.
fn checkpoint_line(path: &Path, signer: &Signer) -> String {
    let mut db = Sqlite::open_existing(path).unwrap();
    let (seq, hash) = head(&mut db).unwrap().unwrap();
    serde_json::to_string(&signer.sign(seq, &hash, "2026-11-25T10:00:00.000Z").unwrap()).unwrap()
}

/// Runs `edit` on the store, then recomputes every hash from there on, as an
/// attacker with the file and the documented formula can.
fn rewrite_and_rehash(path: &Path, edit: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(edit, []).unwrap();
    let mut entries = Vec::new();
    Sqlite::open_existing(path)
        .unwrap()
        .scan(1, &mut |e| {
            entries.push(e);
            true
        })
        .unwrap();
    let mut prev = crate::audit::GENESIS.to_owned();
    for e in &entries {
        let hash = row_hash(&prev, e);
        conn.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, e.seq],
        )
        .unwrap();
        prev = hash;
    }
}

async fn add_rows(audit: &Audit, n: usize) {
    for _ in 0..n {
        audit
            .record(Record {
                decision: "denied",
                ..Default::default()
            })
            .await;
    }
    audit.flush().await;
}

#[test]
fn a_checkpoint_verifies_with_its_key_and_not_after_any_change() {
    let s = signer();
    let c = s
        .sign(12, &"ab".repeat(32), "2026-11-25T10:00:00.000Z")
        .unwrap();
    assert!(signature_holds(&c, &s.verifying_key()));
    let other = Signer::from_seed(&[8u8; 32]);
    assert!(!signature_holds(&c, &other.verifying_key()));
    for tampered in [
        Checkpoint {
            seq: 11,
            ..c.clone()
        },
        Checkpoint {
            hash: "cd".repeat(32),
            ..c.clone()
        },
        Checkpoint {
            time: "2026-11-26T10:00:00.000Z".into(),
            ..c.clone()
        },
        Checkpoint {
            signature: b64(&[0u8; 64]),
            ..c.clone()
        },
    ] {
        assert!(
            !signature_holds(&tampered, &s.verifying_key()),
            "{tampered:?}"
        );
    }
}

#[test]
fn the_signed_bytes_are_the_documented_text() {
    assert_eq!(
        signed_bytes(3, "abc", "2026-11-25T10:00:00.000Z"),
        b"airlock-audit-checkpoint/v1\n3\nabc\n2026-11-25T10:00:00.000Z\n"
    );
}

#[test]
fn keys_are_read_as_hex_or_base64() {
    let s = signer();
    let public = s.verifying_key();
    let hex_text = hex::encode(public.as_bytes());
    for text in [
        s.public_key().to_owned(),
        hex_text.clone(),
        format!(" {hex_text}\n"),
    ] {
        assert_eq!(parse_public_key(&text, "key").unwrap(), public, "{text}");
    }
    assert!(parse_public_key("abcd", "--public-key").is_err());
    let seed = decode_bytes::<32>(&b64(&[7u8; 32]), "seed").unwrap();
    assert_eq!(Signer::from_seed(&seed).public_key(), s.public_key());
}

#[test]
fn a_key_is_generated_once_private_and_then_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let audit = dir.path().join("audit.db");
    let (first, source) = load_signer(None, None, &audit, true).unwrap();
    let key_path = default_key_path(&audit);
    assert_eq!(source, KeySource::Generated(key_path.clone()));
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (again, source) = load_signer(None, None, &audit, true).unwrap();
    assert_eq!(source, KeySource::File(key_path));
    assert_eq!(again.public_key(), first.public_key());
    let (from_env, source) =
        load_signer(Some(&hex::encode([7u8; 32])), None, &audit, true).unwrap();
    assert_eq!(
        (from_env.public_key(), source),
        (signer().public_key(), KeySource::Env)
    );
    let missing = load_signer(None, None, &dir.path().join("other.db"), false).unwrap_err();
    assert!(
        matches!(missing, CheckpointError::NoKey { .. }),
        "{missing}"
    );
}

#[tokio::test]
async fn an_untouched_store_matches_its_checkpoints() {
    let (_dir, path, audit) = store_with_rows(3).await;
    let s = signer();
    let early = checkpoint_line(&path, &s);
    for _ in 0..2 {
        audit
            .record(Record {
                decision: "denied",
                ..Default::default()
            })
            .await;
    }
    audit.flush().await;
    let text = format!("{early}\n{}\n", checkpoint_line(&path, &s));
    let mut db = Sqlite::open_existing(&path).unwrap();
    let report = verify_checkpoints(&mut db, &text, Some(&s.verifying_key())).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.verified, report.last_seq), (2, 5));
    assert_eq!(report.latest.unwrap().seq, 5);
}

#[tokio::test]
async fn removing_the_last_rows_is_caught_by_an_earlier_checkpoint() {
    let (_dir, path, _audit) = store_with_rows(5).await;
    let s = signer();
    let text = checkpoint_line(&path, &s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("DELETE FROM audit WHERE seq > 3", []).unwrap();
    let mut db = Sqlite::open_existing(&path).unwrap();
    assert_eq!(verify(&mut db), Ok(3), "the chain alone cannot tell");
    let report = verify_checkpoints(&mut db, &text, Some(&s.verifying_key())).unwrap();
    assert_eq!(report.verified, 0);
    let [problem] = &report.problems[..] else {
        panic!("{:?}", report.problems)
    };
    assert!(
        problem.starts_with("checkpoint line 1 (row 5,"),
        "{problem}"
    );
    assert!(
        problem.contains("row 5 is missing") && problem.contains("ends at row 3"),
        "{problem}"
    );
}

#[tokio::test]
async fn rewriting_and_rehashing_the_chain_is_caught() {
    let (_dir, path, _audit) = store_with_rows(4).await;
    let s = signer();
    let text = checkpoint_line(&path, &s);
    rewrite_and_rehash(&path, "UPDATE audit SET tool = 'innocent' WHERE seq = 2");
    let mut db = Sqlite::open_existing(&path).unwrap();
    assert_eq!(verify(&mut db), Ok(4), "the chain alone cannot tell");
    let report = verify_checkpoints(&mut db, &text, Some(&s.verifying_key())).unwrap();
    let [problem] = &report.problems[..] else {
        panic!("{:?}", report.problems)
    };
    assert!(
        problem.contains("row 4 has hash") && problem.contains("rewritten"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_forged_or_garbled_line_is_named() {
    let (_dir, path, _audit) = store_with_rows(2).await;
    let good = signer();
    let forger = Signer::from_seed(&[9u8; 32]);
    let text = format!(
        "{}\nnot json\n{}\n",
        checkpoint_line(&path, &good),
        checkpoint_line(&path, &forger)
    );
    let mut db = Sqlite::open_existing(&path).unwrap();
    let report = verify_checkpoints(&mut db, &text, Some(&good.verifying_key())).unwrap();
    assert_eq!(report.verified, 1);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems[0].starts_with("checkpoint line 2: not a checkpoint"));
    assert!(
        report.problems[1].starts_with("checkpoint line 3 ")
            && report.problems[1].contains("signature does not verify")
    );
    // With the embedded keys trusted (--trust-embedded-key), the forgery passes.
    let trusting = verify_checkpoints(&mut db, &text, None).unwrap();
    assert_eq!((trusting.verified, trusting.keys_seen.len()), (2, 2));
}

#[tokio::test]
async fn the_publisher_signs_only_when_the_head_moved() {
    let (_dir, path, audit) = store_with_rows(2).await;
    let file = checkpoints_path(&path);
    let publisher = publish::Publisher::new(audit.clone(), signer(), file.clone(), None);
    assert_eq!(publisher.checkpoint().await.map(|c| c.seq), Some(2));
    assert!(publisher.checkpoint().await.is_none());
    audit
        .record(Record {
            decision: "hidden",
            ..Default::default()
        })
        .await;
    audit.flush().await;
    publisher.finish().await;
    // A restart reads the last line back and does not repeat it.
    let again = publish::Publisher::new(audit.clone(), signer(), file.clone(), None);
    assert!(again.checkpoint().await.is_none());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 2);
    let mut db = Sqlite::open_existing(&path).unwrap();
    let report = verify_checkpoints(&mut db, &text, Some(&signer().verifying_key())).unwrap();
    assert_eq!((report.verified, report.problems.len()), (2, 0));
}

#[test]
fn signing_and_verifying_refuse_an_ambiguous_or_invalid_head() {
    let s = signer();
    let hash = "ab".repeat(32);
    let time = "2026-11-25T10:00:00.000Z";
    for (seq, hash, time) in [
        (0, hash.as_str(), time),
        (-1, &hash, time),
        (i64::MIN, &hash, time),
        (1, &"AB".repeat(32), time),
        (1, &"ab".repeat(31), time),
        (1, &format!("{}\n2", "ab".repeat(31)), time),
        (1, &"zz".repeat(32), time),
        (1, &hash, "yesterday"),
        (1, &hash, "2026-11-25T10:00:00.000Z\n"),
        (1, &hash, ""),
    ] {
        let refused = s.sign(seq, hash, time);
        assert!(
            matches!(refused, Err(CheckpointError::BadCheckpoint(_))),
            "{seq} {hash:?} {time:?}: {refused:?}"
        );
        // A line carrying such fields, signed over the raw bytes, is refused too.
        let forged = Checkpoint {
            seq,
            hash: hash.to_owned(),
            time: time.to_owned(),
            public_key: s.public_key().to_owned(),
            signature: b64(&s.key.sign(&signed_bytes(seq, hash, time)).to_bytes()),
        };
        assert!(!signature_holds(&forged, &s.verifying_key()), "{forged:?}");
    }
    assert!(s.sign(1, &hash, "2026-11-25T10:00:00+01:00").is_ok());
}

#[tokio::test]
async fn a_checkpoint_line_with_an_invalid_seq_is_named_not_a_panic() {
    let (_dir, path, _audit) = store_with_rows(1).await;
    let line = format!(
        r#"{{"seq":{},"hash":"{}","time":"2026-11-25T10:00:00.000Z","public_key":"{}","signature":"{}"}}"#,
        i64::MIN,
        "ab".repeat(32),
        signer().public_key(),
        b64(&[0u8; 64])
    );
    let mut db = Sqlite::open_existing(&path).unwrap();
    let report = verify_checkpoints(&mut db, &line, Some(&signer().verifying_key())).unwrap();
    assert_eq!(report.verified, 0);
    let [problem] = &report.problems[..] else {
        panic!("{:?}", report.problems)
    };
    assert!(problem.contains("seq must be 1 or more"), "{problem}");
    assert_eq!(hash_at(&mut db, i64::MIN).unwrap(), None);
}

fn write_key(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{}\n", hex::encode([7u8; 32]))).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_key_file_others_may_read_is_refused_with_the_fix() {
    let dir = scratch();
    let key = dir.path().join("signing.key");
    let audit = dir.path().join("audit.db");
    for mode in [0o640, 0o604, 0o660, 0o610] {
        write_key(&key, mode);
        let refused = load_signer(None, Some(&key), &audit, false).unwrap_err();
        assert!(
            matches!(refused, CheckpointError::KeyTooOpen { .. }),
            "{mode:o}: {refused}"
        );
        let message = refused.to_string();
        assert!(
            message.contains(&format!("chmod 600 {}", key.display())),
            "{message}"
        );
    }
    write_key(&key, 0o400);
    let (accepted, source) = load_signer(None, Some(&key), &audit, false).unwrap();
    assert_eq!(accepted.public_key(), signer().public_key());
    assert_eq!(source, KeySource::File(key));
}

#[test]
fn a_key_file_behind_a_symlink_is_refused() {
    let dir = scratch();
    let key = dir.path().join("signing.key");
    let audit = dir.path().join("audit.db");
    write_key(&key, 0o600);
    let link = dir.path().join("signing.link");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let refused = load_signer(None, Some(&link), &audit, false).unwrap_err();
    assert!(
        matches!(refused, CheckpointError::KeyIsSymlink { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains(&link.display().to_string()));
}

#[test]
fn a_key_file_owned_by_another_user_is_refused() {
    let dir = scratch();
    let key = dir.path().join("signing.key");
    let audit = dir.path().join("audit.db");
    write_key(&key, 0o600);
    if !nix::unistd::geteuid().is_root() {
        // Only root can give a file away; as anyone else the check is not reachable here.
        return;
    }
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let refused = load_signer(None, Some(&key), &audit, false).unwrap_err();
    assert!(
        matches!(refused, CheckpointError::KeyNotOwned { owner: 65534, .. }),
        "{refused}"
    );
}

#[test]
fn a_planted_default_key_is_checked_not_silently_loaded() {
    let dir = scratch();
    let audit = dir.path().join("audit.db");
    let key = default_key_path(&audit);
    write_key(&key, 0o644);
    let refused = load_signer(None, None, &audit, true).unwrap_err();
    assert!(
        matches!(refused, CheckpointError::KeyTooOpen { .. }),
        "{refused}"
    );
    // The race of two gateways creating it: the loser loads it, checked.
    let refused = generate_key(&key).unwrap_err();
    assert!(
        matches!(refused, CheckpointError::KeyTooOpen { .. }),
        "{refused}"
    );
    std::fs::remove_file(&key).unwrap();
    let elsewhere = dir.path().join("elsewhere.key");
    write_key(&elsewhere, 0o600);
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let refused = generate_key(&key).unwrap_err();
    assert!(
        matches!(refused, CheckpointError::KeyIsSymlink { .. }),
        "{refused}"
    );
}

fn line_count(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |t| t.lines().count())
}

#[tokio::test]
async fn the_publisher_refuses_to_sign_a_rewritten_history() {
    let (_dir, path, audit) = store_with_rows(4).await;
    let file = checkpoints_path(&path);
    let publisher = publish::Publisher::new(audit.clone(), signer(), file.clone(), None);
    assert_eq!(publisher.checkpoint().await.map(|c| c.seq), Some(4));
    rewrite_and_rehash(&path, "UPDATE audit SET tool = 'innocent' WHERE seq = 2");
    add_rows(&audit, 1).await;
    for attempt in 1..=2 {
        assert!(publisher.checkpoint().await.is_none());
        assert_eq!(audit.checkpoint_refusals(), attempt);
    }
    let problem = audit.checkpoint_problem().unwrap();
    assert!(
        problem.contains("row 4 has hash") && problem.contains("rewritten"),
        "{problem}"
    );
    assert_eq!(line_count(&file), 1, "nothing more was signed");
}

#[tokio::test]
async fn the_publisher_refuses_after_rows_were_removed_or_a_later_row_changed() {
    // Rows removed from the end, then new ones written past the signed seq.
    let (_dir, path, audit) = store_with_rows(4).await;
    let publisher = publish::Publisher::new(audit.clone(), signer(), checkpoints_path(&path), None);
    publisher.checkpoint().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("DELETE FROM audit WHERE seq > 2", []).unwrap();
    assert!(publisher.checkpoint().await.is_none(), "a shorter head");
    add_rows(&audit, 3).await;
    assert!(publisher.checkpoint().await.is_none(), "a longer, new tail");
    assert_eq!(audit.checkpoint_refusals(), 2);

    // A row after the signed one changed (not re-hashed): the chain to the new head is broken.
    let (_dir, path, audit) = store_with_rows(2).await;
    let publisher = publish::Publisher::new(audit.clone(), signer(), checkpoints_path(&path), None);
    publisher.checkpoint().await.unwrap();
    add_rows(&audit, 2).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE audit SET decision = 'allowed' WHERE seq = 3", [])
        .unwrap();
    assert!(publisher.checkpoint().await.is_none());
    let problem = audit.checkpoint_problem().unwrap();
    assert!(problem.contains("row 3"), "{problem}");
}

#[tokio::test]
async fn a_rewrite_between_runs_is_caught_at_the_first_checkpoint_after_restart() {
    let (_dir, path, audit) = store_with_rows(3).await;
    let file = checkpoints_path(&path);
    let publisher = publish::Publisher::new(audit.clone(), signer(), file.clone(), None);
    publisher.checkpoint().await.unwrap();
    drop(publisher);
    rewrite_and_rehash(&path, "UPDATE audit SET tool = 'innocent' WHERE seq = 1");
    add_rows(&audit, 1).await;
    let restarted = publish::Publisher::new(audit.clone(), signer(), file.clone(), None);
    assert!(restarted.checkpoint().await.is_none());
    assert_eq!(audit.checkpoint_refusals(), 1);
    assert_eq!(line_count(&file), 1);
}

#[tokio::test]
async fn a_failed_append_is_retried_at_the_next_checkpoint() {
    let (dir, path, audit) = store_with_rows(2).await;
    let later = dir.path().join("later");
    let file = later.join("airlock.db.checkpoints");
    let publisher = publish::Publisher::new(audit.clone(), signer(), file.clone(), None);
    assert!(
        publisher.checkpoint().await.is_none(),
        "the directory is missing"
    );
    std::fs::create_dir(&later).unwrap();
    assert_eq!(publisher.checkpoint().await.map(|c| c.seq), Some(2));
    assert_eq!(line_count(&file), 1);
    let mut db = Sqlite::open_existing(&path).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let report = verify_checkpoints(&mut db, &text, Some(&signer().verifying_key())).unwrap();
    assert_eq!((report.verified, report.problems.len()), (1, 0));
}
