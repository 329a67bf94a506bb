//! The client's request: `ChatRequest::parse`, then the sub-call bodies derived from it (plain,
//! and the way the looper builds them: instructed messages spliced in raw, sampling fields set,
//! client-only fields removed). A sub-call body of a valid request is itself a valid request
//! for the upstream model, with streaming off.
#![no_main]

use libfuzzer_sys::fuzz_target;
use looper::openai::{ChatRequest, Edit};
use serde_json::{json, Value};

fn check_sub_call(request: &ChatRequest, body: &[u8]) {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => panic!(
            "a sub-call body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        ),
    };
    assert_eq!(value.get("model"), Some(&json!("up")));
    assert!(value.get("stream_options").is_none());
    assert!(matches!(
        value.get("stream"),
        None | Some(Value::Bool(false))
    ));
    let again = match ChatRequest::parse(body) {
        Ok(r) => r,
        Err(e) => panic!(
            "a sub-call body is refused: {}",
            String::from_utf8_lossy(&e.to_json())
        ),
    };
    assert_eq!(again.model(), "up");
    assert!(!again.stream());
    assert_eq!(again.n(), request.n());
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ChatRequest::parse(data) else {
        return;
    };
    assert!(!request.model().is_empty());
    assert!((1..=looper::openai::request::MAX_N).contains(&request.n()));
    assert_eq!(request.body_len(), data.len());

    check_sub_call(&request, &request.upstream_body("up", &[]));

    let messages = request.field("messages").cloned().unwrap_or(Value::Null);
    let instructed = looper::prompt::with_instruction(&messages, Some("Finish with `ANSWER: X`."));
    let Ok(raw) = serde_json::value::to_raw_value(&instructed) else {
        panic!("instructed messages do not serialise");
    };
    let temperature = json!(0.2);
    let edits = [
        ("messages", Edit::Raw(&raw)),
        ("max_tokens", Edit::Remove),
        ("tools", Edit::Remove),
        ("temperature", Edit::Set(&temperature)),
    ];
    check_sub_call(&request, &request.upstream_body("up", &edits));
});
