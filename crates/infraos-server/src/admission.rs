//! Admission: what must hold between objects, checked after a request's object has been decoded
//! and validated on its own (schema, fields) and before it is stored.
//!
//! - namespaced objects live in an existing Project; a Project names an existing Tenant;
//! - a Resource follows its class (dimensions, item attribute schema);
//! - a Claim asks for existing classes the way they are counted, and its CEL selectors
//!   type-check against the class's attribute schema;
//! - immutable fields stay as they were; in-use objects are not deleted from under their users.

use foldhash::HashMap;
use std::sync::Arc;

use infraos_api::kinds::{
    ClassKind, DEFAULT_QUEUE, ITEMS_DIMENSION, PriorityClassSpec, ProjectSpec, QueueSpec,
    QuotaSpec, ResourceClassSpec, TenantSpec,
};
use infraos_api::validation::Errors;
use infraos_api::{KindInfo, Object, TypedObject};
use infraos_store::Store;

use crate::error::ApiError;
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
    async fn get(
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
    async fn object<K: infraos_api::Kind + Send + Sync + 'static>(
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
    fn decode<K: infraos_api::Kind + Send + Sync + 'static>(
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

async fn get_typed<K: infraos_api::Kind>(
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

/// Fills in what the server derives from other objects: a Claim's priority, from its
/// PriorityClass (or the global default class), as Kubernetes does for Pods. On update the
/// stored value is kept, so a class's value changing later does not change existing claims.
/// A RoleBinding gets the uid of the Project or Tenant it is scoped to.
pub async fn default(
    store: &dyn Store,
    cache: &ClassCache,
    object: &mut TypedObject,
    old: Option<&TypedObject>,
) -> Result<(), ApiError> {
    if let TypedObject::RoleBinding(binding) = object {
        return crate::authz::lifecycle::bind_to_scope(store, binding).await;
    }
    let TypedObject::Claim(claim) = object else {
        return Ok(());
    };
    if let Some(TypedObject::Claim(old)) = old {
        if claim.spec.priority.is_none()
            && claim.spec.priority_class_name == old.spec.priority_class_name
        {
            claim.spec.priority = old.spec.priority;
        }
        if claim.spec.priority_class_name.is_none() {
            claim.spec.priority_class_name = old.spec.priority_class_name.clone();
        }
        return Ok(());
    }
    let name = claim.metadata.name.clone();
    let class = match &claim.spec.priority_class_name {
        Some(class_name) => match cache.object::<PriorityClassSpec>(store, class_name).await? {
            Some(class) => Some(class),
            None => {
                return Err(ApiError::invalid_field(
                    "Claim",
                    &name,
                    "spec.priorityClassName",
                    format!("PriorityClass {class_name:?} not found"),
                ));
            }
        },
        None => {
            let all = store
                .range(&objects::prefix(PriorityClassSpec::INFO, None), None, 0)
                .await?;
            let mut default: Option<(String, Arc<PriorityClassSpec>)> = None;
            for kv in &all.kvs {
                let spec = cache.decode::<PriorityClassSpec>(kv)?;
                // Several global defaults: the highest value wins, as documented.
                if spec.global_default && default.as_ref().is_none_or(|(_, d)| spec.value > d.value)
                {
                    let name = kv.key.rsplit('/').next().unwrap_or_default().to_string();
                    default = Some((name, spec));
                }
            }
            default
        }
    };
    let value = class.as_ref().map(|(_, c)| c.value);
    if let Some(given) = claim.spec.priority
        && Some(given) != value.or(Some(0))
    {
        return Err(ApiError::invalid_field(
            "Claim",
            &name,
            "spec.priority",
            "is set by the server from spec.priorityClassName; leave it out",
        ));
    }
    if let Some((name, class)) = class {
        claim.spec.priority_class_name = Some(name);
        claim.spec.priority = Some(class.value);
    }
    Ok(())
}

/// Checks that a Quota's classes and dimensions exist and its tenant or project does.
async fn admit_quota(
    store: &dyn Store,
    classes: &ClassCache,
    quota: &Object<QuotaSpec>,
    errors: &mut Errors,
) -> Result<(), ApiError> {
    if let Some(tenant) = &quota.spec.tenant
        && get_typed::<TenantSpec>(store, tenant).await?.is_none()
    {
        errors.add("spec.tenant", format!("Tenant {tenant:?} not found"));
    }
    if let Some(project) = &quota.spec.project
        && get_typed::<ProjectSpec>(store, project).await?.is_none()
    {
        errors.add("spec.project", format!("Project {project:?} not found"));
    }
    for (field, amounts) in [
        ("spec.limits", &quota.spec.limits),
        ("spec.borrowingLimit", &quota.spec.borrowing_limit),
    ] {
        for (class_name, dims) in amounts {
            let Some(class) = classes.get(store, class_name).await? else {
                errors.add(
                    format!("{field}.{class_name}"),
                    format!("ResourceClass {class_name:?} not found"),
                );
                continue;
            };
            for dim in dims.keys() {
                let known = match class.kind {
                    ClassKind::Counted => class.has_dimension(dim),
                    ClassKind::Items => dim == ITEMS_DIMENSION,
                };
                if !known {
                    let expected = match class.kind {
                        ClassKind::Counted => {
                            format!("class {class_name:?} has no dimension {dim:?}")
                        }
                        ClassKind::Items => format!(
                            "class {class_name:?} has items: limit their number with {ITEMS_DIMENSION:?}"
                        ),
                    };
                    errors.add(format!("{field}.{class_name}.{dim}"), expected);
                }
            }
        }
    }
    Ok(())
}

/// Checks a new object against the objects it refers to.
pub async fn admit(
    store: &dyn Store,
    classes: &ClassCache,
    object: &TypedObject,
) -> Result<(), ApiError> {
    let meta = object.meta();
    if let Some(ns) = meta.namespace.as_deref() {
        require_project(store, ns).await?;
    }
    let kind_name = |o: &TypedObject| match o {
        TypedObject::Claim(_) => "Claim",
        TypedObject::Resource(_) => "Resource",
        TypedObject::Project(_) => "Project",
        _ => "",
    };
    let invalid = |errors: Errors| -> Result<(), ApiError> {
        errors
            .into_result()
            .map_err(|e| ApiError::invalid(kind_name(object), &meta.name, &e))
    };
    match object {
        TypedObject::Project(project) => {
            let tenant = &project.spec.tenant;
            if get_typed::<TenantSpec>(store, tenant).await?.is_none() {
                let mut errors = Errors::default();
                errors.add("spec.tenant", format!("Tenant {tenant:?} not found"));
                return invalid(errors);
            }
        }
        TypedObject::Resource(resource) => {
            let class_name = &resource.spec.class;
            let Some(class) = classes.get(store, class_name).await? else {
                let mut errors = Errors::default();
                errors.add(
                    "spec.class",
                    format!("ResourceClass {class_name:?} not found"),
                );
                return invalid(errors);
            };
            resource
                .spec
                .validate_against_class(&class)
                .map_err(|e| ApiError::invalid("Resource", &meta.name, &e))?;
        }
        TypedObject::RoleBinding(binding) => {
            let mut errors = Errors::default();
            let spec = &binding.spec;
            if infraos_api::kinds::builtin_role(&spec.role).is_none()
                && get_typed::<infraos_api::kinds::RoleSpec>(store, &spec.role)
                    .await?
                    .is_none()
            {
                errors.add(
                    "spec.role",
                    format!(
                        "no role {:?}: name a built-in role ({}) or a Role object",
                        spec.role,
                        infraos_api::kinds::BUILTIN_ROLES
                            .iter()
                            .map(|r| r.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            if let Some(project) = &spec.scope.project {
                match get_typed::<ProjectSpec>(store, project).await? {
                    None => errors.add(
                        "spec.scope.project",
                        format!("Project {project:?} not found"),
                    ),
                    Some(p) => {
                        if let Some(tenant) = &spec.scope.tenant
                            && &p.spec.tenant != tenant
                        {
                            errors.add(
                                "spec.scope.tenant",
                                format!(
                                    "project {project:?} belongs to tenant {:?}, not {tenant:?}",
                                    p.spec.tenant
                                ),
                            );
                        }
                    }
                }
            } else if let Some(tenant) = &spec.scope.tenant
                && get_typed::<TenantSpec>(store, tenant).await?.is_none()
            {
                errors.add("spec.scope.tenant", format!("Tenant {tenant:?} not found"));
            }
            return errors
                .into_result()
                .map_err(|e| ApiError::invalid("RoleBinding", &meta.name, &e));
        }
        TypedObject::Quota(quota) => {
            let mut errors = Errors::default();
            admit_quota(store, classes, quota, &mut errors).await?;
            return errors
                .into_result()
                .map_err(|e| ApiError::invalid("Quota", &meta.name, &e));
        }
        TypedObject::Claim(claim) => {
            let mut errors = Errors::default();
            for name in claim.spec.scoring.iter().flat_map(|s| s.weights.keys()) {
                if !infraos_scheduler::plugins::NAMES.contains(&name.as_str()) {
                    errors.add(
                        format!("spec.scoring.weights.{name}"),
                        format!(
                            "unknown score plugin (known: {})",
                            infraos_scheduler::plugins::NAMES.join(", ")
                        ),
                    );
                }
            }
            if let Some(queue) = &claim.spec.queue
                && queue != DEFAULT_QUEUE
                && get_typed::<QueueSpec>(store, queue).await?.is_none()
            {
                errors.add("spec.queue", format!("Queue {queue:?} not found"));
            }
            // Selectors are checked against their classes' schemas by evaluating them on
            // samples: CPU work, done together off the async workers (crate::offload).
            let mut selector_checks = Vec::new();
            for (i, request) in claim.spec.requests.iter().enumerate() {
                let Some(class) = classes.get(store, &request.class).await? else {
                    errors.add(
                        format!("spec.requests[{i}].class"),
                        format!("ResourceClass {:?} not found", request.class),
                    );
                    continue;
                };
                match class.kind {
                    ClassKind::Counted => {
                        if request.count.is_some() {
                            errors.add(
                                format!("spec.requests[{i}].count"),
                                format!(
                                    "class {:?} is counted: request an amount per dimension",
                                    request.class
                                ),
                            );
                        }
                        for dim in request.amount.keys() {
                            if !class.has_dimension(dim) {
                                errors.add(
                                    format!("spec.requests[{i}].amount.{dim}"),
                                    format!("class {:?} has no dimension {dim:?}", request.class),
                                );
                            }
                        }
                    }
                    ClassKind::Items => {
                        if !request.amount.is_empty() {
                            errors.add(
                                format!("spec.requests[{i}].amount"),
                                format!("class {:?} has items: request a count", request.class),
                            );
                        }
                        if let (Some(selector), false) =
                            (&request.selector, class.attributes.is_empty())
                        {
                            selector_checks.push((i, selector.clone(), Arc::clone(&class)));
                        }
                    }
                }
            }
            if !selector_checks.is_empty() {
                let failed = crate::offload::run("checking selectors", move || {
                    selector_checks
                        .into_iter()
                        .filter_map(|(i, selector, class)| {
                            selector.check(&class.attributes).err().map(|e| (i, e))
                        })
                        .collect::<Vec<_>>()
                })
                .await?;
                for (i, e) in failed {
                    errors.add(format!("spec.requests[{i}].selector"), e.to_string());
                }
            }
            return invalid(errors);
        }
        _ => {}
    }
    Ok(())
}

/// Checks an update against the stored object: immutable fields stay.
pub fn admit_update(new: &TypedObject, old: &TypedObject) -> Result<(), ApiError> {
    let name = &new.meta().name;
    let immutable =
        |kind: &str, field: &str| ApiError::invalid_field(kind, name, field, "field is immutable");
    match (new, old) {
        (TypedObject::Claim(n), TypedObject::Claim(o)) if n.spec != o.spec => {
            Err(immutable("Claim", "spec"))
        }
        (TypedObject::Project(n), TypedObject::Project(o)) if n.spec.tenant != o.spec.tenant => {
            Err(immutable("Project", "spec.tenant"))
        }
        (TypedObject::ResourceClass(n), TypedObject::ResourceClass(o))
            if n.spec.kind != o.spec.kind =>
        {
            Err(immutable("ResourceClass", "spec.kind"))
        }
        (TypedObject::Resource(n), TypedObject::Resource(o)) if n.spec.class != o.spec.class => {
            Err(immutable("Resource", "spec.class"))
        }
        (TypedObject::Resource(n), TypedObject::Resource(o)) if n.spec.node != o.spec.node => {
            Err(immutable("Resource", "spec.node"))
        }
        _ => Ok(()),
    }
}

/// Refuses to delete what others still use.
pub async fn admit_delete(store: &dyn Store, info: &KindInfo, name: &str) -> Result<(), ApiError> {
    use infraos_api::kinds::*;
    match info.kind {
        "Project" => {
            for kind in [ClaimSpec::INFO, AllocationSpec::INFO] {
                let inside = store
                    .range(&objects::prefix(kind, Some(name)), None, 1)
                    .await?;
                if let Some(kv) = inside.kvs.first() {
                    return Err(ApiError::conflict(
                        "Project",
                        name,
                        format!("project {name:?} is not empty: it still holds {}", kv.key),
                    ));
                }
            }
        }
        "Tenant" => {
            let projects = store
                .range(&objects::prefix(ProjectSpec::INFO, None), None, 0)
                .await?;
            for kv in &projects.kvs {
                let project = decode_typed::<ProjectSpec>(kv)?;
                if project.spec.tenant == name {
                    return Err(ApiError::conflict(
                        "Tenant",
                        name,
                        format!(
                            "tenant {name:?} still owns project {:?}",
                            project.metadata.name
                        ),
                    ));
                }
            }
        }
        "ResourceClass" => {
            let resources = store
                .range(&objects::prefix(ResourceSpec::INFO, None), None, 0)
                .await?;
            for kv in &resources.kvs {
                let resource = decode_typed::<ResourceSpec>(kv)?;
                if resource.spec.class == name {
                    return Err(ApiError::conflict(
                        "ResourceClass",
                        name,
                        format!(
                            "class {name:?} is in use by resource {:?}",
                            resource.metadata.name
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}
