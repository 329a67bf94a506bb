//! Tests of the parent module, compiled only under #[cfg(test)].
//!
//! Deterministic looper tests on a virtual clock: a scripted pool answers dispatched calls
//! after a per-model latency; the harness jumps the clock to the next completion, like
//! quinn's `Pair::step`, and gives up after a bounded number of steps.

use super::*;
use crate::config::{Config, ModelId};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What a scripted model does with a call.
#[derive(Clone)]
enum Script {
    /// Answers 200 with this content after `latency` ms.
    Answer {
        latency: u64,
        content: &'static str,
    },
    /// Answers with this status and body after `latency` ms.
    Status {
        latency: u64,
        status: u16,
        body: &'static str,
    },
    Reset {
        latency: u64,
    },
    /// Never answers: the host's timeout fires.
    Hang,
}

fn completion(content: &str, prompt: u64, completion: u64) -> Vec<u8> {
    json!({"id": "up", "object": "chat.completion", "created": 1, "model": "up",
        "system_fingerprint": "fp1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}})
    .to_string()
    .into_bytes()
}

struct InFlight {
    model: ModelId,
    due: Millis,
    result: CallResult,
}

struct Harness {
    looper: Looper,
    now: Millis,
    scripts: Vec<Script>,
    in_flight: BTreeMap<CallId, InFlight>,
    dispatched: Vec<(CallId, ModelId, u64, Value)>,
    max_in_flight: usize,
    finished: bool,
}

fn config(recipe: Value, timeouts: &[u64]) -> Rc<Config> {
    let mut models = serde_json::Map::new();
    for (i, timeout) in timeouts.iter().enumerate() {
        models.insert(
            format!("m{i}"),
            json!({"cluster": format!("c{i}"), "model": format!("up-{i}"), "timeout_ms": timeout,
                   "price": {"input_per_million": 1.0, "output_per_million": 2.0}}),
        );
    }
    let v = json!({"models": models, "recipes": {"r": recipe},
                   "virtual_models": {"v/x": {"recipe": "r"}},
                   "limits": {"request_deadline_ms": 10_000}});
    Rc::new(Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap())
}

fn request() -> Rc<ChatRequest> {
    let body = json!({"model": "v/x", "messages": [{"role": "user", "content": "q"}],
                      "temperature": 0.3, "top_k": 4});
    Rc::new(ChatRequest::parse(body.to_string().as_bytes()).unwrap())
}

impl Harness {
    fn new(config: Rc<Config>, scripts: Vec<Script>) -> Self {
        let recipe = Rc::clone(&config.recipes[0]);
        let now = Millis(1_000_000);
        let looper = Looper::start(config, recipe, request(), now);
        let mut h = Harness {
            looper,
            now,
            scripts,
            in_flight: BTreeMap::new(),
            dispatched: Vec::new(),
            max_in_flight: 0,
            finished: false,
        };
        h.drain();
        h
    }

    fn drain(&mut self) {
        while let Some(command) = self.looper.poll_command() {
            match command {
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
                    self.dispatched.push((call, model, timeout_ms, body));
                    let script = self.scripts[model.0].clone();
                    let (latency, result) = match script {
                        Script::Answer { latency, content } => (
                            latency,
                            CallResult::Response {
                                status: 200,
                                body: completion(content, 10, 5),
                            },
                        ),
                        Script::Status {
                            latency,
                            status,
                            body,
                        } => (
                            latency,
                            CallResult::Response {
                                status,
                                body: body.as_bytes().to_vec(),
                            },
                        ),
                        Script::Reset { latency } => (latency, CallResult::Reset),
                        Script::Hang => (u64::MAX, CallResult::Reset),
                    };
                    // Like Envoy: past the call's timeout the host answers 504 itself.
                    let (due, result) = if latency > timeout_ms {
                        (
                            self.now.plus(timeout_ms),
                            CallResult::Response {
                                status: 504,
                                body: b"upstream request timeout".to_vec(),
                            },
                        )
                    } else {
                        (self.now.plus(latency), result)
                    };
                    self.in_flight.insert(call, InFlight { model, due, result });
                    self.max_in_flight = self.max_in_flight.max(self.in_flight.len());
                }
                LooperCommand::Finished => {
                    assert!(!self.finished, "finished twice");
                    self.finished = true;
                }
                LooperCommand::CallFinished { .. } | LooperCommand::Failover => {}
            }
        }
    }

    /// Delivers completions in time order until the looper finishes (bounded).
    fn run(&mut self) -> Result<Answer, ApiError> {
        for _ in 0..100 {
            if self.finished {
                break;
            }
            let next = self
                .in_flight
                .iter()
                .min_by_key(|(_, f)| f.due)
                .map(|(id, f)| (*id, f.due));
            let Some((call, due)) = next else {
                panic!("looper waits with nothing in flight");
            };
            let flight = self.in_flight.remove(&call).unwrap();
            self.now = due;
            let _ = flight.model;
            self.looper.on_call_result(call, flight.result, self.now);
            self.drain();
        }
        assert!(self.finished, "looper did not finish within 100 steps");
        self.looper.take_result().expect("a result after Finished")
    }

    fn models_called(&self) -> Vec<usize> {
        self.dispatched.iter().map(|(_, m, _, _)| m.0).collect()
    }
}

fn single(models: &[&str]) -> Value {
    json!({"algorithm": "single", "models": models})
}

fn answer(latency: u64, content: &'static str) -> Script {
    Script::Answer { latency, content }
}

fn status(status: u16) -> Script {
    Script::Status {
        latency: 5,
        status,
        body: "{\"error\":{\"message\":\"internal detail: cluster xyz\"}}",
    }
}

fn content_of(answer: &Answer) -> String {
    let Answer::Upstream { completion, .. } = answer;
    completion.content().unwrap().to_string()
}

#[test]
fn first_model_answers() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[1000, 1000]),
        vec![answer(20, "zero"), answer(5, "one")],
    );
    let result = h.run().unwrap();
    assert_eq!(content_of(&result), "zero");
    assert_eq!(result.model(), ModelId(0));
    assert_eq!(h.models_called(), vec![0]);
    let rt = h.looper.runtime();
    assert_eq!(rt.usage().total_tokens, 15);
    assert!((rt.cost() - (10.0 * 1.0 + 5.0 * 2.0) / 1e6).abs() < 1e-12);
    // The sub-call is the client's request with only the model changed.
    let body = &h.dispatched[0].3;
    assert_eq!(body["model"], "up-0");
    assert_eq!(body["top_k"], 4);
    assert_eq!(body["temperature"], 0.3);
}

