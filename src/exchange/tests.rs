//! Tests of the parent module, compiled only under #[cfg(test)].

use super::*;
use crate::config::Config;
use serde_json::{json, Value};

const T0: Millis = Millis(1_700_000_000_000);

fn gateway_with(extra: Value) -> Rc<Gateway> {
    let mut v = json!({
        "models": {
            "small": {"cluster": "sim", "model": "sim-small", "auth": {"env": "KEY"},
                      "price": {"input_per_million": 1.0, "output_per_million": 1.0}},
            "medium": {"cluster": "sim", "model": "sim-medium", "authority": "models.local",
                       "headers": {"x-tenant": "t1"}}
        },
        "recipes": {"r": {"algorithm": "single", "models": ["medium", "small"]}},
        "virtual_models": {"vllm-sr/auto": {"recipe": "r"}},
        "passthrough_models": ["gpt-x"],
        "limits": {"max_body_bytes": 2048},
        "trace": {"allow": true}
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
        base.extend(extra);
    }
    let config = Config::from_json(v.to_string().as_bytes(), &|_| Some("k-123".into())).unwrap();
    Gateway::new(config, 42, 43)
}

fn gateway() -> Rc<Gateway> {
    gateway_with(json!({}))
}

fn head<'a>(method: &'a str, path: &'a str) -> RequestHead<'a> {
    RequestHead {
        method: method.as_bytes(),
        path: path.as_bytes(),
        trace: None,
        signal_headers: &[],
    }
}

type Headers = Vec<(String, String)>;

fn owned(headers: Vec<ReplyHeader>) -> Headers {
    headers
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}
/// A dispatched call: id, cluster, headers, JSON body, timeout.
type Dispatched = (CallId, String, Headers, Value, u64);

/// A forwarded final call: headers set (credential included) and JSON body.
type Forwarded = (Headers, Value);

struct Drained {
    calls: Vec<Dispatched>,
    forwarded: Option<Forwarded>,
    reply: Option<(u16, Headers, Vec<u8>)>,
    counts: Vec<String>,
    adds: Vec<(String, u64)>,
}

fn drain(gw: &Gateway, ex: &mut Exchange) -> Drained {
    let mut d = Drained {
        calls: Vec::new(),
        forwarded: None,
        reply: None,
        counts: Vec::new(),
        adds: Vec::new(),
    };
    while let Some(c) = ex.poll_command() {
        match c {
            Command::HttpCall {
                call,
                cluster,
                mut headers,
                credential,
                body,
                timeout_ms,
            } => {
                if let Some((name, value)) = credential {
                    assert!(!format!("{value:?}").contains(value.expose()));
                    headers.push((name, value.expose().to_string()));
                }
                d.calls.push((
                    call,
                    cluster,
                    headers,
                    serde_json::from_slice(&body).unwrap(),
                    timeout_ms,
                ))
            }
            Command::ForwardUpstream {
                mut headers,
                credential,
                body,
            } => {
                assert!(d.forwarded.is_none(), "two forwarded calls");
                if let Some((name, value)) = credential {
                    headers.push((name, value.expose().to_string()));
                }
                d.forwarded = Some((headers, serde_json::from_slice(&body).unwrap()));
            }
            Command::Reply {
                status,
                headers,
                body,
            } => {
                assert!(d.reply.is_none(), "two replies");
                d.reply = Some((status, owned(headers), body));
            }
            Command::Count(id) => d.counts.push(gw.metrics().defs()[id.0].name.clone()),
            Command::Add(id, n) => {
                assert!(n > 0, "Envoy refuses zero increments");
                d.adds.push((gw.metrics().defs()[id.0].name.clone(), n));
            }
            Command::Record(..) => {}
        }
    }
    d
}

fn post(gw: &Rc<Gateway>, body: &[u8], trace: bool) -> (Exchange, Flow, Drained) {
    let mut ex = gw.exchange(T0);
    let mut h = head("POST", "/v1/chat/completions");
    if trace {
        h.trace = Some(b"1");
    }
    assert_eq!(ex.on_request_headers(h, false, T0), Flow::Pause);
    let (start, len) = ex.body_read_range(body.len()).unwrap_or((0, 0));
    let chunk = &body[start..start + len];
    let flow = ex.on_request_body(body.len(), chunk, true, T0);
    let d = drain(gw, &mut ex);
    (ex, flow, d)
}

fn chat(model: &str, extra: Value) -> Vec<u8> {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
        base.extend(extra);
    }
    v.to_string().into_bytes()
}

fn upstream_ok(content: &str, finish: &str) -> CallResult {
    CallResult::Response {
        status: 200,
        body: json!({"id": "u1", "object": "chat.completion", "created": 3, "model": "sim-medium",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}})
        .to_string()
        .into_bytes(),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn models_list_is_a_local_reply() {
    let gw = gateway();
    let mut ex = gw.exchange(T0);
    assert_eq!(
        ex.on_request_headers(head("GET", "/v1/models?x=1"), true, T0),
        Flow::Pause
    );
    let d = drain(&gw, &mut ex);
    let (status, headers, body) = d.reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["vllm-sr/auto", "gpt-x"]);
}

