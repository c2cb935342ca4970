//! The static cost of a selector: an upper bound on the work one evaluation can do, computed
//! from the parsed expression before it is accepted, as Kubernetes does for CEL (cel-go's
//! `checker.Cost`, the per-expression limit of ValidatingAdmissionPolicy and DRA selectors).
//!
//! A unit is about one step of the interpreter: visiting a node, comparing two scalars, or
//! touching 8 bytes of a string. The estimate walks the tree once and keeps, for each node,
//! its worst-case cost and an upper bound on the size of the value it yields, so that what a
//! comprehension ranges over is known:
//!
//! ```text
//!   range.exists(x, body)  ──►  cost(range) + cost(init) + |range| × (cost(cond) + cost(step))
//!                                + cost(result)
//!   |[a, b, c]| = 3          literal lists and maps: their length
//!   |item.attributes| ≤ 32   the attribute limits every item is held to (MAX_ITEM_ATTRIBUTES)
//!   |item.name| ≤ 253, |attribute value| ≤ 256 bytes: string functions are linear in these
//! ```
//!
//! So `[0,…,99].exists(a, [0,…,99].exists(b, …))` costs 100 × 100 × (its body) and five such
//! levels cost ~10¹⁰: refused, where the interpreter would spin for hours. The bound is sound
//! for the language `cel` 0.15 accepts with the standard library and macros (no chrono): every
//! function it has is linear in its arguments except `matches`, which compiles its pattern on
//! every call; so a pattern must be a literal that compiles within [`REGEX_SIZE_LIMIT`], and is
//! compiled once, here ([`super::meter`] runs it). Unknown functions and variables are refused.

use cel::common::ast::{ComprehensionExpr, EntryExpr, Expr, LiteralValue, operators};
use cel::parser::Expression;

use super::{CelError, MAX_ATTRIBUTE_KEY_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_ITEM_ATTRIBUTES};

/// Most cost units one selector may be estimated at. Kubernetes allows 1,000,000 per DRA
/// selector with cel-go; this interpreter is slower per unit, so the budget is smaller, chosen
/// so that the worst accepted selector evaluates in a few milliseconds (docs/security.md).
pub const MAX_COST: u64 = 100_000;
/// Deepest expression tree accepted: the parser, the estimator and the interpreter all
/// recurse over it, so an expression like `!!!!…!true` must not reach them unbounded.
pub const MAX_DEPTH: usize = 64;
/// Most comprehensions (`all`, `exists`, `exists_one`, `map`, `filter`) nested in each other.
pub const MAX_COMPREHENSION_NESTING: usize = 3;
/// Largest compiled program a `matches` pattern may have, in bytes. Compiling is linear in
/// it (~0.5 ms for `\w+`, which needs 50 KB: Unicode classes are large), and it is done
/// once per selector: the interpreter's own `matches` would compile on every call.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// What building one element of a list or map costs beyond evaluating it (a boxed value),
/// and one loop iteration beyond its condition and step (a scope, the variable's copy):
/// measured against the interpreter, these keep a unit near 50–100 ns in a release build.
const ELEMENT_COST: u64 = 2;
const ITERATION_COST: u64 = 4;
/// Bytes a value's element counts for in `total` (copying one is a boxed clone).
const ELEMENT_BYTES: u64 = 16;
/// Longest item name (Resource validation).
const MAX_ITEM_NAME_LEN: u64 = 253;
/// Length of the longest string `string(x)` of a scalar makes (a double, a uint).
const MAX_SCALAR_STRING_LEN: u64 = 32;

/// An upper bound on the size of a value: `len` elements (or bytes of a string), `inner` the
/// largest `len` of anything nested in it, `total` the elements and bytes of the whole tree
/// (what a deep comparison or a copy touches), `each` the largest `total` of one element.
/// Scalars are all zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Size {
    pub len: u64,
    pub inner: u64,
    pub total: u64,
    pub each: u64,
}

impl Size {
    const SCALAR: Size = Size {
        len: 0,
        inner: 0,
        total: 0,
        each: 0,
    };

