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
//! The decisions come from an in-memory view of Roles, RoleBindings, Tenants, Projects (for
//! their tenants) and API tokens, fed by watches on every replica and updated at once by this
//! replica's own writes.
//!
//! A binding names its scope by name, and names come back: a project deleted and created
//! again (perhaps in another tenant) is another project. So a binding also records the uid of
//! the Project or Tenant it was made for ([`BindingScope::uid`], filled in by admission), and
//! grants nothing once that object is gone ([`lifecycle`] also deletes it with its scope).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use infraos_api::kinds::{
    ADMINS_GROUP, ApprovalRule, BindingScope, PolicyRule, RoleBindingSpec, SubjectKind,
    builtin_role,
};
use infraos_api::{KindInfo, Time};
use infraos_store::{Event, EventKind, KeyValue, Store};
use parking_lot::RwLock;

use crate::identity::{Identity, TOKEN_PREFIX, TokenRecord};
use crate::reflector::{self, Change};

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

/// A stored binding, as the view keeps it.
struct Binding {
    spec: RoleBindingSpec,
    /// When it was created: a binding stored before bindings recorded their scope's uid is
    /// taken for the current scope object only if it is not older than that object.
    created: Option<Time>,
}

/// A Tenant or Project, as far as bindings are concerned: which incarnation of the name it is.
#[derive(Clone, Debug)]
struct ScopeObject {
    uid: String,
    created: Option<Time>,
}

/// A project: its tenant, and which incarnation of the name it is.
#[derive(Clone, Debug)]
struct ProjectEntry {
    tenant: String,
    object: ScopeObject,
}

#[derive(Default)]
struct View {
    /// Custom roles, their rules canonicalised.
    roles: HashMap<String, Arc<[PolicyRule]>>,
    bindings: HashMap<String, Arc<Binding>>,
    by_subject: HashMap<(SubjectKind, String), BTreeSet<String>>,
    projects: HashMap<String, ProjectEntry>,
    tenants: HashMap<String, ScopeObject>,
    /// Token hash (hex) → record.
    tokens: HashMap<String, Arc<TokenRecord>>,
    /// Revoked nodes: their certificates and joins are refused.
    revoked_nodes: HashSet<String>,
    /// Approval rules of Policies, by policy name.
    approval_rules: HashMap<String, Arc<ApprovalRule>>,
    /// The revision each key was last seen at (deletes included), so a late watch event never
    /// undoes a newer write this replica already applied.
    revisions: HashMap<String, u64>,
}

