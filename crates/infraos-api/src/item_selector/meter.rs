//! The runtime bound on a selector's evaluation, behind the static one ([`super::cost`]).
//!
//! `cel` 0.15 has no cost accounting and no way to interrupt an evaluation, so the compiled
//! expression is instrumented instead: every comprehension's loop calls `@tick(x)`, which
//! returns `x` and counts one iteration on a per-thread meter. Past [`MAX_ITERATIONS`]
//! iterations, or past [`EVAL_DEADLINE`] of wall time (checked every [`CLOCK_EVERY`]
//! iterations), `@tick` fails and the evaluation ends with [`CelError::Exhausted`].
//!
//! Why loops are enough: without a comprehension every node is evaluated at most once and
//! each does work linear in values whose size the tree and the item limits bound; only
//! comprehensions multiply. The static estimate already bounds the iterations of an accepted
//! expression far below the meter's limit, so the meter only fires if the estimate were
//! wrong: it turns an estimator bug into a refused selector, not a spinning thread.
//!
//! The same rewrite turns `text.matches("p")` into `@matches(text, i)`, which runs the
//! selector's `i`-th pattern, compiled once when the selector was (the interpreter's own
//! `matches` compiles its pattern on every call: up to a millisecond for `\w+`).
//!
//! `@tick` and `@matches` cannot be written in CEL source (identifiers never start with `@`),
//! so only the rewrite calls them. Where the tick goes keeps the interpreter's fast paths (`AppendStep`
//! for `map`/`filter` needs a literal loop condition and a `[e]` append):
//!
//! ```text
//!   all/exists/exists_one:  loop_cond            →  @tick(loop_cond)
//!   filter (guarded):       g ? @r + [e] : @r    →  @tick(g) ? @r + [e] : @r
//!   map:                    @r + [e]             →  @r + [@tick(e)]
//!   over [] (optMap's bind): unchanged (no loop)
//! ```

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cel::ExecutionError;
use cel::common::ast::{CallExpr, ComprehensionExpr, EntryExpr, Expr, operators};
use cel::common::value::CowVal;
use cel::parser::Expression;

/// Most loop iterations one evaluation may run, all comprehensions together. An accepted
/// selector runs at most about a third of [`super::cost::MAX_COST`] of them (an iteration
/// costs at least three units), so this is a margin, not a limit anyone meets.
pub const MAX_ITERATIONS: u64 = super::cost::MAX_COST;
/// Longest wall time one evaluation may take: far above what an accepted selector takes (a
/// few milliseconds in a release build; a debug build is ~10× slower, hence its longer
/// deadline). A backstop, not a budget.
pub const EVAL_DEADLINE: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(2)
} else {
    Duration::from_millis(250)
};
/// Iterations between two reads of the clock.
const CLOCK_EVERY: u64 = 256;

/// The name of the instrumentation function.
pub(crate) const TICK: &str = "@tick";
/// The name of the precompiled `matches`.
const MATCHES: &str = "@matches";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exhaustion {
    Iterations,
    Deadline,
}

#[derive(Clone, Copy)]
struct Meter {
    iterations: u64,
    started: Instant,
    exhausted: Option<Exhaustion>,
}

thread_local! {
    static METER: Cell<Option<Meter>> = const { Cell::new(None) };
    /// The patterns of the selector being evaluated on this thread.
    static PATTERNS: RefCell<Option<Arc<[regex::Regex]>>> = const { RefCell::new(None) };
}

/// Runs one evaluation of a selector with these `patterns` under a fresh meter; says whether
/// the meter stopped it.
pub(crate) fn metered<T>(
    patterns: &Arc<[regex::Regex]>,
    evaluate: impl FnOnce() -> T,
) -> (T, Option<Exhaustion>) {
    let outer = METER.with(|m| {
        m.replace(Some(Meter {
            iterations: 0,
            started: Instant::now(),
            exhausted: None,
        }))
    });
    let outer_patterns =
        (!patterns.is_empty()).then(|| PATTERNS.with(|p| p.replace(Some(Arc::clone(patterns)))));
    let out = evaluate();
    if let Some(outer_patterns) = outer_patterns {
        PATTERNS.with(|p| p.replace(outer_patterns));
    }
    let meter = METER.with(|m| m.replace(outer));
    (out, meter.and_then(|m| m.exhausted))
}

