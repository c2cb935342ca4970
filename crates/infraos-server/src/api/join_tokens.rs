//! Join tokens for administrators: `POST /apis/infraos.io/v1/jointokens` mints one (the token
//! is in the answer, once), `GET` lists them without secrets, `DELETE …/jointokens/<id>`
//! revokes one.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infraos_api::Duration;
use infraos_api::kinds::Tier;
use infraos_store::{Compare, Txn};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::audit::{self, Record};
use crate::error::ApiError;
use crate::join_tokens::{self, JoinTokenRecord};
use crate::state::AppState;

const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJoinToken {
    #[serde(default = "default_ttl")]
    pub ttl: Duration,
    #[serde(default)]
    pub uses: Option<u32>,
    #[serde(default = "default_tiers")]
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    /// Mint the token for this node name only: it may join under that name even where a Node
    /// already holds it (re-provisioning a machine, adopting an operator-declared Node).
    #[serde(default)]
    pub node: Option<String>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// What a token grants unless it says otherwise: report inventory and run workloads.
fn default_tiers() -> Vec<Tier> {
    vec![Tier::Inventory, Tier::Execute]
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedJoinToken {
    /// The token itself: shown once, never stored.
    pub token: String,
    #[serde(flatten)]
    pub record: JoinTokenRecord,
}

fn forbid_nodes(ctx: &Ctx) -> Result<(), ApiError> {
    match ctx.identity.node() {
        Some(node) => Err(ApiError::forbidden(format!(
            "node:{node} may not manage join tokens"
        ))),
        None => Ok(()),
    }
}

pub async fn create(State(state): State<AppState>, ctx: Ctx, request: Request) -> Response {
    let result = async {
        forbid_nodes(&ctx)?;
        let (bytes, _) = super::read_bytes(&state, request).await?;
        let body: CreateJoinToken = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::from_slice(b"{}")
        } else {
            serde_json::from_slice(&bytes)
        }
        .map_err(|e| ApiError::bad_request(format!("join token: {e}")))?;
        if body.ttl.as_millis() == 0 || body.ttl > MAX_TTL {
            return Err(ApiError::bad_request(format!(
                "ttl: must be between 1s and {MAX_TTL}"
            )));
        }
        if body.uses == Some(0) {
            return Err(ApiError::bad_request("uses: must be at least 1"));
        }
        if body.tiers.is_empty() {
            return Err(ApiError::bad_request("tiers: grant at least one tier"));
        }
        super::agent::check_labels(&body.labels)?;
        if let Some(node) = &body.node
            && let Some(problem) = infraos_api::names::object_name_problem(node)
        {
            return Err(ApiError::bad_request(format!(
                "node: {:?} {problem}",
                infraos_api::text::bounded(node, infraos_api::text::ERROR_STRING_MAX)
            )));
        }
        // A token that may take over a node's name is for one machine: one use unless the
        // administrator asked for more.
        let uses = match (&body.node, body.uses) {
            (Some(_), None) => Some(1),
            (_, uses) => uses,
        };
        let token = format!(
            "{}{}",
            join_tokens::TOKEN_PREFIX,
            crate::identity::generate_token()
                .map_err(|e| ApiError::internal(e.to_string()))?
                .trim_start_matches("ios_")
        );
        let (key, id) = join_tokens::key_for(&token);
        let now = state.clock.now();
        let mut tiers = body.tiers.clone();
        tiers.sort();
        tiers.dedup();
        let record = JoinTokenRecord {
            id: id.clone(),
            description: body.description,
            created: now,
            created_by: ctx.identity.subject.clone(),
            expires: now.plus(body.ttl),
            uses,
            used: 0,
            tiers,
            labels: body.labels,
            node: body.node,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        let payload = Record {
            actor: &ctx.actor(),
            verb: "create",
            object: audit::object_ref("JoinToken", None, &id),
            code: 201,
            reason: None,
            before: None,
            after: Some(&bytes),
            node: None,
        }
        .payload(now);
        state
            .store
            .txn(
                Txn::new()
                    .when(Compare::absent(key.clone()))
                    .put(key, bytes)
                    .append(payload),
            )
            .await?;
        Ok(CreatedJoinToken { token, record })
    }
    .await;
    match result {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn all(state: &AppState) -> Result<Vec<(String, JoinTokenRecord)>, ApiError> {
    let page = state.store.range(join_tokens::PREFIX, None, 10_000).await?;
    page.kvs
        .iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value)
                .map(|r| (kv.key.clone(), r))
                .map_err(|e| ApiError::internal(format!("join token record is corrupt: {e}")))
        })
        .collect()
}

pub async fn list(State(state): State<AppState>, ctx: Ctx) -> Result<Response, ApiError> {
    forbid_nodes(&ctx)?;
    let items: Vec<JoinTokenRecord> = all(&state).await?.into_iter().map(|(_, r)| r).collect();
    Ok(Json(serde_json::json!({"kind": "JoinTokenList", "items": items})).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    forbid_nodes(&ctx)?;
    let Some((key, record)) = all(&state).await?.into_iter().find(|(_, r)| r.id == id) else {
        return Err(ApiError::not_found("JoinToken", &id));
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
    let payload = Record {
        actor: &ctx.actor(),
        verb: "delete",
        object: audit::object_ref("JoinToken", None, &id),
        code: 200,
        reason: None,
        before: Some(&bytes),
        after: None,
        node: None,
    }
    .payload(state.clock.now());
    state
        .store
        .txn(Txn::new().delete(key).append(payload))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
