//! Attribute selectors on items as CEL expressions, as Kubernetes DRA does:
//! `item.attributes.model == "H100" && item.attributes.memoryGiB >= 80`.
//!
//! The expression sees one variable, `item`, a map with `name` (string) and `attributes`
//! (a map of string, int and bool values). Expressions are compiled once at admission and
//! checked against the class's attribute schema by evaluating them on typed sample items, so a
//! typo in an attribute name or a string compared with an int is a 4xx, not a silent mismatch
//! at scheduling time.
//!
//! A selector is also a program a tenant runs on the control plane, so its cost is bounded
//! before it is accepted (issue 16): its depth, its comprehension nesting and a static
//! estimate of its worst case ([`cost`]) must fit their limits, and its evaluation is metered
//! at run time as a backstop ([`meter`]).

mod cost;
mod meter;
#[cfg(test)]
mod proptests;

pub use cost::{MAX_COMPREHENSION_NESTING, MAX_COST, MAX_DEPTH, REGEX_SIZE_LIMIT};
pub use meter::{EVAL_DEADLINE, MAX_ITERATIONS};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::text;

/// Longest selector source, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Most attributes one item may carry (its own and those it inherits from its resource), as
/// Kubernetes DRA allows per device: selectors iterate over them.
pub const MAX_ITEM_ATTRIBUTES: usize = 32;
/// Longest attribute name.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 63;
/// Longest string attribute value, in bytes: selectors' string functions are linear in it.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 256;

/// The value of one item attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AttributeValue {
    Bool(bool),
    Int(i64),
    String(String),
}

/// The declared type of an attribute in a ResourceClass schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttributeType {
    String,
    Int,
    Bool,
}

impl AttributeValue {
    pub fn type_of(&self) -> AttributeType {
        match self {
            AttributeValue::Bool(_) => AttributeType::Bool,
            AttributeValue::Int(_) => AttributeType::Int,
            AttributeValue::String(_) => AttributeType::String,
        }
    }

    fn to_cel(&self) -> cel::Value {
        match self {
            AttributeValue::Bool(b) => cel::Value::Bool(*b),
            AttributeValue::Int(i) => cel::Value::Int(*i),
            AttributeValue::String(s) => cel::Value::String(Arc::new(s.clone())),
        }
    }
}

impl fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeValue::Bool(b) => write!(f, "{b}"),
            AttributeValue::Int(i) => write!(f, "{i}"),
            AttributeValue::String(s) => f.write_str(s),
        }
    }
}

impl fmt::Display for AttributeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttributeType::String => "string",
            AttributeType::Int => "int",
            AttributeType::Bool => "bool",
        })
    }
}

/// Why a CEL selector was rejected or failed to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CelError {
    #[error("CEL expression does not compile: {0}")]
    Compile(String),
    #[error("CEL expression is longer than {MAX_EXPRESSION_LEN} characters")]
    TooLong,
    #[error("CEL expression refers to {0:?}; only `item` is defined")]
    UnknownVariable(String),
    #[error("CEL expression calls {0:?}, which is not a function of the standard library")]
    UnknownFunction(String),
    #[error("CEL expression is nested deeper than the limit {limit}")]
    TooDeep { limit: usize },
    #[error("CEL expression nests comprehensions deeper than the limit {limit}")]
    TooNested { limit: usize },
    #[error("estimated cost {} exceeds the limit {}", grouped(*cost), grouped(*limit))]
    TooCostly { cost: u64, limit: u64 },
    #[error("CEL expression uses {0}, which is not supported")]
    Unsupported(String),
    #[error("CEL expression does not type-check: {0}")]
    Type(String),
    #[error("CEL expression must return a bool, returned {0}")]
    NotBool(String),
    #[error("CEL evaluation failed: {0}")]
    Eval(String),
    #[error(
        "CEL evaluation stopped: it ran more than {} loop iterations or {} ms",
        grouped(MAX_ITERATIONS),
        EVAL_DEADLINE.as_millis()
    )]
    Exhausted,
}

/// `1234567` as `1,234,567`: limits and costs are read by people.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A compiled selector: its expression with the meter's ticks in its loops, its cost, and
/// its `matches` patterns, compiled.
struct Compiled {
    expression: cel::parser::Expression,
    cost: u64,
    patterns: Arc<[regex::Regex]>,
}

/// A compiled item selector. Cheap to clone; compares and prints as its source text.
#[derive(Clone)]
pub struct ItemSelector {
    source: Arc<str>,
    compiled: Arc<Compiled>,
}

