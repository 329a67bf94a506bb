//! Chat completions, models, stats and directives over real HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

#[test]
fn completion_shape_usage_and_determinism() {
    let addr = start_default();
    let req = json!({
        "model": "m1",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is  two\nplus two?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": null}
        ],
        "temperature": 0.2,
        "some_future_field": {"x": 1}
    });
    let r = post(addr, &req);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-sim-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "m1");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert_eq!(choices[0]["finish_reason"], "stop");
    assert_eq!(choices[0]["logprobs"], Value::Null);
    let text = content(&v, 0);
    assert!(text.starts_with("[m1] "), "{text}");
    // The prefix word plus answer_words.
    assert_eq!(text.split(' ').count(), 13);
    // 3 + 5 words of text, plus 3 per message.
    assert_eq!(v["usage"]["prompt_tokens"], 8 + 9);
    assert_eq!(v["usage"]["completion_tokens"], 13);
    assert_eq!(v["usage"]["total_tokens"], 8 + 9 + 13);

    // Same request, same answer (even with keys in another order); new id.
    let again = post(
        addr,
        &serde_json::from_str::<Value>(&req.to_string()).unwrap(),
    )
    .json();
    assert_eq!(content(&again, 0), text);
    assert_ne!(again["id"], v["id"]);
    // Same request on another server process-state: still the same answer.
    let other_server = start_default();
    assert_eq!(content(&post(other_server, &req).json(), 0), text);
    // Another model: another answer; another prompt: another answer.
    let mut req2 = req.clone();
    req2["model"] = json!("m2");
    let v2 = post(addr, &req2).json();
    assert!(content(&v2, 0).starts_with("[m2] "));
    assert_eq!(v2["usage"]["completion_tokens"], 9);
    assert_ne!(
        content(&v2, 0).replace("[m2]", ""),
        text.replace("[m1]", "")
    );
    let v3 = post(addr, &chat("m1", "something else")).json();
    assert_ne!(content(&v3, 0), text);
}

#[test]
fn n_choices() {
    let addr = start_default();
    let mut req = chat("m1", "pick three");
    req["n"] = json!(3);
    let v = post(addr, &req).json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut texts = Vec::new();
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        texts.push(content(&v, i));
    }
    texts.dedup();
    assert_eq!(texts.len(), 3, "choices should differ");
    assert_eq!(v["usage"]["completion_tokens"], 3 * 13);
    for bad in [json!(0), json!(9), json!(-1), json!(1.5), json!("2")] {
        req["n"] = bad;
        let r = post(addr, &req);
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"]["param"], "n");
    }
}

#[test]
fn max_tokens_truncates_with_length() {
    let addr = start_default();
    let full = content(&post(addr, &chat("m1", "long answer")).json(), 0);
    for key in ["max_tokens", "max_completion_tokens"] {
        let mut req = chat("m1", "long answer");
        req[key] = json!(4);
        let v = post(addr, &req).json();
        let text = content(&v, 0);
        assert_eq!(split_tokens(&text), split_tokens(&full)[..4].to_vec());
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 4);
    }
    let mut req = chat("m1", "long answer");
    req["max_tokens"] = json!(13);
    let v = post(addr, &req).json();
    assert_eq!(content(&v, 0), full);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

