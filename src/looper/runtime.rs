//! The runtime every algorithm runs on: it owns the request's budget (call count, concurrency,
//! per-call timeout, deadline, tokens, cost), the calls and their trace, the failure policy,
//! and the usage and cost summed over every call. Algorithms ask it to dispatch and to finish;
//! it refuses what the budget forbids and says so in the trace.

use super::call::{CallId, CallOutcome, FailureKind};
use crate::config::{Config, FailurePolicy, ModelId, Recipe};
use crate::openai::json_text;
use crate::openai::{ApiError, ChatRequest, Edit, UpstreamCompletion, Usage};
use crate::prompt;
use crate::time::Millis;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::rc::Rc;

/// Completion tokens assumed for a call whose request sets no `max_tokens`, when checking a
/// token or cost budget before the call.
pub const ASSUMED_COMPLETION_TOKENS: u64 = 1024;

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
    /// Start the final call as the client's own request, so that its answer streams to the
    /// client as it is written. The body asks for a stream with usage. Its result still
    /// comes back through `on_call_result` if it fails before the first byte.
    StreamFinal {
        call: CallId,
        model: ModelId,
        body: Vec<u8>,
        timeout_ms: u64,
    },
    /// A call ended (for metrics: outcome and tokens by model).
    CallFinished {
        call: CallId,
        model: ModelId,
        outcome: &'static str,
        usage: Option<Usage>,
    },
    /// Something worth counting happened.
    Event(LooperEvent),
    /// The looper has its final result; see [`super::Looper::take_result`].
    Finished,
}

/// Counted occurrences, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LooperEvent {
    /// The next model of a failover list was tried.
    Failover,
    /// A Confidence candidate was not confident enough; the next one was asked.
    Escalation,
    /// A call was not started because a budget (calls, tokens, cost, deadline) forbade it.
    BudgetStop,
    /// A round ended with fewer successes than its quorum.
    QuorumShortfall,
    /// A failed call was handled by the recipe's failure policy.
    PolicySkip,
    PolicyFail,
    PolicyFallback,
}

/// How a call's result arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The algorithm was waiting for it.
    Awaited,
    /// The algorithm had stopped waiting; only its usage counts.
    Late,
}

/// Why the runtime refused to start a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    MaxCalls,
    Deadline,
    TokenBudget,
    CostBudget,
    Finished,
}

impl Stop {
    pub fn describe(&self) -> &'static str {
        match self {
            Stop::MaxCalls => "max_calls budget reached",
            Stop::Deadline => "request deadline reached",
            Stop::TokenBudget => "token budget would be exceeded",
            Stop::CostBudget => "cost budget would be exceeded",
            Stop::Finished => "request already finished",
        }
    }
}

