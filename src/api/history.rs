//! History details: `GET /api/audit/entries/{seq}` (one row in full, its
//! place in the hash chain and the rows of the same approval) and
//! `POST /api/audit/verify` (the check `airlock audit verify` runs, plus the
//! newest signed checkpoint).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, Approver};
use crate::audit::{self, AuditError, Filter, checkpoint};
use crate::gateway::Gateway;

fn unavailable(e: AuditError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        e.to_string(),
    )
}

pub(super) async fn entry(
    State(gw): State<Gateway>,
    _approver: Approver,
    Path(seq): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let seq: i64 = seq.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`{seq}` is not a row number (the `seq` of an audit entry)"),
        )
    })?;
    gw.audit.flush().await;
    let found = gw
        .audit
        .read(move |db| {
            let Some(entry) = audit::row_at(db, seq)? else {
                return Ok(None);
            };
            let previous = audit::row_at(db, seq - 1)?;
            let last = checkpoint::head(db)?.map_or(seq, |(s, _)| s);
            let related = match &entry.pending_id {
                Some(id) => db.query(
                    &Filter {
                        pending_id: Some(id.clone()),
                        limit: Some(50),
                        ..Default::default()
                    },
                    false,
                )?,
                None => Vec::new(),
            };
            Ok(Some((entry, previous, last, related)))
        })
        .await
        .map_err(unavailable)?;
    let Some((entry, previous, last, related)) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no audit entry with seq {seq}"),
        ));
    };
    let hash_ok = audit::row_hash(&entry.prev_hash, &entry) == entry.hash;
    let links = match &previous {
        Some(p) => p.hash == entry.prev_hash,
        None => seq == 1 && entry.prev_hash == audit::GENESIS,
    };
    let related: Vec<Value> = related
        .iter()
        .filter(|r| r.seq != entry.seq)
        .map(|r| json!({"seq": r.seq, "decision": r.decision, "at": r.at, "decider": r.decider}))
        .collect();
    Ok(Json(json!({
        "entry": entry,
        "chain": {
            "position": seq,
            "last": last,
            "hash_matches_row": hash_ok,
            "links_to_previous": links,
        },
        "related": related,
    })))
}

pub(super) async fn verify(
    State(gw): State<Gateway>,
    _approver: Approver,
) -> Result<Json<Value>, ApiError> {
    gw.audit.flush().await;
    let file = checkpoint::checkpoints_path(&gw.config.audit.path);
    let key = gateway_key(&gw);
    let (chain, checkpoints) = gw
        .audit
        .read(move |db| {
            let chain = audit::verify(db);
            let checkpoints = match std::fs::read_to_string(&file) {
                Ok(text) => Some((
                    file,
                    checkpoint::verify_checkpoints(db, &text, key.as_ref())?,
                )),
                Err(_) => None,
            };
            Ok((chain, checkpoints))
        })
        .await
        .map_err(unavailable)?;
    let checkpoints = checkpoints.map(|(file, report)| {
        json!({
            "file": file.display().to_string(),
            "verified": report.verified,
            "problems": report.problems,
            "latest": report.latest.map(|c| json!({
                "seq": c.seq, "hash": c.hash, "time": c.time, "public_key": c.public_key,
            })),
        })
    });
    let (ok, rows, problem) = match chain {
        Ok(rows) => (true, Some(rows), None),
        Err(problem) => (false, None, Some(problem)),
    };
    let checkpoints_ok = checkpoints
        .as_ref()
        .is_none_or(|c| c["problems"].as_array().is_none_or(Vec::is_empty));
    Ok(Json(json!({
        "ok": ok && checkpoints_ok,
        "chain": { "ok": ok, "rows": rows, "problem": problem },
        "checkpoints": checkpoints,
        "verified_at": audit::now_rfc3339(),
    })))
}

/// The public key this gateway signs checkpoints with (checkpoints are
/// checked against it, not against the key each line carries).
fn gateway_key(gw: &Gateway) -> Option<ed25519_dalek::VerifyingKey> {
    let env = std::env::var(checkpoint::KEY_ENV).ok();
    checkpoint::load_signer(
        env.as_deref().filter(|v| !v.trim().is_empty()),
        gw.config.audit.checkpoints.signing_key_file.as_deref(),
        &gw.config.audit.path,
        false,
    )
    .ok()
    .map(|(signer, _)| signer.verifying_key())
}