fn check_logprob_entry(e: &Value, token: &str, top: usize) {
    assert_eq!(e["token"], token);
    let bytes: Vec<u8> = e["bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(bytes, token.as_bytes());
    let lp = e["logprob"].as_f64().unwrap();
    assert!(lp <= 0.0);
    let alts = e["top_logprobs"].as_array().unwrap();
    assert_eq!(alts.len(), top);
    let mut prev = lp;
    for a in alts {
        let alp = a["logprob"].as_f64().unwrap();
        assert!(
            alp < prev,
            "alternatives must be less likely: {alp} vs {prev}"
        );
        prev = alp;
        assert_ne!(a["token"], token);
        assert_eq!(
            a["bytes"].as_array().unwrap().len(),
            a["token"].as_str().unwrap().len()
        );
    }
}

#[test]
fn logprobs_and_top_logprobs() {
    let addr = start_default();
    let mut req = chat("m1", "confidence please");
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(3);
    let v = post(addr, &req).json();
    let text = content(&v, 0);
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["refusal"], Value::Null);
    let entries = lp["content"].as_array().unwrap();
    let toks = split_tokens(&text);
    assert_eq!(entries.len(), toks.len());
    for (e, t) in entries.iter().zip(&toks) {
        check_logprob_entry(e, t, 3);
    }
    // Mean logprob roughly follows the config (-0.3): loose bound.
    let mut many = chat("m1", "average me");
    many["logprobs"] = json!(true);
    many["n"] = json!(8);
    let v = post(addr, &many).json();
    let all: Vec<f64> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["logprobs"]["content"].as_array().unwrap().clone())
        .map(|e| e["logprob"].as_f64().unwrap())
        .collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    assert!((-0.6..-0.1).contains(&mean), "mean logprob {mean}");

    // Logprobs of a token do not depend on top_logprobs.
    req["top_logprobs"] = json!(0);
    let v0 = post(addr, &req).json();
    let e0 = &v0["choices"][0]["logprobs"]["content"];
    assert_eq!(e0[2]["logprob"], entries[2]["logprob"]);
    assert_eq!(e0[2]["top_logprobs"], json!([]));
    // Not asked / not supported → null.
    assert_eq!(
        post(addr, &chat("m1", "x")).json()["choices"][0]["logprobs"],
        Value::Null
    );
    let mut nolp = chat("nolp", "x");
    nolp["logprobs"] = json!(true);
    assert_eq!(
        post(addr, &nolp).json()["choices"][0]["logprobs"],
        Value::Null
    );
    // Out of range.
    req["top_logprobs"] = json!(21);
    assert_eq!(post(addr, &req).status, 400);
}

fn stream_req(text: &str, include_usage: Option<bool>) -> Value {
    let mut req = chat("m1", text);
    req["stream"] = json!(true);
    if let Some(u) = include_usage {
        req["stream_options"] = json!({"include_usage": u});
    }
    req
}

#[test]
fn streaming_matches_non_streaming() {
    let addr = start_default();
    let plain = post(addr, &chat("m1", "stream me")).json();
    let expected = content(&plain, 0);

    for include_usage in [None, Some(false), Some(true)] {
        let r = post(addr, &stream_req("stream me", include_usage));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let sse = parse_sse(&r.body);
        assert!(sse.done);
        let ev = &sse.events;
        let with_usage = include_usage == Some(true);
        let id = ev[0]["id"].clone();
        for e in ev {
            assert_eq!(e["object"], "chat.completion.chunk");
            assert_eq!(e["id"], id);
            assert_eq!(e["model"], "m1");
            assert_eq!(e.get("usage").is_some(), with_usage, "{e}");
        }
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(ev[0]["choices"][0]["finish_reason"], Value::Null);
        let n_tokens = split_tokens(&expected).len();
        let token_events = &ev[1..1 + n_tokens];
        let streamed: String = token_events
            .iter()
            .map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(streamed, expected);
        let fin = &ev[1 + n_tokens];
        assert_eq!(fin["choices"][0]["delta"], json!({}));
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        if with_usage {
            assert_eq!(ev.len(), n_tokens + 3);
            let last = &ev[n_tokens + 2];
            assert_eq!(last["choices"], json!([]));
            assert_eq!(last["usage"], plain["usage"]);
            for e in &ev[..n_tokens + 2] {
                assert_eq!(e["usage"], Value::Null);
            }
        } else {
            assert_eq!(ev.len(), n_tokens + 2);
        }
    }
}

#[test]
fn streaming_logprobs_n_and_max_tokens() {
    let addr = start_default();
    let mut req = stream_req("stream logprobs", Some(true));
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(2);
    req["n"] = json!(2);
    req["max_tokens"] = json!(5);
    let mut plain_req = req.clone();
    plain_req["stream"] = json!(false);
    let plain = post(addr, &plain_req).json();
    let sse = parse_sse(&post(addr, &req).body);
    assert!(sse.done);
    for i in 0..2 {
        let mine: Vec<&Value> = sse
            .events
            .iter()
            .filter(|e| {
                e["choices"]
                    .as_array()
                    .unwrap()
                    .first()
                    .is_some_and(|c| c["index"] == i)
            })
            .collect();
        let text: String = mine
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, content(&plain, i));
        let lps: Vec<Value> = mine
            .iter()
            .filter(|e| !e["choices"][0]["logprobs"].is_null())
            .map(|e| e["choices"][0]["logprobs"]["content"][0].clone())
            .collect();
        assert_eq!(json!(lps), plain["choices"][i]["logprobs"]["content"]);
        assert_eq!(
            mine.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
    }
    assert_eq!(sse.events.last().unwrap()["usage"], plain["usage"]);
}

