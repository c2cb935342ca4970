//! Output formats: `table` (default), `wide`, `yaml`, `json`, with per-kind columns.

use infraos_api::{KindInfo, Time};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Wide,
    Yaml,
    Json,
}

pub fn now() -> Time {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Time::from_unix_millis(ms)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(|x| x.as_str()).unwrap_or("")
}

fn time_at(v: &Value, pointer: &str) -> Option<Time> {
    v.pointer(pointer)?.as_str()?.parse().ok()
}

/// `42s`, `5m`, `3h`, `2d`: how kubectl shows ages.
pub fn short_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn age(v: &Value, now: Time) -> String {
    time_at(v, "/metadata/creationTimestamp")
        .map(|t| short_duration(t.millis_until(now)))
        .unwrap_or_else(|| "-".into())
}

/// `in 59m`, or `expired 3s ago`.
pub fn countdown(expire: Option<Time>, now: Time) -> String {
    match expire {
        None => "-".into(),
        Some(t) => {
            let left = now.millis_until(t);
            if left >= 0 {
                format!("in {}", short_duration(left))
            } else {
                format!("expired {} ago", short_duration(-left))
            }
        }
    }
}

/// `k=v` pairs of a JSON object joined by `sep`, or `empty` when there are none.
pub fn key_values(v: Option<&Value>, sep: &str, empty: &str) -> String {
    v.and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join(sep)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| empty.into())
}

fn join_map(v: Option<&Value>) -> String {
    key_values(v, ",", "-")
}

/// `compute/cpu 4/10, gpu/count 2/8` from a Quota's status and limits.
fn quota_usage(v: &Value) -> String {
    let mut out = Vec::new();
    if let Some(Value::Object(limits)) = v.pointer("/spec/limits") {
        for (class, dims) in limits {
            let Value::Object(dims) = dims else { continue };
            for (dim, limit) in dims {
                let used = v
                    .pointer(&format!("/status/used/{class}/{dim}"))
                    .and_then(Value::as_str)
                    .unwrap_or("0");
                out.push(format!(
                    "{class}/{dim} {used}/{}",
                    limit.as_str().unwrap_or_default()
                ));
            }
        }
    }
    out.join(", ")
}

fn headers(info: &KindInfo, wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut h: Vec<&'static str> = Vec::new();
    if info.namespaced && all_namespaces {
        h.push("NAMESPACE");
    }
    h.push("NAME");
    h.extend(match info.kind {
        "ResourceClass" => vec!["KIND", "DIMENSIONS/ATTRIBUTES"],
        "Resource" => vec!["CLASS", "NODE", "CAPACITY"],
        "Claim" => vec!["PHASE", "NODE", "EXPIRES"],
        "Allocation" => vec!["PHASE", "NODE", "EPOCH", "EXPIRES"],
        "Node" => vec!["STATUS", "TIERS", "AGENT"],
        "Tenant" => vec!["DISPLAY NAME"],
        "Project" => vec!["TENANT"],
        "Event" => vec!["TYPE", "REASON", "OBJECT", "MESSAGE"],
        "Quota" => vec!["LEVEL", "SCOPE", "USED/LIMIT"],
        "PriorityClass" => vec!["VALUE", "PREEMPTION", "DEFAULT"],
        "Queue" => vec!["WEIGHT"],
        _ => vec![],
    });
    h.push("AGE");
    if wide {
        h.extend(match info.kind {
            "Claim" => vec!["REQUESTS", "MESSAGE"],
            "Allocation" => vec!["RESOURCES", "SCORE"],
            "Node" | "Resource" => vec!["LABELS"],
            _ => vec![],
        });
    }
    h
}

