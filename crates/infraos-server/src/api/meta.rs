//! Health, readiness, version, discovery and the OpenAPI document.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::state::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready once the controllers have synced and the store answers.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "controllers are starting");
    }
    match state.store.current_revision().await {
        Ok(_) => (StatusCode::OK, "ok"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}

/// This replica's view of the leader election: who it is, who leads, and whether it does.
pub async fn leader(State(state): State<AppState>) -> Json<serde_json::Value> {
    let status = state.leader.borrow().clone();
    Json(serde_json::json!({
        "identity": status.identity,
        "holder": status.holder,
        "leading": status.term.is_some(),
        "epoch": status.term.map(|t| t.epoch),
    }))
}

pub async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "apiVersion": infraos_api::API_VERSION,
    }))
}

pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json((*state.openapi).clone())
}

pub async fn api_groups() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{
            "name": infraos_api::object::API_GROUP,
            "versions": [{"groupVersion": infraos_api::API_VERSION, "version": "v1"}],
            "preferredVersion": {"groupVersion": infraos_api::API_VERSION, "version": "v1"},
        }],
    }))
}

pub async fn api_resources() -> Json<serde_json::Value> {
    let resources: Vec<_> = infraos_api::object::kinds()
        .iter()
        .map(|k| {
            let verbs: &[&str] = if k.user_writable {
                &[
                    "create", "delete", "get", "list", "patch", "update", "watch",
                ]
            } else {
                &["get", "list", "watch"]
            };
            serde_json::json!({
                "name": k.plural,
                "singularName": k.singular,
                "namespaced": k.namespaced,
                "kind": k.kind,
                "shortNames": k.short_names,
                "verbs": verbs,
            })
        })
        .collect();
    Json(serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": infraos_api::API_VERSION,
        "resources": resources,
    }))
}
