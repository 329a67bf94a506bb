//! HTTP calls the plugin dispatched (`proxy_http_call`) and their bookkeeping.
//!
//! Tokens come from one VM-wide counter like Envoy's `nextHttpCallId`, so they are
//! unique across contexts. The registry keeps the full history so tests can assert
//! on every call, and counts calls in flight per context for concurrency caps.

use std::collections::{BTreeMap, HashMap};

use crate::headers::HeaderMap;
use crate::request::ContextId;

/// Envoy's synthesized body for a timed out call.
pub const TIMEOUT_BODY: &str = "upstream request timeout";
/// Envoy's synthesized body for a connection failure.
pub const CONNECT_FAILURE_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";

/// One dispatched HTTP call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    /// Token returned to the plugin.
    pub token: u32,
    /// Context that was active (or effective) when the call was dispatched.
    pub context: ContextId,
    /// Cluster name.
    pub cluster: String,
    /// Request headers as Envoy builds them (names lower-cased, `content-length`
    /// set from a non-empty body).
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// Timeout in ms; 0 means none (Envoy applies it only when positive).
    pub timeout_ms: u32,
    /// Virtual time of dispatch.
    pub dispatched_at_ms: u64,
    /// What happened to it.
    pub state: CallState,
}

impl HttpCall {
    /// First value of a request header as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// `:path`.
    pub fn path(&self) -> Option<&str> {
        self.header(":path")
    }

    /// `:method`.
    pub fn method(&self) -> Option<&str> {
        self.header(":method")
    }

    /// Body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }

    /// Virtual time at which Envoy would time the call out, if it has a timeout.
    pub fn deadline_ms(&self) -> Option<u64> {
        (self.timeout_ms > 0).then(|| self.dispatched_at_ms + u64::from(self.timeout_ms))
    }

    /// Whether the call still waits for an answer.
    pub fn is_pending(&self) -> bool {
        self.state == CallState::Pending
    }
}

/// Life of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallState {
    /// Waiting for the test to answer it.
    Pending,
    /// Answered with headers (including synthesized 503/504).
    Answered {
        /// `:status` of the answer.
        status: u32,
    },
    /// Answered with a stream reset (no headers).
    Reset,
    /// Cancelled because its context went away (client abort, stream end); the
    /// plugin never hears about it, as in Envoy.
    Cancelled,
    /// Dropped because the VM had failed; Envoy skips the callback.
    Dropped,
}

/// The answer to a call as the plugin will read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallResponse {
    /// Headers including `:status`.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers, if the upstream sent any.
    pub trailers: Option<HeaderMap>,
}

impl CallResponse {
    /// `:status` followed by `headers`.
    pub fn new(status: u32, headers: impl Into<HeaderMap>, body: impl Into<Vec<u8>>) -> Self {
        let mut all = HeaderMap::new();
        all.add(":status", status.to_string());
        for (name, value) in headers.into().iter() {
            all.add(name, value);
        }
        CallResponse {
            headers: all,
            body: body.into(),
            trailers: None,
        }
    }

    /// A JSON answer with `content-type: application/json`.
    pub fn json(status: u32, body: &serde_json::Value) -> Self {
        Self::new(
            status,
            [("content-type", "application/json")],
            body.to_string(),
        )
    }

    /// What Envoy synthesizes when the call's timeout fires.
    pub fn timeout() -> Self {
        Self::synthesized(504, TIMEOUT_BODY)
    }

    /// What Envoy synthesizes when the cluster refuses the connection.
    pub fn connect_failure() -> Self {
        Self::synthesized(503, CONNECT_FAILURE_BODY)
    }

    fn synthesized(status: u32, body: &str) -> Self {
        Self::new(
            status,
            [
                ("content-length", body.len().to_string()),
                ("content-type", "text/plain".to_string()),
            ],
            body,
        )
    }

    /// The `:status` value.
    pub fn status(&self) -> Option<u32> {
        self.headers.get_str(":status").and_then(|s| s.parse().ok())
    }
}

/// Every call of one VM plus in-flight accounting.
#[derive(Debug, Default)]
pub(crate) struct CallRegistry {
    calls: BTreeMap<u32, HttpCall>,
    last_token: u32,
    in_flight: HashMap<ContextId, usize>,
    peak: HashMap<ContextId, usize>,
    peak_total: usize,
}

impl CallRegistry {
    /// Records a new call and returns its token.
    pub(crate) fn dispatch(&mut self, mut call: HttpCall) -> u32 {
        self.last_token = self.last_token.wrapping_add(1).max(1);
        let token = self.last_token;
        call.token = token;
        call.state = CallState::Pending;
        let count = self.in_flight.entry(call.context).or_default();
        *count += 1;
        let peak = self.peak.entry(call.context).or_default();
        *peak = (*peak).max(*count);
        self.calls.insert(token, call);
        let total = self.in_flight.values().sum();
        self.peak_total = self.peak_total.max(total);
        token
    }

    /// Moves a pending call to a final state; `None` if it is not pending.
    pub(crate) fn complete(&mut self, token: u32, state: CallState) -> Option<HttpCall> {
        let call = self.calls.get_mut(&token).filter(|c| c.is_pending())?;
        call.state = state;
        let context = call.context;
        if let Some(count) = self.in_flight.get_mut(&context) {
            *count = count.saturating_sub(1);
        }
        self.calls.get(&token).cloned()
    }

    /// Cancels every pending call of a context.
    pub(crate) fn cancel_context(&mut self, context: ContextId, state: CallState) {
        let tokens: Vec<u32> = self
            .calls
            .values()
            .filter(|c| c.context == context && c.is_pending())
            .map(|c| c.token)
            .collect();
        for token in tokens {
            self.complete(token, state.clone());
        }
    }

    pub(crate) fn get(&self, token: u32) -> Option<&HttpCall> {
        self.calls.get(&token)
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &HttpCall> {
        self.calls.values()
    }

    pub(crate) fn pending(&self) -> impl Iterator<Item = &HttpCall> {
        self.calls.values().filter(|c| c.is_pending())
    }

    pub(crate) fn max_in_flight(&self, context: ContextId) -> usize {
        self.peak.get(&context).copied().unwrap_or(0)
    }

    pub(crate) fn max_in_flight_total(&self) -> usize {
        self.peak_total
    }

    pub(crate) fn in_flight(&self, context: ContextId) -> usize {
        self.in_flight.get(&context).copied().unwrap_or(0)
    }
}
