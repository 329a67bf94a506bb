//! Trust boundaries of the real release plugin in the fake Envoy: what a client's headers can
//! and cannot do, which headers reach the models (dispatched sub-calls and the streamed final
//! call), the trace opt-in, where credentials may appear, and the upstream body cap.

use looper_host::{Outcome, Plugin, Request, Vm, VmOptions};
use serde_json::{json, Value};

const VIRTUAL: &str = "vllm-sr/auto";
/// The model credential from the VM environment, and one given as a literal value.
const ENV_SECRET: &str = "env-secret-7f3a";
const VALUE_SECRET: &str = "value-secret-91c2";
/// What a client sends that must never reach a model.
const CLIENT_SECRET: &str = "client-secret-5d0e";

fn config() -> Value {
    json!({
        "models": {
            "medium": {"cluster": "simulator", "model": "sim-medium", "timeout_ms": 30000,
                       "auth": {"value": VALUE_SECRET, "header": "x-api-key"}},
            "small": {"cluster": "simulator", "model": "sim-small", "timeout_ms": 20000,
                      "auth": {"env": "SIM_KEY"}},
            "plain": {"cluster": "simulator", "model": "sim-plain", "timeout_ms": 20000}
        },
        "recipes": {
            "r": {"algorithm": "single", "models": ["plain", "medium", "small"]},
            "rm": {"algorithm": "remom", "contract": {"type": "choice"},
                   "pool": ["plain", "medium"], "breadth_schedule": [2], "synthesizer": "small"}
        },
        "virtual_models": {VIRTUAL: {"recipe": "r"}, "looper/remom": {"recipe": "rm"}},
        "passthrough_models": ["gpt-other"],
        "limits": {"max_body_bytes": 65536, "request_deadline_ms": 60000,
                   "max_upstream_body_bytes": 4096},
        "trace": {"allow": true},
        "stream_final_call": true
    })
}

fn options() -> VmOptions {
    VmOptions::default()
        .with_cluster("simulator")
        .with_env("SIM_KEY", ENV_SECRET)
}

fn vm_with(config: &Value) -> Vm {
    let mut vm = Vm::new(Plugin::shared(), options()).expect("plugin starts");
    assert!(
        vm.configure(&config.to_string()),
        "configuration refused: {:?}",
        vm.logs()
    );
    vm
}

fn vm() -> Vm {
    vm_with(&config())
}

fn chat(model: &str, extra: Value) -> Request {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Request::post_json("/v1/chat/completions", &body)
}

/// Headers a client may send to reach the models with its own identity or to steer the
/// gateway; none of them may reach a model, and none may change what the gateway does.
fn with_client_headers(request: Request) -> Request {
    let bearer = format!("Bearer {CLIENT_SECRET}");
    [
        ("authorization", bearer.as_str()),
        ("proxy-authorization", bearer.as_str()),
        ("cookie", "session=client-cookie"),
        ("x-api-key", CLIENT_SECRET),
        ("api-key", CLIENT_SECRET),
        ("openai-organization", "org-client"),
        ("accept-encoding", "gzip"),
        ("x-envoy-upstream-rq-timeout-ms", "3600000"),
        ("x-envoy-max-retries", "10"),
        ("x-looper-cluster", "client-cluster"),
        ("x-looper-authority", "client.example"),
        ("x-looper-models", "small"),
        ("x-looper-recipe", "rm"),
        ("x-looper-max-calls", "32"),
        ("x-looper-deadline-ms", "3600000"),
        ("x-request-id", "req-1"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ]
    .into_iter()
    .fold(request, |r, (name, value)| r.header(name, value))
}

fn completion(content: &str) -> Value {
    json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": "sim-x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
}

fn single_call(vm: &Vm, ctx: u32) -> looper_host::HttpCall {
    let calls = vm.pending_calls_for(ctx);
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.into_iter().next().unwrap()
}

fn client_header_leaks(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, value)| {
            // Every value above names the client; and these names are the client's alone.
            value.contains("client")
                || matches!(
                    name.as_str(),
                    "cookie"
                        | "proxy-authorization"
                        | "api-key"
                        | "openai-organization"
                        | "accept-encoding"
                        | "x-envoy-max-retries"
                )
                || (name.starts_with("x-looper-")
                    && !matches!(name.as_str(), "x-looper-cluster" | "x-looper-authority"))
        })
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

