//! The client's chat completion request. It is kept as the client's own JSON object so that
//! every field the gateway does not understand (`top_k`, `chat_template_kwargs`, `tools`,
//! provider extensions) reaches the upstream untouched; sub-call bodies are derived by editing
//! that object, never by re-serialising a typed struct.

use super::error::ApiError;
use super::object_key::KeyAmong;
use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::cell::OnceCell;
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
    /// The client's top-level fields but `messages`, parsed.
    fields: Map<String, Value>,
    /// `messages` as the client wrote them, spliced into sub-calls as they are: parsing them
    /// into a tree and serialising it again would cost more than the rest of the request.
    messages_text: Rc<RawValue>,
    /// `messages` parsed, for the readers that need the tree (routing, the gateway's own
    /// prompts), on first use.
    messages: OnceCell<Value>,
    /// Size of the client's body in bytes (for token estimates).
    body_len: usize,
    model: String,
    stream: bool,
    include_usage: bool,
    n: u64,
}

impl ChatRequest {
    /// Parses and validates the fields the gateway relies on; everything else is kept as is.
    /// `messages` is checked without being built.
    pub fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse_with(bytes, false)
    }

    /// As [`ChatRequest::parse`]; with `build_messages`, the messages tree is built first and
    /// checked as built, for a request whose recipe reads it (one reading of the text instead
    /// of a check and a parse). The same requests are refused, with the same errors.
    pub fn parse_with(bytes: &[u8], build_messages: bool) -> Result<ChatRequest, ApiError> {
        // Checked once here, so every later read of the body (and of the parts cut from it)
        // is of a `str`: one JSON reader in the module instead of one for bytes and one for
        // text. JSON is UTF-8 throughout, so this refuses nothing a parse would accept.
        let text = std::str::from_utf8(bytes).map_err(|e| {
            ApiError::invalid_json(format_args!("invalid UTF-8 at byte {}", e.valid_up_to()))
        })?;
        let TopLevel { fields, messages } = match serde_json::from_str::<TopLevel>(text) {
            Ok(top) => top,
            // The only type the reader insists on is the top-level object; it refuses any
            // other before reading it, so whether that value is JSON is checked apart.
            Err(err) if err.is_data() => {
                return Err(match serde_json::from_str::<IgnoredAny>(text) {
                    Ok(_) => {
                        ApiError::invalid_request("the request body must be a JSON object", None)
                    }
                    Err(err) => ApiError::invalid_json(err),
                })
            }
            Err(err) => return Err(ApiError::invalid_json(err)),
        };
        let model = match fields.get("model") {
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
        let Some(messages) = messages else {
            return Err(ApiError::invalid_request(
                "you must provide a `messages` parameter",
                Some("messages"),
            ));
        };
        let tree = OnceCell::new();
        if build_messages {
            let value: Value =
                serde_json::from_str(messages.get()).map_err(ApiError::invalid_json)?;
            let seen = Check(Expect::Messages)
                .deserialize(&value)
                .map_err(ApiError::invalid_json)?;
            refuse_messages(seen)?;
            let _ = tree.set(value);
        } else {
            validate_messages(messages)?;
        }
        let stream = match fields.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`stream` must be a boolean",
                    Some("stream"),
                ))
            }
        };
        let include_usage = match fields.get("stream_options") {
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
        let n = match fields.get("n") {
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
            fields,
            messages_text: Rc::from(messages.to_owned()),
            messages: tree,
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

    /// A top-level field of the client's body (`messages` is parsed on first use).
    pub fn field(&self, key: &str) -> Option<&Value> {
        if key == "messages" {
            // The check read this text as a parse does, so it parses; were it not to, the
            // gateway would see no messages, never panic.
            return Some(self.messages.get_or_init(|| {
                serde_json::from_str(self.messages_text.get()).unwrap_or_default()
            }));
        }
        self.fields.get(key)
    }

    /// The client's `messages` as JSON text, exactly as sent (the last, if the body named
    /// them more than once, as every upstream parser would read it). A key repeated inside a
    /// message goes upstream as the client wrote it, as it does for a request that passes
    /// through, while the gateway's own reading (validation, routing, its own prompts) sees
    /// the last value.
    pub fn messages_text(&self) -> Rc<RawValue> {
        Rc::clone(&self.messages_text)
    }

    /// The body of a sub-call to `upstream_model`: the client's JSON with `model` replaced,
    /// streaming turned off (the gateway reads whole sub-responses) and `edits` applied.
    pub fn upstream_body(&self, upstream_model: &str, edits: &[(&str, Edit)]) -> Vec<u8> {
        let model = Value::String(upstream_model.to_string());
        let mut all: Vec<(&str, Edit)> = Vec::with_capacity(edits.len() + 3);
        all.push(("model", Edit::Set(&model)));
        if self.fields.contains_key("stream") {
            all.push(("stream", Edit::Set(&Value::Bool(false))));
        }
        all.push(("stream_options", Edit::Remove));
        for (key, edit) in edits {
            all.retain(|(k, _)| k != key);
            all.push((key, *edit));
        }
        let edited = Edited {
            base: &self.fields,
            messages: &self.messages_text,
            edits: &all,
        };
        // Sized for the spliced messages and the client's other fields, so the buffer is not
        // regrown and copied as it fills.
        let mut raw: usize = all
            .iter()
            .map(|(_, edit)| match edit {
                Edit::Raw(raw) => raw.get().len(),
                _ => 0,
            })
            .sum();
        if !all.iter().any(|(key, _)| *key == "messages") {
            raw = raw.saturating_add(self.messages_text.get().len());
        }
        let mut body = Vec::with_capacity(raw.saturating_add(SUB_CALL_FIELDS_BYTES));
        // Serialising a map of JSON values cannot fail; an empty body would be refused by the
        // upstream and reported as a failed call, never a panic.
        match serde_json::to_writer(&mut body, &edited) {
            Ok(()) => body,
            Err(_) => Vec::new(),
        }
    }
}

/// The client's top-level object: `messages` as text (the last, when named twice; checked
/// apart), every other field parsed.
struct TopLevel<'a> {
    fields: Map<String, Value>,
    messages: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut top = TopLevel {
                    fields: Map::new(),
                    messages: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "messages" {
                        top.messages = Some(map.next_value()?);
                    } else {
                        let value: Value = map.next_value()?;
                        top.fields.insert(key, value);
                    }
                }
                Ok(top)
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

/// Serialises the client's fields (`base` and its `messages` text) with `edits` applied,
/// without cloning the client's body. Keys keep the order of a parsed JSON object.
struct Edited<'a> {
    base: &'a Map<String, Value>,
    messages: &'a RawValue,
    edits: &'a [(&'a str, Edit<'a>)],
}

