//! The churn scenario (issue 17): a real server on a temporary data dir, driven through the
//! public API only by a seeded stream of operations (three tenants of two projects each with
//! tenant, project and pool quotas and borrowing; two priority classes and two queues;
//! sixteen nodes in three zones, every fourth with GPU items; CPU claims, GPU claims with CEL
//! selectors, gangs, leases of 3–8 s and 20–90 s that expire, renewals, releases, deletes and
//! bursts of prod claims; at most 200 live claims, so capacity keeps turning over), then a
//! drain. A checker follows every allocation event through a watch and,
//! at every revision it observes, checks:
//!
//! - capacity per resource and dimension, and every item held by at most one allocation;
//! - the items each GPU claim holds match its CEL selector;
//! - tenant, project (limits + borrowing) and pool quotas;
//! - preemption: no claim preempted twice by the same preemptor while that preemptor was not
//!   placed in between; a plain preemption has a strictly lower priority, a reclaim never a
//!   higher one;
//! - Expired is final: a claim whose allocation expired is never placed again;
//! - no 5xx answers; and after the drain, no allocation holds anything and quotas read zero.
//!
//! `INFRAOS_CHURN_SECONDS` (default 25, the CI run) and `INFRAOS_CHURN_SEED` (default 1)
//! choose the run; `scripts/churn.sh SECONDS SEEDS` runs long ones.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infraos_api::Quantity;
use infraos_client::Client;
use serde_json::{Value, json};
use support::*;

const TENANTS: usize = 3;
const NODES: usize = 16;
const NODE_CPU: i64 = 4;
const GPUS: [(&str, &str, u32); 4] = [
    ("g0", "L4", 24),
    ("g1", "A100", 40),
    ("g2", "H100", 80),
    ("g3", "H100", 80),
];
const BATCH: i64 = 10;
const PROD: i64 = 1000;
/// The server's lease skew margin (`leaseSkewMargin: 1s` below), in ms.
const SKEW_MS: i64 = 1000;
/// CEL selectors a GPU claim may carry, with the check the checker applies to what it holds.
/// Whether an item of (model, memoryGiB) passes a selector.
type ItemTest = fn(&str, u32) -> bool;
const SELECTORS: [(&str, ItemTest); 3] = [
    ("", |_, _| true),
    ("item.attributes.model == \"H100\"", |m, _| m == "H100"),
    ("item.attributes.memoryGiB >= 40", |_, mem| mem >= 40),
];

/// A small deterministic generator: the same seed, the same operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len() as u64) as usize])
    }
}

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn project(t: usize, p: usize) -> String {
    format!("t{t}-{}", ["a", "b"][p])
}

fn gpu_node(i: usize) -> bool {
    i.is_multiple_of(4)
}

fn zone(i: usize) -> String {
    format!("z{}", i % 3)
}

/// The cluster, quotas and classes as YAML.
fn cluster() -> String {
    let mut y = String::from(
        r#"
apiVersion: infraos.io/v1
kind: ResourceClass
metadata: {name: compute}
spec: {kind: counted, dimensions: [{name: cpu}, {name: memory}]}
---
apiVersion: infraos.io/v1
kind: ResourceClass
metadata: {name: gpu}
spec: {kind: items, attributes: {model: string, memoryGiB: int}}
---
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: batch}
spec: {value: 10, globalDefault: true}
---
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: prod}
spec: {value: 1000}
---
apiVersion: infraos.io/v1
kind: Queue
metadata: {name: research}
spec: {weight: 2}
---
apiVersion: infraos.io/v1
kind: Quota
metadata: {name: pool-z0-gpu}
spec: {pool: "zone=z0", limits: {gpu: {count: "5"}}}
"#,
    );
    for t in 0..TENANTS {
        y += &format!(
            "---\napiVersion: infraos.io/v1\nkind: Tenant\nmetadata: {{name: t{t}}}\n---\n\
             apiVersion: infraos.io/v1\nkind: Quota\nmetadata: {{name: t{t}}}\n\
             spec: {{tenant: t{t}, limits: {{compute: {{cpu: \"24\"}}, gpu: {{count: \"6\"}}}}}}\n"
        );
        for p in 0..2 {
            let name = project(t, p);
            y += &format!(
                "---\napiVersion: infraos.io/v1\nkind: Project\nmetadata: {{name: {name}}}\n\
                 spec: {{tenant: t{t}}}\n---\napiVersion: infraos.io/v1\nkind: Quota\n\
                 metadata: {{name: {name}}}\nspec: {{project: {name}, \
                 limits: {{compute: {{cpu: \"8\"}}, gpu: {{count: \"3\"}}}}, \
                 borrowingLimit: {{compute: {{cpu: \"8\"}}, gpu: {{count: \"2\"}}}}}}\n"
            );
        }
    }
    for i in 0..NODES {
        let z = zone(i);
        y += &format!(
            "---\napiVersion: infraos.io/v1\nkind: Node\nmetadata: {{name: n{i:02}, labels: {{zone: {z}}}}}\n\
             spec: {{}}\n---\napiVersion: infraos.io/v1\nkind: Resource\n\
             metadata: {{name: n{i:02}-compute, labels: {{zone: {z}}}}}\n\
             spec: {{class: compute, node: n{i:02}, capacity: {{cpu: \"{NODE_CPU}\", memory: 16Gi}}}}\n"
        );
        if gpu_node(i) {
            y += &format!(
                "---\napiVersion: infraos.io/v1\nkind: Resource\n\
                 metadata: {{name: n{i:02}-gpu, labels: {{zone: {z}}}}}\n\
                 spec:\n  class: gpu\n  node: n{i:02}\n  items:\n"
            );
            for (g, model, mem) in GPUS {
                y += &format!(
                    "    - {{name: {g}, attributes: {{model: {model}, memoryGiB: {mem}}}}}\n"
                );
            }
        }
    }
    y
}