#[test]
fn fails_over_on_every_retryable_failure() {
    let failures = [
        status(500),
        status(502),
        status(503),
        status(429),
        status(401),
        Script::Reset { latency: 3 },
        Script::Hang,
        Script::Status {
            latency: 2,
            status: 200,
            body: "not json",
        },
        Script::Status {
            latency: 2,
            status: 200,
            body: "{\"choices\":[]}",
        },
        Script::Status {
            latency: 2,
            status: 503,
            body: "upstream connect error or disconnect/reset before headers",
        },
    ];
    for failure in failures {
        let mut h = Harness::new(
            config(single(&["m0", "m1"]), &[100, 1000]),
            vec![failure, answer(5, "one")],
        );
        let result = h.run().unwrap();
        assert_eq!(content_of(&result), "one");
        assert_eq!(h.models_called(), vec![0, 1]);
        let trace = h.looper.runtime().trace();
        assert_eq!(trace["steps"].as_array().unwrap().len(), 2);
        assert!(trace["notes"][0]
            .as_str()
            .unwrap()
            .contains("failover to m1"));
    }
}

#[test]
fn usage_of_failed_calls_is_counted() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 1000]),
        vec![
            Script::Status {
                latency: 1,
                status: 200,
                body: "{\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1}}",
            },
            answer(5, "one"),
        ],
    );
    h.run().unwrap();
    assert_eq!(h.looper.runtime().usage().prompt_tokens, 17);
    assert_eq!(h.looper.runtime().usage().total_tokens, 23);
}

#[test]
fn request_errors_do_not_fail_over() {
    for code in [400, 422, 413] {
        let mut h = Harness::new(
            config(single(&["m0", "m1"]), &[100, 1000]),
            vec![status(code), answer(5, "one")],
        );
        let err = h.run().unwrap_err();
        assert_eq!(err.status, if code == 413 { 413 } else { 400 });
        assert!(
            !err.message.contains("cluster xyz"),
            "no upstream internals"
        );
        assert_eq!(h.models_called(), vec![0]);
    }
}