#[test]
fn model_retrieve_is_local_for_virtual_models_only() {
    let gw = gateway();
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("GET", "/v1/models/vllm-sr/auto"), true, T0);
    let (status, _, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["id"],
        "vllm-sr/auto"
    );

    let mut ex = gw.exchange(T0);
    assert_eq!(
        ex.on_request_headers(head("GET", "/v1/models/gpt-x"), true, T0),
        Flow::Continue
    );
    assert!(drain(&gw, &mut ex).reply.is_none());
}

#[test]
fn other_routes_pass_through() {
    let gw = gateway();
    for (method, path) in [
        ("GET", "/healthz"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/chat/completions"),
    ] {
        let mut ex = gw.exchange(T0);
        assert_eq!(
            ex.on_request_headers(head(method, path), false, T0),
            Flow::Continue
        );
        assert_eq!(ex.body_read_range(10), None);
        assert_eq!(ex.on_request_body(10, b"", true, T0), Flow::Continue);
        let d = drain(&gw, &mut ex);
        assert!(d.reply.is_none() && d.calls.is_empty());
        assert!(!ex.forwards_final_call(), "its response is not even read");
    }
}

#[test]
fn a_recipe_without_instruction_sends_the_clients_own_messages_text() {
    // The `single` recipe adds no instruction: the messages go upstream as the client wrote
    // them (escapes, spacing and all), not serialised again from the parsed body.
    let gw = gateway();
    let messages = r#"[ {"role": "user", "content": "caf\u00e9 \"x\""} ]"#;
    let body = format!(r#"{{"messages": {messages}, "model": "vllm-sr/auto", "top_k": 3}}"#);
    let mut ex = gw.exchange(T0);
    assert_eq!(
        ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0),
        Flow::Pause
    );
    ex.on_request_body(body.len(), body.as_bytes(), true, T0);
    let sent = std::iter::from_fn(|| ex.poll_command())
        .find_map(|command| match command {
            Command::HttpCall { body, .. } => Some(body),
            _ => None,
        })
        .unwrap();
    let sent = String::from_utf8(sent).unwrap();
    assert!(
        sent.contains(&format!(r#""messages":{messages}"#)),
        "{sent}"
    );
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["messages"][0]["content"], "café \"x\"");
    assert_eq!(sent["model"], "sim-medium");
    assert_eq!(sent["top_k"], 3);
}

#[test]
fn virtual_request_dispatches_and_replies() {
    let gw = gateway();
    let (mut ex, flow, d) = post(&gw, &chat("vllm-sr/auto", json!({"top_k": 3})), false);
    assert_eq!(flow, Flow::Pause);
    assert!(d.reply.is_none());
    assert_eq!(d.calls.len(), 1);
    let (call, cluster, headers, body, timeout) = &d.calls[0];
    assert_eq!(cluster, "sim");
    assert_eq!(header(headers, ":method"), Some("POST"));
    assert_eq!(header(headers, ":path"), Some("/v1/chat/completions"));
    assert_eq!(header(headers, ":authority"), Some("models.local"));
    assert_eq!(header(headers, "x-tenant"), Some("t1"));
    assert_eq!(header(headers, "authorization"), None);
    assert_eq!(body["model"], "sim-medium");
    assert_eq!(body["top_k"], 3);
    assert_eq!(*timeout, 60_000);
    assert!(d.counts.contains(&"looper.requests_total".to_string()));
    assert!(!ex.forwards_final_call(), "the call was dispatched");

    ex.on_call_result(*call, upstream_ok("héllo", "length"), T0.plus(25));
    let d = drain(&gw, &mut ex);
    let (status, headers, body) = d.reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-looper-model"), Some("vllm-sr/auto"));
    assert_eq!(header(&headers, "x-looper-recipe"), Some("r"));
    assert_eq!(header(&headers, "x-looper-algorithm"), Some("single"));
    assert_eq!(header(&headers, "x-looper-calls"), Some("1"));
    assert_eq!(header(&headers, "x-looper-models"), Some("medium"));
    assert_eq!(header(&headers, "x-looper-latency-ms"), Some("25"));
    assert!(header(&headers, "x-looper-cost").is_some());
    assert!(headers
        .iter()
        .all(|(_, v)| !v.contains("k-123") && !v.contains("sim")));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "vllm-sr/auto");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_ne!(v["id"], "u1");
    assert_eq!(v["created"], T0.plus(25).unix_seconds());
    assert_eq!(v["choices"][0]["message"]["content"], "héllo");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["total_tokens"], 10);
    assert_eq!(v["system_fingerprint"], "fp");
    assert!(v.get("looper_trace").is_none());
    assert!(d
        .counts
        .contains(&"looper.model.medium.calls.ok".to_string()));
    assert!(d.counts.contains(&"looper.responses_2xx".to_string()));
    assert!(ex.is_replied());
}

