//! Tests of the looper, compiled only under #[cfg(test)].
//!
//! Deterministic tests on a virtual clock: a scripted pool answers dispatched calls after a
//! per-call latency; the harness jumps the clock to the next completion, like quinn's
//! `Pair::step`, checks the runtime's invariants on every step (calls in flight within
//! `max_concurrent`, timeouts within the deadline, one `Finished`), and gives up after a
//! bounded number of steps.

mod confidence;
mod context;
mod fusion;
mod ratings;
mod remom;
mod runtime;
mod single;
mod trust;
mod workflows;

use super::*;
use crate::config::{Config, ModelId};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub(super) const T0: Millis = Millis(1_000_000);

/// What a scripted model does with one call.
#[derive(Clone, Debug)]
pub(super) enum Reply {
    /// Responds after `latency` ms (unless the call's timeout fires first).
    After(u64, CallResult),
    /// Never answers: the host's timeout fires.
    Hang,
}

/// A model's behaviour: the reply to each request body.
pub(super) type Script = std::rc::Rc<dyn Fn(&Value) -> Reply>;

pub(super) fn completion_body(
    content: &str,
    logprobs: Value,
    prompt: u64,
    completion: u64,
) -> Vec<u8> {
    json!({"id": "up", "object": "chat.completion", "created": 1, "model": "up",
        "system_fingerprint": "fp1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}})
    .to_string()
    .into_bytes()
}

pub(super) fn completion(content: &str, prompt: u64, completion: u64) -> Vec<u8> {
    completion_body(content, Value::Null, prompt, completion)
}

pub(super) fn ok(content: &str) -> CallResult {
    CallResult::Response {
        status: 200,
        body: completion(content, 10, 5),
    }
}

/// Answers `content` after `latency` ms, whatever is asked.
pub(super) fn answer(latency: u64, content: &'static str) -> Script {
    std::rc::Rc::new(move |_| Reply::After(latency, ok(content)))
}

pub(super) fn status(code: u16) -> Script {
    std::rc::Rc::new(move |_| {
        Reply::After(
            5,
            CallResult::Response {
                status: code,
                body: b"{\"error\":{\"message\":\"internal detail: cluster xyz\"}}".to_vec(),
            },
        )
    })
}

pub(super) fn raw(latency: u64, code: u16, body: &'static str) -> Script {
    std::rc::Rc::new(move |_| {
        Reply::After(
            latency,
            CallResult::Response {
                status: code,
                body: body.as_bytes().to_vec(),
            },
        )
    })
}

pub(super) fn reset(latency: u64) -> Script {
    std::rc::Rc::new(move |_| Reply::After(latency, CallResult::Reset))
}

pub(super) fn hang() -> Script {
    std::rc::Rc::new(|_| Reply::Hang)
}

/// The text of the last message of a request body.
pub(super) fn last_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| crate::prompt::content_text(&m["content"]))
        .unwrap_or_default()
}

pub(super) fn is_verification(body: &Value) -> bool {
    last_message(body).contains("Proposed answer")
}

struct InFlight {
    due: Millis,
    result: CallResult,
}

pub(super) struct Harness {
    pub looper: Looper,
    pub now: Millis,
    scripts: Vec<Script>,
    in_flight: BTreeMap<CallId, InFlight>,
    /// Every dispatch: call, model, timeout, body.
    pub dispatched: Vec<(CallId, ModelId, u64, Value)>,
    pub max_in_flight: usize,
    pub events: Vec<LooperEvent>,
    pub finished: bool,
}

/// A configuration with models `m0..mN` (clusters `c0..`, upstream names `up-0..`, given
/// timeouts, logprobs on, prices 1 and 2 per million) and the one recipe `r`.
pub(super) fn config(recipe: Value, timeouts: &[u64]) -> Rc<Config> {
    let mut models = serde_json::Map::new();
    for (i, timeout) in timeouts.iter().enumerate() {
        models.insert(
            format!("m{i}"),
            json!({"cluster": format!("c{i}"), "model": format!("up-{i}"), "timeout_ms": timeout,
                   "logprobs": true,
                   "price": {"input_per_million": 1.0, "output_per_million": 2.0}}),
        );
    }
    let v = json!({"models": models, "recipes": {"r": recipe},
                   "virtual_models": {"v/x": {"recipe": "r"}},
                   "limits": {"request_deadline_ms": 10_000}});
    Rc::new(Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap())
}

