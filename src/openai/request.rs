//! The client's chat completion request. It is kept as the client's own JSON object so that
//! every field the gateway does not understand (`top_k`, `chat_template_kwargs`, `tools`,
//! provider extensions) reaches the upstream untouched; sub-call bodies are derived by editing
//! that object, never by re-serialising a typed struct.

use super::error::ApiError;
use super::object_key::KeyAmong;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;
use std::rc::Rc;

/// Hard cap on `n`; OpenAI allows 128.
pub const MAX_N: u64 = 128;

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

#[derive(Debug, Clone)]
pub struct ChatRequest {
    body: Map<String, Value>,
    /// `messages` as the client wrote them, spliced into sub-calls as they are: serialising
    /// the parsed messages again costs more than the parse (every byte of text is escaped).
    messages_text: Option<Rc<RawValue>>,
    /// Size of the client's body in bytes (for token estimates).
    body_len: usize,
    model: String,
    stream: bool,
    include_usage: bool,
    n: u64,
}

impl ChatRequest {
    /// Parses and validates the fields the gateway relies on; everything else is kept as is.
    pub fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(ApiError::invalid_json)?;
        let Value::Object(body) = value else {
            return Err(ApiError::invalid_request(
                "the request body must be a JSON object",
                None,
            ));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`model` must be a non-empty string",
                    Some("model"),
                ))
            }
            None => {
                return Err(ApiError::invalid_request(
                    "you must provide a `model` parameter",
                    Some("model"),
                ))
            }
        };
        validate_messages(body.get("messages"))?;
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`stream` must be a boolean",
                    Some("stream"),
                ))
            }
        };
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => match options.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid_request(
                        "`stream_options.include_usage` must be a boolean",
                        Some("stream_options.include_usage"),
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`stream_options` must be an object",
                    Some("stream_options"),
                ))
            }
        };
        let n = match body.get("n") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_N).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid_request(
                        format!("`n` must be an integer between 1 and {MAX_N}"),
                        Some("n"),
                    ))
                }
            },
        };
        Ok(ChatRequest {
            body,
            messages_text: None,
            body_len: bytes.len(),
            model,
            stream,
            include_usage,
            n,
        })
    }

    pub fn body_len(&self) -> usize {
        self.body_len
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// `stream_options.include_usage`: a final usage chunk is wanted.
    pub fn include_usage(&self) -> bool {
        self.include_usage
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    pub fn field(&self, key: &str) -> Option<&Value> {
        self.body.get(key)
    }

    /// Keeps the text of `messages` from `bytes`, the body this request was parsed from, for
    /// a recipe whose sub-calls carry the client's messages unchanged. Skimming the body for it
    /// costs about half of serialising the parsed messages again.
    pub fn keep_messages_text(&mut self, bytes: &[u8]) {
        self.messages_text = serde_json::from_slice::<MessagesText>(bytes)
            .ok()
            .and_then(|text| text.0)
            .map(|raw| Rc::from(raw.to_owned()));
    }

    /// The client's `messages` as JSON text, exactly as sent, once kept (`None` if the body
    /// named them more than once: the parsed body keeps the last, as every upstream parser
    /// would). A key repeated inside a message goes upstream as the client wrote it, as it
    /// does for a request that passes through, while the gateway's own reading (validation,
    /// routing, its own prompts) sees the last value.
    pub fn messages_text(&self) -> Option<Rc<RawValue>> {
        self.messages_text.clone()
    }

    /// The body of a sub-call to `upstream_model`: the client's JSON with `model` replaced,
    /// streaming turned off (the gateway reads whole sub-responses) and `edits` applied.
    pub fn upstream_body(&self, upstream_model: &str, edits: &[(&str, Edit)]) -> Vec<u8> {
        let model = Value::String(upstream_model.to_string());
        let mut all: Vec<(&str, Edit)> = Vec::with_capacity(edits.len() + 3);
        all.push(("model", Edit::Set(&model)));
        if self.body.contains_key("stream") {
            all.push(("stream", Edit::Set(&Value::Bool(false))));
        }
        all.push(("stream_options", Edit::Remove));
        for (key, edit) in edits {
            all.retain(|(k, _)| k != key);
            all.push((key, *edit));
        }
        let edited = Edited {
            base: &self.body,
            edits: &all,
        };
        // Sized for the spliced messages and the client's other fields, so the buffer is not
        // regrown and copied as it fills.
        let raw: usize = all
            .iter()
            .map(|(_, edit)| match edit {
                Edit::Raw(raw) => raw.get().len(),
                _ => 0,
            })
            .sum();
        let mut body = Vec::with_capacity(raw.saturating_add(SUB_CALL_FIELDS_BYTES));
        // Serialising a map of JSON values cannot fail; an empty body would be refused by the
        // upstream and reported as a failed call, never a panic.
        match serde_json::to_writer(&mut body, &edited) {
            Ok(()) => body,
            Err(_) => Vec::new(),
        }
    }
}

/// The text of a body's `messages`, read without building anything: other values are
/// skipped, and a second `messages` key makes it `None`.
struct MessagesText<'a>(Option<&'a RawValue>);