impl ItemSelector {
    /// Parses `source` and refuses it unless its depth, nesting and estimated cost fit their
    /// limits ([`MAX_DEPTH`], [`MAX_COMPREHENSION_NESTING`], [`MAX_COST`]). Costs about a
    /// millisecond per KiB of source in a release build: callers on an async runtime run it
    /// off the runtime's workers.
    pub fn compile(source: &str) -> Result<Self, CelError> {
        if source.len() > MAX_EXPRESSION_LEN {
            return Err(CelError::TooLong);
        }
        if let Some(compiled) = cache().get(source) {
            return Ok(ItemSelector {
                source: source.into(),
                compiled,
            });
        }
        let mut expression = stdlib().parser().parse(source).map_err(|e| {
            CelError::Compile(text::bound_owned(
                e.to_string().replace('\n', " "),
                text::ERROR_STRING_MAX,
            ))
        })?;
        cost::check_depth(&expression)?;
        let estimated = cost::estimate(&expression)?;
        let (sources, patterns): (Vec<String>, Vec<regex::Regex>) =
            estimated.patterns.into_iter().unzip();
        meter::instrument(&mut expression, &sources);
        let compiled = Arc::new(Compiled {
            expression,
            cost: estimated.cost,
            patterns: patterns.into(),
        });
        cache().put(source, Arc::clone(&compiled));
        Ok(ItemSelector {
            source: source.into(),
            compiled,
        })
    }

    /// The selector's estimated worst-case cost, at most [`MAX_COST`].
    pub fn cost(&self) -> u64 {
        self.compiled.cost
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Checks the expression against an attribute schema by evaluating it on typed samples:
    /// an undeclared attribute, a type mismatch or a non-bool result is an error.
    pub fn check(&self, schema: &BTreeMap<String, AttributeType>) -> Result<(), CelError> {
        for variant in 0..2 {
            let attributes = schema
                .iter()
                .map(|(name, ty)| {
                    let v = match (ty, variant) {
                        (AttributeType::String, 0) => AttributeValue::String(String::new()),
                        (AttributeType::String, _) => AttributeValue::String("x".into()),
                        (AttributeType::Int, 0) => AttributeValue::Int(0),
                        (AttributeType::Int, _) => AttributeValue::Int(1),
                        (AttributeType::Bool, v) => AttributeValue::Bool(v != 0),
                    };
                    (name.clone(), v)
                })
                .collect();
            let sample = Item {
                name: "sample".into(),
                attributes,
            };
            match self.evaluate(&sample) {
                Ok(_) => {}
                Err(CelError::Eval(e)) => return Err(CelError::Type(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Evaluates against one item. An attribute the item lacks is an evaluation error, which
    /// callers treat as "does not match" (as DRA does), not as a crash.
    pub fn matches(&self, item: &Item) -> Result<bool, CelError> {
        self.evaluate(item)
    }

    fn evaluate(&self, item: &Item) -> Result<bool, CelError> {
        let mut context = cel::Context::with_env(Arc::clone(stdlib()));
        let attributes: std::collections::HashMap<cel::objects::Key, cel::Value> = item
            .attributes
            .iter()
            .map(|(k, v)| (cel::objects::Key::from(k.as_str()), v.to_cel()))
            .collect();
        let mut root: std::collections::HashMap<cel::objects::Key, cel::Value> =
            std::collections::HashMap::new();
        root.insert(
            "name".into(),
            cel::Value::String(Arc::new(item.name.clone())),
        );
        root.insert("attributes".into(), cel::Value::Map(attributes.into()));
        context.add_variable_from_value("item", cel::Value::Map(root.into()));
        let (result, exhausted) = meter::metered(&self.compiled.patterns, || {
            cel::Value::resolve(&self.compiled.expression, &context)
        });
        if exhausted.is_some() {
            return Err(CelError::Exhausted);
        }
        match result {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(CelError::NotBool(format!("{:?}", other.type_of()))),
            Err(e) => Err(CelError::Eval(text::bound_owned(
                e.to_string(),
                text::ERROR_STRING_MAX,
            ))),
        }
    }
}

/// The standard CEL environment, built once: building it registers every standard function,
/// which costs far more than evaluating a selector. It also declares the meter's `@tick`.
fn stdlib() -> &'static Arc<cel::Env> {
    static ENV: std::sync::OnceLock<Arc<cel::Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        // `@tick` is a name no standard function has; failing here would be a bug in this
        // file, and would leave loops without their backstop but still statically bounded.
        if let Err(e) = meter::declare(&mut env) {
            debug_assert!(false, "cannot declare the CEL meter: {e}");
        }
        Arc::new(env)
    })
}

/// Selectors compiled from valid sources, shared: the same selector arrives with every claim
/// of a kind, and is decoded by the API, the scheduler and the controllers.
struct CompiledCache {
    compiled: std::sync::Mutex<std::collections::HashMap<String, Arc<Compiled>>>,
}

const COMPILED_CACHE_LIMIT: usize = 4096;

impl CompiledCache {
    fn get(&self, source: &str) -> Option<Arc<Compiled>> {
        let map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        map.get(source).cloned()
    }

    fn put(&self, source: &str, compiled: Arc<Compiled>) {
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= COMPILED_CACHE_LIMIT {
            map.clear();
        }
        map.insert(source.to_string(), compiled);
    }
}

fn cache() -> &'static CompiledCache {
    static CACHE: std::sync::OnceLock<CompiledCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| CompiledCache {
        compiled: std::sync::Mutex::new(std::collections::HashMap::new()),
    })
}

/// One individually allocatable thing: a GPU, an IP address, a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Item {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AttributeValue>,
}

