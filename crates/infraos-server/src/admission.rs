//! Admission: what must hold between objects, checked after a request's object has been decoded
//! and validated on its own (schema, fields) and before it is stored. A chain of links, each
//! seeing every write in two phases, as Kubernetes' admission does:
//!
//! ```text
//!  default (mutating):   builtin ─→ approval ─→ …
//!  validate:             builtin ─→ approval ─→ …      (delete: validate_delete)
//! ```
//! - `builtin`: namespaced objects live in an existing Project; then the kind's own rules,
//!   from its strategy (`crate::kinds`): defaults derived from other objects, immutable
//!   fields, references (a Project's tenant, a Resource's class, a Claim's classes and
//!   selectors), and in-use objects not deleted from under their users;
//! - `approval`: a new claim whose project or workload needs approval waits for it.
//!
//! A policy engine is one more [`Link`] in [`CHAIN`].

use foldhash::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use infraos_api::kinds::{ClaimPhase, ResourceClassSpec};
use infraos_api::{KindInfo, Object, TypedObject};
use infraos_store::Store;

use crate::authz::Rbac;
use crate::error::ApiError;
use crate::kinds::Lookups;
use crate::objects::{self, decode_typed};

/// Catalog objects (ResourceClasses, PriorityClasses) as last decoded, by key with their
/// revision: claims name the same few over and over, and they change rarely. The store is
/// still read every time (so a change is seen at once); only the decoding is saved.
#[derive(Default)]
pub struct ClassCache {
    decoded: parking_lot::RwLock<HashMap<String, (u64, AnySpec)>>,
}

/// A decoded spec of some kind, told apart by downcasting.
type AnySpec = Arc<dyn std::any::Any + Send + Sync>;

impl ClassCache {
    pub(crate) async fn get(
        &self,
        store: &dyn Store,
        name: &str,
    ) -> Result<Option<Arc<ResourceClassSpec>>, ApiError> {
        Ok(self
            .object::<ResourceClassSpec>(store, name)
            .await?
            .map(|(_, spec)| spec))
    }

    /// The named cluster object of kind `K`: its name and spec.
    pub(crate) async fn object<K: infraos_api::Kind + Send + Sync + 'static>(
        &self,
        store: &dyn Store,
        name: &str,
    ) -> Result<Option<(String, Arc<K>)>, ApiError> {
        let key = objects::key(K::INFO, None, name);
        match store.get(&key).await? {
            Some(kv) => Ok(Some((name.to_string(), self.decode::<K>(&kv)?))),
            None => Ok(None),
        }
    }

    /// `kv`'s spec, decoded once per revision.
    pub(crate) fn decode<K: infraos_api::Kind + Send + Sync + 'static>(
        &self,
        kv: &infraos_store::KeyValue,
    ) -> Result<Arc<K>, ApiError> {
        if let Some((revision, spec)) = self.decoded.read().get(&kv.key)
            && *revision == kv.mod_revision
            && let Ok(spec) = Arc::clone(spec).downcast::<K>()
        {
            return Ok(spec);
        }
        let spec = Arc::new(decode_typed::<K>(kv)?.spec);
        let mut decoded = self.decoded.write();
        if decoded.len() > 10_000 {
            decoded.clear();
        }
        decoded.insert(
            kv.key.clone(),
            (kv.mod_revision, Arc::clone(&spec) as AnySpec),
        );
        Ok(spec)
    }
}

/// A stored cluster object of kind `K` by name.
pub(crate) async fn get_typed<K: infraos_api::Kind>(
    store: &dyn Store,
    name: &str,
) -> Result<Option<Object<K>>, ApiError> {
    let key = objects::key(K::INFO, None, name);
    match store.get(&key).await? {
        Some(kv) => Ok(Some(decode_typed::<K>(&kv)?)),
        None => Ok(None),
    }
}

async fn require_project(store: &dyn Store, namespace: &str) -> Result<(), ApiError> {
    let key = objects::key(infraos_api::kinds::ProjectSpec::INFO, None, namespace);
    if store.get(&key).await?.is_none() {
        return Err(ApiError::not_found("Project", namespace));
    }
    Ok(())
}

use infraos_api::Kind as _;

/// A write as admission sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    pub lookups: Lookups<'a>,
    /// The stored object, on updates.
    pub old: Option<&'a TypedObject>,
    /// Who asks, for links that decide by requester; `None` for the control plane's and
    /// agents' own writes.
    pub requester: Option<Requester<'a>>,
}

