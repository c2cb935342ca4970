//! Governance through a real server: quotas hold claims with a reason naming the level and
//! dimension, usage shows in Quota status and `infraos get quota`, a higher-priority claim
//! preempts the fewest lowest-priority allocations (audited, with events on both sides, and
//! the victims requeued, not lost), gangs are placed whole, and bad references are refused
//! at admission with the field named.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

fn claim_with(name: &str, cpu: &str, extra: Value) -> Value {
    let mut c = claim(name, cpu, "1h");
    if let (Some(spec), Some(extra)) = (c["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    c
}

const GOVERNANCE: &str = r#"
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: batch}
spec: {value: 10}
---
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: urgent}
spec: {value: 1000}
---
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: polite}
spec: {value: 2000, preemptionPolicy: Never}
---
apiVersion: infraos.io/v1
kind: Quota
metadata: {name: p-compute}
spec:
  project: p
  limits: {compute: {cpu: "6"}}
---
apiVersion: infraos.io/v1
kind: Quota
metadata: {name: t-compute}
spec:
  tenant: t
  limits: {compute: {cpu: "100"}}
"#;

async fn claims_by_phase(c: &infraos_client::Client) -> Vec<(String, String, String)> {
    let (items, _) = c.list(kind("claims"), Some("p"), None).await.unwrap();
    items
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap_or("").to_string(),
                phase(i).to_string(),
                i["status"]["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn quotas_priorities_and_preemption_through_the_api() {
    let server = TestServer::start_with_config("leaseSkewMargin: 1s\n").await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    apply_yaml(&c, GOVERNANCE).await;

    // Four 1-CPU batch claims fill the node (and 4 of the project's 6 CPUs).
    for i in 0..4 {
        let body = claim_with(&format!("b{i}"), "1", json!({"priorityClassName": "batch"}));
        let created = c.create(kind("claims"), Some("p"), &body).await.unwrap();
        assert_eq!(
            created["spec"]["priority"], 10,
            "admission copies the value"
        );
    }
    eventually(Duration::from_secs(20), "4 allocated", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            (all.iter().filter(|(_, p, _)| p == "Allocated").count() == 4).then_some(())
        }
    })
    .await;
    eventually(Duration::from_secs(20), "quota usage in status", || {
        let c = c.clone();
        async move {
            let q = c.get(kind("quotas"), None, "p-compute").await.ok()?;
            (q["status"]["used"]["compute"]["cpu"] == "4").then_some(())
        }
    })
    .await;
    let out = server.cli(&["get", "quota"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("project") && table.contains("compute/cpu 4/6"),
        "{table}"
    );

    // 4 + 3 > 6: held by the project quota, with the level and dimension named.
    c.create(
        kind("claims"),
        Some("p"),
        &claim_with("big", "3", json!({})),
    )
    .await
    .unwrap();
    let big = eventually(Duration::from_secs(20), "big held by quota", || {
        let c = c.clone();
        async move {
            let cl = c.get(kind("claims"), Some("p"), "big").await.ok()?;
            (cl["status"]["reason"] == "QuotaExceeded").then_some(cl)
        }
    })
    .await;
    let message = big["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("quota p-compute (project level: project p)")
            && message.contains("compute/cpu would be 7 of 6"),
        "{message}"
    );
    c.delete(kind("claims"), Some("p"), "big").await.unwrap();

    // A polite claim of the highest priority waits; it never preempts.
    c.create(
        kind("claims"),
        Some("p"),
        &claim_with("polite", "1", json!({"priorityClassName": "polite"})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "polite waits", || {
        let c = c.clone();
        async move {
            let cl = c.get(kind("claims"), Some("p"), "polite").await.ok()?;
            (cl["status"]["reason"] == "Unschedulable").then_some(())
        }
    })
    .await;
    c.delete(kind("claims"), Some("p"), "polite").await.unwrap();

    // An urgent 2-CPU claim preempts exactly two batch claims.
    c.create(
        kind("claims"),
        Some("p"),
        &claim_with("urgent", "2", json!({"priorityClassName": "urgent"})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "urgent allocated", || {
        let c = c.clone();
        async move {
            let cl = c.get(kind("claims"), Some("p"), "urgent").await.ok()?;
            (phase(&cl) == "Allocated").then_some(())
        }
    })
    .await;
    let all = claims_by_phase(&c).await;
    let requeued: Vec<&(String, String, String)> = all
        .iter()
        .filter(|(n, p, _)| n.starts_with('b') && p == "Pending")
        .collect();
    assert_eq!(requeued.len(), 2, "two victims back in the queue: {all:?}");
    assert_eq!(
        all.iter()
            .filter(|(n, p, _)| n.starts_with('b') && p == "Allocated")
            .count(),
        2,
        "{all:?}"
    );
    // Nothing is lost: the victims' claims still exist, their allocations are gone (a new
    // one gets a higher fencing epoch), and both sides have events.
    for (name, _, _) in &requeued {
        assert!(
            c.get(kind("allocations"), Some("p"), name)
                .await
                .unwrap_err()
                .is_not_found()
        );
    }
    let (events, _) = c.list(kind("events"), Some("p"), None).await.unwrap();
    let reasons = |obj: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["spec"]["involvedObject"]["name"] == obj)
            .map(|e| e["spec"]["reason"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert!(reasons("urgent").contains(&"Preempting".to_string()));
    for (name, _, _) in &requeued {
        let r = reasons(name);
        assert!(r.contains(&"Preempted".to_string()), "{name}: {r:?}");
        assert!(r.contains(&"Requeued".to_string()), "{name}: {r:?}");
    }
    // Each preemption is an audit record naming who preempted whom and why.
    let page = c.audit_records(1, 10_000).await.unwrap();
    let preempts: Vec<&Value> = page
        .items
        .iter()
        .map(|r| &r.entry)
        .filter(|e| e["verb"] == "preempt")
        .collect();
    assert_eq!(preempts.len(), 2, "{preempts:?}");
    for e in &preempts {
        let reason = e["result"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("preempted by p/urgent")
                && reason.contains("priority 1000 preempts priority 10"),
            "{reason}"
        );
    }
    let out = server.cli(&["describe", "claim", "urgent", "-n", "p"]);
    assert!(
        stdout(&out).contains("Priority:     1000 (urgent)"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn gangs_are_placed_whole_through_the_api() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    let member = |i: usize| {
        claim_with(
            &format!("w{i}"),
            "2",
            json!({"group": {"name": "mpi", "minMembers": 3}}),
        )
    };
    // Three 2-CPU members cannot all fit 4 CPUs: none is placed.
    for i in 0..3 {
        c.create(kind("claims"), Some("p"), &member(i))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(20), "gang held whole", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            all.iter()
                .all(|(_, p, r)| p == "Pending" && r == "GangIncomplete")
                .then_some(())
        }
    })
    .await;
    let (allocs, _) = c.list(kind("allocations"), Some("p"), None).await.unwrap();
    assert!(allocs.is_empty(), "no member placed: {allocs:?}");
    // More room: all three are placed together.
    apply_yaml(
        &c,
        r#"
apiVersion: infraos.io/v1
kind: Resource
metadata: {name: n1-compute}
spec:
  class: compute
  node: n1
  capacity: {cpu: "6", memory: 64Gi}
"#,
    )
    .await;
    eventually(Duration::from_secs(30), "gang placed", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            all.iter().all(|(_, p, _)| p == "Allocated").then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_gang_of_higher_priority_preempts_and_is_placed_whole() {
    let server = TestServer::start_with_config("leaseSkewMargin: 1s\n").await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    apply_yaml(
        &c,
        r#"
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: batch}
spec: {value: 10}
---
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: urgent}
spec: {value: 1000}
"#,
    )
    .await;
    for i in 0..4 {
        let body = claim_with(&format!("b{i}"), "1", json!({"priorityClassName": "batch"}));
        c.create(kind("claims"), Some("p"), &body).await.unwrap();
    }
    eventually(Duration::from_secs(20), "4 allocated", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            (all.iter().filter(|(_, p, _)| p == "Allocated").count() == 4).then_some(())
        }
    })
    .await;
    // Two 2-CPU members of an urgent gang: the node is full, so the gang preempts and both
    // are placed together once the victims have ended.
    for i in 0..2 {
        let body = claim_with(
            &format!("g{i}"),
            "2",
            json!({"priorityClassName": "urgent", "group": {"name": "train", "minMembers": 2}}),
        );
        c.create(kind("claims"), Some("p"), &body).await.unwrap();
    }
    eventually(Duration::from_secs(40), "gang allocated", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            all.iter()
                .filter(|(n, p, _)| n.starts_with('g') && p == "Allocated")
                .count()
                .eq(&2)
                .then_some(())
        }
    })
    .await;
    let all = claims_by_phase(&c).await;
    assert_eq!(
        all.iter()
            .filter(|(n, p, _)| n.starts_with('b') && p == "Pending")
            .count(),
        4,
        "every victim requeued: {all:?}"
    );
    let (allocs, _) = c.list(kind("allocations"), Some("p"), None).await.unwrap();
    let gang_nodes: Vec<&str> = allocs
        .iter()
        .filter(|a| {
            a["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with('g'))
        })
        .filter_map(|a| a["spec"]["node"].as_str())
        .collect();
    assert_eq!(gang_nodes.len(), 2, "{allocs:?}");
    let page = c.audit_records(1, 10_000).await.unwrap();
    let preempts = page
        .items
        .iter()
        .filter(|r| r.entry["verb"] == "preempt")
        .count();
    assert_eq!(preempts, 4);
}

