//! ABI conformance of the host, checked with hand-assembled guest modules so it
//! does not depend on the Looper plugin: the memory protocol, deferred actions,
//! Envoy's buffering and stop-iteration behaviour, HTTP call validation and
//! answers, teardown, timers, and traps.

mod support;

use looper_host::abi::maps::serialize_pairs;
use looper_host::{
    CallState, FailureKind, HeaderMap, HostError, LogLevel, Outcome, Plugin, Request, TimerEvent,
    Vm, VmOptions,
};
use support::{op, Guest, Import, RET_CODE, RET_LEN, RET_PTR};

const CONTINUE: i32 = 0;
const PAUSE: i32 = 1;

fn start(guest: &Guest, options: VmOptions) -> Vm {
    let plugin = Plugin::from_bytes(&guest.build()).expect("test module compiles");
    Vm::new(&plugin, options).expect("test module starts")
}

fn messages(vm: &Vm) -> Vec<String> {
    vm.logs().into_iter().map(|(_, m)| m).collect()
}

/// Guest code: `proxy_http_call(cluster, headers, body, no trailers, timeout)`,
/// then logs "dispatched" or "rejected".
fn dispatch(
    guest: &mut Guest,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: i32,
) -> Vec<u8> {
    let cluster = guest.data(cluster.as_bytes());
    let headers = guest.data(&serialize_pairs(headers));
    let body = guest.data(body);
    let dispatched = guest.data(b"dispatched");
    let rejected = guest.data(b"rejected");
    [
        op::i32(cluster.0),
        op::i32(cluster.1),
        op::i32(headers.0),
        op::i32(headers.1),
        op::i32(body.0),
        op::i32(body.1),
        op::i32(0),
        op::i32(0),
        op::i32(timeout_ms),
        op::i32(RET_CODE),
        op::call(Import::HttpCall),
        op::eqz(),
        op::if_else(op::log(2, dispatched), op::log(2, rejected)),
    ]
    .concat()
}

const CALL_HEADERS: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/x"),
    (":authority", "sim"),
];

