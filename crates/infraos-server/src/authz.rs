//! Authorization: role-based access at cluster, tenant and project scope.
//!
//! ```text
//!  request ─► authenticate (auth.rs) ─► authorize (here) ─► handler ─► admission ─► store
//!                                        │
//!                  path → (verb, kind, namespace, name) → scope of the target
//!                  bindings of the caller (user, groups, token) that reach that scope
//!                  → any rule of their role allows it?           403 + audit record if not
//! ```
//! A binding at a tenant reaches the tenant and every project of it; at a project, that
//! project; at the cluster, everything. Lists and watches across projects are filtered to
//! what the caller may see. Where the target's scope is in the request body (creating a
//! Project, Quota or RoleBinding, or moving one), the handler asks [`check_object`] again once
//! the body is decoded. Granting a role takes holding its permissions at that scope
//! ([`check_escalation`]), so nobody hands out more than they have.
//!
//! The decisions come from an in-memory view of Roles, RoleBindings, Projects (for their
//! tenants) and API tokens, fed by watches on every replica and updated at once by this
//! replica's own writes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use infraos_api::kinds::{
    ADMINS_GROUP, BindingScope, PolicyRule, ProjectSpec, QuotaSpec, RoleBindingSpec, RoleSpec,
    SubjectKind, VERBS, builtin_role,
};
use infraos_api::{Kind as _, KindInfo, TypedObject};
use infraos_store::{Event, EventKind, KeyValue, Store};
use parking_lot::RwLock;

use crate::auth::{Identity, TOKEN_PREFIX, TokenRecord};
use crate::error::ApiError;
use crate::reflector::{self, Change};
use crate::state::AppState;

/// Kinds every signed-in user may read: what claims refer to, and the roles that exist.
const CATALOG: &[&str] = &["ResourceClass", "PriorityClass", "Queue", "Role"];
const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// Where the object a request reaches lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub tenant: Option<String>,
    pub project: Option<String>,
}

impl Scope {
    pub fn cluster() -> Scope {
        Scope::default()
    }

    pub fn tenant(t: &str) -> Scope {
        Scope {
            tenant: Some(t.to_string()),
            project: None,
        }
    }

    fn reached_by(&self, binding: &BindingScope) -> bool {
        match (&binding.project, &binding.tenant) {
            (Some(p), _) => self.project.as_ref() == Some(p),
            (None, Some(t)) => self.tenant.as_ref() == Some(t),
            (None, None) => true,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.project, &self.tenant) {
            (Some(p), _) => write!(f, "in project {p:?}"),
            (None, Some(t)) => write!(f, "in tenant {t:?}"),
            (None, None) => write!(f, "cluster-wide"),
        }
    }
}

/// What a list or watch may show the caller.
#[derive(Clone, Debug)]
pub enum Visibility {
    All,
    Only {
        tenants: HashSet<String>,
        projects: HashSet<String>,
    },
}

impl Visibility {
    pub fn admits(&self, scope: &Scope) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Only { tenants, projects } => {
                scope.project.as_ref().is_some_and(|p| projects.contains(p))
                    || scope.tenant.as_ref().is_some_and(|t| tenants.contains(t))
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Visibility::Only { tenants, projects } if tenants.is_empty() && projects.is_empty())
    }
}

/// A filter over stored objects of one kind, for lists and watches.
#[derive(Clone)]
pub struct ListFilter {
    rbac: Arc<Rbac>,
    info: &'static KindInfo,
    visibility: Arc<Visibility>,
}

impl ListFilter {
    pub fn admits(&self, kv: &KeyValue) -> bool {
        if matches!(*self.visibility, Visibility::All) {
            return true;
        }
        let scope = if self.info.namespaced {
            // `/registry/<plural>/<ns>/<name>`: the project is in the key.
            let ns = kv.key.split('/').nth(3).unwrap_or_default();
            self.rbac.project_scope(ns)
        } else {
            match serde_json::from_slice::<serde_json::Value>(&kv.value) {
                Ok(value) => self.rbac.stored_scope(self.info, &value, false),
                Err(_) => return false,
            }
        };
        self.visibility.admits(&scope)
    }
}

