//! The one `chat.completion` a client gets back, whatever happened behind the gateway.

use super::upstream::UpstreamCompletion;
use super::usage::Usage;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// Top-level fields of an upstream reply that are carried over. The rest (`id`, `model`,
/// `usage`...) belong to the gateway, and provider extensions (vLLM's `kv_transfer_params`,
/// routing details) could reveal what stands behind the virtual model.
pub(crate) const CARRIED_FIELDS: &[&str] = &["system_fingerprint", "service_tier"];

/// A reply's first buffer: room for a short answer and its envelope, so it is seldom regrown.
const REPLY_BYTES: usize = 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct FinalCompletion {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// `chat.completion` choices, each with `index`, `message`, `logprobs`, `finish_reason`.
    pub choices: Vec<Value>,
    pub usage: Usage,
    pub extra: Map<String, Value>,
}

impl FinalCompletion {
    /// The upstream's choices as sent (finish reasons, tool calls and logprobs included), under
    /// the gateway's id, model name and summed usage.
    pub fn from_upstream(
        upstream: UpstreamCompletion,
        id: String,
        created: u64,
        model: String,
        usage: Usage,
    ) -> Self {
        let mut body = upstream.body;
        let choices = match body.remove("choices") {
            Some(Value::Array(choices)) => choices,
            _ => Vec::new(),
        };
        let extra = CARRIED_FIELDS
            .iter()
            .filter_map(|field| Some(((*field).to_string(), body.remove(*field)?)))
            .filter(|(_, value)| !value.is_null())
            .collect();
        FinalCompletion {
            id,
            created,
            model,
            choices,
            usage,
            extra,
        }
    }

    /// Removes token logprobs from every choice (they were requested by the gateway).
    pub fn clear_logprobs(&mut self) {
        for choice in &mut self.choices {
            if let Some(obj) = choice.as_object_mut() {
                obj.insert("logprobs".into(), Value::Null);
            }
        }
    }

    /// The JSON reply, with the optional `looper_trace` object. Serialised straight from
    /// the fields: the choices are not copied into a new object first.
    pub fn to_json(&self, trace: Option<Value>) -> Vec<u8> {
        let reply = Reply {
            completion: self,
            trace: trace.as_ref(),
        };
        let mut body = Vec::with_capacity(REPLY_BYTES);
        // A map of JSON values always serialises; an empty body would still be a reply.
        match serde_json::to_writer(&mut body, &reply) {
            Ok(()) => body,
            Err(_) => Vec::new(),
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
        map.serialize_entry("usage", &c.usage.to_json())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reply_has_every_field_once_in_key_order() {
        let mut extra = Map::new();
        extra.insert("system_fingerprint".into(), json!("fp"));
        extra.insert("service_tier".into(), json!("default"));
        let completion = FinalCompletion {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "v/m".into(),
            choices: vec![json!({"index": 0, "message": {"role": "assistant", "content": "hi"}})],
            usage: Usage::default(),
            extra,
        };
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
