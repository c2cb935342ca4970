//! The scheduler core on an in-memory snapshot of a synthetic cluster: plan, the applier's
//! re-check and apply, as the server runs them, without I/O. `bench scheduler` reports it, and
//! `bench e2e` runs it on the same objects as the limit the server is compared against.

use std::collections::HashMap;
use std::time::Instant;

use infraos_api::kinds::{
    Claim, NodeSpec, PriorityClassSpec, ProjectSpec, QuotaSpec, ResourceClassSpec, ResourceSpec,
};
use infraos_api::object::decode;
use infraos_scheduler::{AllocationMeta, Outcome, Profile, Scheduler, Snapshot};

use crate::ServerConfigScheduler;
use crate::synthetic::{self, PROJECT, Synthetic};

/// Builds the snapshot from the synthetic manifests and schedules every claim the way the
/// server does (plan, re-check, apply). Returns claims/s and how many were placed.
pub(crate) fn scheduler_core(
    s: &Synthetic,
    batch: usize,
    governance: bool,
) -> anyhow::Result<(f64, usize)> {
    let mut snapshot = Snapshot::new();
    for v in &s.setup {
        match v["kind"].as_str() {
            Some("ResourceClass") => {
                let c = decode::<ResourceClassSpec>(v)?;
                snapshot.upsert_class(c.name(), &c.spec);
            }
            Some("Project") => {
                let p = decode::<ProjectSpec>(v)?;
                snapshot.upsert_project(p.name(), &p.spec.tenant);
            }
            Some("Quota") => {
                let q = decode::<QuotaSpec>(v)?;
                snapshot.upsert_quota(q.name(), &q.spec);
            }
            Some("PriorityClass") => {
                let p = decode::<PriorityClassSpec>(v)?;
                snapshot.upsert_priority_class(p.name(), &p.spec);
            }
            _ => {}
        }
    }
    for v in &s.nodes {
        let n = decode::<NodeSpec>(v)?;
        snapshot.upsert_node(n.name(), &n.metadata.labels, &n.spec, None);
    }
    for v in &s.resources {
        let r = decode::<ResourceSpec>(v)?;
        snapshot.upsert_resource(r.name(), &r.metadata.labels, &r.spec);
    }
    let claims: Vec<Claim> = s.claims.iter().map(decode).collect::<Result<_, _>>()?;
    let keyed: Vec<(String, &Claim)> = claims
        .iter()
        .map(|c| (format!("{PROJECT}/{}", c.name()), c))
        .collect();
    let profile = if governance {
        serde_norway::from_str::<ServerConfigScheduler>(synthetic::GOVERNANCE_PROFILE)?.scheduler
    } else {
        Profile::default()
    };
    let mut scheduler = Scheduler::new(profile)?;
    let by_key: HashMap<&str, &Claim> = keyed.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    let start = Instant::now();
    let mut placed = 0;
    for chunk in keyed.chunks(batch.max(1)) {
        let plan = scheduler.plan(&snapshot, chunk);
        for d in &plan.decisions {
            if let Outcome::Placed(p) = &d.outcome
                && snapshot.fits(&p.resources).is_ok()
            {
                let claim = by_key.get(d.claim_key.as_str());
                let meta = AllocationMeta {
                    priority: claim
                        .map_or(0, |c| infraos_scheduler::claim_priority(&snapshot, c).0),
                    borrowing: p.borrowing,
                    ..AllocationMeta::default()
                };
                snapshot.apply_allocation(&d.claim_key, &p.resources, meta);
                placed += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((claims.len() as f64 / elapsed.max(1e-9), placed))
}