#[test]
fn failover_uses_the_credential_and_sums_usage() {
    let gw = gateway();
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    let failed = CallResult::Response {
        status: 500,
        body: br#"{"error":{"message":"boom"},"usage":{"prompt_tokens":4,"completion_tokens":0}}"#
            .to_vec(),
    };
    ex.on_call_result(d.calls[0].0, failed, T0);
    let d = drain(&gw, &mut ex);
    assert!(d.counts.contains(&"looper.failovers_total".to_string()));
    assert!(d
        .counts
        .contains(&"looper.model.medium.calls.http_error".to_string()));
    let (call, _, headers, body, _) = &d.calls[0];
    assert_eq!(header(headers, "authorization"), Some("Bearer k-123"));
    assert_eq!(header(headers, ":authority"), Some("sim"));
    assert_eq!(body["model"], "sim-small");
    ex.on_call_result(*call, upstream_ok("ok", "stop"), T0);
    let (status, headers, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-looper-models"), Some("medium,small"));
    assert_eq!(header(&headers, "x-looper-calls"), Some("2"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 14);
}

#[test]
fn all_upstreams_failing_gives_502_with_headers() {
    let gw = gateway();
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    ex.on_call_result(d.calls[0].0, CallResult::Reset, T0);
    let d = drain(&gw, &mut ex);
    ex.on_call_result(d.calls[0].0, CallResult::Rejected, T0);
    let d = drain(&gw, &mut ex);
    let (status, headers, body) = d.reply.unwrap();
    assert_eq!(status, 502);
    assert_eq!(header(&headers, "x-looper-calls"), Some("2"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(d.counts.contains(&"looper.responses_5xx".to_string()));
}

#[test]
fn streaming_reply_is_sse() {
    let gw = gateway();
    let body = chat(
        "vllm-sr/auto",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (mut ex, _, d) = post(&gw, &body, false);
    assert_eq!(d.calls[0].3["stream"], false);
    assert!(d.calls[0].3.get("stream_options").is_none());
    ex.on_call_result(d.calls[0].0, upstream_ok("日本語 text 🙂", "stop"), T0);
    let (status, headers, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("data: {"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"total_tokens\":10"));
}

#[test]
fn trace_needs_operator_permission_and_client_opt_in() {
    for (allowed, asked, expect) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
    ] {
        let gw = gateway_with(json!({"trace": {"allow": allowed}}));
        let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), asked);
        ex.on_call_result(d.calls[0].0, upstream_ok("x", "stop"), T0);
        let (_, _, body) = drain(&gw, &mut ex).reply.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.get("looper_trace").is_some(), expect, "{allowed} {asked}");
        if expect {
            let trace = &v["looper_trace"];
            assert_eq!(trace["algorithm"], "single");
            assert_eq!(trace["steps"][0]["model"], "medium");
            assert_eq!(trace["steps"][0]["outcome"], "ok");
            assert!(!trace.to_string().contains("k-123"));
        }
    }
}

#[test]
fn reply_can_name_the_upstream_alias() {
    let gw = gateway_with(json!({"response": {"model": "upstream"}}));
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    ex.on_call_result(d.calls[0].0, upstream_ok("x", "stop"), T0);
    let (_, _, body) = drain(&gw, &mut ex).reply.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model"], "medium");
}

#[test]
fn other_models_pass_through_after_the_first_chunk() {
    let gw = gateway();
    let body = br#"{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}"#;
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    let first = &body[..20];
    let (start, len) = ex.body_read_range(20).unwrap();
    assert_eq!((start, len), (0, 20));
    assert_eq!(
        ex.on_request_body(20, &first[start..start + len], false, T0),
        Flow::Continue
    );
    // Later chunks are not read any more.
    assert_eq!(ex.body_read_range(body.len()), None);
    assert_eq!(
        ex.on_request_body(body.len(), b"", true, T0),
        Flow::Continue
    );
    let d = drain(&gw, &mut ex);
    assert!(d.reply.is_none());
    assert!(d.calls.is_empty());
    assert_eq!(d.counts, vec!["looper.passthrough_total".to_string()]);
}

#[test]
fn body_arriving_in_chunks_is_assembled() {
    let gw = gateway();
    let body = chat(
        "vllm-sr/auto",
        json!({"messages": [{"role": "user", "content": "x".repeat(500)}]}),
    );
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    let mut total = 0;
    for piece in body.chunks(7) {
        total += piece.len();
        let (start, len) = ex.body_read_range(total).unwrap();
        assert_eq!(start + len, total);
        assert_eq!(ex.on_request_body(total, piece, false, T0), Flow::Pause);
    }
    assert_eq!(ex.body_read_range(total), Some((total, 0)));
    ex.on_request_body(total, b"", true, T0);
    let d = drain(&gw, &mut ex);
    assert_eq!(d.calls.len(), 1);
    assert_eq!(
        d.calls[0].3["messages"][0]["content"]
            .as_str()
            .unwrap()
            .len(),
        500
    );
}

fn error_of(d: &Drained) -> (u16, Value) {
    let (status, _, body) = d.reply.as_ref().unwrap();
    (*status, serde_json::from_slice(body).unwrap())
}

#[test]
fn bad_requests_get_openai_errors() {
    let gw = gateway();
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, None),
        (b"[1,2]".to_vec(), 400, None),
        (b"\xff\xfe\x00".to_vec(), 400, None),
        (
            br#"{"model":"vllm-sr/auto"}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            br#"{"model":"vllm-sr/auto","messages":"x"}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            br#"{"model":"vllm-sr/auto","messages":[],"stream":1}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            chat("vllm-sr/auto", json!({"stream": "yes"})),
            400,
            Some("stream"),
        ),
        (chat("vllm-sr/auto", json!({"n": 0})), 400, Some("n")),
        (br#"{"messages":[]}"#.to_vec(), 400, Some("model")),
        (br#"{"model":7,"messages":[]}"#.to_vec(), 400, Some("model")),
        (chat("vllm-sr/unknown", json!({})), 404, Some("model")),
    ];
    for (body, status, param) in cases {
        let (_, flow, d) = post(&gw, &body, false);
        assert_eq!(flow, Flow::Pause);
        assert!(d.calls.is_empty());
        let (got, v) = error_of(&d);
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            v["error"]["param"].as_str(),
            param,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(v["error"]["message"].is_string());
        assert!(d.counts.contains(&"looper.rejected_total".to_string()));
    }
}

#[test]
fn unknown_virtual_model_is_404_as_soon_as_it_is_seen() {
    let gw = gateway();
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    let chunk = br#"{"model":"vllm-sr/nope","messages":["#;
    ex.on_request_body(chunk.len(), chunk, false, T0);
    let (status, v) = error_of(&drain(&gw, &mut ex));
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
}

fn feed(ex: &mut Exchange, chunks: &[&[u8]], end: bool) -> Flow {
    let mut total = 0;
    let mut flow = Flow::Pause;
    for (i, chunk) in chunks.iter().enumerate() {
        total += chunk.len();
        let (start, len) = ex.body_read_range(total).unwrap();
        assert_eq!((start, len), (total - chunk.len(), chunk.len()));
        flow = ex.on_request_body(total, chunk, end && i + 1 == chunks.len(), T0);
        if flow == Flow::Continue || ex.is_replied() {
            break;
        }
    }
    flow
}

#[test]
fn virtual_request_over_the_limit_is_413() {
    let gw = gateway();
    let filler = "x".repeat(3000);
    // `model` first: the 413 comes as soon as the limit is crossed.
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    let first = br#"{"model":"vllm-sr/auto","messages":[{"role":"user","content":""#;
    assert_eq!(
        feed(&mut ex, &[first, filler.as_bytes()], false),
        Flow::Pause
    );
    let (status, v) = error_of(&drain(&gw, &mut ex));
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], "request_too_large");

    // `model` last (as the official Python client sends it): the 413 comes when it is seen.
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    let head_part = br#"{"messages":[{"role":"user","content":""#;
    let tail = br#""}],"model":"vllm-sr/auto"}"#;
    assert_eq!(
        feed(&mut ex, &[head_part, filler.as_bytes(), tail], true),
        Flow::Pause
    );
    assert_eq!(error_of(&drain(&gw, &mut ex)).0, 413);
}

