//! `GET …/namespaces/<ns>/claims/<name>/log[?follow=true&stream=stderr&tail=N]`: the claim's
//! workload output, streamed from the agent of the node it runs on. The server dials the
//! agent with its own client certificate (kubelet-style); logs never pass through the store.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationSpec, NodeSpec};
use serde::Deserialize;

use super::Ctx;
use crate::error::ApiError;
use crate::objects::{self, decode_typed};
use crate::state::AppState;

#[derive(Clone, Debug, Deserialize)]
pub struct LogParams {
    #[serde(default)]
    pub follow: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub tail: Option<u64>,
}

pub async fn claim_log(
    State(state): State<AppState>,
    _ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    super::Params(params): super::Params<LogParams>,
) -> Result<Response, ApiError> {
    let stream = params.stream.as_deref().unwrap_or("stdout");
    if !matches!(stream, "stdout" | "stderr") {
        return Err(ApiError::bad_request("stream: must be stdout or stderr"));
    }
    let follow = matches!(params.follow.as_deref(), Some("true" | "1" | ""));
    let key = objects::key(AllocationSpec::INFO, Some(&ns), &name);
    let kv = state.store.get(&key).await?.ok_or_else(|| {
        ApiError::conflict(
            "Claim",
            &name,
            format!("claim {ns}/{name} has no allocation, so nothing ran"),
        )
    })?;
    let allocation = decode_typed::<AllocationSpec>(&kv)?;
    if allocation.spec.workload.is_none() {
        return Err(ApiError::conflict(
            "Claim",
            &name,
            format!("claim {ns}/{name} has no workload"),
        ));
    }
    let node = allocation
        .spec
        .node
        .clone()
        .ok_or_else(|| ApiError::conflict("Claim", &name, "the claim has no node"))?;
    let node_kv = state
        .store
        .get(&objects::key(NodeSpec::INFO, None, &node))
        .await?
        .ok_or_else(|| ApiError::unavailable(format!("node {node} is gone")))?;
    let address = decode_typed::<NodeSpec>(&node_kv)?
        .status
        .and_then(|s| s.agent)
        .and_then(|a| a.address)
        .ok_or_else(|| ApiError::unavailable(format!("node {node} has no agent serving logs")))?;
    let uid = &allocation.metadata.uid;
    let (client, base) = state.agents.client_for(&node, &address)?;
    let mut url = format!("{base}/v1/logs/{uid}/{stream}?follow={follow}");
    if let Some(tail) = params.tail {
        url.push_str(&format!("&tail={tail}"));
    }
    let response = client.get(&url).send().await.map_err(|e| {
        ApiError::unavailable(format!("cannot reach the agent of node {node}: {e}"))
    })?;
    if !response.status().is_success() {
        let code = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(ApiError::unavailable(format!(
            "the agent of node {node} answered {code}: {}",
            text.trim()
        )));
    }
    Ok((
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(response.bytes_stream()),
    )
        .into_response())
}