const ROLES: &str = "/registry/roles/";
const BINDINGS: &str = "/registry/rolebindings/";
const PROJECTS: &str = "/registry/projects/";
const TENANTS: &str = "/registry/tenants/";
/// Where node revocations live in the store: `/infraos/revokednodes/<node>`. The authorizer
/// reads them; the revocation handlers write them.
pub const REVOKED_NODES: &str = "/infraos/revokednodes/";
const POLICIES: &str = "/registry/policies/";
/// Every prefix the view is fed from.
const FED: [&str; 7] = [
    ROLES,
    BINDINGS,
    PROJECTS,
    TENANTS,
    TOKEN_PREFIX,
    REVOKED_NODES,
    POLICIES,
];

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
                for s in &old.spec.subjects {
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
                let created = binding.metadata.creation_timestamp;
                self.bindings.insert(
                    name.to_string(),
                    Arc::new(Binding {
                        spec: binding.spec,
                        created,
                    }),
                );
            }
        } else if let Some(name) = key.strip_prefix(PROJECTS) {
            match value.and_then(|v| serde_json::from_slice::<infraos_api::kinds::Project>(v).ok())
            {
                Some(p) => {
                    let object = ScopeObject {
                        uid: p.metadata.uid,
                        created: p.metadata.creation_timestamp,
                    };
                    self.projects.insert(
                        name.to_string(),
                        ProjectEntry {
                            tenant: p.spec.tenant,
                            object,
                        },
                    );
                }
                None => {
                    self.projects.remove(name);
                }
            }
        } else if let Some(name) = key.strip_prefix(TENANTS) {
            match value.and_then(|v| serde_json::from_slice::<infraos_api::kinds::Tenant>(v).ok()) {
                Some(t) => {
                    self.tenants.insert(
                        name.to_string(),
                        ScopeObject {
                            uid: t.metadata.uid,
                            created: t.metadata.creation_timestamp,
                        },
                    );
                }
                None => {
                    self.tenants.remove(name);
                }
            }
        } else if let Some(name) = key.strip_prefix(POLICIES) {
            match value
                .and_then(|v| serde_json::from_slice::<infraos_api::kinds::Policy>(v).ok())
                .and_then(|p| p.spec.approval)
            {
                Some(rule) => {
                    self.approval_rules.insert(name.to_string(), Arc::new(rule));
                }
                None => {
                    self.approval_rules.remove(name);
                }
            }
        } else if let Some(node) = key.strip_prefix(REVOKED_NODES) {
            if value.is_some() {
                self.revoked_nodes.insert(node.to_string());
            } else {
                self.revoked_nodes.remove(node);
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

    /// The Project or Tenant object a binding's scope names, as it exists now.
    fn scope_object(&self, scope: &BindingScope) -> Option<&ScopeObject> {
        match scope.object()? {
            ("Project", name) => self.projects.get(name).map(|p| &p.object),
            (_, name) => self.tenants.get(name),
        }
    }

    /// Whether a binding still speaks for its scope: cluster bindings always; others while
    /// the Project or Tenant they were made for exists — the same uid, or, for bindings stored
    /// before uids were recorded, created no earlier than the object (admission has always
    /// required the scope to exist, so an older binding was made for an earlier object of
    /// that name).
    fn holds(&self, binding: &Binding) -> bool {
        let scope = &binding.spec.scope;
        if scope.object().is_none() {
            return true;
        }
        let Some(current) = self.scope_object(scope) else {
            return false;
        };
        match &scope.uid {
            Some(uid) => *uid == current.uid,
            None => match (binding.created, current.created) {
                (Some(made), Some(scope_made)) => made >= scope_made,
                _ => false,
            },
        }
    }

    /// The bindings naming the caller (its user, token or groups) that still hold.
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
            .filter_map(|n| self.bindings.get(n))
            .filter(|b| self.holds(b))
            .map(|b| &b.spec)
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
            tenant: self
                .view
                .read()
                .projects
                .get(project)
                .map(|p| p.tenant.clone()),
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

    /// How many approvers a new claim needs, and why; `None` when it needs none. Without a
    /// Policy, a workload needing a high-risk tier (network, storage, privileged) needs one.
    pub fn approval_needed(
        &self,
        project: &str,
        labels: &std::collections::BTreeMap<String, String>,
        workload: Option<&infraos_api::kinds::WorkloadSpec>,
    ) -> Option<(u32, Vec<String>)> {
        let tiers = workload.map(|w| w.required_tiers()).unwrap_or_default();
        let mut required = 0;
        let mut because = Vec::new();
        for t in workload.map(|w| w.high_risk_tiers()).unwrap_or_default() {
            required = required.max(1);
            because.push(format!("needs the {} tier", t.as_str()));
        }
        // What a privileged workload asks for, so approvers see it (root, host network…).
        because.extend(workload.map(|w| w.privileges()).unwrap_or_default());
        let view = self.view.read();
        let mut names: Vec<&String> = view.approval_rules.keys().collect();
        names.sort();
        for name in names {
            if let Some(rule) = view.approval_rules.get(name)
                && rule.covers(project, labels, &tiers)
            {
                required = required.max(rule.approvers);
                because.push(format!("policy {name}"));
            }
        }
        (required > 0).then_some((required, because))
    }

    /// Whether the node was revoked (its certificate and joins are refused).
    pub fn node_revoked(&self, node: &str) -> bool {
        self.view.read().revoked_nodes.contains(node)
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
        for prefix in FED {
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
    rbac: Arc<Rbac>,
    store: Arc<dyn Store>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Change<&'static str>>(64);
    for prefix in FED {
        tokio::spawn(reflector::run(
            store.clone(),
            prefix.to_string(),
            prefix,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    tokio::spawn(async move {
        while let Some(change) = rx.recv().await {
            match change {
                Change::Resync(prefix, kvs, revision) => rbac.resync(prefix, &kvs, revision),
                Change::Events(_, events) => rbac.events(&events),
            }
        }
    })
}

pub mod lifecycle;
mod request;
#[cfg(test)]
mod tests;

pub use request::{
    Attributes, Target, authorize, check_escalation, check_object, check_role_name, target,
};
