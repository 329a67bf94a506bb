//! Custom metrics with Envoy's semantics.
//!
//! `proxy_define_metric` returns a per-VM id whose two low bits encode the type
//! (`Wasm::kMetricTypeMask`; ids grow by 4), while the value lives in the
//! process-wide stats store keyed by name, so every worker VM that defines the same
//! name updates the same stat. Here the store is [`SharedStore`], shared by every
//! [`Vm`] built on it.
//!
//! Semantics copied from Envoy's `Context::incrementMetric/recordMetric/getMetric`:
//! a counter only accepts a positive increment (zero or negative is `BadArgument`),
//! a gauge adds or subtracts, `record` adds to a counter, sets a gauge and samples a
//! histogram, and reading a histogram is `BadArgument`.
//!
//! [`SharedStore`]: crate::SharedStore
//! [`Vm`]: crate::Vm

use std::collections::HashMap;

use crate::abi::Status;
use crate::shared::SharedStore;

/// Metric type of `proxy_define_metric`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge (set, add, subtract).
    Gauge,
    /// Histogram (samples).
    Histogram,
}

impl MetricKind {
    fn from_raw(raw: i32) -> Option<Self> {
        match raw {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }

    fn from_id(id: u32) -> Option<Self> {
        Self::from_raw((id & ID_TYPE_MASK) as i32)
    }

    fn tag(self) -> u32 {
        match self {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
            MetricKind::Histogram => 2,
        }
    }
}

/// The state of one metric, as a test reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Its type.
    pub kind: MetricKind,
    /// Counter or gauge value (gauges wrap like Envoy's `uint64_t` in release builds).
    pub value: u64,
    /// Every histogram sample in recording order.
    pub samples: Vec<u64>,
}

const ID_TYPE_MASK: u32 = 0x3;
const ID_INCREMENT: u32 = 0x4;

/// The per-VM id table.
#[derive(Debug, Default)]
pub(crate) struct MetricIds {
    names: HashMap<u32, String>,
    next: [u32; 3],
}

impl MetricIds {
    /// `proxy_define_metric`: a fresh id for every call, bound to the named stat.
    pub(crate) fn define(
        &mut self,
        shared: &SharedStore,
        raw_kind: i32,
        name: &str,
    ) -> Result<u32, Status> {
        let kind = MetricKind::from_raw(raw_kind).ok_or(Status::BadArgument)?;
        shared.ensure_metric(name, kind)?;
        let slot = &mut self.next[kind.tag() as usize];
        *slot += ID_INCREMENT;
        let id = *slot | kind.tag();
        self.names.insert(id, name.to_string());
        Ok(id)
    }

    fn resolve(&self, id: u32) -> Result<(MetricKind, &str), Status> {
        let kind = MetricKind::from_id(id).ok_or(Status::BadArgument)?;
        let name = self.names.get(&id).ok_or(Status::NotFound)?;
        Ok((kind, name))
    }

    /// `proxy_increment_metric`.
    pub(crate) fn increment(
        &self,
        shared: &SharedStore,
        id: u32,
        offset: i64,
    ) -> Result<(), Status> {
        let kind = MetricKind::from_id(id).ok_or(Status::BadArgument)?;
        if kind == MetricKind::Histogram {
            return Err(Status::BadArgument);
        }
        let (_, name) = self.resolve(id)?;
        shared.update_metric(name, |metric| match kind {
            MetricKind::Counter if offset > 0 => {
                metric.value = metric.value.wrapping_add(offset as u64);
                Ok(())
            }
            MetricKind::Counter => Err(Status::BadArgument),
            _ => {
                metric.value = metric.value.wrapping_add(offset as u64);
                Ok(())
            }
        })
    }

    /// `proxy_record_metric`.
    pub(crate) fn record(&self, shared: &SharedStore, id: u32, value: u64) -> Result<(), Status> {
        let (kind, name) = self.resolve(id).map_err(|_| Status::NotFound)?;
        shared.update_metric(name, |metric| {
            match kind {
                MetricKind::Counter => metric.value = metric.value.wrapping_add(value),
                MetricKind::Gauge => metric.value = value,
                MetricKind::Histogram => metric.samples.push(value),
            }
            Ok(())
        })
    }

    /// `proxy_get_metric`.
    pub(crate) fn get(&self, shared: &SharedStore, id: u32) -> Result<u64, Status> {
        let kind = MetricKind::from_id(id).ok_or(Status::BadArgument)?;
        if kind == MetricKind::Histogram {
            return Err(Status::BadArgument);
        }
        let (_, name) = self.resolve(id)?;
        shared.metric(name).map(|m| m.value).ok_or(Status::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_the_type_like_envoy() {
        let shared = SharedStore::new();
        let mut ids = MetricIds::default();
        assert_eq!(ids.define(&shared, 0, "c").unwrap(), 4);
        assert_eq!(ids.define(&shared, 1, "g").unwrap(), 5);
        assert_eq!(ids.define(&shared, 2, "h").unwrap(), 6);
        assert_eq!(ids.define(&shared, 0, "c2").unwrap(), 8);
        assert_eq!(ids.define(&shared, 3, "x"), Err(Status::BadArgument));
    }

    #[test]
    fn counter_rejects_non_positive_increments() {
        let shared = SharedStore::new();
        let mut ids = MetricIds::default();
        let c = ids.define(&shared, 0, "requests").unwrap();
        ids.increment(&shared, c, 2).unwrap();
        assert_eq!(ids.increment(&shared, c, -1), Err(Status::BadArgument));
        assert_eq!(ids.increment(&shared, c, 0), Err(Status::BadArgument));
        ids.record(&shared, c, 3).unwrap();
        assert_eq!(ids.get(&shared, c), Ok(5));
        assert_eq!(ids.get(&shared, 400), Err(Status::NotFound));
    }

    #[test]
    fn gauges_and_histograms() {
        let shared = SharedStore::new();
        let mut ids = MetricIds::default();
        let g = ids.define(&shared, 1, "inflight").unwrap();
        ids.increment(&shared, g, 3).unwrap();
        ids.increment(&shared, g, -1).unwrap();
        assert_eq!(ids.get(&shared, g), Ok(2));
        ids.record(&shared, g, 7).unwrap();
        assert_eq!(ids.get(&shared, g), Ok(7));
        let h = ids.define(&shared, 2, "latency").unwrap();
        ids.record(&shared, h, 10).unwrap();
        ids.record(&shared, h, 20).unwrap();
        assert_eq!(ids.get(&shared, h), Err(Status::BadArgument));
        assert_eq!(ids.increment(&shared, h, 1), Err(Status::BadArgument));
        assert_eq!(shared.metric("latency").unwrap().samples, vec![10, 20]);
    }

    #[test]
    fn two_vms_share_one_stat_by_name() {
        let shared = SharedStore::new();
        let mut a = MetricIds::default();
        let mut b = MetricIds::default();
        let ida = a.define(&shared, 0, "hits").unwrap();
        let idb = b.define(&shared, 0, "hits").unwrap();
        a.increment(&shared, ida, 1).unwrap();
        b.increment(&shared, idb, 1).unwrap();
        assert_eq!(shared.metric("hits").unwrap().value, 2);
    }
}
