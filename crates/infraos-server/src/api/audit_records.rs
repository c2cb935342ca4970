//! `GET /apis/infraos.io/v1/auditrecords?from=N&limit=M`: the audit chain, oldest first.
//! `GET /apis/infraos.io/v1/auditrecords/head`: the chain's head, signed now by the server
//! (what `infraos audit export` ends with, so that a truncated tail is caught).

use axum::Json;
use axum::extract::State;
use infraos_api::audit::{AuditHead, AuditRecord};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

const MAX_PAGE: usize = 5000;

#[derive(Clone, Debug, Deserialize)]
pub struct Params {
    from: Option<String>,
    limit: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    super::Params(p): super::Params<Params>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let from = match p.from.as_deref() {
        None | Some("") => 1,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("from: {v:?} is not a sequence number")))?,
    };
    let limit = match p.limit.as_deref() {
        None | Some("") => MAX_PAGE,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("limit: {v:?} is not a number")))?
            .clamp(1, MAX_PAGE),
    };
    let head = state.store.ledger_head().await?;
    let entries = state.store.ledger_range(from, limit).await?;
    let mut items = Vec::with_capacity(entries.len());
    for e in entries {
        let entry: serde_json::Value = serde_json::from_slice(&e.payload).map_err(|err| {
            ApiError::internal(format!("audit record {} is not JSON: {err}", e.seq))
        })?;
        items.push(AuditRecord {
            seq: e.seq,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
            entry,
        });
    }
    let next = items.last().map(|r| r.seq + 1).filter(|n| *n <= head.seq);
    Ok(Json(serde_json::json!({
        "apiVersion": infraos_api::API_VERSION,
        "kind": "AuditRecordList",
        "metadata": {
            "headSeq": head.seq,
            "headHash": hex::encode(head.hash),
            "next": next,
        },
        "items": items,
    })))
}

/// The signed head: `{"kind": "AuditHead", seq, hash, time, keyId, signature}`.
pub async fn head(State(state): State<AppState>) -> Result<Json<AuditHead>, ApiError> {
    let head = state.store.ledger_head().await?;
    let signed = crate::audit::sign_head(&state.signer, head, state.clock.now())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(signed))
}