#[test]
fn large_request_for_another_model_still_passes_through() {
    let gw = gateway();
    let filler = "x".repeat(5000);
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    let head_part = br#"{"messages":[{"role":"user","content":""#;
    let tail = br#""}],"model":"gpt-x"}"#;
    assert_eq!(
        feed(&mut ex, &[head_part, filler.as_bytes(), tail], true),
        Flow::Continue
    );
    let d = drain(&gw, &mut ex);
    assert!(d.reply.is_none() && d.calls.is_empty());
}

#[test]
fn oversized_body_without_a_model_is_413() {
    let gw = gateway();
    let filler = "x".repeat(5000);
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    assert_eq!(
        feed(&mut ex, &[b"{\"a\":\"", filler.as_bytes()], true),
        Flow::Pause
    );
    assert_eq!(error_of(&drain(&gw, &mut ex)).0, 413);
}

#[test]
fn trailers_end_the_body() {
    let gw = gateway();
    let body = chat("vllm-sr/auto", json!({}));
    let mut ex = gw.exchange(T0);
    ex.on_request_headers(head("POST", "/v1/chat/completions"), false, T0);
    assert_eq!(feed(&mut ex, &[&body], false), Flow::Pause);
    assert!(drain(&gw, &mut ex).calls.is_empty());
    assert_eq!(ex.on_request_trailers(T0), Flow::Pause);
    assert_eq!(drain(&gw, &mut ex).calls.len(), 1);
}

#[test]
fn only_known_upstream_fields_are_carried_over() {
    let gw = gateway();
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    let body = json!({"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}],
        "system_fingerprint": "fp", "service_tier": "default",
        "kv_transfer_params": {"host": "10.0.0.7"}, "provider": "secret-backend"});
    ex.on_call_result(
        d.calls[0].0,
        CallResult::Response {
            status: 200,
            body: body.to_string().into_bytes(),
        },
        T0,
    );
    let (_, _, reply) = drain(&gw, &mut ex).reply.unwrap();
    let v: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["system_fingerprint"], "fp");
    assert_eq!(v["service_tier"], "default");
    assert!(v.get("kv_transfer_params").is_none() && v.get("provider").is_none());
}

