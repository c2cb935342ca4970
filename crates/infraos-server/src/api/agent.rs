//! The agent API (`/agent/v1`, see `infraos_api::agent_protocol`): join, certificate
//! rotation, heartbeat, node report, workload status and lease renewal.
//!
//! Join is the one call without a client certificate: the join token is the credential.
//! Every other call is made with the node's certificate, and acts only on that node's
//! objects: the node is taken from the certificate, never from the request.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infraos_api::Kind as _;
use infraos_api::agent_protocol::{
    CertificateRequest, CertificateResponse, HeartbeatResponse, JoinRequest, MIN_PROTOCOL_VERSION,
    NodeReport, NodeReportResponse, PROTOCOL_VERSION, RenewRequest,
};
use infraos_api::kinds::{
    AllocationSpec, NODE_LABEL, Node, NodeSpec, RESERVED_LABEL_DOMAIN, RenewPolicy, ResourceSpec,
    Tier, WorkloadStatus, is_reserved_label,
};
use infraos_api::text::{AUDIT_STRING_MAX, ERROR_STRING_MAX, bounded};
use infraos_api::{Object, TypedObject};
use infraos_store::{Compare, Txn};
use serde::de::DeserializeOwned;

use super::Ctx;
use crate::admission;
use crate::audit::{self, Actor, Record};
use crate::error::ApiError;
use crate::join_tokens::{self, JoinTokenRecord};
use crate::objects::{self, decode_typed, encode_typed};
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

fn check_protocol(version: u32) -> Result<(), ApiError> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(ApiError::bad_request(format!(
            "agent.protocolVersion: {version} is not supported; this server speaks \
             {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

fn certificate_response(
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

// ---- join ----------------------------------------------------------------------------------

/// Largest join request body. A CSR, a name, labels and the agent's description take a few
/// kilobytes; join is open to anyone, so the cap is small and checked before anything is
/// parsed (the object API's `maxBodyBytes` is for authenticated callers).
pub const JOIN_BODY_MAX: usize = 64 * 1024;

/// How a join relates to the Node already under its name, which decides what it may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JoinKind {
    /// No Node holds the name: the token's tiers and labels, over the agent's labels.
    Fresh,
    /// The node's own key joins again (an expired certificate, a reinstated node): the Node
    /// keeps its tiers and labels; the agent's labels fill only keys it lacks.
    Rejoin,
    /// A token minted for this name (`join-token create --node`) re-keys an existing Node:
    /// the token's tiers, and its labels over the Node's.
    Reprovision,
}

impl JoinKind {
    /// What the audit record's reason says about it.
    fn describe(self) -> &'static str {
        match self {
            JoinKind::Fresh => "a new node",
            JoinKind::Rejoin => "rejoined by its own key",
            JoinKind::Reprovision => "re-keyed by a join token minted for it",
        }
    }
}

/// `POST /agent/v1/join`: the one call without a client certificate; the join token is the
/// credential. A refusal is audited as `anonymous` from the caller's address (the node name
/// it asked for appears only as the object and in the reason, never as the subject) and
/// spends the address's anonymous budget (`apiLimits.anonymousRate`): beyond it, 429 and
/// no record.
pub async fn join(State(state): State<AppState>, request: Request) -> Response {
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let body: JoinRequest = match read_join(request).await {
        Ok(b) => b,
        Err(e) => return refused_join(&state, source, None, None, e).await,
    };
    let mut token_id = None;
    match join_inner(&state, source, &body, &mut token_id).await {
        Ok(r) => (StatusCode::CREATED, Json(r)).into_response(),
        Err(e) => refused_join(&state, source, Some(&body.name), token_id.as_deref(), e).await,
    }
}

/// Reads a join body up to [`JOIN_BODY_MAX`] (413 beyond, before any parsing).
async fn read_join(request: Request) -> Result<JoinRequest, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), JOIN_BODY_MAX)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "a join request body is at most {JOIN_BODY_MAX} bytes"
            ))
        })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!("{path}: {}", e.into_inner()))
    })
}

/// Audits a refused join, within the caller's anonymous budget, and answers it.
async fn refused_join(
    state: &AppState,
    source: Option<std::net::SocketAddr>,
    requested: Option<&str>,
    token_id: Option<&str>,
    e: ApiError,
) -> Response {
    // Callers without an address (none over TLS) share one bucket.
    let ip = source.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |s| s.ip());
    if let Err(retry) = state.limits.anonymous_allowed(ip) {
        return ApiError::too_many_requests(
            format!(
                "too many refused joins and sign-ins from {ip} (apiLimits.anonymousRate); \
                 the last refusal was: {}",
                e.message
            ),
            retry,
        )
        .into_response();
    }
    let mut reason = String::from("join");
    if let Some(name) = requested {
        reason.push_str(&format!(
            " as node {:?} requested",
            bounded(name, AUDIT_STRING_MAX)
        ));
    }
    if let Some(id) = token_id {
        reason.push_str(&format!(" with join token {id}"));
    }
    let payload = Record {
        actor: &Actor::anonymous(source),
        verb: "join",
        object: audit::object_ref("Node", None, requested.unwrap_or_default()),
        code: e.code.as_u16(),
        reason: Some(format!("{reason}; refused: {}: {}", e.reason, e.message)),
        before: None,
        after: None,
        node: None,
    }
    .payload(state.clock.now());
    audit::append_alone(&*state.store, payload).await;
    e.into_response()
}