#[tokio::test]
async fn claims_without_a_class_get_the_global_default_as_it_is_now() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(8)).await;
    let create = |name: &'static str| {
        let c = c.clone();
        async move {
            c.create(kind("claims"), Some("p"), &claim_with(name, "1", json!({})))
                .await
                .unwrap()
        }
    };
    // No default class: priority stays unset (0 for the scheduler).
    let plain = create("plain").await;
    assert!(plain["spec"]["priority"].is_null(), "{plain}");
    apply_yaml(
        &c,
        "apiVersion: infraos.io/v1\nkind: PriorityClass\nmetadata: {name: normal}\nspec: {value: 100, globalDefault: true}\n---\napiVersion: infraos.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nspec: {value: 5, globalDefault: true}\n",
    )
    .await;
    // Two global defaults: the higher value wins.
    let a = create("a").await;
    assert_eq!(a["spec"]["priorityClassName"], "normal", "{a}");
    assert_eq!(a["spec"]["priority"], 100);
    // The class changes: the next claim sees the new value (the decode cache keys on the
    // revision), the earlier claim keeps its own.
    c.merge_patch(
        kind("priorityclasses"),
        None,
        "normal",
        &json!({"spec": {"value": 200}}),
    )
    .await
    .unwrap();
    let b = create("b").await;
    assert_eq!(b["spec"]["priority"], 200, "{b}");
    let a = c.get(kind("claims"), Some("p"), "a").await.unwrap();
    assert_eq!(a["spec"]["priority"], 100);
}

