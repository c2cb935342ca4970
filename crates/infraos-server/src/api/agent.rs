//! The agent API (`/agent/v1`, see `infraos_api::agent_protocol`): certificate rotation,
//! heartbeat, node report, workload status and lease renewal; join, the one call without a
//! client certificate, is in `join.rs`.
//!
//! Every call here is made with the node's certificate, and acts only on that node's
//! objects: the node is taken from the certificate, never from the request.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infraos_api::Kind as _;
use infraos_api::TypedObject;
use infraos_api::agent_protocol::{
    CertificateRequest, CertificateResponse, HeartbeatResponse, MIN_PROTOCOL_VERSION, NodeReport,
    NodeReportResponse, PROTOCOL_VERSION, RenewRequest,
};
use infraos_api::kinds::{
    AllocationSpec, CAPACITY_LIMITED, NODE_LABEL, Node, NodeSpec, RenewPolicy, ResourceSpec, Tier,
    WorkloadStatus,
};
use infraos_api::meta::Condition;
use infraos_store::{Compare, Txn};
use serde::de::DeserializeOwned;

use super::Ctx;
use crate::admission;
use crate::audit::{self, Actor, Record};
use crate::error::ApiError;
use crate::objects::{self, decode_typed};
use crate::state::AppState;
use crate::update::{Audit, Decision, Target, update};

/// Ties a node name to the key that joined it: a join for the same name with another key is
/// refused until an administrator deletes the node.
pub const KEY_ANNOTATION: &str = "infraos.io/agent-key-sha256";
/// Marks the Resources an agent publishes (and may update).
pub const MANAGED_LABEL: &str = "infraos.io/managed-by";

const RETRIES: usize = 8;

async fn read_json<T: DeserializeOwned>(state: &AppState, request: Request) -> Result<T, ApiError> {
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(format!("request body exceeds the {limit}-byte limit")))?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!("{path}: {}", e.into_inner()))
    })
}

fn node_of(ctx: &Ctx) -> Result<String, ApiError> {
    ctx.identity
        .node()
        .map(str::to_string)
        .ok_or_else(|| ApiError::forbidden("the agent API needs a node's client certificate"))
}

