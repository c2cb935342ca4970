//! Approving high-risk claims: `POST …/claims/<name>/approve` (`{"comment": "…"}`) records the
//! caller's approval; once the claim has as many as it needs it becomes Pending and the
//! scheduler sees it. `POST …/claims/<name>/refuse` (`{"reason": "…"}`) fails it for good.
//! Both need the RBAC verb `approve` on Claims; nobody approves their own claim, and nobody
//! approves twice. Every decision, and every refused attempt, is audited.

use axum::Json;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use infraos_api::kinds::{ApprovalRecord, ClaimPhase, ClaimSpec};

use super::Ctx;
use crate::error::ApiError;
use crate::objects::set_revision;
use crate::state::AppState;
use crate::update::{Audit, Decision, Target, update_at};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DecisionBody {
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
    let body: DecisionBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
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
    let who = ctx.identity.subject.clone();
    let verb: &'static str = if sub == "refuse" { "refuse" } else { "approve" };
    let actor = ctx.actor();
    let target = Target {
        namespace: Some(ns),
        name,
        actor: &actor,
    };
    let missing = || ApiError::not_found("Claim", name);
    let (claim, revision) = update_at::<ClaimSpec, _>(state, target, missing, |claim, now| {
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
                "{who} requested claim {name:?} and may not {verb} it: approvals come from others"
            )));
        }
        if approval.approvals.iter().any(|a| a.by == who) {
            return Err(ApiError::conflict(
                "Claim",
                name,
                format!("{who} has approved claim {name:?} already; it needs someone else"),
            ));
        }
        let record = ApprovalRecord {
            by: who.clone(),
            time: now,
            comment: text.clone(),
        };
        if verb == "refuse" {
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
        Ok(Decision::Write {
            audit: Audit {
                verb,
                subresource: Some(verb),
                reason: (!text.is_empty()).then(|| text.clone()),
                node: None,
            },
            result: claim.clone(),
        })
    })
    .await?;
    let mut value = claim.to_value();
    if let Some(revision) = revision {
        set_revision(&mut value, revision);
    }
    Ok(Json(value).into_response())
}