#[test]
fn request_validation_errors() {
    let addr = start_default();
    let bad_bodies: Vec<(&[u8], Option<&str>)> = vec![
        (b"{not json", None),
        (b"[1,2]", None),
        (b"", None),
        (
            br#"{"messages":[{"role":"user","content":"x"}]}"#,
            Some("model"),
        ),
        (
            br#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#,
            Some("model"),
        ),
        (br#"{"model":"m1"}"#, Some("messages")),
        (br#"{"model":"m1","messages":[]}"#, Some("messages")),
        (br#"{"model":"m1","messages":{}}"#, Some("messages")),
        (br#"{"model":"m1","messages":["hi"]}"#, Some("messages")),
        (
            br#"{"model":"m1","messages":[{"content":"x"}]}"#,
            Some("messages"),
        ),
        (
            br#"{"model":"m1","messages":[{"role":"user","content":5}]}"#,
            Some("messages"),
        ),
        (
            br#"{"model":"m1","messages":[{"role":"user","content":[{"type":"text","text":1}]}]}"#,
            Some("messages"),
        ),
        (
            br#"{"model":"m1","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            Some("stream"),
        ),
        (
            br#"{"model":"m1","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            Some("max_tokens"),
        ),
        (
            br#"{"model":"m1","messages":[{"role":"user","content":"[sim:fault=bogus]"}]}"#,
            Some("messages"),
        ),
    ];
    for (body, param) in bad_bodies {
        let r = Client::connect(addr).request("POST", "/v1/chat/completions", Some(body));
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(
            e["param"].as_str(),
            param,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(e.get("code").is_some());
    }
    let r = post(addr, &chat("gpt-nope", "x"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_eq!(r.json()["error"]["param"], "model");
    // Rejected requests are counted, but not against a model.
    let s = stats(addr);
    assert_eq!(s["totals"]["rejected"], 16);
    assert_eq!(s["totals"]["requests"], 0);
}

#[test]
fn other_endpoints() {
    let addr = start_default();
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let models = get(addr, "/v1/models").json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["m1", "m2", "nolp"]);
    assert_eq!(
        models["data"][0],
        json!({"id": "m1", "object": "model", "created": 0, "owned_by": "looper-sim"})
    );
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
        ("POST", "/healthz"),
    ] {
        let r = Client::connect(addr).request(method, path, Some(b"{}"));
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    // Query strings are ignored for routing.
    assert_eq!(get(addr, "/healthz?probe=1").status, 200);
}

#[test]
fn stats_match_returned_usage_and_reset() {
    let addr = start_default();
    let mut prompt = 0;
    let mut completion = 0;
    let mut add = |u: &Value| {
        prompt += u["prompt_tokens"].as_u64().unwrap();
        completion += u["completion_tokens"].as_u64().unwrap();
    };
    let v = post(addr, &chat("m1", "one two three")).json();
    add(&v["usage"]);
    let mut req = chat("m1", "n two");
    req["n"] = json!(2);
    req["max_tokens"] = json!(3);
    add(&post(addr, &req).json()["usage"]);
    let sse = parse_sse(&post(addr, &stream_req("with usage", Some(true))).body);
    add(&sse.events.last().unwrap()["usage"]);
    // A stream without usage reports nothing, so counts nothing.
    post(addr, &stream_req("without usage", None));
    // Forced usage is counted as reported.
    let v = post(addr, &chat("m1", "[sim:usage=1000,7]")).json();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 1000, "completion_tokens": 7, "total_tokens": 1007})
    );
    add(&v["usage"]);
    // Faults: an error counts no tokens; a body with usage does.
    assert_eq!(post(addr, &chat("m1", "[sim:fault=503]")).status, 503);
    let v = post(addr, &chat("m1", "[sim:fault=empty_choices]")).json();
    add(&v["usage"]);
    // Another model.
    let v = post(addr, &chat("m2", "other")).json();

    let s = stats(addr);
    let m1 = &s["models"]["m1"];
    assert_eq!(m1["requests"], 7);
    assert_eq!(m1["ok_responses"], 5);
    assert_eq!(m1["prompt_tokens"], prompt);
    assert_eq!(m1["completion_tokens"], completion);
    assert_eq!(m1["faults"]["status_503"], 1);
    assert_eq!(m1["faults"]["empty_choices"], 1);
    assert_eq!(m1["faults"]["hang"], 0);
    assert_eq!(m1["cancelled"], 0);
    let m2 = &s["models"]["m2"];
    assert_eq!(m2["requests"], 1);
    assert_eq!(m2["prompt_tokens"], v["usage"]["prompt_tokens"]);
    assert_eq!(m2["completion_tokens"], v["usage"]["completion_tokens"]);
    assert_eq!(s["models"]["nolp"]["requests"], 0);
    let t = &s["totals"];
    assert_eq!(t["requests"], 8);
    assert_eq!(t["ok_responses"], 6);
    assert_eq!(
        t["prompt_tokens"],
        prompt + v["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(t["faults"]["status_503"], 1);
    assert_eq!(t["rejected"], 0);

    let r = Client::connect(addr).request("POST", "/sim/reset", None);
    assert_eq!(r.status, 200);
    let s = stats(addr);
    assert_eq!(s["totals"]["requests"], 0);
    assert_eq!(s["totals"]["prompt_tokens"], 0);
    assert_eq!(s["models"]["m1"]["faults"]["status_503"], 0);
    assert_eq!(s["models"]["m1"]["ok_responses"], 0);
}

#[test]
fn directives() {
    let addr = start_default();
    // Fixed answer (whitespace normalised), forced finish, forced usage.
    let v = post(
        addr,
        &chat(
            "m1",
            "[sim:answer=  Paris,  naïve 🙂 =x ] [sim:finish=length]",
        ),
    )
    .json();
    assert_eq!(content(&v, 0), "Paris, naïve 🙂 =x");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    // max_tokens applies to a fixed answer too.
    let mut req = chat("m1", "[sim:answer=a b c d]");
    req["max_tokens"] = json!(2);
    assert_eq!(content(&post(addr, &req).json(), 0), "a b");
    // Directives in text parts, scoped to a model: scoped beats unscoped.
    let req_for = |model: &str| {
        json!({"model": model, "messages": [
            {"role": "system", "content": "[sim:answer=generic]"},
            {"role": "user", "content": [{"type": "text", "text": "[sim:answer@m2=special] [sim:fault@nolp=500]"}]}
        ]})
    };
    assert_eq!(content(&post(addr, &req_for("m1")).json(), 0), "generic");
    assert_eq!(content(&post(addr, &req_for("m2")).json(), 0), "special");
    assert_eq!(post(addr, &req_for("nolp")).status, 500);
    // A scoped `none` overrides an unscoped fault.
    let text = "[sim:fault=502] [sim:fault@m2=none]";
    assert_eq!(post(addr, &chat("m1", text)).status, 502);
    assert_eq!(post(addr, &chat("m2", text)).status, 200);
    // Latency (sleeping is the behaviour under test).
    let t = Instant::now();
    assert_eq!(post(addr, &chat("m1", "[sim:latency=150]")).status, 200);
    assert!(t.elapsed().as_millis() >= 150);
}

#[test]
fn configured_latency_and_token_latency() {
    let addr = start(
        r#"{"models":{"slowpoke":{"latency_ms":100,"token_latency_ms":20,"answer_words":4}}}"#,
    );
    let t = Instant::now();
    assert_eq!(post(addr, &chat("slowpoke", "hi")).status, 200);
    assert!(t.elapsed().as_millis() >= 100);
    let mut req = chat("slowpoke", "hi");
    req["stream"] = json!(true);
    let t = Instant::now();
    let sse = parse_sse(&post(addr, &req).body);
    assert!(sse.done);
    // 100 ms latency + 5 tokens × 20 ms.
    assert!(t.elapsed().as_millis() >= 200);
}
