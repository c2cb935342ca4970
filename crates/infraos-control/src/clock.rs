//! The one clock the control plane reads (a trait, so a test or a simulation can supply its
//! own; today's tests use short real leases and wait on conditions with deadlines).

use std::sync::Arc;

use infraos_api::Time;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Time;
}

/// The system's wall clock, read in milliseconds.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Time::from_unix_millis(ms)
    }
}

pub type SharedClock = Arc<dyn Clock>;
