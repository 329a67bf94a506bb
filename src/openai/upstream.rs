//! Reading what an upstream model sent back. Upstream bodies are untrusted: anything that is
//! not a well-formed chat completion is an invalid response (the call failed), never a panic.

use super::object_key::KeyAmong;
use super::usage::Usage;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// A well-formed upstream `chat.completion`, kept as JSON so a `single` recipe can return the
/// upstream's choices (tool calls, logprobs, refusals) exactly as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamCompletion {
    /// The fields the gateway reads or carries over ([`KEPT_FIELDS`]);
    /// the others (`id`, `model`, provider extensions) are skipped while parsing, not built
    /// (only their syntax is checked: a skipped string is not checked to be UTF-8).
    pub body: Map<String, Value>,
    pub usage: Option<Usage>,
}

/// Why an upstream 2xx body could not be used; the usage it reported still counts.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidResponse {
    pub reason: &'static str,
    pub usage: Option<Usage>,
}

impl UpstreamCompletion {
    pub fn choices(&self) -> &[Value] {
        self.body
            .get("choices")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The text of the first choice, when it is a string.
    pub fn content(&self) -> Option<&str> {
        self.choices()
            .first()?
            .get("message")?
            .get("content")?
            .as_str()
    }

    pub fn finish_reason(&self) -> Option<&str> {
        self.choices().first()?.get("finish_reason")?.as_str()
    }
}

/// Parses a 2xx body into a completion.
pub fn parse_completion(bytes: &[u8]) -> Result<UpstreamCompletion, InvalidResponse> {
    let body = match serde_json::from_slice::<KeptFields>(bytes) {
        Ok(KeptFields(body)) => body,
        Err(err) if err.is_data() => {
            return Err(InvalidResponse {
                reason: "body is not a JSON object",
                usage: None,
            });
        }
        Err(_) => {
            // A body that is JSON but for invalid UTF-8 bytes in a string still reports the
            // tokens the upstream billed; the answer itself is not used.
            let reason = if std::str::from_utf8(bytes).is_err() {
                "body is not valid UTF-8"
            } else {
                "body is not valid JSON"
            };
            return Err(InvalidResponse {
                reason,
                usage: usage_in(bytes),
            });
        }
    };
    let usage = body.get("usage").and_then(Usage::from_json);
    let invalid = |reason| Err(InvalidResponse { reason, usage });
    let Some(Value::Array(choices)) = body.get("choices") else {
        return invalid("`choices` is missing");
    };
    if choices.is_empty() {
        return invalid("`choices` is empty");
    }
    for choice in choices {
        let Some(message) = choice.get("message").and_then(Value::as_object) else {
            return invalid("a choice has no `message` object");
        };
        if !matches!(
            message.get("content"),
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_))
        ) {
            return invalid("a message `content` is neither text nor null");
        }
        if !matches!(
            choice.get("finish_reason"),
            None | Some(Value::Null) | Some(Value::String(_))
        ) {
            return invalid("a `finish_reason` is not a string");
        }
    }
    Ok(UpstreamCompletion { body, usage })
}

/// The top-level fields of an answer the gateway reads or carries over (every one of
/// [`CARRIED_FIELDS`](super::completion::CARRIED_FIELDS) among them).
const KEPT_FIELDS: &[&str] = &["choices", "usage", "system_fingerprint", "service_tier"];

/// The top-level object of an upstream answer with only the fields the gateway uses; the
/// others must be well-formed JSON but are not built, nor their strings checked for UTF-8
/// (nothing of them reaches the client). A key sent twice keeps its last value, as a
/// parse into [`Value`] would.
struct KeptFields(Map<String, Value>);

