//! From a request to a decision: the path in RBAC terms, the target's scope, the middleware,
//! and the checks handlers make once a body is decoded.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use infraos_api::kinds::{ProjectSpec, QuotaSpec, RoleBindingSpec, RoleSpec, VERBS, builtin_role};
use infraos_api::path;
use infraos_api::{Kind as _, TypedObject};

use super::{ListFilter, READ_VERBS, Rbac, Scope, Visibility};
use crate::border::ListParams;
use crate::error::ApiError;
use crate::identity::Identity;
use crate::state::AppState;

/// A request in RBAC terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// Canonical rule kind: `Claim`, `Claim/log`, `Node/status`, `Token`, `AuditRecord`.
    pub kind: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// What the middleware needs to do for a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// Anyone signed in (the OpenAPI document, the signing key).
    Public,
    /// The agent API: nodes only.
    AgentOnly,
    Request(Attributes),
}

/// Maps a method and path onto RBAC attributes; `None` for paths the router will 404.
/// `watch`: the decoded query asks for a watch ([`crate::border::ListParams::is_watch`], the
/// very value the handler acts on).
pub fn target(method: &http::Method, path: &str, watch: bool) -> Option<Target> {
    of_parsed(&crate::border::Parsed::of(method, path, watch))
}

/// The authorizer's view of a request parsed at the border.
fn of_parsed(parsed: &crate::border::Parsed) -> Option<Target> {
    match parsed.0.as_ref().as_ref().ok()? {
        path::Target::Agent => Some(Target::AgentOnly),
        path::Target::OpenApi => Some(Target::Public),
        path::Target::Api(r) if r.path.resource == path::Resource::SigningKey => {
            Some(Target::Public)
        }
        path::Target::Api(r) => Some(Target::Request(Attributes {
            verb: r.verb.as_str().to_string(),
            kind: r.rule_kind.clone()?,
            namespace: r.path.namespace().map(str::to_string),
            name: r.path.name.clone(),
        })),
    }
}

/// Kinds outside projects whose objects belong to a tenant or project by their content.
fn owned_by_content(kind: &str) -> bool {
    matches!(kind, "Project" | "Quota" | "RoleBinding")
}

/// The tower middleware: decides every user request before its handler runs.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(identity) = request.extensions().get::<Arc<Identity>>().cloned() else {
        return next.run(request).await;
    };
    // The request was parsed once at the border (query and path); every check here reads
    // that, as the handler will.
    let parsed = match crate::border::parse_into(&mut request) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let target = of_parsed(&parsed);
    if let Some(node) = identity.node() {
        // The node authorizer: an agent reaches its own objects and the agent API only.
        let selector = request
            .extensions()
            .get::<crate::border::Params<ListParams>>()
            .and_then(|p| p.0.label_selector.clone());
        let Err(why) = crate::auth::node_may_parsed(
            node,
            request.method(),
            request.uri().path(),
            &parsed,
            selector.as_deref(),
        ) else {
            return next.run(request).await;
        };
        let attrs = match target {
            Some(Target::Request(a)) => Some(a),
            _ => None,
        };
        let verb = attrs.as_ref().map_or_else(
            || request.method().as_str().to_ascii_lowercase(),
            |a| a.verb.clone(),
        );
        let e = ApiError::forbidden(why);
        return refuse(request.uri().path(), &verb, attrs.as_ref(), e);
    }
    let attrs = match target {
        Some(Target::Public) => return next.run(request).await,
        // A path the authorizer cannot name: administrators reach the router (which explains
        // the 404); others get the 404 here, so a route added without its RBAC mapping is
        // closed, not open.
        None if identity
            .groups
            .iter()
            .any(|g| g == infraos_api::kinds::ADMINS_GROUP) =>
        {
            return next.run(request).await;
        }
        None => {
            return ApiError::no_route("the server could not find the requested resource")
                .into_response();
        }
        Some(Target::AgentOnly) => {
            let e = ApiError::forbidden(format!(
                "{} may not use the agent API: it is for nodes with a client certificate",
                identity.subject
            ));
            return refuse(request.uri().path(), "agent", None, e);
        }
        Some(Target::Request(a)) => a,
    };
    match decide(&state, &identity, &attrs).await {
        Ok(Decision::Allow) => next.run(request).await,
        Ok(Decision::Filtered(visibility)) => {
            let info = infraos_api::object::kind_by_any_name(&attrs.kind);
            if let Some(info) = info {
                request.extensions_mut().insert(ListFilter {
                    rbac: state.rbac.clone(),
                    info,
                    visibility: Arc::new(visibility),
                });
            }
            next.run(request).await
        }
        Err(e) => refuse(request.uri().path(), &attrs.verb, Some(&attrs), e),
    }
}

