//! Claim actions: `POST .../claims/<name>/renew` extends the lease, `.../release` ends it.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use infraos_api::Duration;
use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationSpec, ClaimSpec, MAX_LEASE, MIN_LEASE};
use infraos_store::{Compare, Txn};

use super::Ctx;
use crate::audit::{self, Record};
use crate::border::{ObjectPath, refused};
use crate::error::ApiError;
use crate::lease::{self, LeaseError};
use crate::objects::{self, decode_typed, encode_typed, set_revision};
use crate::state::AppState;

pub async fn action(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ObjectPath,
    request: Request,
) -> Result<Response, ApiError> {
    let (info, p) = path.resolve(false, false)?;
    let (ns, name) = (
        p.namespace().unwrap_or_default(),
        p.name.as_deref().unwrap_or_default(),
    );
    let sub = p.subresource.as_deref().unwrap_or_default();
    if info.kind != "Claim" || !matches!(sub, "renew" | "release" | "approve" | "refuse") {
        return Err(ApiError::no_route(format!(
            "{}/{sub} does not accept POST",
            info.plural
        )));
    }
    let result = async {
        if matches!(sub, "approve" | "refuse") {
            return super::approvals::decide(&state, &ctx, ns, name, sub, request).await;
        }
        let duration = if sub == "renew" {
            requested_duration(&state, request).await?
        } else {
            None
        };
        act(&state, &ctx, ns, name, sub, duration, None).await
    }
    .await;
    Ok(result.unwrap_or_else(|e| {
        let mut object = audit::object_ref("Claim", Some(ns), name);
        object.subresource = Some(sub.to_string());
        refused(sub, object, e)
    }))
}

async fn requested_duration(
    state: &AppState,
    request: Request,
) -> Result<Option<Duration>, ApiError> {
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large("request body too large"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RenewBody {
        duration: Option<Duration>,
    }
    let body: RenewBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("renew body: {e}")))?;
    if let Some(d) = body.duration
        && (d < MIN_LEASE || d > MAX_LEASE)
    {
        return Err(ApiError::invalid_field(
            "Claim",
            "",
            "duration",
            format!("must be between {MIN_LEASE} and {MAX_LEASE}"),
        ));
    }
    Ok(body.duration)
}

/// Renews or releases a claim's lease. `fence`, for agents, is the fencing epoch they act
/// under: a newer allocation of the claim refuses them.
pub(crate) async fn act(
    state: &AppState,
    ctx: &Ctx,
    ns: &str,
    name: &str,
    sub: &str,
    duration: Option<Duration>,
    fence: Option<u64>,
) -> Result<Response, ApiError> {
    let claim_key = objects::key(ClaimSpec::INFO, Some(ns), name);
    let alloc_key = objects::key(AllocationSpec::INFO, Some(ns), name);
    for _ in 0..5 {
        let claim_kv = state
            .store
            .get(&claim_key)
            .await?
            .ok_or_else(|| ApiError::not_found("Claim", name))?;
        let mut claim = decode_typed::<ClaimSpec>(&claim_kv)?;
        let Some(alloc_kv) = state.store.get(&alloc_key).await? else {
            let phase = claim
                .status
                .as_ref()
                .map_or("Pending", |s| s.phase.as_str());
            return Err(ApiError::conflict(
                "Claim",
                name,
                format!("claim {name:?} has no allocation (it is {phase})"),
            ));
        };
        let mut allocation = decode_typed::<AllocationSpec>(&alloc_kv)?;
        if let Some(epoch) = fence {
            let current = allocation
                .status
                .as_ref()
                .map_or(0, |s| s.lease.fencing_epoch);
            if current != epoch {
                return Err(ApiError::conflict(
                    "Claim",
                    name,
                    format!("stale fencing epoch {epoch} (the claim is at epoch {current})"),
                ));
            }
        }
        let now = state.clock.now();
        let renew_for = duration.unwrap_or(claim.spec.lease.duration);
        let outcome = match sub {
            "renew" => lease::renew(&mut claim, &mut allocation, now, renew_for).map(drop),
            _ => lease::release(&mut claim, &mut allocation, now, "Released"),
        };
        if let Err(e) = outcome {
            let reason = match e {
                LeaseError::Expired(_) => "lease expired",
                LeaseError::Preempting(_) => "being preempted",
                _ => "not allocated",
            };
            return Err(ApiError::conflict(
                "Claim",
                name,
                format!("cannot {sub} claim {name:?} ({reason}): {e}"),
            ));
        }
        let claim_bytes = encode_typed(&claim);
        let alloc_bytes = encode_typed(&allocation);
        let mut object = audit::object_ref("Claim", Some(ns), name);
        object.uid = Some(claim.metadata.uid.clone());
        object.subresource = Some(sub.to_string());
        let payload = Record {
            actor: &ctx.actor(),
            verb: sub,
            object,
            code: 200,
            reason: None,
            before: Some(&alloc_kv.value),
            after: Some(&alloc_bytes),
            node: allocation.spec.node.clone(),
        }
        .payload(now);
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(Compare::unchanged(claim_key.clone(), claim_kv.mod_revision))
                    .when(Compare::unchanged(alloc_key.clone(), alloc_kv.mod_revision))
                    .put(claim_key.clone(), claim_bytes)
                    .put(alloc_key.clone(), alloc_bytes)
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
