//! Error responses, in the shape of the model's [`Dialect`]: OpenAI's
//! `{"error": {message, type, param, code}}` with a string (or null) code,
//! or llama.cpp's `{"error": {code, message, type, ...}}` with the HTTP
//! status as an integer code.

use serde_json::{json, Map, Value};

use crate::dialect::Dialect;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Extra integer fields of the llama.cpp body (its context overflow
    /// error's `n_prompt_tokens` and `n_ctx`); not in the OpenAI body.
    pub extra: Vec<(&'static str, u64)>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            extra: Vec::new(),
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            param: param.map(str::to_string),
            ..ApiError::new(400, "invalid_request_error", message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn not_found(path: &str) -> Self {
        ApiError::new(
            404,
            "invalid_request_error",
            format!("unknown route `{path}`"),
        )
        .with_code("not_found")
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            param: Some("model".to_string()),
            ..ApiError::new(
                404,
                "invalid_request_error",
                format!("The model `{model}` does not exist"),
            )
            .with_code("model_not_found")
        }
    }

    /// The error a simulated status fault returns.
    pub fn simulated(status: u16) -> Self {
        match status {
            400 => ApiError::invalid("simulated bad request", None).with_code("simulated_fault"),
            429 => ApiError::new(429, "requests", "simulated rate limit; retry after 1s")
                .with_code("rate_limit_exceeded"),
            502 => {
                ApiError::new(502, "server_error", "simulated bad gateway").with_code("bad_gateway")
            }
            503 => ApiError::new(503, "server_error", "simulated overload").with_code("overloaded"),
            s => ApiError::new(s, "server_error", "simulated internal server error"),
        }
    }

    /// The 400 for a prompt of `n_prompt` tokens that does not fit in a
    /// context of `n_ctx`, worded as `dialect`'s real server words it.
    pub fn context_overflow(dialect: Dialect, n_prompt: u64, n_ctx: u64) -> Self {
        match dialect {
            Dialect::OpenAi => ApiError::invalid(
                format!(
                    "This model's maximum context length is {n_ctx} tokens. However, your \
                     messages resulted in {n_prompt} tokens. Please reduce the length of the \
                     messages."
                ),
                Some("messages"),
            )
            .with_code("context_length_exceeded"),
            Dialect::LlamaCpp => ApiError {
                extra: vec![("n_prompt_tokens", n_prompt), ("n_ctx", n_ctx)],
                ..ApiError::new(
                    400,
                    "exceed_context_size_error",
                    format!(
                        "request ({n_prompt} tokens) exceeds the available context size \
                         ({n_ctx} tokens), try increasing it"
                    ),
                )
            },
        }
    }

    /// The body in `dialect`'s shape.
    pub fn body_in(&self, dialect: Dialect) -> Vec<u8> {
        match dialect {
            Dialect::OpenAi => self.body(),
            Dialect::LlamaCpp => {
                let mut e = Map::new();
                e.insert("code".into(), json!(self.status));
                e.insert("message".into(), json!(self.message));
                e.insert("type".into(), json!(self.kind));
                for (k, v) in &self.extra {
                    e.insert((*k).into(), json!(v));
                }
                let mut v = Map::new();
                v.insert("error".into(), Value::Object(e));
                serde_json::to_vec(&v).unwrap_or_default()
            }
        }
    }

    /// The OpenAI body.
    pub fn body(&self) -> Vec<u8> {
        let v = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap_or_default()
    }

    #[test]
    fn openai_body_is_unchanged() {
        let e = ApiError::invalid("`n` must be at least 1", Some("n"));
        assert_eq!(
            e.body(),
            br#"{"error":{"code":null,"message":"`n` must be at least 1","param":"n","type":"invalid_request_error"}}"#
        );
        assert_eq!(e.body_in(Dialect::OpenAi), e.body());
    }

    #[test]
    fn llama_cpp_bodies_have_integer_codes() {
        let e = ApiError::invalid("`n` must be at least 1", Some("n")).with_code("x");
        assert_eq!(
            parse(&e.body_in(Dialect::LlamaCpp)),
            json!({"error": {"code": 400, "message": "`n` must be at least 1",
                             "type": "invalid_request_error"}})
        );
        assert_eq!(
            parse(&ApiError::simulated(503).body_in(Dialect::LlamaCpp))["error"]["code"],
            503
        );
    }

    #[test]
    fn context_overflow_in_both_dialects() {
        assert_eq!(
            parse(
                &ApiError::context_overflow(Dialect::LlamaCpp, 30, 16).body_in(Dialect::LlamaCpp)
            ),
            json!({"error": {"code": 400,
                "message": "request (30 tokens) exceeds the available context size (16 tokens), try increasing it",
                "type": "exceed_context_size_error", "n_prompt_tokens": 30, "n_ctx": 16}})
        );
        let e = ApiError::context_overflow(Dialect::OpenAi, 30, 16);
        assert_eq!(e.status, 400);
        assert_eq!(
            parse(&e.body_in(Dialect::OpenAi)),
            json!({"error": {
                "message": "This model's maximum context length is 16 tokens. However, your messages resulted in 30 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error", "param": "messages",
                "code": "context_length_exceeded"}})
        );
    }
}
