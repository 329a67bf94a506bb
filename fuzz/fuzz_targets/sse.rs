//! The final call's SSE stream on its way to the client: `StreamRewriter` fed the upstream body
//! split at fuzzer-chosen points (see `looper_fuzz::chunked`; bit 3 of the first byte says
//! whether the client asked for usage), then finished. The output must not depend on the
//! split, must be well-formed SSE of the gateway's own chunks ending in exactly one
//! `[DONE]`, and must carry an error event exactly when the upstream's stream was not whole.
//! `sse::split_utf8` gets the payload as text, with a piece size from the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use looper::openai::sse::split_utf8;
use looper::openai::stream_rewrite::MAX_LINE_BYTES;
use looper::openai::{StreamRewriter, Usage};
use serde_json::Value;

const ID: &str = "chatcmpl-gw";
const MODEL: &str = "v/auto";

fn rewriter(wants_usage: bool) -> StreamRewriter {
    let earlier = Usage {
        prompt_tokens: 3,
        completion_tokens: 4,
        total_tokens: 7,
        ..Usage::default()
    };
    StreamRewriter::new(ID.into(), MODEL.into(), 9, earlier, wants_usage)
}

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    let wants_usage = flags & 0x08 != 0;
    let (payload, chunks) = looper_fuzz::chunked(data);

    let mut split = rewriter(wants_usage);
    let mut out = Vec::new();
    for chunk in &chunks {
        out.extend(split.feed(chunk));
    }
    out.extend(split.finish());
    // Later calls change nothing.
    assert!(split.feed(b"data: [DONE]\n\n").is_empty());
    assert!(split.finish().is_empty());

    if payload.len() <= MAX_LINE_BYTES {
        let mut whole = rewriter(wants_usage);
        let mut expected = whole.feed(payload);
        expected.extend(whole.finish());
        assert_eq!(out, expected, "the output depends on the split");
        assert_eq!(whole.is_complete(), split.is_complete());
        assert_eq!(whole.upstream_usage(), split.upstream_usage());
    }

    let Ok(text) = std::str::from_utf8(&out) else {
        panic!("the rewritten stream is not UTF-8");
    };
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    let mut done = 0;
    let mut errors = 0;
    for line in text.split('\n') {
        if line.is_empty() {
            continue;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            panic!("not a data line: {line:?}");
        };
        if data == "[DONE]" {
            done += 1;
            continue;
        }
        let Ok(Value::Object(event)) = serde_json::from_str::<Value>(data) else {
            panic!("not a JSON object: {data:?}");
        };
        if event.contains_key("error") {
            errors += 1;
            continue;
        }
        assert_eq!(event.get("id").and_then(Value::as_str), Some(ID));
        assert_eq!(event.get("model").and_then(Value::as_str), Some(MODEL));
        assert_eq!(
            event.get("object").and_then(Value::as_str),
            Some("chat.completion.chunk")
        );
        if !wants_usage {
            assert!(event.get("usage").is_none(), "{data}");
        }
    }
    assert_eq!(done, 1, "{text:?}");
    assert_eq!(errors, usize::from(!split.is_complete()), "{text:?}");

    let max = usize::from(flags >> 4);
    let text = String::from_utf8_lossy(payload);
    let pieces = split_utf8(&text, max);
    assert_eq!(pieces.concat(), text);
    for piece in &pieces {
        assert!(!piece.is_empty());
        assert!(
            piece.len() <= max || piece.chars().count() == 1,
            "{piece:?} > {max}"
        );
    }
});
