//! Property: any selector within the size limits is either refused when compiled, or
//! evaluates on the largest items the limits allow within the cost budget's time and without
//! the runtime meter firing (which would mean the static estimate was wrong). Expressions are
//! generated as trees (nested comprehensions over literal lists, over the attributes, string
//! functions, regexes, list and map literals, concatenations) and rendered with their loop
//! variables in scope, so most of them compile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// How long one evaluation of an accepted selector may take here. The budget is sized for
/// a few milliseconds in a release build; a debug build is ~10× slower, and the test
/// machine is shared.
const TIME_BOUND: Duration = if cfg!(debug_assertions) {
    Duration::from_millis(500)
} else {
    Duration::from_millis(50)
};

#[derive(Clone, Debug)]
enum Node {
    Int(i64),
    Str(String),
    Name,
    Attr(u8),
    Var(u8),
    List(usize),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Eq(Box<Node>, Box<Node>),
    Lt(Box<Node>, Box<Node>),
    Add(Box<Node>, Box<Node>),
    Size(Box<Node>),
    Contains(Box<Node>, Box<Node>),
    StartsWith(Box<Node>, Box<Node>),
    Matches(Box<Node>, u8),
    In(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Index(Box<Node>, Box<Node>),
    MapLit(Vec<(Node, Node)>),
    ListOf(Vec<Node>),
    /// `range.<macro>(v, body)`, the macro by index: exists, all, exists_one, map, filter.
    Loop(u8, Box<Node>, Box<Node>),
    AttrsLoop(u8, Box<Node>),
}

const PATTERNS: &[&str] = &["^gpu[0-9]+$", "H1.0", "(a|b)*c", "^[a-z]{1,20}$", "\\\\w+"];
const MACROS: &[&str] = &["exists", "all", "exists_one", "map", "filter"];

fn leaf() -> impl Strategy<Value = Node> {
    prop_oneof![
        (-5i64..200).prop_map(Node::Int),
        "[a-z]{0,12}".prop_map(Node::Str),
        Just(Node::Name),
        (0u8..34).prop_map(Node::Attr),
        (0u8..4).prop_map(Node::Var),
        (0usize..150).prop_map(Node::List),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    leaf().prop_recursive(7, 96, 4, |inner| {
        let boxed = inner.clone();
        let b = move || boxed.clone().prop_map(Box::new);
        prop_oneof![
            1 => b().prop_map(Node::Not),
            1 => (b(), b()).prop_map(|(x, y)| Node::And(x, y)),
            1 => (b(), b()).prop_map(|(x, y)| Node::Or(x, y)),
            1 => (b(), b()).prop_map(|(x, y)| Node::Eq(x, y)),
            1 => (b(), b()).prop_map(|(x, y)| Node::Lt(x, y)),
            1 => (b(), b()).prop_map(|(x, y)| Node::Add(x, y)),
            1 => b().prop_map(Node::Size),
            1 => (b(), b()).prop_map(|(x, y)| Node::Contains(x, y)),
            1 => (b(), b()).prop_map(|(x, y)| Node::StartsWith(x, y)),
            1 => (b(), 0u8..5).prop_map(|(x, p)| Node::Matches(x, p)),
            1 => (b(), b()).prop_map(|(x, y)| Node::In(x, y)),
            1 => (b(), b(), b()).prop_map(|(x, y, z)| Node::Cond(x, y, z)),
            1 => (b(), b()).prop_map(|(x, y)| Node::Index(x, y)),
            1 => proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Node::MapLit),
            1 => proptest::collection::vec(inner.clone(), 0..4).prop_map(Node::ListOf),
            1 => (0u8..5, b(), b()).prop_map(|(m, r, x)| Node::Loop(m, r, x)),
            2 => (0u8..5, b()).prop_map(|(m, x)| Node::AttrsLoop(m, x)),
            4 => (0u8..5, (1usize..120).prop_map(|n| Box::new(Node::List(n))), b())
                .prop_map(|(m, r, x)| Node::Loop(m, r, x)),
        ]
    })
}

/// Renders `node` with `bound` loop variables (`v0`…) in scope.
fn render(node: &Node, bound: u8, out: &mut String) {
    use std::fmt::Write;
    let two = |op: &str, x: &Node, y: &Node, out: &mut String| {
        out.push('(');
        render(x, bound, out);
        out.push_str(op);
        render(y, bound, out);
        out.push(')');
    };
    match node {
        Node::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Node::Str(s) => {
            let _ = write!(out, "{s:?}");
        }
        Node::Name => out.push_str("item.name"),
        Node::Attr(i) => {
            let _ = write!(out, "item.attributes.a{i:02}");
        }
        Node::Var(i) if bound > 0 => {
            let _ = write!(out, "v{}", i % bound);
        }
        Node::Var(_) => out.push_str("item.name"),
        Node::List(n) => {
            let items: Vec<String> = (0..*n).map(|i| i.to_string()).collect();
            let _ = write!(out, "[{}]", items.join(","));
        }
        Node::Not(x) => {
            out.push_str("!(");
            render(x, bound, out);
            out.push(')');
        }
        Node::And(x, y) => two(" && ", x, y, out),
        Node::Or(x, y) => two(" || ", x, y, out),
        Node::Eq(x, y) => two(" == ", x, y, out),
        Node::Lt(x, y) => two(" < ", x, y, out),
        Node::Add(x, y) => two(" + ", x, y, out),
        Node::In(x, y) => two(" in ", x, y, out),
        Node::Size(x) => {
            out.push_str("size(");
            render(x, bound, out);
            out.push(')');
        }
        Node::Contains(x, y) | Node::StartsWith(x, y) => {
            out.push('(');
            render(x, bound, out);
            out.push_str(if matches!(node, Node::Contains(..)) {
                ").contains("
            } else {
                ").startsWith("
            });
            render(y, bound, out);
            out.push(')');
        }
        Node::Matches(x, p) => {
            out.push('(');
            render(x, bound, out);
            let _ = write!(
                out,
                ").matches(\"{}\")",
                PATTERNS[*p as usize % PATTERNS.len()]
            );
        }
        Node::Cond(c, x, y) => {
            out.push('(');
            render(c, bound, out);
            out.push_str(" ? ");
            render(x, bound, out);
            out.push_str(" : ");
            render(y, bound, out);
            out.push(')');
        }
        Node::Index(x, i) => {
            out.push('(');
            render(x, bound, out);
            out.push_str(")[");
            render(i, bound, out);
            out.push(']');
        }
        Node::MapLit(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(k, bound, out);
                out.push_str(": ");
                render(v, bound, out);
            }
            out.push('}');
        }
        Node::ListOf(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(x, bound, out);
            }
            out.push(']');
        }
        Node::Loop(m, range, body) => {
            out.push('(');
            render(range, bound, out);
            let _ = write!(out, ").{}(v{bound}, ", MACROS[*m as usize % MACROS.len()]);
            render(body, bound + 1, out);
            out.push(')');
        }
        Node::AttrsLoop(m, body) => {
            let _ = write!(
                out,
                "item.attributes.{}(v{bound}, ",
                MACROS[*m as usize % MACROS.len()]
            );
            render(body, bound + 1, out);
            out.push(')');
        }
    }
}

