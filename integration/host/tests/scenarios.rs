//! Scenarios of the real release plugin inside the fake Envoy: the request surface, failover
//! for every upstream failure, deadlines, every bad input, and a VM that keeps serving.

use looper_host::{LogLevel, Outcome, Plugin, Request, Vm, VmOptions};
use serde_json::{json, Value};

const VIRTUAL: &str = "vllm-sr/auto";

fn config() -> Value {
    json!({
        "models": {
            "medium": {"cluster": "simulator", "model": "sim-medium", "timeout_ms": 30000,
                       "price": {"input_per_million": 1.0, "output_per_million": 2.0}},
            "small": {"cluster": "simulator", "model": "sim-small", "timeout_ms": 20000,
                      "auth": {"env": "SIM_KEY"}}
        },
        "recipes": {"r": {"algorithm": "single", "models": ["medium", "small"]}},
        "virtual_models": {VIRTUAL: {"recipe": "r"}},
        "passthrough_models": ["gpt-other"],
        "limits": {"max_body_bytes": 65536, "request_deadline_ms": 60000},
        "trace": {"allow": true}
    })
}

fn options() -> VmOptions {
    VmOptions::default()
        .with_cluster("simulator")
        .with_env("SIM_KEY", "key-123")
}

fn vm_with(config: &Value, options: VmOptions) -> Vm {
    let mut vm = Vm::new(Plugin::shared(), options).expect("plugin starts");
    assert!(
        vm.configure(&config.to_string()),
        "configuration refused: {:?}",
        vm.logs()
    );
    vm
}

fn vm() -> Vm {
    vm_with(&config(), options())
}

fn chat(extra: Value) -> Request {
    let mut body = json!({"model": VIRTUAL, "messages": [{"role": "user", "content": "hi"}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Request::post_json("/v1/chat/completions", &body)
}

fn completion(content: &str, finish: &str) -> Value {
    json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": "sim-medium",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
}

/// The only pending call of `ctx`.
fn single_call(vm: &Vm, ctx: u32) -> looper_host::HttpCall {
    let calls = vm.pending_calls_for(ctx);
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.into_iter().next().unwrap()
}

fn reply_json(vm: &Vm, ctx: u32) -> (u32, Value) {
    let reply = vm
        .reply(ctx)
        .unwrap_or_else(|| panic!("no reply: {:?} logs {:?}", vm.outcome(ctx), vm.logs()));
    (reply.status, reply.json().expect("JSON reply"))
}

fn counter(vm: &Vm, name: &str) -> i64 {
    vm.metric(name).map_or(0, |m| m.value as i64)
}

#[test]
fn happy_path_reply_headers_usage_and_finish_reason() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(json!({"top_k": 7, "stream_options": null})));
    let call = single_call(&vm, ctx);
    assert_eq!(call.cluster, "simulator");
    assert_eq!(call.header(":authority"), Some("simulator"));
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.header("authorization"), None);
    assert_eq!(call.timeout_ms, 30000);
    let body = call.json().unwrap();
    assert_eq!(body["model"], "sim-medium");
    assert_eq!(body["top_k"], 7);
    vm.advance(40);
    vm.respond_json(call.token, 200, &completion("hello", "length"))
        .unwrap();
    let reply = vm.reply(ctx).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-looper-model"), Some(VIRTUAL));
    assert_eq!(reply.header("x-looper-algorithm"), Some("single"));
    assert_eq!(reply.header("x-looper-calls"), Some("1"));
    assert_eq!(reply.header("x-looper-models"), Some("medium"));
    assert_eq!(reply.header("x-looper-latency-ms"), Some("40"));
    assert_eq!(reply.header("x-looper-cost"), Some("0.00001900"));
    let v = reply.json().unwrap();
    assert_eq!(v["model"], VIRTUAL);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["total_tokens"], 12);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    vm.finish(ctx).unwrap();
    assert_eq!(counter(&vm, "looper.requests_total"), 1);
    assert_eq!(counter(&vm, "looper.model.medium.calls.ok"), 1);
    assert_eq!(counter(&vm, "looper.responses_2xx"), 1);
    assert!(!vm.is_failed());
}

