//! Filter `colocate`: a pool serving a claim with `topology.colocate` has the same values
//! of those keys as the candidate node (or, for a pool-only claim, as the anchor pool).
//! Node-bound resources pass: they are on the candidate node.

use crate::planner::explanation::Reject;
use crate::planner::resource_filter::ResourceCheck;
use crate::snapshot::ResourceEntry;

#[inline]
pub(crate) fn check<'c>(
    check: &ResourceCheck<'c, '_>,
    resource: &'c ResourceEntry,
) -> Result<(), Reject<'c>> {
    let colocate = check.ctx.colocate;
    if resource.node.is_some() || colocate.is_empty() {
        return Ok(());
    }
    let same = colocate
        .iter()
        .zip(check.reference)
        .all(|(key, want)| want.is_some() && check.snapshot.label(resource, key) == *want);
    if same {
        Ok(())
    } else {
        Err(Reject::TopologyMismatch)
    }
}

#[cfg(test)]
mod tests {
    use crate::planner::filter::tests::{decide, one_node};
    use infraos_api::kinds::{ClassKind, Dimension, NodeSpec, ResourceClassSpec, ResourceSpec};
    use infraos_api::{Labels, Quantity};

    #[test]
    fn a_pool_in_another_zone_is_skipped() {
        let mut snap = one_node(NodeSpec::default(), &[("zone", "a")]);
        snap.upsert_class(
            "license",
            &ResourceClassSpec {
                kind: ClassKind::Counted,
                dimensions: vec![Dimension {
                    name: "seats".into(),
                    unit: None,
                }],
                ..Default::default()
            },
        );
        let labels: Labels = [("zone".to_string(), "b".to_string())]
            .into_iter()
            .collect();
        snap.upsert_resource(
            "seats-b",
            &labels,
            &ResourceSpec {
                class: "license".into(),
                capacity: [("seats".to_string(), Quantity::from_units(4))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        );
        let spec = serde_json::json!({
            "requests": [{"class": "compute", "amount": {"cpu": "1"}},
                         {"class": "license", "amount": {"seats": "1"}}],
            "topology": {"colocate": ["zone"]}});
        assert_eq!(
            decide(&snap, spec.clone(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 topology mismatch."
        );
        decide(&snap, spec, &["colocate"]).unwrap();
    }
}