impl<'de> Deserialize<'de> for MessagesText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = MessagesText<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut text = None;
                let mut times = 0u32;
                while let Some(key) = map.next_key_seed(KeyAmong(&["messages"]))? {
                    if key.is_some() {
                        text = Some(map.next_value::<&'de RawValue>()?);
                        times += 1;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(MessagesText(if times == 1 { text } else { None }))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Room for a sub-call body's fields besides its messages (model, limits, sampling).
const SUB_CALL_FIELDS_BYTES: usize = 512;

/// One change applied while serialising a sub-call body.
#[derive(Clone, Copy, Debug)]
pub enum Edit<'a> {
    Set(&'a Value),
    /// Already serialised JSON, spliced in as it is (the same messages in every sub-call
    /// are serialised once).
    Raw(&'a RawValue),
    Remove,
}

/// Serialises `base` with `edits` applied, without cloning the client's body.
struct Edited<'a> {
    base: &'a Map<String, Value>,
    edits: &'a [(&'a str, Edit<'a>)],
}

impl Serialize for Edited<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.base {
            match self.edits.iter().find(|(k, _)| k == key) {
                Some((_, Edit::Set(v))) => map.serialize_entry(key, v)?,
                Some((_, Edit::Raw(v))) => map.serialize_entry(key, v)?,
                Some((_, Edit::Remove)) => {}
                None => map.serialize_entry(key, value)?,
            }
        }
        for (key, edit) in self.edits {
            if self.base.contains_key(*key) {
                continue;
            }
            match edit {
                Edit::Set(v) => map.serialize_entry(key, v)?,
                Edit::Raw(v) => map.serialize_entry(key, v)?,
                Edit::Remove => {}
            }
        }
        map.end()
    }
}

fn validate_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let Some(messages) = messages else {
        return Err(ApiError::invalid_request(
            "you must provide a `messages` parameter",
            Some("messages"),
        ));
    };
    let Value::Array(items) = messages else {
        return Err(ApiError::invalid_request(
            "`messages` must be an array",
            Some("messages"),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid_request(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }
    for (i, message) in items.iter().enumerate() {
        validate_message(i, message)?;
    }
    Ok(())
}

fn validate_message(i: usize, message: &Value) -> Result<(), ApiError> {
    let param = |field: &str| format!("messages[{i}]{field}");
    let Value::Object(message) = message else {
        return Err(ApiError::invalid_request(
            format!("`messages[{i}]` must be an object"),
            Some(&param("")),
        ));
    };
    let role = match message.get("role") {
        Some(Value::String(role)) if ROLES.contains(&role.as_str()) => role.as_str(),
        _ => {
            return Err(ApiError::invalid_request(
                format!("`messages[{i}].role` must be one of: {}", ROLES.join(", ")),
                Some(&param(".role")),
            ))
        }
    };
    match message.get("content") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let ok = match part {
                    Value::Object(p) => match p.get("type") {
                        Some(Value::String(t)) if t == "text" => {
                            matches!(p.get("text"), Some(Value::String(_)))
                        }
                        Some(Value::String(_)) => true,
                        _ => false,
                    },
                    _ => false,
                };
                if !ok {
                    return Err(ApiError::invalid_request(
                        format!(
                            "`messages[{i}].content[{j}]` must be an object with a string \
                             `type` (and a string `text` for text parts)"
                        ),
                        Some(&param(&format!(".content[{j}]"))),
                    ));
                }
            }
            Ok(())
        }
        // Assistant turns that only call tools, and tool/function results, may omit content.
        None | Some(Value::Null) if matches!(role, "assistant" | "tool" | "function") => Ok(()),
        _ => Err(ApiError::invalid_request(
            format!("`messages[{i}].content` must be a string or an array of content parts"),
            Some(&param(".content")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(v.to_string().as_bytes())
    }

    fn user(text: &str) -> Value {
        json!([{"role": "user", "content": text}])
    }

    #[test]
    fn accepts_string_and_part_content() {
        let r = parse(json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": []},
        ]}))
        .unwrap();
        assert_eq!(r.model(), "m");
        assert!(!r.stream());
        assert_eq!(r.n(), 1);
    }

    #[test]
    fn rejects_bad_inputs_with_param() {
        let cases = [
            (json!({"messages": user("x")}), "model"),
            (json!({"model": 3, "messages": user("x")}), "model"),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"model": "m", "messages": "hi"}), "messages"),
            (json!({"model": "m", "messages": [1]}), "messages[0]"),
            (
                json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "m", "messages": user("x"), "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "messages": user("x"), "stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
            ),
            (json!({"model": "m", "messages": user("x"), "n": 0}), "n"),
            (json!({"model": "m", "messages": user("x"), "n": 1.5}), "n"),
        ];
        for (body, param) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_400() {
        for bytes in [&b"{"[..], b"[]", b"null", b"\xff\xfe", b""] {
            let err = ChatRequest::parse(bytes).unwrap_err();
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn upstream_body_keeps_unknown_fields_and_edits_model_and_stream() {
        let r = parse(json!({
            "model": "vllm-sr/auto", "messages": user("hi"), "stream": true,
            "stream_options": {"include_usage": true}, "top_k": 5,
            "chat_template_kwargs": {"thinking": true}, "tools": [{"type": "function"}]
        }))
        .unwrap();
        assert!(r.stream() && r.include_usage());
        let body: Value = serde_json::from_slice(&r.upstream_body("small-1", &[])).unwrap();
        assert_eq!(body["model"], "small-1");
        assert_eq!(body["stream"], false);
        assert!(body.get("stream_options").is_none());
        assert_eq!(body["top_k"], 5);
        assert_eq!(body["chat_template_kwargs"]["thinking"], true);
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["messages"][0]["content"], "hi");
    }

    #[test]
    fn raw_edits_are_spliced_as_they_are() {
        let r = parse(json!({"model": "v", "messages": user("hi")})).unwrap();
        let messages =
            serde_json::value::to_raw_value(&json!([{"role": "user", "content": "x"}])).unwrap();
        let extra = serde_json::value::to_raw_value(&json!({"a": 1})).unwrap();
        let bytes = r.upstream_body(
            "u",
            &[
                ("messages", Edit::Raw(&messages)),
                ("extra", Edit::Raw(&extra)),
            ],
        );
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["messages"][0]["content"], "x", "a key the client sent");
        assert_eq!(body["extra"]["a"], 1, "a key the client did not send");
        assert!(String::from_utf8(bytes).unwrap().contains(messages.get()));
    }

    #[test]
    fn messages_text_is_the_clients_own_text() {
        let text = r#"[ {"role":"user", "content":"caf\u00e9 \"quoted\"\n"} ]"#;
        let body = format!(r#"{{"messages": {text}, "model": "v", "tools": [{{"messages": 1}}]}}"#);
        let mut r = ChatRequest::parse(body.as_bytes()).unwrap();
        assert!(r.messages_text().is_none(), "kept only when asked");
        r.keep_messages_text(body.as_bytes());
        assert_eq!(r.messages_text().unwrap().get(), text);
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(r.field("messages"), Some(&parsed));
        // A key repeated inside a message is kept as written; the parsed body has the last.
        let text = r#"[{"role": "user", "content": "a", "content": "b"}]"#;
        let body = format!(r#"{{"model": "v", "messages": {text}}}"#);
        let mut r = ChatRequest::parse(body.as_bytes()).unwrap();
        r.keep_messages_text(body.as_bytes());
        assert_eq!(r.messages_text().unwrap().get(), text);
        assert_eq!(r.field("messages").unwrap()[0]["content"], "b");
    }

    #[test]
    fn messages_named_twice_have_no_text() {
        // The parsed body keeps the last value; a text of the first would disagree with it.
        let body = br#"{"model": "v", "messages": [{"role": "user", "content": "a"}],
            "messages": [{"role": "user", "content": "b"}]}"#;
        let mut r = ChatRequest::parse(body).unwrap();
        r.keep_messages_text(body);
        assert!(r.messages_text().is_none());
        assert_eq!(r.field("messages").unwrap()[0]["content"], "b");
        // An escaped key is the same key.
        let body = br#"{"model": "v", "messages": [{"role": "user", "content": "a"}],
            "m\u0065ssages": [{"role": "user", "content": "b"}]}"#;
        let mut r = ChatRequest::parse(body).unwrap();
        r.keep_messages_text(body);
        assert!(r.messages_text().is_none());
    }

    #[test]
    fn edits_override_set_and_remove() {
        let r = parse(json!({"model": "v", "messages": user("hi"), "temperature": 0.2})).unwrap();
        let t = json!(1.0);
        let body: Value = serde_json::from_slice(&r.upstream_body(
            "u",
            &[
                ("temperature", Edit::Set(&t)),
                ("logprobs", Edit::Set(&Value::Bool(true))),
            ],
        ))
        .unwrap();
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["logprobs"], true);
        assert!(
            body.get("stream").is_none(),
            "no stream key added when absent"
        );
        let body: Value =
            serde_json::from_slice(&r.upstream_body("u", &[("temperature", Edit::Remove)]))
                .unwrap();
        assert!(body.get("temperature").is_none());
    }
}
