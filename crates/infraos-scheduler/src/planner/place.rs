//! Placement: candidates from a rotating start, each run through the node filters, then
//! every request fitted to the first resource that passes the resource filters and has
//! room, scored by the weighted plugins; the best one wins.

use super::batching::{Batch, Overlay};
use super::claim_ctx::{ClaimCtx, Need, Request};
use super::engine::{Candidate, MAX_PLUGINS, Pick, Scheduler};
use super::explanation::{Reject, closer};
use super::outcome::{Explanation, Placement, UNSCHEDULABLE};
use super::resource_filter::ResourceCheck;
use super::score::{normalize, round2, weighted_total};
use crate::plugins;
use crate::plugins::ScoreInput;
use crate::snapshot::{NodeId, ResourceEntry, ResourceId, Snapshot};
use infraos_api::ItemSelector;
use infraos_api::kinds::{AllocatedResource, RunnerUp, ScoreBreakdown};
use std::collections::BTreeMap;
use std::sync::Arc;

impl Scheduler {
    /// Filters and scores the candidates for one claim; on success the chosen resources are
    /// returned (and not yet reserved in the batch).
    pub(crate) fn place<'c>(
        &mut self,
        snapshot: &'c Snapshot,
        ctx: &ClaimCtx<'c>,
        batch: &Batch,
    ) -> Result<Placement, Explanation> {
        let requests = &ctx.requests;
        // A claim nominated for a node goes there if it fits (kube-scheduler tries the
        // nominated node first too): that room was freed and held for it.
        if let Some(node) = self.nominated_node(snapshot, ctx.key)
            && let Ok((score, plugin_scores)) =
                self.evaluate(snapshot, Some(node), None, ctx, batch)
        {
            let best = Candidate {
                node: Some(node),
                picks: self.scratch.picks.clone(),
                score,
                plugin_scores,
            };
            return Ok(self.placement(snapshot, &ctx.weights, requests, best, None, 1));
        }
        // The rarest node-bound class decides which nodes are candidates at all.
        let anchor = requests
            .iter()
            .filter(|r| !snapshot.nodes_with(&r.class.name).is_empty())
            .min_by_key(|r| snapshot.nodes_with(&r.class.name).len());
        let mut explanation = Explanation {
            reason: UNSCHEDULABLE,
            ..Explanation::default()
        };
        let mut rejections: Vec<(Reject<'_>, u64)> = Vec::new();
        let mut best: Option<Candidate> = None;
        let mut runner_up: Option<Candidate> = None;
        let mut feasible = 0usize;
        let mut scan_start = 0usize;
        // With relative plugins every feasible candidate is kept, to normalize over them.
        let mut all: Vec<Candidate> = Vec::new();
        let mut consider =
            |this: &mut Scheduler, node: Option<NodeId>, pool: Option<ResourceId>| match this
                .evaluate(snapshot, node, pool, ctx, batch)
            {
                Ok((score, plugin_scores)) => {
                    feasible += 1;
                    if ctx.relative {
                        all.push(Candidate {
                            node,
                            picks: this.scratch.picks.clone(),
                            score,
                            plugin_scores,
                        });
                        return true;
                    }
                    let beats_runner_up = runner_up.as_ref().is_none_or(|r| score > r.score);
                    if best.as_ref().is_none_or(|b| score > b.score) {
                        runner_up = best.take();
                        best = Some(Candidate {
                            node,
                            picks: this.scratch.picks.clone(),
                            score,
                            plugin_scores,
                        });
                    } else if beats_runner_up {
                        runner_up = Some(Candidate {
                            node,
                            picks: Vec::new(),
                            score,
                            plugin_scores,
                        });
                    }
                    true
                }
                Err(reason) => {
                    match rejections.iter_mut().find(|(r, _)| *r == reason) {
                        Some((_, n)) => *n += 1,
                        None => rejections.push((reason, 1)),
                    }
                    false
                }
            };

        match anchor {
            Some(anchor) => {
                let mut candidates = snapshot.nodes_with(&anchor.class.name);
                let total_nodes = snapshot.node_count().max(candidates.len());
                explanation.candidate_kind = "nodes";
                explanation.candidates = total_nodes as u64;
                let without = total_nodes.saturating_sub(candidates.len());
                if without > 0 {
                    explanation.reasons.insert(
                        Reject::NoResource(&anchor.class.name).to_string(),
                        without as u64,
                    );
                }
                // An items request needs a node with a free item of its class: when those are
                // fewer (GPUs running out), scan only them; the other nodes of the anchor
                // class are short of the items (or lack the class) and are counted so.
                let narrower = requests
                    .iter()
                    .filter(|r| matches!(r.need, Need::Items { .. }))
                    .filter(|r| !snapshot.nodes_with(&r.class.name).is_empty())
                    .map(|r| (r, snapshot.nodes_with_free_items(&r.class.name)))
                    .min_by_key(|(_, free)| free.len())
                    .filter(|(_, free)| free.len() < candidates.len());
                if let Some((request, free)) = narrower {
                    let with_class = snapshot.nodes_with(&request.class.name).len();
                    let short = with_class.saturating_sub(free.len()) as u64;
                    let lacking = candidates.len().saturating_sub(with_class) as u64;
                    for (reason, n) in [
                        (Reject::Insufficient(&request.class.name), short),
                        (Reject::NoResource(&request.class.name), lacking),
                    ] {
                        if n > 0 {
                            *explanation.reasons.entry(reason.to_string()).or_insert(0) += n;
                        }
                    }
                    candidates = free;
                }
                if candidates.is_empty() {
                    return Err(explanation);
                }
                let want = self.profile.feasible_to_find(candidates.len());
                let start = self.next_start % candidates.len();
                scan_start = start;
                let mut examined = 0;
                let mut found = 0;
                for offset in 0..candidates.len() {
                    let node = candidates[(start + offset) % candidates.len()];
                    examined += 1;
                    if consider(self, Some(node), None) {
                        found += 1;
                        if found >= want {
                            break;
                        }
                    }
                }
                self.next_start = (start + examined) % candidates.len().max(1);
            }
            None => {
                // No request needs a node: anchor on the first request's pools.
                let pools = snapshot.pools_of(&requests[0].class.name);
                explanation.candidate_kind = "pools";
                explanation.candidates = pools.len() as u64;
                if pools.is_empty() {
                    explanation
                        .reasons
                        .insert(Reject::NoResource(&requests[0].class.name).to_string(), 0);
                }
                for &pool in pools {
                    consider(self, None, Some(pool));
                }
            }
        }
        for (reason, n) in rejections {
            *explanation.reasons.entry(reason.to_string()).or_insert(0) += n;
        }
        if !all.is_empty() {
            normalize(&mut all, &self.plugins, &ctx.weights);
            // The highest total wins; among equal totals, the first found (as without
            // relative plugins).
            let mut order: Vec<usize> = (0..all.len()).collect();
            order.sort_by(|a, b| all[*b].score.total_cmp(&all[*a].score).then(a.cmp(b)));
            let mut taken: Vec<Option<Candidate>> = all.into_iter().map(Some).collect();
            best = order.first().and_then(|&i| taken[i].take());
            runner_up = order.get(1).and_then(|&i| taken[i].take());
        }

        let Some(best) = best else {
            return Err(explanation);
        };
        let mut placement =
            self.placement(snapshot, &ctx.weights, requests, best, runner_up, feasible);
        placement.score.scan_start = scan_start as u64;
        Ok(placement)
    }

    pub(crate) fn placement(
        &self,
        snapshot: &Snapshot,
        weights: &[f64; MAX_PLUGINS],
        requests: &[Request<'_>],
        best: Candidate,
        runner_up: Option<Candidate>,
        feasible: usize,
    ) -> Placement {
        let resources = parts_of(snapshot, requests, &best.picks);
        let plugins = self
            .plugins
            .iter()
            .enumerate()
            .filter(|(i, _)| weights[*i] > 0.0)
            .map(|(i, p)| (p.name().to_string(), round2(best.plugin_scores[i])))
            .collect();
        Placement {
            node: best.node.map(|n| snapshot.node(n).name.clone()),
            resources,
            score: ScoreBreakdown {
                total: round2(best.score),
                plugins,
                feasible: feasible as u64,
                scan_start: 0,
            },
            runner_up: runner_up.map(|r| RunnerUp {
                node: r.node.map(|n| snapshot.node(n).name.clone()),
                total: round2(r.score),
            }),
            borrowing: false,
        }
    }

    /// Filters and scores one candidate: a node, or (for pool-only claims) an anchor pool for
    /// the first request. On success the chosen resources are in `self.scratch.picks`.
    pub(crate) fn evaluate<'c>(
        &mut self,
        snapshot: &'c Snapshot,
        node: Option<NodeId>,
        anchor_pool: Option<ResourceId>,
        ctx: &ClaimCtx<'c>,
        batch: &Batch,
    ) -> Result<(f64, [f64; MAX_PLUGINS]), Reject<'c>> {
        let (requests, colocate) = (&ctx.requests, ctx.colocate);
        let overlay = &batch.overlay;
        // Looked up once per candidate: every filter and the fit below read it.
        let node_entry = node.map(|n| snapshot.node(n));
        super::filter::run(self.filters, node_entry, ctx)?;
        // The topology values every pool must share: the node's, or the anchor pool's.
        let reference: Vec<Option<&str>> = if colocate.is_empty() {
            Vec::new()
        } else {
            colocate
                .iter()
                .map(|key| match (node_entry, anchor_pool) {
                    (Some(n), _) => n.labels.get(key).map(String::as_str),
                    (None, Some(p)) => snapshot.resource(p).and_then(|r| snapshot.label(r, key)),
                    (None, None) => None,
                })
                .collect()
        };
        let check = ResourceCheck {
            snapshot,
            ctx,
            reference: &reference,
        };
        self.scratch.clear();
        let on_node: &[ResourceId] = node_entry.map_or(&[], |n| n.resources.as_slice());
        for (index, request) in requests.iter().enumerate() {
            let pools = request.pools;
            let anchor = [anchor_pool.unwrap_or_default()];
            let (first, second): (&[ResourceId], &[ResourceId]) = match (index, anchor_pool) {
                (0, Some(_)) => (&anchor, &[]),
                _ => (on_node, pools),
            };
            let mut worst = None;
            let mut found = false;
            for &id in first.iter().chain(second) {
                let Some(entry) = snapshot.resource(id) else {
                    continue;
                };
                if entry.class_id != Some(request.class.id) {
                    continue;
                }
                if let Err(reason) = super::resource_filter::run(self.filters, &check, entry) {
                    worst = closer(worst, reason);
                    continue;
                }
                if let Some(utilization) = self.fit(id, entry, request, overlay) {
                    self.scratch.utilizations.push(utilization);
                    found = true;
                    break;
                }
                worst = closer(worst, Reject::Insufficient(&request.class.name));
            }
            if !found {
                return Err(worst.unwrap_or(Reject::NoResource(&request.class.name)));
            }
            if let Some(pick) = self.scratch.picks.last_mut() {
                pick.request = index;
            }
        }
        self.check_pool_quotas(snapshot, ctx, batch)?;
        let w = &ctx.weights;
        let input = ScoreInput {
            utilizations: &self.scratch.utilizations,
            cost: if w[plugins::COST] > 0.0 {
                self.picks_cost(snapshot, ctx)
            } else {
                0.0
            },
            watts: if w[plugins::ENERGY] > 0.0 {
                self.picks_watts(snapshot, ctx)
            } else {
                0.0
            },
            distance: if w[plugins::NETWORK] > 0.0 {
                self.distance(snapshot, node, anchor_pool, ctx)
            } else {
                0.0
            },
            affinity: match node_entry {
                Some(n) if w[plugins::AFFINITY] > 0.0 => ctx.soft_score(n),
                _ => 100.0,
            },
        };
        let mut plugin_scores = [0.0; MAX_PLUGINS];
        for (i, plugin) in self.plugins.iter().enumerate() {
            if w[i] > 0.0 {
                let v = plugin.score(&input);
                plugin_scores[i] = if plugin.relative() {
                    v
                } else {
                    v.clamp(0.0, 100.0)
                };
            }
        }
        // With relative plugins the total needs every candidate: `place` computes it.
        let score = if ctx.relative {
            0.0
        } else {
            weighted_total(w, &plugin_scores)
        };
        Ok((score, plugin_scores))
    }

    /// Whether `request` fits on resource `id`; on success records the pick (and what it
    /// takes) in the scratch buffers and returns the resource's utilization after placement
    /// (0..=1), used for scoring.
    pub(crate) fn fit(
        &mut self,
        id: ResourceId,
        entry: &ResourceEntry,
        request: &Request<'_>,
        overlay: &Overlay,
    ) -> Option<f64> {
        let taken = overlay.get(id);
        match &request.need {
            Need::Counted { dims, .. } => {
                let mut utilization: f64 = 0.0;
                for &(i, want) in dims {
                    let cap = *entry.cap.get(i)?;
                    let used = entry.used.get(i).copied().unwrap_or(0)
                        + taken.and_then(|t| t.dims.get(i)).copied().unwrap_or(0)
                        + self.scratch.used(id, i);
                    let after = used.checked_add(want)?;
                    if after > cap {
                        return None;
                    }
                    if cap > 0 {
                        utilization = utilization.max(after as f64 / cap as f64);
                    }
                }
                for &(i, want) in dims {
                    self.scratch.dims.push((id, i, want));
                }
                self.scratch.picks.push(Pick {
                    request: 0,
                    resource: id,
                    items: Vec::new(),
                });
                Some(utilization)
            }
            Need::Items { count, selector } => {
                let in_batch = taken.map_or(0, |t| t.items.len());
                let freed = taken.map_or(0, |t| t.freed.len());
                let in_candidate = self.scratch.items.iter().filter(|(r, _)| *r == id).count();
                if entry.items_free + freed < in_batch + in_candidate + count {
                    return None;
                }
                let matches = selector.map(|s| self.selector_matches(id, entry, s));
                let mut chosen = Vec::with_capacity(*count);
                for i in 0..entry.items.len() {
                    let held = entry.item_used[i] && !taken.is_some_and(|t| t.freed.contains(&i));
                    if held
                        || taken.is_some_and(|t| t.items.contains(&i))
                        || self.scratch.items.contains(&(id, i))
                    {
                        continue;
                    }
                    if matches.as_ref().is_some_and(|m| !m[i]) {
                        continue;
                    }
                    chosen.push(i);
                    if chosen.len() == *count {
                        break;
                    }
                }
                if chosen.len() < *count {
                    return None;
                }
                let total = entry.items.len().max(1) as f64;
                let used_after = (entry.items.len() + in_batch + in_candidate + count)
                    .saturating_sub(entry.items_free + freed)
                    as f64;
                self.scratch.items.extend(chosen.iter().map(|&i| (id, i)));
                self.scratch.picks.push(Pick {
                    request: 0,
                    resource: id,
                    items: chosen,
                });
                Some(used_after / total)
            }
        }
    }

    pub(crate) fn selector_matches(
        &mut self,
        id: ResourceId,
        entry: &ResourceEntry,
        selector: &ItemSelector,
    ) -> Arc<[bool]> {
        if let Some(hit) = self
            .memo
            .get(selector.source())
            .and_then(|by_resource| by_resource.get(&(id, entry.stamp)))
        {
            return Arc::clone(hit);
        }
        // An evaluation error (an attribute the item lacks) counts as no match, as in DRA.
        let by_item = match self.item_memo.get_mut(selector.source()) {
            Some(m) => m,
            None => self
                .item_memo
                .entry(Arc::from(selector.source()))
                .or_default(),
        };
        let mut evaluated = 0;
        let result: Arc<[bool]> = entry
            .items
            .iter()
            .map(|item| match by_item.get(item) {
                Some(hit) => *hit,
                None => {
                    let matched = selector.matches(item).unwrap_or(false);
                    by_item.insert(item.clone(), matched);
                    evaluated += 1;
                    matched
                }
            })
            .collect();
        self.memo_entries += evaluated;
        self.memo
            .entry(Arc::from(selector.source()))
            .or_default()
            .insert((id, entry.stamp), Arc::clone(&result));
        self.memo_entries += 1;
        result
    }
}

/// The allocation parts that picks stand for.
pub(crate) fn parts_of(
    snapshot: &Snapshot,
    requests: &[Request<'_>],
    picks: &[Pick],
) -> Vec<AllocatedResource> {
    picks
        .iter()
        .filter_map(|pick| {
            let entry = snapshot.resource(pick.resource)?;
            let request = &requests[pick.request];
            Some(AllocatedResource {
                request: request.name.to_string(),
                resource: entry.name.clone(),
                class: entry.class.clone(),
                amount: match &request.need {
                    Need::Counted { amount, .. } => (*amount).clone(),
                    Need::Items { .. } => BTreeMap::new(),
                },
                items: pick
                    .items
                    .iter()
                    .map(|&i| entry.items[i].name.clone())
                    .collect(),
            })
        })
        .collect()
}

/// The parts of the candidate `evaluate` accepted last.
impl Scheduler {
    pub(crate) fn scratch_parts(
        &self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
    ) -> Vec<AllocatedResource> {
        parts_of(snapshot, &ctx.requests, &self.scratch.picks)
    }
}
