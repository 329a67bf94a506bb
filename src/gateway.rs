//! What one plugin VM shares between its requests: the validated configuration, the metric
//! catalogue and the response id generator. Rebuilt on every `on_configure`; requests already
//! running keep the generation they started with.

use crate::config::Config;
use crate::exchange::Exchange;
use crate::ids::IdGenerator;
use crate::metrics::MetricCatalog;
use crate::time::Millis;
use std::rc::Rc;

pub struct Gateway {
    config: Rc<Config>,
    metrics: MetricCatalog,
    ids: IdGenerator,
}

impl Gateway {
    /// `id_seed` and `nonce_seed` must be independent random values.
    pub fn new(config: Config, id_seed: u64, nonce_seed: u64) -> Rc<Gateway> {
        let metrics = MetricCatalog::new(&config);
        Rc::new(Gateway {
            config: Rc::new(config),
            metrics,
            ids: IdGenerator::new(id_seed, nonce_seed),
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

    /// A new request.
    pub fn exchange(self: &Rc<Self>, now: Millis) -> Exchange {
        Exchange::new(Rc::clone(self), now)
    }
}