pub(super) fn request_with(extra: Value) -> Rc<ChatRequest> {
    let mut body = json!({"model": "v/x", "messages": [{"role": "user", "content": "q"}],
                      "temperature": 0.3, "top_k": 4});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Rc::new(ChatRequest::parse(body.to_string().as_bytes()).unwrap())
}

pub(super) fn request() -> Rc<ChatRequest> {
    request_with(json!({}))
}

impl Harness {
    pub fn new(config: Rc<Config>, scripts: Vec<Script>) -> Self {
        Harness::with_request(config, scripts, request())
    }

    pub fn with_request(
        config: Rc<Config>,
        scripts: Vec<Script>,
        request: Rc<ChatRequest>,
    ) -> Self {
        let recipe = Rc::clone(&config.recipes[0]);
        let looper = Looper::start(config, recipe, request, T0, "n0nce".to_string());
        Harness::around(looper, scripts)
    }

    pub fn with_request_looper(looper: Looper, scripts: Vec<Script>) -> Self {
        Harness::around(looper, scripts)
    }

    pub fn around(looper: Looper, scripts: Vec<Script>) -> Self {
        let mut h = Harness {
            looper,
            now: T0,
            scripts,
            in_flight: BTreeMap::new(),
            dispatched: Vec::new(),
            max_in_flight: 0,
            events: Vec::new(),
            finished: false,
        };
        h.drain();
        h
    }

    pub fn drain(&mut self) {
        while let Some(command) = self.looper.poll_command() {
            match command {
                LooperCommand::StreamFinal { .. } => {
                    panic!("the harness never allows a streamed final call")
                }
                LooperCommand::Dispatch {
                    call,
                    model,
                    body,
                    timeout_ms,
                } => {
                    assert!(!self.finished, "dispatch after finish");
                    assert!(
                        self.now.plus(timeout_ms) <= self.looper.runtime().deadline(),
                        "call timeout reaches past the deadline"
                    );
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    let reply = (self.scripts[model.0])(&body);
                    self.dispatched.push((call, model, timeout_ms, body));
                    // Like Envoy: past the call's timeout the host answers 504 itself.
                    let timed_out = (
                        self.now.plus(timeout_ms),
                        CallResult::Response {
                            status: 504,
                            body: b"upstream request timeout".to_vec(),
                        },
                    );
                    let (due, result) = match reply {
                        Reply::After(latency, result) if latency <= timeout_ms => {
                            (self.now.plus(latency), result)
                        }
                        _ => timed_out,
                    };
                    self.in_flight.insert(call, InFlight { due, result });
                    self.max_in_flight = self.max_in_flight.max(self.in_flight.len());
                    let cap = self.looper.runtime().recipe().budget.max_concurrent as usize;
                    assert!(
                        self.in_flight.len() <= cap,
                        "more than max_concurrent in flight"
                    );
                }
                LooperCommand::Finished => {
                    assert!(!self.finished, "finished twice");
                    self.finished = true;
                }
                LooperCommand::Event(e) => self.events.push(e),
                LooperCommand::CallFinished { .. } => {}
            }
        }
    }

    /// Takes a call out of the scripted pool: its result will be fed by the test.
    pub fn take(&mut self, call: CallId) {
        self.in_flight.remove(&call);
    }

    /// Delivers the next completion; false when nothing is in flight.
    pub fn step(&mut self) -> bool {
        let next = self
            .in_flight
            .iter()
            .min_by_key(|(_, f)| f.due)
            .map(|(id, f)| (*id, f.due));
        let Some((call, due)) = next else {
            return false;
        };
        let Some(flight) = self.in_flight.remove(&call) else {
            return false;
        };
        self.now = due;
        self.looper.on_call_result(call, flight.result, self.now);
        self.drain();
        true
    }

    /// Delivers completions in time order until the looper finishes (bounded).
    pub fn run(&mut self) -> Result<Answer, ApiError> {
        for _ in 0..200 {
            if self.finished {
                break;
            }
            assert!(self.step(), "looper waits with nothing in flight");
        }
        assert!(self.finished, "looper did not finish within 200 steps");
        self.looper.take_result().expect("a result after Finished")
    }

    pub fn models_called(&self) -> Vec<usize> {
        self.dispatched.iter().map(|(_, m, _, _)| m.0).collect()
    }

    pub fn trace(&self) -> Value {
        self.looper.runtime().trace()
    }

    pub fn notes(&self) -> String {
        self.trace()["notes"].to_string()
    }
}

pub(super) fn content_of(answer: &Answer) -> String {
    let Answer::Upstream { completion, .. } = answer;
    completion.content().unwrap().to_string()
}
