//! The runtime every algorithm runs on: it owns the request's budget (call count, concurrency,
//! per-call timeout, deadline), the calls and their trace, and the usage and cost summed over
//! every call. Algorithms ask it to dispatch and to finish; it refuses what the budget forbids.

use super::call::{CallId, CallOutcome};
use crate::config::{Config, ModelId, Recipe};
use crate::openai::{ApiError, ChatRequest, UpstreamCompletion, Usage};
use crate::time::Millis;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::rc::Rc;

/// What the looper asks of its host.
#[derive(Debug, PartialEq)]
pub enum LooperCommand {
    /// Start a call. `timeout_ms` never reaches past the request deadline.
    Dispatch {
        call: CallId,
        model: ModelId,
        body: Vec<u8>,
        timeout_ms: u64,
    },
    /// A call ended (for metrics: outcome by model).
    CallFinished {
        call: CallId,
        model: ModelId,
        outcome: &'static str,
    },
    /// The algorithm moved on to the next model after a failure.
    Failover,
    /// The looper has its final result; see [`super::Looper::take_result`].
    Finished,
}

/// Why the runtime refused to start a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    MaxCalls,
    Deadline,
    Finished,
}

impl Stop {
    pub fn describe(&self) -> &'static str {
        match self {
            Stop::MaxCalls => "max_calls budget reached",
            Stop::Deadline => "request deadline reached",
            Stop::Finished => "request already finished",
        }
    }
}

/// The successful end of a looper.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// An upstream completion returned as the reply (its choices as sent).
    Upstream {
        model: ModelId,
        completion: UpstreamCompletion,
    },
}