#[test]
fn credentials_come_from_the_environment_and_never_leak() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(json!({})).header("x-looper-trace", "1"));
    let first = single_call(&vm, ctx);
    vm.respond(first.token, 503, [("content-type", "text/plain")], "busy")
        .unwrap();
    let second = single_call(&vm, ctx);
    assert_eq!(second.header("authorization"), Some("Bearer key-123"));
    vm.respond_json(second.token, 200, &completion("ok", "stop"))
        .unwrap();
    let reply = vm.reply(ctx).unwrap();
    assert!(!reply.body_str().contains("key-123"));
    assert!(reply
        .headers
        .to_string_pairs()
        .iter()
        .all(|(_, v)| !v.contains("key-123")));
    assert!(vm.logs().iter().all(|(_, line)| !line.contains("key-123")));
}

#[test]
fn missing_credential_variable_refuses_the_configuration() {
    let mut vm = Vm::new(
        Plugin::shared(),
        VmOptions::default().with_cluster("simulator"),
    )
    .unwrap();
    assert!(!vm.configure(&config().to_string()));
    assert!(!vm.logs_containing("models.small.auth.env").is_empty());
}

/// Makes the call with this token fail in one particular way.
type Fault = Box<dyn Fn(&mut Vm, u32)>;

/// Every way the first upstream can fail without the request being at fault.
fn failures() -> Vec<(&'static str, Fault)> {
    let respond = |status: u32, body: &'static [u8]| -> Fault {
        Box::new(move |vm: &mut Vm, token| {
            vm.respond(token, status, [("content-type", "application/json")], body)
                .unwrap()
        })
    };
    vec![
        ("500", respond(500, b"{\"error\":{\"message\":\"x\"}}")),
        ("502", respond(502, b"bad gateway")),
        ("429", respond(429, b"{}")),
        ("401", respond(401, b"{}")),
        ("timeout", Box::new(|vm: &mut Vm, t| vm.timeout(t).unwrap())),
        (
            "connect",
            Box::new(|vm: &mut Vm, t| vm.connect_failure(t).unwrap()),
        ),
        ("reset", Box::new(|vm: &mut Vm, t| vm.reset(t).unwrap())),
        ("garbage", respond(200, b"\xff\xfe not json")),
        (
            "truncated",
            respond(200, b"{\"choices\":[{\"message\":{\"cont"),
        ),
        ("wrong shape", respond(200, b"{\"unexpected\":true}")),
        ("empty choices", respond(200, b"{\"choices\":[]}")),
        ("empty body", respond(200, b"")),
        (
            "content not text",
            respond(200, b"{\"choices\":[{\"message\":{\"content\":5}}]}"),
        ),
    ]
}

#[test]
fn every_upstream_failure_fails_over_to_the_next_model() {
    let mut vm = vm();
    for (name, fail) in failures() {
        let ctx = vm.send_request(chat(json!({})));
        let first = single_call(&vm, ctx);
        fail(&mut vm, first.token);
        let second = single_call(&vm, ctx);
        assert_eq!(second.json().unwrap()["model"], "sim-small", "{name}");
        vm.respond_json(second.token, 200, &completion("from small", "stop"))
            .unwrap();
        let (status, v) = reply_json(&vm, ctx);
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            v["choices"][0]["message"]["content"], "from small",
            "{name}"
        );
        let reply = vm.reply(ctx).unwrap();
        assert_eq!(
            reply.header("x-looper-models"),
            Some("medium,small"),
            "{name}"
        );
        assert_eq!(vm.max_in_flight(ctx), 1, "{name}");
        vm.finish(ctx).unwrap();
    }
    assert!(!vm.is_failed());
    assert_eq!(
        counter(&vm, "looper.failovers_total"),
        failures().len() as i64
    );
    assert_eq!(counter(&vm, "looper.model.medium.calls.timeout"), 1);
    assert_eq!(counter(&vm, "looper.model.medium.calls.connect_error"), 1);
    assert_eq!(counter(&vm, "looper.model.medium.calls.reset"), 1);
}

