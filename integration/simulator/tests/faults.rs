//! Every fault kind, from directives and from failure_rates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn fault_req(kind: &str) -> Value {
    chat("m1", &format!("please [sim:fault={kind}] thanks"))
}

#[test]
fn status_faults_keep_the_connection() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    for (kind, status) in [
        ("500", 500),
        ("status_500", 500),
        ("502", 502),
        ("503", 503),
        ("400", 400),
        ("429", 429),
    ] {
        let r = c.post_json("/v1/chat/completions", &fault_req(kind));
        assert_eq!(r.status, status, "{kind}");
        let e = &r.json()["error"];
        assert!(e["message"].is_string() && e["type"].is_string());
        assert!(e.get("param").is_some() && e.get("code").is_some());
        assert_eq!(r.header("retry-after").is_some(), status == 429);
    }
    // Still usable afterwards.
    assert_eq!(
        c.post_json("/v1/chat/completions", &chat("m1", "ok?"))
            .status,
        200
    );
    // Status faults on a streaming request are plain JSON errors.
    let mut req = fault_req("503");
    req["stream"] = json!(true);
    let r = c.post_json("/v1/chat/completions", &req);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = stats(addr);
    assert_eq!(s["models"]["m1"]["faults"]["status_500"], 2);
    assert_eq!(s["models"]["m1"]["faults"]["status_429"], 1);
    assert_eq!(s["models"]["m1"]["faults"]["status_503"], 2);
}

#[test]
fn reset_closes_without_a_byte() {
    let addr = start_default();
    for stream in [false, true] {
        let mut req = fault_req("reset");
        req["stream"] = json!(stream);
        let mut c = Client::connect(addr);
        c.send(
            "POST",
            "/v1/chat/completions",
            Some(&serde_json::to_vec(&req).unwrap()),
            &[],
        );
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c.stream, &mut buf);
        assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    }
    assert_eq!(stats(addr)["models"]["m1"]["faults"]["reset"], 2);
}

fn split_head(raw: &[u8]) -> (String, &[u8]) {
    let i = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (String::from_utf8(raw[..i].to_vec()).unwrap(), &raw[i + 4..])
}

#[test]
fn truncate_sends_less_than_content_length() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    c.send(
        "POST",
        "/v1/chat/completions",
        Some(&serde_json::to_vec(&fault_req("truncate")).unwrap()),
        &[],
    );
    let raw = c.read_to_eof();
    let (head, body) = split_head(&raw);
    assert!(head.starts_with("HTTP/1.1 200 "));
    let cl: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !body.is_empty() && body.len() < cl,
        "{} of {cl}",
        body.len()
    );
    assert!(serde_json::from_slice::<Value>(body).is_err());

    // Streaming: the chunked body ends abruptly (no terminating chunk, no [DONE]).
    let mut req = fault_req("truncate");
    req["stream"] = json!(true);
    let mut c = Client::connect(addr);
    c.send(
        "POST",
        "/v1/chat/completions",
        Some(&serde_json::to_vec(&req).unwrap()),
        &[],
    );
    let raw = c.read_to_eof();
    let (head, body) = split_head(&raw);
    assert!(head.contains("transfer-encoding: chunked"));
    assert!(!body.is_empty());
    assert!(!body.ends_with(b"0\r\n\r\n"));
    assert!(!String::from_utf8_lossy(body).contains("[DONE]"));
    // Truncated responses never delivered their usage.
    let s = stats(addr);
    assert_eq!(s["models"]["m1"]["completion_tokens"], 0);
    assert_eq!(s["models"]["m1"]["faults"]["truncate"], 2);
}

