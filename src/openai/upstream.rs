//! Reading what an upstream model sent back. Upstream bodies are untrusted: anything that is
//! not a well-formed chat completion is an invalid response (the call failed), never a panic.

use super::completion::CARRIED_FIELDS;
use super::object_key::KeyAmong;
use super::usage::Usage;
use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

/// A well-formed upstream `chat.completion`. Its `choices` are kept as the upstream wrote
/// them, so a recipe that returns them (tool calls, logprobs, refusals) sends them on without
/// building and serialising them again; what the gateway reads of each choice is parsed
/// beside them.
#[derive(Clone, Debug)]
pub struct UpstreamCompletion {
    choices_text: Box<RawValue>,
    choices: Vec<Choice>,
    /// The [`CARRIED_FIELDS`](super::completion::CARRIED_FIELDS) the upstream set (not null).
    pub carried: Vec<(&'static str, Value)>,
    pub usage: Option<Usage>,
}

impl PartialEq for UpstreamCompletion {
    fn eq(&self, other: &Self) -> bool {
        self.choices_text.get() == other.choices_text.get()
            && self.carried == other.carried
            && self.usage == other.usage
    }
}

/// What the gateway reads of one choice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Choice {
    /// `message.content`, when it is text.
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    /// `logprobs`, unless absent or null.
    pub logprobs: Option<Value>,
}

/// Why an upstream 2xx body could not be used; the usage it reported still counts.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidResponse {
    pub reason: &'static str,
    pub usage: Option<Usage>,
}

impl UpstreamCompletion {
    pub fn choices(&self) -> &[Choice] {
        &self.choices
    }

    /// The `choices` array exactly as the upstream sent it.
    pub fn choices_text(&self) -> &RawValue {
        &self.choices_text
    }

    /// The text of the first choice, when it is a string.
    pub fn content(&self) -> Option<&str> {
        self.choices.first()?.content.as_deref()
    }

    pub fn finish_reason(&self) -> Option<&str> {
        self.choices.first()?.finish_reason.as_deref()
    }

    /// Whether a part that reaches the client holds U+FFFD, the mark of a replaced byte.
    fn keeps_replaced_bytes(&self) -> bool {
        const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;
        self.choices_text.get().contains(REPLACEMENT)
            || self
                .carried
                .iter()
                .any(|(_, value)| value.to_string().contains(REPLACEMENT))
    }
}

/// Parses a 2xx body into a completion.
pub fn parse_completion(bytes: &[u8]) -> Result<UpstreamCompletion, InvalidResponse> {
    // The body is read as a `str`, as every JSON the plugin reads: one JSON reader in the
    // module instead of one for bytes and one for text.
    if let Ok(text) = std::str::from_utf8(bytes) {
        return parse_completion_text(text, bytes);
    }
    // Invalid bytes in a field the gateway skips do not spoil the answer, as nothing of that
    // field is used; in what it keeps they do. Read with the bytes replaced, a replacement
    // character in a kept part tells which (or, beside an invalid byte elsewhere, that the
    // upstream sent one itself: refused too, which costs only a fallback).
    let not_utf8 = || InvalidResponse {
        reason: "body is not valid UTF-8",
        usage: usage_in(bytes),
    };
    match parse_completion_text(&String::from_utf8_lossy(bytes), bytes) {
        Ok(completion) if !completion.keeps_replaced_bytes() => Ok(completion),
        Ok(_) => Err(not_utf8()),
        Err(err) if err.reason == "body is not valid JSON" => Err(not_utf8()),
        Err(err) => Err(err),
    }
}

