//! An upstream's reply to a sub-call. The first byte picks the HTTP status, the rest is the
//! body: `interpret` (through `parse_completion` and `usage_in`), then for a usable completion
//! the client's reply built from it, as JSON and as SSE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use looper::looper::call::{interpret, CallOutcome, CallResult};
use looper::openai::upstream::{parse_completion, usage_in};
use looper::openai::{sse, FinalCompletion, Usage};
use serde_json::Value;

const STATUSES: [u16; 8] = [200, 201, 299, 504, 503, 500, 429, 400];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES
        .get(usize::from(selector % 8))
        .copied()
        .unwrap_or(200);

    let parsed = parse_completion(body);
    let usage = usage_in(body);
    // Both read the same top-level `usage`, valid body or not.
    match &parsed {
        Ok(c) => assert_eq!(c.usage, usage),
        Err(e) => assert_eq!(e.usage, usage),
    }

    let outcome = interpret(CallResult::Response {
        status,
        body: body.to_vec(),
    });
    assert_eq!(outcome.usage(), usage.as_ref());
    let ok = (200..300).contains(&status);
    assert_eq!(matches!(outcome, CallOutcome::Ok(_)), ok && parsed.is_ok());
    let _ = outcome.name();
    let _ = outcome.status();

    let CallOutcome::Ok(completion) = outcome else {
        return;
    };
    assert!(!completion.choices().is_empty());
    let _ = completion.content();
    let _ = completion.finish_reason();

    let earlier = Usage {
        prompt_tokens: u64::from(selector),
        completion_tokens: 1,
        total_tokens: u64::from(selector) + 1,
        ..Usage::default()
    };
    let mut total = earlier;
    total.add(&usage.unwrap_or_default());
    let mut reply =
        FinalCompletion::from_upstream(completion, "chatcmpl-fuzz".into(), 1, "v/m".into(), total);
    if selector & 0x80 != 0 {
        reply.clear_logprobs();
    }
    let json = reply.to_json(None);
    let value: Value = match serde_json::from_slice(&json) {
        Ok(v) => v,
        Err(e) => panic!("the reply is not JSON: {e}"),
    };
    assert_eq!(value.get("model").and_then(Value::as_str), Some("v/m"));

    let stream = sse::encode(&reply, selector & 0x40 != 0, None);
    let Ok(text) = std::str::from_utf8(&stream) else {
        panic!("the SSE reply is not UTF-8");
    };
    assert!(text.ends_with("data: [DONE]\n\n"));
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let Some(data) = event.strip_prefix("data: ") else {
            panic!("not a data event: {event:?}");
        };
        if data != "[DONE]" {
            assert!(serde_json::from_str::<Value>(data).is_ok(), "{data}");
        }
    }
});
