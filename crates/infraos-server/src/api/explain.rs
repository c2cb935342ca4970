//! `GET …/namespaces/<ns>/claims/<name>/explain[?revision=N]`: replays the claim's recorded
//! scheduling decision (or, with `revision`, decides it afresh on the store as it was then).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::Ctx;
use crate::error::ApiError;
use crate::explain::{self, Replay};
use crate::state::AppState;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainParams {
    #[serde(default)]
    pub revision: Option<u64>,
}

pub async fn claim(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    super::Params(params): super::Params<ExplainParams>,
) -> Result<Json<Replay>, ApiError> {
    // The replay sees every project; the caller sees the claims they may get.
    let rbac = &state.rbac;
    let identity = &ctx.identity;
    let shown = |key: &str| match key.split_once('/') {
        Some((project, claim)) => rbac.allows(
            identity,
            "get",
            "Claim",
            Some(claim),
            &rbac.project_scope(project),
        ),
        None => false,
    };
    Ok(Json(
        explain::replay(&state, &ns, &name, params.revision, &shown).await?,
    ))
}