#[derive(Default)]
struct View {
    /// Custom roles, their rules canonicalised.
    roles: HashMap<String, Arc<[PolicyRule]>>,
    bindings: HashMap<String, Arc<RoleBindingSpec>>,
    by_subject: HashMap<(SubjectKind, String), BTreeSet<String>>,
    /// Project → tenant.
    projects: HashMap<String, String>,
    /// Token hash (hex) → record.
    tokens: HashMap<String, Arc<TokenRecord>>,
    /// The revision each key was last seen at (deletes included), so a late watch event never
    /// undoes a newer write this replica already applied.
    revisions: HashMap<String, u64>,
}

const ROLES: &str = "/registry/roles/";
const BINDINGS: &str = "/registry/rolebindings/";
const PROJECTS: &str = "/registry/projects/";

impl View {
    fn apply(&mut self, key: &str, revision: u64, value: Option<&[u8]>) {
        if self.revisions.get(key).is_some_and(|r| *r >= revision) {
            return;
        }
        self.revisions.insert(key.to_string(), revision);
        if let Some(name) = key.strip_prefix(ROLES) {
            match value.and_then(|v| serde_json::from_slice::<infraos_api::kinds::Role>(v).ok()) {
                Some(role) => {
                    let rules: Vec<PolicyRule> = role
                        .spec
                        .rules
                        .iter()
                        .map(PolicyRule::canonicalised)
                        .collect();
                    self.roles.insert(name.to_string(), rules.into());
                }
                None => {
                    self.roles.remove(name);
                }
            }
        } else if let Some(name) = key.strip_prefix(BINDINGS) {
            if let Some(old) = self.bindings.remove(name) {
                for s in &old.subjects {
                    if let Some(set) = self.by_subject.get_mut(&(s.kind, s.name.clone())) {
                        set.remove(name);
                    }
                }
            }
            if let Some(binding) = value
                .and_then(|v| serde_json::from_slice::<infraos_api::kinds::RoleBinding>(v).ok())
            {
                for s in &binding.spec.subjects {
                    self.by_subject
                        .entry((s.kind, s.name.clone()))
                        .or_default()
                        .insert(name.to_string());
                }
                self.bindings
                    .insert(name.to_string(), Arc::new(binding.spec));
            }
        } else if let Some(name) = key.strip_prefix(PROJECTS) {
            match value.and_then(|v| serde_json::from_slice::<infraos_api::kinds::Project>(v).ok())
            {
                Some(p) => {
                    self.projects.insert(name.to_string(), p.spec.tenant);
                }
                None => {
                    self.projects.remove(name);
                }
            }
        } else if let Some(hash) = key.strip_prefix(TOKEN_PREFIX) {
            match value.and_then(|v| serde_json::from_slice::<TokenRecord>(v).ok()) {
                Some(t) => {
                    self.tokens.insert(hash.to_string(), Arc::new(t));
                }
                None => {
                    self.tokens.remove(hash);
                }
            }
        }
    }

