//! `GET /apis/infraos.io/v1/signingkey`: the server's public signing key, for `infraos audit
//! verify` when no key is pinned, and for an auditor to pin (compare it with `signing.pub`).

use axum::Json;
use axum::extract::State;

use crate::state::AppState;

pub async fn get(State(state): State<AppState>) -> Json<serde_json::Value> {
    let key = state.signer.public_key();
    Json(serde_json::json!({
        "apiVersion": infraos_api::API_VERSION,
        "kind": "SigningKey",
        "algorithm": key.algorithm(),
        "publicKey": key,
        "keyId": key.key_id(),
    }))
}
