//! Wire dialects (`dialect`: `openai`, llama.cpp's `llama_cpp`) and the
//! `context_tokens` limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use looper_sim::completion::{generate, ChatRequest, Completion, GenParams};
use looper_sim::directives::Directives;
use looper_sim::questions::ErrorModel;
use looper_sim::{Dialect, ModelConfig};
use serde_json::{json, Value};

const CONFIG: &str = r#"{
  "seed": 42,
  "models": {
    "oa": {"answer_words": 4, "context_tokens": 20},
    "ll": {"answer_words": 4, "dialect": "llama_cpp", "context_tokens": 20},
    "ll-nolp": {"answer_words": 4, "dialect": "llama_cpp", "logprobs": false},
    "ll-free": {"answer_words": 4, "dialect": "llama_cpp"}
  }
}"#;

/// What the simulator sent before dialects existed, for a fixed id and
/// `created`: a stream with logprobs and usage, then a `max_tokens` cut.
const OPENAI_GOLDEN: &str = r##"{"choices":[{"finish_reason":"stop","index":0,"logprobs":{"content":[{"bytes":[91,109,93],"logprob":-0.471756,"token":"[m]","top_logprobs":[{"bytes":[215,169,215,156,215,149,215,157],"logprob":-1.671063,"token":"שלום"},{"bytes":[240,159,153,130],"logprob":-2.36421,"token":"🙂"}]},{"bytes":[32,240,159,154,128],"logprob":-0.629642,"token":" 🚀","top_logprobs":[{"bytes":[32,206,148,101,108,116,97],"logprob":-1.454108,"token":" Δelta"},{"bytes":[32,207,128,207,129,207,142,207,132,206,191],"logprob":-2.147255,"token":" πρώτο"}]},{"bytes":[32,98,101,116,97],"logprob":-0.196556,"token":" beta","top_logprobs":[{"bytes":[32,107,97,112,112,97],"logprob":-2.416624,"token":" kappa"},{"bytes":[32,108,97,109,98,100,97],"logprob":-3.109771,"token":" lambda"}]}],"refusal":null},"message":{"content":"[m] 🚀 beta","role":"assistant"}}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion","usage":{"completion_tokens":3,"prompt_tokens":5,"total_tokens":8}}
{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk","usage":null}
{"choices":[{"delta":{"content":"[m]"},"finish_reason":null,"index":0,"logprobs":{"content":[{"bytes":[91,109,93],"logprob":-0.471756,"token":"[m]","top_logprobs":[{"bytes":[215,169,215,156,215,149,215,157],"logprob":-1.671063,"token":"שלום"},{"bytes":[240,159,153,130],"logprob":-2.36421,"token":"🙂"}]}],"refusal":null}}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk","usage":null}
{"choices":[{"delta":{"content":" 🚀"},"finish_reason":null,"index":0,"logprobs":{"content":[{"bytes":[32,240,159,154,128],"logprob":-0.629642,"token":" 🚀","top_logprobs":[{"bytes":[32,206,148,101,108,116,97],"logprob":-1.454108,"token":" Δelta"},{"bytes":[32,207,128,207,129,207,142,207,132,206,191],"logprob":-2.147255,"token":" πρώτο"}]}],"refusal":null}}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk","usage":null}
{"choices":[{"delta":{"content":" beta"},"finish_reason":null,"index":0,"logprobs":{"content":[{"bytes":[32,98,101,116,97],"logprob":-0.196556,"token":" beta","top_logprobs":[{"bytes":[32,107,97,112,112,97],"logprob":-2.416624,"token":" kappa"},{"bytes":[32,108,97,109,98,100,97],"logprob":-3.109771,"token":" lambda"}]}],"refusal":null}}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk","usage":null}
{"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk","usage":null}
{"choices":[],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk","usage":{"completion_tokens":3,"prompt_tokens":5,"total_tokens":8}}
[DONE]
{"choices":[{"finish_reason":"length","index":0,"logprobs":null,"message":{"content":"[m] 🚀","role":"assistant"}}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion","usage":{"completion_tokens":2,"prompt_tokens":5,"total_tokens":7}}
{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk"}
{"choices":[{"delta":{"content":"[m]"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk"}
{"choices":[{"delta":{"content":" 🚀"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk"}
{"choices":[{"delta":{},"finish_reason":"length","index":0,"logprobs":null}],"created":1,"id":"chatcmpl-golden","model":"m","object":"chat.completion.chunk"}
[DONE]
"##;

fn render(mc: &ModelConfig, bodies: &[&str]) -> String {
    let mut out = String::new();
    for body in bodies {
        let c = completion(mc, body);
        out.push_str(&String::from_utf8(c.to_json_body()).unwrap());
        out.push('\n');
        for e in c.to_sse_events() {
            out.push_str(&String::from_utf8(e.data).unwrap());
            out.push('\n');
        }
    }
    out
}

fn completion(mc: &ModelConfig, body: &str) -> Completion {
    let req = ChatRequest::parse(body.as_bytes()).unwrap();
    let d = Directives::default();
    let p = GenParams {
        seed: 7,
        model: mc,
        directives: &d,
        fault: None,
        id: "chatcmpl-golden".into(),
        created: 1,
        question: None,
        quality: mc.quality.clone(),
        errors: ErrorModel::default(),
    };
    generate(&req, &p)
}

const GOLDEN_REQUESTS: [&str; 2] = [
    r#"{"model":"m","messages":[{"role":"user","content":"hi there"}],"logprobs":true,"top_logprobs":2,"stream":true,"stream_options":{"include_usage":true}}"#,
    r#"{"model":"m","messages":[{"role":"user","content":"hi there"}],"max_tokens":2}"#,
];

#[test]
fn default_dialect_is_unchanged_byte_for_byte() {
    let mc = ModelConfig {
        answer_words: 2,
        ..ModelConfig::default()
    };
    assert_eq!(mc.dialect, Dialect::OpenAi);
    assert_eq!(render(&mc, &GOLDEN_REQUESTS), OPENAI_GOLDEN);
    // A context limit that is not exceeded changes nothing either.
    let limited = ModelConfig {
        context_tokens: Some(5),
        ..mc.clone()
    };
    assert_eq!(render(&limited, &GOLDEN_REQUESTS), OPENAI_GOLDEN);
    // Nor does an explicit `"dialect": "openai"`, over HTTP.
    let implicit = start(r#"{"models": {"oa": {"answer_words": 4}}}"#);
    let explicit = start(r#"{"models": {"oa": {"answer_words": 4, "dialect": "openai"}}}"#);
    let mut req = chat("oa", "hello world");
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(2);
    let mut a = post(implicit, &req).json();
    let mut b = post(explicit, &req).json();
    for v in [&mut a, &mut b] {
        v["created"] = json!(0);
    }
    assert_eq!(a, b);
    let mut stream = req.clone();
    stream["stream"] = json!(true);
    let (sa, sb) = (post(implicit, &stream), post(explicit, &stream));
    let first = |r: &Resp| parse_sse(&r.body).events[0]["choices"][0]["delta"].clone();
    assert_eq!(first(&sa), json!({"role": "assistant", "content": ""}));
    assert_eq!(first(&sb), first(&sa));
    for key in ["system_fingerprint", "timings"] {
        assert!(a.get(key).is_none(), "{key}");
    }
    assert!(a["usage"].get("prompt_tokens_details").is_none());
    assert!(a["choices"][0]["logprobs"]["content"][0]
        .get("id")
        .is_none());
}

#[test]
fn llama_cpp_body_has_fingerprint_timings_and_cached_tokens() {
    let addr = start(CONFIG);
    let r = post(addr, &chat("ll", "two plus two"));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["system_fingerprint"], "b0-unknown");
    let text = content(&v, 0);
    assert!(text.starts_with("[ll] "), "{text}");
    assert_eq!(text.split(' ').count(), 5);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // 5 text tokens and the end-of-sequence token.
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(
        v["timings"],
        json!({"cache_n": 0, "prompt_n": 6, "prompt_ms": 1.0, "prompt_per_token_ms": 1.0,
               "prompt_per_second": 1000.0, "predicted_n": 6, "predicted_ms": 1.0,
               "predicted_per_token_ms": 1.0, "predicted_per_second": 1000.0})
    );
    // Floats stay floats on the wire.
    let raw = r.text();
    assert!(raw.contains(r#""prompt_ms":1.0"#), "{raw}");
    assert!(raw.contains(r#""predicted_per_second":1000.0"#), "{raw}");
    // The OpenAI fields are all there, and the choice is shaped as usual.
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "choices",
            "created",
            "id",
            "model",
            "object",
            "system_fingerprint",
            "timings",
            "usage"
        ]
    );
    let oa = post(addr, &chat("oa", "two plus two")).json();
    assert_eq!(oa["usage"]["completion_tokens"], 5);
    let choice_keys = |v: &Value| -> Vec<String> {
        v["choices"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(choice_keys(&v), choice_keys(&oa));
}

fn ids_of(e: &Value) -> u64 {
    e["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer id in {e}"))
}

#[test]
fn llama_cpp_logprobs_have_ids_and_an_eos_entry() {
    let addr = start(CONFIG);
    let mut req = chat("ll", "confidence please");
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(3);
    let v = post(addr, &req).json();
    let text = content(&v, 0);
    let toks = split_tokens(&text);
    let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(entries.len(), toks.len() + 1);
    for (e, t) in entries.iter().zip(&toks) {
        assert_eq!(e["token"], t.as_str());
        let id = ids_of(e);
        assert!((3..49152).contains(&id), "{id}");
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        for a in top {
            assert_ne!(ids_of(a), 2);
        }
    }
    // The same token always has the same id.
    let again = post(addr, &req).json();
    assert_eq!(again["choices"][0]["logprobs"], v["choices"][0]["logprobs"]);
    // The end-of-sequence entry: not in the content, counted in usage.
    let eos = entries.last().unwrap();
    assert_eq!(eos["id"], 2);
    assert_eq!(eos["token"], "");
    assert_eq!(eos["bytes"], json!([]));
    let lp = eos["logprob"].as_f64().unwrap();
    assert!(lp <= 0.0);
    let top = eos["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(
        top[0],
        json!({"id": 2, "token": "", "bytes": [], "logprob": lp})
    );
    assert_eq!(top[1]["token"], "\n");
    assert_eq!(top[1]["bytes"], json!([10]));
    let mut prev = lp;
    for a in &top[1..] {
        let alp = a["logprob"].as_f64().unwrap();
        assert!(alp < prev, "{alp} !< {prev}");
        prev = alp;
        ids_of(a);
    }
    assert!(!text.ends_with(' '));
    assert_eq!(v["usage"]["completion_tokens"], toks.len() + 1);
    assert_eq!(v["timings"]["predicted_n"], toks.len() + 1);
    // top_logprobs 0: still the EOS entry, with an empty list.
    req["top_logprobs"] = json!(0);
    let v0 = post(addr, &req).json();
    let e0 = v0["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(e0.len(), toks.len() + 1);
    assert_eq!(e0.last().unwrap()["top_logprobs"], json!([]));
    assert_eq!(e0.last().unwrap()["logprob"], eos["logprob"]);
    // A model without logprobs: none, but the EOS still counts.
    let mut nolp = chat("ll-nolp", "x");
    nolp["logprobs"] = json!(true);
    let v = post(addr, &nolp).json();
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert_eq!(v["usage"]["completion_tokens"], 6);
}

#[test]
fn llama_cpp_max_tokens_and_eos() {
    let addr = start(CONFIG);
    // 5 text tokens: the EOS needs a sixth.
    for (max, finish, completion, entries) in [
        (3, "length", 3, 3),
        (5, "length", 5, 5),
        (6, "stop", 6, 6),
        (100, "stop", 6, 6),
    ] {
        let mut req = chat("ll", "count me");
        req["max_tokens"] = json!(max);
        req["logprobs"] = json!(true);
        req["top_logprobs"] = json!(1);
        let v = post(addr, &req).json();
        assert_eq!(v["choices"][0]["finish_reason"], finish, "max {max}");
        assert_eq!(v["usage"]["completion_tokens"], completion, "max {max}");
        let e = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(e.len(), entries, "max {max}");
        assert_eq!(e.last().unwrap()["token"] == "", finish == "stop");
        assert_eq!(split_tokens(&content(&v, 0)).len(), max.min(5));
    }
    // n > 1 and a forced usage.
    let mut req = chat("ll", "three of them");
    req["n"] = json!(3);
    assert_eq!(post(addr, &req).json()["usage"]["completion_tokens"], 18);
    let v = post(addr, &chat("ll", "[sim:usage=7,9] x")).json();
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert_eq!(v["timings"]["prompt_n"], 7);
    assert_eq!(v["timings"]["predicted_n"], 9);
}

#[test]
fn llama_cpp_stats_equal_the_reported_usage() {
    let addr = start(CONFIG);
    let mut sent = (0u64, 0u64);
    let mut add = |u: &Value| {
        sent.0 += u["prompt_tokens"].as_u64().unwrap();
        sent.1 += u["completion_tokens"].as_u64().unwrap();
    };
    for (i, max) in [None, Some(2), Some(5), Some(6)].into_iter().enumerate() {
        let mut req = chat("ll-free", &format!("request {i}"));
        if let Some(m) = max {
            req["max_tokens"] = json!(m);
        }
        add(&post(addr, &req).json()["usage"]);
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
        let sse = parse_sse(&post(addr, &req).body);
        add(&sse.events.last().unwrap()["usage"]);
    }
    let s = stats(addr);
    let m = &s["models"]["ll-free"];
    assert_eq!(m["prompt_tokens"], sent.0);
    assert_eq!(m["completion_tokens"], sent.1);
    assert_eq!(m["ok_responses"], 8);
    assert_eq!(m["context_overflows"], 0);
}

#[test]
fn llama_cpp_stream_chunks() {
    let addr = start(CONFIG);
    let mut req = chat("ll", "stream it");
    req["stream"] = json!(true);
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(2);
    let plain = post(addr, &chat("ll", "stream it")).json();
    for include_usage in [true, false] {
        req["stream_options"] = json!({"include_usage": include_usage});
        let r = post(addr, &req);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let sse = parse_sse(&r.body);
        assert!(sse.done);
        let ev = &sse.events;
        for e in ev {
            assert_eq!(e["system_fingerprint"], "b0-unknown", "{e}");
            assert_eq!(e["object"], "chat.completion.chunk");
        }
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": null})
        );
        // One chunk per text token, with ids in its logprobs; no EOS chunk.
        let toks = split_tokens(&content(&plain, 0));
        let body: Vec<&Value> = ev[1..=toks.len()].iter().collect();
        let mut streamed = String::new();
        for (e, t) in body.iter().zip(&toks) {
            assert_eq!(e["choices"][0]["delta"]["content"], t.as_str());
            let lp = &e["choices"][0]["logprobs"]["content"][0];
            assert_eq!(lp["token"], t.as_str());
            ids_of(lp);
            ids_of(&lp["top_logprobs"][0]);
            streamed.push_str(t);
            assert!(e.get("timings").is_none());
        }
        assert_eq!(streamed, content(&plain, 0));
        let fin = &ev[toks.len() + 1];
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        assert_eq!(fin["choices"][0]["delta"], json!({}));
        let usage = json!({"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11,
                           "prompt_tokens_details": {"cached_tokens": 0}});
        let last = if include_usage {
            assert_eq!(ev.len(), toks.len() + 3);
            assert!(fin.get("timings").is_none());
            let u = &ev[toks.len() + 2];
            assert_eq!(u["choices"], json!([]));
            assert_eq!(u["usage"], usage);
            // Usage is the same as without streaming.
            assert_eq!(u["usage"], plain["usage"]);
            u
        } else {
            assert_eq!(ev.len(), toks.len() + 2);
            assert!(fin.get("usage").is_none());
            fin
        };
        assert_eq!(last["timings"]["prompt_n"], 5);
        assert_eq!(last["timings"]["predicted_n"], 6);
        assert_eq!(last["timings"], plain["timings"]);
        assert_eq!(ev.iter().filter(|e| e.get("timings").is_some()).count(), 1);
    }
    // n = 2 without usage: the timings are on the last finish chunk only.
    req["n"] = json!(2);
    req["stream_options"] = json!({"include_usage": false});
    let sse = parse_sse(&post(addr, &req).body);
    let with: Vec<&Value> = sse
        .events
        .iter()
        .filter(|e| e.get("timings").is_some())
        .collect();
    assert_eq!(with.len(), 1);
    assert_eq!(with[0]["choices"][0]["index"], 1);
    assert_eq!(with[0]["choices"][0]["finish_reason"], "stop");
    assert_eq!(with[0]["timings"]["predicted_n"], 12);
}

#[test]
fn llama_cpp_errors_have_integer_codes() {
    let addr = start(CONFIG);
    let mut req = chat("ll", "x");
    req["n"] = json!(0);
    let r = post(addr, &req);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {"code": 400, "message": "`n` must be at least 1",
                         "type": "invalid_request_error"}})
    );
    // The same request for an OpenAI model: string-or-null code and param.
    req["model"] = json!("oa");
    let e = post(addr, &req).json();
    assert_eq!(e["error"]["param"], "n");
    assert_eq!(e["error"]["code"], Value::Null);
    // Other validation errors of a llama.cpp model.
    for bad in [
        json!({"model": "ll", "messages": []}),
        json!({"model": "ll", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
        json!({"model": "ll", "messages": [{"role": "user", "content": "[sim:bogus=1]"}]}),
    ] {
        let r = post(addr, &bad);
        assert_eq!(r.status, 400);
        let e = r.json();
        let obj = e["error"].as_object().unwrap();
        assert_eq!(obj.len(), 3, "{e}");
        assert_eq!(e["error"]["code"], 400);
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["message"].is_string());
    }
    // Simulated status faults too.
    let r = post(addr, &chat("ll", "[sim:fault=503] x"));
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], 503);
    // An unknown model has no dialect: the default shape.
    let r = post(addr, &chat("nope", "x"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
}

#[test]
fn context_overflow_in_both_dialects() {
    let addr = start(CONFIG);
    // 17 words + 3 = 20 prompt tokens: fits exactly.
    let fits = vec!["w"; 17].join(" ");
    let over = vec!["w"; 18].join(" ");
    for model in ["oa", "ll"] {
        let r = post(addr, &chat(model, &fits));
        assert_eq!(r.status, 200, "{model}");
        assert_eq!(r.json()["usage"]["prompt_tokens"], 20);
    }
    let before = stats(addr);
    for stream in [false, true] {
        let mut req = chat("ll", &over);
        req["stream"] = json!(stream);
        req["stream_options"] = json!({"include_usage": true});
        let r = post(addr, &req);
        assert_eq!(r.status, 400);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.json(),
            json!({"error": {"code": 400,
                "message": "request (21 tokens) exceeds the available context size (20 tokens), try increasing it",
                "type": "exceed_context_size_error", "n_prompt_tokens": 21, "n_ctx": 20}})
        );
        req["model"] = json!("oa");
        let r = post(addr, &req);
        assert_eq!(r.status, 400);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.json(),
            json!({"error": {
                "message": "This model's maximum context length is 20 tokens. However, your messages resulted in 21 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error", "param": "messages",
                "code": "context_length_exceeded"}})
        );
    }
    // Faults and latency never apply: the limit is checked first.
    let r = post(
        addr,
        &chat("ll", &format!("[sim:fault=500] [sim:latency=5000] {over}")),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["n_prompt_tokens"], 23);
    // Prompt tokens count every message, as for usage.
    // 8 + 7 words + 2 * 3 = 21.
    let (system, user) = (["s"; 8].join(" "), ["u"; 7].join(" "));
    let two = json!({"model": "oa", "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": user}]});
    assert_eq!(post(addr, &two).status, 400);
    // A model without a limit takes any prompt.
    assert_eq!(
        post(addr, &chat("ll-free", &vec!["w"; 5000].join(" "))).status,
        200
    );

    let after = stats(addr);
    for (model, n) in [("oa", 3), ("ll", 3)] {
        let (b, a) = (&before["models"][model], &after["models"][model]);
        assert_eq!(a["context_overflows"], n, "{model}");
        // Routed to the model, but nothing served.
        assert_eq!(
            a["requests"].as_u64().unwrap() - b["requests"].as_u64().unwrap(),
            n
        );
        for k in [
            "ok_responses",
            "prompt_tokens",
            "completion_tokens",
            "cancelled",
        ] {
            assert_eq!(a[k], b[k], "{model} {k}");
        }
        assert_eq!(a["faults"], b["faults"], "{model}");
    }
    assert_eq!(after["totals"]["context_overflows"], 6);
    assert_eq!(after["totals"]["rejected"], 0);
    assert_eq!(after["models"]["ll-free"]["context_overflows"], 0);
    // The usage log counts the requests with no tokens.
    let usage = get(addr, "/sim/usage").json();
    assert_eq!(
        usage["untagged"]["prompt_tokens"],
        after["totals"]["prompt_tokens"]
    );
    // A reset zeroes the counter.
    Client::connect(addr).request("POST", "/sim/reset", None);
    assert_eq!(stats(addr)["totals"]["context_overflows"], 0);
}