fn parse_completion_text(text: &str, bytes: &[u8]) -> Result<UpstreamCompletion, InvalidResponse> {
    let top = match serde_json::from_str::<KeptFields>(text) {
        Ok(top) => top,
        Err(err) if err.is_data() => {
            return Err(InvalidResponse {
                reason: "body is not a JSON object",
                usage: None,
            });
        }
        Err(_) => {
            return Err(InvalidResponse {
                reason: "body is not valid JSON",
                usage: usage_in(bytes),
            });
        }
    };
    let usage = top.usage.flatten();
    let invalid = |reason| Err(InvalidResponse { reason, usage });
    let Some(choices_text) = top.choices else {
        return invalid("`choices` is missing");
    };
    // The first pass cut the text out; this one builds only what the gateway reads.
    let read = match Read(Expect::Choices)
        .deserialize(&mut serde_json::Deserializer::from_str(choices_text.get()))
    {
        Ok(read) => read,
        // What the skim let through and a parse would not (escapes, numbers, depth).
        Err(_) => return invalid("body is not valid JSON"),
    };
    let Seen::Choices(choices) = read else {
        return invalid("`choices` is missing");
    };
    if choices.is_empty() {
        return invalid("`choices` is empty");
    }
    let choices: Result<Vec<Choice>, &'static str> = choices.into_iter().collect();
    let read = match choices {
        Ok(choices) => choices,
        Err(reason) => return invalid(reason),
    };
    Ok(UpstreamCompletion {
        choices_text: choices_text.to_owned(),
        choices: read,
        carried: top.carried,
        usage,
    })
}

/// The top-level fields of an answer the gateway reads or carries over (every one of
/// [`CARRIED_FIELDS`](super::completion::CARRIED_FIELDS) among them).
const KEPT_FIELDS: &[&str] = &["choices", "usage", "system_fingerprint", "service_tier"];

/// The top-level object of an upstream answer with only the fields the gateway uses; the
/// others must be well-formed JSON but are not built, nor their strings checked for UTF-8
/// (nothing of them reaches the client). A key sent twice keeps its last value, as a
/// parse into [`Value`] would.
struct KeptFields<'a> {
    choices: Option<&'a RawValue>,
    /// Set when `usage` is there: the counts, or `None` when they are not a usage.
    usage: Option<Option<Usage>>,
    carried: Vec<(&'static str, Value)>,
}