    const fn string(len: u64) -> Size {
        Size {
            len,
            inner: 0,
            total: len,
            each: 0,
        }
    }

    /// What an element (or a map key or value) of this value can be; deeper levels are
    /// bounded by the element's own total.
    fn element(self) -> Size {
        Size {
            len: self.inner,
            inner: self.inner,
            total: self.each,
            each: self.each,
        }
    }

    /// Either of two values.
    fn join(self, other: Size) -> Size {
        Size {
            len: self.len.max(other.len),
            inner: self.inner.max(other.inner),
            total: self.total.max(other.total),
            each: self.each.max(other.each),
        }
    }

    /// A container of these elements.
    fn containing(elements: &[Size]) -> Size {
        Size {
            len: elements.len() as u64,
            inner: elements
                .iter()
                .map(|e| e.len.max(e.inner))
                .max()
                .unwrap_or(0),
            total: elements.iter().fold(
                (elements.len() as u64).saturating_mul(ELEMENT_BYTES),
                |t, e| t.saturating_add(e.total),
            ),
            each: elements.iter().map(|e| e.total).max().unwrap_or(0),
        }
    }

    /// Two lists or strings concatenated.
    fn concat(self, other: Size) -> Size {
        Size {
            len: self.len.saturating_add(other.len),
            inner: self.inner.max(other.inner),
            total: self.total.saturating_add(other.total),
            each: self.each.max(other.each),
        }
    }
}

/// What a name in scope stands for: the item and its attribute map are known precisely (their
/// fields have their own bounds); anything else only by its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Item,
    Attributes,
    Sized(Size),
}

const ATTRIBUTE_KEY: Size = Size::string(MAX_ATTRIBUTE_KEY_LEN as u64);
const ATTRIBUTE_VALUE: Size = Size::string(MAX_ATTRIBUTE_VALUE_LEN as u64);

impl Shape {
    fn size(self) -> Size {
        match self {
            Shape::Item => {
                let attributes = Self::Attributes.size();
                Size {
                    len: 2,
                    inner: MAX_ITEM_NAME_LEN.max(attributes.len).max(attributes.inner),
                    total: MAX_ITEM_NAME_LEN + attributes.total + 4 * ELEMENT_BYTES,
                    each: attributes.total,
                }
            }
            Shape::Attributes => Size {
                len: MAX_ITEM_ATTRIBUTES as u64,
                inner: ATTRIBUTE_KEY.len.max(ATTRIBUTE_VALUE.len),
                total: MAX_ITEM_ATTRIBUTES as u64
                    * (2 * ELEMENT_BYTES + ATTRIBUTE_KEY.total + ATTRIBUTE_VALUE.total),
                each: ATTRIBUTE_KEY.total.max(ATTRIBUTE_VALUE.total),
            },
            Shape::Sized(size) => size,
        }
    }

    /// `self.field` or `self["field"]`.
    fn field(self, field: Option<&str>) -> Shape {
        match (self, field) {
            (Shape::Item, Some("name")) => Shape::Sized(Size::string(MAX_ITEM_NAME_LEN)),
            (Shape::Item, Some("attributes")) => Shape::Attributes,
            (Shape::Attributes, _) => Shape::Sized(ATTRIBUTE_VALUE),
            (shape, _) => Shape::Sized(shape.size().element()),
        }
    }

    /// What iterating over `self` binds the loop variable to: a map's keys, a list's elements.
    fn iterated(self) -> Shape {
        match self {
            Shape::Item | Shape::Attributes => Shape::Sized(ATTRIBUTE_KEY),
            Shape::Sized(size) => Shape::Sized(size.element()),
        }
    }
}

/// The estimate of one subexpression.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    cost: u64,
    shape: Shape,
}

impl Estimate {
    fn scalar(cost: u64) -> Estimate {
        Estimate {
            cost,
            shape: Shape::Sized(Size::SCALAR),
        }
    }

    fn size(&self) -> Size {
        self.shape.size()
    }
}

