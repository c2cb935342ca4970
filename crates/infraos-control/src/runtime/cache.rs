//! The typed cache a controller reconciles from (kube-runtime's reflector store): the
//! watched prefix decoded once per change, handed out as `Arc`s that are never mutated in
//! place. A relist replaces it whole, so a reader never sees half of two states.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use infraos_store::{EventKind, KeyValue};
use serde::de::DeserializeOwned;

use crate::reflector::Change;

/// Which stored objects a controller cares about, judged on the raw bytes before decoding
/// (a field selector): the others are absent from its cache, and cost no decoding.
pub type Select = fn(&[u8]) -> bool;

/// What a change did to one key of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touched {
    Put(String),
    Deleted(String),
}

pub struct Cache<T> {
    objects: HashMap<String, Arc<T>>,
    select: Option<Select>,
}

impl<T: DeserializeOwned> Cache<T> {
    pub fn new(select: Option<Select>) -> Self {
        Cache {
            objects: HashMap::new(),
            select,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.objects.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.objects.keys()
    }

    /// Applies a change from the watcher; answers the keys it touched, in order.
    pub fn apply<S>(&mut self, change: &Change<S>) -> Vec<Touched> {
        match change {
            Change::Resync(_, kvs, _) => {
                let mut fresh = HashMap::with_capacity(kvs.len());
                let mut touched = Vec::with_capacity(kvs.len());
                for kv in kvs {
                    if let Some(object) = self.decode(kv) {
                        fresh.insert(kv.key.clone(), object);
                        touched.push(Touched::Put(kv.key.clone()));
                    }
                }
                let old = std::mem::replace(&mut self.objects, fresh);
                for key in old.into_keys() {
                    if !self.objects.contains_key(&key) {
                        touched.push(Touched::Deleted(key));
                    }
                }
                touched
            }
            Change::Events(_, events) => {
                let mut touched = Vec::with_capacity(events.len());
                for event in events.iter() {
                    let key = &event.kv.key;
                    let object = match event.kind {
                        EventKind::Put => self.decode(&event.kv),
                        EventKind::Delete => None,
                    };
                    match object {
                        Some(object) => {
                            self.objects.insert(key.clone(), object);
                            touched.push(Touched::Put(key.clone()));
                        }
                        None => {
                            if self.objects.remove(key).is_some() {
                                touched.push(Touched::Deleted(key.clone()));
                            }
                        }
                    }
                }
                touched
            }
        }
    }

    fn decode(&self, kv: &KeyValue) -> Option<Arc<T>> {
        if let Some(select) = self.select
            && !select(&kv.value)
        {
            return None;
        }
        match serde_json::from_slice::<T>(&kv.value) {
            Ok(object) => Some(Arc::new(object)),
            Err(e) => {
                tracing::error!(key = %kv.key, error = %e, "cannot decode a watched object");
                None
            }
        }
    }
}