    /// Replaces everything under `prefix` with a fresh list, keeping what this replica wrote
    /// after the list's revision.
    fn resync(&mut self, prefix: &str, kvs: &[KeyValue], revision: u64) {
        let listed: HashSet<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        let stale: Vec<String> = self
            .revisions
            .iter()
            .filter(|(k, r)| {
                k.starts_with(prefix) && **r <= revision && !listed.contains(k.as_str())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.revisions.remove(&key);
            self.apply(&key, revision, None);
            self.revisions.remove(&key);
        }
        for kv in kvs {
            self.apply(&kv.key, kv.mod_revision, Some(&kv.value));
        }
    }

    fn rules_of(&self, role: &str) -> Option<Arc<[PolicyRule]>> {
        if let Some(builtin) = builtin_role(role) {
            return Some(builtin_rules(builtin.name));
        }
        self.roles.get(role).cloned()
    }

    fn bindings_of<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> impl Iterator<Item = &'a RoleBindingSpec> + 'a {
        let user = identity.user().map(|u| (SubjectKind::User, u.to_string()));
        let token = identity
            .token
            .as_ref()
            .map(|t| (SubjectKind::Token, t.clone()));
        let groups = identity
            .groups
            .iter()
            .map(|g| (SubjectKind::Group, g.clone()));
        let mut names = BTreeSet::new();
        for key in user.into_iter().chain(token).chain(groups) {
            if let Some(set) = self.by_subject.get(&key) {
                names.extend(set.iter().map(String::as_str));
            }
        }
        names
            .into_iter()
            .filter_map(|n| self.bindings.get(n).map(|b| &**b))
    }
}

fn builtin_rules(name: &str) -> Arc<[PolicyRule]> {
    static CACHE: std::sync::OnceLock<HashMap<&'static str, Arc<[PolicyRule]>>> =
        std::sync::OnceLock::new();
    let all = CACHE.get_or_init(|| {
        infraos_api::kinds::BUILTIN_ROLES
            .iter()
            .map(|r| {
                let rules: Vec<PolicyRule> =
                    (r.rules)().iter().map(PolicyRule::canonicalised).collect();
                (r.name, rules.into())
            })
            .collect()
    });
    all.get(name)
        .cloned()
        .unwrap_or_else(|| Arc::from(Vec::new()))
}

/// The authorizer's view, shared by every request on this replica.
#[derive(Default)]
pub struct Rbac {
    view: RwLock<View>,
}

impl Rbac {
    /// Whether `identity` may `verb` the `kind` (canonical, e.g. `Claim/log`) object `name`
    /// (None for a collection) at `scope`.
    pub fn allows(
        &self,
        identity: &Identity,
        verb: &str,
        kind: &str,
        name: Option<&str>,
        scope: &Scope,
    ) -> bool {
        if identity.node().is_some() || identity.subject.starts_with("system:") {
            return false;
        }
        if identity.groups.iter().any(|g| g == ADMINS_GROUP) {
            return true;
        }
        if READ_VERBS.contains(&verb) && CATALOG.contains(&kind) {
            return true;
        }
        let view = self.view.read();
        view.bindings_of(identity).any(|b| {
            scope.reached_by(&b.scope)
                && view
                    .rules_of(&b.role)
                    .is_some_and(|rules| rules.iter().any(|r| r.allows(verb, kind, name)))
        })
    }

    /// Where the caller may `verb` (list or watch) `kind` objects.
    pub fn visibility(&self, identity: &Identity, verb: &str, kind: &str) -> Visibility {
        if self.allows(identity, verb, kind, None, &Scope::cluster()) {
            return Visibility::All;
        }
        let view = self.view.read();
        let mut tenants = HashSet::new();
        let mut projects = HashSet::new();
        for b in view.bindings_of(identity) {
            let grants = view
                .rules_of(&b.role)
                .is_some_and(|rules| rules.iter().any(|r| r.allows(verb, kind, None)));
            if !grants {
                continue;
            }
            match (&b.scope.project, &b.scope.tenant) {
                (Some(p), _) => {
                    projects.insert(p.clone());
                }
                (None, Some(t)) => {
                    tenants.insert(t.clone());
                }
                (None, None) => return Visibility::All,
            }
        }
        Visibility::Only { tenants, projects }
    }

    /// The scope of a project by name (its tenant from the view).
    pub fn project_scope(&self, project: &str) -> Scope {
        Scope {
            tenant: self.view.read().projects.get(project).cloned(),
            project: Some(project.to_string()),
        }
    }