#[test]
fn all_upstreams_failing_is_502_and_the_vm_serves_on() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(json!({})));
    vm.reset(single_call(&vm, ctx).token).unwrap();
    vm.respond(
        single_call(&vm, ctx).token,
        500,
        [("x", "y")],
        "cluster internal-42 down",
    )
    .unwrap();
    let (status, v) = reply_json(&vm, ctx);
    assert_eq!(status, 502);
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(!v.to_string().contains("internal-42"));
    assert_eq!(counter(&vm, "looper.responses_5xx"), 1);

    let ctx = vm.send_request(chat(json!({})));
    vm.respond_json(single_call(&vm, ctx).token, 200, &completion("ok", "stop"))
        .unwrap();
    assert_eq!(reply_json(&vm, ctx).0, 200);
}

#[test]
fn upstream_request_errors_are_not_retried() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(json!({})));
    vm.respond(single_call(&vm, ctx).token, 400, [("a", "b")], "{}")
        .unwrap();
    let (status, v) = reply_json(&vm, ctx);
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "upstream_rejected_request");
    assert_eq!(vm.all_calls().len(), 1);
}

#[test]
fn unknown_cluster_is_a_failed_call_not_a_crash() {
    let mut cfg = config();
    cfg["models"]["medium"]["cluster"] = json!("not-a-cluster");
    let mut vm = vm_with(&cfg, options());
    let ctx = vm.send_request(chat(json!({})));
    // The refused dispatch fell through to the next model at once.
    let call = single_call(&vm, ctx);
    assert_eq!(call.json().unwrap()["model"], "sim-small");
    vm.respond_json(call.token, 200, &completion("ok", "stop"))
        .unwrap();
    assert_eq!(reply_json(&vm, ctx).0, 200);
    assert_eq!(counter(&vm, "looper.model.medium.calls.rejected"), 1);
    assert!(!vm.logs_containing("not-a-cluster").is_empty());
}

#[test]
fn call_timeouts_never_outlive_the_request_deadline() {
    let mut cfg = config();
    cfg["limits"]["request_deadline_ms"] = json!(1000);
    cfg["models"]["medium"]["timeout_ms"] = json!(700);
    let mut vm = vm_with(&cfg, options());
    let ctx = vm.send_request(chat(json!({})));
    assert_eq!(single_call(&vm, ctx).timeout_ms, 700);
    // Envoy's timer fires at 700 ms; the failover only gets the remaining 300 ms.
    vm.run_for(700);
    let second = single_call(&vm, ctx);
    assert_eq!(second.timeout_ms, 300);
    vm.run_for(300);
    let (status, v) = reply_json(&vm, ctx);
    assert_eq!(status, 504);
    assert_eq!(v["error"]["code"], "deadline_exceeded");
    assert_eq!(vm.reply(ctx).unwrap().header("x-looper-calls"), Some("2"));
}

#[test]
fn streaming_request_gets_an_sse_reply() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    ));
    let call = single_call(&vm, ctx);
    let body = call.json().unwrap();
    assert_eq!(body["stream"], false);
    assert!(body.get("stream_options").is_none());
    vm.respond_json(call.token, 200, &completion("naïve 日本語 🙂 text", "stop"))
        .unwrap();
    let reply = vm.reply(ctx).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let text = reply.body_str().to_string();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let mut content = String::new();
    let mut usage = None;
    for event in text.trim_end().split("\n\n") {
        let data = event.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"]["total_tokens"].clone());
        }
    }
    assert_eq!(content, "naïve 日本語 🙂 text");
    assert_eq!(usage, Some(json!(12)));
}