enum Decision {
    Allow,
    Filtered(Visibility),
}

fn denied(identity: &Identity, attrs: &Attributes, scope: &Scope) -> ApiError {
    let what = match &attrs.name {
        Some(n) => format!("{} {n:?}", attrs.kind),
        None => format!("{} objects", attrs.kind),
    };
    ApiError::forbidden(format!(
        "{} may not {} {what} {scope}: no role binding grants it",
        identity.subject, attrs.verb
    ))
}

async fn decide(
    state: &AppState,
    identity: &Identity,
    attrs: &Attributes,
) -> Result<Decision, ApiError> {
    let rbac = &state.rbac;
    let verb = attrs.verb.as_str();
    let kind = attrs.kind.as_str();
    let name = attrs.name.as_deref();
    let allow_at = |scope: Scope| {
        if rbac.allows(identity, verb, kind, name, &scope) {
            Ok(Decision::Allow)
        } else {
            Err(denied(identity, attrs, &scope))
        }
    };
    let filtered = |scope: Scope| {
        if rbac.allows(identity, verb, kind, None, &scope) {
            return Ok(Decision::Filtered(Visibility::All));
        }
        let v = rbac.visibility(identity, verb, kind);
        if v.is_empty() {
            Err(denied(identity, attrs, &Scope::cluster()))
        } else {
            Ok(Decision::Filtered(v))
        }
    };
    if let Some(ns) = &attrs.namespace {
        let scope = rbac.project_scope(ns);
        return allow_at(scope);
    }
    let base = kind.split('/').next().unwrap_or(kind);
    let info = infraos_api::object::kind_by_any_name(base);
    let Some(info) = info else {
        // Tokens, join tokens, the audit chain: cluster business.
        return allow_at(Scope::cluster());
    };
    match (name, verb) {
        // Across projects, or over tenant-owned objects: show what may be seen.
        (None, "list" | "watch") if info.namespaced || owned_by_content(info.kind) => {
            filtered(Scope::cluster())
        }
        (None, "list" | "watch") if info.kind == "Tenant" => filtered(Scope::cluster()),
        // The body names the scope: the handler checks it; here, only that the caller may
        // create such objects somewhere.
        (None, "create") if owned_by_content(info.kind) => {
            if rbac.visibility(identity, verb, kind).is_empty() {
                Err(denied(identity, attrs, &Scope::cluster()))
            } else {
                Ok(Decision::Allow)
            }
        }
        (Some(n), _) if info.kind == "Tenant" => allow_at(Scope::tenant(n)),
        (Some(n), _) if info.kind == "Project" => allow_at(rbac.project_scope(n)),
        (Some(n), _) if owned_by_content(info.kind) => {
            let key = crate::objects::key(info, None, n);
            let scope = match state.store.get(&key).await? {
                Some(kv) => match serde_json::from_slice::<serde_json::Value>(&kv.value) {
                    Ok(v) => rbac.stored_scope(info, &v, !READ_VERBS.contains(&verb)),
                    Err(_) => Scope::cluster(),
                },
                // Only those who could see it anywhere learn that it does not exist.
                None => Scope::cluster(),
            };
            allow_at(scope)
        }
        _ => allow_at(Scope::cluster()),
    }
}

