//! The one clock the control plane reads, so tests can move time instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

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

/// The wall clock shifted by an adjustable offset, for tests that jump time forward.
#[derive(Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Time {
        Time::from_unix_millis(
            SystemClock.now().unix_millis() + self.offset_ms.load(Ordering::SeqCst),
        )
    }
}

pub type SharedClock = Arc<dyn Clock>;
