//! The catalogue of metrics, built once per configuration. Requests refer to metrics by index,
//! so counting costs no string work on the request path; the adapter defines each name with
//! the host once (Envoy shows them as `wasmcustom.<name>` in `/stats`).

use crate::config::{Config, ModelId, RouterId};
use crate::looper::call::OUTCOME_NAMES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MetricId(pub usize);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricDef {
    pub name: String,
    pub kind: MetricKind,
}

/// Gateway-wide counters, in catalogue order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// Requests for a virtual model that reached a looper.
    Requests,
    /// Requests released untouched to the normal route.
    Passthrough,
    /// Local replies such as `GET /v1/models`.
    LocalReplies,
    /// Requests refused by the gateway with a 4xx before any upstream call.
    Rejected,
    Responses2xx,
    Responses4xx,
    Responses5xx,
    /// Clients that went away before their reply.
    ClientAborts,
    /// Calls that moved on to the next model of a failover list.
    Failovers,
    /// Calls still in flight when the reply went out.
    AbandonedCalls,
    /// Confidence moved on to the next candidate.
    Escalations,
    /// Calls not started because a budget (calls, tokens, cost, deadline) forbade them.
    BudgetStops,
    /// ReMoM rounds that ended below their quorum.
    QuorumShortfalls,
    /// Failed calls handled by each failure policy.
    PolicySkip,
    PolicyFail,
    PolicyFallback,
    /// Looper requests refused (503) because the VM ran `limits.max_concurrent_requests`.
    OverloadRejected,
    /// Looper requests answered by the overload recipe instead of their own.
    OverloadDegraded,
}

const GLOBALS: &[(Global, &str)] = &[
    (Global::Requests, "looper.requests_total"),
    (Global::Passthrough, "looper.passthrough_total"),
    (Global::LocalReplies, "looper.local_replies_total"),
    (Global::Rejected, "looper.rejected_total"),
    (Global::Responses2xx, "looper.responses_2xx"),
    (Global::Responses4xx, "looper.responses_4xx"),
    (Global::Responses5xx, "looper.responses_5xx"),
    (Global::ClientAborts, "looper.client_aborts_total"),
    (Global::Failovers, "looper.failovers_total"),
    (Global::AbandonedCalls, "looper.abandoned_calls_total"),
    (Global::Escalations, "looper.escalations_total"),
    (Global::BudgetStops, "looper.budget_stops_total"),
    (Global::QuorumShortfalls, "looper.quorum_shortfalls_total"),
    (Global::PolicySkip, "looper.failures.skip"),
    (Global::PolicyFail, "looper.failures.fail"),
    (Global::PolicyFallback, "looper.failures.fallback"),
    (Global::OverloadRejected, "looper.overload.rejected_total"),
    (Global::OverloadDegraded, "looper.overload.degraded_total"),
];

/// Per virtual model: requests and a latency histogram.
const PER_VIRTUAL: usize = 2;

pub struct MetricCatalog {
    defs: Vec<MetricDef>,
    virtual_base: usize,
    model_base: usize,
    tokens_base: usize,
    /// Per router, where its decision counters start.
    decision_bases: Vec<usize>,
}

/// Per model: prompt and completion tokens of every call that ended before the reply, and the
/// successful calls that reported no usage (their tokens are billed but cannot be counted).
const PER_MODEL_TOKENS: usize = 3;

/// Metric names keep to `[A-Za-z0-9_]` inside each dotted part, so Prometheus output needs no
/// escaping (`vllm-sr/auto` becomes `vllm_sr_auto`).
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl MetricCatalog {
    pub fn new(config: &Config) -> Self {
        let mut defs: Vec<MetricDef> = GLOBALS
            .iter()
            .map(|(_, name)| MetricDef {
                name: (*name).to_string(),
                kind: MetricKind::Counter,
            })
            .collect();
        let virtual_base = defs.len();
        for vm in &config.virtual_models {
            let name = sanitize(&vm.name);
            defs.push(MetricDef {
                name: format!("looper.virtual_model.{name}.requests"),
                kind: MetricKind::Counter,
            });
            defs.push(MetricDef {
                name: format!("looper.virtual_model.{name}.latency_ms"),
                kind: MetricKind::Histogram,
            });
        }
        let model_base = defs.len();
        for model in &config.models {
            let name = sanitize(&model.alias);
            for outcome in OUTCOME_NAMES {
                defs.push(MetricDef {
                    name: format!("looper.model.{name}.calls.{outcome}"),
                    kind: MetricKind::Counter,
                });
            }
        }
        let tokens_base = defs.len();
        for model in &config.models {
            let name = sanitize(&model.alias);
            for kind in ["prompt_tokens", "completion_tokens", "calls_without_usage"] {
                defs.push(MetricDef {
                    name: format!("looper.model.{name}.{kind}"),
                    kind: MetricKind::Counter,
                });
            }
        }
        let mut decision_bases = Vec::with_capacity(config.routers.len());
        for router in &config.routers {
            decision_bases.push(defs.len());
            let name = sanitize(&router.name);
            for decision in &router.decisions {
                defs.push(MetricDef {
                    name: format!("looper.router.{name}.decision.{}", sanitize(&decision.name)),
                    kind: MetricKind::Counter,
                });
            }
        }
        MetricCatalog {
            defs,
            virtual_base,
            model_base,
            tokens_base,
            decision_bases,
        }
    }

    pub fn defs(&self) -> &[MetricDef] {
        &self.defs
    }

    pub fn global(&self, which: Global) -> MetricId {
        let index = GLOBALS.iter().position(|(g, _)| *g == which).unwrap_or(0);
        MetricId(index)
    }

    pub fn virtual_requests(&self, virtual_index: usize) -> MetricId {
        MetricId(self.virtual_base + virtual_index * PER_VIRTUAL)
    }

    pub fn virtual_latency(&self, virtual_index: usize) -> MetricId {
        MetricId(self.virtual_base + virtual_index * PER_VIRTUAL + 1)
    }

    /// `looper.model.<alias>.calls.<outcome>`; `None` for an outcome without a slot.
    pub fn model_call(&self, model: ModelId, outcome: &str) -> Option<MetricId> {
        let slot = OUTCOME_NAMES.iter().position(|o| *o == outcome)?;
        Some(MetricId(
            self.model_base + model.0 * OUTCOME_NAMES.len() + slot,
        ))
    }

    /// `looper.model.<alias>.prompt_tokens` and `.completion_tokens`.
    pub fn model_tokens(&self, model: ModelId) -> (MetricId, MetricId) {
        let base = self.tokens_base + model.0 * PER_MODEL_TOKENS;
        (MetricId(base), MetricId(base + 1))
    }

    /// `looper.model.<alias>.calls_without_usage`.
    pub fn model_calls_without_usage(&self, model: ModelId) -> MetricId {
        MetricId(self.tokens_base + model.0 * PER_MODEL_TOKENS + 2)
    }

    /// `looper.router.<router>.decision.<decision>`; `decision` indexes the router's sorted
    /// decisions.
    pub fn decision(&self, router: RouterId, decision: usize) -> Option<MetricId> {
        let base = self.decision_bases.get(router.0)?;
        Some(MetricId(base + decision))
    }

    pub fn response_class(&self, status: u16) -> MetricId {
        self.global(match status {
            200..=299 => Global::Responses2xx,
            400..=499 => Global::Responses4xx,
            _ => Global::Responses5xx,
        })
    }
}
