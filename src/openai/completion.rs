//! The one `chat.completion` a client gets back, whatever happened behind the gateway.

use super::upstream::UpstreamCompletion;
use super::usage::Usage;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Top-level fields of an upstream reply that are carried over. The rest (`id`, `model`,
/// `usage`...) belong to the gateway, and provider extensions (vLLM's `kv_transfer_params`,
/// routing details) could reveal what stands behind the virtual model.
pub(crate) const CARRIED_FIELDS: &[&str] = &["system_fingerprint", "service_tier"];

/// A reply's first buffer: room for a short answer and its envelope, so it is seldom regrown.
const REPLY_BYTES: usize = 1024;

#[derive(Clone, Debug)]
pub struct FinalCompletion {
    pub id: String,
    pub created: u64,
    pub model: String,
    choices: Choices,
    pub usage: Usage,
    pub extra: Map<String, Value>,
}

/// `chat.completion` choices, each with `index`, `message`, `logprobs`, `finish_reason`.
#[derive(Clone, Debug)]
enum Choices {
    /// The upstream's text, spliced into the reply as it is.
    AsSent {
        text: Box<RawValue>,
        /// Some choice carries logprobs (to set to null when the client did not ask for
        /// them). A choice the upstream sent without the key goes out without it: adding it
        /// would mean parsing and serialising every answer's choices again.
        logprobs: bool,
    },
    Values(Vec<Value>),
}

impl FinalCompletion {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<Value>,
        usage: Usage,
        extra: Map<String, Value>,
    ) -> Self {
        FinalCompletion {
            id,
            created,
            model,
            choices: Choices::Values(choices),
            usage,
            extra,
        }
    }

    /// The upstream's choices as sent (finish reasons, tool calls and logprobs included), under
    /// the gateway's id, model name and summed usage.
    pub fn from_upstream(
        upstream: UpstreamCompletion,
        id: String,
        created: u64,
        model: String,
        usage: Usage,
    ) -> Self {
        let logprobs = upstream.choices().iter().any(|c| c.logprobs.is_some());
        let text = upstream.choices_text().to_owned();
        // Inserted one by one: collecting into the map would sort them first, and that sort
        // is 6 KB of the module for a handful of fields.
        let mut extra = Map::new();
        for (field, value) in upstream.carried {
            extra.insert(field.to_string(), value);
        }
        FinalCompletion {
            id,
            created,
            model,
            choices: Choices::AsSent { text, logprobs },
            usage,
            extra,
        }
    }

    /// The choices as JSON values (read from the upstream's text when they were not edited).
    pub fn choices(&self) -> Cow<'_, [Value]> {
        match &self.choices {
            Choices::Values(values) => Cow::Borrowed(values),
            // Text the upstream parser accepted is an array of JSON values.
            Choices::AsSent { text, .. } => {
                Cow::Owned(serde_json::from_str(text.get()).unwrap_or_default())
            }
        }
    }

    /// Sets token logprobs to null in every choice when some choice carries them (they were
    /// requested by the gateway); choices as sent otherwise.
    pub fn clear_logprobs(&mut self) {
        if let Choices::AsSent {
            logprobs: false, ..
        } = self.choices
        {
            return;
        }
        let mut choices = self.choices().into_owned();
        for choice in &mut choices {
            if let Some(obj) = choice.as_object_mut() {
                obj.insert("logprobs".into(), Value::Null);
            }
        }
        self.choices = Choices::Values(choices);
    }

    /// The JSON reply, with the optional `looper_trace` object. Serialised straight from
    /// the fields: the choices are not copied into a new object first.
    pub fn to_json(&self, trace: Option<Value>) -> Vec<u8> {
        let reply = Reply {
            completion: self,
            trace: trace.as_ref(),
        };
        let text = match &self.choices {
            Choices::AsSent { text, .. } => text.get().len(),
            Choices::Values(_) => 0,
        };
        let mut body = Vec::with_capacity(REPLY_BYTES.saturating_add(text));
        // A map of JSON values always serialises; an empty body would still be a reply.
        match serde_json::to_writer(&mut body, &reply) {
            Ok(()) => body,
            Err(_) => Vec::new(),
        }
    }
}

impl Serialize for Choices {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Choices::AsSent { text, .. } => text.serialize(serializer),
            Choices::Values(values) => values.serialize(serializer),
        }
    }
}