/// `@matches(text, i)`: whether the current selector's `i`-th pattern matches `text`
/// anywhere, as `text.matches(pattern)` says.
fn matches<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    use cel::common::types::{CelBool, CelInt, CelString};
    let text = args.first().and_then(|a| a.downcast_ref::<CelString>());
    let index = args.get(1).and_then(|a| a.downcast_ref::<CelInt>());
    let (Some(text), Some(index)) = (text, index) else {
        let types = args
            .iter()
            .map(|a| a.get_type().name().to_owned())
            .collect();
        return Err(ExecutionError::no_such_overload("matches", types));
    };
    let index = usize::try_from(*index.inner()).unwrap_or(usize::MAX);
    let found = PATTERNS.with(|p| {
        p.borrow()
            .as_ref()
            .and_then(|patterns| patterns.get(index))
            .map(|re| re.is_match(text.inner()))
    });
    match found {
        Some(b) => Ok(CowVal::owned(CelBool::from(b))),
        None => Err(ExecutionError::function_error(
            "matches",
            "the selector's pattern is missing",
        )),
    }
}

/// `@tick(x)`: counts one iteration and returns `x`, or fails once the meter is spent.
fn tick<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let spent = METER.with(|cell| {
        let mut meter = cell.get()?;
        meter.iterations += 1;
        if meter.exhausted.is_none() {
            if meter.iterations > MAX_ITERATIONS {
                meter.exhausted = Some(Exhaustion::Iterations);
            } else if meter.iterations.is_multiple_of(CLOCK_EVERY)
                && meter.started.elapsed() > EVAL_DEADLINE
            {
                meter.exhausted = Some(Exhaustion::Deadline);
            }
        }
        cell.set(Some(meter));
        meter.exhausted
    });
    if spent.is_some() {
        return Err(ExecutionError::function_error(
            TICK,
            "the selector's evaluation ran out of its budget",
        ));
    }
    if args.is_empty() {
        return Err(ExecutionError::missing_argument_or_target());
    }
    Ok(args.remove(0))
}

/// Declares `@tick` and `@matches` in the environment selectors are evaluated in.
pub(crate) fn declare(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
    use cel::common::types::{DYN_TYPE, INT_TYPE, STRING_TYPE};
    env.add_overload(TICK, "tick_dyn", vec![DYN_TYPE], tick)?;
    env.add_overload(
        MATCHES,
        "matches_string_int",
        vec![STRING_TYPE, INT_TYPE],
        matches,
    )
}

/// The loop step of a `map` / `filter` comprehension as the interpreter recognises it
/// (cel's own `AppendStep`): `@r + [e]`, or `g ? @r + [e] : @r`, with a literal loop
/// condition, `@r` as the result and an empty list as the initial accumulator.
pub(crate) struct AppendStep<'e> {
    pub guard: Option<&'e Expression>,
    /// The `[e]` list appended on each iteration.
    pub items: &'e Expression,
}

impl<'e> AppendStep<'e> {
    pub(crate) fn of(c: &'e ComprehensionExpr) -> Option<Self> {
        let accu = c.accu_var.as_str();
        let is_accu = |e: &Expression| matches!(&e.expr, Expr::Ident(name) if name == accu);
        let items_of = |e: &'e Expression| match &e.expr {
            Expr::Call(call) if call.func_name == operators::ADD && call.target.is_none() => {
                match call.args.as_slice() {
                    [lhs, rhs] if is_accu(lhs) && matches!(rhs.expr, Expr::List(_)) => Some(rhs),
                    _ => None,
                }
            }
            _ => None,
        };
        let empty_init = matches!(&c.accu_init.expr, Expr::List(l) if l.elements.is_empty());
        if !is_accu(&c.result) || !matches!(c.loop_cond.expr, Expr::Literal(_)) || !empty_init {
            return None;
        }
        match &c.loop_step.expr {
            Expr::Call(call)
                if call.func_name == operators::CONDITIONAL && call.target.is_none() =>
            {
                match call.args.as_slice() {
                    [guard, step, otherwise] if is_accu(otherwise) => Some(AppendStep {
                        guard: Some(guard),
                        items: items_of(step)?,
                    }),
                    _ => None,
                }
            }
            _ => Some(AppendStep {
                guard: None,
                items: items_of(&c.loop_step)?,
            }),
        }
    }
}