#[test]
fn dispatched_calls_carry_only_the_gateway_headers_and_the_model_credential() {
    let mut vm = vm();
    let ctx = vm.send_request(with_client_headers(chat(VIRTUAL, json!({}))));
    // `plain` has no credential, `medium` its literal key, `small` the one from the VM
    // environment: each call carries exactly its model's, under its model's header.
    let expected = [
        ("sim-plain", None),
        ("sim-medium", Some(("x-api-key", VALUE_SECRET.to_string()))),
        (
            "sim-small",
            Some(("authorization", format!("Bearer {ENV_SECRET}"))),
        ),
    ];
    for (i, (model, credential)) in expected.into_iter().enumerate() {
        let call = single_call(&vm, ctx);
        assert_eq!(call.json().unwrap()["model"], model);
        assert_eq!(call.cluster, "simulator");
        let mut allowed = vec![
            ":method",
            ":path",
            ":authority",
            "content-type",
            "content-length",
        ];
        if let Some((name, value)) = &credential {
            allowed.push(name);
            assert_eq!(call.header(name), Some(value.as_str()), "{model}");
        }
        let names: Vec<&str> = call.headers.iter().map(|(name, _)| name).collect();
        assert!(
            names.iter().all(|name| allowed.contains(name)),
            "{model}: {:?}",
            call.headers.to_string_pairs()
        );
        assert!(
            client_header_leaks(&call.headers.to_string_pairs()).is_empty(),
            "{model}"
        );
        assert_eq!(call.header(":authority"), Some("simulator"));
        assert_eq!(call.timeout_ms, if i == 1 { 30000 } else { 20000 });
        if i < 2 {
            vm.respond(call.token, 503, [("content-type", "text/plain")], "busy")
                .unwrap();
        } else {
            vm.respond_json(call.token, 200, &completion("ok")).unwrap();
        }
    }
    let reply = vm.reply(ctx).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-looper-calls"), Some("3"));
}

