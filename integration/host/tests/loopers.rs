//! Looping recipes through the real plugin in the fake Envoy: concurrency caps counted at the
//! host, the request deadline, Confidence escalation and the Ratings vote.

use looper_host::{Plugin, Request, Vm, VmOptions};
use serde_json::{json, Value};

fn config(recipe: Value, deadline_ms: u64) -> Value {
    let models: serde_json::Map<String, Value> = (0..5)
        .map(|i| {
            (
                format!("m{i}"),
                json!({"cluster": "simulator", "model": format!("up-{i}"), "logprobs": true,
                       "timeout_ms": 10_000}),
            )
        })
        .collect();
    json!({"models": models, "recipes": {"r": recipe},
           "virtual_models": {"looper/x": {"recipe": "r"}},
           "limits": {"request_deadline_ms": deadline_ms}, "trace": {"allow": true}})
}

fn vm(config: &Value) -> Vm {
    let mut vm = Vm::new(
        Plugin::shared(),
        VmOptions::default().with_cluster("simulator"),
    )
    .unwrap();
    assert!(vm.configure(&config.to_string()), "{:?}", vm.logs());
    vm
}

fn ask(vm: &mut Vm) -> u32 {
    vm.send_request(
        Request::post_json(
            "/v1/chat/completions",
            &json!({"model": "looper/x", "messages": [{"role": "user", "content": "Which?"}]}),
        )
        .header("x-looper-trace", "1"),
    )
}

fn answer_body(letter: &str, p: f64) -> Value {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": format!("ANSWER: {letter}")},
        "logprobs": {"content": [
            {"token": "ANSWER:", "logprob": -0.01, "top_logprobs": []},
            {"token": format!(" {letter}"), "logprob": p.ln(), "top_logprobs": []}]},
        "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
}

#[test]
fn ratings_never_has_more_than_max_concurrent_calls_in_flight() {
    let members: Vec<Value> = (0..5).map(|i| json!({"model": format!("m{i}")})).collect();
    let recipe = json!({"algorithm": "ratings", "members": members, "max_concurrent": 2,
                        "contract": {"type": "choice", "options": "AB"}});
    let mut vm = vm(&config(recipe, 60_000));
    let ctx = ask(&mut vm);
    let letters = ["A", "B", "A", "B", "A"];
    let mut answered = 0;
    // Answer the newest pending call first, so completions arrive out of dispatch order.
    while let Some(call) = vm.pending_calls_for(ctx).pop() {
        assert!(vm.in_flight(ctx) <= 2);
        let model = call.json().unwrap()["model"].as_str().unwrap().to_string();
        let index: usize = model.trim_start_matches("up-").parse().unwrap();
        vm.respond_json(call.token, 200, &answer_body(letters[index], 0.9))
            .unwrap();
        answered += 1;
    }
    assert_eq!(
        vm.max_in_flight(ctx),
        2,
        "the cap was reached but never exceeded"
    );
    assert!(answered >= 3);
    let reply = vm.reply(ctx).expect("a reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-looper-algorithm"), Some("ratings"));
    let v = reply.json().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "ANSWER: A");
    assert_eq!(v["looper_trace"]["winner"]["answer"], "A");
}

#[test]
fn the_deadline_ends_a_looping_request_with_a_well_formed_reply() {
    let members: Vec<Value> = (0..4).map(|i| json!({"model": format!("m{i}")})).collect();
    let recipe = json!({"algorithm": "ratings", "members": members, "max_concurrent": 4,
                        "contract": {"type": "choice", "options": "AB"}});
    let mut vm = vm(&config(recipe, 800));
    let ctx = ask(&mut vm);
    assert_eq!(vm.pending_calls_for(ctx).len(), 4);
    assert!(vm
        .pending_calls_for(ctx)
        .iter()
        .all(|c| c.timeout_ms <= 800));
    // Nobody answers; Envoy's timers fire at the deadline.
    vm.run_for(800);
    let reply = vm.reply(ctx).expect("a reply by the deadline");
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-looper-calls"), Some("4"));
    let v = reply.json().unwrap();
    assert_eq!(v["error"]["code"], "deadline_exceeded");
    assert_eq!(v["looper_trace"]["steps"].as_array().unwrap().len(), 4);
    vm.finish(ctx).unwrap();
    assert!(!vm.is_failed());
}

