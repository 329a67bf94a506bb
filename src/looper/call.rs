//! Sub-calls: what the host reports back, and what that means.

use crate::openai::upstream::{
    is_context_overflow, parse_completion, usage_in, UpstreamCompletion,
};
use crate::openai::Usage;

/// A sub-call of one request; allocated by the looper, independent of host tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u32);

/// What the host reports for a dispatched call, before interpretation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// Response headers arrived. Envoy reports its own timeout as `504` and a connect failure
    /// as `503`, each with a fixed body.
    Response { status: u16, body: Vec<u8> },
    /// The body was larger than the configured cap and was not read.
    BodyTooLarge { status: u16, size: usize },
    /// The stream was reset (no headers at all).
    Reset,
    /// The host refused to start the call (unknown cluster, missing pseudo-header).
    Rejected,
}

/// Why a call did not produce a usable completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A non-2xx status sent by the upstream.
    Status(u16),
    /// The upstream's 400 (or 413) says the prompt does not fit its context window. Another
    /// model may have a larger one, so this is not the client's error until every model said it.
    ContextOverflow(u16),
    /// Envoy's own timeout for the call (`504 upstream request timeout`).
    Timeout,
    /// Envoy could not connect (`503 upstream connect error`).
    Connect,
    Reset,
    Rejected,
    /// A 2xx body that is not a usable chat completion.
    InvalidBody(&'static str),
    TooLarge,
    /// Never started: no time was left before its deadline.
    Skipped,
}

impl FailureKind {
    /// Failures that say the request itself is wrong: trying another model will not help.
    pub fn is_client_error(&self) -> bool {
        matches!(self, FailureKind::Status(400 | 413 | 422))
    }

    /// A short stable name, used in metrics and traces.
    pub fn name(&self) -> &'static str {
        match self {
            FailureKind::Status(_) => "http_error",
            FailureKind::ContextOverflow(_) => "context_overflow",
            FailureKind::Timeout => "timeout",
            FailureKind::Connect => "connect_error",
            FailureKind::Reset => "reset",
            FailureKind::Rejected => "rejected",
            FailureKind::InvalidBody(_) => "invalid_response",
            FailureKind::TooLarge => "too_large",
            FailureKind::Skipped => "skipped",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FailureKind::Status(s) => format!("upstream answered HTTP {s}"),
            FailureKind::ContextOverflow(s) => {
                format!("upstream answered HTTP {s}: the prompt exceeds its context window")
            }
            FailureKind::Timeout => "timed out".to_string(),
            FailureKind::Connect => "could not connect".to_string(),
            FailureKind::Reset => "connection reset".to_string(),
            FailureKind::Rejected => "call could not be started".to_string(),
            FailureKind::InvalidBody(why) => format!("invalid response: {why}"),
            FailureKind::TooLarge => "response too large".to_string(),
            FailureKind::Skipped => "not started: no time left".to_string(),
        }
    }
}

/// Outcome names for every kind, in metric order (`ok` first).
pub const OUTCOME_NAMES: &[&str] = &[
    "ok",
    "http_error",
    "context_overflow",
    "timeout",
    "connect_error",
    "reset",
    "rejected",
    "invalid_response",
    "too_large",
];

/// An interpreted call result.
#[derive(Clone, Debug, PartialEq)]
pub enum CallOutcome {
    Ok(UpstreamCompletion),
    Failed {
        kind: FailureKind,
        /// Usage the upstream reported even though the call failed; it is still billed.
        usage: Option<Usage>,
    },
}