#[test]
fn all_failed_is_502_without_upstream_details() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![status(500), Script::Hang],
    );
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 502);
    assert!(!err.message.contains("cluster"));
    assert_eq!(h.models_called(), vec![0, 1]);
    assert!(h.looper.runtime().trace()["stop_reason"]
        .as_str()
        .unwrap()
        .contains("exhausted"));
}

#[test]
fn max_calls_bounds_the_failover() {
    let mut recipe = single(&["m0", "m1", "m2"]);
    recipe["max_calls"] = json!(2);
    let mut h = Harness::new(
        config(recipe, &[100, 100, 100]),
        vec![status(500), status(500), answer(1, "two")],
    );
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 502);
    assert_eq!(h.models_called(), vec![0, 1]);
    let trace = h.looper.runtime().trace();
    assert!(trace["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("max_calls")));
}

#[test]
fn deadline_ends_the_request_with_504() {
    let mut recipe = single(&["m0", "m1"]);
    recipe["deadline_ms"] = json!(150);
    let mut h = Harness::new(
        config(recipe, &[100, 1000]),
        vec![Script::Hang, Script::Hang],
    );
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 504);
    // The second call only had the 50 ms left before the deadline.
    assert_eq!(h.dispatched[0].2, 100);
    assert_eq!(h.dispatched[1].2, 50);
    assert_eq!(h.now, Millis(1_000_000 + 150));
}

#[test]
fn recipe_call_timeout_caps_model_timeouts() {
    let mut recipe = single(&["m0"]);
    recipe["call_timeout_ms"] = json!(40);
    let mut h = Harness::new(config(recipe, &[1000]), vec![answer(1, "x")]);
    h.run().unwrap();
    assert_eq!(h.dispatched[0].2, 40);
}

#[test]
fn refused_dispatch_fails_over() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![answer(1, "zero"), answer(1, "one")],
    );
    let (first, _, _, _) = h.dispatched[0].clone();
    h.in_flight.remove(&first);
    h.looper.on_call_result(first, CallResult::Rejected, h.now);
    h.drain();
    let result = h.run().unwrap();
    assert_eq!(content_of(&result), "one");
}

#[test]
fn results_for_unknown_or_finished_calls_are_ignored() {
    let mut h = Harness::new(config(single(&["m0"]), &[100]), vec![answer(1, "zero")]);
    h.looper
        .on_call_result(CallId(99), CallResult::Reset, h.now);
    h.drain();
    assert!(!h.finished);
    let first = h.dispatched[0].0;
    h.run().unwrap();
    let usage = *h.looper.runtime().usage();
    h.looper.on_call_result(
        first,
        CallResult::Response {
            status: 200,
            body: completion("again", 100, 100),
        },
        h.now,
    );
    h.drain();
    assert_eq!(*h.looper.runtime().usage(), usage);
}

#[test]
fn early_deadline_events_do_nothing() {
    let mut h = Harness::new(config(single(&["m0"]), &[100]), vec![answer(1, "zero")]);
    h.looper.on_deadline(h.now.plus(5));
    h.drain();
    assert!(!h.finished);
    assert_eq!(h.looper.next_deadline(), Some(Millis(1_000_000 + 10_000)));
    h.looper.on_deadline(Millis(1_000_000 + 10_000));
    h.drain();
    assert!(h.finished);
    assert_eq!(h.looper.take_result().unwrap().unwrap_err().status, 504);
    assert_eq!(h.looper.next_deadline(), None);
    assert_eq!(h.looper.runtime().abandoned_calls(), 1);
}

#[test]
fn time_never_goes_backwards() {
    let mut h = Harness::new(config(single(&["m0"]), &[100]), vec![answer(1, "zero")]);
    let first = h.dispatched[0].0;
    h.in_flight.clear();
    h.looper.on_call_result(
        first,
        CallResult::Response {
            status: 200,
            body: completion("z", 1, 1),
        },
        Millis(5),
    );
    assert_eq!(h.looper.runtime().now(), Millis(1_000_000));
}

#[test]
fn an_answer_arriving_with_the_deadline_still_counts() {
    let mut recipe = single(&["m0"]);
    recipe["deadline_ms"] = json!(100);
    let mut h = Harness::new(config(recipe, &[1000]), vec![answer(100, "just in time")]);
    assert_eq!(h.dispatched[0].2, 100);
    let result = h.run().unwrap();
    assert_eq!(content_of(&result), "just in time");
}

#[test]
fn every_upstream_rate_limited_is_429() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![status(429), status(429)],
    );
    assert_eq!(h.run().unwrap_err().status, 429);
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![status(429), status(500)],
    );
    assert_eq!(h.run().unwrap_err().status, 502);
}