    /// The scope of a stored cluster-scoped object. Writes of tenant and pool quotas are the
    /// cluster's business (a tenant must not raise its own limits); reading them is the
    /// tenant's.
    pub fn stored_scope(&self, info: &KindInfo, value: &serde_json::Value, write: bool) -> Scope {
        let name = value
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let spec = |field: &str| {
            value
                .pointer(&format!("/spec/{field}"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        match info.kind {
            "Tenant" => Scope::tenant(name),
            "Project" => Scope {
                tenant: spec("tenant"),
                project: Some(name.to_string()),
            },
            "Quota" => quota_scope(self, spec("tenant"), spec("project"), write),
            "RoleBinding" => {
                let project = value
                    .pointer("/spec/scope/project")
                    .and_then(|v| v.as_str());
                let tenant = value.pointer("/spec/scope/tenant").and_then(|v| v.as_str());
                match (project, tenant) {
                    (Some(p), _) => self.project_scope(p),
                    (None, Some(t)) => Scope::tenant(t),
                    (None, None) => Scope::cluster(),
                }
            }
            _ => Scope::cluster(),
        }
    }

    /// The token record for a hash, if this replica has seen it.
    pub fn token(&self, hash_hex: &str) -> Option<Arc<TokenRecord>> {
        self.view.read().tokens.get(hash_hex).cloned()
    }

    /// Applies a write this replica committed (or read), ahead of its watch event.
    pub fn observe(&self, key: &str, revision: u64, value: Option<&[u8]>) {
        self.view.write().apply(key, revision, value);
    }

    fn resync(&self, prefix: &str, kvs: &[KeyValue], revision: u64) {
        self.view.write().resync(prefix, kvs, revision);
    }

    fn events(&self, events: &[Event]) {
        let mut view = self.view.write();
        for e in events {
            let value = (e.kind == EventKind::Put).then_some(&e.kv.value[..]);
            view.apply(&e.kv.key, e.kv.mod_revision, value);
        }
    }

    /// The rules of a role by name, built-in or stored.
    pub fn role_rules(&self, role: &str) -> Option<Arc<[PolicyRule]>> {
        self.view.read().rules_of(role)
    }

    /// Loads the view from the store once, so the first requests are decided on full data.
    pub async fn load(&self, store: &dyn Store) -> Result<(), infraos_store::StoreError> {
        for prefix in [ROLES, BINDINGS, PROJECTS, TOKEN_PREFIX] {
            let mut after: Option<String> = None;
            loop {
                let page = store.range(prefix, after.as_deref(), 5000).await?;
                {
                    let mut view = self.view.write();
                    for kv in &page.kvs {
                        view.apply(&kv.key, kv.mod_revision, Some(&kv.value));
                    }
                }
                after = page.kvs.last().map(|kv| kv.key.clone());
                if !page.more {
                    break;
                }
            }
        }
        Ok(())
    }
}

fn quota_scope(rbac: &Rbac, tenant: Option<String>, project: Option<String>, write: bool) -> Scope {
    match (project, tenant) {
        (Some(p), _) => rbac.project_scope(&p),
        (None, Some(t)) if !write => Scope::tenant(&t),
        _ => Scope::cluster(),
    }
}

/// Keeps the view current on this replica: one reflector per prefix, on every replica
/// (followers serve the API too).
pub fn spawn_feed(
    state: &AppState,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Change<&'static str>>(64);
    for prefix in [ROLES, BINDINGS, PROJECTS, TOKEN_PREFIX] {
        tokio::spawn(reflector::run(
            state.store.clone(),
            prefix.to_string(),
            prefix,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    let rbac = state.rbac.clone();
    tokio::spawn(async move {
        while let Some(change) = rx.recv().await {
            match change {
                Change::Resync(prefix, kvs, revision) => rbac.resync(prefix, &kvs, revision),
                Change::Events(_, events) => rbac.events(&events),
            }
        }
    })
}

// ---- requests ------------------------------------------------------------------------------

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

fn method_verb(method: &http::Method, collection: bool, watch: bool) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ if collection && watch => "watch",
        _ if collection => "list",
        _ => "get",
    }
}

/// Maps a method and path onto RBAC attributes; `None` for paths the router will 404.
pub fn target(method: &http::Method, path: &str, query: Option<&str>) -> Option<Target> {
    if path.starts_with("/agent/v1/") {
        return Some(Target::AgentOnly);
    }
    if path == "/openapi/v3" {
        return Some(Target::Public);
    }
    let rest = path.strip_prefix(crate::api::PREFIX)?;
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch"))
    });
    let (namespace, plural, name, sub) = match parts.as_slice() {
        ["signingkey"] => return Some(Target::Public),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    let base = match plural {
        "auditrecords" => "AuditRecord".to_string(),
        "tokens" => "Token".to_string(),
        "jointokens" => "JoinToken".to_string(),
        other => infraos_api::object::kind_by_plural(other)?.kind.to_string(),
    };
    let collection = name.is_none();
    let mut verb = method_verb(method, collection, watch).to_string();
    let kind = match (base.as_str(), sub) {
        // `/auditrecords/head` and the like: reads of the chain.
        ("AuditRecord", Some(_)) => {
            verb = "get".into();
            base
        }
        (_, None) => base,
        (_, Some("status")) => format!("{base}/status"),
        ("Claim", Some("log")) => "Claim/log".into(),
        ("Claim", Some("explain")) => base,
        ("Claim", Some(action @ ("renew" | "release"))) if method == http::Method::POST => {
            verb = action.to_string();
            base
        }
        _ => return None,
    };
    Some(Target::Request(Attributes {
        verb,
        kind,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    }))
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
    if identity.node().is_some() {
        // The node authorizer in auth.rs has confined it already.
        return next.run(request).await;
    }
    let target = target(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    let attrs = match target {
        None | Some(Target::Public) => return next.run(request).await,
        Some(Target::AgentOnly) => {
            let e = ApiError::forbidden(format!(
                "{} may not use the agent API: it is for nodes with a client certificate",
                identity.subject
            ));
            let (source, path) = origin(&request);
            return refuse(&state, source, path, &identity, "agent", None, e).await;
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
        Err(e) => {
            let (source, path) = origin(&request);
            refuse(
                &state,
                source,
                path,
                &identity,
                &attrs.verb,
                Some(&attrs),
                e,
            )
            .await
        }
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

/// The source address and path of a request, taken before any await (a body is not Sync).
fn origin(request: &Request) -> (Option<String>, String) {
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string());
    (source, request.uri().path().to_string())
}

async fn refuse(
    state: &AppState,
    source: Option<String>,
    path: String,
    identity: &Identity,
    verb: &str,
    attrs: Option<&Attributes>,
    error: ApiError,
) -> Response {
    let actor = crate::audit::Actor {
        subject: identity.subject.clone(),
        source,
    };
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
        None => crate::audit::object_ref("", None, &path),
    };
    crate::audit::refusal(
        &*state.store,
        state.clock.now(),
        &actor,
        verb,
        object,
        &error,
    )
    .await;
    error.into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity {
            subject: format!("user:{name}"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            token: None,
        }
    }

    fn binding(name: &str, role: &str, scope: BindingScope, user: &str) -> (String, Vec<u8>) {
        let b = infraos_api::kinds::RoleBinding::new(
            name,
            None,
            RoleBindingSpec {
                role: role.into(),
                scope,
                subjects: vec![infraos_api::kinds::Subject {
                    kind: SubjectKind::User,
                    name: user.into(),
                }],
            },
        );
        (format!("{BINDINGS}{name}"), serde_json::to_vec(&b).unwrap())
    }

    fn project(name: &str, tenant: &str) -> (String, Vec<u8>) {
        let p = infraos_api::kinds::Project::new(
            name,
            None,
            ProjectSpec {
                tenant: tenant.into(),
                description: None,
            },
        );
        (format!("{PROJECTS}{name}"), serde_json::to_vec(&p).unwrap())
    }

    fn rbac() -> Rbac {
        let rbac = Rbac::default();
        for (rev, (k, v)) in [
            project("p1", "t1"),
            project("p2", "t1"),
            project("q1", "t2"),
            binding(
                "alice-t1",
                "tenant-admin",
                BindingScope {
                    tenant: Some("t1".into()),
                    project: None,
                },
                "alice",
            ),
            binding(
                "bob-p1",
                "project-member",
                BindingScope {
                    tenant: None,
                    project: Some("p1".into()),
                },
                "bob",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            rbac.observe(&k, rev as u64 + 1, Some(&v));
        }
        rbac
    }

    #[test]
    fn bindings_reach_their_scope_only() {
        let rbac = rbac();
        let alice = user("alice", &[]);
        let bob = user("bob", &[]);
        let p1 = rbac.project_scope("p1");
        let q1 = rbac.project_scope("q1");
        assert!(rbac.allows(&alice, "create", "Claim", None, &p1));
        assert!(rbac.allows(&alice, "create", "Claim", None, &rbac.project_scope("p2")));
        assert!(!rbac.allows(&alice, "create", "Claim", None, &q1));
        assert!(rbac.allows(&bob, "create", "Claim", None, &p1));
        assert!(!rbac.allows(&bob, "create", "Claim", None, &rbac.project_scope("p2")));
        assert!(!rbac.allows(&bob, "delete", "Project", Some("p1"), &p1));
        assert!(rbac.allows(&bob, "get", "ResourceClass", Some("gpu"), &Scope::cluster()));
        assert!(!rbac.allows(&bob, "get", "Node", Some("n"), &Scope::cluster()));
        let admin = user("admin", &[ADMINS_GROUP]);
        assert!(rbac.allows(&admin, "delete", "Node", Some("n"), &Scope::cluster()));
    }

    #[test]
    fn visibility_collects_tenants_and_projects() {
        let rbac = rbac();
        match rbac.visibility(&user("alice", &[]), "list", "Claim") {
            Visibility::Only { tenants, projects } => {
                assert!(tenants.contains("t1") && projects.is_empty());
            }
            Visibility::All => panic!("alice sees one tenant"),
        }
        assert!(
            rbac.visibility(&user("eve", &[]), "list", "Claim")
                .is_empty()
        );
    }

    #[test]
    fn late_watch_events_do_not_undo_newer_writes() {
        let rbac = rbac();
        let (k, _) = binding("bob-p1", "project-member", BindingScope::default(), "bob");
        rbac.observe(&k, 100, None);
        let (k2, v2) = binding(
            "bob-p1",
            "project-member",
            BindingScope {
                tenant: None,
                project: Some("p1".into()),
            },
            "bob",
        );
        rbac.observe(&k2, 50, Some(&v2));
        assert!(!rbac.allows(
            &user("bob", &[]),
            "get",
            "Claim",
            Some("c"),
            &rbac.project_scope("p1")
        ));
    }

    #[test]
    fn escalation_is_refused() {
        let rbac = rbac();
        let alice = user("alice", &[]);
        let t1 = Scope::tenant("t1");
        let grant = |role: &str| RoleBindingSpec {
            role: role.into(),
            scope: BindingScope {
                tenant: Some("t1".into()),
                project: None,
            },
            subjects: vec![],
        };
        assert!(check_escalation(&rbac, &alice, &grant("project-member"), &t1).is_ok());
        assert!(check_escalation(&rbac, &alice, &grant("cluster-admin"), &t1).is_err());
        assert!(check_escalation(&rbac, &alice, &grant("auditor"), &t1).is_err());
        assert!(check_escalation(&rbac, &alice, &grant("no-such"), &t1).is_err());
    }

    #[test]
    fn paths_map_to_attributes() {
        let get = http::Method::GET;
        let t = |m: &http::Method, p: &str, q: Option<&str>| match target(m, p, q) {
            Some(Target::Request(a)) => Some((a.verb, a.kind, a.namespace, a.name)),
            _ => None,
        };
        assert_eq!(
            t(
                &get,
                "/apis/infraos.io/v1/namespaces/p/claims",
                Some("watch=true")
            ),
            Some(("watch".into(), "Claim".into(), Some("p".into()), None))
        );
        assert_eq!(
            t(
                &http::Method::POST,
                "/apis/infraos.io/v1/namespaces/p/claims/c/renew",
                None
            ),
            Some((
                "renew".into(),
                "Claim".into(),
                Some("p".into()),
                Some("c".into())
            ))
        );
        assert_eq!(
            t(&get, "/apis/infraos.io/v1/namespaces/p/claims/c/log", None),
            Some((
                "get".into(),
                "Claim/log".into(),
                Some("p".into()),
                Some("c".into())
            ))
        );
        assert_eq!(
            t(
                &http::Method::PUT,
                "/apis/infraos.io/v1/nodes/n/status",
                None
            ),
            Some((
                "update".into(),
                "Node/status".into(),
                None,
                Some("n".into())
            ))
        );
        assert_eq!(
            t(
                &http::Method::DELETE,
                "/apis/infraos.io/v1/tokens/abc",
                None
            ),
            Some(("delete".into(), "Token".into(), None, Some("abc".into())))
        );
        assert_eq!(t(&get, "/apis/infraos.io/v1/gadgets", None), None);
        assert_eq!(
            target(&get, "/agent/v1/heartbeat", None),
            Some(Target::AgentOnly)
        );
    }
}