pub(super) fn check_protocol(version: u32) -> Result<(), ApiError> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(ApiError::bad_request(format!(
            "agent.protocolVersion: {version} is not supported; this server speaks \
             {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

pub(super) fn certificate_response(
    state: &AppState,
    node: &str,
    signed: &crate::pki::Signed,
    tiers: Vec<Tier>,
) -> CertificateResponse {
    CertificateResponse {
        node: node.to_string(),
        certificate: signed.pem.clone(),
        ca: state.ca.cert_pem().to_string(),
        expires: signed.not_after,
        heartbeat_interval_ms: state.config.heartbeat_interval.as_millis(),
        tiers,
        signing_key: Some(state.signer.public_key().clone()),
    }
}

/// Audits a refused agent call and turns it into a response.
async fn refused(
    state: &AppState,
    actor: &Actor,
    verb: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
    e: ApiError,
) -> Response {
    let object = audit::object_ref(kind, ns, name);
    audit::refusal(&*state.store, state.clock.now(), actor, verb, object, &e).await;
    e.into_response()
}

// ---- certificate rotation ------------------------------------------------------------------

pub async fn certificate(State(state): State<AppState>, ctx: Ctx, request: Request) -> Response {
    let result = async {
        let node_name = node_of(&ctx)?;
        let body: CertificateRequest = read_json(&state, request).await?;
        rotate(&state, &ctx, &node_name, &body).await
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            let name = ctx.identity.node().unwrap_or_default().to_string();
            refused(
                &state,
                &ctx.actor(),
                "rotate-certificate",
                "Node",
                None,
                &name,
                e,
            )
            .await
        }
    }
}

async fn rotate(
    state: &AppState,
    ctx: &Ctx,
    name: &str,
    body: &CertificateRequest,
) -> Result<CertificateResponse, ApiError> {
    update_node(state, &ctx.actor(), name, |node, now| {
        let signed = state
            .ca
            .sign_node(&body.csr, name, now, state.config.agent_cert_ttl.as_std())
            .map_err(|e| match e {
                crate::pki::PkiError::WrongSubject { .. } => ApiError::forbidden(e.to_string()),
                other => ApiError::invalid_field("Node", name, "csr", other.to_string()),
            })?;
        node.metadata
            .annotations
            .insert(KEY_ANNOTATION.into(), signed.key_fingerprint.clone());
        let status = node.status.get_or_insert_with(Default::default);
        if let Some(agent) = status.agent.as_mut() {
            agent.certificate_expires = Some(signed.not_after);
        }
        Ok(Decision::Write {
            audit: Audit {
                verb: "rotate-certificate",
                subresource: None,
                reason: None,
                node: Some(name.to_string()),
            },
            result: certificate_response(state, name, &signed, node.spec.tiers.clone()),
        })
    })
    .await
}

/// Changes the agent's own Node (see [`update`]).
async fn update_node<T>(
    state: &AppState,
    actor: &crate::audit::Actor,
    name: &str,
    change: impl FnMut(&mut Node, infraos_api::Time) -> Result<Decision<T>, ApiError>,
) -> Result<T, ApiError> {
    let target = Target {
        namespace: None,
        name,
        actor,
    };
    update::<NodeSpec, _>(state, target, || removed(name), change).await
}

/// The answer for a node whose Node object is gone.
fn removed(name: &str) -> ApiError {
    ApiError::forbidden(format!(
        "node {name:?} was removed; join it again with a token"
    ))
}

// ---- heartbeat -----------------------------------------------------------------------------

pub async fn heartbeat(State(state): State<AppState>, ctx: Ctx) -> Result<Response, ApiError> {
    let node = node_of(&ctx)?;
    // The grant comes from the controller's view; a node missing from it is read from the
    // store (it may have just joined, or the server may not have synced), and one missing
    // there was deleted: its certificate no longer speaks for anything.
    let tiers = match state.liveness.tiers(&node) {
        Some(tiers) => Some(tiers),
        None => {
            let key = objects::key(NodeSpec::INFO, None, &node);
            let kv = state.store.get(&key).await?.ok_or_else(|| {
                ApiError::no_route(format!(
                    "node {node:?} no longer exists (an administrator deleted it): rejoin \
                     with a new join token"
                ))
            })?;
            Some(decode_typed::<NodeSpec>(&kv)?.spec.tiers)
        }
    };
    state.liveness.beat(&node, state.clock.now().unix_millis());
    Ok(Json(HeartbeatResponse {
        heartbeat_interval_ms: state.config.heartbeat_interval.as_millis(),
        tiers,
        signing_key: Some(state.signer.public_key().clone()),
    })
    .into_response())
}

// ---- node report ---------------------------------------------------------------------------

pub async fn report(State(state): State<AppState>, ctx: Ctx, request: Request) -> Response {
    let result = async {
        let node = node_of(&ctx)?;
        let body: NodeReport = read_json(&state, request).await?;
        report_inner(&state, &ctx, &node, body).await
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            let name = ctx.identity.node().unwrap_or_default().to_string();
            refused(&state, &ctx.actor(), "report", "Node", None, &name, e).await
        }
    }
}

async fn report_inner(
    state: &AppState,
    ctx: &Ctx,
    name: &str,
    body: NodeReport,
) -> Result<NodeReportResponse, ApiError> {
    check_protocol(body.agent.protocol_version)?;
    check_resource_names(state, name, &body.resources).await?;
    // What the node may publish: bounded by its inventory and its limits (capacity.rs).
    let node_key = objects::key(NodeSpec::INFO, None, name);
    let node_kv = state
        .store
        .get(&node_key)
        .await?
        .ok_or_else(|| removed(name))?;
    let limits = decode_typed::<NodeSpec>(&node_kv)?.spec.capacity_limits;
    let bounded = crate::capacity::bound(
        body.resources,
        &body.inventory,
        &limits,
        &state.config.node_capacity_limits,
    )
    .map_err(|e| ApiError::invalid_field("Node", name, "resources", e.to_string()))?;
    let limited = bounded.message().map(|message| Condition {
        type_: CAPACITY_LIMITED.to_string(),
        status: "True".to_string(),
        reason: Some("ReportedBeyondLimits".to_string()),
        message: Some(message),
        last_transition_time: Some(state.clock.now()),
    });
    if let Some(c) = &limited {
        tracing::warn!(node = %name, message = c.message.as_deref().unwrap_or_default(),
            "node capacity cut");
    }
    let reported: Vec<String> = bounded
        .resources
        .iter()
        .map(|r| r.metadata.name.clone())
        .collect();
    for resource in bounded.resources {
        upsert_resource(state, ctx, name, resource).await?;
    }
    remove_stale_resources(state, ctx, name, &reported).await?;
    update_node(state, &ctx.actor(), name, |node, _| {
        let tiers = node.spec.tiers.clone();
        let status = node.status.get_or_insert_with(Default::default);
        let mut agent = body.agent.clone();
        agent.certificate_expires = status.agent.as_ref().and_then(|a| a.certificate_expires);
        let was_limited = status
            .conditions
            .iter()
            .find(|c| c.type_ == CAPACITY_LIMITED);
        let same_limits = match (was_limited, &limited) {
            (None, None) => true,
            (Some(old), Some(new)) => old.message == new.message,
            _ => false,
        };
        if status.agent.as_ref() == Some(&agent)
            && status.inventory.as_ref() == Some(&body.inventory)
            && same_limits
        {
            return Ok(Decision::Unchanged(NodeReportResponse { tiers }));
        }
        if !same_limits {
            status.conditions.retain(|c| c.type_ != CAPACITY_LIMITED);
            status.conditions.extend(limited.clone());
        }
        status.agent = Some(agent);
        status.inventory = Some(body.inventory.clone());
        Ok(Decision::Write {
            audit: Audit {
                verb: "update-status",
                subresource: Some("status"),
                reason: None,
                node: Some(name.to_string()),
            },
            result: NodeReportResponse { tiers },
        })
    })
    .await
}

/// Each reported Resource must be on this node and named after it (`<node>-<suffix>`), and
/// not after a longer-named node (`evil` must not take `evil-node-gpu`, which would be node
/// `evil-node`'s): names are how Resources are found, so one node must not squat another's.
/// Ownership itself is by the stored `spec.node` ([`upsert_resource`]), never by the name.
async fn check_resource_names(
    state: &AppState,
    node: &str,
    resources: &[infraos_api::kinds::Resource],
) -> Result<(), ApiError> {
    let own_prefix = format!("{node}-");
    // Nodes whose names extend this one's (`<node>-…`): a prefix read.
    let longer = state
        .store
        .range(
            &format!("{}{own_prefix}", objects::prefix(NodeSpec::INFO, None)),
            None,
            0,
        )
        .await?;
    let longer: Vec<&str> = longer
        .kvs
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next())
        .collect();
    for (i, resource) in resources.iter().enumerate() {
        let field = |f: &str| format!("resources[{i}].{f}");
        let resource_name = resource.metadata.name.as_str();
        if resource.spec.node.as_deref() != Some(node) {
            return Err(ApiError::forbidden(format!(
                "{}: node:{node} may only publish resources on its own node",
                field("spec.node")
            )));
        }
        if !resource_name.starts_with(&own_prefix) {
            return Err(ApiError::invalid_field(
                "Resource",
                resource_name,
                &field("metadata.name"),
                format!("a node's resources are named {node}-<suffix>"),
            ));
        }
        if let Some(other) = longer
            .iter()
            .find(|other| resource_name.starts_with(&format!("{other}-")))
        {
            return Err(ApiError::forbidden(format!(
                "{}: {:?} is named after node {other:?}; node:{node} may not publish it",
                field("metadata.name"),
                infraos_api::text::bounded(resource_name, infraos_api::text::ERROR_STRING_MAX)
            )));
        }
    }
    Ok(())
}