impl Serialize for Edited<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let mut messages = Some(self.messages);
        for (key, value) in self.base {
            if key.as_str() > "messages" {
                if let Some(text) = messages.take() {
                    self.entry(&mut map, "messages", text)?;
                }
            }
            match self.edits.iter().find(|(k, _)| k == key) {
                Some((_, Edit::Set(v))) => map.serialize_entry(key, v)?,
                Some((_, Edit::Raw(v))) => map.serialize_entry(key, v)?,
                Some((_, Edit::Remove)) => {}
                None => map.serialize_entry(key, value)?,
            }
        }
        if let Some(text) = messages {
            self.entry(&mut map, "messages", text)?;
        }
        for (key, edit) in self.edits {
            if self.base.contains_key(*key) || *key == "messages" {
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

impl Edited<'_> {
    /// The client's `messages` or their edit.
    fn entry<M: SerializeMap>(
        &self,
        map: &mut M,
        key: &str,
        text: &RawValue,
    ) -> Result<(), M::Error> {
        match self.edits.iter().find(|(k, _)| *k == key) {
            Some((_, Edit::Set(v))) => map.serialize_entry(key, v),
            Some((_, Edit::Raw(v))) => map.serialize_entry(key, v),
            Some((_, Edit::Remove)) => Ok(()),
            None => map.serialize_entry(key, text),
        }
    }
}

/// Checks the client's `messages` as OpenAI would, reading the text without building it.
fn validate_messages(messages: &RawValue) -> Result<(), ApiError> {
    // The skim that cut the text out checks less than a parse (escapes, number range,
    // depth): this reading is the one that refuses what a parse would.
    let seen = Check(Expect::Messages)
        .deserialize(&mut serde_json::Deserializer::from_str(messages.get()))
        .map_err(ApiError::invalid_json)?;
    refuse_messages(seen)
}

/// The error for what the check saw in `messages`, if it refuses them.
fn refuse_messages(seen: Seen) -> Result<(), ApiError> {
    let fault = match seen {
        Seen::Messages { count: 0, .. } => {
            return Err(ApiError::invalid_request(
                "`messages` must contain at least one message",
                Some("messages"),
            ))
        }
        Seen::Messages { fault, .. } => fault,
        _ => {
            return Err(ApiError::invalid_request(
                "`messages` must be an array",
                Some("messages"),
            ))
        }
    };
    let Some((i, fault)) = fault else {
        return Ok(());
    };
    let param = |field: &str| format!("messages[{i}]{field}");
    Err(match fault {
        MessageFault::NotObject => ApiError::invalid_request(
            format!("`messages[{i}]` must be an object"),
            Some(&param("")),
        ),
        MessageFault::Role => ApiError::invalid_request(
            format!("`messages[{i}].role` must be one of: {}", ROLES.join(", ")),
            Some(&param(".role")),
        ),
        MessageFault::Part(j) => ApiError::invalid_request(
            format!(
                "`messages[{i}].content[{j}]` must be an object with a string \
                 `type` (and a string `text` for text parts)"
            ),
            Some(&param(&format!(".content[{j}]"))),
        ),
        MessageFault::Content => ApiError::invalid_request(
            format!("`messages[{i}].content` must be a string or an array of content parts"),
            Some(&param(".content")),
        ),
    })
}

/// Why a message is refused, in the order OpenAI checks.
#[derive(Clone, Copy, Debug)]
enum MessageFault {
    NotObject,
    Role,
    Part(usize),
    Content,
}

/// What the value being read is expected to be; everything else is only skimmed.
#[derive(Clone, Copy)]
enum Expect {
    Messages,
    Message,
    Content,
    Part,
    Any,
}

/// A content part's type whose `text` must be a string.
const TEXT_PART: &str = "text";

/// What was found where something was expected. One visitor reads every level, so the
/// module holds one copy of the JSON reader for it.
enum Seen {
    Null,
    /// A string, and the one of [`ROLES`] or [`TEXT_PART`] it equals.
    Text(Option<&'static str>),
    Messages {
        count: usize,
        /// The first refused message.
        fault: Option<(usize, MessageFault)>,
    },
    Message {
        role: Option<&'static str>,
        content: Content,
    },
    /// Content parts, and the first refused one.
    Parts(Option<usize>),
    Part {
        ok: bool,
    },
    Other,
}

#[derive(Clone, Copy)]
enum Content {
    Missing,
    Null,
    Text,
    Parts(Option<usize>),
    Other,
}

impl Seen {
    fn fault_as_message(self) -> Option<MessageFault> {
        let Seen::Message { role, content } = self else {
            return Some(MessageFault::NotObject);
        };
        let Some(role) = role.filter(|role| ROLES.contains(role)) else {
            return Some(MessageFault::Role);
        };
        match content {
            Content::Text | Content::Parts(None) => None,
            Content::Parts(Some(j)) => Some(MessageFault::Part(j)),
            // Assistant turns that only call tools, and tool/function results, may omit
            // content.
            Content::Missing | Content::Null
                if matches!(role, "assistant" | "tool" | "function") =>
            {
                None
            }
            _ => Some(MessageFault::Content),
        }
    }
}

struct Check(Expect);

impl<'de> DeserializeSeed<'de> for Check {
    type Value = Seen;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Seen, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
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
    fn visit_i64<E>(self, _: i64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_str<E>(self, text: &str) -> Result<Seen, E> {
        let word = ROLES
            .iter()
            .copied()
            .chain([TEXT_PART])
            .find(|word| *word == text);
        Ok(Seen::Text(word))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen, A::Error> {
        let element = match self.0 {
            Expect::Messages => Expect::Message,
            Expect::Content => Expect::Part,
            // Skipped values are still read as a parse into a tree would read them (escapes,
            // number range, nesting depth), so the tree built later cannot fail.
            _ => {
                while seq.next_element_seed(Check(Expect::Any))?.is_some() {}
                return Ok(Seen::Other);
            }
        };
        let mut count = 0usize;
        let mut first_fault = None;
        while let Some(seen) = seq.next_element_seed(Check(element))? {
            if first_fault.is_none() {
                first_fault = match (element, seen) {
                    (Expect::Message, seen) => seen.fault_as_message().map(|f| (count, f)),
                    (_, Seen::Part { ok: true }) => None,
                    _ => Some((count, MessageFault::Content)),
                };
            }
            count = count.saturating_add(1);
        }
        Ok(match element {
            Expect::Message => Seen::Messages {
                count,
                fault: first_fault,
            },
            _ => Seen::Parts(first_fault.map(|(j, _)| j)),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        let keys: &'static [&'static str] = match self.0 {
            Expect::Message => &["role", "content"],
            Expect::Part => &["type", "text"],
            _ => &[],
        };
        // Later keys win, as in a parsed object.
        let mut first = None;
        let mut second = None;
        while let Some(key) = map.next_key_seed(KeyAmong(keys))? {
            match key {
                Some(key) if Some(&key) == keys.first() => {
                    first = Some(map.next_value_seed(Check(Expect::Any))?);
                }
                Some(_) => {
                    let expect = match self.0 {
                        Expect::Message => Expect::Content,
                        _ => Expect::Any,
                    };
                    second = Some(map.next_value_seed(Check(expect))?);
                }
                None => {
                    map.next_value_seed(Check(Expect::Any))?;
                }
            }
        }
        Ok(match self.0 {
            Expect::Message => Seen::Message {
                role: match first {
                    Some(Seen::Text(word)) => word,
                    _ => None,
                },
                content: match second {
                    None => Content::Missing,
                    Some(Seen::Null) => Content::Null,
                    Some(Seen::Text(_)) => Content::Text,
                    Some(Seen::Parts(fault)) => Content::Parts(fault),
                    Some(_) => Content::Other,
                },
            },
            Expect::Part => Seen::Part {
                ok: match first {
                    Some(Seen::Text(Some(TEXT_PART))) => matches!(second, Some(Seen::Text(_))),
                    Some(Seen::Text(_)) => true,
                    _ => false,
                },
            },
            _ => Seen::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_both(v.to_string().as_bytes())
    }

    /// Parses with and without building the messages while checking them; both ways must
    /// accept and refuse alike, with the same errors and the same messages read.
    fn parse_both(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        let checked = ChatRequest::parse_with(bytes, false);
        let built = ChatRequest::parse_with(bytes, true);
        match (&checked, &built) {
            (Err(a), Err(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(bytes)),
            (Ok(a), Ok(b)) => {
                assert!(a.messages.get().is_none(), "checked only");
                assert!(b.messages.get().is_some(), "built while checked");
                assert_eq!(a.field("messages"), b.field("messages"));
                assert_eq!(a.messages_text().get(), b.messages_text().get());
                assert_eq!(a.upstream_body("u", &[]), b.upstream_body("u", &[]));
            }
            _ => panic!(
                "one way accepts, the other refuses: {}",
                String::from_utf8_lossy(bytes)
            ),
        }
        built
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
            let err = parse_both(bytes).unwrap_err();
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
        let r = parse_both(body.as_bytes()).unwrap();
        assert_eq!(r.messages_text().get(), text);
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(r.field("messages"), Some(&parsed));
        // A key repeated inside a message is kept as written; the parsed messages have the
        // last.
        let text = r#"[{"role": "user", "content": "a", "content": "b"}]"#;
        let body = format!(r#"{{"model": "v", "messages": {text}}}"#);
        let r = parse_both(body.as_bytes()).unwrap();
        assert_eq!(r.messages_text().get(), text);
        assert_eq!(r.field("messages").unwrap()[0]["content"], "b");
        // The sub-call carries the text, with the other fields in key order around it.
        let sub = String::from_utf8(r.upstream_body("u", &[])).unwrap();
        assert_eq!(sub, format!(r#"{{"messages":{text},"model":"u"}}"#));
        let text = r#"[{"role": "user", "content": "x"}]"#;
        let body = format!(r#"{{"temperature": 1, "messages": {text}, "a": 2, "model": "v"}}"#);
        let r = parse_both(body.as_bytes()).unwrap();
        let sub = String::from_utf8(r.upstream_body("u", &[])).unwrap();
        assert_eq!(
            sub,
            format!(r#"{{"a":2,"messages":{text},"model":"u","temperature":1}}"#)
        );
    }

    #[test]
    fn what_a_parse_refuses_is_refused() {
        // A skim lets these through; the check reads every value as a parse would, so the
        // tree the router and the prompts read later is always there.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let bodies = [
            r#"{"model": "m", "messages": [{"role": "user", "content": "\ud83d"}]}"#.to_string(),
            r#"{"model": "m", "messages": [{"role": "\ud83d", "content": "x"}]}"#.to_string(),
            r#"{"model": "m", "messages": [{"role": "user", "content": "x", "name": "\udc00"}]}"#
                .to_string(),
            r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]}"#
                .to_string(),
            r#"{"model": "m", "messages": [{"role": "user", "content": "x", "w": 1e400}]}"#.to_string(),
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}, 1e400]}"#.to_string(),
            format!(r#"{{"model": "m", "messages": [{{"role": "user", "content": "x", "d": {deep}}}]}}"#),
            format!(r#"{{"model": "m", "messages": [{{"role": "user", "content": {deep}}}]}}"#),
        ];
        for body in bodies {
            assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
            let err = parse_both(body.as_bytes()).unwrap_err();
            assert_eq!(err.code, Some("invalid_json"), "{body}");
        }
        // A body that is not JSON at all is invalid JSON, not a non-object.
        for bytes in [&b"[1,"[..], b"null x", b"\"a"] {
            assert_eq!(parse_both(bytes).unwrap_err().code, Some("invalid_json"));
        }
        for bytes in [&b"[1]"[..], b"null", b"\"a\""] {
            let err = parse_both(bytes).unwrap_err();
            assert_eq!(err.code, None);
            assert!(
                err.message.contains("must be a JSON object"),
                "{}",
                err.message
            );
        }
        // A surrogate pair is a character.
        let r = parse_both(
            r#"{"model": "m", "messages": [{"role": "user", "content": "\ud83d\ude00"}]}"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.field("messages").unwrap()[0]["content"], "😀");
    }

    #[test]
    fn messages_named_twice_are_the_last() {
        // As the parsed body of any upstream would have them.
        for body in [
            &br#"{"model": "v", "messages": [{"role": "user", "content": "a"}],
            "messages": [{"role": "user", "content": "b"}]}"#[..],
            // An escaped key is the same key.
            br#"{"model": "v", "messages": [{"role": "user", "content": "a"}],
            "m\u0065ssages": [{"role": "user", "content": "b"}]}"#,
        ] {
            let r = parse_both(body).unwrap();
            assert_eq!(
                r.messages_text().get(),
                r#"[{"role": "user", "content": "b"}]"#
            );
            assert_eq!(r.field("messages").unwrap()[0]["content"], "b");
        }
        // The last is the one checked.
        let body = br#"{"model": "v", "messages": [{"role": "user", "content": "a"}],
            "messages": [{"role": "wizard", "content": "b"}]}"#;
        let err = parse_both(body).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn messages_are_checked_as_written() {
        let ok = [
            json!([{"content": "x", "role": "user"}]),
            json!([{"role": "user", "content": [{"text": "hi", "type": "text"}]}]),
            json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
            json!([{"role": "tool", "content": null, "tool_call_id": "t"}]),
            json!([{"role": "function", "name": "f"}]),
            json!([{"role": "user", "content": 1, "content": "later wins"}]),
        ];
        for messages in ok {
            parse(json!({"model": "m", "messages": messages})).unwrap();
        }
        // Escapes are undone before a role is compared.
        parse_both(br#"{"model": "m", "messages": [{"role": "us\u0065r", "content": "x"}]}"#)
            .unwrap();
        // A key repeated inside a message: the last one is checked, read from the text or from
        // the tree (which keeps only the last).
        for accepted in [
            r#"[{"role": "wizard", "role": "user", "content": "x"}]"#,
            r#"[{"role": "user", "content": {"text": "x"}, "content": "later wins"}]"#,
            r#"[{"role": "user", "content": [{"type": 1}], "content": [{"type": "text", "text": "t"}]}]"#,
        ] {
            let body = format!(r#"{{"model": "m", "messages": {accepted}}}"#);
            parse_both(body.as_bytes()).unwrap();
        }
        for (refused, param) in [
            (
                r#"[{"role": "user", "role": "wizard", "content": "x"}]"#,
                "messages[0].role",
            ),
            (
                r#"[{"role": "user", "content": "x", "content": {"text": "x"}}]"#,
                "messages[0].content",
            ),
        ] {
            let body = format!(r#"{{"model": "m", "messages": {refused}}}"#);
            let err = parse_both(body.as_bytes()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{refused}");
        }
        let refused = [
            (json!([{"role": "user", "content": "x"}, 3]), "messages[1]"),
            (json!([{"role": "user", "content": "x"}, []]), "messages[1]"),
            (
                json!([{"role": "user", "content": "x"}, {"role": "text"}]),
                "messages[1].role",
            ),
            (
                json!([{"role": ["user"], "content": "x"}]),
                "messages[0].role",
            ),
            (
                json!([{"role": "system", "content": null}]),
                "messages[0].content",
            ),
            (
                json!([{"role": "user", "content": {"text": "x"}}]),
                "messages[0].content",
            ),
            (
                json!([{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}]),
                "messages[0].content[1]",
            ),
            (
                json!([{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]),
                "messages[0].content[0]",
            ),
            (
                json!([{"role": "user", "content": [{"type": 1}]}]),
                "messages[0].content[0]",
            ),
            (json!({"role": "user", "content": "x"}), "messages"),
            (json!(null), "messages"),
            // The first refused message is named, whatever follows.
            (
                json!([{"role": "user"}, 1, {"role": "wizard"}]),
                "messages[0].content",
            ),
        ];
        for (messages, param) in refused {
            let err = parse(json!({"model": "m", "messages": messages})).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{messages}");
        }
        let err = parse_both(
            b"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}",
        )
        .unwrap_err();
        assert_eq!(err.code, Some("invalid_json"), "invalid UTF-8 in a message");
        assert!(
            err.message.contains("invalid UTF-8 at byte 57"),
            "{}",
            err.message
        );
        // In any other field too: the body is checked whole before it is read.
        let err =
            parse_both(b"{\"model\": \"m\", \"user\": \"\xc3\", \"messages\": []}").unwrap_err();
        assert_eq!(err.code, Some("invalid_json"));
        assert!(err.message.contains("at byte 24"), "{}", err.message);
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
