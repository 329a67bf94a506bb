//! Counters served by `GET /sim/stats` and `GET /sim/usage` (per item bank
//! tag), zeroed by `POST /sim/reset`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Map, Value};

use crate::completion::Usage;
use crate::faults::FaultKind;

/// What a response contributes to the question counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Choices that answered a keyed question correctly / wrongly.
    pub answers_correct: u64,
    pub answers_wrong: u64,
    /// Verifier requests answered, and those among them whose key or
    /// proposed answer could not be found.
    pub verifications: u64,
    pub verifications_invalid: u64,
    /// Judge requests answered (Ratings and Fusion judges).
    pub judgements: u64,
    /// Synthesis requests answered (ReMoM synthesis and later rounds,
    /// Fusion finalizer).
    pub syntheses: u64,
    /// Planner replies (choices) delivered, and those among them that are
    /// not a valid plan.
    pub plans: u64,
    pub plans_invalid: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.answers_correct = self.answers_correct.saturating_add(o.answers_correct);
        self.answers_wrong = self.answers_wrong.saturating_add(o.answers_wrong);
        self.verifications = self.verifications.saturating_add(o.verifications);
        self.verifications_invalid = self
            .verifications_invalid
            .saturating_add(o.verifications_invalid);
        self.judgements = self.judgements.saturating_add(o.judgements);
        self.syntheses = self.syntheses.saturating_add(o.syntheses);
        self.plans = self.plans.saturating_add(o.plans);
        self.plans_invalid = self.plans_invalid.saturating_add(o.plans_invalid);
    }

    fn sub(&mut self, o: &Tally) {
        self.answers_correct = self.answers_correct.saturating_sub(o.answers_correct);
        self.answers_wrong = self.answers_wrong.saturating_sub(o.answers_wrong);
        self.verifications = self.verifications.saturating_sub(o.verifications);
        self.verifications_invalid = self
            .verifications_invalid
            .saturating_sub(o.verifications_invalid);
        self.judgements = self.judgements.saturating_sub(o.judgements);
        self.syntheses = self.syntheses.saturating_sub(o.syntheses);
        self.plans = self.plans.saturating_sub(o.plans);
        self.plans_invalid = self.plans_invalid.saturating_sub(o.plans_invalid);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Valid chat requests routed to this model (also the per-model counter
    /// that seeds the `failure_rates` draw).
    pub requests: u64,
    /// Responses sent completely, with status 200 and no fault.
    pub ok_responses: u64,
    /// Sums of the `usage` actually sent (including a stream's usage chunk).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests whose client went away before the response was fully sent
    /// (during latency, a hang, a slow drip or a stream).
    pub cancelled: u64,
    /// Requests refused because their prompt exceeds the model's
    /// `context_tokens` (400, no tokens served).
    pub context_overflows: u64,
    pub faults: BTreeMap<FaultKind, u64>,
    /// Keyed answers, verifications, judgements, syntheses and plans actually delivered.
    pub tally: Tally,
}

impl ModelStats {
    fn add(&mut self, other: &ModelStats) {
        self.requests += other.requests;
        self.ok_responses += other.ok_responses;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cancelled += other.cancelled;
        self.context_overflows += other.context_overflows;
        self.tally.add(&other.tally);
        for (k, v) in &other.faults {
            *self.faults.entry(*k).or_default() += v;
        }
    }

    fn to_json(&self) -> Map<String, Value> {
        let faults: Map<String, Value> = FaultKind::ALL
            .iter()
            .map(|k| {
                (
                    k.name().to_string(),
                    json!(self.faults.get(k).copied().unwrap_or(0)),
                )
            })
            .collect();
        let mut m = Map::new();
        m.insert("requests".into(), json!(self.requests));
        m.insert("ok_responses".into(), json!(self.ok_responses));
        m.insert("prompt_tokens".into(), json!(self.prompt_tokens));
        m.insert("completion_tokens".into(), json!(self.completion_tokens));
        m.insert("cancelled".into(), json!(self.cancelled));
        m.insert("context_overflows".into(), json!(self.context_overflows));
        let t = &self.tally;
        m.insert("answers_correct".into(), json!(t.answers_correct));
        m.insert("answers_wrong".into(), json!(t.answers_wrong));
        m.insert("verifications".into(), json!(t.verifications));
        m.insert(
            "verifications_invalid".into(),
            json!(t.verifications_invalid),
        );
        m.insert("judgements".into(), json!(t.judgements));
        m.insert("syntheses".into(), json!(t.syntheses));
        m.insert("plans".into(), json!(t.plans));
        m.insert("plans_invalid".into(), json!(t.plans_invalid));
        m.insert("faults".into(), Value::Object(faults));
        m
    }
}

/// One entry of the usage log: requests and the usage reported for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl ItemUsage {
    fn to_json(self) -> Value {
        json!({
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    models: BTreeMap<String, ModelStats>,
    /// Chat requests rejected before reaching a model (400/404).
    rejected: u64,
    /// The usage log by item bank tag. Only known tags get here, so it
    /// holds at most the bank's size entries.
    items: HashMap<String, ItemUsage>,
    /// The usage log of requests without a tag.
    untagged: ItemUsage,
}

impl Inner {
    fn usage_entry(&mut self, tag: Option<&str>) -> &mut ItemUsage {
        match tag {
            Some(t) => self.items.entry(t.to_string()).or_default(),
            None => &mut self.untagged,
        }
    }
}

/// Thread-safe stats. A poisoned lock is recovered, never propagated.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
    /// Chat requests being handled now; tests wait for zero before comparing token counts.
    in_flight: AtomicU64,
}

/// Counts a chat request as in flight until dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stats {
    pub fn new<'a>(models: impl IntoIterator<Item = &'a String>) -> Self {
        let stats = Stats::default();
        stats.lock().models = models
            .into_iter()
            .map(|m| (m.clone(), ModelStats::default()))
            .collect();
        stats
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_model(&self, model: &str, f: impl FnOnce(&mut ModelStats)) {
        let mut inner = self.lock();
        if let Some(m) = inner.models.get_mut(model) {
            f(m);
        }
    }

    /// Marks a chat request in flight for the guard's lifetime.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(&self.in_flight)
    }

    /// Counts a request (for `model`, and in the usage log under its item
    /// bank `tag`) and returns the model's previous request count.
    pub fn begin_request(&self, model: &str, tag: Option<&str>) -> u64 {
        let mut inner = self.lock();
        let Some(m) = inner.models.get_mut(model) else {
            return 0;
        };
        let counter = m.requests;
        m.requests += 1;
        inner.usage_entry(tag).requests += 1;
        counter
    }

    pub fn fault(&self, model: &str, kind: FaultKind) {
        self.with_model(model, |m| *m.faults.entry(kind).or_default() += 1);
    }

    pub fn cancelled(&self, model: &str) {
        self.with_model(model, |m| m.cancelled += 1);
    }

    pub fn context_overflow(&self, model: &str) {
        self.with_model(model, |m| m.context_overflows += 1);
    }

    /// Records a response about to be completed: the usage it reports (if
    /// any, also in the usage log under `tag`), whether it counts as ok,
    /// and its question counters.
    pub fn commit(
        &self,
        model: &str,
        tag: Option<&str>,
        usage: Option<Usage>,
        ok: bool,
        tally: &Tally,
    ) {
        let mut inner = self.lock();
        let Some(m) = inner.models.get_mut(model) else {
            return;
        };
        m.tally.add(tally);
        if let Some(u) = usage {
            m.prompt_tokens = m.prompt_tokens.saturating_add(u.prompt_tokens);
            m.completion_tokens = m.completion_tokens.saturating_add(u.completion_tokens);
        }
        m.ok_responses += u64::from(ok);
        if let Some(u) = usage {
            let e = inner.usage_entry(tag);
            e.prompt_tokens = e.prompt_tokens.saturating_add(u.prompt_tokens);
            e.completion_tokens = e.completion_tokens.saturating_add(u.completion_tokens);
        }
    }

    /// Takes back a [`Stats::commit`] whose response could not be sent.
    pub fn uncommit(
        &self,
        model: &str,
        tag: Option<&str>,
        usage: Option<Usage>,
        ok: bool,
        tally: &Tally,
    ) {
        let mut inner = self.lock();
        let Some(m) = inner.models.get_mut(model) else {
            return;
        };
        m.tally.sub(tally);
        if let Some(u) = usage {
            m.prompt_tokens = m.prompt_tokens.saturating_sub(u.prompt_tokens);
            m.completion_tokens = m.completion_tokens.saturating_sub(u.completion_tokens);
        }
        m.ok_responses = m.ok_responses.saturating_sub(u64::from(ok));
        if let Some(u) = usage {
            let e = inner.usage_entry(tag);
            e.prompt_tokens = e.prompt_tokens.saturating_sub(u.prompt_tokens);
            e.completion_tokens = e.completion_tokens.saturating_sub(u.completion_tokens);
        }
    }

    pub fn rejected(&self) {
        self.lock().rejected += 1;
    }

    pub fn reset(&self) {
        let mut inner = self.lock();
        for m in inner.models.values_mut() {
            *m = ModelStats::default();
        }
        inner.rejected = 0;
        inner.items.clear();
        inner.untagged = ItemUsage::default();
    }

    /// The usage log entry of `tag` (`None`: the untagged requests).
    pub fn item_usage(&self, tag: Option<&str>) -> ItemUsage {
        let inner = self.lock();
        match tag {
            Some(t) => inner.items.get(t).copied().unwrap_or_default(),
            None => inner.untagged,
        }
    }

    /// `{"items": {tag: {"requests", "prompt_tokens", "completion_tokens"}},
    /// "untagged": {...}}`, tags sorted.
    pub fn usage_json(&self) -> Value {
        let inner = self.lock();
        let sorted: BTreeMap<&String, &ItemUsage> = inner.items.iter().collect();
        let items: Map<String, Value> = sorted
            .into_iter()
            .map(|(t, u)| (t.clone(), u.to_json()))
            .collect();
        json!({"items": items, "untagged": inner.untagged.to_json()})
    }

    pub fn snapshot(&self, model: &str) -> Option<ModelStats> {
        self.lock().models.get(model).cloned()
    }

    /// `{"models": {name: {...}}, "totals": {..., "rejected": n}}`.
    pub fn to_json(&self) -> Value {
        let inner = self.lock();
        let mut totals = ModelStats::default();
        let mut models = Map::new();
        for (name, m) in &inner.models {
            totals.add(m);
            models.insert(name.clone(), Value::Object(m.to_json()));
        }
        let mut totals = totals.to_json();
        totals.insert("rejected".into(), json!(inner.rejected));
        totals.insert(
            "in_flight".into(),
            json!(self.in_flight.load(Ordering::SeqCst)),
        );
        json!({"models": models, "totals": totals})
    }
}
