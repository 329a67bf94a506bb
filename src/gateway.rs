//! What one plugin VM shares between its requests: the validated configuration, the metric
//! catalogue, the response id generator and the count of looper requests running. Rebuilt on
//! every `on_configure`; requests already running keep the generation they started with (and
//! count against its cap, not the new one's).

use crate::config::Config;
use crate::exchange::Exchange;
use crate::ids::IdGenerator;
use crate::metrics::MetricCatalog;
use crate::time::Millis;
use std::cell::Cell;
use std::rc::Rc;

pub struct Gateway {
    config: Rc<Config>,
    metrics: MetricCatalog,
    ids: IdGenerator,
    /// Looper requests holding an [`Admission`].
    running: Cell<usize>,
}

/// A looper request's place under `limits.max_concurrent_requests`, given back when dropped,
/// so no path through a request (reply, error, client abort) can leak one.
pub struct Admission {
    gateway: Rc<Gateway>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let running = &self.gateway.running;
        running.set(running.get().saturating_sub(1));
    }
}

impl Gateway {
    /// `id_seed` and `nonce_seed` must be independent random values.
    pub fn new(config: Config, id_seed: u64, nonce_seed: u64) -> Rc<Gateway> {
        let metrics = MetricCatalog::new(&config);
        Rc::new(Gateway {
            config: Rc::new(config),
            metrics,
            ids: IdGenerator::new(id_seed, nonce_seed),
            running: Cell::new(0),
        })
    }

    pub fn config(&self) -> &Rc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &MetricCatalog {
        &self.metrics
    }

    pub fn ids(&self) -> &IdGenerator {
        &self.ids
    }

    /// A place for one more looper request, or `None` when the VM already runs its maximum.
    pub fn admit(self: &Rc<Self>) -> Option<Admission> {
        let running = self.running.get();
        if running >= self.config.limits.max_concurrent_requests {
            return None;
        }
        self.running.set(running + 1);
        Some(Admission {
            gateway: Rc::clone(self),
        })
    }

    /// Looper requests running now.
    pub fn running(&self) -> usize {
        self.running.get()
    }

    /// A new request.
    pub fn exchange(self: &Rc<Self>, now: Millis) -> Exchange {
        Exchange::new(Rc::clone(self), now)
    }
}