/// Compiles a `matches` pattern as the interpreter would (`Regex::new`: unanchored, default
/// flags), within [`REGEX_SIZE_LIMIT`].
pub(crate) fn compile_pattern(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Units for touching `bytes` bytes (or elements) once.
fn linear(bytes: u64) -> u64 {
    bytes / 8
}

/// Refuses trees deeper than [`MAX_DEPTH`] without recursing, so that nothing recursive
/// (the estimator, the interpreter, the rewrite) ever sees one.
pub(crate) fn check_depth(root: &Expression) -> Result<(), CelError> {
    let mut stack: Vec<(&Expression, usize)> = vec![(root, 1)];
    while let Some((expr, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(CelError::TooDeep { limit: MAX_DEPTH });
        }
        children(expr, &mut |child| stack.push((child, depth + 1)));
    }
    Ok(())
}

/// Calls `f` on each direct child of `expr`.
pub(crate) fn children<'e>(expr: &'e Expression, f: &mut dyn FnMut(&'e Expression)) {
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                f(target);
            }
            call.args.iter().for_each(&mut *f);
        }
        Expr::Comprehension(c) => {
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                f(e);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(&mut *f),
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(e) => {
                        f(&e.key);
                        f(&e.value);
                    }
                    EntryExpr::StructField(field) => f(&field.value),
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(e) => {
                        f(&e.key);
                        f(&e.value);
                    }
                    EntryExpr::StructField(field) => f(&field.value),
                }
            }
        }
        Expr::Select(select) => f(&select.operand),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// What the estimate found: the cost, and the `matches` patterns compiled while checking
/// them, which the evaluation then uses instead of compiling them on every call.
pub(crate) struct Estimated {
    pub cost: u64,
    pub patterns: Vec<(String, regex::Regex)>,
}

/// The worst-case cost of evaluating `expr` on any item, or why it is refused. Call
/// [`check_depth`] first: this recursion is bounded by it.
pub(crate) fn estimate(expr: &Expression) -> Result<Estimated, CelError> {
    let mut estimator = Estimator {
        scope: vec![("item".to_string(), Shape::Item)],
        nesting: 0,
        patterns: Vec::new(),
    };
    let cost = estimator.expr(expr)?.cost;
    if cost > MAX_COST {
        return Err(CelError::TooCostly {
            cost,
            limit: MAX_COST,
        });
    }
    Ok(Estimated {
        cost,
        patterns: estimator.patterns,
    })
}

/// Names that are not variables but types (`type(x) == int`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "optional_type",
    "string",
    "type",
    "uint",
];

struct Estimator {
    /// Names in scope, innermost last: `item`, then loop variables and accumulators.
    scope: Vec<(String, Shape)>,
    /// Comprehensions around the node being estimated.
    nesting: usize,
    /// `matches` patterns, compiled once to check them.
    patterns: Vec<(String, regex::Regex)>,
}

impl Estimator {
    fn lookup(&self, name: &str) -> Result<Shape, CelError> {
        match self.scope.iter().rev().find(|(n, _)| n == name) {
            Some((_, shape)) => Ok(*shape),
            None if TYPE_NAMES.contains(&name) => Ok(Shape::Sized(Size::SCALAR)),
            None => Err(CelError::UnknownVariable(crate::text::bound_owned(
                name.to_string(),
                crate::text::ERROR_STRING_MAX,
            ))),
        }
    }

    /// Whether `name` is a variable bound by a comprehension (not the item).
    fn bound(&self, name: &str) -> bool {
        self.scope.iter().skip(1).any(|(n, _)| n == name)
    }

    /// A `matches` pattern must be a literal that compiles within [`REGEX_SIZE_LIMIT`]; it is
    /// compiled here once, and the evaluation runs the compiled one ([`super::meter`]).
    fn check_pattern(&mut self, pattern: Option<&Expression>) -> Result<(), CelError> {
        let Some(Expr::Literal(LiteralValue::String(pattern))) = pattern.map(|p| &p.expr) else {
            return Err(CelError::Unsupported(
                "matches() with a pattern that is not a string literal".into(),
            ));
        };
        let pattern = pattern.inner();
        if self.patterns.iter().any(|(p, _)| p == pattern) {
            return Ok(());
        }
        let regex = compile_pattern(pattern).map_err(|e| {
            CelError::Unsupported(format!(
                "matches() pattern: {}",
                crate::text::bounded(&e.to_string(), crate::text::ERROR_STRING_MAX)
            ))
        })?;
        self.patterns.push((pattern.to_string(), regex));
        Ok(())
    }