/// Puts a `@tick` in every loop of `root` and has its `matches` calls run `patterns` (see
/// the module header). Recursion is bounded by [`super::cost::check_depth`], which callers
/// run first.
pub(crate) fn instrument(root: &mut Expression, patterns: &[String]) {
    let mut rewriter = Rewriter {
        next_id: max_id(root) + 1,
        patterns,
    };
    rewriter.rewrite(root);
}

fn max_id(expr: &Expression) -> u64 {
    let mut max = expr.id;
    super::cost::children(expr, &mut |c| max = max.max(max_id(c)));
    max
}

struct Rewriter<'p> {
    next_id: u64,
    patterns: &'p [String],
}

impl Rewriter<'_> {
    fn rewrite(&mut self, expr: &mut Expression) {
        match &mut expr.expr {
            Expr::Call(call) => {
                if let Some(t) = &mut call.target {
                    self.rewrite(t);
                }
                call.args.iter_mut().for_each(|a| self.rewrite(a));
                self.precompiled_matches(call);
            }
            Expr::Comprehension(c) => {
                for e in [
                    &mut c.iter_range,
                    &mut c.accu_init,
                    &mut c.loop_cond,
                    &mut c.loop_step,
                    &mut c.result,
                ] {
                    self.rewrite(e);
                }
                self.tick_loop(c);
            }
            Expr::List(l) => l.elements.iter_mut().for_each(|e| self.rewrite(e)),
            Expr::Map(m) => m
                .entries
                .iter_mut()
                .for_each(|e| self.rewrite_entry(&mut e.expr)),
            Expr::Struct(s) => s
                .entries
                .iter_mut()
                .for_each(|e| self.rewrite_entry(&mut e.expr)),
            Expr::Select(s) => self.rewrite(&mut s.operand),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn rewrite_entry(&mut self, e: &mut EntryExpr) {
        match e {
            EntryExpr::MapEntry(m) => {
                self.rewrite(&mut m.key);
                self.rewrite(&mut m.value);
            }
            EntryExpr::StructField(s) => self.rewrite(&mut s.value),
        }
    }

    /// `text.matches("p")` or `matches(text, "p")` → `@matches(text, i)`, `p` being the
    /// `i`-th pattern. A call the estimator let through always has its pattern listed.
    fn precompiled_matches(&mut self, call: &mut CallExpr) {
        use cel::common::ast::LiteralValue;
        if call.func_name != "matches" {
            return;
        }
        let pattern = match call.args.last().map(|p| &p.expr) {
            Some(Expr::Literal(LiteralValue::String(p))) => p.inner().to_string(),
            _ => return,
        };
        let Some(index) = self.patterns.iter().position(|p| *p == pattern) else {
            return;
        };
        let text = match (call.target.take(), call.args.len()) {
            (Some(target), 1) => *target,
            (None, 2) => call.args.remove(0),
            (target, _) => {
                call.target = target;
                return;
            }
        };
        let index = Expression {
            id: self.id(),
            expr: Expr::Literal(LiteralValue::Int((index as i64).into())),
        };
        call.func_name = MATCHES.to_string();
        call.args = vec![text, index];
    }

    /// Wraps the expression evaluated once per iteration of `c` in `@tick`.
    fn tick_loop(&mut self, c: &mut ComprehensionExpr) {
        if matches!(&c.iter_range.expr, Expr::List(l) if l.elements.is_empty()) {
            return;
        }
        let append = AppendStep::of(c).map(|a| a.guard.is_some());
        let target: Option<&mut Expression> = match append {
            Some(true) => match &mut c.loop_step.expr {
                Expr::Call(call) => call.args.first_mut(),
                _ => None,
            },
            Some(false) => match &mut c.loop_step.expr {
                Expr::Call(call) => match call.args.get_mut(1).map(|a| &mut a.expr) {
                    Some(Expr::List(list)) => list.elements.first_mut(),
                    _ => None,
                },
                _ => None,
            },
            None => Some(&mut c.loop_cond),
        };
        // An append of `[]` has nothing to wrap: wrap the whole step, which makes it the
        // general loop (slower, still correct and counted).
        let target = match target {
            Some(t) => t,
            None => &mut c.loop_step,
        };
        let id = self.id();
        let inner = std::mem::take(target);
        *target = Expression {
            id,
            expr: Expr::Call(CallExpr {
                func_name: TICK.to_string(),
                target: None,
                args: vec![inner],
            }),
        };
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize) -> String {
        let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("[{}]", items.join(","))
    }

    fn env() -> Arc<cel::Env> {
        let mut env = cel::Env::stdlib();
        declare(&mut env).unwrap();
        Arc::new(env)
    }

    /// Parses and instruments without the static check: what the meter alone must stop.
    fn unchecked(source: &str) -> Expression {
        let mut expr = env().parser().parse(source).unwrap();
        instrument(&mut expr, &[]);
        expr
    }

    #[test]
    fn the_meter_stops_a_loop_the_estimate_would_have_refused() {
        // 10⁶ iterations: a second or more of interpreter time, stopped after 10⁵.
        let source = format!(
            "{l}.exists(a, {l}.exists(b, {l}.exists(c, false)))",
            l = list(100)
        );
        let expr = unchecked(&source);
        let context = cel::Context::with_env(env());
        let started = Instant::now();
        let (result, exhausted) = metered(&Arc::from(Vec::new()), || {
            cel::Value::resolve(&expr, &context)
        });
        assert!(result.is_err(), "{result:?}");
        assert_eq!(exhausted, Some(Exhaustion::Iterations));
        assert!(
            started.elapsed() < EVAL_DEADLINE * 2,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn ticks_keep_results_and_the_fast_paths() {
        let context = cel::Context::with_env(env());
        for (source, expected) in [
            ("[1, 2, 3].exists(x, x > 2)", cel::Value::Bool(true)),
            ("[1, 2, 3].all(x, x > 2)", cel::Value::Bool(false)),
            ("[1, 2, 3].exists_one(x, x > 2)", cel::Value::Bool(true)),
            (
                "[1, 2, 3].map(x, x * 2) == [2, 4, 6]",
                cel::Value::Bool(true),
            ),
            (
                "[1, 2, 3].filter(x, x > 1) == [2, 3]",
                cel::Value::Bool(true),
            ),
            (
                "[1, 2, 3].map(x, x > 1, x * 10) == [20, 30]",
                cel::Value::Bool(true),
            ),
            (
                "optional.of(2).optMap(x, x + 1) == optional.of(3)",
                cel::Value::Bool(true),
            ),
        ] {
            let expr = unchecked(source);
            let (result, exhausted) = metered(&Arc::from(Vec::new()), || {
                cel::Value::resolve(&expr, &context)
            });
            assert_eq!(result, Ok(expected), "{source}");
            assert_eq!(exhausted, None, "{source}");
        }
        // The rewrite leaves map and filter in the shape the interpreter appends in place.
        let mut expr = env().parser().parse("[1, 2].map(x, x)").unwrap();
        instrument(&mut expr, &[]);
        let Expr::Comprehension(c) = &expr.expr else {
            panic!("{expr:?}")
        };
        assert!(AppendStep::of(c).is_some());
    }

    #[test]
    fn precompiled_matches_agrees_with_the_interpreters() {
        let patterns = vec!["^gpu[0-9]+$".to_string(), "a|b".to_string()];
        let compiled: Arc<[regex::Regex]> = patterns
            .iter()
            .map(|p| regex::Regex::new(p).unwrap())
            .collect();
        let context = cel::Context::with_env(env());
        for (source, expected) in [
            ("'gpu12'.matches('^gpu[0-9]+$')", true),
            ("'xgpu12'.matches('^gpu[0-9]+$')", false),
            ("matches('cab', 'a|b')", true),
            ("matches('xyz', 'a|b')", false),
        ] {
            let plain = env().parser().parse(source).unwrap();
            let original = cel::Value::resolve(&plain, &context);
            let mut expr = plain.clone();
            instrument(&mut expr, &patterns);
            assert!(
                format!("{expr:?}").contains(MATCHES),
                "{source} not rewritten"
            );
            let (result, _) = metered(&compiled, || cel::Value::resolve(&expr, &context));
            assert_eq!(result, Ok(cel::Value::Bool(expected)), "{source}");
            assert_eq!(original, result, "{source}");
        }
    }
}
