//! Token usage, summed over every sub-call that reported it.

use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`, when any sub-call reported it.
    pub cached_tokens: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`, when any sub-call reported it.
    pub reasoning_tokens: Option<u64>,
}

fn add_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.cached_tokens = add_opt(self.cached_tokens, other.cached_tokens);
        self.reasoning_tokens = add_opt(self.reasoning_tokens, other.reasoning_tokens);
    }

    /// Reads an OpenAI `usage` object. Counts must be non-negative integers; a missing
    /// `total_tokens` is computed. Anything else means "no usage reported".
    pub fn from_json(value: &Value) -> Option<Usage> {
        let obj = value.as_object()?;
        let prompt_tokens = obj.get("prompt_tokens")?.as_u64()?;
        let completion_tokens = obj.get("completion_tokens")?.as_u64()?;
        let total_tokens = match obj.get("total_tokens") {
            Some(v) => v.as_u64()?,
            None => prompt_tokens.saturating_add(completion_tokens),
        };
        let detail = |outer: &str, inner: &str| {
            obj.get(outer)
                .and_then(|d| d.get(inner))
                .and_then(Value::as_u64)
        };
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
            cached_tokens: detail("prompt_tokens_details", "cached_tokens"),
            reasoning_tokens: detail("completion_tokens_details", "reasoning_tokens"),
        })
    }

    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("prompt_tokens".into(), json!(self.prompt_tokens));
        obj.insert("completion_tokens".into(), json!(self.completion_tokens));
        obj.insert("total_tokens".into(), json!(self.total_tokens));
        if let Some(cached) = self.cached_tokens {
            obj.insert(
                "prompt_tokens_details".into(),
                json!({ "cached_tokens": cached }),
            );
        }
        if let Some(reasoning) = self.reasoning_tokens {
            obj.insert(
                "completion_tokens_details".into(),
                json!({ "reasoning_tokens": reasoning }),
            );
        }
        Value::Object(obj)
    }
}

/// The same object as [`Usage::to_json`], written without building it first (keys in the
/// order a JSON object of this crate has them).
impl serde::Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Detail(&'static str, u64);
        impl serde::Serialize for Detail {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(self.0, &self.1)?;
                map.end()
            }
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("completion_tokens", &self.completion_tokens)?;
        if let Some(reasoning) = self.reasoning_tokens {
            map.serialize_entry(
                "completion_tokens_details",
                &Detail("reasoning_tokens", reasoning),
            )?;
        }
        map.serialize_entry("prompt_tokens", &self.prompt_tokens)?;
        if let Some(cached) = self.cached_tokens {
            map.serialize_entry("prompt_tokens_details", &Detail("cached_tokens", cached))?;
        }
        map.serialize_entry("total_tokens", &self.total_tokens)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn serialises_as_its_json_object() {
        let all = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
            cached_tokens: Some(4),
            reasoning_tokens: Some(5),
        };
        for usage in [all, Usage::default()] {
            assert_eq!(
                serde_json::to_string(&usage).unwrap(),
                usage.to_json().to_string()
            );
        }
    }
    use super::*;

    #[test]
    fn parses_and_sums_with_details() {
        let a = Usage::from_json(&json!({"prompt_tokens": 10, "completion_tokens": 5,
            "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}}))
        .unwrap();
        let b = Usage::from_json(&json!({"prompt_tokens": 1, "completion_tokens": 2})).unwrap();
        assert_eq!(b.total_tokens, 3);
        let mut sum = Usage::default();
        sum.add(&a);
        sum.add(&b);
        assert_eq!(
            (sum.prompt_tokens, sum.completion_tokens, sum.total_tokens),
            (11, 7, 18)
        );
        assert_eq!(sum.cached_tokens, Some(4));
        assert_eq!(sum.reasoning_tokens, None);
        assert_eq!(sum.to_json()["prompt_tokens_details"]["cached_tokens"], 4);
    }

    #[test]
    fn rejects_negative_or_missing_counts() {
        assert!(Usage::from_json(&json!({"prompt_tokens": -1, "completion_tokens": 2})).is_none());
        assert!(Usage::from_json(&json!({"prompt_tokens": 1})).is_none());
        assert!(Usage::from_json(&json!("x")).is_none());
    }

    #[test]
    fn sums_saturate() {
        let mut a = Usage {
            prompt_tokens: u64::MAX,
            ..Usage::default()
        };
        a.add(&Usage {
            prompt_tokens: 5,
            ..Usage::default()
        });
        assert_eq!(a.prompt_tokens, u64::MAX);
    }
}
