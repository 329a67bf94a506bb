//! The one `chat.completion` a client gets back, whatever happened behind the gateway.

use super::upstream::UpstreamCompletion;
use super::usage::Usage;
use serde_json::{json, Map, Value};

/// Top-level fields of an upstream reply that are carried over. The rest (`id`, `model`,
/// `usage`...) belong to the gateway, and provider extensions (vLLM's `kv_transfer_params`,
/// routing details) could reveal what stands behind the virtual model.
const CARRIED_FIELDS: &[&str] = &["system_fingerprint", "service_tier"];

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

    /// The JSON reply, with the optional `looper_trace` object.
    pub fn to_json(&self, trace: Option<Value>) -> Vec<u8> {
        let mut obj = self.extra.clone();
        obj.insert("id".into(), json!(self.id));
        obj.insert("object".into(), json!("chat.completion"));
        obj.insert("created".into(), json!(self.created));
        obj.insert("model".into(), json!(self.model));
        obj.insert("choices".into(), Value::Array(self.choices.clone()));
        obj.insert("usage".into(), self.usage.to_json());
        if let Some(trace) = trace {
            obj.insert("looper_trace".into(), trace);
        }
        Value::Object(obj).to_string().into_bytes()
    }
}