#[test]
fn trace_is_returned_on_request() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(json!({})).header("x-looper-trace", "1"));
    vm.timeout(single_call(&vm, ctx).token).unwrap();
    vm.respond_json(single_call(&vm, ctx).token, 200, &completion("ok", "stop"))
        .unwrap();
    let (_, v) = reply_json(&vm, ctx);
    let steps = v["looper_trace"]["steps"].as_array().unwrap();
    assert_eq!(steps[0]["outcome"], "timeout");
    assert_eq!(steps[1]["outcome"], "ok");
}

#[test]
fn models_endpoints() {
    let mut vm = vm();
    let ctx = vm.send_request(Request::get("/v1/models"));
    let (status, v) = reply_json(&vm, ctx);
    assert_eq!(status, 200);
    let ids: Vec<_> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(VIRTUAL), json!("gpt-other")]);

    let ctx = vm.send_request(Request::get("/v1/models/vllm-sr/auto"));
    assert_eq!(reply_json(&vm, ctx).1["id"], VIRTUAL);

    let ctx = vm.send_request(Request::get("/v1/models/gpt-other"));
    assert!(vm.outcome(ctx).is_continued());
}

#[test]
fn other_models_pass_through_byte_for_byte() {
    let mut vm = vm();
    let body = br#"{"model":"gpt-other","messages":[{"role":"user","content":"hi"}],"x":1}"#;
    let request = Request::post("/v1/chat/completions", body.to_vec())
        .header("content-type", "application/json")
        .header("x-custom", "kept")
        .chunked(16);
    let ctx = vm.send_request(request);
    match vm.outcome(ctx) {
        Outcome::Continued { headers, body: got } => {
            assert_eq!(got, body.to_vec());
            assert_eq!(
                headers.get("x-custom").map(|v| v.to_vec()),
                Some(b"kept".to_vec())
            );
        }
        other => panic!("not passed through: {other:?}"),
    }
    assert!(vm.all_calls().is_empty());
    assert_eq!(counter(&vm, "looper.passthrough_total"), 1);
}

#[test]
fn a_large_request_for_another_model_passes_through_past_the_plugin_limit() {
    let mut vm = vm();
    // The official client sends `messages` before `model`; the plugin keeps scanning past its
    // own 64 KiB limit and lets the request go once it sees the model is not virtual.
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"gpt-other"}}"#,
        "y".repeat(300_000)
    );
    let ctx = vm.send_request(
        Request::post("/v1/chat/completions", body.clone().into_bytes())
            .header("content-type", "application/json")
            .chunked(65536),
    );
    match vm.outcome(ctx) {
        Outcome::Continued { body: got, .. } => assert_eq!(got, body.into_bytes()),
        other => panic!("not passed through: {other:?}"),
    }
}

#[test]
fn body_in_many_chunks_is_assembled() {
    let mut vm = vm();
    let long = "word ".repeat(2000);
    let ctx = vm
        .send_request(chat(json!({"messages": [{"role": "user", "content": long}]})).chunked(333));
    let call = single_call(&vm, ctx);
    assert_eq!(call.json().unwrap()["messages"][0]["content"], json!(long));
}

