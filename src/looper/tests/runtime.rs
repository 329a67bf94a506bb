//! The runtime's budget and failure policies, driven by a minimal test algorithm.
//!
//! Part of the looper tests, compiled only under #[cfg(test)].

use super::*;

/// Dispatches `fan_out` calls at once; finishes on the first success (or at once).
struct FanOut {
    fan_out: usize,
    finish_after_dispatch: bool,
    seen: Vec<(CallId, CallId, ModelId, &'static str)>,
}

impl FanOut {
    fn new(fan_out: usize) -> Self {
        FanOut {
            fan_out,
            finish_after_dispatch: false,
            seen: Vec::new(),
        }
    }
}

impl Algorithm for FanOut {
    fn start(&mut self, rt: &mut Runtime) {
        for _ in 0..self.fan_out {
            if rt.dispatch(ModelId(0), CallPlan::answer("answer")).is_err() {
                break;
            }
        }
        if self.finish_after_dispatch {
            rt.finish(Err(ApiError::internal("changed its mind")), "test");
        }
    }

    fn on_call_done(&mut self, rt: &mut Runtime, done: CallDone) {
        self.seen
            .push((done.step, done.call, done.model, done.outcome.name()));
        if let CallOutcome::Ok(completion) = done.outcome {
            rt.finish(
                Ok(Answer::Upstream {
                    model: done.model,
                    completion,
                }),
                "first success",
            );
        }
    }
}

fn looper(recipe: Value, timeouts: &[u64], algorithm: FanOut) -> Looper {
    looper_with(recipe, timeouts, algorithm, request())
}

fn looper_with(
    recipe: Value,
    timeouts: &[u64],
    algorithm: FanOut,
    request: Rc<ChatRequest>,
) -> Looper {
    let config = config(recipe, timeouts);
    let recipe = Rc::clone(&config.recipes[0]);
    Looper::with_algorithm(config, recipe, request, T0, "n".into(), Box::new(algorithm))
}

/// A ratings recipe: the runtime reads its budget, whatever the test algorithm does.
fn budget(max_calls: u32, max_concurrent: u32, models: usize) -> Value {
    let members: Vec<Value> = (0..models)
        .map(|i| json!({"model": format!("m{i}")}))
        .collect();
    json!({"algorithm": "ratings", "members": members, "max_calls": max_calls,
           "max_concurrent": max_concurrent})
}

fn dispatched(h: &Harness) -> usize {
    h.dispatched.len()
}

#[test]
fn concurrency_is_capped_and_queued_calls_start_as_others_end() {
    let mut h = Harness::around(
        looper(budget(5, 2, 1), &[1000], FanOut::new(5)),
        vec![reset(10)],
    );
    assert_eq!(dispatched(&h), 2, "two in flight, three queued");
    assert_eq!(h.looper.runtime().queued(), 3);
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 502);
    assert_eq!(h.max_in_flight, 2);
    assert_eq!(dispatched(&h), 5);
}

#[test]
fn dispatches_beyond_max_calls_are_refused_and_noted() {
    let h = Harness::around(
        looper(budget(3, 1, 1), &[1000], FanOut::new(5)),
        vec![hang()],
    );
    assert_eq!(h.looper.runtime().calls().len(), 3);
    assert!(h.notes().contains("max_calls"), "{}", h.notes());
    assert!(h.events.contains(&LooperEvent::BudgetStop));
}

#[test]
fn no_call_starts_once_finished_and_unsent_ones_are_withdrawn() {
    let mut fan = FanOut::new(2);
    fan.finish_after_dispatch = true;
    let h = Harness::around(looper(budget(3, 1, 1), &[1000], fan), vec![hang()]);
    assert!(h.dispatched.is_empty());
    assert_eq!(h.looper.runtime().in_flight(), 0);
    assert_eq!(h.looper.runtime().calls_started(), 0);

    let mut h = Harness::around(
        looper(budget(3, 1, 1), &[1000], FanOut::new(3)),
        vec![answer(5, "x")],
    );
    h.run().unwrap();
    assert_eq!(dispatched(&h), 1, "the queued calls never started");
    let skipped = h
        .looper
        .runtime()
        .calls()
        .iter()
        .filter(|c| c.outcome == Some("skipped"))
        .count();
    assert_eq!(skipped, 2);
}

#[test]
fn token_budget_stops_calls_that_would_exceed_it() {
    // Each call may use its prompt (body bytes / 4) plus max_tokens=100 completion tokens.
    let mut recipe = budget(5, 5, 1);
    recipe["token_budget"] = json!(250);
    let request = request_with(json!({"max_tokens": 100}));
    let h = Harness::with_request_looper(
        looper_with(recipe, &[1000], FanOut::new(5), request),
        vec![hang()],
    );
    let started = dispatched(&h);
    assert!((1..5).contains(&started), "{started}");
    assert!(h.notes().contains("token budget"), "{}", h.notes());
    assert!(h.events.contains(&LooperEvent::BudgetStop));
}

