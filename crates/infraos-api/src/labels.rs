//! Label keys, values and selectors in Kubernetes syntax: `zone in (a,b),!legacy,tier=gold`.
//!
//! A selector is a conjunction of requirements. It is parsed once at the border (API or CLI)
//! into a closed type and printed back canonically, so two spellings of the same selector
//! compare equal after a round trip.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Object labels: ordered so that printing and hashing are deterministic.
pub type Labels = BTreeMap<String, String>;

const MAX_SELECTOR_LEN: usize = 4096;

/// Why a label key, value or selector was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label key {0:?} is not valid: {1}")]
    Key(String, &'static str),
    #[error("label value {0:?} is not valid: {1}")]
    Value(String, &'static str),
    #[error("selector {input:?} is not valid at offset {offset}: {reason}")]
    Selector {
        input: String,
        offset: usize,
        reason: String,
    },
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters made of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let bad = |why| Err(LabelError::Key(key.to_string(), why));
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > 253 {
            return bad("prefix must be 1 to 253 characters");
        }
        if !crate::names::is_dns_subdomain(prefix) {
            return bad("prefix must be a DNS subdomain");
        }
    }
    if name.is_empty() || name.len() > 63 {
        return bad("name must be 1 to 63 characters");
    }
    if !is_label_token(name) {
        return bad(
            "name must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        );
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 characters as for a key's name part.
pub fn validate_value(value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err(LabelError::Value(
            value.to_string(),
            "at most 63 characters",
        ));
    }
    if !is_label_token(value) {
        return Err(LabelError::Value(
            value.to_string(),
            "must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        ));
    }
    Ok(())
}

fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Validates every key and value of a label map, naming the first bad one.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    for (k, v) in labels {
        validate_key(k)?;
        validate_value(v)?;
    }
    Ok(())
}

/// One clause of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Exists(k)
            | Requirement::NotExists(k)
            | Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::GreaterThan(k, _)
            | Requirement::LessThan(k, _) => k,
        }
    }

    /// Matches against a label lookup so callers can layer label maps without merging them.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            // As in Kubernetes, `!=` and `notin` also match objects without the label.
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            Requirement::GreaterThan(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|have| have > *n),
            Requirement::LessThan(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|have| have < *n),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Matches against labels looked up through `get`, e.g. a resource's labels over its node's.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str> + Copy) -> bool {
        self.requirements.iter().all(|r| r.matches_with(get))
    }
}

impl FromStr for LabelSelector {
    type Err = LabelError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_SELECTOR_LEN {
            return Err(LabelError::Selector {
                input: input.chars().take(64).collect(),
                offset: MAX_SELECTOR_LEN,
                reason: format!("longer than {MAX_SELECTOR_LEN} characters"),
            });
        }
        Parser { input, pos: 0 }.parse()
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, LabelError> {
        Err(LabelError::Selector {
            input: self.input.to_string(),
            offset: self.pos,
            reason: reason.into(),
        })
    }

