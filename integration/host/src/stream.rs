//! Per-HTTP-context state: what Envoy's `Context` and filter manager know about
//! one downstream request.
//!
//! The visibility flags mirror the pointers Envoy's `Context` keeps
//! (`request_headers_`, `request_body_buffer_`, `response_headers_`, ...): they are
//! set for the duration of a callback, cleared when the callback returns
//! `Continue` or when the plugin calls `proxy_continue_stream`, and kept while the
//! stream is paused. Hostcalls on a cleared map are `BadArgument`, which the SDK
//! turns into a panic, exactly as in Envoy.

use std::collections::HashMap;

use crate::headers::HeaderMap;
use crate::request::{ClientResponse, ContextId, Forwarded, Outcome};

/// How the request headers passed (or not) this filter.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeadersState {
    /// `proxy_on_request_headers` has not returned yet.
    Arriving,
    /// Paused with `StopIteration` (body still delivered to the plugin).
    Stopped,
    /// Paused with `StopAllIterationAndWatermark` (body held back by Envoy).
    StoppedAll,
    /// Forwarded to the route.
    Passed,
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub id: ContextId,
    /// Export names of every callback the host invoked for this context, in order.
    pub callbacks: Vec<&'static str>,

    pub request_headers: HeaderMap,
    pub request_headers_visible: bool,
    /// Envoy's request body buffer as the plugin sees it: the current chunk, or
    /// everything buffered while the plugin returns `Pause`.
    pub request_body: Vec<u8>,
    pub request_body_visible: bool,
    pub buffering_request: bool,
    pub headers_state: HeadersState,
    /// Body Envoy holds back in stop-all mode.
    pub held_body: Vec<u8>,
    /// The client finished sending.
    pub end_of_stream: bool,
    /// The headers did not end the stream, so body callbacks are expected.
    pub has_body: bool,
    pub forwarded: Option<Forwarded>,

    pub response_headers: HeaderMap,
    pub response_headers_visible: bool,
    pub response_body: Vec<u8>,
    pub response_body_visible: bool,
    /// A response (local or upstream) has started; a second one is ignored.
    pub responding: bool,
    pub client_response: Option<ClientResponse>,

    pub outcome: Outcome,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// `proxy_get_status` of this context.
    pub status: (u32, String),
    /// `proxy_on_log`/`proxy_on_done`/`proxy_on_delete` are running.
    pub closing: bool,
    pub deleted: bool,
    pub done_result: Option<bool>,
}

impl Stream {
    pub(crate) fn new(id: ContextId, request_headers: HeaderMap, end_of_stream: bool) -> Self {
        Stream {
            id,
            callbacks: Vec::new(),
            request_headers,
            request_headers_visible: false,
            request_body: Vec::new(),
            request_body_visible: false,
            buffering_request: false,
            headers_state: HeadersState::Arriving,
            held_body: Vec::new(),
            end_of_stream,
            has_body: !end_of_stream,
            forwarded: None,
            response_headers: HeaderMap::new(),
            response_headers_visible: false,
            response_body: Vec::new(),
            response_body_visible: false,
            responding: false,
            client_response: None,
            outcome: Outcome::Pending,
            properties: HashMap::new(),
            status: (0, String::new()),
            closing: false,
            deleted: false,
            done_result: None,
        }
    }

    /// The request can no longer change: replied, continued, reset or gone.
    pub(crate) fn is_settled(&self) -> bool {
        self.deleted
            || self.closing
            || self.responding
            || matches!(
                self.outcome,
                Outcome::Continued { .. } | Outcome::Reset | Outcome::Replied(_)
            )
    }

    /// Lets the headers pass to the route (once), snapshotting them.
    pub(crate) fn pass_headers(&mut self) {
        if self.headers_state != HeadersState::Passed {
            self.headers_state = HeadersState::Passed;
            self.forwarded = Some(Forwarded {
                headers: self.request_headers.clone(),
                body: Vec::new(),
                end_of_stream: false,
            });
        }
    }

    /// Forwards whatever the filter buffered and, at the end of the stream, marks
    /// the request `Continued`.
    pub(crate) fn forward_buffered(&mut self) {
        self.pass_headers();
        let body = std::mem::take(&mut self.request_body);
        self.buffering_request = false;
        self.request_body_visible = false;
        if let Some(forwarded) = self.forwarded.as_mut() {
            forwarded.body.extend_from_slice(&body);
            if self.end_of_stream && !self.responding {
                forwarded.end_of_stream = true;
                self.outcome = Outcome::Continued {
                    headers: forwarded.headers.clone(),
                    body: forwarded.body.clone(),
                };
            }
        }
    }
}