/// A test algorithm: dispatches `fan_out` calls at once and finishes on the first success.
struct FanOut {
    fan_out: usize,
    finish_after_dispatch: bool,
}

impl Algorithm for FanOut {
    fn start(&mut self, rt: &mut Runtime) {
        for _ in 0..self.fan_out {
            let body = rt.request().upstream_body("up-0", &[]);
            if rt.dispatch(ModelId(0), "sample", body).is_err() {
                break;
            }
        }
        if self.finish_after_dispatch {
            rt.finish(Err(ApiError::internal("changed its mind")), "test");
        }
    }

    fn on_call_done(&mut self, rt: &mut Runtime, _call: CallId, outcome: CallOutcome) {
        if let CallOutcome::Ok(completion) = outcome {
            rt.finish(
                Ok(Answer::Upstream {
                    model: ModelId(0),
                    completion,
                }),
                "first success",
            );
        }
    }
}

fn fan_out_looper(recipe: Value, algorithm: FanOut) -> (Looper, Vec<LooperCommand>) {
    let config = config(recipe, &[1000]);
    let recipe = Rc::clone(&config.recipes[0]);
    let mut looper =
        Looper::with_algorithm(config, recipe, request(), Millis(0), Box::new(algorithm));
    let mut commands = Vec::new();
    while let Some(c) = looper.poll_command() {
        commands.push(c);
    }
    (looper, commands)
}

fn dispatched(commands: &[LooperCommand]) -> Vec<CallId> {
    commands
        .iter()
        .filter_map(|c| match c {
            LooperCommand::Dispatch { call, .. } => Some(*call),
            _ => None,
        })
        .collect()
}

fn budget_recipe(max_calls: u32, max_concurrent: u32) -> Value {
    // `single` is the only configurable algorithm yet; the runtime reads the budget alone.
    let _ = max_concurrent;
    let models: Vec<String> = vec!["m0".to_string()];
    json!({"algorithm": "single", "models": models, "max_calls": max_calls})
}

#[test]
fn dispatches_beyond_max_calls_are_refused_and_noted() {
    let (looper, commands) = fan_out_looper(
        budget_recipe(3, 1),
        FanOut {
            fan_out: 5,
            finish_after_dispatch: false,
        },
    );
    // max_concurrent is 1 for this recipe: one call starts, two wait, two are refused.
    assert_eq!(dispatched(&commands).len(), 1);
    assert_eq!(looper.runtime().queued(), 2);
    assert_eq!(looper.runtime().calls().len(), 3);
    let notes = looper.runtime().trace()["notes"].to_string();
    assert!(notes.contains("max_calls"), "{notes}");
}

#[test]
fn queued_calls_start_as_results_come_in_and_stop_at_finish() {
    let (mut looper, commands) = fan_out_looper(
        budget_recipe(3, 1),
        FanOut {
            fan_out: 3,
            finish_after_dispatch: false,
        },
    );
    let first = dispatched(&commands)[0];
    looper.on_call_result(first, CallResult::Reset, Millis(10));
    let mut next = Vec::new();
    while let Some(c) = looper.poll_command() {
        next.push(c);
    }
    let second = dispatched(&next);
    assert_eq!(
        second.len(),
        1,
        "the next queued call starts after the failure"
    );
    looper.on_call_result(
        second[0],
        CallResult::Response {
            status: 200,
            body: completion("done", 1, 1),
        },
        Millis(20),
    );
    let mut last = Vec::new();
    while let Some(c) = looper.poll_command() {
        last.push(c);
    }
    assert!(dispatched(&last).is_empty(), "no call starts once finished");
    assert!(last.contains(&LooperCommand::Finished));
    let skipped = looper
        .runtime()
        .calls()
        .iter()
        .filter(|c| c.outcome == Some("skipped"))
        .count();
    assert_eq!(skipped, 1);
}

#[test]
fn finishing_withdraws_dispatches_the_host_has_not_taken() {
    let (looper, commands) = fan_out_looper(
        budget_recipe(3, 1),
        FanOut {
            fan_out: 2,
            finish_after_dispatch: true,
        },
    );
    assert!(dispatched(&commands).is_empty(), "{commands:?}");
    assert_eq!(looper.runtime().in_flight(), 0);
    assert_eq!(looper.runtime().calls_started(), 0);
}
