//! Server-sent events for `stream: true`: a complete, valid OpenAI stream built from a final
//! completion. Content is split on UTF-8 character boundaries so no delta carries half a
//! character.

use super::completion::FinalCompletion;
use serde_json::{json, Map, Value};

/// Largest content delta in bytes.
pub const DELTA_BYTES: usize = 32;

/// Splits `text` into pieces of at most `max` bytes (more when one character is longer),
/// each on a character boundary, preferring to end a piece after a space so deltas look like
/// the word-sized tokens a model would stream.
pub fn split_utf8(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(text.len() / max.max(1) + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = max.min(rest.len());
        while end < rest.len() && !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end < rest.len() {
            if let Some(space) = rest.get(..end).and_then(|head| head.rfind(' ')) {
                if space > 0 {
                    end = space + 1;
                }
            }
        }
        if end == 0 {
            // A character longer than `max`: emit it whole.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

struct ChunkWriter<'a> {
    completion: &'a FinalCompletion,
    include_usage: bool,
    out: Vec<u8>,
}

impl ChunkWriter<'_> {
    fn event(&mut self, value: &Value) {
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(value.to_string().as_bytes());
        self.out.extend_from_slice(b"\n\n");
    }

    fn base(&self) -> Map<String, Value> {
        let mut chunk = Map::new();
        chunk.insert("id".into(), json!(self.completion.id));
        chunk.insert("object".into(), json!("chat.completion.chunk"));
        chunk.insert("created".into(), json!(self.completion.created));
        chunk.insert("model".into(), json!(self.completion.model));
        for (key, value) in &self.completion.extra {
            chunk.insert(key.clone(), value.clone());
        }
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        chunk
    }

    fn choice_chunk(&mut self, index: &Value, delta: Value, logprobs: Value, finish: Value) {
        let mut chunk = self.base();
        chunk.insert(
            "choices".into(),
            json!([{ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish }]),
        );
        self.event(&Value::Object(chunk));
    }

    fn choice(&mut self, position: usize, choice: &Value) {
        let index = choice.get("index").cloned().unwrap_or(json!(position));
        let message = choice.get("message");
        let field = |name: &str| message.and_then(|m| m.get(name)).filter(|v| !v.is_null());
        let role = field("role").cloned().unwrap_or(json!("assistant"));
        self.choice_chunk(
            &index,
            json!({"role": role, "content": ""}),
            Value::Null,
            Value::Null,
        );

        let mut logprobs = choice
            .get("logprobs")
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or(Value::Null);
        match field("content") {
            Some(Value::String(text)) => {
                for piece in split_utf8(text, DELTA_BYTES) {
                    // The whole logprobs object rides on the first delta; concatenating the
                    // deltas' `logprobs.content` gives back the full list.
                    let lp = std::mem::take(&mut logprobs);
                    self.choice_chunk(&index, json!({ "content": piece }), lp, Value::Null);
                }
            }
            Some(Value::Array(parts)) => {
                // Deltas carry text only: the text parts, joined.
                let text: String = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                let lp = std::mem::take(&mut logprobs);
                self.choice_chunk(&index, json!({ "content": text }), lp, Value::Null);
            }
            Some(_) => {}
            None => {}
        }
        if let Some(refusal) = field("refusal") {
            self.choice_chunk(
                &index,
                json!({ "refusal": refusal }),
                Value::Null,
                Value::Null,
            );
        }
        if let Some(Value::Array(calls)) = field("tool_calls") {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    if let Value::Object(obj) = &mut call {
                        obj.entry("index").or_insert(json!(i));
                    }
                    call
                })
                .collect();
            self.choice_chunk(
                &index,
                json!({ "tool_calls": calls }),
                Value::Null,
                Value::Null,
            );
        }
        if let Some(call) = field("function_call") {
            self.choice_chunk(
                &index,
                json!({ "function_call": call }),
                Value::Null,
                Value::Null,
            );
        }
        if !logprobs.is_null() {
            self.choice_chunk(&index, json!({}), logprobs, Value::Null);
        }
        // The upstream's own finish reason (`length` must survive), never a made-up one.
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        self.choice_chunk(&index, json!({}), Value::Null, finish);
    }
}

