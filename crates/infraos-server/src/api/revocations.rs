//! Revoking a node: `POST /apis/infraos.io/v1/nodes/<name>/revocation` refuses the node's
//! certificate from then on (every replica, within a watch round-trip) and its joins, and
//! cordons it; its heartbeats stop, so it turns NotReady and its allocations are handled as
//! lost once their leases end, like any node that went away. `DELETE` on the same path
//! reinstates it; the agent then joins again with a join token.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infraos_api::Kind as _;
use infraos_api::kinds::NodeSpec;
use infraos_store::{Compare, Txn};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::audit::{self, Record};
use crate::error::ApiError;
use crate::objects::{self, decode_typed, encode_typed};
use crate::state::AppState;

/// Where revocations live: `/infraos/revokednodes/<node>`.
pub use crate::authz::REVOKED_NODES as PREFIX;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRevocation {
    pub node: String,
    pub revoked_at: infraos_api::Time,
    pub revoked_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Whether the node was cordoned already: reinstating uncordons it only if not.
    #[serde(default)]
    pub was_unschedulable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: String,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    match infraos_api::names::object_name_problem(name) {
        Some(p) => Err(ApiError::bad_request(format!("node name {name:?}: {p}"))),
        None => Ok(()),
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let result = async {
        check_name(&name)?;
        let (bytes, _) = super::read_bytes(&state, request).await?;
        let body: RevokeBody = if bytes.iter().all(u8::is_ascii_whitespace) {
            RevokeBody::default()
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("revocation: {e}")))?
        };
        let node_key = objects::key(NodeSpec::INFO, None, &name);
        let revocation_key = format!("{PREFIX}{name}");
        for _ in 0..5 {
            let now = state.clock.now();
            let kv = state
                .store
                .get(&node_key)
                .await?
                .ok_or_else(|| ApiError::not_found("Node", &name))?;
            let mut node = decode_typed::<NodeSpec>(&kv)?;
            let was_unschedulable = node.spec.unschedulable;
            node.spec.unschedulable = true;
            let node_bytes = encode_typed(&node);
            let record = NodeRevocation {
                node: name.clone(),
                revoked_at: now,
                revoked_by: ctx.identity.subject.clone(),
                reason: body.reason.clone(),
                was_unschedulable,
            };
            let record_bytes =
                serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
            let mut object = audit::object_ref("Node", None, &name);
            object.uid = Some(node.metadata.uid.clone());
            object.subresource = Some("revocation".into());
            let payload = Record {
                actor: &ctx.actor(),
                verb: "revoke",
                object,
                code: 201,
                reason: (!body.reason.is_empty()).then(|| body.reason.clone()),
                before: Some(&kv.value),
                after: Some(&node_bytes),
                node: Some(name.clone()),
            }
            .payload(now);
            let out = state
                .store
                .txn(
                    Txn::new()
                        .when(Compare::unchanged(node_key.clone(), kv.mod_revision))
                        .put(node_key.clone(), node_bytes)
                        .put(revocation_key.clone(), record_bytes.clone())
                        .append(payload),
                )
                .await?;
            if out.succeeded {
                state
                    .rbac
                    .observe(&revocation_key, out.revision, Some(&record_bytes));
                return Ok(record);
            }
        }
        Err(ApiError::conflict(
            "Node",
            &name,
            "the node kept changing; try again",
        ))
    }
    .await;
    match result {
        Ok(record) => (StatusCode::CREATED, Json(record)).into_response(),
        Err(e) => refusal(&state, &ctx, "revoke", &name, e).await,
    }
}

pub async fn reinstate(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Response {
    let result = async {
        check_name(&name)?;
        let key = format!("{PREFIX}{name}");
        let kv = state
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("NodeRevocation", &name))?;
        let revocation: NodeRevocation = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("revocation record is corrupt: {e}")))?;
        let mut txn = Txn::new()
            .when(Compare::unchanged(key.clone(), kv.mod_revision))
            .delete(key.clone());
        // Uncordoned again, unless it was cordoned before the revocation.
        let node_key = objects::key(NodeSpec::INFO, None, &name);
        if !revocation.was_unschedulable
            && let Some(node_kv) = state.store.get(&node_key).await?
        {
            let mut node = decode_typed::<NodeSpec>(&node_kv)?;
            node.spec.unschedulable = false;
            txn = txn
                .when(Compare::unchanged(node_key.clone(), node_kv.mod_revision))
                .put(node_key, encode_typed(&node));
        }
        let mut object = audit::object_ref("Node", None, &name);
        object.subresource = Some("revocation".into());
        let payload = Record {
            actor: &ctx.actor(),
            verb: "reinstate",
            object,
            code: 204,
            reason: None,
            before: Some(&kv.value),
            after: None,
            node: Some(name.clone()),
        }
        .payload(state.clock.now());
        let out = state.store.txn(txn.append(payload)).await?;
        if !out.succeeded {
            return Err(ApiError::conflict(
                "Node",
                &name,
                "the node or its revocation changed; try again",
            ));
        }
        state.rbac.observe(&key, out.revision, None);
        Ok(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refusal(&state, &ctx, "reinstate", &name, e).await,
    }
}

async fn refusal(state: &AppState, ctx: &Ctx, verb: &str, name: &str, e: ApiError) -> Response {
    let mut object = audit::object_ref("Node", None, name);
    object.subresource = Some("revocation".into());
    audit::refusal(
        &*state.store,
        state.clock.now(),
        &ctx.actor(),
        verb,
        object,
        &e,
    )
    .await;
    e.into_response()
}