/// The largest item the limits allow, and a small one.
fn samples() -> [Item; 2] {
    let big: BTreeMap<String, AttributeValue> = (0..MAX_ITEM_ATTRIBUTES)
        .map(|i| {
            let name = format!("a{i:02}");
            let value = match i % 3 {
                0 => AttributeValue::String(format!("{name}{}", "x".repeat(200))),
                1 => AttributeValue::Int(i as i64),
                _ => AttributeValue::Bool(true),
            };
            (name, value)
        })
        .collect();
    let small = [
        ("a00".to_string(), AttributeValue::String("H100".into())),
        ("a01".to_string(), AttributeValue::Int(80)),
    ]
    .into_iter()
    .collect();
    [
        Item {
            name: "g".repeat(253),
            attributes: big,
        },
        Item {
            name: "gpu0".into(),
            attributes: small,
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn accepted_selectors_evaluate_within_the_budget(tree in node()) {
        let mut source = String::new();
        render(&tree, 0, &mut source);
        let Ok(selector) = ItemSelector::compile(&source) else {
            return Ok(());
        };
        prop_assert!(selector.cost() <= MAX_COST);
        for item in samples() {
            let started = Instant::now();
            let outcome = selector.matches(&item);
            let took = started.elapsed();
            prop_assert!(
                !matches!(outcome, Err(CelError::Exhausted)),
                "the meter stopped an accepted selector (cost {}): {source}", selector.cost()
            );
            prop_assert!(
                took < TIME_BOUND,
                "{took:?} for cost {}: {source}", selector.cost()
            );
        }
    }
}

/// The generator reaches what the property is about: costly trees the estimate refuses and
/// nested loops it accepts.
#[test]
fn the_generator_covers_refusals_and_loops() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut refused, mut looping) = (0, 0);
    for _ in 0..400 {
        let tree = node().new_tree(&mut runner).unwrap().current();
        let mut source = String::new();
        render(&tree, 0, &mut source);
        match ItemSelector::compile(&source) {
            Err(CelError::TooCostly { .. } | CelError::TooNested { .. }) => refused += 1,
            Ok(s) if source.contains("(v1, ") && s.cost() > 1_000 => looping += 1,
            _ => {}
        }
    }
    assert!(refused > 5, "{refused} refused");
    assert!(looping > 5, "{looping} accepted nested loops");
}