#[test]
fn chat_post_without_body_is_400() {
    let gw = gateway();
    let mut ex = gw.exchange(T0);
    assert_eq!(
        ex.on_request_headers(head("POST", "/v1/chat/completions"), true, T0),
        Flow::Pause
    );
    assert_eq!(error_of(&drain(&gw, &mut ex)).0, 400);
}

#[test]
fn client_abort_is_counted_and_late_results_ignored() {
    let gw = gateway();
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    ex.on_stream_done();
    let after = drain(&gw, &mut ex);
    assert_eq!(after.counts, vec!["looper.client_aborts_total".to_string()]);
    ex.on_call_result(d.calls[0].0, upstream_ok("late", "stop"), T0);
    let late = drain(&gw, &mut ex);
    assert!(late.reply.is_none() && late.calls.is_empty());
}

#[test]
fn response_ids_are_unique() {
    let gw = gateway();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..50 {
        let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
        ex.on_call_result(d.calls[0].0, upstream_ok("x", "stop"), T0);
        let (_, _, body) = drain(&gw, &mut ex).reply.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(ids.insert(v["id"].as_str().unwrap().to_string()));
    }
}

fn confidence_gateway() -> Rc<Gateway> {
    gateway_with(json!({
        "models": {
            "small": {"cluster": "sim", "logprobs": true},
            "medium": {"cluster": "sim", "model": "sim-medium", "authority": "models.local",
                       "headers": {"x-tenant": "t1"}}
        },
        "recipes": {"r": {"algorithm": "single", "models": ["medium", "small"]},
                    "c": {"algorithm": "confidence", "contract": {"type": "choice"},
                          "candidates": [{"model": "small", "threshold": 0.5}, {"model": "medium"}]}},
        "virtual_models": {"vllm-sr/auto": {"recipe": "r"}, "looper/confidence": {"recipe": "c"}}
    }))
}

