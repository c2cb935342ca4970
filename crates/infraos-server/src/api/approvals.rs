//! Approving high-risk claims: `POST …/claims/<name>/approve` (`{"comment": "…"}`) records the
//! caller's approval; once the claim has as many as it needs it becomes Pending and the
//! scheduler sees it. `POST …/claims/<name>/refuse` (`{"reason": "…"}`) fails it for good.
//! Both need the RBAC verb `approve` on Claims; nobody approves their own claim, and nobody
//! approves twice. Every decision, and every refused attempt, is audited.

use axum::Json;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use infraos_api::Kind as _;
use infraos_api::kinds::{ApprovalRecord, ClaimPhase, ClaimSpec};
use infraos_store::{Compare, Txn};

use super::Ctx;
use crate::audit::{self, Record};
use crate::error::ApiError;
use crate::objects::{self, decode_typed, encode_typed, set_revision};
use crate::state::AppState;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    comment: String,
    #[serde(default)]
    reason: String,
}

const MAX_TEXT: usize = 1024;

/// `sub` is `approve` or `refuse`.
pub async fn decide(
    state: &AppState,
    ctx: &Ctx,
    ns: &str,
    name: &str,
    sub: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), state.config.max_body_bytes)
        .await
        .map_err(|_| ApiError::too_large("request body too large"))?;
    let body: Decision = if bytes.iter().all(u8::is_ascii_whitespace) {
        Decision::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("{sub} body: {e}")))?
    };
    let text = if sub == "refuse" {
        if body.reason.trim().is_empty() {
            return Err(ApiError::invalid_field(
                "Claim",
                name,
                "reason",
                "say why the claim is refused",
            ));
        }
        body.reason
    } else {
        body.comment
    };
    if text.len() > MAX_TEXT {
        return Err(ApiError::bad_request(format!(
            "the {} is longer than {MAX_TEXT} bytes",
            if sub == "refuse" { "reason" } else { "comment" }
        )));
    }
    let key = objects::key(ClaimSpec::INFO, Some(ns), name);
    let who = ctx.identity.subject.clone();
    for _ in 0..5 {
        let kv = state
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("Claim", name))?;
        let mut claim = decode_typed::<ClaimSpec>(&kv)?;
        let status = claim.status.get_or_insert_with(Default::default);
        let Some(approval) = status.approval.as_mut() else {
            return Err(ApiError::conflict(
                "Claim",
                name,
                format!("claim {name:?} does not need approval"),
            ));
        };
        if status.phase != ClaimPhase::PendingApproval {
            return Err(ApiError::conflict(
                "Claim",
                name,
                format!(
                    "claim {name:?} is {}, not waiting for approval",
                    status.phase.as_str()
                ),
            ));
        }
        if approval.requester == who {
            return Err(ApiError::forbidden(format!(
                "{who} requested claim {name:?} and may not {sub} it: approvals come from others"
            )));
        }
        if approval.approvals.iter().any(|a| a.by == who) {
            return Err(ApiError::conflict(
                "Claim",
                name,
                format!("{who} has approved claim {name:?} already; it needs someone else"),
            ));
        }
        let now = state.clock.now();
        let record = ApprovalRecord {
            by: who.clone(),
            time: now,
            comment: text.clone(),
        };
        if sub == "refuse" {
            approval.refusal = Some(record);
            status.phase = ClaimPhase::Failed;
            status.reason = Some("Refused".into());
            status.message = Some(format!("refused by {who}: {text}"));
        } else {
            approval.approvals.push(record);
            let (have, need) = (approval.approvals.len(), approval.required as usize);
            if have >= need {
                status.phase = ClaimPhase::Pending;
                status.reason = None;
                status.message = Some(format!("approved by {have} of {need}"));
            } else {
                status.message = Some(format!(
                    "approved by {have} of {need}; waiting for {} more",
                    need - have
                ));
            }
        }
        status.last_transition_time = Some(now);
        let bytes = encode_typed(&claim);
        let mut object = audit::object_ref("Claim", Some(ns), name);
        object.uid = Some(claim.metadata.uid.clone());
        object.subresource = Some(sub.to_string());
        let payload = Record {
            actor: &ctx.actor(),
            verb: sub,
            object,
            code: 200,
            reason: (!text.is_empty()).then(|| text.clone()),
            before: Some(&kv.value),
            after: Some(&bytes),
            node: None,
        }
        .payload(now);
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(Compare::unchanged(key.clone(), kv.mod_revision))
                    .put(key.clone(), bytes)
                    .append(payload),
            )
            .await?;
        if out.succeeded {
            let mut value = claim.to_value();
            set_revision(&mut value, out.revision);
            return Ok(Json(value).into_response());
        }
    }
    Err(ApiError::stale("Claim", name))
}
