//! Kubernetes-style quantities (`500m`, `4Gi`, `10G`, `1e3`, `2`) with exact arithmetic.
//!
//! A quantity is held as a signed count of nano-units (10⁻⁹) in an `i128`, so every value a
//! user can write with a suffix up to `Ei` and a precision down to `n` is exact, and sums over
//! a whole cluster cannot overflow in practice. Capacity is never compared as a float; floats
//! appear only in scores ([`Quantity::ratio`]).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Longest textual quantity we accept; anything longer is an attack or a typo.
const MAX_LEN: usize = 64;

/// How a quantity was written, kept so it prints back the way users think of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QuantityFormat {
    /// Powers of 1024: `Ki`, `Mi`, `Gi`, …
    BinarySi,
    /// Powers of 1000: `n`, `u`, `m`, (none), `k`, `M`, `G`, …
    #[default]
    DecimalSi,
}

/// An exact, non-float amount such as a CPU count, a byte size or a number of seats.
#[derive(Clone, Copy, Default)]
pub struct Quantity {
    nanos: i128,
    format: QuantityFormat,
}

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {input:?} is not valid: {reason}")]
pub struct QuantityError {
    pub input: String,
    pub reason: &'static str,
}

const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];
const DECIMAL_SUFFIXES: [(&str, i32); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
    ("", 0),
];

impl Quantity {
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: QuantityFormat::DecimalSi,
    };

    /// A whole number of units (`Quantity::from_units(4)` is `4`).
    pub fn from_units(units: i64) -> Self {
        Quantity {
            nanos: i128::from(units) * NANOS_PER_UNIT,
            format: QuantityFormat::DecimalSi,
        }
    }

    /// A whole number of bytes, printed in binary suffixes (`4294967296` prints as `4Gi`).
    pub fn from_bytes(bytes: u64) -> Self {
        Quantity {
            nanos: i128::from(bytes) * NANOS_PER_UNIT,
            format: QuantityFormat::BinarySi,
        }
    }

    /// Thousandths of a unit (`500` is `500m`).
    pub fn from_milli(milli: i64) -> Self {
        Quantity {
            nanos: i128::from(milli) * 1_000_000,
            format: QuantityFormat::DecimalSi,
        }
    }

    pub fn from_nanos(nanos: i128) -> Self {
        Quantity {
            nanos,
            format: QuantityFormat::DecimalSi,
        }
    }

    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    pub fn format(&self) -> QuantityFormat {
        self.format
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// Sum keeping the left operand's format; `None` on overflow.
    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.nanos.checked_add(other.nanos).map(|nanos| Quantity {
            nanos,
            format: self.format,
        })
    }

    /// Difference keeping the left operand's format; `None` on overflow.
    pub fn checked_sub(self, other: Quantity) -> Option<Quantity> {
        self.nanos.checked_sub(other.nanos).map(|nanos| Quantity {
            nanos,
            format: self.format,
        })
    }

    /// Difference clamped at zero, for "what is left" computations.
    pub fn saturating_sub(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos).max(0),
            format: self.format,
        }
    }

    /// `self / whole` as a float in `[0, ∞)`, for scoring only; `0` when `whole` is zero.
    pub fn ratio(self, whole: Quantity) -> f64 {
        if whole.nanos <= 0 {
            return 0.0;
        }
        self.nanos as f64 / whole.nanos as f64
    }

    /// Whole units, rounded up (a CPU quota of `1500m` needs 2 whole CPUs).
    pub fn ceil_units(self) -> i128 {
        let q = self.nanos.div_euclid(NANOS_PER_UNIT);
        if self.nanos.rem_euclid(NANOS_PER_UNIT) == 0 {
            q
        } else {
            q + 1
        }
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}
impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| QuantityError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        if input.len() > MAX_LEN {
            return Err(err("too long"));
        }
        let bytes = input.as_bytes();
        let (negative, rest) = match bytes[0] {
            b'-' => (true, &input[1..]),
            b'+' => (false, &input[1..]),
            _ => (false, input),
        };
        // Split the numeric part (digits with at most one dot) from the suffix.
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(num_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err("no digits"));
        }
        if frac_part.contains('.') {
            return Err(err("more than one decimal point"));
        }
        // The mantissa as an integer plus the number of fractional digits it carries.
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 38 {
            return Err(err("too many digits"));
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| err("not a number"))?
        };
        let frac_len = frac_part.len() as i32;

        let (nanos, format) =
            if let Some(&(_, shift)) = BINARY_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
                let scaled = mantissa
                    .checked_mul(NANOS_PER_UNIT)
                    .and_then(|v| v.checked_mul(1i128 << shift))
                    .ok_or_else(|| err("out of range"))?;
                let divisor = pow10(frac_len).ok_or_else(|| err("too many fractional digits"))?;
                if scaled % divisor != 0 {
                    return Err(err("finer than one nano-unit"));
                }
                (scaled / divisor, QuantityFormat::BinarySi)
            } else {
                let exponent =
                    if let Some(&(_, e)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
                        e
                    } else if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
                        if exp.is_empty() || exp.len() > 4 {
                            return Err(err("bad exponent"));
                        }
                        exp.parse::<i32>().map_err(|_| err("bad exponent"))?
                    } else {
                        return Err(err("unknown suffix"));
                    };
                // nanos = mantissa * 10^(exponent + 9 - frac_len)
                let scale = exponent + 9 - frac_len;
                let nanos = if scale >= 0 {
                    let factor = pow10(scale).ok_or_else(|| err("out of range"))?;
                    mantissa
                        .checked_mul(factor)
                        .ok_or_else(|| err("out of range"))?
                } else {
                    let divisor = pow10(-scale).ok_or_else(|| err("finer than one nano-unit"))?;
                    if mantissa % divisor != 0 {
                        return Err(err("finer than one nano-unit"));
                    }
                    mantissa / divisor
                };
                (nanos, QuantityFormat::DecimalSi)
            };
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }
}