impl Answer {
    pub fn model(&self) -> ModelId {
        match self {
            Answer::Upstream { model, .. } => *model,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    Queued,
    InFlight,
    Done,
    /// Still in flight when the looper finished; its result is no longer waited for.
    Abandoned,
}

/// One sub-call as the trace shows it.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub id: CallId,
    pub role: &'static str,
    pub model: ModelId,
    pub state: CallState,
    pub queued_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub timeout_ms: u64,
    pub outcome: Option<&'static str>,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub usage: Option<Usage>,
    pub cost: f64,
    /// The body waits here while the call is queued behind the concurrency limit.
    pending_body: Option<Vec<u8>>,
}

pub struct Runtime {
    config: Rc<Config>,
    recipe: Rc<Recipe>,
    request: Rc<ChatRequest>,
    started: Millis,
    deadline: Millis,
    deadline_ms: u64,
    now: Millis,
    max_concurrent: usize,
    calls: Vec<CallRecord>,
    queue: VecDeque<CallId>,
    in_flight: usize,
    usage: Usage,
    cost: f64,
    commands: VecDeque<LooperCommand>,
    result: Option<Result<Answer, ApiError>>,
    finished: bool,
    stop_reason: Option<String>,
    notes: Vec<String>,
}

impl Runtime {
    pub fn new(
        config: Rc<Config>,
        recipe: Rc<Recipe>,
        request: Rc<ChatRequest>,
        now: Millis,
    ) -> Self {
        let deadline_ms = recipe
            .budget
            .deadline_ms
            .unwrap_or(config.limits.request_deadline_ms);
        let max_concurrent = recipe.budget.max_concurrent.max(1) as usize;
        Runtime {
            config,
            recipe,
            request,
            started: now,
            deadline: now.plus(deadline_ms),
            deadline_ms,
            now,
            max_concurrent,
            calls: Vec::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            usage: Usage::default(),
            cost: 0.0,
            commands: VecDeque::new(),
            result: None,
            finished: false,
            stop_reason: None,
            notes: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    pub fn request(&self) -> &ChatRequest {
        &self.request
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn deadline(&self) -> Millis {
        self.deadline
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    pub fn is_past_deadline(&self) -> bool {
        self.now >= self.deadline
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn calls(&self) -> &[CallRecord] {
        &self.calls
    }

    pub fn call(&self, id: CallId) -> Option<&CallRecord> {
        self.calls.get(id.0 as usize)
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    pub fn cost(&self) -> f64 {
        self.cost
    }

    /// Adds a line to the trace (a budget stop, a failover, a decision).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Notes in the trace (and metrics) that `model` is tried because an earlier one failed.
    pub fn failover(&mut self, model: ModelId) {
        let alias = self.alias(model).to_string();
        self.note(format!("failover to {alias}"));
        self.commands.push_back(LooperCommand::Failover);
    }

    pub(super) fn set_now(&mut self, now: Millis) {
        // Time never goes backwards, even if the host's clock does.
        self.now = self.now.max(now);
    }

    pub(super) fn poll_command(&mut self) -> Option<LooperCommand> {
        self.commands.pop_front()
    }

    pub(super) fn take_result(&mut self) -> Option<Result<Answer, ApiError>> {
        self.result.take()
    }

    /// Queues a call to `model`; it starts at once unless `max_concurrent` calls are in flight.
    /// Refused once the call budget is spent, the deadline has passed or the looper finished;
    /// the refusal is noted in the trace.
    pub fn dispatch(
        &mut self,
        model: ModelId,
        role: &'static str,
        body: Vec<u8>,
    ) -> Result<CallId, Stop> {
        let refusal = if self.finished {
            Some(Stop::Finished)
        } else if self.calls.len() >= self.recipe.budget.max_calls as usize {
            Some(Stop::MaxCalls)
        } else if self.is_past_deadline() {
            Some(Stop::Deadline)
        } else {
            None
        };
        if let Some(stop) = refusal {
            let alias = self.alias(model);
            self.note(format!("not calling {alias} ({role}): {}", stop.describe()));
            return Err(stop);
        }
        let id = CallId(self.calls.len() as u32);
        self.calls.push(CallRecord {
            id,
            role,
            model,
            state: CallState::Queued,
            queued_at: self.now,
            started_at: None,
            finished_at: None,
            timeout_ms: 0,
            outcome: None,
            status: None,
            error: None,
            usage: None,
            cost: 0.0,
            pending_body: Some(body),
        });
        self.queue.push_back(id);
        self.pump();
        Ok(id)
    }

    /// Starts queued calls while there is room and time. The looper calls it after the
    /// algorithm has reacted to an event, so a call is never started for a request the
    /// algorithm just finished.
    pub(super) fn pump(&mut self) {
        while self.in_flight < self.max_concurrent && !self.finished {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let remaining = self.deadline.since(self.now);
            let Some(record) = self.calls.get_mut(id.0 as usize) else {
                continue;
            };
            let model_timeout = self
                .config
                .model(record.model)
                .map_or(remaining, |m| m.timeout_ms);
            let timeout_ms = model_timeout
                .min(self.recipe.budget.call_timeout_ms.unwrap_or(u64::MAX))
                .min(remaining);
            if timeout_ms == 0 {
                // Out of time: the queued call never starts.
                record.state = CallState::Done;
                record.outcome = Some("skipped");
                record.error = Some(Stop::Deadline.describe().to_string());
                record.pending_body = None;
                continue;
            }
            record.state = CallState::InFlight;
            record.started_at = Some(self.now);
            record.timeout_ms = timeout_ms;
            let body = record.pending_body.take().unwrap_or_default();
            self.in_flight += 1;
            self.commands.push_back(LooperCommand::Dispatch {
                call: id,
                model: record.model,
                body,
                timeout_ms,
            });
        }
    }

    /// Records a finished call: usage and cost count whether it succeeded or not. Returns
    /// false for calls that are not in flight (unknown, or abandoned after the looper ended).
    pub(super) fn record_result(&mut self, id: CallId, outcome: &CallOutcome) -> bool {
        let now = self.now;
        let Some(record) = self.calls.get_mut(id.0 as usize) else {
            return false;
        };
        if record.state != CallState::InFlight {
            return false;
        }
        record.state = CallState::Done;
        record.finished_at = Some(now);
        record.outcome = Some(outcome.name());
        record.status = outcome.status();
        if let CallOutcome::Failed { kind, .. } = outcome {
            record.error = Some(kind.describe());
        }
        if let Some(usage) = outcome.usage() {
            record.usage = Some(*usage);
            let price = self.config.model(record.model).map(|m| m.price);
            record.cost = price.map_or(0.0, |p| {
                p.cost(usage.prompt_tokens, usage.completion_tokens)
            });
            self.usage.add(usage);
            self.cost += record.cost;
        }
        let model = record.model;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.commands.push_back(LooperCommand::CallFinished {
            call: id,
            model,
            outcome: outcome.name(),
        });
        true
    }

    /// Ends the looper. Calls still in flight are abandoned; queued ones, and dispatches the
    /// host has not picked up yet, never start.
    pub fn finish(&mut self, result: Result<Answer, ApiError>, why: impl Into<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.stop_reason = Some(why.into());
        let mut unsent = Vec::new();
        self.commands.retain(|command| match command {
            LooperCommand::Dispatch { call, .. } => {
                unsent.push(*call);
                false
            }
            _ => true,
        });
        for id in unsent {
            if let Some(record) = self.calls.get_mut(id.0 as usize) {
                record.state = CallState::Done;
                record.outcome = Some("skipped");
                record.started_at = None;
                record.timeout_ms = 0;
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
        for id in self.queue.drain(..) {
            if let Some(record) = self.calls.get_mut(id.0 as usize) {
                record.state = CallState::Done;
                record.outcome = Some("skipped");
                record.pending_body = None;
            }
        }
        for record in &mut self.calls {
            if record.state == CallState::InFlight {
                record.state = CallState::Abandoned;
            }
        }
        self.result = Some(result);
        self.commands.push_back(LooperCommand::Finished);
    }

    pub fn abandoned_calls(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| c.state == CallState::Abandoned)
            .count()
    }

    pub fn alias(&self, model: ModelId) -> &str {
        self.config.model(model).map_or("?", |m| m.alias.as_str())
    }

    /// Model aliases in call order (calls that started).
    pub fn models_used(&self) -> Vec<&str> {
        self.calls
            .iter()
            .filter(|c| c.started_at.is_some())
            .map(|c| self.alias(c.model))
            .collect()
    }

    /// Number of calls that were started.
    pub fn calls_started(&self) -> usize {
        self.calls.iter().filter(|c| c.started_at.is_some()).count()
    }

    /// The `looper_trace` object: every call and why the loop stopped.
    pub fn trace(&self) -> Value {
        let steps: Vec<Value> = self
            .calls
            .iter()
            .map(|c| {
                let latency = match (c.started_at, c.finished_at) {
                    (Some(s), Some(f)) => json!(f.since(s)),
                    _ => Value::Null,
                };
                json!({
                    "call": c.id.0,
                    "role": c.role,
                    "model": self.alias(c.model),
                    "state": match c.state {
                        CallState::Queued => "queued",
                        CallState::InFlight => "in_flight",
                        CallState::Done => "done",
                        CallState::Abandoned => "abandoned",
                    },
                    "outcome": c.outcome,
                    "status": c.status,
                    "error": c.error,
                    "started_ms": c.started_at.map(|s| s.since(self.started)),
                    "latency_ms": latency,
                    "timeout_ms": c.timeout_ms,
                    "usage": c.usage.map(|u| u.to_json()),
                    "cost": c.cost,
                })
            })
            .collect();
        json!({
            "recipe": self.recipe.name,
            "algorithm": self.recipe.algorithm.name(),
            "budget": {
                "max_calls": self.recipe.budget.max_calls,
                "deadline_ms": self.deadline_ms,
            },
            "steps": steps,
            "notes": self.notes,
            "stop_reason": self.stop_reason,
            "abandoned_calls": self.abandoned_calls(),
            "usage": self.usage.to_json(),
            "cost": self.cost,
        })
    }
}