/// Deletes the Resources this node's agent published before but no longer reports (a GPU
/// that failed or was pulled). Allocations on them keep running until their leases end, as
/// when an administrator deletes a Resource; nothing new is placed there.
async fn remove_stale_resources(
    state: &AppState,
    ctx: &Ctx,
    node: &str,
    reported: &[String],
) -> Result<(), ApiError> {
    // The node's resources are named `<node>-…`: a prefix read, not a scan of every node's.
    // The prefix also finds other nodes' (`<node>-x-…`): what is ours is by `spec.node`.
    let prefix = format!("{}{node}-", objects::prefix(ResourceSpec::INFO, None));
    let existing = state.store.range(&prefix, None, 0).await?;
    for kv in &existing.kvs {
        let resource = decode_typed::<ResourceSpec>(kv)?;
        let labels = &resource.metadata.labels;
        let ours = resource.spec.node.as_deref() == Some(node)
            && labels.get(MANAGED_LABEL).map(String::as_str) == Some("agent");
        if !ours || reported.contains(&resource.metadata.name) {
            continue;
        }
        let name = resource.metadata.name.clone();
        let mut object = audit::object_ref("Resource", None, &name);
        object.uid = Some(resource.metadata.uid.clone());
        let payload = Record {
            actor: &ctx.actor(),
            verb: "delete",
            object,
            code: 200,
            reason: Some("NoLongerReported".into()),
            before: Some(&kv.value),
            after: None,
            node: Some(node.to_string()),
        }
        .payload(state.clock.now());
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(Compare::unchanged(kv.key.clone(), kv.mod_revision))
                    .delete(kv.key.clone())
                    .append(payload),
            )
            .await?;
        if out.succeeded {
            tracing::info!(%node, resource = %name, "removed a resource the agent no longer reports");
        }
    }
    Ok(())
}