#[test]
fn plugin_config_is_returned_through_the_guest_allocator() {
    let guest = Guest::new().configure(
        [
            op::i32(7),
            op::i32(0),
            op::i32(-1),
            op::i32(RET_PTR),
            op::i32(RET_LEN),
            op::call(Import::GetBufferBytes),
            op::drop(),
            op::log_returned(2),
            op::i32(1),
        ]
        .concat(),
    );
    let mut vm = start(&guest, VmOptions::default());
    assert!(vm.configure(r#"{"k":"\u00e9"}"#));
    assert_eq!(
        vm.logs(),
        vec![(LogLevel::Info, r#"{"k":"\u00e9"}"#.to_string())]
    );
    assert_eq!(vm.root_callbacks(), vec!["proxy_on_configure"]);
}

#[test]
fn plugin_config_is_not_found_outside_on_configure() {
    let mut guest = Guest::new();
    let found = guest.data(b"found");
    let missing = guest.data(b"not found");
    let body = [
        op::i32(7),
        op::i32(0),
        op::i32(-1),
        op::i32(RET_PTR),
        op::i32(RET_LEN),
        op::call(Import::GetBufferBytes),
        op::i32(1),
        op::eq(),
        op::if_else(op::log(2, missing), op::log(2, found)),
        op::i32(CONTINUE),
    ]
    .concat();
    let guest = guest.stream_callback("proxy_on_request_headers", body);
    let mut vm = start(&guest, VmOptions::default());
    vm.send_request(Request::get("/"));
    assert_eq!(messages(&vm), vec!["not found"]);
}

#[test]
fn local_reply_is_deferred_and_runs_the_response_callbacks() {
    let mut guest = Guest::new();
    let details = guest.data(b"denied by test");
    let body = guest.data(b"nope");
    let headers = guest.data(&serialize_pairs(&[
        ("X-Test", "1"),
        ("content-type", "application/json"),
    ]));
    let after = guest.data(b"after send");
    let on_headers = guest.data(b"response headers");
    let on_body = guest.data(b"response body");
    let request = [
        op::i32(403),
        op::i32(details.0),
        op::i32(details.1),
        op::i32(body.0),
        op::i32(body.1),
        op::i32(headers.0),
        op::i32(headers.1),
        op::i32(-1),
        op::call(Import::SendLocalResponse),
        op::drop(),
        op::log(2, after),
        op::i32(PAUSE),
    ]
    .concat();
    let guest = guest
        .with_context_create()
        .with_teardown()
        .stream_callback("proxy_on_request_headers", request)
        .stream_callback(
            "proxy_on_response_headers",
            [op::log(2, on_headers), op::i32(CONTINUE)].concat(),
        )
        .stream_callback(
            "proxy_on_response_body",
            [op::log(2, on_body), op::i32(CONTINUE)].concat(),
        );
    let mut vm = start(&guest, VmOptions::default());
    let ctx = vm.send_request(Request::get("/v1/models"));

    let reply = vm.reply(ctx).expect("replied");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body_str(), "nope");
    assert_eq!(reply.details, "denied_by_test");
    assert_eq!(reply.header("x-test"), Some("1"));
    assert_eq!(reply.headers.get_all("content-type").len(), 1);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("content-length"), Some("4"));
    assert_eq!(
        messages(&vm),
        vec!["after send", "response headers", "response body"]
    );
    assert_eq!(
        vm.callbacks(ctx),
        vec![
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_response_headers",
            "proxy_on_response_body",
        ]
    );
    assert!(
        vm.forwarded(ctx).is_none(),
        "a replied request never reaches the route"
    );
    vm.finish(ctx).unwrap();
    assert!(vm.is_deleted(ctx));
    assert_eq!(vm.callbacks(ctx).last(), Some(&"proxy_on_delete"));
}

#[test]
fn continue_stream_is_deferred_and_drops_the_request_maps_at_once() {
    let mut guest = Guest::new();
    let path = guest.data(b":path");
    let gone = guest.data(b"headers gone");
    let still = guest.data(b"headers still there");
    let after = guest.data(b"after continue");
    let body = [
        op::i32(0),
        op::call(Import::ContinueStream),
        op::drop(),
        op::i32(0),
        op::i32(path.0),
        op::i32(path.1),
        op::i32(RET_PTR),
        op::i32(RET_LEN),
        op::call(Import::GetHeaderMapValue),
        op::i32(2),
        op::eq(),
        op::if_else(op::log(2, gone), op::log(2, still)),
        op::log(2, after),
        op::i32(PAUSE),
    ]
    .concat();
    let guest = guest
        .stream_callback("proxy_on_request_headers", op::i32(PAUSE))
        .stream_callback("proxy_on_request_body", body);
    let mut vm = start(&guest, VmOptions::default());
    let ctx = vm.send_request(Request::post("/v1/chat/completions", "{}"));
    assert_eq!(messages(&vm), vec!["headers gone", "after continue"]);
    match vm.outcome(ctx) {
        Outcome::Continued { headers, body } => {
            assert_eq!(headers.get_str(":path"), Some("/v1/chat/completions"));
            assert_eq!(body, b"{}");
        }
        other => panic!("expected Continued, got {other:?}"),
    }
}

#[test]
fn paused_body_is_buffered_cumulatively_up_to_the_limit_then_413() {
    let mut guest = Guest::new();
    let on_headers = guest.data(b"response headers");
    let body = [
        op::i32(0),
        op::i32(0),
        op::i32(-1),
        op::i32(RET_PTR),
        op::i32(RET_LEN),
        op::call(Import::GetBufferBytes),
        op::drop(),
        op::log_returned(1),
        op::i32(PAUSE),
    ]
    .concat();
    let guest = guest
        .stream_callback("proxy_on_request_headers", op::i32(PAUSE))
        .stream_callback("proxy_on_request_body", body)
        .stream_callback(
            "proxy_on_response_headers",
            [op::log(2, on_headers), op::i32(CONTINUE)].concat(),
        )
        .stream_callback("proxy_on_response_body", op::i32(CONTINUE));
    let options = VmOptions {
        buffer_limit_bytes: 16,
        ..VmOptions::default()
    };
    let mut vm = start(&guest, options);
    let ctx = vm.send_request(Request::post("/", "aaaaaaaabbbbbbbbcccccccc").chunked(8));
    assert_eq!(
        messages(&vm),
        vec!["aaaaaaaa", "aaaaaaaabbbbbbbb", "response headers"]
    );
    let reply = vm.reply(ctx).expect("413");
    assert_eq!(reply.status, 413);
    assert_eq!(reply.body_str(), "Payload Too Large");
    assert_eq!(reply.details, "request_payload_too_large");
    assert_eq!(
        vm.callbacks(ctx),
        vec![
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_request_body",
            "proxy_on_response_headers",
            "proxy_on_response_body",
        ]
    );
}

#[test]
fn chunked_body_ends_with_an_empty_end_of_stream_call() {
    let guest = Guest::new()
        .stream_callback("proxy_on_request_headers", op::i32(PAUSE))
        .stream_callback("proxy_on_request_body", op::i32(PAUSE));
    let mut vm = start(&guest, VmOptions::default());
    let ctx = vm.send_request(Request::post("/", vec![b'x'; 10]).chunked(4));
    let bodies = vm
        .callbacks(ctx)
        .iter()
        .filter(|c| **c == "proxy_on_request_body")
        .count();
    assert_eq!(bodies, 4, "3 data chunks plus the end-of-stream call");
    assert_eq!(vm.outcome(ctx), Outcome::Pending);
}

#[test]
fn pause_on_headers_without_the_flag_holds_the_body_back() {
    let mut guest = Guest::new();
    let seen = guest.data(b"body seen");
    let guest = guest
        .stream_callback("proxy_on_request_headers", op::i32(PAUSE))
        .stream_callback(
            "proxy_on_request_body",
            [op::log(2, seen), op::i32(CONTINUE)].concat(),
        );

    let mut stock = start(
        &guest,
        VmOptions {
            allow_on_headers_stop_iteration: false,
            ..VmOptions::default()
        },
    );
    let ctx = stock.send_request(Request::post("/", "{}"));
    assert_eq!(stock.outcome(ctx), Outcome::Hung);
    assert!(messages(&stock).is_empty());

    let mut allowed = start(&guest, VmOptions::default());
    let ctx = allowed.send_request(Request::post("/", "{}"));
    assert_eq!(messages(&allowed), vec!["body seen"]);
    assert!(allowed.outcome(ctx).is_continued());
}

#[test]
fn continue_on_headers_forwards_them_before_the_body() {
    let guest = Guest::new()
        .stream_callback("proxy_on_request_headers", op::i32(CONTINUE))
        .stream_callback("proxy_on_request_body", op::i32(PAUSE));
    let mut vm = start(&guest, VmOptions::default());
    let ctx = vm.send_request(Request::post("/", "{}"));
    let forwarded = vm.forwarded(ctx).expect("headers reached the route");
    assert_eq!(forwarded.headers.get_str(":path"), Some("/"));
    assert!(forwarded.body.is_empty() && !forwarded.end_of_stream);
    assert_eq!(vm.outcome(ctx), Outcome::Pending);
}

fn caller_guest(cluster: &str, headers: &[(&str, &str)]) -> Guest {
    let mut guest = Guest::new();
    let request = [
        dispatch(&mut guest, cluster, headers, b"{\"q\":1}", 5000),
        op::i32(PAUSE),
    ]
    .concat();
    let status = guest.data(b":status");
    let code11 = guest.data(b"status code 11");
    let other = guest.data(b"other status code");
    let response = [
        // The :status header of the call response (map 6).
        op::i32(6),
        op::i32(status.0),
        op::i32(status.1),
        op::i32(RET_PTR),
        op::i32(RET_LEN),
        op::call(Import::GetHeaderMapValue),
        op::drop(),
        op::log_returned(2),
        // The call response body (buffer 4).
        op::i32(4),
        op::i32(0),
        op::i32(-1),
        op::i32(RET_PTR),
        op::i32(RET_LEN),
        op::call(Import::GetBufferBytes),
        op::drop(),
        op::log_returned(2),
        // proxy_get_status: message and code.
        op::i32(RET_CODE),
        op::i32(RET_PTR),
        op::i32(RET_LEN),
        op::call(Import::GetStatus),
        op::drop(),
        op::log_returned(2),
        op::load(RET_CODE),
        op::i32(11),
        op::eq(),
        op::if_else(op::log(2, code11), op::log(2, other)),
    ]
    .concat();
    guest
        .with_context_create()
        .stream_callback("proxy_on_request_headers", request)
        .http_call_response(response)
}

#[test]
fn http_call_is_validated_like_envoy() {
    let options = || VmOptions::default().with_cluster("simulator");
    let mut vm = start(&caller_guest("nope", CALL_HEADERS), options());
    vm.send_request(Request::get("/"));
    assert_eq!(messages(&vm), vec!["rejected"]);

    let missing_authority = &[(":method", "POST"), (":path", "/v1/x")];
    let mut vm = start(&caller_guest("simulator", missing_authority), options());
    vm.send_request(Request::get("/"));
    assert_eq!(messages(&vm), vec!["rejected"]);
    assert!(vm.all_calls().is_empty());

    let mut vm = start(&caller_guest("simulator", CALL_HEADERS), options());
    let ctx = vm.send_request(Request::get("/"));
    assert_eq!(messages(&vm), vec!["dispatched"]);
    let calls = vm.pending_calls_for(ctx);
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        (call.cluster.as_str(), call.timeout_ms, call.context),
        ("simulator", 5000, ctx)
    );
    assert_eq!(call.path(), Some("/v1/x"));
    assert_eq!(call.header("content-length"), Some("7"));
    assert_eq!(call.json().unwrap()["q"], 1);
    assert_eq!(vm.max_in_flight(ctx), 1);
}

#[test]
fn call_answers_are_readable_only_in_the_callback() {
    let mut vm = start(
        &caller_guest("simulator", CALL_HEADERS),
        VmOptions::default().with_cluster("simulator"),
    );
    let ctx = vm.send_request(Request::get("/"));
    let token = vm.pending_calls()[0].token;
    vm.respond(token, 201, [("x-a", "b")], "payload").unwrap();
    assert_eq!(
        messages(&vm)[1..],
        ["201", "payload", "", "other status code"].map(String::from)
    );
    assert_eq!(
        vm.call(token).unwrap().state,
        CallState::Answered { status: 201 }
    );
    assert_eq!(vm.in_flight(ctx), 0);
    assert!(matches!(
        vm.respond(token, 200, HeaderMap::new(), ""),
        Err(HostError::UnknownToken(_))
    ));
}

#[test]
fn timeout_and_reset_look_like_envoy() {
    let options = || VmOptions::default().with_cluster("simulator");
    let mut vm = start(&caller_guest("simulator", CALL_HEADERS), options());
    vm.send_request(Request::get("/"));
    let token = vm.pending_calls()[0].token;
    vm.timeout(token).unwrap();
    assert_eq!(
        messages(&vm)[1..3],
        ["504".to_string(), "upstream request timeout".to_string()]
    );

    let mut vm = start(&caller_guest("simulator", CALL_HEADERS), options());
    vm.send_request(Request::get("/"));
    let token = vm.pending_calls()[0].token;
    vm.reset(token).unwrap();
    // No :status (the map is empty), no body, then status "reset" with code 11.
    assert_eq!(
        messages(&vm).last().map(String::as_str),
        Some("status code 11")
    );
    assert!(messages(&vm).contains(&"reset".to_string()));
    assert_eq!(vm.call(token).unwrap().state, CallState::Reset);
}

#[test]
fn client_abort_runs_teardown_and_cancels_pending_calls() {
    let mut vm = start(
        &caller_guest("simulator", CALL_HEADERS).with_teardown(),
        VmOptions::default().with_cluster("simulator"),
    );
    let ctx = vm.send_request(Request::get("/"));
    let token = vm.pending_calls()[0].token;
    vm.abort(ctx).unwrap();
    assert!(vm.is_deleted(ctx));
    assert_eq!(
        vm.callbacks(ctx)[2..],
        ["proxy_on_log", "proxy_on_done", "proxy_on_delete"]
    );
    assert_eq!(vm.call(token).unwrap().state, CallState::Cancelled);
    assert!(vm.pending_calls().is_empty());
    assert!(matches!(
        vm.respond(token, 200, HeaderMap::new(), ""),
        Err(HostError::UnknownToken(_))
    ));
}

#[test]
fn run_for_fires_ticks_and_call_timeouts_in_time_order() {
    let mut guest = Guest::new();
    let tick = guest.data(b"tick");
    let request = [
        dispatch(&mut guest, "simulator", CALL_HEADERS, b"", 2500),
        op::i32(PAUSE),
    ]
    .concat();
    let guest = guest
        .configure(
            [
                op::i32(1000),
                op::call(Import::SetTickPeriod),
                op::drop(),
                op::i32(1),
            ]
            .concat(),
        )
        .void_callback("proxy_on_tick", op::log(2, tick))
        .stream_callback("proxy_on_request_headers", request)
        .http_call_response(Vec::new());
    let mut vm = start(&guest, VmOptions::default().with_cluster("simulator"));
    assert!(vm.configure("{}"));
    assert_eq!(vm.tick_period_ms(), 1000);
    let t0 = vm.now_ms();
    vm.send_request(Request::get("/"));
    let token = vm.pending_calls()[0].token;
    let fired = vm.run_for(3000);
    assert_eq!(
        fired,
        vec![
            TimerEvent::Tick(t0 + 1000),
            TimerEvent::Tick(t0 + 2000),
            TimerEvent::Timeout(token),
            TimerEvent::Tick(t0 + 3000),
        ]
    );
    assert_eq!(vm.now_ms(), t0 + 3000);
    assert_eq!(
        vm.call(token).unwrap().state,
        CallState::Answered { status: 504 }
    );
}

#[test]
fn a_panic_fails_the_vm_closed() {
    let mut guest = Guest::new();
    let message = guest.data(b"panicked at src/lib.rs: boom");
    let guest = guest.with_context_create().stream_callback(
        "proxy_on_request_headers",
        [op::log(5, message), op::unreachable()].concat(),
    );
    let mut vm = start(&guest, VmOptions::default());
    let ctx = vm.send_request(Request::get("/"));
    let failure = vm.failure().expect("failed").clone();
    assert_eq!(failure.kind, FailureKind::Panic);
    assert_eq!(failure.callback, "proxy_on_request_headers");
    assert_eq!(
        failure.panic_message.as_deref(),
        Some("panicked at src/lib.rs: boom")
    );
    let reply = vm.reply(ctx).unwrap();
    assert_eq!(
        (reply.status, reply.details.as_str()),
        (503, "wasm_fail_stream")
    );

    let next = vm.send_request(Request::get("/"));
    assert_eq!(vm.reply(next).unwrap().status, 503);
    assert!(
        vm.callbacks(next).is_empty(),
        "a failed VM is never called again"
    );
    assert!(!vm.configure("{}"));
}

#[test]
fn a_runaway_loop_runs_out_of_fuel() {
    let guest = Guest::new().stream_callback("proxy_on_request_headers", op::spin());
    let options = VmOptions {
        fuel_per_callback: 1_000_000,
        ..VmOptions::default()
    };
    let mut vm = start(&guest, options);
    vm.send_request(Request::get("/"));
    assert_eq!(vm.failure().map(|f| f.kind), Some(FailureKind::OutOfFuel));
}

#[test]
fn growing_memory_past_the_limit_traps() {
    let guest = Guest::new().stream_callback(
        "proxy_on_request_headers",
        [op::grow(100), op::i32(0)].concat(),
    );
    let options = VmOptions {
        memory_limit_bytes: 4 << 20,
        ..VmOptions::default()
    };
    let mut vm = start(&guest, options);
    vm.send_request(Request::get("/"));
    assert_eq!(vm.failure().map(|f| f.kind), Some(FailureKind::MemoryLimit));
}

#[test]
fn unimplemented_imports_trap_with_their_name() {
    let zeros: Vec<u8> = (0..12).flat_map(|_| op::i32(0)).collect();
    let body = [zeros, op::call(Import::GrpcCall), op::drop(), op::i32(0)].concat();
    let guest = Guest::new().stream_callback("proxy_on_request_headers", body);
    let plugin = Plugin::from_bytes(&guest.build()).unwrap();
    assert!(plugin
        .trapping_imports()
        .contains(&"env::proxy_grpc_call".to_string()));
    let mut vm = Vm::new(&plugin, VmOptions::default()).unwrap();
    vm.send_request(Request::get("/"));
    let failure = vm.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::UnknownImport);
    assert!(
        failure.message.contains("proxy_grpc_call"),
        "{}",
        failure.message
    );
}

