//! Wall-clock instants in objects, serialized as RFC 3339 in UTC with millisecond precision.
//!
//! The API crate never reads the clock itself: callers pass `now` in, so the scheduler and the
//! controllers stay pure and tests control time. The edges that do read it (the agent; the
//! server may re-export it) do so through [`Clock`], defined here so that neither has to
//! depend on the other for it; nothing in this crate calls [`SystemClock`].

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(jiff::Timestamp);

impl Time {
    pub const UNIX_EPOCH: Time = Time(jiff::Timestamp::UNIX_EPOCH);

    /// From milliseconds since the Unix epoch; out-of-range values clamp to the epoch.
    pub fn from_unix_millis(ms: i64) -> Self {
        Time(jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
    }

    pub fn unix_millis(&self) -> i64 {
        self.0.as_millisecond()
    }

    /// `self + d`, saturating at the largest representable instant.
    pub fn plus(&self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_signed())
                .unwrap_or(jiff::Timestamp::MAX),
        )
    }

    /// Milliseconds from `self` until `later`; negative when `later` is in the past.
    pub fn millis_until(&self, later: Time) -> i64 {
        later.unix_millis() - self.unix_millis()
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Time {
    type Err = jiff::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ts: jiff::Timestamp = s.parse()?;
        Ok(Time::from_unix_millis(ts.as_millisecond()))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("time {s:?} is not valid RFC 3339: {e}")))
    }
}

impl JsonSchema for Time {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Time".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

/// The one clock an edge process reads (a trait, so a test or a simulation can supply its
/// own).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Time;
}

/// The system's wall clock, read in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Time::from_unix_millis(ms)
    }
}

pub type SharedClock = std::sync::Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_millis() {
        let t = Time::from_unix_millis(1_700_000_000_123);
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, "\"2023-11-14T22:13:20.123Z\"");
        let back: Time = serde_json::from_str(&s).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            t.plus(Duration::from_secs(1)).unix_millis(),
            1_700_000_001_123
        );
        assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
    }
}
