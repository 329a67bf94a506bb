//! Process-wide state that Envoy shares between the worker VMs of one plugin:
//! shared data (key/value with compare-and-swap), shared queues, and the stats
//! store behind custom metrics.
//!
//! Every [`Vm`] owns a handle; pass the same [`SharedStore`] to several VMs
//! ([`VmOptions::shared`]) to model several workers of one Envoy. The handle is an
//! `Arc<Mutex<..>>` so a `Vm` stays `Send`; there is no global state, so tests that
//! do not share a store stay independent and can run in parallel.
//!
//! Semantics follow proxy-wasm-cpp-host `SharedData` and `SharedQueue`: data and
//! queues are scoped by `vm_id`; CAS values come from one counter starting at 1
//! (0 is never handed out, and a CAS of 0 means "unconditional"); removing a key with
//! the SDK's `remove_shared_data` stores an empty value, as Envoy does; queue ids come
//! from one counter and re-registering a name returns the existing id.
//!
//! [`Vm`]: crate::Vm
//! [`VmOptions::shared`]: crate::VmOptions::shared

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::Status;
use crate::metrics::{Metric, MetricKind};

/// Handle to the state shared by the VMs of one simulated Envoy process.
#[derive(Clone, Default)]
pub struct SharedStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("SharedStore")
            .field("keys", &inner.data.len())
            .field("queues", &inner.queues.len())
            .field("metrics", &inner.metrics.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    data: HashMap<(String, String), (Vec<u8>, u32)>,
    last_cas: u32,
    queues: Vec<Queue>,
    ready: Vec<QueueReady>,
    metrics: BTreeMap<String, Metric>,
    last_vm: u64,
}

struct Queue {
    vm_id: String,
    name: String,
    owner_vm: u64,
    owner_context: u32,
    items: VecDeque<Vec<u8>>,
}

/// A pending `proxy_on_queue_ready` for the VM that registered the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueReady {
    pub vm: u64,
    pub context: u32,
    pub queue: u32,
}

impl SharedStore {
    /// A fresh, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not hide the state from
        // the next assertion; the data is plain values, so poisoning is harmless.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Allocates the identity of a new VM (used to route queue notifications).
    pub(crate) fn register_vm(&self) -> u64 {
        let mut inner = self.lock();
        inner.last_vm += 1;
        inner.last_vm
    }