#[test]
fn modules_without_the_abi_marker_are_rejected() {
    let error = Plugin::from_bytes(&Guest::new().without_abi_marker().build()).unwrap_err();
    assert!(matches!(error, HostError::Abi(_)), "{error}");
    assert!(error.to_string().contains("proxy_abi_version_0_2_1"));
}

#[test]
fn missing_plugin_file_says_how_to_build_it() {
    let error = Plugin::load("/nonexistent/looper.wasm").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cargo build --release --target wasm32-wasip1"),
        "{error}"
    );
}

#[test]
fn workers_share_data_metrics_and_queues() {
    const QUEUE_ID: i32 = 1040;
    const METRIC_ID: i32 = 1044;
    let mut guest = Guest::new();
    let queue = guest.data(b"q");
    let metric = guest.data(b"hits");
    let key = guest.data(b"k");
    let value = guest.data(b"v");
    let item = guest.data(b"item");
    let ready = guest.data(b"queue ready");
    let configure = [
        op::i32(queue.0),
        op::i32(queue.1),
        op::i32(QUEUE_ID),
        op::call(Import::RegisterSharedQueue),
        op::drop(),
        op::i32(0),
        op::i32(metric.0),
        op::i32(metric.1),
        op::i32(METRIC_ID),
        op::call(Import::DefineMetric),
        op::drop(),
        op::i32(1),
    ]
    .concat();
    let request = [
        op::load(METRIC_ID),
        op::i64(1),
        op::call(Import::IncrementMetric),
        op::drop(),
        op::i32(key.0),
        op::i32(key.1),
        op::i32(value.0),
        op::i32(value.1),
        op::i32(0),
        op::call(Import::SetSharedData),
        op::drop(),
        op::load(QUEUE_ID),
        op::i32(item.0),
        op::i32(item.1),
        op::call(Import::EnqueueSharedQueue),
        op::drop(),
        op::i32(CONTINUE),
    ]
    .concat();
    let guest = guest
        .configure(configure)
        .stream_callback("proxy_on_request_headers", request)
        .queue_ready(op::log(2, ready));
    let plugin = Plugin::from_bytes(&guest.build()).unwrap();
    let mut a = Vm::new(&plugin, VmOptions::default()).unwrap();
    let store = a.shared();
    let mut b = Vm::new(&plugin, VmOptions::default().with_shared(&store)).unwrap();
    assert!(a.configure("{}") && b.configure("{}"));

    a.send_request(Request::get("/"));
    b.send_request(Request::get("/"));
    assert_eq!(store.metric("hits").map(|m| m.value), Some(2));
    assert_eq!(store.get_data("", "k"), Some((b"v".to_vec(), 2)));
    // The last registration owns the queue, so B hears about both items.
    assert_eq!(a.deliver_queue_ready(), 0);
    assert_eq!(b.deliver_queue_ready(), 2);
    assert_eq!(messages(&b), vec!["queue ready", "queue ready"]);
    let id = store.resolve_queue("", "q").unwrap();
    assert_eq!(store.queue_items(id).unwrap().len(), 2);
}