/// Labels an agent asks for: valid, and none in the reserved `infraos.io` domain (the
/// control plane's, which the scheduler and the node authorizer trust).
fn check_agent_labels(name: &str, labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (key, value) in labels {
        let field = || format!("labels[{:?}]", bounded(key, ERROR_STRING_MAX));
        let problem = if let Err(e) = infraos_api::labels::validate_key(key) {
            e.to_string()
        } else if let Err(e) = infraos_api::labels::validate_value(value) {
            e.to_string()
        } else if is_reserved_label(key) {
            format!(
                "the {RESERVED_LABEL_DOMAIN} label domain is reserved for the control plane; \
                 an agent may not set it"
            )
        } else {
            continue;
        };
        return Err(ApiError::invalid_field("Node", name, &field(), problem));
    }
    Ok(())
}

/// Reads and checks the join token under `key`: 401 for an unknown, expired or spent one.
async fn read_token(
    state: &AppState,
    key: &str,
) -> Result<(JoinTokenRecord, infraos_store::KeyValue), ApiError> {
    let kv = state
        .store
        .get(key)
        .await?
        .ok_or_else(|| ApiError::unauthorized(join_tokens::TokenProblem::Unknown.to_string()))?;
    let token: JoinTokenRecord = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("join token record is corrupt: {e}")))?;
    token
        .check(state.clock.now())
        .map_err(|p| ApiError::unauthorized(p.to_string()))?;
    Ok((token, kv))
}

/// Whether this join may hold the name, given the Node under it (if any). A name held by
/// another key, or declared by an operator, is taken only with a token minted for it.
fn join_kind(
    node: Option<&Node>,
    name: &str,
    token: &JoinTokenRecord,
    key_fingerprint: &str,
) -> Result<JoinKind, ApiError> {
    let Some(node) = node else {
        return Ok(JoinKind::Fresh);
    };
    if token.node.as_deref() == Some(name) {
        return Ok(JoinKind::Reprovision);
    }
    match node.metadata.annotations.get(KEY_ANNOTATION) {
        Some(bound) if bound == key_fingerprint => Ok(JoinKind::Rejoin),
        // "another key": the agent does not retry this 409 (see `infraos_agent::identity`).
        Some(_) => Err(ApiError::conflict(
            "Node",
            name,
            format!(
                "node {name:?} already joined with another key; only its own key may rejoin \
                 it, or a join token minted for it (`infraos join-token create --node {name}`) \
                 after the machine was reinstalled"
            ),
        )),
        None => Err(ApiError::forbidden(format!(
            "node {name:?} was declared by an operator and has not joined: only a join token \
             minted for it (`infraos join-token create --node {name}`) may join under its name"
        ))),
    }
}