impl<'de> Deserialize<'de> for KeptFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = KeptFields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeptFields, A::Error> {
                let mut kept = Map::new();
                while let Some(key) = map.next_key_seed(KeyAmong(KEPT_FIELDS))? {
                    match key {
                        Some(key) => {
                            kept.insert(key.to_string(), map.next_value::<Value>()?);
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(KeptFields(kept))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The usage reported in any JSON body (error replies of some providers include it).
/// Invalid UTF-8 is replaced first, so a billed usage survives a broken string elsewhere.
pub fn usage_in(bytes: &[u8]) -> Option<Usage> {
    let value: Value = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text).ok()?,
        Err(_) => serde_json::from_str(&String::from_utf8_lossy(bytes)).ok()?,
    };
    Usage::from_json(value.get("usage")?)
}

/// Whether an upstream error body says the prompt does not fit the model's context window.
/// Servers say it differently: OpenAI and Groq set `code: "context_length_exceeded"`,
/// llama.cpp's server `type: "exceed_context_size_error"`, vLLM only writes "maximum context
/// length" in a message (inside `error`, or at the top level in older versions).
pub fn is_context_overflow(bytes: &[u8]) -> bool {
    const PHRASES: &[&str] = &[
        "maximum context length",
        "context length exceeded",
        "exceeds the available context size",
        "exceeds the context window",
        "context_length_exceeded",
    ];
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    let error = match value.get("error") {
        Some(error @ Value::Object(_)) => error,
        _ => &value,
    };
    let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("");
    if text("code") == "context_length_exceeded" || text("type") == "exceed_context_size_error" {
        return true;
    }
    let message = text("message").to_ascii_lowercase();
    PHRASES.iter().any(|p| message.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completion(content: Value) -> Vec<u8> {
        json!({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn reads_content_finish_reason_and_usage() {
        let c = parse_completion(&completion(json!("hello"))).unwrap();
        assert_eq!(c.content(), Some("hello"));
        assert_eq!(c.finish_reason(), Some("length"));
        assert_eq!(c.usage.unwrap().total_tokens, 7);
    }

    #[test]
    fn a_body_with_invalid_utf8_is_invalid_but_keeps_its_usage() {
        let mut body = completion(json!("hello"));
        let at = body.windows(5).position(|w| w == b"hello").unwrap();
        body[at + 1] = 0xff;
        let err = parse_completion(&body).unwrap_err();
        assert_eq!(err.reason, "body is not valid UTF-8");
        assert_eq!(err.usage.unwrap().total_tokens, 7);
        assert_eq!(parse_completion(b"\xff{").unwrap_err().usage, None);
    }

    #[test]
    fn invalid_bodies_are_errors_that_keep_usage() {
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (b"not json".to_vec(), false),
            (b"{\"choices\": [".to_vec(), false),
            (b"\xff\xfe{}".to_vec(), false),
            (b"[1,2]".to_vec(), false),
            (json!({"unexpected": true}).to_string().into_bytes(), false),
            (
                json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}})
                    .to_string()
                    .into_bytes(),
                true,
            ),
            (json!({"choices": [1]}).to_string().into_bytes(), false),
            (completion(json!(5)), true),
        ];
        for (bytes, has_usage) in cases {
            let err = parse_completion(&bytes).unwrap_err();
            assert_eq!(
                err.usage.is_some(),
                has_usage,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn only_the_fields_the_gateway_uses_are_kept() {
        let body = json!({"id": "up-1", "object": "chat.completion", "model": "secret-model",
            "kv_transfer_params": {"a": [1, 2]}, "system_fingerprint": "fp", "service_tier": null,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}});
        let c = parse_completion(body.to_string().as_bytes()).unwrap();
        let mut keys: Vec<&str> = c.body.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["choices", "service_tier", "system_fingerprint", "usage"]
        );
        assert_eq!(c.content(), Some("hi"));
        assert_eq!(c.usage.unwrap().total_tokens, 3);
    }

    #[test]
    fn every_carried_field_is_kept() {
        for field in crate::openai::completion::CARRIED_FIELDS {
            assert!(KEPT_FIELDS.contains(field), "{field}");
        }
    }

    #[test]
    fn a_key_sent_twice_keeps_its_last_value_and_skipped_values_must_be_json() {
        let body = br#"{"choices": [], "choices": [{"message": {"content": "second"}}],
            "ch\u006fices": [{"message": {"content": "third"}}]}"#;
        assert_eq!(parse_completion(body).unwrap().content(), Some("third"));
        let err = parse_completion(br#"{"id": nope, "choices": []}"#).unwrap_err();
        assert_eq!(err.reason, "body is not valid JSON");
        // Invalid UTF-8 in a skipped field does not fail the call: nothing of it is used.
        let body = b"{\"id\": \"\xff\", \"choices\": [{\"message\": {\"content\": \"ok\"}}]}";
        assert_eq!(parse_completion(body).unwrap().content(), Some("ok"));
        for not_object in [&b"[1, 2]"[..], b"\"text\"", b"3"] {
            let err = parse_completion(not_object).unwrap_err();
            assert_eq!(err.reason, "body is not a JSON object");
        }
    }

    #[test]
    fn context_overflow_in_each_server_dialect() {
        // llama.cpp's server (as llama-server sends it, see integration/real).
        assert!(is_context_overflow(br#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3001,"n_ctx":2048}}"#));
        // OpenAI.
        assert!(is_context_overflow(br#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#));
        // vLLM, current and older (top-level) shapes.
        assert!(is_context_overflow(br#"{"error":{"message":"This model's maximum context length is 2048 tokens. However, you requested 3000 tokens.","type":"BadRequestError","param":null,"code":400}}"#));
        assert!(is_context_overflow(br#"{"object":"error","message":"This model's maximum context length is 2048 tokens.","type":"BadRequestError","code":400}"#));
        // Other 400s are not.
        assert!(!is_context_overflow(br#"{"error":{"message":"`temperature` must be a number","type":"invalid_request_error","code":400}}"#));
        assert!(!is_context_overflow(
            br#"{"error":"maximum context length"}"#
        ));
        assert!(!is_context_overflow(b"maximum context length"));
        assert!(!is_context_overflow(b""));
    }

    #[test]
    fn usage_in_error_bodies() {
        assert!(usage_in(b"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}").is_some());
        assert!(usage_in(b"oops").is_none());
    }
}