struct Reply<'a> {
    completion: &'a FinalCompletion,
    trace: Option<&'a Value>,
}

impl Serialize for Reply<'_> {
    /// Keys in alphabetical order, as a JSON object of this crate always had them; the
    /// carried fields all sort between `object` and `usage`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.completion;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("choices", &c.choices)?;
        map.serialize_entry("created", &c.created)?;
        map.serialize_entry("id", &c.id)?;
        if let Some(trace) = self.trace {
            map.serialize_entry("looper_trace", trace)?;
        }
        map.serialize_entry("model", &c.model)?;
        map.serialize_entry("object", "chat.completion")?;
        for (key, value) in &c.extra {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("usage", &c.usage)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upstream(choices: &str) -> UpstreamCompletion {
        let body = format!(r#"{{"choices": {choices}}}"#);
        crate::openai::upstream::parse_completion(body.as_bytes()).unwrap()
    }

    fn final_of(choices: &str) -> FinalCompletion {
        FinalCompletion::from_upstream(
            upstream(choices),
            "id".into(),
            1,
            "v".into(),
            Usage::default(),
        )
    }

    #[test]
    fn upstream_choices_reach_the_reply_as_sent() {
        // Spacing, escapes and a key repeated inside a choice are the upstream's own text.
        let choices = r#"[{"index": 0,  "message": {"content": "\u00e9", "content": "b"},
            "logprobs": null, "finish_reason": "stop"}]"#;
        let mut completion = final_of(choices);
        completion.clear_logprobs();
        let reply = String::from_utf8(completion.to_json(None)).unwrap();
        assert!(reply.starts_with(&format!(r#"{{"choices":{choices},"created":1"#)));
        let value: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(value["choices"][0]["message"]["content"], "b");
        assert_eq!(completion.choices()[0]["message"]["content"], "b");
    }

    #[test]
    fn logprobs_the_client_did_not_ask_for_are_cleared() {
        let choices = r#"[{"message": {"content": "B"}, "logprobs": {"content": []}},
            {"message": {"content": "C"}}]"#;
        let mut completion = final_of(choices);
        completion.clear_logprobs();
        let value: Value = serde_json::from_slice(&completion.to_json(None)).unwrap();
        assert_eq!(value["choices"][0]["logprobs"], Value::Null);
        assert_eq!(value["choices"][0]["message"]["content"], "B");
        assert_eq!(value["choices"][1]["logprobs"], Value::Null);
        assert_eq!(value["choices"][1]["message"]["content"], "C");
        // Choices without logprobs go out as the upstream sent them, the key absent included.
        let mut completion = final_of(r#"[{"message": {"content": "B"}}]"#);
        completion.clear_logprobs();
        let value: Value = serde_json::from_slice(&completion.to_json(None)).unwrap();
        assert!(value["choices"][0].get("logprobs").is_none());
        // Kept when the client asked for them.
        let completion = final_of(choices);
        let value: Value = serde_json::from_slice(&completion.to_json(None)).unwrap();
        assert_eq!(value["choices"][0]["logprobs"]["content"], json!([]));
    }

    #[test]
    fn reply_has_every_field_once_in_key_order() {
        let mut extra = Map::new();
        extra.insert("system_fingerprint".into(), json!("fp"));
        extra.insert("service_tier".into(), json!("default"));
        let completion = FinalCompletion::new(
            "chatcmpl-1".into(),
            7,
            "v/m".into(),
            vec![json!({"index": 0, "message": {"role": "assistant", "content": "hi"}})],
            Usage::default(),
            extra,
        );
        for trace in [None, Some(json!({"steps": []}))] {
            let bytes = completion.to_json(trace.clone());
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            let keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(keys, sorted, "keys in order");
            assert_eq!(value["object"], "chat.completion");
            assert_eq!(value["id"], "chatcmpl-1");
            assert_eq!(value["service_tier"], "default");
            assert_eq!(value["choices"][0]["message"]["content"], "hi");
            assert_eq!(value.get("looper_trace"), trace.as_ref());
            // Parsing into a map would hide a repeated key: count them in the text.
            assert_eq!(
                String::from_utf8(bytes)
                    .unwrap()
                    .matches("\"model\"")
                    .count(),
                1
            );
        }
    }
}