/// Checks attributes against the limits selectors are costed with: at most
/// [`MAX_ITEM_ATTRIBUTES`] once `inherited` more are added, names of at most
/// [`MAX_ATTRIBUTE_KEY_LEN`] bytes, string values of at most [`MAX_ATTRIBUTE_VALUE_LEN`].
/// `field` names the map (`spec.items[3].attributes`), built only when there is a problem.
pub fn check_attributes(
    field: impl Fn() -> String,
    attributes: &BTreeMap<String, AttributeValue>,
    inherited: usize,
    errors: &mut crate::validation::Errors,
) {
    if attributes.len() + inherited > MAX_ITEM_ATTRIBUTES {
        errors.add(
            field(),
            format!(
                "an item may have at most {MAX_ITEM_ATTRIBUTES} attributes (its own and its \
                 resource's); it has {}",
                attributes.len() + inherited
            ),
        );
    }
    for (name, value) in attributes {
        if name.is_empty() || name.len() > MAX_ATTRIBUTE_KEY_LEN {
            errors.add(
                format!(
                    "{}.{}",
                    field(),
                    text::bounded(name, text::ERROR_STRING_MAX)
                ),
                format!("attribute names are 1 to {MAX_ATTRIBUTE_KEY_LEN} bytes"),
            );
        }
        if let AttributeValue::String(v) = value
            && v.len() > MAX_ATTRIBUTE_VALUE_LEN
        {
            errors.add(
                format!(
                    "{}.{}",
                    field(),
                    text::bounded(name, text::ERROR_STRING_MAX)
                ),
                format!("string attributes are at most {MAX_ATTRIBUTE_VALUE_LEN} bytes"),
            );
        }
    }
}

impl PartialEq for ItemSelector {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for ItemSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ItemSelector({:?})", self.source)
    }
}

