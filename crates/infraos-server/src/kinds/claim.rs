//! Claims: the control plane writes their status; their priority comes from their
//! PriorityClass; they ask for existing classes the way those are counted, with selectors
//! that type-check against the class's attribute schema; their spec never changes; a new one
//! carries the allocation finalizer and starts Pending.

use std::sync::Arc;

use async_trait::async_trait;
use infraos_api::kinds::{
    ClaimPhase, ClaimStatus, ClassKind, DEFAULT_QUEUE, PriorityClassSpec, QueueSpec,
};
use infraos_api::validation::Errors;
use infraos_api::{Kind as _, Time, TypedObject};

use super::{Lookups, Strategy};
use crate::admission::get_typed;
use crate::error::ApiError;
use crate::objects::{self, ALLOCATION_FINALIZER};

#[derive(Debug)]
pub struct Claim;

#[async_trait]
impl Strategy for Claim {
    fn check_status_write(&self) -> Result<(), ApiError> {
        Err(ApiError::method_not_allowed(
            "a claim's status is written by the control plane only; use renew, release or delete",
        ))
    }

    fn initialize(&self, object: &mut TypedObject, now: Time) {
        let TypedObject::Claim(claim) = object else {
            return;
        };
        if !claim
            .metadata
            .finalizers
            .iter()
            .any(|f| f == ALLOCATION_FINALIZER)
        {
            claim
                .metadata
                .finalizers
                .push(ALLOCATION_FINALIZER.to_string());
        }
        claim.status = Some(ClaimStatus {
            phase: ClaimPhase::Pending,
            last_transition_time: Some(now),
            ..Default::default()
        });
    }

    /// A Claim's priority, from its PriorityClass (or the global default class), as
    /// Kubernetes does for Pods. On update the stored value is kept, so a class's value
    /// changing later does not change existing claims.
    async fn default(
        &self,
        lookups: Lookups<'_>,
        object: &mut TypedObject,
        old: Option<&TypedObject>,
    ) -> Result<(), ApiError> {
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
        let Lookups { store, classes } = lookups;
        let name = claim.metadata.name.clone();
        let class = match &claim.spec.priority_class_name {
            Some(class_name) => match classes
                .object::<PriorityClassSpec>(store, class_name)
                .await?
            {
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
                    let spec = classes.decode::<PriorityClassSpec>(kv)?;
                    // Several global defaults: the highest value wins, as documented.
                    if spec.global_default
                        && default.as_ref().is_none_or(|(_, d)| spec.value > d.value)
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

    fn admit_update(&self, new: &TypedObject, old: &TypedObject) -> Result<(), ApiError> {
        match (new, old) {
            (TypedObject::Claim(n), TypedObject::Claim(o)) if n.spec != o.spec => Err(
                ApiError::invalid_field("Claim", &n.metadata.name, "spec", "field is immutable"),
            ),
            _ => Ok(()),
        }
    }

    async fn admit(&self, lookups: Lookups<'_>, object: &TypedObject) -> Result<(), ApiError> {
        let TypedObject::Claim(claim) = object else {
            return Ok(());
        };
        let Lookups { store, classes } = lookups;
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
        errors
            .into_result()
            .map_err(|e| ApiError::invalid("Claim", &claim.metadata.name, &e))
    }
}
