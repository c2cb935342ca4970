//! The drivers an agent has, by name. Every call on a run goes through here to the driver its
//! handle names, so the agent's reconciler knows no driver in particular.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::driver::{
    Deadline, Driver, DriverError, Fingerprints, Signal, TaskConfig, TaskHandle, TaskState,
    TaskStats,
};

#[derive(Clone, Default)]
pub struct DriverRegistry {
    drivers: BTreeMap<String, Arc<dyn Driver>>,
}

impl std::fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.drivers.keys()).finish()
    }
}

impl DriverRegistry {
    pub fn new() -> DriverRegistry {
        DriverRegistry::default()
    }

    /// Adds `driver` under its name, replacing one of the same name.
    pub fn register(&mut self, driver: Arc<dyn Driver>) {
        self.drivers.insert(driver.name().to_string(), driver);
    }

    pub fn with(mut self, driver: Arc<dyn Driver>) -> DriverRegistry {
        self.register(driver);
        self
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn Driver>, DriverError> {
        self.drivers
            .get(name)
            .ok_or_else(|| DriverError::UnknownDriver(name.to_string()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.drivers.keys().map(String::as_str)
    }

    /// Every driver's fingerprint, for the Node's status.
    pub fn fingerprints(&self) -> Fingerprints {
        self.drivers
            .iter()
            .map(|(name, d)| (name.clone(), d.fingerprint()))
            .collect()
    }

    /// Starts `task` with the driver its spec names.
    pub async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError> {
        self.get(&task.spec.driver)?.start(task).await
    }

    /// Waits for the run; a handle of a driver this agent lacks is lost.
    pub async fn wait(&self, handle: &TaskHandle) -> TaskState {
        match self.get(&handle.driver) {
            Ok(d) => d.wait(handle).await,
            Err(_) => TaskState::Lost,
        }
    }

    pub async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), DriverError> {
        self.get(&handle.driver)?.stop(handle, grace).await
    }

    pub fn signal(&self, handle: &TaskHandle, signal: Signal) -> Result<(), DriverError> {
        self.get(&handle.driver)?.signal(handle, signal)
    }

    pub fn inspect(&self, handle: &TaskHandle) -> TaskState {
        self.get(&handle.driver)
            .map_or(TaskState::Lost, |d| d.inspect(handle))
    }

    /// After an agent restart: re-attaches through the driver that started the run; a run of
    /// a driver this agent no longer has is lost.
    pub fn recover(&self, handle: &TaskHandle) -> TaskState {
        match self.get(&handle.driver) {
            Ok(d) => d.recover(handle),
            Err(e) => {
                tracing::warn!(task = %handle.id, error = %e, "cannot recover the run");
                TaskState::Lost
            }
        }
    }

    pub fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        self.get(&handle.driver)?.stats(handle)
    }

    pub fn set_deadline(&self, handle: &TaskHandle, deadline: Deadline) -> Result<(), DriverError> {
        self.get(&handle.driver)?.set_deadline(handle, deadline)
    }

    /// Removes what run `id` of `driver` left on the host; nothing if the driver is unknown.
    pub fn cleanup(&self, driver: &str, id: &str) {
        if let Ok(d) = self.get(driver) {
            d.cleanup(id);
        }
    }
}