/// A refusal, marked for the audit layer ([`crate::border::audit_refusals`]): its
/// object is what the request named, or its path when it named nothing RBAC knows.
fn refuse(path: &str, verb: &str, attrs: Option<&Attributes>, error: ApiError) -> Response {
    let object = match attrs {
        Some(a) => {
            let (kind, sub) = match a.kind.split_once('/') {
                Some((k, s)) => (k, Some(s.to_string())),
                None => (a.kind.as_str(), None),
            };
            let mut o = crate::audit::object_ref(
                kind,
                a.namespace.as_deref(),
                a.name.as_deref().unwrap_or(""),
            );
            o.subresource = sub;
            o
        }
        None => crate::audit::object_ref("", None, path),
    };
    crate::border::refused(verb, object, error)
}

/// The check of a decoded object whose scope is in its content (Project, Quota,
/// RoleBinding), for creates and updates; and for RoleBindings, that the caller holds what
/// the role grants.
pub fn check_object(
    state: &AppState,
    identity: &Identity,
    verb: &str,
    object: &TypedObject,
) -> Result<(), ApiError> {
    if identity.node().is_some() || identity.subject.starts_with("system:") {
        return Ok(());
    }
    let (info, value) = match object {
        TypedObject::Project(_) => (ProjectSpec::INFO, object.to_value()),
        TypedObject::Quota(_) => (QuotaSpec::INFO, object.to_value()),
        TypedObject::RoleBinding(_) => (RoleBindingSpec::INFO, object.to_value()),
        _ => return Ok(()),
    };
    let name = object.meta().name.as_str();
    let scope = state.rbac.stored_scope(info, &value, true);
    let attrs = Attributes {
        verb: verb.to_string(),
        kind: info.kind.to_string(),
        namespace: None,
        name: Some(name.to_string()),
    };
    let by_name = if verb == "create" { None } else { Some(name) };
    if !state
        .rbac
        .allows(identity, verb, info.kind, by_name, &scope)
    {
        return Err(denied(identity, &attrs, &scope));
    }
    if let TypedObject::RoleBinding(binding) = object {
        check_escalation(&state.rbac, identity, &binding.spec, &scope)?;
    }
    Ok(())
}

/// Granting a role takes holding every permission it grants, at the binding's scope.
pub fn check_escalation(
    rbac: &Rbac,
    identity: &Identity,
    binding: &RoleBindingSpec,
    scope: &Scope,
) -> Result<(), ApiError> {
    let Some(rules) = rbac.role_rules(&binding.role) else {
        return Err(ApiError::invalid_field(
            "RoleBinding",
            "",
            "spec.role",
            format!(
                "no role {:?}: name a built-in role ({}) or a Role object",
                binding.role,
                infraos_api::kinds::BUILTIN_ROLES
                    .iter()
                    .map(|r| r.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let all_kinds: Vec<String> = infraos_api::object::kinds()
        .iter()
        .map(|k| k.kind.to_string())
        .chain(
            infraos_api::kinds::EXTRA_RULE_KINDS
                .iter()
                .map(|k| k.to_string()),
        )
        .collect();
    for rule in rules.iter() {
        let verbs: Vec<&str> = if rule.verbs.iter().any(|v| v == "*") {
            VERBS.to_vec()
        } else {
            rule.verbs.iter().map(String::as_str).collect()
        };
        let kinds: Vec<&str> = if rule.kinds.iter().any(|k| k == "*") {
            all_kinds.iter().map(String::as_str).collect()
        } else {
            rule.kinds.iter().map(String::as_str).collect()
        };
        let names: Vec<Option<&str>> = if rule.names.is_empty() {
            vec![None]
        } else {
            rule.names.iter().map(|n| Some(n.as_str())).collect()
        };
        for verb in &verbs {
            for kind in &kinds {
                for name in &names {
                    if !rbac.allows(identity, verb, kind, *name, scope) {
                        return Err(ApiError::forbidden(format!(
                            "{} may not grant role {:?} {scope}: it allows {verb} on {kind}, which {} may not do there",
                            identity.subject, binding.role, identity.subject
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Roles the API refuses to store under the name of a built-in one.
pub fn check_role_name(object: &TypedObject) -> Result<(), ApiError> {
    if let TypedObject::Role(role) = object
        && builtin_role(role.name()).is_some()
    {
        return Err(ApiError::invalid_field(
            RoleSpec::INFO.kind,
            role.name(),
            "metadata.name",
            "is a built-in role; choose another name",
        ));
    }
    Ok(())
}
