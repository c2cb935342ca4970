//! API tokens: `POST /apis/infraos.io/v1/tokens` mints one for a user (the token is in the
//! answer, once; the store keeps its SHA-256), `GET` lists them without secrets,
//! `DELETE …/tokens/<id>` revokes one. Who may do this is RBAC's `Token` kind at cluster
//! scope: minting a token for a user is acting as that user, so grant it like cluster-admin.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infraos_api::Duration;
use infraos_store::{Compare, Txn};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::audit::{self, Record};
use crate::error::ApiError;
use crate::identity::{self, TokenRecord};
use crate::state::AppState;

const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// The token itself: shown once, never stored.
    pub token: String,
    #[serde(flatten)]
    pub record: TokenRecord,
}

fn check(body: &CreateToken, ctx: &Ctx) -> Result<(), ApiError> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    };
    if !name_ok(&body.subject) {
        return Err(ApiError::bad_request(format!(
            "subject: {:?} is not a user name (letters, digits, '-', '_', '.', '@'; \
             no ':' so that it cannot pass for a node, a controller or an OIDC user)",
            body.subject
        )));
    }
    for (i, g) in body.groups.iter().enumerate() {
        if g.is_empty() || g.len() > 253 {
            return Err(ApiError::bad_request(format!(
                "groups[{i}]: must be 1 to 253 characters"
            )));
        }
        let admin = ctx
            .identity
            .groups
            .iter()
            .any(|g| g == infraos_api::kinds::ADMINS_GROUP);
        if g.starts_with("system:") && !admin {
            return Err(ApiError::forbidden(format!(
                "groups[{i}]: only members of {} may hand out system: groups",
                infraos_api::kinds::ADMINS_GROUP
            )));
        }
    }
    if let Some(ttl) = body.ttl
        && (ttl.as_millis() < 1000 || ttl > MAX_TTL)
    {
        return Err(ApiError::bad_request(format!(
            "ttl: must be between 1s and {MAX_TTL}"
        )));
    }
    Ok(())
}

pub async fn create(State(state): State<AppState>, ctx: Ctx, request: Request) -> Response {
    let mut subject = String::new();
    let result: Result<CreatedToken, ApiError> = async {
        let (bytes, _) = super::read_bytes(&state, request).await?;
        let body: CreateToken = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("token: {e}")))?;
        subject.clone_from(&body.subject);
        check(&body, &ctx)?;
        let token = identity::generate_token().map_err(|e| ApiError::internal(e.to_string()))?;
        let hash = identity::hash_token(&token);
        let key = identity::token_key(&hash);
        let now = state.clock.now();
        let mut groups = body.groups.clone();
        groups.sort();
        groups.dedup();
        let record = TokenRecord {
            subject: body.subject.clone(),
            groups,
            id: hex::encode(&hash[..6]),
            description: body.description,
            created: Some(now),
            created_by: ctx.identity.subject.clone(),
            expires: Some(now.plus(body.ttl.unwrap_or(DEFAULT_TTL))),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        let payload = Record {
            actor: &ctx.actor(),
            verb: "create",
            object: audit::object_ref("Token", None, &record.id),
            code: 201,
            reason: Some(format!("for user:{}", record.subject)),
            before: None,
            after: Some(&bytes),
            node: None,
        }
        .payload(now);
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(Compare::absent(key.clone()))
                    .put(key.clone(), bytes.clone())
                    .append(payload),
            )
            .await?;
        state.rbac.observe(&key, out.revision, Some(&bytes));
        Ok(CreatedToken { token, record })
    }
    .await;
    match result {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(e) => {
            audit::refusal(
                &*state.store,
                state.clock.now(),
                &ctx.actor(),
                "create",
                audit::object_ref("Token", None, &subject),
                &e,
            )
            .await;
            e.into_response()
        }
    }
}

async fn all(state: &AppState) -> Result<Vec<(String, TokenRecord)>, ApiError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .range(identity::TOKEN_PREFIX, after.as_deref(), 5000)
            .await?;
        for kv in &page.kvs {
            let record = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("token record is corrupt: {e}")))?;
            out.push((kv.key.clone(), record));
        }
        after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    Ok(out)
}

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let items: Vec<TokenRecord> = all(&state)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| !r.id.is_empty())
        .collect();
    Ok(Json(serde_json::json!({"kind": "TokenList", "items": items})).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = all(&state)
        .await?
        .into_iter()
        .find(|(_, r)| !r.id.is_empty() && r.id == id);
    let Some((key, record)) = found else {
        let e = ApiError::not_found("Token", &id);
        audit::refusal(
            &*state.store,
            state.clock.now(),
            &ctx.actor(),
            "delete",
            audit::object_ref("Token", None, &id),
            &e,
        )
        .await;
        return Err(e);
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
    let payload = Record {
        actor: &ctx.actor(),
        verb: "delete",
        object: audit::object_ref("Token", None, &id),
        code: 200,
        reason: Some(format!("of user:{}", record.subject)),
        before: Some(&bytes),
        after: None,
        node: None,
    }
    .payload(state.clock.now());
    let out = state
        .store
        .txn(Txn::new().delete(key.clone()).append(payload))
        .await?;
    state.rbac.observe(&key, out.revision, None);
    Ok(StatusCode::NO_CONTENT.into_response())
}