impl<'de> Deserialize<'de> for KeptFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = KeptFields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = KeptFields {
                    choices: None,
                    usage: None,
                    carried: Vec::new(),
                };
                while let Some(key) = map.next_key_seed(KeyAmong(KEPT_FIELDS))? {
                    match key {
                        Some("choices") => kept.choices = Some(map.next_value()?),
                        Some("usage") => {
                            kept.usage = Some(match map.next_value_seed(Read(Expect::Usage))? {
                                Seen::Usage(usage) => usage,
                                _ => None,
                            });
                        }
                        Some(field) if CARRIED_FIELDS.contains(&field) => {
                            let value: Value = map.next_value()?;
                            kept.carried.retain(|(name, _)| *name != field);
                            if !value.is_null() {
                                kept.carried.push((field, value));
                            }
                        }
                        Some(_) | None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(kept)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// What one level of `choices` or `usage` is expected to be; anything else is read as a
/// value of any shape (checked as a parse checks it, and not kept).
#[derive(Clone, Copy)]
enum Expect {
    Choices,
    Choice,
    Message,
    /// The `usage` object, read into counts as [`Usage::from_json`] reads a parsed one.
    Usage,
    /// `usage.prompt_tokens_details`, of which the gateway reads `cached_tokens`.
    PromptDetails,
    /// `usage.completion_tokens_details`, of which the gateway reads `reasoning_tokens`.
    CompletionDetails,
    Any,
}

/// What was found where something was expected. The gateway checks the type of what it
/// reads itself (each wrong type has its own reason), so no JSON value is refused here.
/// One visitor reads every level, so the module holds one copy of the JSON reader for it.
enum Seen {
    Null,
    Text(String),
    Array,
    Other,
    Choices(Vec<Result<Choice, &'static str>>),
    Choice(Result<Choice, &'static str>),
    /// A message object and its text content.
    Message(Result<Option<String>, &'static str>),
    /// A number a parsed tree would give as a `u64` (`Value::as_u64`).
    Unsigned(u64),
    /// What [`Usage::from_json`] would make of the same object.
    Usage(Option<Usage>),
    /// A `*_details` object, and the count under the key the gateway reads of it, when the
    /// value there is a count.
    Detail(Option<u64>),
}

impl Seen {
    /// A token count: what `Value::as_u64` gives of the parsed value.
    fn count(self) -> Option<u64> {
        match self {
            Seen::Unsigned(n) => Some(n),
            _ => None,
        }
    }
}

const NO_MESSAGE: &str = "a choice has no `message` object";

struct Read(Expect);

impl<'de> DeserializeSeed<'de> for Read {
    type Value = Seen;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Seen, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Read {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Seen, E> {
        Ok(Seen::Null)
    }
    fn visit_none<E>(self) -> Result<Seen, E> {
        Ok(Seen::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    // A parsed tree holds a non-negative `i64` as an unsigned number.
    fn visit_i64<E>(self, n: i64) -> Result<Seen, E> {
        Ok(u64::try_from(n).map_or(Seen::Other, Seen::Unsigned))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Seen, E> {
        Ok(Seen::Unsigned(n))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_str<E>(self, text: &str) -> Result<Seen, E> {
        Ok(Seen::Text(text.to_owned()))
    }
    fn visit_string<E>(self, text: String) -> Result<Seen, E> {
        Ok(Seen::Text(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen, A::Error> {
        // Skipped values are still read as a parse into a tree would read them (escapes,
        // number range, nesting depth): the reply's stream parses these choices again.
        let Expect::Choices = self.0 else {
            while seq.next_element_seed(Read(Expect::Any))?.is_some() {}
            return Ok(Seen::Array);
        };
        let mut choices = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(seen) = seq.next_element_seed(Read(Expect::Choice))? {
            choices.push(match seen {
                Seen::Choice(choice) => choice,
                _ => Err(NO_MESSAGE),
            });
        }
        Ok(Seen::Choices(choices))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        let keys: &'static [&'static str] = match self.0 {
            Expect::Choice => &["message", "finish_reason", "logprobs"],
            Expect::Message => &["content"],
            Expect::Usage => return read_usage(map),
            Expect::PromptDetails => return read_detail(map, &["cached_tokens"]),
            Expect::CompletionDetails => return read_detail(map, &["reasoning_tokens"]),
            _ => &[],
        };
        // Later keys win, as in a parsed object.
        let mut message = None;
        let mut finish_reason = None;
        let mut logprobs = None;
        while let Some(key) = map.next_key_seed(KeyAmong(keys))? {
            match (self.0, key) {
                (Expect::Choice, Some("message")) => {
                    message = Some(map.next_value_seed(Read(Expect::Message))?);
                }
                (Expect::Choice, Some("logprobs")) => {
                    logprobs = Some(map.next_value::<Value>()?);
                }
                // A choice's `finish_reason`, or a message's `content`.
                (_, Some(_)) => finish_reason = Some(map.next_value_seed(Read(Expect::Any))?),
                (_, None) => {
                    map.next_value_seed(Read(Expect::Any))?;
                }
            }
        }
        Ok(match self.0 {
            Expect::Message => Seen::Message(match finish_reason {
                Some(Seen::Text(text)) => Ok(Some(text)),
                None | Some(Seen::Null | Seen::Array) => Ok(None),
                Some(_) => Err("a message `content` is neither text nor null"),
            }),
            Expect::Choice => Seen::Choice(match message {
                Some(Seen::Message(Ok(content))) => {
                    let finish_reason = match finish_reason {
                        Some(Seen::Text(reason)) => Some(reason),
                        None | Some(Seen::Null) => None,
                        Some(_) => {
                            return Ok(Seen::Choice(Err("a `finish_reason` is not a string")))
                        }
                    };
                    Ok(Choice {
                        content,
                        finish_reason,
                        logprobs: logprobs.filter(|l| !l.is_null()),
                    })
                }
                Some(Seen::Message(Err(reason))) => Err(reason),
                _ => Err(NO_MESSAGE),
            }),
            _ => Seen::Other,
        })
    }
}

/// The keys of `usage` the gateway reads.
const USAGE_KEYS: &[&str] = &[
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
];

/// `usage` read straight into its counts, without building it as a tree first: what
/// [`Usage::from_json`] accepts of the parsed object, and no usage for what it does not.
/// Every value inside is still read as a parse reads it, so what a parse refuses (escapes,
/// number range, depth) fails the body as before. One shape is read differently, on
/// purpose: an object whose first key is `serde_json`'s private raw-value marker, which a
/// parse into a tree treats as embedded JSON text; here it is an object like any other.
fn read_usage<'de, A: MapAccess<'de>>(mut map: A) -> Result<Seen, A::Error> {
    // Only an object has the count inside it.
    let detail = |seen| match seen {
        Seen::Detail(n) => n,
        _ => None,
    };
    // `Some(None)`: the key is there but its value is not a count. Later keys win, as in a
    // parsed object.
    let mut prompt = None;
    let mut completion = None;
    let mut total = None;
    let mut cached_tokens = None;
    let mut reasoning_tokens = None;
    while let Some(key) = map.next_key_seed(KeyAmong(USAGE_KEYS))? {
        // One read for every key keeps one copy of the reader's call in the module.
        let expect = match key {
            Some("prompt_tokens_details") => Expect::PromptDetails,
            Some("completion_tokens_details") => Expect::CompletionDetails,
            _ => Expect::Any,
        };
        let seen = map.next_value_seed(Read(expect))?;
        match key {
            Some("prompt_tokens") => prompt = Some(seen.count()),
            Some("completion_tokens") => completion = Some(seen.count()),
            Some("total_tokens") => total = Some(seen.count()),
            Some("prompt_tokens_details") => cached_tokens = detail(seen),
            Some("completion_tokens_details") => reasoning_tokens = detail(seen),
            Some(_) | None => {}
        }
    }
    let (Some(Some(prompt_tokens)), Some(Some(completion_tokens))) = (prompt, completion) else {
        return Ok(Seen::Usage(None));
    };
    let total_tokens = match total {
        Some(total) => total,
        None => Some(prompt_tokens.saturating_add(completion_tokens)),
    };
    Ok(Seen::Usage(total_tokens.map(|total_tokens| Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cached_tokens,
        reasoning_tokens,
    })))
}

/// The count under `key` (a one-name list) in a `*_details` object of `usage`, the last such
/// key winning, as in a parsed object.
fn read_detail<'de, A: MapAccess<'de>>(
    mut map: A,
    key: &'static [&'static str],
) -> Result<Seen, A::Error> {
    let mut count = None;
    while let Some(found) = map.next_key_seed(KeyAmong(key))? {
        let seen = map.next_value_seed(Read(Expect::Any))?;
        if found.is_some() {
            count = seen.count();
        }
    }
    Ok(Seen::Detail(count))
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
    let Some(value) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
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
        // A null carried field is not carried.
        assert_eq!(c.carried, [("system_fingerprint", json!("fp"))]);
        assert_eq!(c.content(), Some("hi"));
        assert_eq!(c.usage.unwrap().total_tokens, 3);
    }

    #[test]
    fn each_wrong_shape_has_its_reason() {
        let usage = json!({"prompt_tokens": 1, "completion_tokens": 1});
        let cases = [
            (json!({"choices": {"0": {}}}), "`choices` is missing"),
            (json!({"choices": "none"}), "`choices` is missing"),
            (json!({"choices": null}), "`choices` is missing"),
            (json!({"choices": [[]]}), "a choice has no `message` object"),
            (
                json!({"choices": [{"message": []}]}),
                "a choice has no `message` object",
            ),
            (
                json!({"choices": [{"message": "hi"}]}),
                "a choice has no `message` object",
            ),
            (
                json!({"choices": [{"index": 0}]}),
                "a choice has no `message` object",
            ),
            (
                json!({"choices": [{"message": {"content": {"text": "hi"}}}]}),
                "a message `content` is neither text nor null",
            ),
            (
                json!({"choices": [{"message": {"content": true}}]}),
                "a message `content` is neither text nor null",
            ),
            (
                json!({"choices": [{"message": {}, "finish_reason": 1}]}),
                "a `finish_reason` is not a string",
            ),
            (
                json!({"choices": [{"message": {}, "finish_reason": ["stop"]}]}),
                "a `finish_reason` is not a string",
            ),
        ];
        for (mut body, reason) in cases {
            body["usage"] = usage.clone();
            let err = parse_completion(body.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.reason, reason, "{body}");
            assert_eq!(err.usage.unwrap().total_tokens, 2, "{body}");
        }
        // Content parts and a missing or null content are a message; they have no text.
        for content in [json!([{"type": "text", "text": "hi"}]), json!(null)] {
            let body = json!({"choices": [{"message": {"content": content}}]});
            let c = parse_completion(body.to_string().as_bytes()).unwrap();
            assert_eq!(c.content(), None);
        }
        let c = parse_completion(br#"{"choices": [{"message": {"role": "assistant"}}]}"#).unwrap();
        assert_eq!(c.content(), None);
    }

    #[test]
    fn what_a_parse_refuses_in_choices_fails_the_call() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let usage = r#""usage": {"prompt_tokens": 1, "completion_tokens": 1}"#;
        let bodies = [
            format!(r#"{{"choices": [{{"message": {{"content": "\ud83d"}}}}], {usage}}}"#),
            format!(
                r#"{{"choices": [{{"message": {{"content": "x", "tool_calls": ["\udc00"]}}}}], {usage}}}"#
            ),
            format!(r#"{{"choices": [{{"message": {{"content": "x"}}, "x": 1e400}}], {usage}}}"#),
            format!(r#"{{"choices": [{{"message": {{"content": "x"}}, "x": {deep}}}], {usage}}}"#),
            format!(r#"{{"choices": [{{"message": {{"content": "x"}}}}, {deep}], {usage}}}"#),
        ];
        for body in bodies {
            assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
            let err = parse_completion(body.as_bytes()).unwrap_err();
            assert_eq!(err.reason, "body is not valid JSON", "{body}");
            assert_eq!(err.usage.unwrap().total_tokens, 2, "{body}");
        }
    }

    #[test]
    fn usage_is_read_as_from_json_reads_the_parsed_object() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let deep = nested(200);
        // Around the parser's depth limit, in a skipped value and in a details object.
        let at_the_limit = (120..=130).flat_map(|n| {
            [
                format!(
                    r#"{{"prompt_tokens": 1, "completion_tokens": 1, "x": {}}}"#,
                    nested(n)
                ),
                format!(
                    r#"{{"prompt_tokens": 1, "completion_tokens": 1,
                        "prompt_tokens_details": {{"cached_tokens": {}}}}}"#,
                    nested(n)
                ),
            ]
        });
        let usages = [
            r#"{"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}"#.to_string(),
            r#"{"prompt_tokens": 3, "completion_tokens": 4}"#.into(),
            r#"{"completion_tokens": 4, "prompt_tokens": 3, "total_tokens": 99}"#.into(),
            r#"{"prompt_tokens": 3}"#.into(),
            r#"{"completion_tokens": 3}"#.into(),
            r#"{}"#.into(),
            r#"{"prompt_tokens": -1, "completion_tokens": 4}"#.into(),
            r#"{"prompt_tokens": -0, "completion_tokens": 0}"#.into(),
            r#"{"prompt_tokens": 3.0, "completion_tokens": 4}"#.into(),
            r#"{"prompt_tokens": 3e2, "completion_tokens": 4}"#.into(),
            r#"{"prompt_tokens": 18446744073709551615, "completion_tokens": 1}"#.into(),
            r#"{"prompt_tokens": 18446744073709551616, "completion_tokens": 1}"#.into(),
            r#"{"prompt_tokens": "3", "completion_tokens": 4}"#.into(),
            r#"{"prompt_tokens": null, "completion_tokens": 4}"#.into(),
            r#"{"prompt_tokens": [3], "completion_tokens": {"n": 4}}"#.into(),
            r#"{"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": "3"}"#.into(),
            r#"{"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": null}"#.into(),
            // Repeated keys: the last one counts, valid or not.
            r#"{"prompt_tokens": "x", "prompt_tokens": 1, "completion_tokens": 2}"#.into(),
            r#"{"prompt_tokens": 1, "prompt_tokens": "x", "completion_tokens": 2}"#.into(),
            // Escaped keys are the same keys.
            r#"{"prompt\u005ftokens": 5, "completion_tokens": 2}"#.into(),
            // Details: counted only from an object, the last key and object winning.
            r#"{"prompt_tokens": 9, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 1, "x": [1, {"y": null}]}}"#
                .into(),
            r#"{"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": 4,
                "completion_tokens_details": [1]}"#
                .into(),
            r#"{"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": null,
                "completion_tokens_details": {"reasoning_tokens": -1}}"#
                .into(),
            r#"{"prompt_tokens": 9, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4, "cached_tokens": "x"},
                "completion_tokens_details": {"reasoning_tokens": 1},
                "completion_tokens_details": {"other": 1}}"#
                .into(),
            r#"{"prompt_tokens": 9, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4, "cached_tokens": 5}}"#
                .into(),
            // Other keys of any shape, as providers add them.
            r#"{"prompt_tokens": 1, "completion_tokens": 1, "cost": 0.0012, "is_byok": false,
                "server": {"tier": ["a", "b"], "n": -3}, "note": "caf\u00e9"}"#
                .into(),
            // Not an object: no usage.
            "null".into(),
            "1".into(),
            r#""usage""#.into(),
            r#"[{"prompt_tokens": 1, "completion_tokens": 1}]"#.into(),
            "true".into(),
            // What a parse refuses inside usage fails the body.
            r#"{"prompt_tokens": 1, "completion_tokens": 1, "x": "\ud83d"}"#.into(),
            r#"{"prompt_tokens": 1e400, "completion_tokens": 1}"#.into(),
            r#"{"prompt_tokens": 1, "completion_tokens": 1, "d": {"cached_tokens": "\udc00"}}"#
                .into(),
            r#"{"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 1e999}}"#.into(),
            format!(r#"{{"prompt_tokens": 1, "completion_tokens": 1, "x": {deep}}}"#),
            format!(r#"{{"prompt_tokens": 1, "prompt_tokens_details": {{"x": {deep}}}}}"#),
            format!(r#"[{deep}]"#),
            // Invalid keys and syntax inside usage.
            r#"{"prompt_tokens": 1, "completion_tokens": 1, "\ud800": 1}"#.into(),
            r#"{"prompt_tokens": 1, "prompt_tokens_details": {"\udc00": 1}}"#.into(),
            r#"{"prompt_tokens": 1, "completion_tokens": 1,}"#.into(),
            r#"{"prompt_tokens": 01, "completion_tokens": 1}"#.into(),
            r#"{"prompt_tokens": 1, "completion_tokens": "1}"#.into(),
            // Number forms.
            r#"{"prompt_tokens": -9223372036854775808, "completion_tokens": 1}"#.into(),
            r#"{"prompt_tokens": -9223372036854775809, "completion_tokens": 1}"#.into(),
            r#"{"prompt_tokens": 3E2, "completion_tokens": 0e400, "total_tokens": 1e-400}"#.into(),
            r#"{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": -2}"#.into(),
            r#"{"prompt_tokens": 1, "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": -0}}"#
                .into(),
        ];
        for usage in usages.into_iter().chain(at_the_limit) {
            // An answer refused for its choices keeps its usage, read the same way.
            let empty = format!(r#"{{"choices": [], "usage": {usage}}}"#);
            if let Ok(value) = serde_json::from_str::<Value>(&empty) {
                let err = parse_completion(empty.as_bytes()).unwrap_err();
                assert_eq!(err.reason, "`choices` is empty", "{empty}");
                let expected = value.get("usage").and_then(Usage::from_json);
                assert_eq!(err.usage, expected, "{empty}");
            }
            let choices = r#""choices": [{"message": {"content": "x"}}]"#;
            for body in [
                format!(r#"{{{choices}, "usage": {usage}}}"#),
                // The last `usage` counts.
                format!(
                    r#"{{"usage": {{"prompt_tokens": 1, "completion_tokens": 1}}, {choices}, "usage": {usage}}}"#
                ),
                format!(r#"{{"usage": {usage}, {choices}, "usage": null}}"#),
            ] {
                let parsed = parse_completion(body.as_bytes());
                match serde_json::from_str::<Value>(&body) {
                    Ok(value) => {
                        let expected = value.get("usage").and_then(Usage::from_json);
                        assert_eq!(parsed.unwrap().usage, expected, "{body}");
                    }
                    Err(refused) => {
                        let err = parsed.unwrap_err();
                        assert!(!refused.is_data(), "{body}");
                        assert_eq!(err.reason, "body is not valid JSON", "{body}");
                    }
                }
            }
        }
    }

    #[test]
    fn choices_are_kept_as_sent_beside_what_is_read() {
        let choices = r#"[ {"index":0, "message": {"role":"assistant", "content":"caf\u00e9 \"B\"",
            "tool_calls": [{"id": "t1", "type": "function"}]}, "finish_reason":"length",
            "logprobs": {"content": [{"token": "B", "logprob": -0.5}]}},
            {"index": 1, "message": {"content": null}, "logprobs": null} ]"#;
        let body = format!(r#"{{"id": "x", "choices": {choices}, "service_tier": "default"}}"#);
        let c = parse_completion(body.as_bytes()).unwrap();
        assert_eq!(c.choices_text().get(), choices);
        assert_eq!(c.content(), Some("café \"B\""));
        assert_eq!(c.finish_reason(), Some("length"));
        assert_eq!(c.choices().len(), 2);
        assert_eq!(
            c.choices()[0].logprobs.as_ref().unwrap()["content"][0]["token"],
            "B"
        );
        assert_eq!(c.choices()[1].logprobs, None, "a null logprobs is none");
        assert_eq!(c.carried, [("service_tier", json!("default"))]);
    }

    #[test]
    fn every_carried_field_is_kept() {
        for field in CARRIED_FIELDS {
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
        // ... nor does a replacement character the upstream sent itself, escaped or not.
        let body = "{\"id\": \"\u{fffd}\", \"choices\": [{\"message\": {\"content\": \"\\ufffd \u{fffd}\"}}]}";
        assert_eq!(
            parse_completion(body.as_bytes()).unwrap().content(),
            Some("\u{fffd} \u{fffd}")
        );
        // In a field that reaches the client it does, whatever the choices hold.
        let body =
            b"{\"service_tier\": \"\xff\", \"choices\": [{\"message\": {\"content\": \"ok\"}}]}";
        assert_eq!(
            parse_completion(body).unwrap_err().reason,
            "body is not valid UTF-8"
        );
        let body = b"{\"id\": \"\xff\", \"choices\": [{\"message\": {\"content\": \"ok\", \"tool_calls\": \"\xfe\"}}]}";
        assert_eq!(
            parse_completion(body).unwrap_err().reason,
            "body is not valid UTF-8"
        );
        let body = b"{\"id\": \"\xff\", \"choices\": [{\"message\": {\"content\": \"ok\"}}], \"usage\": {\"prompt_tokens\": 1, \"completion_tokens\": 2, \"total_tokens\": 3}";
        let err = parse_completion(body).unwrap_err();
        assert_eq!(
            err.reason, "body is not valid UTF-8",
            "broken JSON beside a broken byte"
        );
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