#[test]
fn the_streamed_final_call_carries_only_the_gateway_headers_and_the_model_credential() {
    let mut vm = vm();
    let request = chat(
        "looper/remom",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let ctx = vm.send_request(with_client_headers(request));
    let workers = vm.pending_calls_for(ctx);
    assert_eq!(workers.len(), 2);
    for call in workers {
        assert!(client_header_leaks(&call.headers.to_string_pairs()).is_empty());
        vm.respond_json(call.token, 200, &completion("ANSWER: B"))
            .unwrap();
    }
    assert!(
        vm.pending_calls_for(ctx).is_empty(),
        "the synthesis streams"
    );
    let forwarded = vm
        .forwarded(ctx)
        .expect("the synthesis went on to the route");
    let headers = forwarded.headers.to_string_pairs();
    let leaks = client_header_leaks(&headers);
    assert!(leaks.is_empty(), "{leaks:?} in {headers:?}");
    let get = |name: &str| forwarded.headers.get_str(name);
    assert_eq!(
        get("authorization"),
        Some(format!("Bearer {ENV_SECRET}").as_str())
    );
    assert_eq!(get("x-api-key"), None);
    assert_eq!(get("x-looper-cluster"), Some("simulator"));
    assert_eq!(get("x-looper-authority"), Some("simulator"));
    assert_eq!(get(":path"), Some("/v1/chat/completions"));
    assert_ne!(get("x-envoy-upstream-rq-timeout-ms"), Some("3600000"));
    // Tracing survives; nothing else of the client's.
    assert_eq!(get("x-request-id"), Some("req-1"));
    assert!(get("traceparent").is_some());
    let body: Value = serde_json::from_slice(&forwarded.body).unwrap();
    assert_eq!(body["model"], "sim-small");

    // The upstream's answer streams back without its own headers, and no credential.
    let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ANSWER: B\"}}]}\n\n\
               data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n\
               data: [DONE]\n\n";
    vm.finish_with_response(
        ctx,
        200,
        [
            ("content-type", "text/event-stream"),
            ("x-upstream-key", "upstream-internal"),
        ],
        sse,
    )
    .unwrap();
    let response = vm.client_response(ctx).unwrap();
    let text = response.body_str().to_string();
    assert!(
        text.contains("ANSWER: B") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    for (name, value) in response.headers.to_string_pairs() {
        assert_ne!(name, "x-upstream-key");
        for secret in [ENV_SECRET, VALUE_SECRET, CLIENT_SECRET] {
            assert!(!value.contains(secret), "{name}: {value}");
        }
    }
}

#[test]
fn a_client_cannot_pick_the_cluster_or_host_of_any_request() {
    let mut vm = vm();
    // A pass-through request goes to the normal route without the routing headers, so the
    // route that sends by `x-looper-cluster` never sees a client's.
    let ctx = vm.send_request(with_client_headers(chat("gpt-other", json!({}))));
    match vm.outcome(ctx) {
        Outcome::Continued { headers, .. } => {
            assert!(!headers.contains("x-looper-cluster"), "{headers:?}");
            assert!(!headers.contains("x-looper-authority"), "{headers:?}");
            // Everything else of a pass-through request is the client's business.
            assert_eq!(
                headers.get_str("authorization"),
                Some(format!("Bearer {CLIENT_SECRET}").as_str())
            );
        }
        other => panic!("not passed through: {other:?}"),
    }
    // Other requests the plugin does not handle, too.
    let ctx = vm.send_request(
        Request::get("/healthz")
            .header("x-looper-cluster", "client-cluster")
            .header("x-looper-authority", "client.example"),
    );
    match vm.outcome(ctx) {
        Outcome::Continued { headers, .. } => {
            assert!(!headers.contains("x-looper-cluster"));
            assert!(!headers.contains("x-looper-authority"));
        }
        other => panic!("not passed through: {other:?}"),
    }
}

#[test]
fn client_headers_do_not_name_models_or_raise_budgets() {
    let mut cfg = config();
    cfg["recipes"]["r"]["max_calls"] = json!(1);
    cfg["recipes"]["r"]["call_timeout_ms"] = json!(500);
    let mut vm = vm_with(&cfg);
    let ctx = vm.send_request(with_client_headers(chat(VIRTUAL, json!({}))));
    let call = single_call(&vm, ctx);
    assert_eq!(call.json().unwrap()["model"], "sim-plain");
    assert_eq!(call.timeout_ms, 500);
    vm.respond(call.token, 503, [("content-type", "text/plain")], "busy")
        .unwrap();
    let reply = vm.reply(ctx).expect("no failover: one call allowed");
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-looper-calls"), Some("1"));
    assert_eq!(reply.header("x-looper-recipe"), Some("r"));
}

#[test]
fn only_allow_listed_headers_reach_the_router() {
    let mut cfg = config();
    cfg["recipes"]["cheap"] = json!({"algorithm": "single", "models": ["small"]});
    cfg["routers"] = json!({"auto": {
        "signals": {"free": {"type": "header", "name": "x-tier", "values": ["free"]}},
        "decisions": [
            {"name": "free_tier", "priority": 1, "when": {"signal": "free"}, "recipe": "cheap"},
            {"name": "default", "recipe": "r"}
        ]
    }});
    cfg["virtual_models"] = json!({VIRTUAL: {"router": "auto"}});
    let mut vm = vm_with(&cfg);
    // Every look-alike of the allow-listed header, and every gateway-looking header, says
    // "free"; only `x-tier` itself may move the request.
    let lookalikes = [
        "x-looper-tier",
        "x-looper-x-tier",
        "tier",
        "x-tier-override",
        "x-forwarded-tier",
        "x-looper-decision",
        "x-looper-signal-free",
        "x-looper-recipe",
    ];
    let mut spoofed = chat(VIRTUAL, json!({}));
    for name in lookalikes {
        spoofed = spoofed.header(name, "free");
    }
    let spoofed = spoofed
        .header("x-looper-decision", "free_tier")
        .header("x-looper-recipe", "cheap");
    for (request, decision, model) in [
        (spoofed, "default", "sim-plain"),
        (
            chat(VIRTUAL, json!({})).header("x-tier", "free"),
            "free_tier",
            "sim-small",
        ),
    ] {
        let ctx = vm.send_request(request);
        let call = single_call(&vm, ctx);
        assert_eq!(call.json().unwrap()["model"], model, "{decision}");
        vm.respond_json(call.token, 200, &completion("ok")).unwrap();
        let reply = vm.reply(ctx).unwrap();
        assert_eq!(reply.header("x-looper-decision"), Some(decision));
        if decision == "default" {
            assert_eq!(reply.header("x-looper-signals"), None);
        }
        vm.finish(ctx).unwrap();
    }
}

/// Whether the reply to a request with these trace headers carries a trace, on success and
/// on failure.
fn traced(vm: &mut Vm, trace: Option<&[u8]>) -> (bool, bool) {
    let mut out = [false; 2];
    for (i, fail) in [false, true].into_iter().enumerate() {
        let mut request = chat(VIRTUAL, json!({}));
        if let Some(value) = trace {
            request = request.header("x-looper-trace", value);
        }
        let ctx = vm.send_request(request);
        for _ in 0..3 {
            let Some(call) = vm.pending_calls_for(ctx).pop() else {
                break;
            };
            if fail {
                vm.reset(call.token).unwrap();
            } else {
                vm.respond_json(call.token, 200, &completion("ok")).unwrap();
            }
        }
        let reply = vm.reply(ctx).unwrap();
        assert_eq!(reply.status, if fail { 502 } else { 200 });
        out[i] = reply.json().unwrap().get("looper_trace").is_some();
        vm.finish(ctx).unwrap();
    }
    (out[0], out[1])
}

#[test]
fn the_trace_needs_the_operator_and_the_client() {
    let mut vm = vm();
    assert_eq!(traced(&mut vm, Some(b"1")), (true, true));
    for asked in [
        None,
        Some(&b"0"[..]),
        Some(b"true"),
        Some(b"yes"),
        Some(b"11"),
    ] {
        assert_eq!(traced(&mut vm, asked), (false, false), "{asked:?}");
    }
    let mut cfg = config();
    cfg["trace"] = json!({"allow": false});
    let mut vm = vm_with(&cfg);
    assert_eq!(traced(&mut vm, Some(b"1")), (false, false));
    let mut cfg = config();
    cfg.as_object_mut().unwrap().remove("trace");
    let mut vm = vm_with(&cfg);
    assert_eq!(
        traced(&mut vm, Some(b"1")),
        (false, false),
        "off by default"
    );
}

fn assert_no_secret(place: &str, text: &str) {
    for secret in [ENV_SECRET, VALUE_SECRET] {
        assert!(!text.contains(secret), "{place} shows a credential: {text}");
    }
}

#[test]
fn credentials_never_appear_in_replies_traces_errors_logs_or_metrics() {
    let mut cfg = config();
    // A model whose cluster does not exist: its refused dispatch is logged.
    cfg["models"]["lost"] = json!({"cluster": "no-such-cluster", "model": "sim-lost",
                                    "auth": {"env": "SIM_KEY"}});
    cfg["recipes"]["r"]["models"] = json!(["lost", "plain", "medium", "small"]);
    let mut vm = vm_with(&cfg);
    let mut replies = Vec::new();
    // A success after failovers through every credential, then a failure of all of them,
    // both traced; then a streamed synthesis by the model with the environment's key.
    for fail_last in [false, true] {
        let ctx = vm.send_request(chat(VIRTUAL, json!({})).header("x-looper-trace", "1"));
        for i in 0..3 {
            let call = single_call(&vm, ctx);
            if i < 2 || fail_last {
                let body = format!("{{\"error\":{{\"message\":\"bad key {ENV_SECRET}\"}}}}");
                vm.respond(
                    call.token,
                    401,
                    [("content-type", "application/json")],
                    body,
                )
                .unwrap();
            } else {
                vm.respond_json(call.token, 200, &completion("ok")).unwrap();
            }
        }
        let reply = vm.reply(ctx).unwrap();
        assert_eq!(reply.status, if fail_last { 502 } else { 200 });
        let v = reply.json().unwrap();
        assert!(
            v["looper_trace"]["steps"].as_array().unwrap().len() == 4,
            "{v}"
        );
        replies.push((
            reply.headers.to_string_pairs(),
            reply.body_str().to_string(),
        ));
        vm.finish(ctx).unwrap();
    }
    let ctx = vm.send_request(chat("looper/remom", json!({"stream": true})));
    for call in vm.pending_calls_for(ctx) {
        vm.respond_json(call.token, 200, &completion("ANSWER: B"))
            .unwrap();
    }
    let sse =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"B\"}}]}\n\ndata: [DONE]\n\n";
    vm.finish_with_response(ctx, 200, [("content-type", "text/event-stream")], sse)
        .unwrap();
    let response = vm.client_response(ctx).unwrap();
    replies.push((
        response.headers.to_string_pairs(),
        response.body_str().to_string(),
    ));
    for (headers, body) in &replies {
        assert_no_secret("a reply body", body);
        for (name, value) in headers {
            assert_no_secret("a reply header", &format!("{name}: {value}"));
        }
    }
    assert!(!vm.logs_containing("no-such-cluster").is_empty());
    for (_, line) in vm.logs() {
        assert_no_secret("the log", &line);
    }
    let metrics = vm.metrics();
    assert!(metrics.contains_key("looper.model.small.calls.http_error"));
    for (name, metric) in &metrics {
        assert_no_secret("a metric", &format!("{name} {metric:?}"));
    }
    assert_no_secret("stdout", &vm.stdout());
    assert_no_secret("stderr", &vm.stderr());

    // A refused configuration names the field, never the credential.
    let mut bad = config();
    bad["models"]["medium"]["auth"]["prefix"] = json!(7);
    let mut vm = Vm::new(Plugin::shared(), options()).unwrap();
    assert!(!vm.configure(&bad.to_string()));
    assert!(!vm.logs_containing("models.medium.auth.prefix").is_empty());
    for (_, line) in vm.logs() {
        assert_no_secret("the refusal", &line);
    }
}

#[test]
fn an_upstream_body_over_the_limit_is_not_read_and_the_next_model_answers() {
    let mut vm = vm();
    let ctx = vm.send_request(chat(VIRTUAL, json!({})));
    let first = single_call(&vm, ctx);
    // 5 KB of valid completion, over the 4 KiB `limits.max_upstream_body_bytes`.
    vm.respond_json(first.token, 200, &completion(&"x".repeat(5000)))
        .unwrap();
    let second = single_call(&vm, ctx);
    assert_eq!(second.json().unwrap()["model"], "sim-medium");
    vm.respond_json(second.token, 200, &completion("small enough"))
        .unwrap();
    let reply = vm.reply(ctx).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json().unwrap()["choices"][0]["message"]["content"],
        "small enough"
    );
    assert_eq!(
        vm.metric("looper.model.plain.calls.too_large")
            .map(|m| m.value),
        Some(1)
    );
}