    fn with<T>(
        &mut self,
        bindings: &[(&str, Shape)],
        f: impl FnOnce(&mut Self) -> Result<T, CelError>,
    ) -> Result<T, CelError> {
        let before = self.scope.len();
        self.scope
            .extend(bindings.iter().map(|(n, s)| (n.to_string(), *s)));
        let out = f(self);
        self.scope.truncate(before);
        out
    }

    fn expr(&mut self, expr: &Expression) -> Result<Estimate, CelError> {
        match &expr.expr {
            Expr::Literal(literal) => Ok(match literal {
                LiteralValue::String(s) => Estimate {
                    cost: 1,
                    shape: Shape::Sized(Size::string(s.inner().len() as u64)),
                },
                LiteralValue::Bytes(b) => Estimate {
                    cost: 1,
                    shape: Shape::Sized(Size::string(b.inner().len() as u64)),
                },
                _ => Estimate::scalar(1),
            }),
            Expr::Ident(name) => Ok(Estimate {
                cost: 1,
                shape: self.lookup(name)?,
            }),
            Expr::Select(select) => {
                let operand = self.expr(&select.operand)?;
                Ok(Estimate {
                    cost: operand.cost.saturating_add(1),
                    shape: if select.test {
                        Shape::Sized(Size::SCALAR)
                    } else {
                        operand.shape.field(Some(&select.field))
                    },
                })
            }
            Expr::List(list) => {
                let mut cost = 1 + ELEMENT_COST.saturating_mul(list.elements.len() as u64);
                let mut sizes = Vec::with_capacity(list.elements.len());
                for e in &list.elements {
                    let e = self.expr(e)?;
                    cost = cost.saturating_add(e.cost);
                    sizes.push(e.size());
                }
                Ok(Estimate {
                    cost,
                    shape: Shape::Sized(Size::containing(&sizes)),
                })
            }
            Expr::Map(map) => self.entries(&map.entries),
            Expr::Struct(s) => self.entries(&s.entries),
            Expr::Call(call) => {
                // `optional.of(x)` is a call of `of` on the name `optional`, resolved as the
                // qualified function when the interpreter runs it.
                let qualified = match call.target.as_deref().map(|t| &t.expr) {
                    Some(Expr::Ident(ns)) if ns == "optional" && !self.bound(ns) => {
                        Some(format!("optional.{}", call.func_name))
                    }
                    _ => None,
                };
                let operands: Vec<&Expression> = match qualified {
                    Some(_) => call.args.iter().collect(),
                    None => call
                        .target
                        .as_deref()
                        .into_iter()
                        .chain(&call.args)
                        .collect(),
                };
                let mut args = Vec::with_capacity(operands.len());
                for a in operands {
                    args.push(self.expr(a)?);
                }
                let name = qualified.as_deref().unwrap_or(&call.func_name);
                if name == "matches" {
                    self.check_pattern(call.args.last())?;
                }
                call_cost(name, &args)
            }
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Unspecified => Ok(Estimate::scalar(1)),
        }
    }