fn bad_requests() -> Vec<(&'static str, Request, u32)> {
    let post = |body: &[u8]| {
        Request::post("/v1/chat/completions", body.to_vec())
            .header("content-type", "application/json")
    };
    vec![
        ("malformed JSON", post(b"{\"model\": \"vllm-sr/auto\", "), 400),
        ("not an object", post(b"[1, 2, 3]"), 400),
        ("invalid UTF-8", post(b"\xff\xfe\xfd"), 400),
        ("empty body", Request::new("POST", "/v1/chat/completions"), 400),
        (
            "model not a string",
            post(br#"{"model": 12, "messages": []}"#),
            400,
        ),
        ("no messages", post(br#"{"model": "vllm-sr/auto"}"#), 400),
        (
            "messages not an array",
            post(br#"{"model": "vllm-sr/auto", "messages": {"a": 1}}"#),
            400,
        ),
        (
            "bad role",
            post(br#"{"model": "vllm-sr/auto", "messages": [{"role": 1, "content": "x"}]}"#),
            400,
        ),
        (
            "content wrong type",
            post(br#"{"model": "vllm-sr/auto", "messages": [{"role": "user", "content": {}}]}"#),
            400,
        ),
        (
            "stream wrong type",
            post(br#"{"model": "vllm-sr/auto", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}"#),
            400,
        ),
        (
            "n out of range",
            post(br#"{"model": "vllm-sr/auto", "n": 1000, "messages": [{"role": "user", "content": "x"}]}"#),
            400,
        ),
        (
            "unknown virtual model",
            post(br#"{"model": "vllm-sr/nope", "messages": [{"role": "user", "content": "x"}]}"#),
            404,
        ),
        (
            "over the plugin limit",
            post(format!(r#"{{"model": "vllm-sr/auto", "messages": [{{"role": "user", "content": "{}"}}]}}"#, "x".repeat(70_000)).as_bytes()),
            413,
        ),
        (
            "over the plugin limit, in chunks",
            post(format!(r#"{{"model": "vllm-sr/auto", "messages": [{{"role": "user", "content": "{}"}}]}}"#, "x".repeat(70_000)).as_bytes()).chunked(4096),
            413,
        ),
        (
            "over Envoy's buffer limit",
            post(&vec![b' '; 2 * 1024 * 1024]).chunked(65536),
            413,
        ),
        (
            "nested garbage",
            post(&[b'['; 60_000]),
            400,
        ),
    ]
}

#[test]
fn every_bad_request_gets_an_openai_error() {
    for (name, request, status) in bad_requests() {
        let mut vm = vm();
        let ctx = vm.send_request(request);
        let reply = vm
            .reply(ctx)
            .unwrap_or_else(|| panic!("{name}: no reply: {:?}", vm.outcome(ctx)));
        assert_eq!(reply.status, status, "{name}: {}", reply.body_str());
        if reply.body.starts_with(b"{") {
            let v = reply.json().unwrap();
            assert!(v["error"]["message"].is_string(), "{name}");
            assert!(v["error"]["type"].is_string(), "{name}");
        } else {
            assert_eq!(
                name, "over Envoy's buffer limit",
                "only Envoy's own 413 is not JSON"
            );
        }
        assert!(vm.all_calls().is_empty(), "{name}");
        assert!(!vm.is_failed(), "{name}: {:?}", vm.failure());
    }
}

#[test]
fn odd_headers_do_not_crash_the_vm() {
    let mut vm = vm();
    let requests = vec![
        chat(json!({})).header("x-looper-trace", b"\xff\xfe".as_slice()),
        Request::new("POST", "/v1/chat/completions\u{7f}?q=\u{1}").body(b"{}".to_vec()),
        Request::get("/v1/models/%ff%fe"),
        Request::new("GET", "/v1/models/\u{fffd}"),
        Request::new("BREW", "/v1/chat/completions"),
        Request::new("POST", "").body(b"x".to_vec()),
    ];
    for request in requests {
        let ctx = vm.send_request(request);
        vm.abort(ctx).ok();
    }
    assert!(!vm.is_failed(), "{:?}", vm.failure());
}

#[test]
fn the_vm_keeps_serving_after_garbage_input() {
    let mut vm = vm();
    for (_, request, _) in bad_requests() {
        let ctx = vm.send_request(request);
        vm.finish(ctx).ok();
    }
    for (name, fail) in failures() {
        let ctx = vm.send_request(chat(json!({})));
        for _ in 0..2 {
            let token = single_call(&vm, ctx).token;
            fail(&mut vm, token);
        }
        let expected = if name == "429" { 429 } else { 502 };
        assert_eq!(vm.reply(ctx).unwrap().status, expected, "{name}");
        vm.finish(ctx).unwrap();
    }
    assert!(!vm.is_failed(), "{:?}", vm.failure());
    let ctx = vm.send_request(chat(json!({})));
    vm.respond_json(
        single_call(&vm, ctx).token,
        200,
        &completion("alive", "stop"),
    )
    .unwrap();
    assert_eq!(
        reply_json(&vm, ctx).1["choices"][0]["message"]["content"],
        "alive"
    );
    assert!(vm
        .logs()
        .iter()
        .all(|(level, _)| *level < LogLevel::Critical));
}

#[test]
fn client_abort_mid_call_is_counted_and_the_next_request_works() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(json!({})));
    let _ = single_call(&vm, ctx);
    vm.abort(ctx).unwrap();
    assert!(vm.pending_calls().is_empty(), "the host cancelled the call");
    assert_eq!(counter(&vm, "looper.client_aborts_total"), 1);
    let ctx = vm.send_request(chat(json!({})));
    vm.respond_json(single_call(&vm, ctx).token, 200, &completion("ok", "stop"))
        .unwrap();
    assert_eq!(reply_json(&vm, ctx).0, 200);
}

#[test]
fn concurrent_requests_keep_their_calls_apart() {
    let mut vm = vm();
    let a = vm.send_request(chat(
        json!({"messages": [{"role": "user", "content": "a"}]}),
    ));
    let b = vm.send_request(chat(
        json!({"messages": [{"role": "user", "content": "b"}]}),
    ));
    let call_a = single_call(&vm, a);
    let call_b = single_call(&vm, b);
    vm.respond_json(call_b.token, 200, &completion("for b", "stop"))
        .unwrap();
    vm.respond_json(call_a.token, 200, &completion("for a", "stop"))
        .unwrap();
    assert_eq!(
        reply_json(&vm, a).1["choices"][0]["message"]["content"],
        "for a"
    );
    assert_eq!(
        reply_json(&vm, b).1["choices"][0]["message"]["content"],
        "for b"
    );
    assert_ne!(reply_json(&vm, a).1["id"], reply_json(&vm, b).1["id"]);
}

#[test]
fn without_the_stop_iteration_flag_envoy_would_hang_the_request() {
    // Documents why envoy.yaml sets `allow_on_headers_stop_iteration: true`.
    let options = VmOptions {
        allow_on_headers_stop_iteration: false,
        ..options()
    };
    let mut vm = vm_with(&config(), options);
    let ctx = vm.send_request(chat(json!({})));
    assert_eq!(vm.outcome(ctx), Outcome::Hung);
}

#[test]
fn the_router_reads_only_allow_listed_headers_through_the_abi() {
    let mut config = config();
    config["recipes"]["cheap"] = json!({"algorithm": "single", "models": ["small"]});
    config["routers"] = json!({"auto": {
        "signals": {"free": {"type": "header", "name": "x-tier", "values": ["free"]}},
        "decisions": [
            {"name": "free_tier", "priority": 1, "when": {"signal": "free"}, "recipe": "cheap"},
            {"name": "default", "recipe": "r"}
        ]
    }});
    config["virtual_models"] = json!({VIRTUAL: {"router": "auto"}});
    let mut vm = vm_with(&config, options());
    let cases: Vec<(Request, &str, &str)> = vec![
        (chat(json!({})), "default", "sim-medium"),
        (
            chat(json!({})).header("x-tier", "free"),
            "free_tier",
            "sim-small",
        ),
        (
            chat(json!({})).header("x-tier", [0xff, 0xfe]),
            "default",
            "sim-medium",
        ),
        (
            chat(json!({})).header("x-looper-decision", "free_tier"),
            "default",
            "sim-medium",
        ),
    ];
    for (request, decision, model) in cases {
        let ctx = vm.send_request(request);
        let call = single_call(&vm, ctx);
        assert_eq!(call.json().unwrap()["model"], model);
        vm.respond_json(call.token, 200, &completion("ok", "stop"))
            .unwrap();
        let reply = vm.reply(ctx).unwrap();
        assert_eq!(reply.header("x-looper-decision"), Some(decision));
        vm.finish(ctx).unwrap();
    }
    assert_eq!(counter(&vm, "looper.router.auto.decision.free_tier"), 1);
    assert_eq!(counter(&vm, "looper.router.auto.decision.default"), 3);
    assert!(!vm.is_failed());
}