/// Creates or updates one of the node's Resources when what the agent found changed.
async fn upsert_resource(
    state: &AppState,
    ctx: &Ctx,
    node: &str,
    mut resource: infraos_api::kinds::Resource,
) -> Result<(), ApiError> {
    let name = resource.metadata.name.clone();
    resource
        .metadata
        .labels
        .insert(NODE_LABEL.into(), node.into());
    resource
        .metadata
        .labels
        .insert(MANAGED_LABEL.into(), "agent".into());
    let key = objects::key(ResourceSpec::INFO, None, &name);
    for _ in 0..RETRIES {
        let now = state.clock.now();
        let existing = state.store.get(&key).await?;
        let mut desired = resource.clone();
        desired.status = None;
        desired.metadata.resource_version = None;
        let mut old_typed = None;
        match &existing {
            Some(kv) => {
                let current = decode_typed::<ResourceSpec>(kv)?;
                // Ownership is the stored object's spec.node, which never changes.
                if current.spec.node.as_deref() != Some(node) {
                    return Err(ApiError::forbidden(format!(
                        "resource {name:?} is on node {:?}: node:{node} may change only its \
                         own node's resources",
                        current.spec.node.as_deref().unwrap_or("(none)")
                    )));
                }
                if current
                    .metadata
                    .labels
                    .get(MANAGED_LABEL)
                    .map(String::as_str)
                    != Some("agent")
                {
                    return Err(ApiError::conflict(
                        "Resource",
                        &name,
                        format!("resource {name:?} exists and was not published by an agent"),
                    ));
                }
                if current.spec == desired.spec
                    && current.metadata.labels == desired.metadata.labels
                {
                    return Ok(());
                }
                desired.metadata.uid = current.metadata.uid.clone();
                desired.metadata.creation_timestamp = current.metadata.creation_timestamp;
                desired.metadata.generation = current.metadata.generation + 1;
                desired.metadata.annotations = current.metadata.annotations.clone();
                old_typed = Some(TypedObject::Resource(current));
            }
            None => {
                desired.metadata.uid = uuid::Uuid::new_v4().to_string();
                desired.metadata.creation_timestamp = Some(now);
                desired.metadata.generation = 1;
            }
        }
        desired.metadata.deletion_timestamp = None;
        desired.metadata.finalizers.clear();
        let typed = TypedObject::Resource(desired);
        typed
            .check()
            .map_err(|e| ApiError::invalid("Resource", &name, &e))?;
        let mut attempt = admission::Attempt::new(&*state.store, &state.classes);
        if let Some(old) = &old_typed {
            attempt = attempt.updating(old);
        }
        admission::validate(&attempt, &typed).await?;
        let bytes = typed.to_vec();
        let mut object = audit::object_ref("Resource", None, &name);
        object.uid = Some(typed.meta().uid.clone());
        let payload = Record {
            actor: &ctx.actor(),
            verb: if existing.is_some() {
                "update"
            } else {
                "create"
            },
            object,
            code: if existing.is_some() { 200 } else { 201 },
            reason: None,
            before: existing.as_ref().map(|kv| kv.value.as_ref()),
            after: Some(&bytes),
            node: Some(node.to_string()),
        }
        .payload(now);
        let guard = match &existing {
            Some(kv) => Compare::unchanged(key.clone(), kv.mod_revision),
            None => Compare::absent(key.clone()),
        };
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(guard)
                    .put(key.clone(), bytes)
                    .append(payload),
            )
            .await?;
        if out.succeeded {
            return Ok(());
        }
    }
    Err(ApiError::stale("Resource", &name))
}