/// Capacity by (resource, dimension) in nano-units, and GPU items by (resource, item) with
/// their (model, memory).
struct Capacity {
    dims: HashMap<(String, String), i128>,
    items: HashMap<(String, String), (&'static str, u32)>,
}

fn capacity() -> Capacity {
    let mut dims = HashMap::new();
    let mut items = HashMap::new();
    for i in 0..NODES {
        let r = format!("n{i:02}-compute");
        dims.insert(
            (r.clone(), "cpu".into()),
            i128::from(NODE_CPU) * 1_000_000_000,
        );
        dims.insert(
            (r, "memory".into()),
            "16Gi".parse::<Quantity>().unwrap().nanos(),
        );
        if gpu_node(i) {
            for (g, model, mem) in GPUS {
                items.insert((format!("n{i:02}-gpu"), g.to_string()), (model, mem));
            }
        }
    }
    Capacity { dims, items }
}

/// What the generator made: each claim's priority and GPU selector (index into SELECTORS).
#[derive(Default)]
struct Made {
    claims: HashMap<String, (i64, Option<usize>)>,
    /// Every claim created, for the drain.
    names: Vec<(String, String)>,
    /// Claims neither released nor deleted yet: what releases and deletes pick from.
    live: Vec<(String, String)>,
    short: Vec<(String, String)>,
}

/// At most this many live claims: beyond it a worker deletes instead of creating, so the queue
/// stays bounded and capacity keeps turning over however long the run.
const MAX_LIVE: usize = 200;

fn claim_body(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "infraos.io/v1", "kind": "Claim",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A claim the generator sends.
struct ToCreate {
    ns: String,
    body: Value,
    priority: i64,
    selector: Option<usize>,
    short: bool,
}

fn claim_spec(requests: Value, lease: &str, prod: bool, research: bool) -> Value {
    let mut s = json!({"requests": requests, "lease": {"duration": lease}});
    if prod {
        s["priorityClassName"] = "prod".into();
    }
    if research {
        s["queue"] = "research".into();
    }
    s
}

/// One generator step: the claims to create (one, a gang, or a burst of prod claims).
fn next_claims(rng: &mut Rng, seq: &mut u64) -> Vec<ToCreate> {
    let ns = project(rng.below(TENANTS as u64) as usize, rng.below(2) as usize);
    let prod = rng.below(10) < 3;
    let short = rng.below(10) < 4;
    let research = rng.below(3) == 0;
    let lease = if short {
        format!("{}s", 3 + rng.below(6))
    } else {
        format!("{}s", 20 + rng.below(70))
    };
    let cpu = ["500m", "1", "2"][rng.below(3) as usize];
    let compute = json!({"class": "compute", "amount": {"cpu": cpu, "memory": "1Gi"}});
    let priority = if prod { PROD } else { BATCH };
    *seq += 1;
    let name = format!("c{seq:07}");
    let one = |name: &str, spec: Value, selector: Option<usize>| ToCreate {
        body: claim_body(&ns, name, spec),
        ns: ns.clone(),
        priority,
        selector,
        short,
    };
    match rng.below(10) {
        0..=5 => vec![one(
            &name,
            claim_spec(json!([compute]), &lease, prod, research),
            None,
        )],
        6..=7 => {
            let sel = rng.below(SELECTORS.len() as u64) as usize;
            let mut gpu = json!({"class": "gpu", "count": 1 + rng.below(2)});
            if !SELECTORS[sel].0.is_empty() {
                gpu["selector"] = SELECTORS[sel].0.into();
            }
            let spec = claim_spec(json!([compute, gpu]), &lease, prod, research);
            vec![one(&name, spec, Some(sel))]
        }
        8 => {
            // A gang: every member of the same priority, placed all or nothing.
            let members = 2 + rng.below(2);
            let requests = json!([{"class": "compute", "amount": {"cpu": "1"}}]);
            let mut spec = claim_spec(requests, &lease, prod, research);
            spec["group"] = json!({"name": format!("g{seq:07}"), "minMembers": members});
            (0..members)
                .map(|m| one(&format!("{name}-{m}"), spec.clone(), None))
                .collect()
        }
        _ => {
            // A burst of prod claims with long leases.
            let requests = json!([{"class": "compute", "amount": {"cpu": "1"}}]);
            (0..3 + rng.below(4))
                .map(|m| {
                    let spec = claim_spec(requests.clone(), "60s", true, false);
                    ToCreate {
                        priority: PROD,
                        short: false,
                        ..one(&format!("{name}-{m}"), spec, None)
                    }
                })
                .collect()
        }
    }
}

/// What the checker knows of one allocation.
struct Held {
    uid: String,
    active: bool,
    preempted_by: Option<String>,
    /// (resource, dimension, nano-units) and (resource, item).
    amounts: Vec<(String, String, i128)>,
    items: Vec<(String, String)>,
}

/// Follows allocation events and checks the invariants at every revision.
struct Checker {
    capacity: Capacity,
    made: Arc<Mutex<Made>>,
    tenant_of: HashMap<String, String>,
    held: BTreeMap<String, Held>,
    expired: HashSet<String>,
    violations: Vec<String>,
    revisions: u64,
    last_revision: u64,
    placements: u64,
    /// Allocations seen marked preempted (the preemptor is named only in the audit trail
    /// when it is of another project).
    preemption_marks: u64,
    expirations: u64,
}

fn nanos(q: &Value) -> i128 {
    q.as_str()
        .and_then(|s| s.parse::<Quantity>().ok())
        .map_or(0, |q| q.nanos())
}

impl Checker {
    fn new(made: Arc<Mutex<Made>>) -> Checker {
        let tenant_of = (0..TENANTS)
            .flat_map(|t| (0..2).map(move |p| (project(t, p), format!("t{t}"))))
            .collect();
        Checker {
            capacity: capacity(),
            made,
            tenant_of,
            held: BTreeMap::new(),
            expired: HashSet::new(),
            violations: Vec::new(),
            revisions: 0,
            last_revision: 0,
            placements: 0,
            preemption_marks: 0,
            expirations: 0,
        }
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 200 {
            self.violations
                .push(format!("rv {}: {v}", self.last_revision));
        }
    }

    /// One watch event; the invariants are checked when a new revision begins (every event
    /// of one transaction carries its revision) and at bookmarks.
    fn event(&mut self, type_: &str, object: &Value) {
        let rv: u64 = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if type_ == "BOOKMARK" {
            self.check();
            self.last_revision = self.last_revision.max(rv);
            return;
        }
        if rv != self.last_revision {
            self.check();
            self.last_revision = rv;
        }
        let key = format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
        if type_ == "DELETED" {
            self.held.remove(&key);
            return;
        }
        let uid = object["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let phase = object["status"]["phase"].as_str().unwrap_or("Active");
        let active = phase == "Active";
        let by = object["status"]["preemption"]["by"]
            .as_str()
            .map(str::to_string);
        let new = self.held.get(&key).is_none_or(|h| h.uid != uid);
        if new && active {
            self.placed(&key, object);
        }
        if by.is_some()
            && self
                .held
                .get(&key)
                .is_some_and(|h| h.preempted_by.is_none())
        {
            self.preemption_marks += 1;
        }
        if phase == "Expired" && self.held.get(&key).is_none_or(|h| h.active) {
            self.expirations += 1;
            self.expired.insert(key.clone());
        }
        let mut amounts = Vec::new();
        let mut items = Vec::new();
        for r in object["spec"]["resources"].as_array().into_iter().flatten() {
            let res = r["resource"].as_str().unwrap_or("").to_string();
            for (dim, q) in r["amount"].as_object().into_iter().flatten() {
                amounts.push((res.clone(), dim.clone(), nanos(q)));
            }
            for i in r["items"].as_array().into_iter().flatten() {
                items.push((res.clone(), i.as_str().unwrap_or("").to_string()));
            }
        }
        self.held.insert(
            key,
            Held {
                uid,
                active,
                preempted_by: by,
                amounts,
                items,
            },
        );
    }

    fn placed(&mut self, key: &str, object: &Value) {
        self.placements += 1;
        if self.expired.contains(key) {
            self.violation(format!(
                "{key} placed again after its lease expired (Expired is final)"
            ));
        }
        // The selector of a GPU claim holds for every item it got.
        let selector = self.made.lock().unwrap().claims.get(key).and_then(|c| c.1);
        if let Some(sel) = selector {
            for r in object["spec"]["resources"].as_array().into_iter().flatten() {
                let res = r["resource"].as_str().unwrap_or("");
                for i in r["items"].as_array().into_iter().flatten() {
                    let item = i.as_str().unwrap_or("");
                    let attrs = self
                        .capacity
                        .items
                        .get(&(res.to_string(), item.to_string()));
                    if !attrs.is_some_and(|(m, mem)| (SELECTORS[sel].1)(m, *mem)) {
                        self.violation(format!(
                            "{key} holds {res}/{item} {attrs:?}, outside its selector {:?}",
                            SELECTORS[sel].0
                        ));
                    }
                }
            }
        }
    }

    /// Capacity, items and quotas over what the active allocations hold now.
    fn check(&mut self) {
        if self.last_revision == 0 {
            return;
        }
        self.revisions += 1;
        let mut used: HashMap<(&str, &str), i128> = HashMap::new();
        let mut holders: HashMap<(&str, &str), &str> = HashMap::new();
        // (scope, class/dimension) → used, for the quotas.
        let mut quota: HashMap<(String, &'static str), i128> = HashMap::new();
        let mut found = Vec::new();
        for (key, h) in self.held.iter().filter(|(_, h)| h.active) {
            let ns = key.split('/').next().unwrap_or("");
            let tenant = self.tenant_of.get(ns).cloned().unwrap_or_default();
            for (r, d, n) in &h.amounts {
                *used.entry((r, d)).or_insert(0) += n;
                if d == "cpu" {
                    *quota.entry((ns.to_string(), "cpu")).or_insert(0) += n;
                    *quota.entry((tenant.clone(), "cpu")).or_insert(0) += n;
                }
            }
            for (r, i) in &h.items {
                if let Some(other) = holders.insert((r, i), key) {
                    found.push(format!("item {r}/{i} held by {other} and {key}"));
                }
                let n = 1_000_000_000;
                *quota.entry((ns.to_string(), "gpu")).or_insert(0) += n;
                *quota.entry((tenant.clone(), "gpu")).or_insert(0) += n;
                if r == "n00-gpu" || r == "n12-gpu" {
                    *quota.entry(("pool-z0".into(), "gpu")).or_insert(0) += n;
                }
            }
        }
        for ((r, d), n) in &used {
            let cap = self.capacity.dims.get(&(r.to_string(), d.to_string()));
            if cap.is_none_or(|c| n > c) {
                found.push(format!("{r} {d} holds {n} nano-units of {cap:?}"));
            }
        }
        let unit = 1_000_000_000i128;
        for ((scope, what), n) in &quota {
            let limit = match (scope.as_str(), *what) {
                ("pool-z0", _) => 5,
                (s, "cpu") if self.tenant_of.contains_key(s) => 16,
                (s, _) if self.tenant_of.contains_key(s) => 5,
                (_, "cpu") => 24,
                _ => 6,
            };
            if *n > limit * unit {
                found.push(format!(
                    "quota of {scope} {what}: {n} nano-units over {limit}"
                ));
            }
        }
        for v in found {
            self.violation(v);
        }
    }
}

/// What the audit trail says about preemption.
#[derive(Default)]
struct Preemptions {
    violations: Vec<String>,
    preemptions: u64,
    reclaims: u64,
    /// The longest time from a claim's first preemption to its placement, in ms.
    worst_to_placed_ms: i64,
    /// The same for prod claims (the top priority: nothing may take their room), with the
    /// claim.
    worst_prod_to_placed: (i64, String),
    /// That claim's preemptions, as the audit trail tells them, to explain a long wait.
    worst_prod_trail: Vec<String>,
    /// The longest time from a prod preemptor's last victim ending to its placement, in ms:
    /// the scheduler's share of the wait (requeue, one cycle, the commit).
    worst_prod_freed_to_placed_ms: i64,
    /// The latest a victim ended past its deadline (preempted + grace + skew margin), in ms:
    /// the lease controller's share.
    worst_end_past_deadline_ms: i64,
    /// Preemptors that preempted and were never placed (deleted, or given up).
    unplaced: usize,
}

/// Every audit record's entry, in order.
async fn audit_entries(c: &Client) -> Vec<(u64, Value)> {
    let mut entries = Vec::new();
    let mut from = 0;
    loop {
        let page = c.audit_records(from, 1000).await.expect("audit records");
        entries.extend(page.items.into_iter().map(|r| (r.seq, r.entry)));
        match page.metadata.next {
            Some(next) if next > from => from = next,
            _ => return entries,
        }
    }
}

/// Walks the audit trail in order: an `allocate` record places a claim, a `preempt` record
/// (`preempted by NS/NAME: WHY`) names the victim and its preemptor. No claim may be
/// preempted twice by one preemptor between two placements of that preemptor; a plain
/// preemption needs a strictly lower priority, a reclaim never evicts a higher one.
fn check_preemptions(entries: &[(u64, Value)], made: &Made) -> Preemptions {
    let mut out = Preemptions::default();
    let mut since_placed: HashMap<String, HashSet<String>> = HashMap::new();
    let mut first: HashMap<String, i64> = HashMap::new();
    let mut trail: HashMap<String, Vec<String>> = HashMap::new();
    // Each victim being stopped: its preemptor and when it was preempted.
    let mut stopping: HashMap<String, (String, i64)> = HashMap::new();
    // Each preemptor: when its latest victim ended.
    let mut freed: HashMap<String, i64> = HashMap::new();
    for (seq, e) in entries {
        let key = format!(
            "{}/{}",
            e["object"]["namespace"].as_str().unwrap_or(""),
            e["object"]["name"].as_str().unwrap_or("")
        );
        let at = e["time"]
            .as_str()
            .and_then(|t| t.parse::<infraos_api::Time>().ok())
            .map_or(0, |t| t.unix_millis());
        match e["verb"].as_str() {
            Some("allocate") => {
                since_placed.remove(&key);
                let freed_at = freed.remove(&key);
                if let Some(t) = first.remove(&key) {
                    out.worst_to_placed_ms = out.worst_to_placed_ms.max(at - t);
                    let prod = made.claims.get(&key).is_some_and(|c| c.0 == PROD);
                    if prod && let Some(f) = freed_at {
                        out.worst_prod_freed_to_placed_ms =
                            out.worst_prod_freed_to_placed_ms.max(at - f);
                    }
                    let steps = trail.remove(&key).unwrap_or_default();
                    if prod && at - t > out.worst_prod_to_placed.0 {
                        out.worst_prod_to_placed = (at - t, key.clone());
                        out.worst_prod_trail = steps;
                    }
                }
            }
            Some("preempt") => {
                out.preemptions += 1;
                let text = e["result"]["reason"].as_str().unwrap_or("");
                let Some((by, why)) = text
                    .strip_prefix("preempted by ")
                    .and_then(|t| t.split_once(": "))
                else {
                    out.violations
                        .push(format!("preempt record {seq}: {text:?}"));
                    continue;
                };
                stopping.insert(key.clone(), (by.to_string(), at));
                if !first.contains_key(by) {
                    // A new wait: ends seen before it are not its victims'.
                    freed.remove(by);
                }
                let t0 = *first.entry(by.to_string()).or_insert(at);
                trail
                    .entry(by.to_string())
                    .or_default()
                    .push(format!("+{} ms: {key}: {why}", at - t0));
                if !since_placed
                    .entry(by.to_string())
                    .or_default()
                    .insert(key.clone())
                {
                    out.violations.push(format!(
                        "audit {seq}: {key} preempted again by {by}, not placed in between ({why})"
                    ));
                }
                let prio = |k: &str| made.claims.get(k).map(|c| c.0);
                let (Some(v), Some(b)) = (prio(&key), prio(by)) else {
                    out.violations
                        .push(format!("audit {seq}: unknown claims {key}, {by}"));
                    continue;
                };
                let reclaim = why.contains("reclaiming");
                out.reclaims += u64::from(reclaim);
                if (reclaim && v > b) || (!reclaim && !why.contains("gang") && v >= b) {
                    out.violations.push(format!(
                        "audit {seq}: {key} (priority {v}) preempted by {by} ({b}): {why}"
                    ));
                }
            }
            Some("end-preempted") => {
                if let Some((by, preempted)) = stopping.remove(&key) {
                    // Victims here run no workload: a grace of 0.
                    let deadline = preempted + SKEW_MS;
                    out.worst_end_past_deadline_ms =
                        out.worst_end_past_deadline_ms.max(at - deadline);
                    // Only while its preemptor still waits (it may be placed elsewhere first).
                    if first.contains_key(&by) {
                        let latest = freed.entry(by).or_insert(at);
                        *latest = (*latest).max(at);
                    }
                }
            }
            _ => {}
        }
    }
    out.unplaced = first.len();
    out
}

/// Follows the allocation watch from `revision` for as long as the test runs, resuming from
/// the last revision seen when the stream ends.
async fn follow(c: Client, revision: u64, checker: Arc<Mutex<Checker>>) {
    let mut from = revision;
    loop {
        let mut w = c
            .watch(kind("allocations"), None, None, Some(from))
            .await
            .expect("watch allocations");
        while let Some(e) = w.next().await {
            let Ok(e) = e else { break };
            assert_ne!(
                e.type_, "ERROR",
                "the allocation watch failed: {}",
                e.object
            );
            let mut ch = checker.lock().unwrap();
            ch.event(&e.type_, &e.object);
            from = from.max(ch.last_revision);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_keeps_every_invariant() {
    let seconds = env_u64("INFRAOS_CHURN_SECONDS", 25);
    let seed = env_u64("INFRAOS_CHURN_SEED", 1);
    let server =
        TestServer::start_with_config("leaseSkewMargin: 1s\nwatchBookmarkInterval: 1s\n").await;
    let c = server.client();
    apply_yaml(&c, &cluster()).await;
    let (_, revision) = c.list(kind("allocations"), None, None).await.unwrap();

    let made = Arc::new(Mutex::new(Made::default()));
    let checker = Arc::new(Mutex::new(Checker::new(made.clone())));
    let follower = tokio::spawn(follow(c.clone(), revision, checker.clone()));

    // Four workers, each with its own seeded stream, an operation every 20–180 ms.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let server_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (c, made, errors) = (c.clone(), made.clone(), server_errors.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (w + 1));
            let mut seq = w * 1_000_000;
            let mut ops = 0u64;
            while Instant::now() < deadline {
                ops += 1;
                let mut op = rng.below(100);
                if op < 55 && made.lock().unwrap().live.len() >= MAX_LIVE {
                    op = 71; // delete instead
                }
                let result = if op < 55 {
                    let mut last = Ok(Value::Null);
                    for t in next_claims(&mut rng, &mut seq) {
                        let name = t.body["metadata"]["name"].as_str().unwrap().to_string();
                        let key = format!("{}/{name}", t.ns);
                        made.lock()
                            .unwrap()
                            .claims
                            .insert(key, (t.priority, t.selector));
                        last = c.create(kind("claims"), Some(&t.ns), &t.body).await;
                        let mut m = made.lock().unwrap();
                        m.names.push((t.ns.clone(), name.clone()));
                        m.live.push((t.ns.clone(), name.clone()));
                        if t.short {
                            m.short.push((t.ns, name));
                        }
                    }
                    last
                } else {
                    let (list, action) = match op {
                        55..=70 => (false, "release"),
                        71..=84 => (false, "delete"),
                        _ => (true, "renew"),
                    };
                    let target = {
                        let mut m = made.lock().unwrap();
                        if list {
                            rng.pick(&m.short).cloned()
                        } else if m.live.is_empty() {
                            None
                        } else {
                            let i = rng.below(m.live.len() as u64) as usize;
                            Some(m.live.swap_remove(i))
                        }
                    };
                    match (target, action) {
                        (None, _) => Ok(Value::Null),
                        (Some((ns, name)), "delete") => {
                            c.delete(kind("claims"), Some(&ns), &name).await
                        }
                        (Some((ns, name)), "renew") => {
                            let body = json!({"duration": "5s"});
                            c.claim_action(&ns, &name, "renew", Some(&body)).await
                        }
                        (Some((ns, name)), _) => c.claim_action(&ns, &name, action, None).await,
                    }
                };
                if let Err(e) = result
                    && e.code().is_none_or(|code| code >= 500)
                {
                    errors.lock().unwrap().push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(20 + rng.below(160))).await;
            }
            ops
        }));
    }
    let mut ops = 0;
    for w in workers {
        ops += w.await.unwrap();
    }

    // Drain: delete every claim; nothing may stay held.
    let names = made.lock().unwrap().names.clone();
    let deletes = futures::stream::iter(names.iter().map(|(ns, name)| {
        let c = c.clone();
        async move { c.delete(kind("claims"), Some(ns), name).await }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    for d in deletes {
        if let Err(e) = d
            && !e.is_not_found()
        {
            server_errors.lock().unwrap().push(format!("drain: {e}"));
        }
    }
    let last_alloc = eventually(
        Duration::from_secs(60),
        "the drain frees everything",
        || {
            let c = c.clone();
            async move {
                let (allocs, _) = c.list(kind("allocations"), None, None).await.ok()?;
                let (claims, _) = c.list(kind("claims"), None, None).await.ok()?;
                let held = allocs.iter().any(|a| a["status"]["phase"] == "Active");
                // The latest allocation revision the watch must reach.
                let latest = allocs
                    .iter()
                    .filter_map(|a| {
                        a["metadata"]["resourceVersion"]
                            .as_str()?
                            .parse::<u64>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0);
                (!held && claims.is_empty()).then_some(latest)
            }
        },
    )
    .await;
    // Quota usage reads zero once the quota controller catches up.
    eventually(Duration::from_secs(30), "quota usage back to zero", || {
        let c = c.clone();
        async move {
            let (quotas, _) = c.list(kind("quotas"), None, None).await.ok()?;
            let zero = |v: &Value| {
                v.as_str()
                    .is_none_or(|s| s.parse::<Quantity>().is_ok_and(|q| q.is_zero()))
            };
            quotas
                .iter()
                .all(|q| {
                    q["status"]["used"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .all(|(_, dims)| {
                            dims.as_object().into_iter().flatten().all(|(_, v)| zero(v))
                        })
                })
                .then_some(())
        }
    })
    .await;
    // The watch catches up with the drain: nothing held at the last revision it saw.
    eventually(Duration::from_secs(30), "the watch sees the drain", || {
        let ch = checker.clone();
        async move {
            let mut ch = ch.lock().unwrap();
            ch.check();
            (ch.last_revision >= last_alloc && ch.held.values().all(|h| !h.active)).then_some(())
        }
    })
    .await;
    follower.abort();

    let made = std::mem::take(&mut *made.lock().unwrap());
    let audit = check_preemptions(&audit_entries(&c).await, &made);
    let ch = checker.lock().unwrap();
    let mut violations = ch.violations.clone();
    violations.extend(audit.violations.iter().cloned());
    violations.extend(
        server_errors
            .lock()
            .unwrap()
            .iter()
            .map(|e| format!("5xx: {e}")),
    );
    let leaked: Vec<&String> = ch
        .held
        .iter()
        .filter(|(_, h)| h.active)
        .map(|(k, _)| k)
        .collect();
    if !leaked.is_empty() {
        violations.push(format!(
            "the watch still sees {leaked:?} held after the drain"
        ));
    }
    eprintln!(
        "churn: seed {seed}: {seconds} s, {ops} operations, {} claims, {} placements, {} \
         preemptions ({} reclaims, {} preemptors never placed), {} expirations, checked at {} \
         revisions up to {}, worst first preemption to placed {} ms (prod: {} ms, {}; prod from \
         its last victim's end: {} ms; victims' end past grace + skew: {} ms), violations {}",
        made.names.len(),
        ch.placements,
        audit.preemptions,
        audit.reclaims,
        audit.unplaced,
        ch.expirations,
        ch.revisions,
        ch.last_revision,
        audit.worst_to_placed_ms,
        audit.worst_prod_to_placed.0,
        audit.worst_prod_to_placed.1,
        audit.worst_prod_freed_to_placed_ms,
        audit.worst_end_past_deadline_ms,
        violations.len()
    );
    if audit.worst_prod_to_placed.0 > 3000 {
        // One line: scripts/churn.sh keeps the lines that start with `churn:`.
        eprintln!(
            "churn: {} preempted: {:?}",
            audit.worst_prod_to_placed.1, audit.worst_prod_trail
        );
    }
    // The server log (the scheduler's reasons) is kept for a long prod wait too.
    if !violations.is_empty() || audit.worst_prod_to_placed.0 > 3000 {
        let keep = std::env::temp_dir().join(format!("infraos-churn-{seed}.log"));
        let _ = std::fs::write(&keep, server.log());
        eprintln!("churn: server log kept in {}", keep.display());
    }
    assert!(
        violations.is_empty(),
        "churn seed {seed}: {} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    // The marks the watch saw are the preemptions the audit trail recorded.
    assert_eq!(
        ch.preemption_marks, audit.preemptions,
        "watch and audit disagree"
    );
    assert!(
        ch.placements > 50 && audit.preemptions > 0 && ch.expirations > 0,
        "the churn exercised too little: {} placements, {} preemptions, {} expirations",
        ch.placements,
        audit.preemptions,
        ch.expirations
    );
}

/// The checkers catch what they are for: an item held twice, a dimension over capacity, a
/// project over its quota with borrowing, an expired claim placed again, a victim preempted
/// twice by one unplaced preemptor, and a reclaim of a higher priority.
#[test]
fn the_checkers_catch_what_they_are_for() {
    let made = Arc::new(Mutex::new(Made::default()));
    for (k, p) in [("t0-a/low", BATCH), ("t0-a/high", PROD), ("t0-b/b", BATCH)] {
        made.lock().unwrap().claims.insert(k.into(), (p, None));
    }
    let alloc = |name: &str, rv: u64, phase: &str, cpu: &str, items: &[&str]| {
        json!({"metadata": {"namespace": "t0-a", "name": name, "uid": name,
                            "resourceVersion": rv.to_string()},
               "spec": {"resources": [
                   {"resource": "n00-compute", "amount": {"cpu": cpu}},
                   {"resource": "n00-gpu", "items": items}]},
               "status": {"phase": phase}})
    };
    let mut ch = Checker::new(made.clone());
    ch.event("ADDED", &alloc("a", 2, "Active", "2", &["g0"]));
    ch.event("ADDED", &alloc("b", 3, "Active", "2", &["g1"]));
    ch.event("BOOKMARK", &json!({"metadata": {"resourceVersion": "3"}}));
    assert!(ch.violations.is_empty(), "{:?}", ch.violations);
    ch.event("ADDED", &alloc("c", 4, "Active", "500m", &["g0"]));
    ch.event("BOOKMARK", &json!({"metadata": {"resourceVersion": "4"}}));
    let all = ch.violations.join("\n");
    assert!(all.contains("item n00-gpu/g0 held by"), "{all}");
    assert!(all.contains("n00-compute cpu holds"), "{all}");
    let mut ch = Checker::new(made.clone());
    for (i, n) in ["d", "e", "f", "g", "h"].iter().enumerate() {
        let mut a = alloc(n, 5, "Active", "4", &[]);
        a["spec"]["resources"][0]["resource"] = format!("n0{}-compute", i + 1).into();
        ch.event("ADDED", &a);
    }
    ch.event("MODIFIED", &alloc("d", 6, "Expired", "4", &[]));
    ch.event("DELETED", &alloc("d", 7, "Expired", "4", &[]));
    ch.event("ADDED", &alloc("d", 8, "Active", "1", &[]));
    ch.check();
    let all = ch.violations.join("\n");
    assert!(all.contains("quota of t0-a cpu"), "{all}");
    assert!(
        all.contains("t0-a/d placed again after its lease expired"),
        "{all}"
    );

    let record = |seq: u64, verb: &str, name: &str, reason: &str| {
        (
            seq,
            json!({"verb": verb, "object": {"namespace": name.split('/').next(),
                     "name": name.split('/').nth(1)}, "result": {"reason": reason},
                     "time": "2026-01-01T00:00:00Z"}),
        )
    };
    let entries = vec![
        record(1, "allocate", "t0-a/low", ""),
        record(
            2,
            "preempt",
            "t0-a/low",
            "preempted by t0-a/high: priority 1000 > 10",
        ),
        record(3, "allocate", "t0-a/low", ""),
        record(
            4,
            "preempt",
            "t0-a/low",
            "preempted by t0-a/high: priority 1000 > 10",
        ),
        record(
            5,
            "preempt",
            "t0-a/high",
            "preempted by t0-b/b: reclaiming tenant quota",
        ),
    ];
    let found = check_preemptions(&entries, &made.lock().unwrap())
        .violations
        .join("\n");
    assert!(
        found.contains("t0-a/low preempted again by t0-a/high"),
        "{found}"
    );
    assert!(
        found.contains("t0-a/high (priority 1000) preempted by t0-b/b"),
        "{found}"
    );
    let placed_between = [
        entries[..2].to_vec(),
        vec![record(9, "allocate", "t0-a/high", "")],
        entries[2..4].to_vec(),
    ]
    .concat();
    assert!(
        check_preemptions(&placed_between, &made.lock().unwrap())
            .violations
            .is_empty()
    );
}