    /// The value and CAS of a key, as `proxy_get_shared_data` sees it.
    pub fn get_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock()
            .data
            .get(&(vm_id.to_string(), key.to_string()))
            .cloned()
    }

    /// `proxy_set_shared_data`: `cas == 0` writes unconditionally; otherwise the
    /// stored CAS must match or the result is `CasMismatch`.
    pub(crate) fn set_data(
        &self,
        vm_id: &str,
        key: &str,
        value: Vec<u8>,
        cas: u32,
    ) -> Result<(), Status> {
        let mut inner = self.lock();
        let slot = (vm_id.to_string(), key.to_string());
        if let Some((_, current)) = inner.data.get(&slot) {
            if cas != 0 && cas != *current {
                return Err(Status::CasMismatch);
            }
        }
        inner.last_cas = inner.last_cas.wrapping_add(1);
        if inner.last_cas == 0 {
            inner.last_cas = 1;
        }
        let next = inner.last_cas;
        inner.data.insert(slot, (value, next));
        Ok(())
    }

    /// Seeds or overwrites a key from a test (unconditional write).
    pub fn put_data(&self, vm_id: &str, key: &str, value: impl Into<Vec<u8>>) {
        // An unconditional write cannot mismatch.
        let _ = self.set_data(vm_id, key, value.into(), 0);
    }

    /// `proxy_register_shared_queue`.
    pub(crate) fn register_queue(&self, vm_id: &str, name: &str, vm: u64, context: u32) -> u32 {
        let mut inner = self.lock();
        if let Some(index) = inner
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
        {
            if let Some(queue) = inner.queues.get_mut(index) {
                queue.owner_vm = vm;
                queue.owner_context = context;
            }
            return queue_id(index);
        }
        inner.queues.push(Queue {
            vm_id: vm_id.to_string(),
            name: name.to_string(),
            owner_vm: vm,
            owner_context: context,
            items: VecDeque::new(),
        });
        queue_id(inner.queues.len() - 1)
    }

    /// `proxy_resolve_shared_queue`.
    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.lock()
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(queue_id)
    }

    /// `proxy_enqueue_shared_queue`; schedules `proxy_on_queue_ready` for the owner.
    pub fn enqueue(&self, queue: u32, value: impl Into<Vec<u8>>) -> Result<(), Status> {
        let mut inner = self.lock();
        let entry = inner
            .queues
            .get_mut(queue_index(queue)?)
            .ok_or(Status::NotFound)?;
        entry.items.push_back(value.into());
        let ready = QueueReady {
            vm: entry.owner_vm,
            context: entry.owner_context,
            queue,
        };
        inner.ready.push(ready);
        Ok(())
    }

    /// `proxy_dequeue_shared_queue`: `Empty` when there is nothing to take.
    pub fn dequeue(&self, queue: u32) -> Result<Vec<u8>, Status> {
        let mut inner = self.lock();
        let entry = inner
            .queues
            .get_mut(queue_index(queue)?)
            .ok_or(Status::NotFound)?;
        entry.items.pop_front().ok_or(Status::Empty)
    }

    /// Items waiting in a queue, oldest first.
    pub fn queue_items(&self, queue: u32) -> Option<Vec<Vec<u8>>> {
        let inner = self.lock();
        let entry = inner.queues.get(queue_index(queue).ok()?)?;
        Some(entry.items.iter().cloned().collect())
    }

    /// Takes the queue notifications addressed to `vm`, in enqueue order.
    pub(crate) fn take_ready(&self, vm: u64) -> Vec<QueueReady> {
        let mut inner = self.lock();
        let (mine, others): (Vec<_>, Vec<_>) = inner.ready.drain(..).partition(|r| r.vm == vm);
        inner.ready = others;
        mine
    }

    /// Every metric by name.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        self.lock().metrics.clone()
    }

    /// One metric by name.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.lock().metrics.get(name).cloned()
    }

    pub(crate) fn ensure_metric(&self, name: &str, kind: MetricKind) -> Result<(), Status> {
        let mut inner = self.lock();
        let metric = inner.metrics.entry(name.to_string()).or_insert(Metric {
            kind,
            value: 0,
            samples: Vec::new(),
        });
        if metric.kind == kind {
            Ok(())
        } else {
            Err(Status::BadArgument)
        }
    }

    pub(crate) fn update_metric(
        &self,
        name: &str,
        update: impl FnOnce(&mut Metric) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let mut inner = self.lock();
        let metric = inner.metrics.get_mut(name).ok_or(Status::NotFound)?;
        update(metric)
    }
}

fn queue_id(index: usize) -> u32 {
    index as u32 + 1
}

fn queue_index(id: u32) -> Result<usize, Status> {
    (id as usize).checked_sub(1).ok_or(Status::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_starts_at_one_and_guards_updates() {
        let store = SharedStore::new();
        store.set_data("", "k", b"a".to_vec(), 0).unwrap();
        let (value, cas) = store.get_data("", "k").unwrap();
        assert_eq!((value.as_slice(), cas), (&b"a"[..], 1));
        assert_eq!(
            store.set_data("", "k", b"b".to_vec(), 7),
            Err(Status::CasMismatch)
        );
        store.set_data("", "k", b"b".to_vec(), cas).unwrap();
        assert_eq!(store.get_data("", "k").unwrap(), (b"b".to_vec(), 2));
        assert_eq!(store.get_data("other-vm", "k"), None);
    }

    #[test]
    fn queues_notify_their_owner() {
        let store = SharedStore::new();
        let id = store.register_queue("", "q", 1, 7);
        assert_eq!(store.register_queue("", "q", 1, 7), id);
        assert_eq!(store.resolve_queue("", "q"), Some(id));
        assert_eq!(store.resolve_queue("", "nope"), None);
        assert_eq!(store.dequeue(id), Err(Status::Empty));
        store.enqueue(id, b"x".to_vec()).unwrap();
        assert_eq!(store.take_ready(2), vec![]);
        assert_eq!(
            store.take_ready(1),
            vec![QueueReady {
                vm: 1,
                context: 7,
                queue: id
            }]
        );
        assert_eq!(store.dequeue(id), Ok(b"x".to_vec()));
        assert_eq!(store.enqueue(99, b"x".to_vec()), Err(Status::NotFound));
        assert_eq!(store.dequeue(0), Err(Status::NotFound));
    }
}
