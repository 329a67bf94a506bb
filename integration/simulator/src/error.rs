//! OpenAI-style error responses.

use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
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
