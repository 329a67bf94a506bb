//! Smoke test of the real Looper plugin through the fake Envoy: the contract the
//! scenario suite builds on. Needs `cargo build --release --target wasm32-wasip1`
//! first (or `LOOPER_WASM`); `Plugin::shared` says so when the module is missing.

use looper_host::{HeaderMap, LogLevel, Outcome, Plugin, Request, Vm, VmOptions};
use serde_json::{json, Value};

/// The lead's default configuration (`filters/auto.json`, trimmed).
const CONFIG: &str = r#"{"models":{"sim-small":{"cluster":"simulator","model":"sim-small","timeout_ms":30000},"sim-medium":{"cluster":"simulator","model":"sim-medium","timeout_ms":30000}},
 "recipes":{"auto-single":{"algorithm":"single","models":["sim-medium","sim-small"]}},
 "virtual_models":{"vllm-sr/auto":{"recipe":"auto-single"}},
 "limits":{"max_body_bytes":4194304,"request_deadline_ms":120000}}"#;

fn configured_vm() -> Vm {
    let mut vm = Vm::new(
        Plugin::shared(),
        VmOptions::default().with_cluster("simulator"),
    )
    .expect("plugin starts");
    assert!(
        vm.configure(CONFIG),
        "configuration refused: {:?}",
        vm.logs()
    );
    vm
}

fn chat(model: &str) -> Request {
    Request::post_json(
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
}

fn completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    })
}

#[test]
fn default_configuration_is_accepted() {
    let vm = configured_vm();
    assert!(!vm.is_failed());
}

#[test]
fn invalid_configuration_is_refused_with_a_log_naming_the_field() {
    let mut vm = Vm::new(Plugin::shared(), VmOptions::default()).unwrap();
    assert!(!vm.configure(r#"{"models": 5}"#));
    assert!(
        !vm.is_failed(),
        "refusing a config must not trap: {:?}",
        vm.failure()
    );
    let errors: Vec<String> = vm
        .logs()
        .into_iter()
        .filter(|(level, _)| *level >= LogLevel::Warn)
        .map(|(_, message)| message)
        .collect();
    assert!(
        errors.iter().any(|m| m.contains("models")),
        "logs: {errors:?}"
    );
}

#[test]
fn models_endpoint_lists_the_virtual_model() {
    let mut vm = configured_vm();
    let ctx = vm.send_request(Request::get("/v1/models"));
    let reply = vm
        .reply(ctx)
        .unwrap_or_else(|| panic!("no local reply: {:?}", vm.outcome(ctx)));
    assert_eq!(reply.status, 200);
    let body = reply.json().expect("JSON body");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data array")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"vllm-sr/auto"), "{body}");
}

#[test]
fn virtual_model_request_dispatches_to_the_first_recipe_model() {
    let mut vm = configured_vm();
    let ctx = vm.send_request(chat("vllm-sr/auto"));
    assert_eq!(vm.outcome(ctx), Outcome::Pending);
    let calls = vm.pending_calls_for(ctx);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.cluster, "simulator");
    assert_eq!(call.path(), Some("/v1/chat/completions"));
    assert_eq!(call.method(), Some("POST"));
    assert_eq!(call.json().expect("JSON body")["model"], "sim-medium");
}

#[test]
fn answer_becomes_a_chat_completion_for_the_virtual_model() {
    let mut vm = configured_vm();
    let ctx = vm.send_request(chat("vllm-sr/auto"));
    let token = vm.pending_calls_for(ctx)[0].token;
    vm.respond_json(token, 200, &completion("sim-medium"))
        .unwrap();

    let reply = vm
        .reply(ctx)
        .unwrap_or_else(|| panic!("no reply: {:?} logs {:?}", vm.outcome(ctx), vm.logs()));
    assert_eq!(reply.status, 200);
    let body = reply.json().expect("JSON body");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "vllm-sr/auto");
    assert!(
        reply
            .headers
            .iter()
            .any(|(name, _)| name.starts_with("x-looper-")),
        "{:?}",
        reply.headers.to_string_pairs()
    );
    vm.finish(ctx).unwrap();
    assert!(vm.is_deleted(ctx));
    assert!(!vm.is_failed());
}

#[test]
fn server_error_fails_over_to_the_next_model() {
    let mut vm = configured_vm();
    let ctx = vm.send_request(chat("vllm-sr/auto"));
    let first = vm.pending_calls_for(ctx)[0].token;
    vm.respond(
        first,
        500,
        [("content-type", "application/json")],
        r#"{"error":"boom"}"#,
    )
    .unwrap();

    let calls = vm.pending_calls_for(ctx);
    assert_eq!(calls.len(), 1, "expected the failover call: {calls:?}");
    assert_eq!(calls[0].json().expect("JSON body")["model"], "sim-small");
    assert_eq!(vm.max_in_flight(ctx), 1);
}

#[test]
fn other_models_pass_through_untouched() {
    let mut vm = configured_vm();
    let request = chat("gpt-other");
    let sent_body = request.body.clone().unwrap();
    let ctx = vm.send_request(request);
    match vm.outcome(ctx) {
        Outcome::Continued { headers, body } => {
            assert_eq!(body, sent_body);
            assert_eq!(headers.get_str(":path"), Some("/v1/chat/completions"));
        }
        other => panic!("expected Continued, got {other:?}; logs {:?}", vm.logs()),
    }
    assert!(vm.all_calls().is_empty());
    vm.finish_with_response(
        ctx,
        200,
        HeaderMap::from([("content-type", "application/json")]),
        "{}",
    )
    .unwrap();
    assert_eq!(vm.client_response(ctx).map(|r| r.status), Some(200));
}
