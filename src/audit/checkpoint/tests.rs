use super::*;
use crate::audit::{Audit, Record, Redactor, Sqlite, row_hash, verify};

fn temp_db() -> PathBuf {
    std::env::temp_dir().join(format!(
        "airlock-checkpoint-test-{}.db",
        uuid::Uuid::new_v4()
    ))
}

fn signer() -> Signer {
    Signer::from_seed(&[7u8; 32])
}

async fn store_with_rows(n: usize) -> (PathBuf, Audit) {
    let path = temp_db();
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
    (path, audit)
}

/// Signs the current head of the store, as the gateway does.
fn checkpoint_line(path: &Path, signer: &Signer) -> String {
    let mut db = Sqlite::open_existing(path).unwrap();
    let (seq, hash) = head(&mut db).unwrap().unwrap();
    serde_json::to_string(&signer.sign(seq, &hash, "2026-11-25T10:00:00.000Z")).unwrap()
}

#[test]
fn a_checkpoint_verifies_with_its_key_and_not_after_any_change() {
    let s = signer();
    let c = s.sign(12, &"ab".repeat(32), "2026-11-25T10:00:00.000Z");
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
    let audit = temp_db();
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
    let missing = load_signer(None, None, &temp_db(), false).unwrap_err();
    assert!(
        matches!(missing, CheckpointError::NoKey { .. }),
        "{missing}"
    );
}

#[tokio::test]
async fn an_untouched_store_matches_its_checkpoints() {
    let (path, audit) = store_with_rows(3).await;
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
    let (path, _audit) = store_with_rows(5).await;
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
    let (path, _audit) = store_with_rows(4).await;
    let s = signer();
    let text = checkpoint_line(&path, &s);
    // Edit row 2, then recompute every hash from there on, as an attacker
    // with the file and the documented formula can.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE audit SET tool = 'innocent' WHERE seq = 2", [])
        .unwrap();
    let mut entries = Vec::new();
    Sqlite::open_existing(&path)
        .unwrap()
        .scan(&mut |e| {
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
    let (path, _audit) = store_with_rows(2).await;
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
    // Without a key of one's own, each line's key is trusted: the forgery passes.
    let trusting = verify_checkpoints(&mut db, &text, None).unwrap();
    assert_eq!((trusting.verified, trusting.keys_seen.len()), (2, 2));
}

#[tokio::test]
async fn the_publisher_signs_only_when_the_head_moved() {
    let (path, audit) = store_with_rows(2).await;
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