#[test]
fn garbage_wrong_shape_and_bad_utf8() {
    let addr = start_default();
    let r = post(addr, &fault_req("garbage"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    assert!(std::str::from_utf8(&r.body).is_err());

    let r = post(addr, &fault_req("wrong_shape"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"unexpected": true}));

    let r = post(addr, &fault_req("bad_utf8"));
    assert_eq!(r.status, 200);
    assert!(std::str::from_utf8(&r.body).is_err());
    let lossy = String::from_utf8_lossy(&r.body);
    let v: Value = serde_json::from_str(&lossy).unwrap();
    assert!(content(&v, 0).contains('\u{FFFD}'));
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Streaming variants.
    for kind in ["garbage", "bad_utf8"] {
        let mut req = fault_req(kind);
        req["stream"] = json!(true);
        let r = post(addr, &req);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert!(std::str::from_utf8(&r.body).is_err(), "{kind}");
        assert!(r.body.ends_with(b"data: [DONE]\n\n"));
    }
    let mut req = fault_req("wrong_shape");
    req["stream"] = json!(true);
    let sse = parse_sse(&post(addr, &req).body);
    assert_eq!(sse.events, vec![json!({"unexpected": true})]);
    assert!(sse.done);
}

#[test]
fn cut_json_is_well_framed_but_stops_half_way() {
    let addr = start_default();
    let whole = post(addr, &fault_req("none"));
    let r = post(addr, &fault_req("cut_json"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    assert!(r.body.starts_with(b"{\""));
    assert!(r.body.len() < whole.body.len());
    let mut req = fault_req("cut_json");
    req["stream"] = json!(true);
    let r = post(addr, &req);
    assert!(r.body.ends_with(b"data: [DONE]\n\n"));
    // The usage never reached a reader, so it is not counted.
    let s = stats(addr);
    assert_eq!(s["models"]["m1"]["faults"]["cut_json"], 2);
    let served_once = s["models"]["m1"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(
        served_once,
        whole.json()["usage"]["completion_tokens"].as_u64().unwrap()
    );
}

#[test]
fn empty_choices_and_no_usage() {
    let addr = start_default();
    let v = post(addr, &fault_req("empty_choices")).json();
    assert_eq!(v["choices"], json!([]));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["completion_tokens"], 0);

    let v = post(addr, &fault_req("no_usage")).json();
    assert!(v.get("usage").is_none());
    assert!(!content(&v, 0).is_empty());

    let mut req = fault_req("no_usage");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let sse = parse_sse(&post(addr, &req).body);
    assert!(sse.done);
    assert!(sse.events.iter().all(|e| e["usage"].is_null()));

    let mut req = fault_req("empty_choices");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let sse = parse_sse(&post(addr, &req).body);
    assert!(sse.done);
    assert!(sse.events.iter().all(|e| e["choices"] == json!([])));
    assert!(sse.events.last().unwrap()["usage"].is_object());
    // Usage sent by empty_choices (twice) counts; no_usage counts nothing.
    let s = &stats(addr)["models"]["m1"];
    assert_eq!(s["faults"]["empty_choices"], 2);
    assert_eq!(s["faults"]["no_usage"], 2);
    assert_eq!(s["ok_responses"], 0);
    assert_eq!(
        s["prompt_tokens"],
        2 * v_prompt(&fault_req("empty_choices"))
    );
}

fn v_prompt(req: &Value) -> u64 {
    let words: usize = req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().split_whitespace().count())
        .sum();
    words as u64 + 3 * req["messages"].as_array().unwrap().len() as u64
}

#[test]
fn slow_drips_a_valid_body() {
    let addr = start_default();
    let plain = post(addr, &chat("m1", "[sim:fault=none] drip")).json();
    let t = Instant::now();
    let r = post(addr, &chat("m1", "[sim:fault=slow] drip"));
    let elapsed = t.elapsed();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(!content(&v, 0).is_empty());
    // 64-byte pieces, 1 ms apart (the test config).
    let pieces = r.body.len().div_ceil(64) as u128;
    assert!(
        elapsed.as_millis() >= pieces - 1,
        "{elapsed:?} for {pieces} pieces"
    );
    assert_eq!(plain["object"], "chat.completion");

    let mut req = chat("m1", "[sim:fault=slow] drip");
    req["stream"] = json!(true);
    let sse = parse_sse(&post(addr, &req).body);
    assert!(sse.done);
    assert_eq!(stats(addr)["models"]["m1"]["faults"]["slow"], 2);
}

#[test]
fn huge_is_twelve_mib() {
    let addr = start_default();
    let v = post(addr, &fault_req("huge")).json();
    let text = content(&v, 0);
    assert!(text.len() >= 12 * 1024 * 1024 && text.len() < 13 * 1024 * 1024);
    assert!(text.starts_with("[m1] "));
    assert_eq!(v["usage"]["completion_tokens"], text.split(' ').count());

    let mut req = fault_req("huge");
    req["stream"] = json!(true);
    let sse = parse_sse(&post(addr, &req).body);
    let streamed: String = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(sse.events.len() < 400, "huge streams in big pieces");
}

#[test]
fn hang_then_answer_and_disconnect_detection() {
    let addr = start_default();
    let t = Instant::now();
    let r = post(addr, &fault_req("hang"));
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.json()["object"], "chat.completion");

    // A client that gives up while the request hangs is noticed.
    let addr = start(r#"{"models":{"m1":{"hang_ms":60000}}}"#);
    let mut c = Client::connect(addr);
    c.send(
        "POST",
        "/v1/chat/completions",
        Some(&serde_json::to_vec(&fault_req("hang")).unwrap()),
        &[],
    );
    std::thread::sleep(Duration::from_millis(50));
    drop(c);
    assert!(wait_for(addr, |s| s["models"]["m1"]["cancelled"] == 1));
    let s = stats(addr);
    assert_eq!(s["models"]["m1"]["faults"]["hang"], 1);
    assert_eq!(s["models"]["m1"]["ok_responses"], 0);
}

fn wait_for(addr: SocketAddr, cond: impl Fn(&Value) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond(&stats(addr)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

const RATES_CONFIG: &str = r#"{
  "seed": 7,
  "models": {
    "flaky": {"failure_rates": {"status_500": 0.2, "status_503": 0.2, "status_429": 0.1, "garbage": 0.1}},
    "solid": {}
  }
}"#;

fn outcomes(addr: SocketAddr, model: &str) -> Vec<(u16, bool)> {
    let mut c = Client::connect(addr);
    (0..40)
        .map(|i| {
            let r = c.post_json("/v1/chat/completions", &chat(model, &format!("q{}", i % 3)));
            (r.status, serde_json::from_slice::<Value>(&r.body).is_ok())
        })
        .collect()
}

#[test]
fn failure_rates_are_deterministic() {
    let a = start(RATES_CONFIG);
    let b = start(RATES_CONFIG);
    let first = outcomes(a, "flaky");
    assert_eq!(
        first,
        outcomes(b, "flaky"),
        "same config, same sequence → same faults"
    );
    let count = |s: u16| first.iter().filter(|(st, _)| *st == s).count();
    assert!(count(500) > 0 && count(503) > 0 && count(429) > 0);
    let garbage = first.iter().filter(|(s, ok)| *s == 200 && !ok).count();
    let ok = first.iter().filter(|(s, ok)| *s == 200 && *ok).count();
    assert!(garbage > 0 && ok > 0, "{first:?}");
    let s = stats(a)["models"]["flaky"].clone();
    assert_eq!(s["requests"], 40);
    assert_eq!(s["ok_responses"], ok);
    assert_eq!(s["faults"]["status_500"], count(500));
    assert_eq!(s["faults"]["garbage"], garbage);
    // After a reset the per-model counter restarts, so the sequence repeats.
    Client::connect(a).request("POST", "/sim/reset", None);
    assert_eq!(outcomes(a, "flaky"), first);
    // No rates, no faults; a directive can still force (or suppress) one.
    assert!(outcomes(a, "solid").iter().all(|o| *o == (200, true)));
    let mut c = Client::connect(a);
    for _ in 0..10 {
        let r = c.post_json("/v1/chat/completions", &chat("flaky", "[sim:fault=none]"));
        assert_eq!(r.status, 200);
    }
}
