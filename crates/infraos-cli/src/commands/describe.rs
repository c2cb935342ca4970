//! `infraos describe KIND NAME`: everything about one object a person needs: spec, status, the
//! lease countdown, why it was placed where it is (or why not), and its recent events.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Args;
use infraos_api::{KindInfo, Quantity, Time};
use infraos_client::Client;
use serde_json::Value;

use crate::NamespaceArg;
use crate::output::{self, countdown, short_duration};

#[derive(Args)]
pub struct DescribeArgs {
    kind: String,
    name: String,
    #[command(flatten)]
    ns: NamespaceArg,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(|x| x.as_str()).unwrap_or("")
}

fn t(v: &Value, p: &str) -> Option<Time> {
    v.pointer(p)?.as_str()?.parse().ok()
}

fn when(time: Option<Time>, now: Time) -> String {
    match time {
        Some(time) => format!("{time} ({} ago)", short_duration(time.millis_until(now))),
        None => "-".into(),
    }
}

fn kv_list(v: Option<&Value>) -> String {
    output::key_values(v, ", ", "<none>")
}

pub async fn run(config: Option<&Path>, args: DescribeArgs) -> anyhow::Result<()> {
    let info = super::kind(&args.kind)?;
    let ns = super::require_namespace(info, &args.ns.namespace)?;
    let client = super::client(config)?;
    let object = client
        .get(info, ns, &args.name)
        .await
        .map_err(|e| anyhow::anyhow!("{} {:?}: {e}", info.singular, args.name))?;
    let now = output::now();
    println!("Name:         {}", s(&object, "/metadata/name"));
    if let Some(ns) = ns {
        println!("Project:      {ns}");
    }
    println!("Kind:         {}", info.kind);
    println!(
        "Labels:       {}",
        kv_list(object.pointer("/metadata/labels"))
    );
    println!(
        "Created:      {}",
        when(t(&object, "/metadata/creationTimestamp"), now)
    );
    if let Some(d) = t(&object, "/metadata/deletionTimestamp") {
        println!("Deleting:     since {}", when(Some(d), now));
    }
    match info.kind {
        "Claim" => describe_claim(&client, &object, now).await?,
        "Resource" => describe_resource(&client, &object).await?,
        _ => {
            for part in ["spec", "status"] {
                if let Some(v) = object.get(part) {
                    println!("{}:", capitalize(part));
                    for line in serde_norway::to_string(v)?.lines() {
                        println!("  {line}");
                    }
                }
            }
        }
    }
    print_events(&client, info, ns, &object, now).await
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

async fn describe_claim(client: &Client, claim: &Value, now: Time) -> anyhow::Result<()> {
    let phase = Some(s(claim, "/status/phase"))
        .filter(|p| !p.is_empty())
        .unwrap_or("Pending");
    println!("Phase:        {phase}");
    if let Some(reason) = claim.pointer("/status/reason").and_then(|v| v.as_str()) {
        println!("Reason:       {reason}");
    }
    let priority = claim
        .pointer("/spec/priority")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    match claim
        .pointer("/spec/priorityClassName")
        .and_then(|v| v.as_str())
    {
        Some(class) => println!("Priority:     {priority} ({class})"),
        None => println!("Priority:     {priority}"),
    }
    println!(
        "Queue:        {}",
        claim
            .pointer("/spec/queue")
            .and_then(|v| v.as_str())
            .unwrap_or("default")
    );
    if let Some(group) = claim.pointer("/spec/group") {
        println!(
            "Gang:         {} (all or nothing, at least {} members)",
            s(group, "/name"),
            group
                .get("minMembers")
                .map(Value::to_string)
                .unwrap_or_default()
        );
    }
    println!(
        "Lease:        {} per term, renew policy {}",
        s(claim, "/spec/lease/duration"),
        s(claim, "/spec/lease/renewPolicy")
    );
    if let Some(sel) = claim.pointer("/spec/selector").and_then(|v| v.as_str()) {
        println!("Selector:     {sel}");
    }
    if let Some(keys) = claim
        .pointer("/spec/topology/colocate")
        .and_then(|v| v.as_array())
    {
        let keys: Vec<&str> = keys.iter().filter_map(|k| k.as_str()).collect();
        println!("Colocate on:  {}", keys.join(", "));
    }
    println!("Requests:");
    for r in claim
        .pointer("/spec/requests")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let name = Some(s(r, "/name"))
            .filter(|n| !n.is_empty())
            .unwrap_or(s(r, "/class"));
        let what = match r.get("count") {
            Some(c) => format!("{c} item(s)"),
            None => kv_list(r.get("amount")),
        };
        let selector = r
            .get("selector")
            .and_then(|v| v.as_str())
            .map(|e| format!(" where {e}"))
            .unwrap_or_default();
        println!("  {name:<12} {:<14} {what}{selector}", s(r, "/class"));
    }
    let ns = s(claim, "/metadata/namespace");
    let name = s(claim, "/metadata/name");
    let alloc_kind = super::kind("allocations")?;
    match client.get(alloc_kind, Some(ns), name).await {
        Ok(alloc) => {
            let alloc_phase = s(&alloc, "/status/phase");
            println!(
                "Allocation:   {name} ({alloc_phase}) on node {}",
                Some(s(&alloc, "/spec/node"))
                    .filter(|n| !n.is_empty())
                    .unwrap_or("<none: pools only>")
            );
            let expire = t(&alloc, "/status/lease/expireTime");
            println!(
                "  Lease:      acquired {}, renewed {}, expires {} ({}), fencing epoch {}",
                t(&alloc, "/status/lease/acquireTime")
                    .map(|x| x.to_string())
                    .unwrap_or_default(),
                t(&alloc, "/status/lease/renewTime")
                    .map(|x| x.to_string())
                    .unwrap_or_default(),
                expire.map(|x| x.to_string()).unwrap_or_default(),
                if alloc_phase == "Active" {
                    countdown(expire, now)
                } else {
                    alloc_phase.to_lowercase()
                },
                alloc
                    .pointer("/status/lease/fencingEpoch")
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
            println!("  Resources:");
            for p in alloc
                .pointer("/spec/resources")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                let items: Vec<&str> = p
                    .get("items")
                    .and_then(|i| i.as_array())
                    .map(|i| i.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                let what = if items.is_empty() {
                    kv_list(p.get("amount"))
                } else {
                    items.join(", ")
                };
                println!(
                    "    {:<12} {:<22} {what}",
                    s(p, "/request"),
                    s(p, "/resource")
                );
            }
            if let Some(score) = alloc.pointer("/spec/score") {
                println!(
                    "  Score:      {} ({}) among {} feasible candidate(s)",
                    score
                        .get("total")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    kv_list(score.get("plugins")),
                    score
                        .get("feasible")
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                );
            }
            match alloc.pointer("/spec/runnerUp") {
                Some(r) => println!(
                    "  Runner-up:  {} with {}",
                    Some(s(r, "/node"))
                        .filter(|n| !n.is_empty())
                        .unwrap_or("<pool>"),
                    r.get("total").map(|v| v.to_string()).unwrap_or_default()
                ),
                None => println!("  Runner-up:  none (the only feasible candidate)"),
            }
            if alloc.pointer("/spec/borrowing").and_then(Value::as_bool) == Some(true) {
                println!("  Borrowing:  yes (beyond its project's quota; reclaimed first)");
            }
            if let Some(p) = alloc.pointer("/status/preemption") {
                println!(
                    "  Preempted:  by {} at {}: {}",
                    s(p, "/by"),
                    s(p, "/time"),
                    s(p, "/reason")
                );
            }
        }
        Err(e) if e.is_not_found() => {
            if let Some(message) = claim.pointer("/status/message").and_then(|v| v.as_str()) {
                println!("Scheduling:   {message}");
            } else if phase == "Pending" {
                println!("Scheduling:   waiting for the scheduler");
            }
            if let Some(u) = claim.pointer("/status/unschedulable") {
                let reasons: BTreeMap<String, u64> =
                    serde_json::from_value(u.get("reasons").cloned().unwrap_or_default())
                        .unwrap_or_default();
                let mut reasons: Vec<_> = reasons.into_iter().collect();
                reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
                println!(
                    "  Rejected ({} {} considered at revision {}):",
                    u.get("candidates")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    s(u, "/candidateKind"),
                    u.get("snapshotRevision")
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                );
                for (reason, count) in reasons {
                    println!("    {count:>6}  {reason}");
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn describe_resource(client: &Client, resource: &Value) -> anyhow::Result<()> {
    let name = s(resource, "/metadata/name");
    println!("Class:        {}", s(resource, "/spec/class"));
    println!(
        "Node:         {}",
        Some(s(resource, "/spec/node"))
            .filter(|n| !n.is_empty())
            .unwrap_or("<none: a pool>")
    );
    let (allocs, _) = client.list(super::kind("allocations")?, None, None).await?;
    let mut used: BTreeMap<String, Quantity> = BTreeMap::new();
    let mut items_used = Vec::new();
    let mut holders = Vec::new();
    for a in &allocs {
        if s(a, "/status/phase") != "Active" {
            continue;
        }
        for p in a
            .pointer("/spec/resources")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if s(p, "/resource") != name {
                continue;
            }
            holders.push(format!(
                "{}/{}",
                s(a, "/metadata/namespace"),
                s(a, "/metadata/name")
            ));
            for (dim, q) in p
                .get("amount")
                .and_then(|m| m.as_object())
                .into_iter()
                .flatten()
            {
                let q: Quantity = serde_json::from_value(q.clone()).unwrap_or_default();
                let slot = used.entry(dim.clone()).or_default();
                *slot = slot.checked_add(q).unwrap_or(*slot);
            }
            for i in p
                .get("items")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
            {
                items_used.push(i.as_str().unwrap_or("").to_string());
            }
        }
    }
    if let Some(cap) = resource
        .pointer("/spec/capacity")
        .and_then(|c| c.as_object())
    {
        println!("Capacity:");
        for (dim, q) in cap {
            let cap: Quantity = serde_json::from_value(q.clone()).unwrap_or_default();
            let u = used.get(dim).copied().unwrap_or_default();
            println!(
                "  {dim:<10} {u} of {cap} allocated ({:.0}%)",
                100.0 * u.ratio(cap)
            );
        }
    } else {
        let total = resource
            .pointer("/spec/items")
            .and_then(|i| i.as_array())
            .map(|i| i.len().to_string())
            .unwrap_or_else(|| format!("cidr {}", s(resource, "/spec/cidr")));
        println!(
            "Items:        {total}; allocated: {}",
            if items_used.is_empty() {
                "none".to_string()
            } else {
                items_used.join(", ")
            }
        );
    }
    holders.dedup();
    println!(
        "Held by:      {}",
        if holders.is_empty() {
            "<nothing>".into()
        } else {
            holders.join(", ")
        }
    );
    Ok(())
}

async fn print_events(
    client: &Client,
    info: &KindInfo,
    ns: Option<&str>,
    object: &Value,
    now: Time,
) -> anyhow::Result<()> {
    let Some(ns) = ns else { return Ok(()) };
    let (events, _) = client.list(super::kind("events")?, Some(ns), None).await?;
    let uid = s(object, "/metadata/uid");
    let name = s(object, "/metadata/name");
    let mut mine: Vec<&Value> = events
        .iter()
        .filter(|e| {
            s(e, "/spec/involvedObject/kind") == info.kind
                && s(e, "/spec/involvedObject/name") == name
                && (uid.is_empty() || s(e, "/spec/involvedObject/uid") == uid)
        })
        .collect();
    mine.sort_by_key(|e| t(e, "/spec/lastTimestamp"));
    println!("Events:");
    if mine.is_empty() {
        println!("  <none>");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = mine
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(|e| {
            vec![
                s(e, "/spec/type").to_string(),
                s(e, "/spec/reason").to_string(),
                t(e, "/spec/lastTimestamp")
                    .map(|x| short_duration(x.millis_until(now)))
                    .unwrap_or_default(),
                s(e, "/spec/source").to_string(),
                s(e, "/spec/message").to_string(),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| std::iter::once(String::new()).chain(r).collect())
        .collect();
    output::print_rows(
        &["", "TYPE", "REASON", "AGE", "FROM", "MESSAGE"],
        &rows,
        true,
    );
    Ok(())
}
