//! Wire dialects: how a model's responses look on the wire (the per-model
//! `dialect` key). `openai` is the default; `llama_cpp` reproduces what
//! llama.cpp's `llama-server` sends (measured against build 11434 serving
//! SmolLM2-135M): a `system_fingerprint`, `timings`, token ids in logprobs,
//! an end-of-sequence token, and integer error codes.

use serde_json::{json, Value};

use crate::completion::Usage;
use crate::rng::Fnv64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    /// The OpenAI API, as the simulator always spoke it.
    #[default]
    OpenAi,
    /// llama.cpp's `llama-server`.
    LlamaCpp,
}

impl Dialect {
    /// What a config error lists as the valid names.
    pub const NAMES: &'static str = "openai or llama_cpp";

    pub fn parse(name: &str) -> Option<Dialect> {
        match name {
            "openai" => Some(Dialect::OpenAi),
            "llama_cpp" => Some(Dialect::LlamaCpp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::LlamaCpp => "llama_cpp",
        }
    }

    /// Whether a natural end of the answer generates an end-of-sequence
    /// token (which `usage.completion_tokens` counts).
    pub fn has_eos(self) -> bool {
        self == Dialect::LlamaCpp
    }
}

/// `system_fingerprint` of every llama.cpp response (its build info).
pub const SYSTEM_FINGERPRINT: &str = "b0-unknown";
/// The token id of SmolLM2's end-of-sequence token `<|im_end|>`.
pub const EOS_ID: u64 = 2;
/// SmolLM2's vocabulary size: token ids are below it.
pub const VOCAB_SIZE: u64 = 49152;

/// A stable token id for `token`: [`EOS_ID`] for the (empty) end-of-sequence
/// token, else a hash of the token in `3..VOCAB_SIZE` (so never the EOS id).
pub fn token_id(token: &str) -> u64 {
    if token.is_empty() {
        return EOS_ID;
    }
    let h = Fnv64::new()
        .bytes(b"looper-sim/token-id")
        .str(token)
        .finish();
    3 + h % (VOCAB_SIZE - 3)
}

/// llama-server's `timings` object; the simulator takes 1 ms per phase.
pub fn timings(usage: Usage) -> Value {
    json!({
        "cache_n": 0,
        "prompt_n": usage.prompt_tokens,
        "prompt_ms": 1.0,
        "prompt_per_token_ms": 1.0,
        "prompt_per_second": 1000.0,
        "predicted_n": usage.completion_tokens,
        "predicted_ms": 1.0,
        "predicted_per_token_ms": 1.0,
        "predicted_per_second": 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in [Dialect::OpenAi, Dialect::LlamaCpp] {
            assert_eq!(Dialect::parse(d.name()), Some(d));
        }
        assert_eq!(Dialect::parse("llama.cpp"), None);
        assert_eq!(Dialect::default(), Dialect::OpenAi);
    }

    #[test]
    fn token_ids_are_stable_and_in_range() {
        assert_eq!(token_id(""), EOS_ID);
        for t in ["[m]", " café", "\n", " 🙂", "x"] {
            let id = token_id(t);
            assert_eq!(id, token_id(t));
            assert!((3..VOCAB_SIZE).contains(&id), "{t}: {id}");
        }
        assert_ne!(token_id(" a"), token_id(" b"));
    }
}