#[test]
fn confidence_escalates_then_stops_at_a_confident_answer() {
    let recipe = json!({"algorithm": "confidence", "contract": {"type": "choice", "options": "AB"},
        "candidates": [{"model": "m0", "threshold": 0.8}, {"model": "m1", "threshold": 0.8},
                       {"model": "m2", "threshold": 0.8}]});
    let mut vm = vm(&config(recipe, 60_000));
    let ctx = ask(&mut vm);
    let first = vm.pending_calls_for(ctx).pop().unwrap();
    assert_eq!(first.json().unwrap()["logprobs"], true);
    vm.respond_json(first.token, 200, &answer_body("A", 0.4))
        .unwrap();
    let second = vm.pending_calls_for(ctx).pop().expect("escalated");
    assert_eq!(second.json().unwrap()["model"], "up-1");
    vm.respond_json(second.token, 200, &answer_body("B", 0.95))
        .unwrap();
    let reply = vm.reply(ctx).expect("a reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-looper-models"), Some("m0,m1"));
    assert_eq!(reply.header("x-looper-confidence"), Some("0.950"));
    let v = reply.json().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "ANSWER: B");
    assert!(v["choices"][0]["logprobs"].is_null());
    assert_eq!(v["usage"]["total_tokens"], 24);
    assert_eq!(
        vm.metric("looper.escalations_total").map(|m| m.value),
        Some(1)
    );
}

fn chat_body(content: &str) -> Value {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
        "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
}

#[test]
fn a_malicious_plan_dispatches_nothing_it_should_not() {
    // Workers m0 and m1 only; m3 and m4 exist in the configuration but are not on the list.
    let recipe = json!({"algorithm": "workflows", "planner": "m2", "finalizer": "m2",
        "max_steps": 3, "max_parallel": 2,
        "workers": {"coder": {"model": "m0"}, "tester": {"model": "m1"}},
        "steps": [{"id": "answer", "worker": "coder", "instruction": "answer the question"}]});
    let mut vm = vm(&config(recipe, 60_000));
    let ctx = ask(&mut vm);

    // First plan: hundreds of steps, every one a cycle, naming a model that is not a worker.
    let huge: Vec<Value> = (0..400)
        .map(|i| {
            json!({"id": format!("s{i}"), "worker": "m4", "instruction": "exfiltrate",
                        "after": [format!("s{}", (i + 1) % 400)]})
        })
        .collect();
    let planner = vm.pending_calls_for(ctx);
    assert_eq!(planner.len(), 1);
    assert_eq!(planner[0].json().unwrap()["model"], "up-2");
    let plan = json!({ "steps": huge }).to_string();
    vm.respond_json(planner[0].token, 200, &chat_body(&plan))
        .unwrap();

    // The re-plan: a few steps, but unknown workers, raw model names and a cycle.
    let replan = vm.pending_calls_for(ctx);
    assert_eq!(
        replan.len(),
        1,
        "only the re-plan call, no step of the plan"
    );
    let prompt = replan[0].json().unwrap()["messages"][0]["content"].to_string();
    assert!(prompt.contains("400 steps"), "{prompt}");
    let plan = json!({"steps": [
        {"id": "a", "worker": "up-3", "instruction": "x"},
        {"id": "b", "worker": "simulator", "instruction": "y", "after": ["c"]},
        {"id": "c", "worker": "coder", "instruction": "z", "after": ["b"]}]})
    .to_string();
    vm.respond_json(replan[0].token, 200, &chat_body(&plan))
        .unwrap();

    // The static plan runs instead: one step on the coder, then the finalizer.
    let step = vm.pending_calls_for(ctx);
    assert_eq!(step.len(), 1);
    assert_eq!(step[0].json().unwrap()["model"], "up-0");
    vm.respond_json(step[0].token, 200, &chat_body("42"))
        .unwrap();
    let finalizer = vm.pending_calls_for(ctx);
    assert_eq!(finalizer.len(), 1);
    assert_eq!(finalizer[0].json().unwrap()["model"], "up-2");
    vm.respond_json(finalizer[0].token, 200, &chat_body("The answer is 42."))
        .unwrap();

    let reply = vm.reply(ctx).expect("a reply");
    assert_eq!(reply.status, 200);
    let models: Vec<String> = vm
        .all_calls()
        .iter()
        .map(|c| c.json().unwrap()["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(models, vec!["up-2", "up-2", "up-0", "up-2"]);
    assert_eq!(vm.max_in_flight(ctx), 1);
    let v = reply.json().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "The answer is 42.");
    let trace = &v["looper_trace"];
    assert_eq!(trace["plan"]["source"], "fallback");
    assert_eq!(
        trace["plan"]["validation_errors"].as_array().unwrap().len(),
        2
    );
    vm.finish(ctx).unwrap();
    assert!(!vm.is_failed());
}
