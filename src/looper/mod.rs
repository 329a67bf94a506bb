//! One state machine per request. The looper is driven by events (start, call result,
//! deadline) with the current time as input, and answers with commands (dispatch a call, a call
//! ended, finished) drained with [`Looper::poll_command`]. It never touches the host.
//!
//! Algorithms plug in behind [`Algorithm`]; the [`Runtime`] they act through enforces the
//! recipe's budget whatever the algorithm asks.

pub mod call;
mod confidence;
mod evidence;
mod fusion;
pub mod plan;
mod ratings;
mod remom;
pub mod runtime;
mod single;
mod workflows;

pub use call::{CallId, CallOutcome, CallResult, FailureKind};
pub use runtime::{
    Answer, CallPlan, CallRecord, CallState, LooperCommand, LooperEvent, Messages, Runtime, Stop,
};

use crate::config::{Algorithm as AlgorithmConfig, Config, ModelId, Recipe};
use crate::openai::{ApiError, ChatRequest};
use crate::time::Millis;
use std::rc::Rc;

fn bounds_of_calls() -> usize {
    crate::config::bounds::MAX_CALLS as usize
}

/// A finished step, as an algorithm sees it.
#[derive(Debug)]
pub struct CallDone {
    /// The call the algorithm dispatched.
    pub step: CallId,
    /// The call that produced `outcome`: `step` itself, or its retry under the `fallback`
    /// failure policy.
    pub call: CallId,
    /// The model that produced `outcome`.
    pub model: ModelId,
    pub outcome: CallOutcome,
}

/// A collaboration pattern. It reacts to events by asking the runtime to dispatch calls or
/// to finish; the runtime owns the budget, the calls, the failure policy and the trace.
pub trait Algorithm {
    fn start(&mut self, rt: &mut Runtime);
    fn on_call_done(&mut self, rt: &mut Runtime, done: CallDone);
    /// The request deadline passed with the looper unfinished.
    fn on_deadline(&mut self, rt: &mut Runtime) {
        let deadline_ms = rt.deadline_ms();
        rt.finish(
            Err(ApiError::deadline_exceeded(deadline_ms)),
            "request deadline reached",
        );
    }
}

pub struct Looper {
    runtime: Runtime,
    algorithm: Box<dyn Algorithm>,
}

impl Looper {
    /// Builds the recipe's algorithm and starts it; the first dispatches are ready to poll.
    pub fn start(
        config: Rc<Config>,
        recipe: Rc<Recipe>,
        request: Rc<ChatRequest>,
        now: Millis,
        nonce: String,
    ) -> Looper {
        let algorithm: Box<dyn Algorithm> = match &recipe.algorithm {
            AlgorithmConfig::Single { models } => Box::new(single::Single::new(models.clone())),
            AlgorithmConfig::Confidence(c) => Box::new(confidence::Confidence::new(c.clone())),
            AlgorithmConfig::Ratings(r) => Box::new(ratings::Ratings::new(r.clone())),
            AlgorithmConfig::Remom(r) => Box::new(remom::Remom::new(r.clone())),
            AlgorithmConfig::Fusion(f) => Box::new(fusion::Fusion::new(f.clone())),
            AlgorithmConfig::Workflows(w) => Box::new(workflows::Workflows::new(w.clone())),
        };
        Looper::with_algorithm(config, recipe, request, now, nonce, algorithm)
    }

    /// Starts a looper running `algorithm` under `recipe`'s budget.
    pub fn with_algorithm(
        config: Rc<Config>,
        recipe: Rc<Recipe>,
        request: Rc<ChatRequest>,
        now: Millis,
        nonce: String,
        algorithm: Box<dyn Algorithm>,
    ) -> Looper {
        let mut looper = Looper {
            runtime: Runtime::new(config, recipe, request, now, nonce),
            algorithm,
        };
        looper.algorithm.start(&mut looper.runtime);
        looper.settle();
        looper
    }