#[test]
fn confidence_reply_carries_its_score_and_hides_gateway_logprobs() {
    let gw = confidence_gateway();
    let (mut ex, _, d) = post(&gw, &chat("looper/confidence", json!({})), false);
    assert_eq!(d.calls[0].3["logprobs"], true);
    let body = json!({"choices": [{"index": 0, "message": {"content": "ANSWER: B"},
        "logprobs": {"content": [{"token": "ANSWER:", "logprob": -0.01, "top_logprobs": []},
                                  {"token": " B", "logprob": -0.1, "top_logprobs": []}]},
        "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
    ex.on_call_result(
        d.calls[0].0,
        CallResult::Response {
            status: 200,
            body: body.to_string().into_bytes(),
        },
        T0,
    );
    let (status, headers, reply) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-looper-algorithm"), Some("confidence"));
    assert_eq!(header(&headers, "x-looper-confidence"), Some("0.905"));
    let v: Value = serde_json::from_slice(&reply).unwrap();
    assert!(
        v["choices"][0]["logprobs"].is_null(),
        "the client did not ask for logprobs"
    );
}

#[test]
fn looping_recipes_refuse_n_and_tools_clearly() {
    let gw = confidence_gateway();
    for (extra, param) in [
        (json!({"n": 2}), "n"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
    ] {
        let (_, _, d) = post(&gw, &chat("looper/confidence", extra), false);
        let (status, v) = error_of(&d);
        assert_eq!(status, 400);
        assert_eq!(v["error"]["param"], param);
        assert!(d.calls.is_empty());
    }
    // `single` passes them on.
    let (_, _, d) = post(&gw, &chat("vllm-sr/auto", json!({"n": 2})), false);
    assert_eq!(d.calls[0].3["n"], 2);
}

#[test]
fn tokens_are_counted_per_model_and_late_results_ignored() {
    let gw = gateway_with(json!({
        "recipes": {"r": {"algorithm": "ratings", "contract": {"type": "choice"},
            "members": [{"model": "small", "weight": 2.0}, {"model": "medium", "weight": 1.0}]}}
    }));
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert_eq!(d.calls.len(), 2);
    let answer = |letter: &str| CallResult::Response {
        status: 200,
        body: json!({"choices": [{"message": {"content": format!("ANSWER: {letter}")}}],
                     "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
        .to_string()
        .into_bytes(),
    };
    // `small` outweighs `medium`: its answer decides the vote at once.
    ex.on_call_result(d.calls[0].0, answer("A"), T0);
    let first = drain(&gw, &mut ex);
    let (_, headers, _) = first.reply.unwrap();
    assert_eq!(header(&headers, "x-looper-abandoned-calls"), Some("1"));
    assert_eq!(
        first.adds,
        vec![
            ("looper.model.small.prompt_tokens".to_string(), 7),
            ("looper.model.small.completion_tokens".to_string(), 3)
        ]
    );
    ex.on_call_result(d.calls[1].0, answer("B"), T0);
    let late = drain(&gw, &mut ex);
    assert!(late.reply.is_none() && late.adds.is_empty() && late.counts.is_empty());
}

fn router_gateway() -> Rc<Gateway> {
    gateway_with(json!({
        "recipes": {
            "r": {"algorithm": "single", "models": ["medium", "small"]},
            "cheap": {"algorithm": "single", "models": ["small"]}
        },
        "routers": {"auto": {
            "signals": {
                "greeting": {"type": "keywords", "keywords": ["hi"], "whole_word": true},
                "free": {"type": "header", "name": "x-tier", "values": ["free"]}
            },
            "projections": {"cost": {"weights": {"free": 1},
                "bands": [{"name": "normal", "below": 1}, {"name": "tight"}]}},
            "decisions": [
                {"name": "free_tier", "priority": 10, "when": {"band": "cost", "is": "tight"},
                 "recipe": "cheap"},
                {"name": "default", "recipe": "r"}
            ]
        }},
        "virtual_models": {"vllm-sr/auto": {"router": "auto"}, "vllm-sr/pinned": {"recipe": "r"}}
    }))
}

fn post_with_headers(
    gw: &Rc<Gateway>,
    body: &[u8],
    signal_headers: &[Option<Vec<u8>>],
) -> (Exchange, Drained) {
    let mut ex = gw.exchange(T0);
    let mut h = head("POST", "/v1/chat/completions");
    h.trace = Some(b"1");
    h.signal_headers = signal_headers;
    assert_eq!(ex.on_request_headers(h, false, T0), Flow::Pause);
    ex.on_request_body(body.len(), body, true, T0);
    let d = drain(gw, &mut ex);
    (ex, d)
}

#[test]
fn the_router_picks_the_recipe_and_the_reply_shows_why() {
    let gw = router_gateway();
    assert_eq!(
        Exchange::new(Rc::clone(&gw), T0).signal_header_names(),
        ["x-tier"]
    );
    let (mut ex, d) = post_with_headers(&gw, &chat("vllm-sr/auto", json!({})), &[None]);
    assert_eq!(d.calls.len(), 1);
    assert_eq!(d.calls[0].3["model"], "sim-medium");
    assert!(d
        .counts
        .contains(&"looper.router.auto.decision.default".to_string()));
    let call = d.calls[0].0;
    ex.on_call_result(call, upstream_ok("hello", "stop"), T0);
    let (status, headers, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-looper-decision"), Some("default"));
    assert_eq!(header(&headers, "x-looper-recipe"), Some("r"));
    assert_eq!(header(&headers, "x-looper-bands"), Some("cost=normal"));
    assert_eq!(header(&headers, "x-looper-signals"), Some("greeting"));
    let reply: Value = serde_json::from_slice(&body).unwrap();
    let route = &reply["looper_trace"]["route"];
    assert_eq!(route["router"], "auto");
    assert_eq!(route["decision"], "default");
    assert_eq!(route["recipe"], "r");
    assert_eq!(
        route["bands"]["cost"],
        json!({"band": "normal", "score": 0.0})
    );
    assert_eq!(route["signals"], json!({"greeting": 1.0}));

    // The allow-listed header moves the request to another recipe.
    let (_, d) = post_with_headers(
        &gw,
        &chat("vllm-sr/auto", json!({})),
        &[Some(b" free ".to_vec())],
    );
    assert_eq!(d.calls[0].3["model"], "sim-small");
    assert!(d
        .counts
        .contains(&"looper.router.auto.decision.free_tier".to_string()));

    // Header values that are not UTF-8 or too long count as absent.
    for bad in [vec![0xff, b'f'], "free".repeat(100).into_bytes()] {
        let (_, d) = post_with_headers(&gw, &chat("vllm-sr/auto", json!({})), &[Some(bad)]);
        assert_eq!(d.calls[0].3["model"], "sim-medium");
    }
}

#[test]
fn a_pinned_virtual_model_says_so_and_has_no_route() {
    let gw = router_gateway();
    let (mut ex, d) = post_with_headers(&gw, &chat("vllm-sr/pinned", json!({})), &[None]);
    assert!(!d.counts.iter().any(|c| c.contains("decision")));
    ex.on_call_result(d.calls[0].0, upstream_ok("hello", "stop"), T0);
    let (_, headers, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(header(&headers, "x-looper-decision"), Some("pinned"));
    assert_eq!(header(&headers, "x-looper-signals"), None);
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert!(reply["looper_trace"].get("route").is_none());
}

#[test]
fn a_routed_recipe_still_refuses_what_it_cannot_serve() {
    let gw = gateway_with(json!({
        "recipes": {
            "r": {"algorithm": "single", "models": ["medium"]},
            "panel": {"algorithm": "ratings", "members": [{"model": "medium"}, {"model": "small"}]}
        },
        "routers": {"auto": {"decisions": [{"name": "default", "recipe": "panel"}]}},
        "virtual_models": {"vllm-sr/auto": {"router": "auto"}}
    }));
    let (_, d) = post_with_headers(&gw, &chat("vllm-sr/auto", json!({"n": 2})), &[]);
    assert!(
        !d.counts.iter().any(|c| c.contains("decision")),
        "a refused request is not counted as routed"
    );
    let (status, _, body) = d.reply.unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("`n` must be 1"));
}

fn streaming_gateway(stream_final_call: bool) -> Rc<Gateway> {
    gateway_with(json!({
        "recipes": {"rm": {"algorithm": "remom", "contract": {"type": "choice"},
                           "pool": [{"model": "medium"}, {"model": "small"}],
                           "breadth_schedule": [2], "synthesizer": "small"}},
        "virtual_models": {"looper/remom": {"recipe": "rm"}},
        "stream_final_call": stream_final_call
    }))
}

/// A streaming ReMoM request whose two workers answered: the synthesis is next.
fn remom_until_synthesis(gw: &Rc<Gateway>, trace: bool) -> (Exchange, Drained) {
    let body = chat(
        "looper/remom",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (mut ex, _, d) = post(gw, &body, trace);
    assert_eq!(d.calls.len(), 2);
    for (call, ..) in &d.calls {
        ex.on_call_result(*call, upstream_ok("ANSWER: B", "stop"), T0);
    }
    let d = drain(gw, &mut ex);
    (ex, d)
}

#[test]
fn the_synthesis_of_a_streaming_request_is_forwarded_and_its_stream_rewritten() {
    let gw = streaming_gateway(true);
    let (mut ex, d) = remom_until_synthesis(&gw, false);
    assert!(d.calls.is_empty(), "the synthesis is not a dispatched call");
    let (headers, body) = d.forwarded.unwrap();
    assert_eq!(header(&headers, "x-looper-cluster"), Some("sim"));
    assert_eq!(header(&headers, "x-looper-authority"), Some("sim"));
    assert_eq!(
        header(&headers, ":authority"),
        None,
        "route matching keeps the client's"
    );
    assert_eq!(header(&headers, ":path"), Some("/v1/chat/completions"));
    assert_eq!(header(&headers, "authorization"), Some("Bearer k-123"));
    assert_eq!(body["model"], "sim-small");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        header(&headers, "content-length"),
        Some(
            serde_json::to_vec(&body)
                .unwrap()
                .len()
                .to_string()
                .as_str()
        )
    );

    assert!(ex.forwards_final_call());
    let ResponseHead::Stream { headers: set } = ex.on_response_headers(200, true, T0) else {
        panic!("not streamed");
    };
    let set = owned(set);
    assert_eq!(header(&set, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&set, "x-looper-calls"), Some("3"));
    assert!(ex.rewrites_response());
    let upstream = "data: {\"model\":\"sim-small\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ANSWER: B\"}}]}\n\n\
                    data: {\"model\":\"sim-small\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
    let (first, rest) = upstream.split_at(30);
    let mut out = ex.on_response_body(first.as_bytes(), false, T0).unwrap();
    out.extend(ex.on_response_body(rest.as_bytes(), true, T0).unwrap());
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\"model\":\"looper/remom\""), "{text}");
    assert!(!text.contains("sim-small"), "{text}");
    // Two workers at 10 tokens each, then the synthesis's 3.
    assert!(text.contains("\"total_tokens\":23"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(ex.is_replied());
    assert!(!ex.forwards_final_call());
    let d = drain(&gw, &mut ex);
    assert!(d
        .counts
        .contains(&"looper.model.small.calls.ok".to_string()));
    assert!(d
        .adds
        .contains(&("looper.model.small.completion_tokens".to_string(), 2)));
}

#[test]
fn a_forwarded_synthesis_that_fails_before_any_byte_falls_back_to_the_vote() {
    let gw = streaming_gateway(true);
    let (mut ex, d) = remom_until_synthesis(&gw, false);
    assert!(d.forwarded.is_some());
    assert!(ex.forwards_final_call(), "its response headers are read");
    assert_eq!(
        ex.on_response_headers(503, false, T0),
        ResponseHead::Replaced
    );
    let (status, headers, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("ANSWER: B"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    // A later body (Envoy's own error text) is not ours to rewrite.
    assert_eq!(
        ex.on_response_body(b"upstream connect error", true, T0),
        None
    );
}

#[test]
fn a_forwarded_synthesis_answering_200_without_an_event_stream_falls_back_too() {
    let gw = streaming_gateway(true);
    let (mut ex, _) = remom_until_synthesis(&gw, false);
    assert!(ex.forwards_final_call());
    assert_eq!(
        ex.on_response_headers(200, false, T0),
        ResponseHead::Replaced
    );
    let (status, _, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("ANSWER: B"));
}

#[test]
fn a_synthesis_whose_failure_would_be_retried_is_not_streamed() {
    let gw = gateway_with(json!({
        "recipes": {"rm": {"algorithm": "remom", "contract": {"type": "choice"},
                           "pool": [{"model": "medium"}, {"model": "small"}],
                           "breadth_schedule": [2], "synthesizer": "small",
                           "on_failure": {"policy": "fallback", "model": "medium"}}},
        "virtual_models": {"looper/remom": {"recipe": "rm"}},
        "stream_final_call": true
    }));
    let (_, d) = remom_until_synthesis(&gw, false);
    assert!(d.forwarded.is_none());
    assert_eq!(d.calls.len(), 1);
}

#[test]
fn the_synthesis_is_buffered_without_the_option_or_with_a_trace() {
    for (enabled, trace) in [(false, false), (true, true)] {
        let gw = streaming_gateway(enabled);
        let (_, d) = remom_until_synthesis(&gw, trace);
        assert!(d.forwarded.is_none());
        assert_eq!(d.calls.len(), 1, "the synthesis is an ordinary call");
    }
}

fn capped_gateway(overload: Value) -> Rc<Gateway> {
    gateway_with(json!({
        "recipes": {"r": {"algorithm": "single", "models": ["medium", "small"]},
                    "cheap": {"algorithm": "single", "models": ["small"]}},
        "limits": {"max_concurrent_requests": 1, "retry_after_s": 7, "overload": overload}
    }))
}

#[test]
fn beyond_the_cap_a_looper_request_gets_503_with_retry_after() {
    let gw = capped_gateway(json!({"policy": "reject"}));
    let (mut first, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert_eq!(d.calls.len(), 1);
    assert_eq!(gw.running(), 1);

    let (_, flow, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert_eq!(flow, Flow::Pause);
    assert!(d.calls.is_empty());
    let (status, headers, body) = d.reply.unwrap();
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "retry-after"), Some("7"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "gateway_overloaded");
    assert!(d
        .counts
        .contains(&"looper.overload.rejected_total".to_string()));
    // Requests the plugin does not run are not capped.
    let (_, flow, _) = post(&gw, &chat("gpt-x", json!({})), false);
    assert_eq!(flow, Flow::Continue);

    // The reply gives the place back.
    let call = d.calls.first().map_or(CallId(0), |c| c.0);
    first.on_call_result(call, upstream_ok("hello", "stop"), T0);
    assert_eq!(drain(&gw, &mut first).reply.unwrap().0, 200);
    assert_eq!(gw.running(), 0);
    let (_, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert_eq!(d.calls.len(), 1);
}

#[test]
fn a_client_that_goes_away_gives_its_place_back() {
    let gw = capped_gateway(json!({"policy": "reject"}));
    let (first, _, _) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert_eq!(gw.running(), 1);
    drop(first);
    assert_eq!(gw.running(), 0);
    let (_, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert_eq!(d.calls.len(), 1);
}

#[test]
fn beyond_the_cap_the_degrade_policy_answers_with_the_single_recipe() {
    let gw = capped_gateway(json!({"policy": "degrade", "recipe": "cheap"}));
    let (_first, _, _) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    let (mut second, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert!(d
        .counts
        .contains(&"looper.overload.degraded_total".to_string()));
    let [(call, _, _, body, _)] = d.calls.as_slice() else {
        panic!("one call expected: {:?}", d.calls.len());
    };
    assert_eq!(body["model"], "sim-small");
    // Degraded requests run outside the cap.
    assert_eq!(gw.running(), 1);
    second.on_call_result(*call, upstream_ok("hello", "stop"), T0);
    let (status, headers, _) = drain(&gw, &mut second).reply.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-looper-degraded"), Some("overload"));
    assert_eq!(header(&headers, "x-looper-recipe"), Some("cheap"));
}

#[test]
fn every_model_rate_limited_is_429_for_a_panel_too() {
    let gw = gateway_with(json!({
        "recipes": {"r": {"algorithm": "ratings", "members": [{"model": "medium"}, {"model": "small"}]}},
    }));
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    assert_eq!(d.calls.len(), 2);
    let limited = || CallResult::Response {
        status: 429,
        body: br#"{"error":{"message":"slow down"}}"#.to_vec(),
    };
    for (call, ..) in &d.calls {
        ex.on_call_result(*call, limited(), T0);
    }
    let (status, headers, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "retry-after"), Some("1"));

    // One 500 among the 429s is an upstream failure: 502.
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    let mut results = vec![
        limited(),
        CallResult::Response {
            status: 500,
            body: Vec::new(),
        },
    ];
    for (call, ..) in &d.calls {
        ex.on_call_result(*call, results.remove(0), T0);
    }
    assert_eq!(drain(&gw, &mut ex).reply.unwrap().0, 502);
}

#[test]
fn a_failed_request_still_reports_the_usage_it_was_billed() {
    let gw = gateway();
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    let billed = CallResult::Response {
        status: 500,
        body: json!({"error": {"message": "oops"},
                     "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
        .to_string()
        .into_bytes(),
    };
    ex.on_call_result(d.calls[0].0, billed, T0);
    let d = drain(&gw, &mut ex);
    ex.on_call_result(d.calls[0].0, CallResult::Reset, T0);
    let (status, _, body) = drain(&gw, &mut ex).reply.unwrap();
    assert_eq!(status, 502);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["total_tokens"], 7);
    assert_eq!(v["error"]["code"], "upstream_failed");
    assert!(v.get("looper_trace").is_none());
}

#[test]
fn an_answer_without_usage_is_counted_as_such() {
    let gw = gateway();
    let (mut ex, _, d) = post(&gw, &chat("vllm-sr/auto", json!({})), false);
    let no_usage = CallResult::Response {
        status: 200,
        body: json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                  "finish_reason": "stop"}]})
        .to_string()
        .into_bytes(),
    };
    ex.on_call_result(d.calls[0].0, no_usage, T0);
    let d = drain(&gw, &mut ex);
    assert_eq!(d.reply.unwrap().0, 200);
    assert!(d
        .counts
        .contains(&"looper.model.medium.calls_without_usage".to_string()));
    assert!(d
        .counts
        .contains(&"looper.model.medium.calls.ok".to_string()));
}