    fn skip_ws(&mut self) {
        while self.rest().starts_with([' ', '\t']) {
            self.pos += 1;
        }
    }

    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// A run of characters that may appear in keys and values.
    fn word(&mut self) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.input[start..start + len]
    }

    fn key(&mut self) -> Result<String, LabelError> {
        self.skip_ws();
        let at = self.pos;
        let key = self.word().to_string();
        if key.is_empty() {
            self.pos = at;
            return self.err("expected a label key");
        }
        if let Err(e) = validate_key(&key) {
            self.pos = at;
            return self.err(e.to_string());
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<String, LabelError> {
        self.skip_ws();
        let at = self.pos;
        let value = self.word().to_string();
        if value.contains('/') {
            self.pos = at;
            return self.err("a label value cannot contain '/'");
        }
        if let Err(e) = validate_value(&value) {
            self.pos = at;
            return self.err(e.to_string());
        }
        Ok(value)
    }

    fn integer(&mut self) -> Result<i64, LabelError> {
        self.skip_ws();
        let at = self.pos;
        let text = self.word().to_string();
        text.parse().or_else(|_| {
            self.pos = at;
            self.err(format!("expected an integer, found {text:?}"))
        })
    }

    fn value_set(&mut self) -> Result<Vec<String>, LabelError> {
        self.skip_ws();
        if !self.eat("(") {
            return self.err("expected '(' after in/notin");
        }
        let mut values = Vec::new();
        loop {
            values.push(self.value()?);
            self.skip_ws();
            if self.eat(")") {
                break;
            }
            if !self.eat(",") {
                return self.err("expected ',' or ')' in value set");
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }

    fn requirement(&mut self) -> Result<Requirement, LabelError> {
        self.skip_ws();
        if self.eat("!") {
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        self.skip_ws();
        if self.rest().is_empty() || self.rest().starts_with(',') {
            return Ok(Requirement::Exists(key));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::Equals(key, self.value()?));
        }
        if self.eat("!=") {
            return Ok(Requirement::NotEquals(key, self.value()?));
        }
        if self.eat(">") {
            return Ok(Requirement::GreaterThan(key, self.integer()?));
        }
        if self.eat("<") {
            return Ok(Requirement::LessThan(key, self.integer()?));
        }
        // `in`/`notin` must be followed by whitespace or '(' to be operators, not key text.
        let word_start = self.pos;
        let op = self.word().to_string();
        match op.as_str() {
            "in" => Ok(Requirement::In(key, self.value_set()?)),
            "notin" => Ok(Requirement::NotIn(key, self.value_set()?)),
            _ => {
                self.pos = word_start;
                self.err("expected one of =, ==, !=, in, notin, >, < or ','")
            }
        }
    }

    fn parse(mut self) -> Result<LabelSelector, LabelError> {
        let mut requirements = Vec::new();
        self.skip_ws();
        if self.rest().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            self.skip_ws();
            if self.rest().is_empty() {
                break;
            }
            if !self.eat(",") {
                return self.err("expected ',' between requirements");
            }
        }
        Ok(LabelSelector { requirements })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::GreaterThan(k, n) => write!(f, "{k}>{n}"),
            Requirement::LessThan(k, n) => write!(f, "{k}<{n}"),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl Serialize for LabelSelector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for LabelSelector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LabelSelector".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A Kubernetes label selector, e.g. `zone in (a,b),!legacy,tier=gold`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_the_issue_example() {
        let sel: LabelSelector = "zone in (a,b),!legacy,tier=gold".parse().unwrap();
        assert_eq!(sel.requirements().len(), 3);
        assert!(sel.matches(&labels(&[("zone", "a"), ("tier", "gold")])));
        assert!(!sel.matches(&labels(&[("zone", "c"), ("tier", "gold")])));
        assert!(!sel.matches(&labels(&[("zone", "a"), ("tier", "gold"), ("legacy", "")])));
        assert!(!sel.matches(&labels(&[("zone", "b")])));
    }

    #[test]
    fn operators() {
        let l = labels(&[("a", "1"), ("gpu", "8"), ("x.io/rack", "r1")]);
        for (sel, want) in [
            ("", true),
            ("a", true),
            ("b", false),
            ("!b", true),
            ("a==1", true),
            ("a!=1", false),
            ("b!=1", true),
            ("a notin (2,3)", true),
            ("gpu>4", true),
            ("gpu<4", false),
            ("x.io/rack=r1", true),
            ("  a = 1 ,  gpu > 7 ", true),
        ] {
            let s: LabelSelector = sel.parse().unwrap();
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn errors_name_the_offset() {
        for bad in [
            "zone in a",
            "zone in (a,",
            "=a",
            "a=b=c",
            "zone inn (a)",
            "a,,b",
            "a=/x",
            "-bad=1",
            "gpu>x",
            "k=v!",
        ] {
            let err = bad.parse::<LabelSelector>().unwrap_err();
            assert!(matches!(err, LabelError::Selector { .. }), "{bad}: {err:?}");
        }
    }

    #[test]
    fn canonical_round_trip() {
        let s: LabelSelector = "zone in (b,a,a), !legacy,tier==gold".parse().unwrap();
        assert_eq!(s.to_string(), "zone in (a,b),!legacy,tier=gold");
        let again: LabelSelector = s.to_string().parse().unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn keys_and_values() {
        assert!(validate_key("infraos.io/zone").is_ok());
        assert!(validate_key("zone").is_ok());
        assert!(validate_key("/zone").is_err());
        assert!(validate_key("Zone_1.a-b").is_ok());
        assert!(validate_key(&"a".repeat(64)).is_err());
        assert!(validate_value("").is_ok());
        assert!(validate_value("-x").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<LabelSelector>();
        }

        #[test]
        fn printed_selectors_reparse(keys in proptest::collection::vec("[a-z][a-z0-9]{0,5}", 1..4), vals in proptest::collection::vec("[a-z0-9]{1,4}", 1..4)) {
            let text = keys.iter().zip(vals.iter().cycle()).map(|(k, v)| format!("{k} in ({v}),!{k}x")).collect::<Vec<_>>().join(",");
            let s: LabelSelector = text.parse().unwrap();
            let back: LabelSelector = s.to_string().parse().unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