    /// Feeds the result of a call. Results for calls that are no longer awaited (abandoned
    /// after the looper finished) are ignored.
    pub fn on_call_result(&mut self, call: CallId, result: CallResult, now: Millis) {
        self.runtime.set_now(now);
        if self.runtime.is_finished() {
            return;
        }
        let outcome = call::interpret(result);
        match self.runtime.record_result(call, &outcome) {
            Some(runtime::Arrival::Awaited) => {}
            Some(runtime::Arrival::Late) => {
                // Its usage counts; a slot may have opened for a queued call.
                self.settle();
                return;
            }
            None => return,
        }
        let model = self.runtime.call(call).map(|c| c.model);
        // The failure policy may retry the step elsewhere (the algorithm hears about it when
        // the retry ends) or end the request.
        let step = self.runtime.apply_failure_policy(call, &outcome);
        if let (Some(step), Some(model)) = (step, model) {
            // An answer that arrives with the deadline still counts; only then does the
            // deadline end whatever is left.
            if !self.runtime.is_finished() {
                let done = CallDone {
                    step,
                    call,
                    model,
                    outcome,
                };
                self.algorithm.on_call_done(&mut self.runtime, done);
            }
        }
        if !self.runtime.is_finished() && self.runtime.is_past_deadline() {
            self.algorithm.on_deadline(&mut self.runtime);
        }
        self.settle();
    }

    /// Starts what can start, tells the algorithm about queued calls that could not (no time
    /// left), and repeats until nothing changes; then makes sure the looper cannot hang.
    fn settle(&mut self) {
        // Each round either starts calls or ends steps; the call budget bounds both.
        for _ in 0..=bounds_of_calls() {
            self.runtime.pump();
            let skipped = self.runtime.take_skipped();
            if skipped.is_empty() {
                break;
            }
            for call in skipped {
                if self.runtime.is_finished() {
                    break;
                }
                let Some(record) = self.runtime.call(call) else {
                    continue;
                };
                let step = record.fallback_of.unwrap_or(call);
                let model = record.model;
                let done = CallDone {
                    step,
                    call,
                    model,
                    outcome: CallOutcome::Failed {
                        kind: FailureKind::Skipped,
                        usage: None,
                    },
                };
                self.algorithm.on_call_done(&mut self.runtime, done);
            }
        }
        self.check_progress();
    }

    /// To be called when [`Looper::next_deadline`] has passed; earlier calls do nothing.
    pub fn on_deadline(&mut self, now: Millis) {
        self.runtime.set_now(now);
        if !self.runtime.is_finished() && self.runtime.is_past_deadline() {
            self.algorithm.on_deadline(&mut self.runtime);
            self.settle();
        }
    }

    /// The instant the looper wants to be woken at, if unfinished.
    pub fn next_deadline(&self) -> Option<Millis> {
        (!self.runtime.is_finished()).then(|| self.runtime.deadline())
    }

    #[must_use]
    pub fn poll_command(&mut self) -> Option<LooperCommand> {
        self.runtime.poll_command()
    }

    /// The final answer or error, once [`LooperCommand::Finished`] was polled.
    pub fn take_result(&mut self) -> Option<Result<Answer, ApiError>> {
        self.runtime.take_result()
    }

    /// Lets the recipe's final answer stream to the client (see
    /// [`LooperCommand::StreamFinal`]).
    pub fn allow_streamed_final(&mut self) {
        self.runtime.allow_streamed_final();
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn is_finished(&self) -> bool {
        self.runtime.is_finished()
    }

    /// A looper with nothing in flight and nothing queued can never be woken by a call
    /// result: finish it rather than hang the request until the client gives up.
    fn check_progress(&mut self) {
        let rt = &mut self.runtime;
        if !rt.is_finished() && rt.in_flight() == 0 && rt.queued() == 0 {
            if rt.is_past_deadline() {
                let deadline_ms = rt.deadline_ms();
                rt.finish(
                    Err(ApiError::deadline_exceeded(deadline_ms)),
                    "request deadline reached",
                );
            } else {
                rt.finish(
                    Err(ApiError::all_upstreams_failed("no call could be made")),
                    "nothing left to wait for",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
