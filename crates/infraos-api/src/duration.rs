//! Go-style durations (`90s`, `30m`, `1h30m`, `500ms`), as Nomad and Kubernetes users write them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time with millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    millis: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duration {input:?} is not valid: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

const UNITS: [(&str, u64); 6] = [
    ("h", 3_600_000),
    ("ms", 1),
    ("m", 60_000),
    ("s", 1_000),
    ("d", 86_400_000),
    ("us", 0),
];

impl Duration {
    pub const fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Duration {
            millis: secs * 1000,
        }
    }

    pub fn as_millis(&self) -> u64 {
        self.millis
    }

    pub fn as_std(&self) -> StdDuration {
        StdDuration::from_millis(self.millis)
    }

    pub fn as_signed(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_millis(i64::try_from(self.millis).unwrap_or(i64::MAX))
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        if input.len() > 64 {
            return Err(err("too long"));
        }
        if input == "0" {
            return Ok(Duration::default());
        }
        let mut rest = input;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| err("missing unit (use ms, s, m, h or d)"))?;
            if digits == 0 {
                return Err(err("expected a number"));
            }
            let value: u64 = rest[..digits]
                .parse()
                .map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let per = UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, per)| *per)
                .ok_or_else(|| err("unknown unit (use ms, s, m, h or d)"))?;
            if per == 0 {
                return Err(err("finer than a millisecond"));
            }
            total = value
                .checked_mul(per)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("too large"))?;
            rest = &rest[unit_len..];
        }
        Ok(Duration { millis: total })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.millis;
        for (unit, per) in [("h", 3_600_000u64), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if rest >= per {
                write!(f, "{}{unit}", rest / per)?;
                rest %= per;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^(0|(\d+(ms|s|m|h|d))+)$",
            "description": "A Go-style duration such as 90s, 30m or 1h30m."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style() {
        assert_eq!("90s".parse::<Duration>().unwrap().as_millis(), 90_000);
        assert_eq!("1h30m".parse::<Duration>().unwrap().as_millis(), 5_400_000);
        assert_eq!("500ms".parse::<Duration>().unwrap().as_millis(), 500);
        assert_eq!("2d".parse::<Duration>().unwrap().as_millis(), 172_800_000);
        assert_eq!("0".parse::<Duration>().unwrap().as_millis(), 0);
        for bad in [
            "",
            "1",
            "h",
            "1x",
            "1.5h",
            "10us",
            "-1s",
            "99999999999999999999h",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prints_compactly() {
        assert_eq!(Duration::from_millis(5_400_000).to_string(), "1h30m");
        assert_eq!(Duration::from_millis(1_500).to_string(), "1s500ms");
        assert_eq!(Duration::default().to_string(), "0s");
    }
}