fn pow10(exp: i32) -> Option<i128> {
    if !(0..=38).contains(&exp) {
        return None;
    }
    10i128.checked_pow(exp as u32)
}

impl fmt::Display for Quantity {
    /// Prints the shortest exact form in the quantity's own format: `1536Mi` stays `1536Mi`
    /// rather than `1.5Gi`, because fractions with binary suffixes are not exact in general.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        if abs == 0 {
            return f.write_str("0");
        }
        let units_exact = abs.is_multiple_of(NANOS_PER_UNIT as u128);
        if self.format == QuantityFormat::BinarySi && units_exact {
            let units = abs / NANOS_PER_UNIT as u128;
            for (suffix, shift) in BINARY_SUFFIXES.iter().rev() {
                let unit = 1u128 << shift;
                if units.is_multiple_of(unit) {
                    return write!(f, "{sign}{}{suffix}", units / unit);
                }
            }
            return write!(f, "{sign}{units}");
        }
        // Decimal: the largest power of 1000 that divides exactly.
        for exponent in [18i32, 15, 12, 9, 6, 3, 0, -3, -6, -9] {
            let unit = 10u128.pow((exponent + 9) as u32);
            if abs.is_multiple_of(unit) {
                let suffix = DECIMAL_SUFFIXES
                    .iter()
                    .find(|(_, e)| *e == exponent)
                    .map(|(s, _)| *s)
                    .unwrap_or("");
                return write!(f, "{sign}{}{suffix}", abs / unit);
            }
        }
        write!(f, "{sign}{abs}n")
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({self})")
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantity such as \"500m\", \"4Gi\" or 2")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::from_units(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                i64::try_from(v)
                    .map(Quantity::from_units)
                    .map_err(|_| E::custom(format!("quantity {v} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                // YAML `cpu: 0.5` arrives as a float; its shortest decimal form is what the user
                // typed, so parse that text exactly rather than converting the binary float.
                if !v.is_finite() {
                    return Err(E::custom(format!("quantity {v} is not valid")));
                }
                format!("{v}").parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kubernetes-style quantity: 500m, 4Gi, 10G, 1e3 or a plain number.",
            "oneOf": [
                {"type": "string", "pattern": r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$"},
                {"type": "integer"}
            ]
        })
    }
}

impl From<i64> for Quantity {
    fn from(units: i64) -> Self {
        Quantity::from_units(units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap()
    }

    #[test]
    fn parses_kubernetes_forms() {
        assert_eq!(q("500m").nanos(), 500_000_000);
        assert_eq!(q("2").nanos(), 2 * NANOS_PER_UNIT);
        assert_eq!(q("4Gi").nanos(), 4 * (1i128 << 30) * NANOS_PER_UNIT);
        assert_eq!(q("10G").nanos(), 10_000_000_000 * NANOS_PER_UNIT);
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q(".5"), q("500m"));
        assert_eq!(q("-1"), Quantity::from_units(-1));
        assert_eq!(q("1n").nanos(), 1);
        assert_eq!(q("1E-3"), q("1m"));
    }

    #[test]
    fn rejects_garbage_with_reason() {
        for bad in [
            "",
            "4Gx",
            "abc",
            "1..2",
            "1.2.3",
            "Gi",
            "1e",
            "1e99",
            "0.1n",
            "1.0000000001",
            "--1",
            "1 Gi",
            "1Ki ",
        ] {
            let e = bad.parse::<Quantity>().unwrap_err();
            assert!(e.to_string().contains("is not valid"), "{bad}: {e}");
        }
        let long = "1".repeat(100);
        assert!(long.parse::<Quantity>().is_err());
    }

    #[test]
    fn prints_shortest_exact_form() {
        assert_eq!(q("4096Mi").to_string(), "4Gi");
        assert_eq!(q("1536Mi").to_string(), "1536Mi");
        assert_eq!(q("1000m").to_string(), "1");
        assert_eq!(q("1500m").to_string(), "1500m");
        assert_eq!(q("2000").to_string(), "2k");
        assert_eq!(q("0").to_string(), "0");
        assert_eq!(q("-2Gi").to_string(), "-2Gi");
    }

    #[test]
    fn arithmetic_is_exact() {
        let mut total = Quantity::ZERO;
        for _ in 0..10 {
            total = total.checked_add(q("100m")).unwrap();
        }
        assert_eq!(total, q("1"));
        assert_eq!(q("1").saturating_sub(q("2")), Quantity::ZERO);
        assert_eq!(q("1500m").ceil_units(), 2);
        assert_eq!(q("2").ceil_units(), 2);
    }

    #[test]
    fn serde_accepts_strings_ints_and_floats() {
        let v: Quantity = serde_json::from_str("\"4Gi\"").unwrap();
        assert_eq!(v, q("4Gi"));
        let v: Quantity = serde_json::from_str("3").unwrap();
        assert_eq!(v, q("3"));
        let v: Quantity = serde_json::from_str("0.25").unwrap();
        assert_eq!(v, q("250m"));
        assert_eq!(serde_json::to_string(&q("4Gi")).unwrap(), "\"4Gi\"");
        let e = serde_json::from_str::<Quantity>("\"4Gx\"").unwrap_err();
        assert!(
            e.to_string().contains("quantity \"4Gx\" is not valid"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(nanos in -(1i128 << 100)..(1i128 << 100), binary in any::<bool>()) {
            let value = Quantity { nanos, format: if binary { QuantityFormat::BinarySi } else { QuantityFormat::DecimalSi } };
            let printed = value.to_string();
            let back: Quantity = printed.parse().unwrap();
            prop_assert_eq!(back, value);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Quantity>();
        }
    }
}