impl fmt::Display for ItemSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for ItemSelector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for ItemSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ItemSelector::compile(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ItemSelector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ItemSelector".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A CEL expression over `item` (name, attributes) returning bool."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(model: &str, mem: i64) -> Item {
        Item {
            name: "gpu0".into(),
            attributes: [
                ("model".to_string(), AttributeValue::String(model.into())),
                ("memoryGiB".to_string(), AttributeValue::Int(mem)),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn schema() -> BTreeMap<String, AttributeType> {
        [
            ("model".to_string(), AttributeType::String),
            ("memoryGiB".to_string(), AttributeType::Int),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn matches_the_issue_example() {
        let s = ItemSelector::compile(
            r#"item.attributes.model == "H100" && item.attributes.memoryGiB >= 80"#,
        )
        .unwrap();
        assert!(s.matches(&gpu("H100", 80)).unwrap());
        assert!(!s.matches(&gpu("H100", 40)).unwrap());
        assert!(!s.matches(&gpu("A100", 80)).unwrap());
        s.check(&schema()).unwrap();
    }

    #[test]
    fn rejects_bad_expressions() {
        assert!(matches!(
            ItemSelector::compile("item.attributes.model ==").unwrap_err(),
            CelError::Compile(_)
        ));
        assert!(matches!(
            ItemSelector::compile("node.zone == 'a'").unwrap_err(),
            CelError::UnknownVariable(_)
        ));
        let typo = ItemSelector::compile("item.attributes.modle == 'H100'").unwrap();
        assert!(matches!(
            typo.check(&schema()).unwrap_err(),
            CelError::Type(_)
        ));
        let mistyped = ItemSelector::compile("item.attributes.memoryGiB > 'big'").unwrap();
        assert!(matches!(
            mistyped.check(&schema()).unwrap_err(),
            CelError::Type(_)
        ));
        let not_bool = ItemSelector::compile("item.attributes.memoryGiB + 1").unwrap();
        assert!(matches!(
            not_bool.check(&schema()).unwrap_err(),
            CelError::NotBool(_)
        ));
    }

    #[test]
    fn string_functions_work() {
        let s = ItemSelector::compile(
            r#"item.name.startsWith("gpu") && item.attributes.model.matches("^H")"#,
        )
        .unwrap();
        assert!(s.matches(&gpu("H100", 80)).unwrap());
    }

    #[test]
    fn comprehension_variables_are_in_scope() {
        // Refused before as "refers to x": the free-variable check counted loop variables.
        let s =
            ItemSelector::compile("[1, 2, 3].exists(x, x == item.attributes.memoryGiB)").unwrap();
        assert!(s.matches(&gpu("H100", 2)).unwrap());
        assert!(!s.matches(&gpu("H100", 4)).unwrap());
        let keys = ItemSelector::compile("item.attributes.exists(k, k.startsWith('mod'))").unwrap();
        assert!(keys.matches(&gpu("H100", 2)).unwrap());
        s.check(&schema()).unwrap();
    }

    #[test]
    fn refusals_name_the_limit() {
        let list: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let list = format!("[{}]", list.join(","));
        let bomb = format!("{list}.exists(a, {list}.exists(b, {list}.exists(c, c == -1)))");
        let e = ItemSelector::compile(&bomb).unwrap_err().to_string();
        assert!(
            e.starts_with("estimated cost ") && e.ends_with("exceeds the limit 100,000"),
            "{e}"
        );
        assert_eq!(grouped(10_000_000_000), "10,000,000,000");
        assert_eq!(grouped(999), "999");
    }

    /// Sources at the length limit built to make a recursive parser, estimator or
    /// interpreter overflow its stack: each is refused or compiled, never a crash (this runs
    /// on a test thread's 2 MiB stack, as a tokio worker's).
    #[test]
    fn hostile_sources_never_crash() {
        let n = MAX_EXPRESSION_LEN;
        // (source, whether it must be refused: some fold away, as `!!x` is `x`).
        let sources = [
            (format!("{}true", "!".repeat(n - 4)), false),
            (format!("{}1", "-".repeat(n - 1)), false),
            (
                format!("{}1{}", "(".repeat(n / 2 - 1), ")".repeat(n / 2 - 1)),
                true,
            ),
            (
                format!("{}1{}", "[".repeat(n / 2 - 1), "]".repeat(n / 2 - 1)),
                true,
            ),
            (
                format!("{}1{}", "{1:".repeat(n / 5), "}".repeat(n / 5)),
                true,
            ),
            (vec!["1"; n / 4].join(" + "), true),
            // `&&` and `||` chains are parsed balanced: shallow.
            (vec!["true"; n / 8].join(" && "), false),
            (format!("item{}", ".a".repeat(n / 2 - 3)), true),
            (format!("1{}", "[0]".repeat(n / 3 - 1)), true),
            (
                format!("{}1{}", "size(".repeat(n / 6), ")".repeat(n / 6)),
                true,
            ),
            (format!("item.name{}", ".size()".repeat(n / 8 - 2)), true),
            (
                format!(
                    "{}true{}",
                    "true ? ".repeat(n / 12),
                    " : false".repeat(n / 12)
                ),
                true,
            ),
        ];
        for (source, refused) in &sources {
            let source = &source[..source.len().min(n)];
            let outcome = ItemSelector::compile(source);
            if *refused {
                assert!(outcome.is_err(), "{}… was accepted", &source[..40]);
            } else if let Ok(selector) = outcome {
                let _ = selector.matches(&gpu("H100", 80));
            }
        }
    }

    #[test]
    fn attributes_are_held_to_the_limits_selectors_are_costed_with() {
        let mut errors = crate::validation::Errors::default();
        let many: BTreeMap<String, AttributeValue> = (0..MAX_ITEM_ATTRIBUTES)
            .map(|i| (format!("a{i}"), AttributeValue::Int(1)))
            .collect();
        check_attributes(|| "spec.attributes".into(), &many, 0, &mut errors);
        assert!(errors.is_empty());
        check_attributes(|| "spec.items[0].attributes".into(), &many, 1, &mut errors);
        let long: BTreeMap<String, AttributeValue> = [
            (
                "k".repeat(MAX_ATTRIBUTE_KEY_LEN + 1),
                AttributeValue::Bool(true),
            ),
            (
                "v".into(),
                AttributeValue::String("x".repeat(MAX_ATTRIBUTE_VALUE_LEN + 1)),
            ),
        ]
        .into_iter()
        .collect();
        check_attributes(|| "spec.items[1].attributes".into(), &long, 0, &mut errors);
        let text = errors.into_result().unwrap_err().to_string();
        assert!(
            text.contains("spec.items[0].attributes: an item may have at most 32"),
            "{text}"
        );
        assert!(text.contains("attribute names are 1 to 63 bytes"), "{text}");
        assert!(
            text.contains("spec.items[1].attributes.v: string attributes are at most 256"),
            "{text}"
        );
    }

    #[test]
    fn program_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ItemSelector>();
    }
}