    fn entries(
        &mut self,
        entries: &[cel::common::ast::IdedEntryExpr],
    ) -> Result<Estimate, CelError> {
        let mut cost = 1 + 2 * ELEMENT_COST.saturating_mul(entries.len() as u64);
        let mut sizes = Vec::with_capacity(entries.len() * 2);
        for entry in entries {
            match &entry.expr {
                EntryExpr::MapEntry(e) => {
                    let k = self.expr(&e.key)?;
                    let v = self.expr(&e.value)?;
                    cost = cost.saturating_add(k.cost).saturating_add(v.cost);
                    sizes.push(k.size());
                    sizes.push(v.size());
                }
                EntryExpr::StructField(field) => {
                    let v = self.expr(&field.value)?;
                    cost = cost.saturating_add(v.cost);
                    sizes.push(v.size());
                }
            }
        }
        let mut size = Size::containing(&sizes);
        size.len = entries.len() as u64;
        Ok(Estimate {
            cost,
            shape: Shape::Sized(size),
        })
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Result<Estimate, CelError> {
        let range = self.expr(&c.iter_range)?;
        let init = self.expr(&c.accu_init)?;
        let n = range.size().len;
        // `optMap`'s binding is a comprehension over nothing: not a loop.
        let is_loop = !matches!(&c.iter_range.expr, Expr::List(l) if l.elements.is_empty());
        if is_loop {
            self.nesting += 1;
            if self.nesting > MAX_COMPREHENSION_NESTING {
                return Err(CelError::TooNested {
                    limit: MAX_COMPREHENSION_NESTING,
                });
            }
        }
        let element = range.shape.iterated();
        let mut vars = vec![(c.iter_var.as_str(), element)];
        if let Some(v2) = &c.iter_var2 {
            vars.push((v2.as_str(), element));
        }
        let out = self.with(&vars, |this| this.fold(c, range, init, n));
        if is_loop {
            self.nesting -= 1;
        }
        out
    }

    /// The loop of a comprehension with its variables bound: `n` iterations.
    fn fold(
        &mut self,
        c: &ComprehensionExpr,
        range: Estimate,
        init: Estimate,
        n: u64,
    ) -> Result<Estimate, CelError> {
        let setup = range.cost.saturating_add(init.cost);
        if n == 0 {
            // Never loops (`optMap`'s binding): only the result, with the accumulator bound.
            let result = self.with(&[(c.accu_var.as_str(), init.shape)], |this| {
                this.expr(&c.result)
            })?;
            return Ok(Estimate {
                cost: setup.saturating_add(result.cost),
                shape: result.shape,
            });
        }
        if let Some(append) = super::meter::AppendStep::of(c) {
            // `map` and `filter`: the interpreter appends to one list in place.
            let guard = match append.guard {
                Some(g) => self.expr(g)?.cost,
                None => 0,
            };
            let items = self.expr(append.items)?;
            let per_iteration = guard
                .saturating_add(items.cost)
                .saturating_add(ITERATION_COST);
            let grown = items.size();
            let result = Size {
                len: n.saturating_mul(grown.len),
                inner: grown.inner,
                total: n.saturating_mul(grown.total),
                each: grown.each,
            };
            return Ok(Estimate {
                cost: setup
                    .saturating_add(n.saturating_mul(per_iteration))
                    .saturating_add(1),
                shape: Shape::Sized(init.size().concat(result)),
            });
        }
        // The accumulator's size after k steps grows by what one step adds: estimate a step
        // from the initial size, extrapolate to n steps, and check that a step from the
        // extrapolated size adds no more (the standard macros' steps add a constant: `&&`,
        // `||`, `+ 1`); one that grew with the accumulator would be refused.
        let a0 = init.shape;
        let first = self.with(&[(c.accu_var.as_str(), a0)], |this| this.expr(&c.loop_step))?;
        let (s0, s1) = (a0.size(), first.size());
        let delta = Size {
            len: s1.len.saturating_sub(s0.len),
            inner: s1.inner,
            total: s1.total.saturating_sub(s0.total),
            each: s1.each,
        };
        let last = if delta.len == 0 && delta.total == 0 {
            a0
        } else {
            Shape::Sized(Size {
                len: s0.len.saturating_add(n.saturating_mul(delta.len)),
                inner: s0.inner.max(s1.inner),
                total: s0.total.saturating_add(n.saturating_mul(delta.total)),
                each: s0.each.max(s1.each),
            })
        };
        let accu = if last == a0 {
            // A step that keeps the shape (a bool, an int) may still change it: join them.
            match (a0, first.shape) {
                (Shape::Sized(a), Shape::Sized(b)) => Shape::Sized(a.join(b)),
                _ => a0,
            }
        } else {
            last
        };
        let (cond, step, result) = self.with(&[(c.accu_var.as_str(), accu)], |this| {
            Ok((
                this.expr(&c.loop_cond)?,
                this.expr(&c.loop_step)?,
                this.expr(&c.result)?,
            ))
        })?;
        let (sa, sn) = (accu.size(), step.size());
        if sn.len > sa.len.saturating_add(delta.len)
            || sn.total > sa.total.saturating_add(delta.total)
        {
            return Err(CelError::Unsupported(
                "a comprehension whose accumulator grows faster than linearly".into(),
            ));
        }
        let per_iteration = cond
            .cost
            .saturating_add(step.cost)
            .saturating_add(ITERATION_COST);
        Ok(Estimate {
            cost: setup
                .saturating_add(n.saturating_mul(per_iteration))
                .saturating_add(result.cost),
            shape: result.shape,
        })
    }
}

/// A call's cost: 1, its arguments, and what the function itself does with them.
fn call_cost(name: &str, args: &[Estimate]) -> Result<Estimate, CelError> {
    let base = args.iter().fold(1u64, |c, a| c.saturating_add(a.cost));
    let size = |i: usize| args.get(i).map(Estimate::size).unwrap_or_default();
    let scalar = |extra: u64| Ok(Estimate::scalar(base.saturating_add(extra)));
    match name {
        operators::LOGICAL_AND
        | operators::LOGICAL_OR
        | operators::LOGICAL_NOT
        | operators::NEGATE
        | operators::SUBSTRACT
        | operators::MULTIPLY
        | operators::DIVIDE
        | operators::MODULO
        | operators::NOT_STRICTLY_FALSE
        | "size"
        | "hasValue"
        | "int"
        | "uint"
        | "double"
        | "bool"
        | "type"
        | "optional.none" => scalar(linear(size(0).len)),
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS => scalar(linear(size(0).total.min(size(1).total))),
        operators::IN => {
            // A list is searched element by element; a map is hashed (counted the same).
            let needle = size(0).total;
            scalar(size(1).len.saturating_mul(1 + linear(needle)))
        }
        "contains" | "startsWith" | "endsWith" => {
            scalar(linear(size(0).len.saturating_add(size(1).len)))
        }
        "matches" => {
            // Compiled once at admission (the estimator checks it; the meter keeps it), then
            // matched in time linear in the text, times the pattern in the worst case.
            let (text, pattern) = (size(0).len, size(1).len);
            scalar(text.saturating_mul(1 + linear(pattern)))
        }
        operators::ADD => {
            let (a, b) = (size(0), size(1));
            Ok(Estimate {
                cost: base.saturating_add(linear(a.total.saturating_add(b.total))),
                shape: Shape::Sized(a.concat(b)),
            })
        }
        operators::CONDITIONAL => Ok(Estimate {
            cost: base,
            shape: Shape::Sized(size(1).join(size(2))),
        }),
        operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT => Ok(Estimate {
            cost: base,
            shape: match args.first() {
                Some(a) => a.shape.field(None),
                None => Shape::Sized(Size::SCALAR),
            },
        }),
        "string" | "bytes" => {
            let a = size(0);
            Ok(Estimate {
                cost: base.saturating_add(linear(a.total)),
                shape: Shape::Sized(Size::string(a.total.max(MAX_SCALAR_STRING_LEN))),
            })
        }
        "dyn" | "optional.of" | "optional.ofNonZeroValue" | "value" => Ok(Estimate {
            cost: base,
            shape: args
                .first()
                .map(|a| a.shape)
                .unwrap_or(Shape::Sized(Size::SCALAR)),
        }),
        "or" | "orValue" => Ok(Estimate {
            cost: base,
            shape: Shape::Sized(size(0).join(size(1))),
        }),
        other => Err(CelError::UnknownFunction(crate::text::bound_owned(
            other.to_string(),
            crate::text::ERROR_STRING_MAX,
        ))),
    }
}

#[cfg(test)]
#[path = "cost_tests.rs"]
mod tests;