async fn join_inner(
    state: &AppState,
    source: Option<std::net::SocketAddr>,
    body: &JoinRequest,
    token_id: &mut Option<String>,
) -> Result<CertificateResponse, ApiError> {
    // What the request says is checked before anything is looked up: the name against its
    // limits first, then the labels and the protocol.
    if let Some(problem) = infraos_api::names::object_name_problem(&body.name) {
        return Err(ApiError::invalid_field("Node", &body.name, "name", problem));
    }
    check_agent_labels(&body.name, &body.labels)?;
    check_protocol(body.agent.protocol_version)?;
    // The token, then what it allows: an anonymous caller learns nothing about node names
    // (revoked, held) without a valid token.
    let (token_key, id) = join_tokens::key_for(body.token.trim());
    let (token, _) = read_token(state, &token_key).await?;
    *token_id = Some(id);
    if let Some(bound) = token.node.as_deref()
        && bound != body.name
    {
        return Err(ApiError::forbidden(format!(
            "this join token was minted for node {bound:?}; it cannot join {:?}",
            body.name
        )));
    }
    if state.rbac.node_revoked(&body.name) {
        return Err(ApiError::forbidden(format!(
            "node {:?} has been revoked; an administrator must reinstate it \
             (`infraos node reinstate {}`) before it joins again",
            body.name, body.name
        )));
    }
    let _serialised = state.join_locks.lock(&token_key).await;
    for _ in 0..RETRIES {
        let now = state.clock.now();
        let (mut token, token_kv) = read_token(state, &token_key).await?;
        let ttl = state.config.agent_cert_ttl.as_std();
        let signed = state
            .ca
            .sign_node(&body.csr, &body.name, now, ttl)
            .map_err(|e| match e {
                crate::pki::PkiError::WrongSubject { .. } => ApiError::forbidden(e.to_string()),
                crate::pki::PkiError::BadCsr(_) => {
                    ApiError::invalid_field("Node", &body.name, "csr", e.to_string())
                }
                other => ApiError::internal(other.to_string()),
            })?;
        let node_key = objects::key(NodeSpec::INFO, None, &body.name);
        let existing = state.store.get(&node_key).await?;
        let current = existing.as_ref().map(decode_typed::<NodeSpec>).transpose()?;
        let kind = join_kind(current.as_ref(), &body.name, &token, &signed.key_fingerprint)?;
        let mut node = current.unwrap_or_else(|| {
            let mut node = Object::new(body.name.clone(), None, NodeSpec::default());
            node.metadata.uid = uuid::Uuid::new_v4().to_string();
            node.metadata.creation_timestamp = Some(now);
            node.metadata.generation = 1;
            node
        });
        // The agent's labels never replace one the Node has; the token's (the
        // administrator's) win over the agent's, except on a rejoin, where the Node keeps
        // what an administrator may have changed since.
        for (k, v) in &body.labels {
            node.metadata
                .labels
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
        if kind != JoinKind::Rejoin {
            for (k, v) in &token.labels {
                node.metadata.labels.insert(k.clone(), v.clone());
            }
            node.spec.tiers.clone_from(&token.tiers);
            node.spec.tiers.sort();
            node.spec.tiers.dedup();
        }
        node.metadata
            .annotations
            .insert(KEY_ANNOTATION.into(), signed.key_fingerprint.clone());
        let status = node.status.get_or_insert_with(Default::default);
        let mut agent = body.agent.clone();
        agent.certificate_expires = Some(signed.not_after);
        status.agent = Some(agent);
        infraos_api::object::check(&node).map_err(|e| ApiError::invalid("Node", &body.name, &e))?;
        token.used += 1;
        let node_bytes = encode_typed(&node);
        let mut object = audit::object_ref("Node", None, &body.name);
        object.uid = Some(node.metadata.uid.clone());
        let payload = Record {
            // The token vouched for the name: from here on the caller is that node.
            actor: &Actor {
                subject: format!("{}{}", crate::pki::NODE_PREFIX, body.name),
                source: source.map(|s| s.to_string()),
            },
            verb: "join",
            object,
            code: 201,
            reason: Some(format!("{} (join token {})", kind.describe(), token.id)),
            before: existing.as_ref().map(|kv| kv.value.as_ref()),
            after: Some(&node_bytes),
            node: Some(body.name.clone()),
        }
        .payload(now);
        let node_guard = match &existing {
            Some(kv) => Compare::unchanged(node_key.clone(), kv.mod_revision),
            None => Compare::absent(node_key.clone()),
        };
        let token_bytes = serde_json::to_vec(&token)
            .map_err(|e| ApiError::internal(format!("join token record: {e}")))?;
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(Compare::unchanged(token_key.clone(), token_kv.mod_revision))
                    .when(node_guard)
                    .put(token_key.clone(), token_bytes)
                    .put(node_key, node_bytes)
                    .append(payload),
            )
            .await?;
        if out.succeeded {
            state.liveness.beat(&body.name, now.unix_millis());
            tracing::info!(node = %body.name, ?kind, tiers = ?node.spec.tiers, "node joined");
            return Ok(certificate_response(
                state,
                &body.name,
                &signed,
                node.spec.tiers,
            ));
        }
    }
    Err(ApiError::stale("Node", &body.name))
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
    // Resources first: each must be this node's, named after it.
    for (i, resource) in body.resources.iter().enumerate() {
        let field = |f: &str| format!("resources[{i}].{f}");
        if resource.spec.node.as_deref() != Some(name) {
            return Err(ApiError::forbidden(format!(
                "{}: node:{name} may only publish resources on its own node",
                field("spec.node")
            )));
        }
        if !resource.metadata.name.starts_with(&format!("{name}-")) {
            return Err(ApiError::invalid_field(
                "Resource",
                &resource.metadata.name,
                &field("metadata.name"),
                format!("a node's resources are named {name}-<suffix>"),
            ));
        }
    }
    let reported: Vec<String> = body
        .resources
        .iter()
        .map(|r| r.metadata.name.clone())
        .collect();
    for resource in body.resources {
        upsert_resource(state, ctx, name, resource).await?;
    }
    remove_stale_resources(state, ctx, name, &reported).await?;
    update_node(state, &ctx.actor(), name, |node, _| {
        let tiers = node.spec.tiers.clone();
        let status = node.status.get_or_insert_with(Default::default);
        let mut agent = body.agent.clone();
        agent.certificate_expires = status.agent.as_ref().and_then(|a| a.certificate_expires);
        if status.agent.as_ref() == Some(&agent)
            && status.inventory.as_ref() == Some(&body.inventory)
        {
            return Ok(Decision::Unchanged(NodeReportResponse { tiers }));
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
    let prefix = format!("{}{node}-", objects::prefix(ResourceSpec::INFO, None));
    let existing = state.store.range(&prefix, None, 0).await?;
    for kv in &existing.kvs {
        let resource = decode_typed::<ResourceSpec>(kv)?;
        let labels = &resource.metadata.labels;
        let ours = labels.get(NODE_LABEL).map(String::as_str) == Some(node)
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
        match &existing {
            Some(kv) => {
                let current = decode_typed::<ResourceSpec>(kv)?;
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
        admission::admit(&*state.store, &state.classes, &typed).await?;
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
