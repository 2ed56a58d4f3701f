use super::*;

/// A directory of the test's own, deleted with everything in it (the db, -wal, -shm)
/// when the returned value is dropped: keep it bound until the test ends.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("airlock-audit-test-")
        .tempdir()
        .unwrap()
}

fn allowed(tool: &str, args: &str) -> Record {
    Record {
        decision: "allowed",
        tool: Some(tool.into()),
        arguments: Some(args.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn rows_are_chained_redacted_and_verifiable() {
    let dir = scratch();
    let path = dir.path().join("audit.db");
    let audit = Audit::open(&path, Redactor::new(&["password"], false).unwrap()).unwrap();
    for i in 0..10 {
        audit
            .record(allowed(
                "echo",
                &format!(r#"{{"i":{i},"password":"hunter2"}}"#),
            ))
            .await;
    }
    let committed = audit
        .commit(allowed("delete", r#"{"id":"7"}"#))
        .await
        .unwrap();
    assert_eq!(committed.seq, 11);
    audit.flush().await;
    let rows = audit.query(Filter::default(), false).await.unwrap();
    assert_eq!(rows.len(), 11);
    assert_eq!(
        rows[0].arguments,
        Some(serde_json::json!({"i": 0, "password": "[redacted]"}))
    );
    assert_eq!(
        rows[0].args_hash.as_deref(),
        Some(arguments_hash(
            &serde_json::json!({"i": 0, "password": "hunter2"})
        ))
        .as_deref()
    );
    assert_eq!(rows[1].prev_hash, rows[0].hash);
    let mut db = Sqlite::open_existing(&path).unwrap();
    assert_eq!(verify(&mut db), Ok(11));
}

#[tokio::test]
async fn editing_a_row_breaks_the_chain_at_that_row() {
    let dir = scratch();
    let path = dir.path().join("audit.db");
    let audit = Audit::open(&path, Redactor::none()).unwrap();
    for _ in 0..5 {
        audit.record(allowed("echo", "{}")).await;
    }
    audit.flush().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE audit SET tool = 'other' WHERE seq = 3", [])
        .unwrap();
    let mut db = Sqlite::open_existing(&path).unwrap();
    let err = verify(&mut db).unwrap_err();
    assert!(err.starts_with("row 3 "), "{err}");
    conn.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
    let err = verify(&mut db).unwrap_err();
    assert!(err.contains("row 3 is missing"), "{err}");
}

#[tokio::test]
async fn filters_and_cursor_pagination() {
    let dir = scratch();
    let path = dir.path().join("audit.db");
    let audit = Audit::open(&path, Redactor::none()).unwrap();
    for i in 0..7 {
        audit
            .record(allowed(if i % 2 == 0 { "a" } else { "b" }, "{}"))
            .await;
    }
    audit.flush().await;
    let page = |cursor| Filter {
        tool: Some("a".into()),
        limit: Some(2),
        cursor,
        ..Default::default()
    };
    let first = audit.query(page(None), true).await.unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 5]);
    let second = audit.query(page(Some(5)), true).await.unwrap();
    assert_eq!(second.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 1]);
}

#[tokio::test]
async fn exports_round_trip() {
    let dir = scratch();
    let path = dir.path().join("audit.db");
    let audit = Audit::open(&path, Redactor::none()).unwrap();
    audit
        .record(allowed("echo", r#"{"text":"a,\"b\"\nc"}"#))
        .await;
    audit.flush().await;
    let rows = audit.query(Filter::default(), false).await.unwrap();
    let mut jsonl = Vec::new();
    export(&rows, ExportFormat::Jsonl, &mut jsonl).unwrap();
    let back: Entry = serde_json::from_slice(jsonl.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(back, rows[0]);
    let mut csv_out = Vec::new();
    export(&rows, ExportFormat::Csv, &mut csv_out).unwrap();
    let mut reader = csv::Reader::from_reader(csv_out.as_slice());
    let record = reader.records().next().unwrap().unwrap();
    assert_eq!(&record[8], r#"{"text":"a,\"b\"\nc"}"#);
    assert_eq!(&record[18], rows[0].hash);
}

#[test]
fn csv_cells_that_a_spreadsheet_would_run_are_quoted_as_text() {
    for (cell, expected) in [
        (
            "=HYPERLINK(\"http://x\",\"y\")",
            "'=HYPERLINK(\"http://x\",\"y\")",
        ),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("\0x", "'\0x"),
        ("  =1+1", "'  =1+1"),
        ("\n@cmd", "'\n@cmd"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("'=already", "'=already"),
        ("", ""),
    ] {
        assert_eq!(csv_text_cell(cell), expected, "{cell:?}");
    }
}

#[tokio::test]
async fn csv_export_neutralises_formulas_and_jsonl_stays_exact() {
    let dir = scratch();
    let path = dir.path().join("audit.db");
    let audit = Audit::open(&path, Redactor::none()).unwrap();
    audit
        .record(Record {
            decision: "denied",
            agent: Some("=HYPERLINK(\"http://evil\",\"click\")".into()),
            session: Some("@session".into()),
            tool: Some("+tool".into()),
            arguments: Some("-1".into()),
            comment: Some(" =1+1".into()),
            wait_ms: Some(-5),
            ..Default::default()
        })
        .await;
    audit.flush().await;
    let rows = audit.query(Filter::default(), false).await.unwrap();
    let mut csv_out = Vec::new();
    export(&rows, ExportFormat::Csv, &mut csv_out).unwrap();
    let mut reader = csv::Reader::from_reader(csv_out.as_slice());
    let record = reader.records().next().unwrap().unwrap();
    assert_eq!(&record[5], "'=HYPERLINK(\"http://evil\",\"click\")");
    assert_eq!(&record[4], "'@session");
    assert_eq!(&record[7], "'+tool");
    assert_eq!(&record[8], "'-1");
    assert_eq!(&record[15], "' =1+1");
    assert_eq!(&record[16], "-5", "numbers Airlock writes stay numbers");
    let mut jsonl = Vec::new();
    export(&rows, ExportFormat::Jsonl, &mut jsonl).unwrap();
    let back: Entry = serde_json::from_slice(jsonl.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(back, rows[0]);
    assert_eq!(
        back.agent.as_deref(),
        Some("=HYPERLINK(\"http://evil\",\"click\")")
    );
}