fn row(info: &KindInfo, v: &Value, wide: bool, all_namespaces: bool, now: Time) -> Vec<String> {
    let mut r = Vec::new();
    if info.namespaced && all_namespaces {
        r.push(str_at(v, "/metadata/namespace").to_string());
    }
    r.push(str_at(v, "/metadata/name").to_string());
    match info.kind {
        "ResourceClass" => {
            r.push(str_at(v, "/spec/kind").to_string());
            let dims: Vec<String> = v
                .pointer("/spec/dimensions")
                .and_then(|d| d.as_array())
                .map(|a| a.iter().map(|d| str_at(d, "/name").to_string()).collect())
                .unwrap_or_default();
            let attrs: Vec<String> = v
                .pointer("/spec/attributes")
                .and_then(|d| d.as_object())
                .map(|m| {
                    m.iter()
                        .map(|(k, t)| format!("{k}:{}", t.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            let all = [dims, attrs].concat();
            r.push(if all.is_empty() {
                "-".into()
            } else {
                all.join(",")
            });
        }
        "Resource" => {
            r.push(str_at(v, "/spec/class").to_string());
            r.push(
                Some(str_at(v, "/spec/node"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-")
                    .to_string(),
            );
            let capacity = if let Some(items) = v.pointer("/spec/items").and_then(|i| i.as_array())
            {
                format!("{} items", items.len())
            } else if let Some(cidr) = v.pointer("/spec/cidr").and_then(|c| c.as_str()) {
                format!("cidr {cidr}")
            } else {
                join_map(v.pointer("/spec/capacity"))
            };
            r.push(capacity);
        }
        "Claim" => {
            r.push(
                Some(str_at(v, "/status/phase"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("Pending")
                    .to_string(),
            );
            r.push(
                Some(str_at(v, "/status/node"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-")
                    .to_string(),
            );
            let phase = str_at(v, "/status/phase");
            r.push(if phase == "Allocated" {
                countdown(time_at(v, "/status/expireTime"), now)
            } else {
                "-".into()
            });
        }
        "Allocation" => {
            let phase = str_at(v, "/status/phase");
            r.push(phase.to_string());
            r.push(
                Some(str_at(v, "/spec/node"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-")
                    .to_string(),
            );
            r.push(
                v.pointer("/status/lease/fencingEpoch")
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
            r.push(if phase == "Active" {
                countdown(time_at(v, "/status/lease/expireTime"), now)
            } else {
                "-".into()
            });
        }
        "Node" => {
            let ready = !v
                .pointer("/status/conditions")
                .and_then(|c| c.as_array())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") != "True")
                });
            let mut status = if ready {
                "Ready".to_string()
            } else {
                "NotReady".to_string()
            };
            if v.pointer("/spec/unschedulable").and_then(|u| u.as_bool()) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            r.push(status);
            let tiers: Vec<&str> = v
                .pointer("/spec/tiers")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .collect();
            r.push(if tiers.is_empty() {
                "-".into()
            } else {
                tiers.join(",")
            });
            // Nodes declared by an operator have no agent.
            r.push(
                Some(str_at(v, "/status/agent/version"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-")
                    .to_string(),
            );
        }
        "Tenant" => r.push(
            Some(str_at(v, "/spec/displayName"))
                .filter(|s| !s.is_empty())
                .unwrap_or("-")
                .to_string(),
        ),
        "Project" => r.push(str_at(v, "/spec/tenant").to_string()),
        "Event" => {
            r.push(str_at(v, "/spec/type").to_string());
            r.push(str_at(v, "/spec/reason").to_string());
            r.push(format!(
                "{}/{}",
                str_at(v, "/spec/involvedObject/kind").to_lowercase(),
                str_at(v, "/spec/involvedObject/name")
            ));
            r.push(str_at(v, "/spec/message").to_string());
        }
        "Quota" => {
            let spec = v.get("spec");
            let has = |f: &str| spec.and_then(|s| s.get(f)).is_some_and(|x| !x.is_null());
            let level = if has("pool") {
                "pool"
            } else if has("project") {
                "project"
            } else {
                "tenant"
            };
            r.push(level.to_string());
            let owner = [("tenant", "/spec/tenant"), ("project", "/spec/project")]
                .iter()
                .find(|(_, p)| !str_at(v, p).is_empty())
                .map(|(k, p)| format!("{k}={}", str_at(v, p)));
            let pool = Some(str_at(v, "/spec/pool"))
                .filter(|p| !p.is_empty())
                .map(|p| format!("pool({p})"));
            r.push(
                [owner, pool]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            r.push(quota_usage(v));
        }
        "PriorityClass" => {
            r.push(
                v.pointer("/spec/value")
                    .map_or_else(String::new, Value::to_string),
            );
            r.push(
                Some(str_at(v, "/spec/preemptionPolicy"))
                    .filter(|p| !p.is_empty())
                    .unwrap_or("PreemptLowerPriority")
                    .to_string(),
            );
            let default = v.pointer("/spec/globalDefault").and_then(Value::as_bool);
            r.push(if default == Some(true) { "yes" } else { "-" }.into());
        }
        "Queue" => r.push(
            v.pointer("/spec/weight")
                .map_or("1".into(), Value::to_string),
        ),
        _ => {}
    }
    r.push(age(v, now));
    if wide {
        match info.kind {
            "Claim" => {
                let requests: Vec<String> = v
                    .pointer("/spec/requests")
                    .and_then(|r| r.as_array())
                    .map(|a| {
                        a.iter()
                            .map(|q| match q.get("count") {
                                Some(c) => format!("{}x{}", c, str_at(q, "/class")),
                                None => format!(
                                    "{}({})",
                                    str_at(q, "/class"),
                                    join_map(q.get("amount"))
                                ),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                r.push(requests.join(" "));
                r.push(
                    Some(str_at(v, "/status/message"))
                        .filter(|s| !s.is_empty())
                        .unwrap_or("-")
                        .to_string(),
                );
            }
            "Allocation" => {
                let parts: Vec<String> = v
                    .pointer("/spec/resources")
                    .and_then(|r| r.as_array())
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                let items = p.get("items").and_then(|i| i.as_array()).map(|i| {
                                    i.iter()
                                        .filter_map(|x| x.as_str())
                                        .collect::<Vec<_>>()
                                        .join("+")
                                });
                                match items {
                                    Some(items) if !items.is_empty() => {
                                        format!("{}[{items}]", str_at(p, "/resource"))
                                    }
                                    _ => format!(
                                        "{}({})",
                                        str_at(p, "/resource"),
                                        join_map(p.get("amount"))
                                    ),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                r.push(parts.join(" "));
                r.push(
                    v.pointer("/spec/score/total")
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                );
            }
            "Node" | "Resource" => r.push(join_map(v.pointer("/metadata/labels"))),
            _ => {}
        }
    }
    r
}

pub fn print_table(info: &KindInfo, items: &[Value], wide: bool, all_namespaces: bool) {
    let now = now();
    let header = headers(info, wide, all_namespaces);
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| row(info, v, wide, all_namespaces, now))
        .collect();
    print_rows(&header, &rows, true);
}

pub fn print_rows(header: &[&str], rows: &[Vec<String>], with_header: bool) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("   ")
    };
    if with_header {
        println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    }
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

/// One row without a header, for watch output.
pub fn print_row(info: &KindInfo, v: &Value, wide: bool, all_namespaces: bool, header: bool) {
    let h = headers(info, wide, all_namespaces);
    let r = row(info, v, wide, all_namespaces, now());
    print_rows(&h, &[r], header);
}

pub fn print_structured(value: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        _ => print!("{}", serde_norway::to_string(value)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_show_readiness_tiers_and_agent() {
        let info = infraos_api::object::kind_by_plural("nodes").unwrap();
        let node = serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"tiers": ["inventory", "execute"]},
            "status": {"agent": {"version": "0.1.0"},
                       "conditions": [{"type": "Ready", "status": "False"}]}
        });
        let now = Time::from_unix_millis(0);
        assert_eq!(
            headers(info, false, false),
            ["NAME", "STATUS", "TIERS", "AGENT", "AGE"]
        );
        let r = row(info, &node, false, false, now);
        assert_eq!(&r[..4], ["n1", "NotReady", "inventory,execute", "0.1.0"]);
        let declared = serde_json::json!({"metadata": {"name": "n2"}, "spec": {}});
        let r = row(info, &declared, false, false, now);
        assert_eq!(&r[..4], ["n2", "Ready", "-", "-"]);
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(short_duration(5_000), "5s");
        assert_eq!(short_duration(600_000), "10m");
        assert_eq!(short_duration(3 * 3_600_000), "3h");
        assert_eq!(short_duration(3 * 86_400_000), "3d");
        let now = Time::from_unix_millis(100_000);
        assert_eq!(
            countdown(Some(Time::from_unix_millis(160_000)), now),
            "in 60s"
        );
        assert_eq!(
            countdown(Some(Time::from_unix_millis(97_000)), now),
            "expired 3s ago"
        );
    }
}