#[tokio::test]
async fn bad_governance_input_is_refused_with_the_field_named() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    let refused = |r: Result<Value, infraos_client::ClientError>, field: &str, words: &str| {
        let e = r.expect_err("refused").to_string();
        assert!(e.contains(field) && e.contains(words), "{e}");
    };
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with("a", "1", json!({"priorityClassName": "gold"})),
        )
        .await,
        "spec.priorityClassName",
        "PriorityClass \"gold\" not found",
    );
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with("b", "1", json!({"queue": "fast"})),
        )
        .await,
        "spec.queue",
        "Queue \"fast\" not found",
    );
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with("c", "1", json!({"priority": 5})),
        )
        .await,
        "spec.priority",
        "leave it out",
    );
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with("d", "1", json!({"group": {"name": "g", "minMembers": 0}})),
        )
        .await,
        "spec.group.minMembers",
        "between 1 and",
    );
    let quota = |spec: Value| json!({"apiVersion": "infraos.io/v1", "kind": "Quota", "metadata": {"name": "q"}, "spec": spec});
    refused(
        c.create(
            kind("quotas"),
            None,
            &quota(json!({"project": "p", "limits": {"fpga": {"count": "1"}}})),
        )
        .await,
        "spec.limits.fpga",
        "ResourceClass \"fpga\" not found",
    );
    refused(
        c.create(
            kind("quotas"),
            None,
            &quota(json!({"project": "p", "limits": {"compute": {"cpus": "1"}}})),
        )
        .await,
        "spec.limits.compute.cpus",
        "no dimension",
    );
    refused(
        c.create(
            kind("quotas"),
            None,
            &quota(json!({"project": "nope", "limits": {"compute": {"cpu": "1"}}})),
        )
        .await,
        "spec.project",
        "not found",
    );
    refused(
        c.create(
            kind("quotas"),
            None,
            &quota(json!({"limits": {"compute": {"cpu": "1"}}})),
        )
        .await,
        "spec",
        "give the scope",
    );
    refused(
        c.create(
            kind("queues"),
            None,
            &json!({"apiVersion": "infraos.io/v1", "kind": "Queue", "metadata": {"name": "q"}, "spec": {"weight": 0}}),
        )
        .await,
        "spec.weight",
        "greater than 0",
    );
    refused(
        c.create(
            kind("priorityclasses"),
            None,
            &json!({"apiVersion": "infraos.io/v1", "kind": "PriorityClass", "metadata": {"name": "x"}, "spec": {"value": 2_000_000_000}}),
        )
        .await,
        "spec.value",
        "between",
    );
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with(
                "e",
                "1",
                json!({"tolerations": [{"key": "reserved", "operator": "Exists", "value": "x"}]}),
            ),
        )
        .await,
        "spec.tolerations[0].value",
        "must be empty with operator Exists",
    );
    refused(
        c.create(
            kind("nodes"),
            None,
            &json!({"apiVersion": "infraos.io/v1", "kind": "Node", "metadata": {"name": "n9"},
                    "spec": {"taints": [{"key": "bad key!"}]}}),
        )
        .await,
        "spec.taints[0].key",
        "",
    );
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with(
                "f",
                "1",
                json!({"affinity": [{"selector": "app=db", "topologyKey": "zone"}],
                       "antiAffinity": [{"selector": "app=db", "topologyKey": "zone"}]}),
            ),
        )
        .await,
        "spec.antiAffinity[0]",
        "contradicts spec.affinity[0]",
    );
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with("g", "1", json!({"scoring": {"weights": {"carbon": 1}}})),
        )
        .await,
        "spec.scoring.weights.carbon",
        "unknown score plugin",
    );
    refused(
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with("h", "1", json!({"scoring": {"weights": {"cost": 1000}}})),
        )
        .await,
        "spec.scoring.weights.cost",
        "between 0 and 100",
    );
    // A profile naming an unknown plugin or a zero priority gap stops the server at start.
    for (config, words) in [
        (
            "scheduler: {scores: {magic: 1}}\n",
            "unknown score plugin \"magic\"",
        ),
        (
            "scheduler: {preemption: {minPriorityGap: 0}}\n",
            "minPriorityGap must be at least 1",
        ),
        (
            "scheduler: {networkDistances: {eu: 3}}\n",
            "must name two values as a/b",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let init = std::process::Command::new(bin())
            .args(["server", "init", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", stderr(&init));
        std::fs::write(dir.path().join("server.yaml"), config).unwrap();
        let out = std::process::Command::new(bin())
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains(words), "{}", stderr(&out));
    }
}

#[tokio::test]
async fn the_governance_walkthrough_works_from_the_command_line() {
    let server = TestServer::start_with_config("leaseSkewMargin: 1s\n").await;
    let c = server.client();
    let run = |args: &[&str]| {
        let out = server.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    run(&["apply", "-f", "examples/walkthrough/"]);
    run(&["delete", "claim", "train-h100", "-n", "ml-team"]);
    run(&[
        "apply",
        "-f",
        "examples/governance/00-policy.yaml",
        "-f",
        "examples/governance/10-sweeps.yaml",
    ]);
    let claim_state = |name: &'static str| {
        let c = c.clone();
        async move {
            let cl = c.get(kind("claims"), Some("ml-team"), name).await.ok()?;
            Some((
                phase(&cl).to_string(),
                cl["status"]["reason"].as_str().unwrap_or("").to_string(),
            ))
        }
    };
    for name in ["sweep-1", "sweep-2"] {
        eventually(Duration::from_secs(20), "sweeps allocated", || async move {
            (claim_state(name).await?.0 == "Allocated").then_some(())
        })
        .await;
    }
    run(&["apply", "-f", "examples/governance/20-serve.yaml"]);
    eventually(Duration::from_secs(30), "serve allocated", || async move {
        (claim_state("serve").await?.0 == "Allocated").then_some(())
    })
    .await;
    for name in ["sweep-1", "sweep-2"] {
        let (phase, _) = claim_state(name).await.unwrap();
        assert_eq!(phase, "Pending", "{name} was preempted and requeued");
    }
    let greedy = run(&["describe", "claim", "greedy", "-n", "ml-team"]);
    assert!(
        greedy.contains("QuotaExceeded") && greedy.contains("compute/cpu would be"),
        "{greedy}"
    );
    let quotas = run(&["get", "quota"]);
    assert!(quotas.contains("gpu/count"), "{quotas}");
    let events = run(&["get", "events", "-n", "ml-team"]);
    for reason in ["Preempting", "Preempted", "Requeued"] {
        assert!(events.contains(reason), "{reason} in {events}");
    }
}

/// `explain` replays recorded decisions on the store as the scheduler saw it and reaches the
/// same result, for placed and pending claims alike, including claims decided in one batch
/// after others (whose allocations it assumes); it decides afresh at a given revision,
/// refuses future revisions, and answers 410 once the history it needs is gone.
#[tokio::test]
async fn explain_replays_decisions_on_the_recorded_snapshot() {
    let server = TestServer::start_with_config("watchHistory: 400\n").await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    apply_yaml(
        &c,
        "apiVersion: infraos.io/v1\nkind: Node\nmetadata: {name: n2, labels: {zone: b}}\nspec: {}\n",
    )
    .await;
    let mut web = claim_with(
        "web",
        "1",
        json!({"topologySpread": [{"selector": "app=web", "topologyKey": "zone", "maxSkew": 1}]}),
    );
    web["metadata"]["labels"] = json!({"app": "web"});
    c.create(kind("claims"), Some("p"), &web).await.unwrap();
    // Three claims for zone b, where nothing exists yet, and one too big for anything.
    for name in ["b1", "b2", "b3"] {
        c.create(
            kind("claims"),
            Some("p"),
            &claim_with(name, "1", json!({"selector": "zone=b"})),
        )
        .await
        .unwrap();
    }
    c.create(kind("claims"), Some("p"), &claim("big", "16", "1h"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "zone b claims pending", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            (all.iter().filter(|(_, _, r)| r == "Unschedulable").count() == 4).then_some(())
        }
    })
    .await;
    // Zone b gets capacity: its three claims are placed together, in one batch.
    apply_yaml(
        &c,
        "apiVersion: infraos.io/v1\nkind: Resource\nmetadata: {name: n2-compute}\nspec:\n  class: compute\n  node: n2\n  capacity: {cpu: \"4\", memory: 64Gi}\n",
    )
    .await;
    eventually(Duration::from_secs(30), "four placed, one pending", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            (all.iter().filter(|(_, p, _)| p == "Allocated").count() == 4).then_some(())
        }
    })
    .await;
    let explain = |name: &str, query: &str| {
        let c = c.clone();
        let path = format!("/apis/infraos.io/v1/namespaces/p/claims/{name}/explain{query}");
        async move {
            c.raw(infraos_client::Method::GET, &path, None, vec![], None)
                .await
                .unwrap()
        }
    };
    let mut assumed = 0;
    for name in ["web", "b1", "b2", "b3"] {
        let (code, body) = explain(name, "").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["matches"], json!(true), "{body:#}");
        assert_eq!(body["replayed"]["outcome"], "placed", "{body:#}");
        assert_eq!(
            body["recorded"]["node"], body["replayed"]["node"],
            "{body:#}"
        );
        assert_eq!(
            body["recorded"]["score"], body["replayed"]["score"],
            "{body:#}"
        );
        assumed += body["assumed"].as_array().unwrap().len();
    }
    assert!(
        assumed >= 1,
        "claims decided after others in their batch replay with those allocations assumed"
    );
    let (code, big) = explain("big", "").await;
    assert_eq!(code, 200, "{big}");
    assert_eq!(big["matches"], json!(true), "{big:#}");
    assert_eq!(big["replayed"]["reason"], "Unschedulable", "{big:#}");
    assert!(
        big["replayed"]["message"]
            .as_str()
            .unwrap()
            .contains("insufficient compute"),
        "{big:#}"
    );
    // At an explicit revision: a fresh decision, nothing recorded to compare with.
    let revision = big["revision"].as_u64().unwrap();
    let (code, fresh) = explain("big", &format!("?revision={revision}")).await;
    assert_eq!(code, 200, "{fresh}");
    assert!(
        fresh.get("recorded").is_none() && fresh.get("matches").is_none(),
        "{fresh:#}"
    );
    assert_eq!(fresh["replayed"]["reason"], "Unschedulable");
    let (code, body) = explain("big", "?revision=999999999").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("future"),
        "{body}"
    );
    let (code, _) = explain("nobody", "").await;
    assert_eq!(code, 404);
    // The command line prints both and says they agree.
    let out = server.cli(&["explain", "claim", "b2", "-n", "p"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Recorded:") && text.contains("Replayed:"),
        "{text}"
    );
    assert!(
        text.contains("the replay reaches the recorded decision"),
        "{text}"
    );
    let out = server.cli(&["explain", "node", "n1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only claims"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Push the decisions out of the kept history: the replay says so instead of guessing.
    for i in 0..450 {
        c.create(
            kind("queues"),
            None,
            &json!({"apiVersion": "infraos.io/v1", "kind": "Queue",
                    "metadata": {"name": format!("q{i}")}, "spec": {"weight": 1}}),
        )
        .await
        .unwrap();
    }
    let (code, body) = explain("web", "").await;
    assert_eq!(code, 410, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("keeps history only after"),
        "{body}"
    );
}

/// A gang is released together: when one member is lost with its node, the others are
/// stopped and requeued too (audited, with a GangMemberLost event), and the gang is placed
/// whole again on what is left.
#[tokio::test]
async fn a_gang_is_requeued_whole_when_a_member_is_lost() {
    let server = TestServer::start_with_config("leaseSkewMargin: 1s\n").await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    apply_yaml(
        &c,
        "apiVersion: infraos.io/v1\nkind: Node\nmetadata: {name: n2, labels: {zone: b}}\nspec: {}\n---\napiVersion: infraos.io/v1\nkind: Resource\nmetadata: {name: n2-compute}\nspec:\n  class: compute\n  node: n2\n  capacity: {cpu: \"4\", memory: 64Gi}\n",
    )
    .await;
    // Two members, one per node; the one on n1 has a short lease (its node will be lost).
    let member = |name: &str, zone: &str, lease: &str| {
        let mut m = claim(name, "1", lease);
        m["spec"]["group"] = json!({"name": "mpi", "minMembers": 2});
        m["spec"]["selector"] = json!(format!("zone={zone}"));
        m
    };
    c.create(kind("claims"), Some("p"), &member("r0", "a", "3s"))
        .await
        .unwrap();
    c.create(kind("claims"), Some("p"), &member("r1", "b", "1h"))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "gang placed", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            (all.len() == 2 && all.iter().all(|(_, p, _)| p == "Allocated")).then_some(())
        }
    })
    .await;
    let r1_alloc = c.get(kind("allocations"), Some("p"), "r1").await.unwrap();
    let r1_epoch = r1_alloc["status"]["lease"]["fencingEpoch"]
        .as_u64()
        .unwrap();
    // n1 goes NotReady; r0's lease runs out there: r0 is lost, and r1 is stopped with it.
    let mut n1 = c.get(kind("nodes"), None, "n1").await.unwrap();
    n1["status"] = json!({"conditions": [{"type": "Ready", "status": "False"}]});
    c.replace_status(kind("nodes"), None, "n1", &n1)
        .await
        .unwrap();
    let (events, _) = eventually(Duration::from_secs(30), "r1 stopped with its gang", || {
        let c = c.clone();
        async move {
            let (events, rv) = c.list(kind("events"), Some("p"), None).await.ok()?;
            events
                .iter()
                .any(|e| e["spec"]["reason"] == "GangMemberLost")
                .then_some((events, rv))
        }
    })
    .await;
    let stopped = events
        .iter()
        .find(|e| e["spec"]["reason"] == "GangMemberLost")
        .unwrap();
    assert!(
        stopped["spec"]["message"]
            .as_str()
            .unwrap()
            .contains("member r0 was lost with node n1"),
        "{stopped}"
    );
    // r1 goes back to the queue with r0 (r0 waits for zone a, so the gang waits whole), and
    // both are placed again once n1 is back.
    eventually(Duration::from_secs(30), "r1 requeued", || {
        let c = c.clone();
        async move {
            let a = c.get(kind("allocations"), Some("p"), "r1").await.ok();
            let requeued =
                a.is_none_or(|a| a["status"]["lease"]["fencingEpoch"].as_u64() > Some(r1_epoch));
            requeued.then_some(())
        }
    })
    .await;
    let mut n1 = c.get(kind("nodes"), None, "n1").await.unwrap();
    n1["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    c.replace_status(kind("nodes"), None, "n1", &n1)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "gang placed whole again", || {
        let c = c.clone();
        async move {
            let all = claims_by_phase(&c).await;
            (all.iter().all(|(_, p, _)| p == "Allocated")).then_some(())
        }
    })
    .await;
    let again = c.get(kind("allocations"), Some("p"), "r1").await.unwrap();
    assert!(again["status"]["lease"]["fencingEpoch"].as_u64().unwrap() > r1_epoch);
    let records = c.audit_records(1, 5000).await.unwrap();
    assert!(
        records.items.iter().any(|r| r.entry["verb"] == "stop-gang"),
        "the gang stop is audited"
    );
}