/// The whole SSE body: per choice a role chunk, content deltas, tool calls, a finish chunk;
/// then the usage chunk when asked; then `data: [DONE]`. A trace rides on a last chunk with
/// no choices, which clients treat like the usage chunk.
pub fn encode(completion: &FinalCompletion, include_usage: bool, trace: Option<Value>) -> Vec<u8> {
    let choices = completion.choices();
    let mut writer = ChunkWriter {
        completion,
        include_usage,
        out: Vec::with_capacity(256 + choices.len() * 512),
    };
    for (position, choice) in choices.iter().enumerate() {
        writer.choice(position, choice);
    }
    if include_usage || trace.is_some() {
        let mut chunk = writer.base();
        chunk.insert("choices".into(), json!([]));
        if include_usage {
            chunk.insert("usage".into(), completion.usage.to_json());
        }
        if let Some(trace) = trace {
            chunk.insert("looper_trace".into(), trace);
        }
        writer.event(&Value::Object(chunk));
    }
    writer.out.extend_from_slice(b"data: [DONE]\n\n");
    writer.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::usage::Usage;

    fn completion(choices: Vec<Value>) -> FinalCompletion {
        FinalCompletion::new(
            "chatcmpl-1".into(),
            5,
            "vllm-sr/auto".into(),
            choices,
            Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
                total_tokens: 5,
                ..Usage::default()
            },
            Map::new(),
        )
    }

    fn events(body: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap().to_string())
            .collect()
    }

    #[test]
    fn split_never_cuts_a_character() {
        let text = "naïve café 日本語 🙂 Ωmega".repeat(5);
        for max in 1..40 {
            let pieces = split_utf8(&text, max);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| !p.is_empty()));
            assert!(pieces.iter().all(|p| p.len() <= max.max(4)));
        }
        assert_eq!(split_utf8("ab cd ef", 5), vec!["ab ", "cd ef"]);
        assert!(split_utf8("", 4).is_empty());
    }

    #[test]
    fn stream_has_role_deltas_finish_usage_and_done() {
        let text = "Bonjour, ça va? 🙂 ".repeat(4);
        let c = completion(vec![json!({"index": 0, "message": {"role": "assistant",
            "content": text}, "finish_reason": "length"})]);
        let evs = events(&encode(&c, true, None));
        let chunks: Vec<Value> = evs[..evs.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, text);
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
        assert!(chunks[0]["usage"].is_null());
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        assert!(chunks.iter().all(|c| c["id"] == "chatcmpl-1"));
    }

    #[test]
    fn finish_reason_is_never_invented_and_part_content_becomes_text() {
        let c = completion(vec![json!({"index": 0, "message": {"content": [
            {"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]}})]);
        let evs = events(&encode(&c, false, None));
        let chunks: Vec<Value> = evs[..evs.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "ab");
        assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_null());
    }

    #[test]
    fn no_usage_chunk_unless_asked() {
        let c = completion(vec![json!({"index": 0, "message": {"content": "hi"},
            "finish_reason": "stop"})]);
        let evs = events(&encode(&c, false, None));
        assert!(evs.iter().all(|e| !e.contains("\"usage\"")));
        assert_eq!(evs.last().unwrap(), "[DONE]");
    }

    #[test]
    fn tool_calls_and_logprobs_survive() {
        let c = completion(vec![json!({"index": 0, "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]},
            "logprobs": {"content": []}, "finish_reason": "tool_calls"})]);
        let evs = events(&encode(&c, false, None));
        let joined = evs.join("\n");
        assert!(joined.contains("\"tool_calls\":[{"));
        assert!(
            joined.contains("\"index\":0,\"type\":\"function\"") || joined.contains("\"index\":0")
        );
        assert!(joined.contains("\"logprobs\":{\"content\":[]}"));
        assert!(joined.contains("\"finish_reason\":\"tool_calls\""));
    }
}
