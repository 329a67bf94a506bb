//! OpenAI-style error replies: `{"error":{"message","type","param","code"}}` with a status that
//! says who is at fault. Messages are written by the gateway: they never quote upstream bodies,
//! cluster names or credentials.

use serde_json::json;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            param: param.map(str::to_string),
            message: message.into(),
        }
    }

    pub fn invalid_json(detail: impl std::fmt::Display) -> Self {
        ApiError {
            code: Some("invalid_json"),
            ..ApiError::invalid_request(
                format!("the request body is not valid JSON: {detail}"),
                None,
            )
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: 404,
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: Some("model".to_string()),
            message: format!("The model `{}` does not exist.", truncate(model, 256)),
        }
    }

    pub fn body_too_large(limit: usize) -> Self {
        ApiError {
            status: 413,
            kind: "invalid_request_error",
            code: Some("request_too_large"),
            param: None,
            message: format!("the request body exceeds the gateway limit of {limit} bytes"),
        }
    }

    pub fn upstream_rejected(status: u16) -> Self {
        ApiError {
            status: if status == 413 { 413 } else { 400 },
            kind: "invalid_request_error",
            code: Some("upstream_rejected_request"),
            param: None,
            message: format!("the upstream model rejected the request (HTTP {status})"),
        }
    }

    /// Every model that was asked said the prompt does not fit its context window (OpenAI's
    /// own status and code for this).
    pub fn context_length_exceeded() -> Self {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: Some("context_length_exceeded"),
            param: Some("messages".to_string()),
            message: "the request does not fit the context window of the models it needs \
                      (a recipe's sub-calls add the other answers to the prompt); shorten the \
                      messages or lower max_tokens"
                .to_string(),
        }
    }

    pub fn all_upstreams_failed(detail: &str) -> Self {
        ApiError {
            status: 502,
            kind: "upstream_error",
            code: Some("upstream_failed"),
            param: None,
            message: format!("no upstream model produced a usable answer: {detail}"),
        }
    }

    pub fn rate_limited() -> Self {
        ApiError {
            status: 429,
            kind: "rate_limit_error",
            code: Some("rate_limit_exceeded"),
            param: None,
            message: "every upstream model is rate limited; retry later".to_string(),
        }
    }

    /// The gateway sheds load: the client should retry after the `retry-after` it sends.
    pub fn overloaded() -> Self {
        ApiError {
            status: 503,
            kind: "server_error",
            code: Some("gateway_overloaded"),
            param: None,
            message: "the gateway is running as many requests as it may; retry later".to_string(),
        }
    }

    pub fn deadline_exceeded(deadline_ms: u64) -> Self {
        ApiError {
            status: 504,
            kind: "timeout_error",
            code: Some("deadline_exceeded"),
            param: None,
            message: format!("the request deadline of {deadline_ms} ms passed before an answer"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: 500,
            kind: "server_error",
            code: Some("internal_error"),
            param: None,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        body.to_string().into_bytes()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary (for echoing client input safely).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_openai_shape() {
        let err = ApiError::invalid_request("bad", Some("messages"));
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