impl CallOutcome {
    pub fn usage(&self) -> Option<&Usage> {
        match self {
            CallOutcome::Ok(c) => c.usage.as_ref(),
            CallOutcome::Failed { usage, .. } => usage.as_ref(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            CallOutcome::Ok(_) => "ok",
            CallOutcome::Failed { kind, .. } => kind.name(),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CallOutcome::Ok(_) => Some(200),
            CallOutcome::Failed {
                kind: FailureKind::Status(s) | FailureKind::ContextOverflow(s),
                ..
            } => Some(*s),
            CallOutcome::Failed { .. } => None,
        }
    }
}

const ENVOY_TIMEOUT_BODY: &[u8] = b"upstream request timeout";
const ENVOY_CONNECT_BODY: &[u8] = b"upstream connect error";

/// Envoy's reset reasons (`... reset reason: <reason>`) that mean the upstream accepted the
/// connection and then dropped or broke the stream; any other (connection failure or timeout,
/// overflow) means no connection was made.
const ENVOY_STREAM_RESETS: &[&[u8]] = &[
    b"connection termination",
    b"remote reset",
    b"local reset",
    b"protocol error",
];

fn envoy_reset_kind(body: &[u8]) -> FailureKind {
    let reason = body
        .windows(b"reset reason: ".len())
        .position(|w| w == b"reset reason: ")
        .and_then(|at| body.get(at + b"reset reason: ".len()..))
        .unwrap_or_default();
    if ENVOY_STREAM_RESETS.iter().any(|r| reason.starts_with(r)) {
        FailureKind::Reset
    } else {
        FailureKind::Connect
    }
}

pub fn interpret(result: CallResult) -> CallOutcome {
    match result {
        CallResult::Response { status, body } if (200..300).contains(&status) => {
            match parse_completion(&body) {
                Ok(completion) => CallOutcome::Ok(completion),
                Err(invalid) => CallOutcome::Failed {
                    kind: FailureKind::InvalidBody(invalid.reason),
                    usage: invalid.usage,
                },
            }
        }
        CallResult::Response { status, body } => {
            let kind = if status == 504 && body.starts_with(ENVOY_TIMEOUT_BODY) {
                FailureKind::Timeout
            } else if status == 503 && body.starts_with(ENVOY_CONNECT_BODY) {
                envoy_reset_kind(&body)
            } else if matches!(status, 400 | 413) && is_context_overflow(&body) {
                FailureKind::ContextOverflow(status)
            } else {
                FailureKind::Status(status)
            };
            CallOutcome::Failed {
                kind,
                usage: usage_in(&body),
            }
        }
        CallResult::BodyTooLarge { .. } => CallOutcome::Failed {
            kind: FailureKind::TooLarge,
            usage: None,
        },
        CallResult::Reset => CallOutcome::Failed {
            kind: FailureKind::Reset,
            usage: None,
        },
        CallResult::Rejected => CallOutcome::Failed {
            kind: FailureKind::Rejected,
            usage: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> CallOutcome {
        interpret(CallResult::Response {
            status,
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn envoy_synthesized_failures_are_recognised() {
        assert_eq!(response(504, "upstream request timeout").name(), "timeout");
        assert_eq!(
            response(
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 remote connection failure"
            )
            .name(),
            "connect_error"
        );
        // The upstream accepted the connection, then closed it before its headers.
        assert_eq!(
            response(
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection termination"
            )
            .name(),
            "reset"
        );
        assert_eq!(
            response(
                503,
                "upstream connect error or disconnect/reset before headers"
            )
            .name(),
            "connect_error"
        );
        assert_eq!(response(504, "gateway timeout").name(), "http_error");
        assert_eq!(response(503, "busy").status(), Some(503));
        assert_eq!(interpret(CallResult::Reset).name(), "reset");
        assert_eq!(interpret(CallResult::Rejected).name(), "rejected");
    }

    #[test]
    fn bad_2xx_bodies_are_invalid_responses() {
        assert_eq!(response(200, "{\"choices\":[]}").name(), "invalid_response");
        assert_eq!(response(200, "garbage").name(), "invalid_response");
    }

    #[test]
    fn only_request_errors_stop_failover() {
        assert!(FailureKind::Status(400).is_client_error());
        assert!(FailureKind::Status(422).is_client_error());
        for kind in [
            FailureKind::Status(429),
            FailureKind::Status(401),
            FailureKind::Status(500),
            FailureKind::Timeout,
            FailureKind::Reset,
        ] {
            assert!(!kind.is_client_error());
        }
    }

    #[test]
    fn every_failure_name_has_a_metric_slot() {
        for kind in [
            FailureKind::Status(500),
            FailureKind::Timeout,
            FailureKind::Connect,
            FailureKind::Reset,
            FailureKind::Rejected,
            FailureKind::InvalidBody(""),
            FailureKind::TooLarge,
        ] {
            assert!(OUTCOME_NAMES.contains(&kind.name()));
        }
        // Skipped calls never reach the host, so they have no call metric.
        assert!(!OUTCOME_NAMES.contains(&FailureKind::Skipped.name()));
    }
}
