//! `POST /agent/v1/join`: the one call without a client certificate; the join token is the
//! credential. Open to anyone, so it is built to refuse cheaply and boundedly (issue 16):
//!
//! ```text
//!  body ≤ 64 KiB ──► name, labels, protocol ──► token ──► minted for ──► revoked? ──► CSR
//!  (413, unparsed)   (422, nothing looked up)   (401)     this name?      (403)        │
//!                                                         (403)                       ▼
//!                     who holds the name: nobody ─► Fresh         its own key ─► Rejoin
//!                     a token minted for it ─► Reprovision   another key ─► 409 (operator: 403)
//!
//!  any refusal ──► the address's anonymous budget (apiLimits.anonymousRate)
//!                  ├─ within: audited as `anonymous` from the address, the name as a request
//!                  └─ beyond: 429, no record
//! ```
//! A name a Node already holds is taken only by that node's own key (a rejoin) or with a
//! token minted for the name (`infraos join-token create --node NAME`): a generic token
//! cannot take over a node with its tiers and allocations. The token's labels win over the
//! agent's, and agents may not set labels in the reserved `infraos.io` domain.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infraos_api::Kind as _;
use infraos_api::Object;
use infraos_api::agent_protocol::{CertificateResponse, JoinRequest};
use infraos_api::kinds::{Node, NodeSpec, RESERVED_LABEL_DOMAIN, is_reserved_label};
use infraos_api::text::{AUDIT_STRING_MAX, ERROR_STRING_MAX, bounded};
use infraos_store::{Compare, Txn};

use super::agent::{KEY_ANNOTATION, certificate_response, check_protocol};
use crate::audit::{self, Actor, Record};
use crate::error::ApiError;
use crate::join_tokens::{self, JoinTokenRecord};
use crate::objects::{self, decode_typed, encode_typed};
use crate::state::AppState;

const RETRIES: usize = 8;

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
    let kv =
        state.store.get(key).await?.ok_or_else(|| {
            ApiError::unauthorized(join_tokens::TokenProblem::Unknown.to_string())
        })?;
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
        let current = existing
            .as_ref()
            .map(decode_typed::<NodeSpec>)
            .transpose()?;
        let kind = join_kind(
            current.as_ref(),
            &body.name,
            &token,
            &signed.key_fingerprint,
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(node: Option<&str>) -> JoinTokenRecord {
        JoinTokenRecord {
            id: "3f2a9c01d4e7".into(),
            description: String::new(),
            created: infraos_api::Time::from_unix_millis(0),
            created_by: "user:admin".into(),
            expires: infraos_api::Time::from_unix_millis(1),
            uses: None,
            used: 0,
            tiers: Vec::new(),
            labels: BTreeMap::new(),
            node: node.map(str::to_string),
        }
    }

    fn node(key: Option<&str>) -> Node {
        let mut node = Object::new("n1", None, NodeSpec::default());
        if let Some(key) = key {
            node.metadata
                .annotations
                .insert(KEY_ANNOTATION.into(), key.into());
        }
        node
    }

    #[test]
    fn a_held_name_is_taken_only_by_its_key_or_a_token_minted_for_it() {
        let generic = token(None);
        let minted = token(Some("n1"));
        let kind = |n: Option<&Node>, t: &JoinTokenRecord| join_kind(n, "n1", t, "key-a");
        assert_eq!(kind(None, &generic).unwrap(), JoinKind::Fresh);
        assert_eq!(
            kind(Some(&node(Some("key-a"))), &generic).unwrap(),
            JoinKind::Rejoin
        );
        let taken = kind(Some(&node(Some("key-b"))), &generic).unwrap_err();
        assert_eq!(taken.code.as_u16(), 409);
        assert!(taken.message.contains("another key"), "{}", taken.message);
        let declared = kind(Some(&node(None)), &generic).unwrap_err();
        assert_eq!(declared.code.as_u16(), 403);
        assert!(
            declared.message.contains("--node n1"),
            "{}",
            declared.message
        );
        for held in [node(None), node(Some("key-b")), node(Some("key-a"))] {
            assert_eq!(kind(Some(&held), &minted).unwrap(), JoinKind::Reprovision);
        }
    }

    #[test]
    fn agents_may_not_set_reserved_or_invalid_labels() {
        let labels = |k: &str| BTreeMap::from([(k.to_string(), "v".to_string())]);
        assert!(check_agent_labels("n1", &labels("rack")).is_ok());
        for key in ["infraos.io/node", "gpu.infraos.io/model"] {
            let e = check_agent_labels("n1", &labels(key)).unwrap_err();
            assert_eq!(e.code.as_u16(), 422);
            assert!(
                e.message.contains(key) && e.message.contains("reserved"),
                "{}",
                e.message
            );
        }
        let huge = "k".repeat(100_000);
        let e = check_agent_labels("n1", &labels(&huge)).unwrap_err();
        assert!(e.message.len() < 2048, "{} bytes", e.message.len());
    }
}