#[test]
fn cost_budget_counts_what_was_spent() {
    // Price 1/M input and 2/M output: a call estimated at ~30 prompt + 1024 completion
    // tokens costs about 0.0021; a budget of 0.003 allows one such call, not two.
    let mut recipe = budget(5, 5, 1);
    recipe["cost_budget"] = json!(0.003);
    let h = Harness::around(looper(recipe, &[1000], FanOut::new(3)), vec![hang()]);
    assert_eq!(dispatched(&h), 1);
    assert!(h.notes().contains("cost budget"), "{}", h.notes());
}

#[test]
fn policy_fail_ends_the_request_on_the_first_failure() {
    let mut recipe = budget(3, 3, 1);
    recipe["on_failure"] = json!({"policy": "fail"});
    let mut h = Harness::around(looper(recipe, &[1000], FanOut::new(2)), vec![status(500)]);
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 502);
    assert!(err.message.contains("policy"));
    assert!(h.events.contains(&LooperEvent::PolicyFail));
}

#[test]
fn policy_fallback_retries_the_step_once_on_the_named_model() {
    let mut recipe = budget(4, 1, 2);
    recipe["on_failure"] = json!({"policy": "fallback", "model": "m1"});
    let config = config(recipe, &[1000, 1000]);
    let recipe = Rc::clone(&config.recipes[0]);
    let looper = Looper::with_algorithm(
        config,
        recipe,
        request(),
        T0,
        "n".into(),
        Box::new(FanOut::new(1)),
    );
    let mut h = Harness::around(looper, vec![status(500), answer(5, "from m1")]);
    let result = h.run().unwrap();
    assert_eq!(content_of(&result), "from m1");
    assert_eq!(h.models_called(), vec![0, 1]);
    assert!(h.events.contains(&LooperEvent::PolicyFallback));
    let trace = h.trace();
    assert_eq!(trace["steps"][1]["fallback_of"], 0);
    // The fallback body is the same request on the other model.
    assert_eq!(h.dispatched[1].3["model"], "up-1");
    assert_eq!(h.dispatched[1].3["top_k"], 4);
}

#[test]
fn policy_fallback_gives_up_after_one_retry() {
    let mut recipe = budget(4, 1, 2);
    recipe["on_failure"] = json!({"policy": "fallback", "model": "m1"});
    let config = config(recipe, &[1000, 1000]);
    let recipe = Rc::clone(&config.recipes[0]);
    let fan = FanOut::new(1);
    let looper = Looper::with_algorithm(config, recipe, request(), T0, "n".into(), Box::new(fan));
    let mut h = Harness::around(looper, vec![status(500), status(503)]);
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 502, "nothing left to wait for");
    assert_eq!(h.models_called(), vec![0, 1]);
}

#[test]
fn role_parameters_and_plans_shape_the_body() {
    let mut recipe = budget(2, 1, 1);
    recipe["roles"] = json!({"answer": {"temperature": 0.1, "max_tokens": 64,
                                        "reasoning_effort": "low"}});
    recipe["contract"] = json!({"type": "choice", "options": "AB"});
    let h = Harness::around(looper(recipe, &[1000], FanOut::new(1)), vec![hang()]);
    let body = &h.dispatched[0].3;
    assert_eq!(body["temperature"], 0.1);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["reasoning_effort"], "low");
    assert_eq!(body["top_k"], 4, "unknown client fields survive");
    assert!(body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("ANSWER: X"));
}

#[test]
fn own_prompts_drop_client_only_fields() {
    struct Judge;
    impl Algorithm for Judge {
        fn start(&mut self, rt: &mut Runtime) {
            let plan = CallPlan::own("judge", json!([{"role": "user", "content": "judge this"}]))
                .with("temperature", json!(0.0));
            let _ = rt.dispatch(ModelId(0), plan);
        }
        fn on_call_done(&mut self, _rt: &mut Runtime, _done: CallDone) {}
    }
    let config = config(budget(2, 1, 1), &[1000]);
    let recipe = Rc::clone(&config.recipes[0]);
    let request = request_with(json!({"tools": [{"type": "function"}], "n": 2,
        "response_format": {"type": "json_object"}, "chat_template_kwargs": {"x": 1}}));
    let looper = Looper::with_algorithm(config, recipe, request, T0, "n".into(), Box::new(Judge));
    let h = Harness::around(looper, vec![hang()]);
    let body = &h.dispatched[0].3;
    assert_eq!(body["messages"][0]["content"], "judge this");
    for gone in ["tools", "n", "response_format"] {
        assert!(body.get(gone).is_none(), "{gone}");
    }
    assert_eq!(body["chat_template_kwargs"]["x"], 1);
    assert_eq!(body["temperature"], 0.0);
}