// ---- workload status and renewal -----------------------------------------------------------

pub async fn workload(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let result = async {
        let node = node_of(&ctx)?;
        let body: WorkloadStatus = read_json(&state, request).await?;
        report_workload(&state, &ctx, &node, &ns, &name, body).await
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            refused(
                &state,
                &ctx.actor(),
                "report-workload",
                "Allocation",
                Some(&ns),
                &name,
                e,
            )
            .await
        }
    }
}

async fn report_workload(
    state: &AppState,
    ctx: &Ctx,
    node: &str,
    ns: &str,
    name: &str,
    report: WorkloadStatus,
) -> Result<(), ApiError> {
    let actor = ctx.actor();
    let target = Target {
        namespace: Some(ns),
        name,
        actor: &actor,
    };
    let missing = || ApiError::not_found("Allocation", name);
    update::<AllocationSpec, _>(state, target, missing, |allocation, _| {
        if allocation.spec.node.as_deref() != Some(node) {
            return Err(ApiError::forbidden(format!(
                "allocation {ns}/{name} is not on node {node}"
            )));
        }
        let status = allocation.status.get_or_insert_with(Default::default);
        if report.fencing_epoch != status.lease.fencing_epoch {
            return Err(ApiError::conflict(
                "Allocation",
                name,
                format!(
                    "stale fencing epoch {} (the allocation is at epoch {})",
                    report.fencing_epoch, status.lease.fencing_epoch
                ),
            ));
        }
        if status.workload.as_ref() == Some(&report) {
            return Ok(Decision::Unchanged(()));
        }
        status.workload = Some(report.clone());
        Ok(Decision::Write {
            audit: Audit {
                verb: "report-workload",
                subresource: Some("workload"),
                // A refusal's reason (an unverified instruction) belongs in the trail.
                reason: Some(match &report.reason {
                    Some(why) => format!("{}: {why}", report.state.as_str()),
                    None => report.state.as_str().to_string(),
                }),
                node: Some(node.to_string()),
            },
            result: (),
        })
    })
    .await
}

pub async fn renew(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let result = async {
        let node = node_of(&ctx)?;
        let body: RenewRequest = read_json(&state, request).await?;
        let key = objects::key(AllocationSpec::INFO, Some(&ns), &name);
        let kv = state
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("Allocation", &name))?;
        let allocation = decode_typed::<AllocationSpec>(&kv)?;
        if allocation.spec.node.as_deref() != Some(node.as_str()) {
            return Err(ApiError::forbidden(format!(
                "allocation {ns}/{name} is not on node {node}"
            )));
        }
        if allocation.spec.renew_policy != RenewPolicy::WhileRunning {
            return Err(ApiError::forbidden(format!(
                "claim {ns}/{name} is renewed by its owner (renewPolicy Manual)"
            )));
        }
        let epoch = allocation
            .status
            .as_ref()
            .map_or(0, |s| s.lease.fencing_epoch);
        if body.fencing_epoch != epoch {
            return Err(ApiError::conflict(
                "Allocation",
                &name,
                format!(
                    "stale fencing epoch {} (the allocation is at epoch {epoch})",
                    body.fencing_epoch
                ),
            ));
        }
        super::claims::act(
            &state,
            &ctx,
            &ns,
            &allocation.spec.claim.name,
            "renew",
            None,
            Some(epoch),
        )
        .await
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => {
            refused(
                &state,
                &ctx.actor(),
                "renew",
                "Allocation",
                Some(&ns),
                &name,
                e,
            )
            .await
        }
    }
}

/// Labels a join token grants must be valid labels.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    infraos_api::labels::validate_labels(labels)
        .map_err(|e| ApiError::bad_request(format!("labels: {e}")))
}