/// What a call sends: its role, its messages and the fields it sets on top of the client's
/// request. The body is built only when the call starts, so queued calls hold no body.
#[derive(Clone, Debug, PartialEq)]
pub struct CallPlan {
    pub role: &'static str,
    /// The client's messages (with the contract instruction), or a prompt of the gateway's.
    pub messages: Messages,
    /// Fields set on the sub-call, after the role's sampling parameters.
    pub set: Vec<(&'static str, Value)>,
    /// A deadline of its own (a round's), earlier than the request's: the call's timeout
    /// never reaches past it.
    pub deadline: Option<Millis>,
    /// A timeout of its own (a workflow step's), counted from the call's start.
    pub timeout_ms: Option<u64>,
    /// A failure policy of its own (a workflow step's) instead of the recipe's.
    pub on_failure: Option<FailurePolicy>,
    /// The recipe's last call, whose answer is the reply as it is (a synthesis or a
    /// finalizer): it may stream straight to a streaming client.
    pub final_answer: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Messages {
    /// The client's conversation, the contract instruction appended to its last user turn.
    Client,
    /// A prompt the gateway wrote (verifier, judge). Fields that only make sense for the
    /// client's own conversation (tools, response format, n, logprobs...) are dropped.
    Own(Rc<Value>),
}

/// Client fields that do not belong in a call with the gateway's own prompt.
const CLIENT_ONLY_FIELDS: &[&str] = &[
    // The client's length limit is for its answer; a verdict or an analysis cut short is
    // useless. A role's `max_tokens` still applies.
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "n",
    "logprobs",
    "top_logprobs",
    "stop",
    "prediction",
    "audio",
    "modalities",
];

impl CallPlan {
    /// A call that answers the client's question.
    pub fn answer(role: &'static str) -> CallPlan {
        CallPlan {
            role,
            messages: Messages::Client,
            set: Vec::new(),
            deadline: None,
            timeout_ms: None,
            on_failure: None,
            final_answer: false,
        }
    }

    /// A call with a prompt of the gateway's.
    pub fn own(role: &'static str, messages: Value) -> CallPlan {
        CallPlan {
            role,
            messages: Messages::Own(Rc::new(messages)),
            set: Vec::new(),
            deadline: None,
            timeout_ms: None,
            on_failure: None,
            final_answer: false,
        }
    }

    /// Marks the recipe's last call (see [`CallPlan::final_answer`]).
    pub fn final_answer(mut self) -> CallPlan {
        self.final_answer = true;
        self
    }

    pub fn until(mut self, deadline: Millis) -> CallPlan {
        self.deadline = Some(deadline);
        self
    }

    pub fn with(mut self, key: &'static str, value: Value) -> CallPlan {
        self.set.retain(|(k, _)| *k != key);
        self.set.push((key, value));
        self
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
    /// The answer the algorithm extracted from this call's response.
    pub answer: Option<String>,
    /// The score the algorithm gave it (a confidence, a verdict).
    pub score: Option<f64>,
    /// For a retry under the `fallback` policy: the call it replaces.
    pub fallback_of: Option<CallId>,
    /// The looper stopped waiting for it (its result may still arrive and be billed).
    pub abandoned: bool,
    plan: Rc<CallPlan>,
    /// The gateway's own prompt as JSON text, serialised once for the token estimate and
    /// taken by the body when the call starts.
    own_messages: Option<Box<RawValue>>,
    /// Tokens and cost set aside for this call while it is queued or in flight.
    reserved_tokens: u64,
    reserved_cost: f64,
}

pub struct Runtime {
    /// Unguessable per request: tags around quoted text in the gateway's prompts use it.
    nonce: String,
    config: Rc<Config>,
    recipe: Rc<Recipe>,
    request: Rc<ChatRequest>,
    /// The client's messages with the contract instruction as JSON text, built on first use
    /// and spliced into every sub-call that asks with the client's conversation.
    instructed_messages: Option<Rc<RawValue>>,
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
    reserved_tokens: u64,
    reserved_cost: f64,
    commands: VecDeque<LooperCommand>,
    result: Option<Result<Answer, ApiError>>,
    finished: bool,
    stop_reason: Option<String>,
    notes: Vec<String>,
    details: Map<String, Value>,
    confidence: Option<f64>,
    /// Queued calls that never started (no time left); the looper reports them to the
    /// algorithm as failed steps.
    skipped: Vec<CallId>,
    /// The final answer may stream to the client (see [`LooperCommand::StreamFinal`]).
    stream_final: bool,
}

impl Runtime {
    pub fn new(
        config: Rc<Config>,
        recipe: Rc<Recipe>,
        request: Rc<ChatRequest>,
        now: Millis,
        nonce: String,
    ) -> Self {
        let deadline_ms = recipe
            .budget
            .deadline_ms
            .unwrap_or(config.limits.request_deadline_ms);
        let max_concurrent = recipe.budget.max_concurrent.max(1) as usize;
        Runtime {
            nonce,
            config,
            recipe,
            request,
            instructed_messages: None,
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
            reserved_tokens: 0,
            reserved_cost: 0.0,
            commands: VecDeque::new(),
            result: None,
            finished: false,
            stop_reason: None,
            notes: Vec::new(),
            details: Map::new(),
            confidence: None,
            skipped: Vec::new(),
            stream_final: false,
        }
    }

    /// Lets the recipe's final answer stream to the client: its call becomes a
    /// [`LooperCommand::StreamFinal`] when nothing else is in flight.
    pub fn allow_streamed_final(&mut self) {
        self.stream_final = true;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
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

    /// The error for "no usable answer": 504 once the deadline has passed (it is the cause),
    /// else 502.
    pub fn no_answer(&self, detail: &str) -> ApiError {
        if self.is_past_deadline() {
            ApiError::deadline_exceeded(self.deadline_ms)
        } else {
            ApiError::all_upstreams_failed(detail)
        }
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

    /// The confidence of the final answer, for patterns that score one.
    pub fn confidence(&self) -> Option<f64> {
        self.confidence
    }

    pub fn set_confidence(&mut self, confidence: f64) {
        self.confidence = Some(confidence);
    }

    /// Adds a line to the trace (a budget stop, a failover, a decision).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Sets an algorithm-specific trace field (votes, rounds...).
    pub fn detail(&mut self, key: &str, value: Value) {
        self.details.insert(key.to_string(), value);
    }

    /// Records what the algorithm made of a call: the answer it extracted and its score.
    pub fn annotate(&mut self, id: CallId, answer: Option<String>, score: Option<f64>) {
        if let Some(record) = self.calls.get_mut(id.0 as usize) {
            if answer.is_some() {
                record.answer = answer;
            }
            if score.is_some() {
                record.score = score;
            }
        }
    }

    pub fn event(&mut self, event: LooperEvent) {
        self.commands.push_back(LooperCommand::Event(event));
    }

    /// Notes in the trace (and metrics) that `model` is tried because an earlier one failed.
    pub fn failover(&mut self, model: ModelId) {
        let alias = self.alias(model).to_string();
        self.note(format!("failover to {alias}"));
        self.event(LooperEvent::Failover);
    }

    pub(super) fn set_now(&mut self, now: Millis) {
        // Time never goes backwards, even if the host's clock does.
        self.now = self.now.max(now);
    }

    /// Queued calls that were skipped for lack of time since the last call.
    pub(super) fn take_skipped(&mut self) -> Vec<CallId> {
        std::mem::take(&mut self.skipped)
    }

    pub(super) fn poll_command(&mut self) -> Option<LooperCommand> {
        self.commands.pop_front()
    }

    pub(super) fn take_result(&mut self) -> Option<Result<Answer, ApiError>> {
        self.result.take()
    }

    /// Tokens a call is expected to use at most: its prompt (about four bytes a token) and
    /// its completion limit.
    fn estimate(&self, model: ModelId, plan: &CallPlan, own: Option<&RawValue>) -> (u64, f64) {
        let prompt_bytes = match (&plan.messages, own) {
            (Messages::Client, _) => self.request.body_len(),
            (Messages::Own(_), Some(raw)) => raw.get().len(),
            (Messages::Own(messages), None) => messages.to_string().len(),
        };
        let prompt = (prompt_bytes as u64).div_ceil(4);
        let limit = |key: &str| self.request.field(key).and_then(Value::as_u64);
        // A client that sends both limits is held to the larger: upstreams differ in which
        // one they obey.
        let client_limit = match (limit("max_completion_tokens"), limit("max_tokens")) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let completion = plan
            .set
            .iter()
            .find(|(k, _)| *k == "max_tokens" || *k == "max_completion_tokens")
            .and_then(|(_, v)| v.as_u64())
            .or_else(|| self.recipe.role(plan.role).and_then(|r| r.max_tokens))
            .or(client_limit)
            .unwrap_or(ASSUMED_COMPLETION_TOKENS);
        // The client's `n` multiplies a call on its own conversation (a gateway prompt drops
        // it), so it cannot buy more completions than the budget allows.
        let client_n = match plan.messages {
            Messages::Client => self.request.n(),
            Messages::Own(_) => 1,
        };
        let samples = plan
            .set
            .iter()
            .find(|(k, _)| *k == "n")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(client_n)
            .max(1);
        let completion = completion.saturating_mul(samples);
        let cost = self
            .config
            .model(model)
            .map_or(0.0, |m| m.price.cost(prompt, completion));
        (prompt.saturating_add(completion), cost)
    }

    /// Why a call estimated at `tokens` and `cost` may not start now, if it may not.
    fn refusal(&self, plan: &CallPlan, tokens: u64, cost: f64) -> Option<Stop> {
        let budget = &self.recipe.budget;
        if self.finished {
            Some(Stop::Finished)
        } else if self.calls.len() >= budget.max_calls as usize {
            Some(Stop::MaxCalls)
        } else if self.is_past_deadline() || plan.deadline.is_some_and(|d| self.now >= d) {
            Some(Stop::Deadline)
        } else if budget.token_budget.is_some_and(|b| {
            self.usage
                .total_tokens
                .saturating_add(self.reserved_tokens)
                .saturating_add(tokens)
                > b
        }) {
            Some(Stop::TokenBudget)
        } else if budget
            .cost_budget
            .is_some_and(|b| self.cost + self.reserved_cost + cost > b)
        {
            Some(Stop::CostBudget)
        } else {
            None
        }
    }

    /// Queues a call to `model`; it starts at once unless `max_concurrent` calls are in flight.
    /// Refused once the call budget is spent, the deadline has passed, the token or cost
    /// budget would be exceeded, or the looper finished; the refusal is noted in the trace.
    pub fn dispatch(&mut self, model: ModelId, plan: CallPlan) -> Result<CallId, Stop> {
        self.dispatch_inner(model, plan, None)
    }

    fn dispatch_inner(
        &mut self,
        model: ModelId,
        plan: CallPlan,
        fallback_of: Option<CallId>,
    ) -> Result<CallId, Stop> {
        let own_messages = match &plan.messages {
            Messages::Own(messages) => json_text::to_raw(messages),
            Messages::Client => None,
        };
        let (tokens, cost) = self.estimate(model, &plan, own_messages.as_deref());
        if let Some(stop) = self.refusal(&plan, tokens, cost) {
            let alias = self.alias(model).to_string();
            self.note(format!(
                "not calling {alias} ({}): {}",
                plan.role,
                stop.describe()
            ));
            if stop != Stop::Finished {
                self.event(LooperEvent::BudgetStop);
            }
            return Err(stop);
        }
        self.reserved_tokens = self.reserved_tokens.saturating_add(tokens);
        self.reserved_cost += cost;
        let id = CallId(self.calls.len() as u32);
        self.calls.push(CallRecord {
            id,
            role: plan.role,
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
            answer: None,
            score: None,
            fallback_of,
            abandoned: false,
            plan: Rc::new(plan),
            own_messages,
            reserved_tokens: tokens,
            reserved_cost: cost,
        });
        self.queue.push_back(id);
        self.pump();
        Ok(id)
    }

    fn release(&mut self, id: CallId) {
        if let Some(record) = self.calls.get_mut(id.0 as usize) {
            self.reserved_tokens = self.reserved_tokens.saturating_sub(record.reserved_tokens);
            self.reserved_cost = (self.reserved_cost - record.reserved_cost).max(0.0);
            record.reserved_tokens = 0;
            record.reserved_cost = 0.0;
        }
    }

    /// The client's messages with the contract instruction, as JSON text (serialised once a
    /// request, however many sub-calls carry them).
    fn instructed_messages(&mut self) -> Option<Rc<RawValue>> {
        if self.instructed_messages.is_none() {
            // Without an instruction the client's own text is spliced in, not parsed and
            // serialised again.
            self.instructed_messages = match self.recipe.contract.instruction() {
                Some(instruction) => {
                    let messages = self.request.field("messages").unwrap_or(&Value::Null);
                    json_text::to_raw(&prompt::with_instruction(messages, Some(&instruction)))
                        .map(Rc::from)
                }
                None => Some(self.request.messages_text()),
            };
        }
        self.instructed_messages.clone()
    }

    /// The sub-call body for `plan` on `model`; `own` is the plan's own prompt already
    /// serialised, when it has one.
    fn body(&mut self, model: ModelId, plan: &CallPlan, own: Option<Box<RawValue>>) -> Vec<u8> {
        let Some(upstream) = self.config.model(model) else {
            return Vec::new();
        };
        let upstream_model = upstream.upstream_model.clone();
        let (client, own) = match &plan.messages {
            Messages::Client => (self.instructed_messages(), None),
            Messages::Own(m) => (None, own.or_else(|| json_text::to_raw(m))),
        };
        let Some(messages) = client.as_deref().or(own.as_deref()) else {
            return Vec::new();
        };
        let mut values: Vec<(&str, Value)> = Vec::new();
        if let Some(params) = self.recipe.role(plan.role) {
            if let Some(t) = params.temperature {
                values.push(("temperature", json!(t)));
            }
            if let Some(n) = params.max_tokens {
                // Every limit the client sent is replaced, so none of them can lift the
                // role's (upstreams differ in which one they obey).
                let sent: Vec<&'static str> = ["max_tokens", "max_completion_tokens"]
                    .into_iter()
                    .filter(|key| self.request.field(key).is_some())
                    .collect();
                if sent.is_empty() {
                    values.push(("max_tokens", json!(n)));
                }
                for key in sent {
                    values.push((key, json!(n)));
                }
            }
            if let Some(effort) = &params.reasoning_effort {
                values.push(("reasoning_effort", json!(effort)));
            }
        }
        for (key, value) in &plan.set {
            values.retain(|(k, _)| k != key);
            values.push((key, value.clone()));
        }
        let mut edits: Vec<(&str, Edit<'_>)> = vec![("messages", Edit::Raw(messages))];
        if matches!(plan.messages, Messages::Own(_)) {
            for field in CLIENT_ONLY_FIELDS {
                edits.push((field, Edit::Remove));
            }
        }
        for (key, value) in &values {
            edits.retain(|(k, _)| k != key);
            edits.push((key, Edit::Set(value)));
        }
        self.request.upstream_body(&upstream_model, &edits)
    }

    /// Starts queued calls while there is room and time. The looper calls it after the
    /// algorithm has reacted to an event, so a call is never started for a request the
    /// algorithm just finished.
    pub(super) fn pump(&mut self) {
        while self.in_flight < self.max_concurrent && !self.finished {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(record) = self.calls.get(id.0 as usize) else {
                continue;
            };
            let model = record.model;
            let plan = Rc::clone(&record.plan);
            let deadline = plan
                .deadline
                .map_or(self.deadline, |d| d.min(self.deadline));
            let remaining = deadline.since(self.now);
            let model_timeout = self.config.model(model).map_or(remaining, |m| m.timeout_ms);
            let timeout_ms = model_timeout
                .min(self.recipe.budget.call_timeout_ms.unwrap_or(u64::MAX))
                .min(plan.timeout_ms.unwrap_or(u64::MAX))
                .min(remaining);
            if timeout_ms == 0 {
                // Out of time: the queued call never starts. Its step still ends, as a
                // failure, so the algorithm does not wait for it.
                self.release(id);
                if let Some(record) = self.calls.get_mut(id.0 as usize) {
                    record.state = CallState::Done;
                    record.outcome = Some("skipped");
                    record.error = Some(Stop::Deadline.describe().to_string());
                }
                self.skipped.push(id);
                continue;
            }
            // A streamed call's failure must end the request at once (its answer would be
            // the reply): a policy that retries it elsewhere keeps it buffered.
            let retries = matches!(
                plan.on_failure.unwrap_or(self.recipe.on_failure),
                FailurePolicy::Fallback(_)
            );
            let streamed =
                self.stream_final && plan.final_answer && self.in_flight == 0 && !retries;
            let own = self
                .calls
                .get_mut(id.0 as usize)
                .and_then(|record| record.own_messages.take());
            let body = if streamed {
                // The streamed call must report its usage for the reply's total.
                let mut streaming = (*plan).clone();
                streaming.set.push(("stream", json!(true)));
                streaming
                    .set
                    .push(("stream_options", json!({"include_usage": true})));
                self.body(model, &streaming, own)
            } else {
                self.body(model, &plan, own)
            };
            let now = self.now;
            if let Some(record) = self.calls.get_mut(id.0 as usize) {
                record.state = CallState::InFlight;
                record.started_at = Some(now);
                record.timeout_ms = timeout_ms;
            }
            self.in_flight += 1;
            self.commands.push_back(if streamed {
                self.stream_final = false;
                LooperCommand::StreamFinal {
                    call: id,
                    model,
                    body,
                    timeout_ms,
                }
            } else {
                LooperCommand::Dispatch {
                    call: id,
                    model,
                    body,
                    timeout_ms,
                }
            });
        }
    }

    /// Stops waiting for a call still in flight (a round decided early). The host cannot
    /// cancel it; it no longer counts against `max_concurrent`, and if its answer arrives
    /// before the reply its usage still counts, but the algorithm does not hear about it.
    pub fn abandon(&mut self, id: CallId) {
        // A fallback retry of this step goes with it.
        let retries: Vec<CallId> = self
            .calls
            .iter()
            .filter(|c| c.fallback_of == Some(id))
            .map(|c| c.id)
            .collect();
        for call in std::iter::once(id).chain(retries) {
            let Some(record) = self.calls.get_mut(call.0 as usize) else {
                continue;
            };
            if record.state == CallState::InFlight {
                record.state = CallState::Abandoned;
                record.abandoned = true;
                self.in_flight = self.in_flight.saturating_sub(1);
            } else if record.state == CallState::Queued {
                record.state = CallState::Done;
                record.outcome = Some("skipped");
                self.queue.retain(|q| *q != call);
                self.release(call);
            }
        }
    }

    /// Records a finished call: usage and cost count whether it succeeded or not. Returns
    /// what the looper should do with the result: `None` for calls it never made or already
    /// heard about.
    pub(super) fn record_result(&mut self, id: CallId, outcome: &CallOutcome) -> Option<Arrival> {
        let arrival = match self.call(id).map(|c| c.state) {
            Some(CallState::InFlight) => Arrival::Awaited,
            Some(CallState::Abandoned) => Arrival::Late,
            _ => return None,
        };
        self.release(id);
        // The host's timer for a call cut at the deadline fires by its own clock, which can run
        // a few ms ahead of the time we were given: the deadline has come all the same.
        if let (
            CallOutcome::Failed {
                kind: FailureKind::Timeout,
                ..
            },
            Some(call),
        ) = (outcome, self.call(id))
        {
            let cut_at = call.started_at.map(|s| s.plus(call.timeout_ms));
            if cut_at.is_some_and(|t| t >= self.deadline) && self.now < self.deadline {
                self.now = self.deadline;
            }
        }
        let now = self.now;
        let price = self
            .call(id)
            .and_then(|c| self.config.model(c.model))
            .map(|m| m.price);
        let record = self.calls.get_mut(id.0 as usize)?;
        record.state = CallState::Done;
        record.finished_at = Some(now);
        record.outcome = Some(outcome.name());
        record.status = outcome.status();
        if let CallOutcome::Failed { kind, .. } = outcome {
            record.error = Some(kind.describe());
        }
        if let Some(usage) = outcome.usage() {
            record.usage = Some(*usage);
            record.cost = price.map_or(0.0, |p| {
                p.cost(usage.prompt_tokens, usage.completion_tokens)
            });
            self.usage.add(usage);
            self.cost += record.cost;
        }
        let model = record.model;
        if arrival == Arrival::Awaited {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.commands.push_back(LooperCommand::CallFinished {
            call: id,
            model,
            outcome: outcome.name(),
            usage: outcome.usage().copied(),
        });
        Some(arrival)
    }

    /// Applies the recipe's failure policy to a failed call. Returns the call the algorithm
    /// should hear about (the original step for a fallback retry), or `None` while a fallback
    /// retry is running or once the policy ended the request.
    pub(super) fn apply_failure_policy(
        &mut self,
        id: CallId,
        outcome: &CallOutcome,
    ) -> Option<CallId> {
        let Some(record) = self.call(id) else {
            return Some(id);
        };
        let step = record.fallback_of.unwrap_or(id);
        let CallOutcome::Failed { kind, .. } = outcome else {
            return Some(step);
        };
        // A request the upstream calls invalid is the algorithm's to judge, not a failure to
        // retry elsewhere.
        if kind.is_client_error() {
            return Some(step);
        }
        let alias = self.alias(record.model).to_string();
        let role = record.role;
        match record.plan.on_failure.unwrap_or(self.recipe.on_failure) {
            FailurePolicy::Skip => {
                self.event(LooperEvent::PolicySkip);
                Some(step)
            }
            FailurePolicy::Fail => {
                self.event(LooperEvent::PolicyFail);
                self.finish(
                    Err(ApiError::all_upstreams_failed(&format!(
                        "a {role} call failed and the recipe's failure policy is `fail`"
                    ))),
                    format!("{alias} ({role}) failed: {}; policy fail", kind.describe()),
                );
                None
            }
            FailurePolicy::Fallback(fallback) => {
                if record.fallback_of.is_some() || record.model == fallback {
                    return Some(step);
                }
                let plan = (*record.plan).clone();
                let fallback_alias = self.alias(fallback).to_string();
                match self.dispatch_inner(fallback, plan, Some(id)) {
                    Ok(_) => {
                        self.event(LooperEvent::PolicyFallback);
                        self.note(format!(
                            "{alias} ({role}) failed: {}; retrying on {fallback_alias}",
                            kind.describe()
                        ));
                        None
                    }
                    Err(_) => Some(step),
                }
            }
        }
    }

    /// Ends the looper. Calls still in flight are abandoned; queued ones, and dispatches the
    /// host has not picked up yet, never start.
    pub fn finish(&mut self, result: Result<Answer, ApiError>, why: impl Into<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.stop_reason = Some(why.into());
        // "Nothing worked" because every model said 429 is a reason to back off, not a 502.
        let result = match result {
            Err(err) if err.status == 502 && self.only_rate_limited() => {
                Err(ApiError::rate_limited())
            }
            // Nor is "nothing worked" because no model could take the prompt: the client must
            // shorten it, and retrying as it is will fail the same way.
            Err(err) if err.status == 502 && self.only_context_overflow() => {
                Err(ApiError::context_length_exceeded())
            }
            other => other,
        };
        let mut unsent = Vec::new();
        self.commands.retain(|command| match command {
            LooperCommand::Dispatch { call, .. } => {
                unsent.push(*call);
                false
            }
            _ => true,
        });
        for id in &unsent {
            if let Some(record) = self.calls.get_mut(id.0 as usize) {
                record.state = CallState::Done;
                record.outcome = Some("skipped");
                record.started_at = None;
                record.timeout_ms = 0;
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
        let queued: Vec<CallId> = self.queue.drain(..).collect();
        for id in unsent.into_iter().chain(queued) {
            self.release(id);
            if let Some(record) = self.calls.get_mut(id.0 as usize) {
                record.state = CallState::Done;
                record.outcome = Some("skipped");
            }
        }
        for record in &mut self.calls {
            if record.state == CallState::InFlight {
                record.state = CallState::Abandoned;
                record.abandoned = true;
            }
        }
        self.result = Some(result);
        self.commands.push_back(LooperCommand::Finished);
    }

    /// At least one call ended, and every one that ended failed with a 429.
    fn only_rate_limited(&self) -> bool {
        self.every_ended_call(|c| c.status == Some(429))
    }

    /// At least one call ended, and every one that ended said the prompt was too long.
    fn only_context_overflow(&self) -> bool {
        self.every_ended_call(|c| c.outcome == Some("context_overflow"))
    }

    /// At least one call ended (was not skipped), and `holds` for every one that did.
    fn every_ended_call(&self, holds: impl Fn(&CallRecord) -> bool) -> bool {
        let mut ended = self
            .calls
            .iter()
            .filter(|c| c.outcome.is_some_and(|o| o != "skipped"))
            .peekable();
        ended.peek().is_some() && ended.all(holds)
    }

    /// Calls the looper stopped waiting for, whether or not their result came in later.
    pub fn abandoned_calls(&self) -> usize {
        self.calls.iter().filter(|c| c.abandoned).count()
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
                let mut step = json!({
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
                    "answer": c.answer,
                    "score": c.score,
                });
                if let (Some(orig), Value::Object(obj)) = (c.fallback_of, &mut step) {
                    obj.insert("fallback_of".into(), json!(orig.0));
                }
                step
            })
            .collect();
        let budget = &self.recipe.budget;
        let mut trace = json!({
            "recipe": self.recipe.name,
            "algorithm": self.recipe.algorithm.name(),
            "contract": self.recipe.contract.name(),
            "budget": {
                "max_calls": budget.max_calls,
                "max_concurrent": self.max_concurrent,
                "deadline_ms": self.deadline_ms,
                "token_budget": budget.token_budget,
                "cost_budget": budget.cost_budget,
            },
            "steps": steps,
            "notes": self.notes,
            "stop_reason": self.stop_reason,
            "abandoned_calls": self.abandoned_calls(),
            "usage": self.usage.to_json(),
            "cost": self.cost,
            "confidence": self.confidence,
        });
        if let Value::Object(obj) = &mut trace {
            for (k, v) in &self.details {
                obj.insert(k.clone(), v.clone());
            }
        }
        trace
    }
}