/// The user behind a request, and the authorizer's view to judge it by.
#[derive(Clone, Copy)]
pub struct Requester<'a> {
    pub rbac: &'a Rbac,
    pub subject: &'a str,
    pub namespace: Option<&'a str>,
}

impl std::fmt::Debug for Requester<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("subject", &self.subject)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl<'a> Attempt<'a> {
    pub fn new(store: &'a dyn Store, classes: &'a ClassCache) -> Self {
        Attempt {
            lookups: Lookups { store, classes },
            old: None,
            requester: None,
        }
    }

    pub fn updating(mut self, old: &'a TypedObject) -> Self {
        self.old = Some(old);
        self
    }

    pub fn by(mut self, requester: Requester<'a>) -> Self {
        self.requester = Some(requester);
        self
    }
}

/// One link of the admission chain.
#[async_trait]
pub trait Link: Send + Sync {
    /// Its name, for logs and errors.
    fn name(&self) -> &'static str;

    /// The mutating phase: fills in what the link derives.
    async fn default(&self, _a: &Attempt<'_>, _object: &mut TypedObject) -> Result<(), ApiError> {
        Ok(())
    }

    /// The validating phase: refuses what must not be stored.
    async fn validate(&self, _a: &Attempt<'_>, _object: &TypedObject) -> Result<(), ApiError> {
        Ok(())
    }

    /// Refuses a deletion.
    async fn validate_delete(
        &self,
        _store: &dyn Store,
        _info: &KindInfo,
        _name: &str,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}

/// The links, in order.
pub static CHAIN: &[&dyn Link] = &[&Builtin, &Approval];

/// The mutating phase of every link.
pub async fn default(a: &Attempt<'_>, object: &mut TypedObject) -> Result<(), ApiError> {
    for link in CHAIN {
        link.default(a, object).await?;
    }
    Ok(())
}

/// The validating phase of every link.
pub async fn validate(a: &Attempt<'_>, object: &TypedObject) -> Result<(), ApiError> {
    for link in CHAIN {
        link.validate(a, object).await?;
    }
    Ok(())
}

/// Every link's say on a deletion.
pub async fn validate_delete(
    store: &dyn Store,
    info: &KindInfo,
    name: &str,
) -> Result<(), ApiError> {
    for link in CHAIN {
        link.validate_delete(store, info, name).await?;
    }
    Ok(())
}

/// The rules every object follows, and its kind's own (`crate::kinds`).
#[derive(Debug)]
pub struct Builtin;

#[async_trait]
impl Link for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    async fn default(&self, a: &Attempt<'_>, object: &mut TypedObject) -> Result<(), ApiError> {
        crate::kinds::of(object)
            .default(a.lookups, object, a.old)
            .await
    }

    async fn validate(&self, a: &Attempt<'_>, object: &TypedObject) -> Result<(), ApiError> {
        let strategy = crate::kinds::of(object);
        if let Some(old) = a.old {
            strategy.admit_update(object, old)?;
        }
        if let Some(ns) = object.meta().namespace.as_deref() {
            require_project(a.lookups.store, ns).await?;
        }
        strategy.admit(a.lookups, object).await
    }

    async fn validate_delete(
        &self,
        store: &dyn Store,
        info: &KindInfo,
        name: &str,
    ) -> Result<(), ApiError> {
        crate::kinds::strategy(info).admit_delete(store, name).await
    }
}

/// New claims that need approval (by their project's policy or their workload's tiers) wait
/// for it in `PendingApproval`.
#[derive(Debug)]
pub struct Approval;

#[async_trait]
impl Link for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }

    async fn default(&self, a: &Attempt<'_>, object: &mut TypedObject) -> Result<(), ApiError> {
        let (None, Some(requester), TypedObject::Claim(claim)) = (a.old, a.requester, object)
        else {
            return Ok(());
        };
        let ns = requester.namespace.unwrap_or_default();
        let needed = requester.rbac.approval_needed(
            ns,
            &claim.metadata.labels,
            claim.spec.workload.as_ref(),
        );
        if let (Some((required, because)), Some(status)) = (needed, claim.status.as_mut()) {
            status.phase = ClaimPhase::PendingApproval;
            status.reason = Some("ApprovalRequired".into());
            status.message = Some(format!(
                "needs {required} approval(s) by someone other than {} ({}): \
                 `infraos approve {} -n {ns}`",
                requester.subject,
                because.join(", "),
                claim.metadata.name,
            ));
            status.approval = Some(infraos_api::kinds::ApprovalStatus {
                required,
                requester: requester.subject.to_string(),
                because,
                approvals: Vec::new(),
                refusal: None,
            });
        }
        Ok(())
    }
}
