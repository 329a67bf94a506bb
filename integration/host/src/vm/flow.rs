//! The downstream request as Envoy's filter manager moves it through the plugin.
//!
//! Request direction (notes §0.2–0.3, §1.3):
//! - `proxy_on_request_headers`: `Continue` forwards the headers to the route at
//!   once; `Pause` is `StopIteration` with `allow_on_headers_stop_iteration`, and
//!   `StopAllIterationAndWatermark` without it, in which case Envoy holds the body
//!   back from the plugin until it resumes.
//! - `proxy_on_request_body(size, eos)`: `size` is the whole buffered body while
//!   the plugin keeps returning `Pause`; above the buffer limit Envoy answers 413.
//!   `Continue` forwards what was buffered (and the headers if they were stopped).
//! - Deferred actions (`continue_stream`, `send_local_response`, `close_stream`)
//!   run right after the callback that requested them returns, before its return
//!   value is looked at.
//!
//! Response direction: a local reply or a route response goes through the
//! plugin's `proxy_on_response_headers` (end of stream when there is no body) and
//! `proxy_on_response_body(len, true)`. The response direction is never held:
//! `Pause` there is treated like `Continue`.
//!
//! Teardown: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete` (Envoy's order),
//! and the context's pending calls are cancelled without a callback.

use super::guest::fail_closed_reply;
use super::Vm;
use crate::abi::Action;
use crate::calls::CallState;
use crate::error::{HostError, Result};
use crate::headers::HeaderMap;
use crate::request::{ClientResponse, ContextId, LocalReply, Outcome, Request};
use crate::state::Deferred;
use crate::stream::{HeadersState, Stream};

impl Vm {
    /// Sends a whole request: headers, then the body (in chunks if asked), the way
    /// Envoy's codec delivers it. Returns the new HTTP context id.
    ///
    /// On a failed VM the request gets the fail-closed 503 and never reaches the
    /// plugin.
    pub fn send_request(&mut self, request: Request) -> ContextId {
        let Request {
            headers,
            body,
            chunk_size,
        } = request;
        let context = self.begin_request(headers, body.is_none());
        if let Some(body) = body {
            // These cannot fail: the context exists and expects a body.
            match chunk_size {
                None => {
                    let _ = self.send_request_body(context, &body, true);
                }
                Some(size) => {
                    for chunk in body.chunks(size.max(1)) {
                        let _ = self.send_request_body(context, chunk, false);
                    }
                    let _ = self.send_request_body(context, &[], true);
                }
            }
        }
        context
    }

    /// Starts a request: creates the HTTP context and runs
    /// `proxy_on_request_headers`. Send the body with [`Vm::send_request_body`]
    /// unless `end_of_stream` is true.
    pub fn begin_request(
        &mut self,
        headers: impl Into<HeaderMap>,
        end_of_stream: bool,
    ) -> ContextId {
        let context = self.next_context_id();
        let mut stream = Stream::new(context, headers.into(), end_of_stream);
        if self.failure.is_some() {
            fail_closed(&mut stream);
            stream.deleted = true;
            self.store.data_mut().streams.insert(context, stream);
            return context;
        }
        let header_count = stream.request_headers.len() as i32;
        self.store.data_mut().streams.insert(context, stream);

        let create = self.exports.context_create.clone();
        let ctx = context as i32;
        if self
            .invoke(
                context,
                "proxy_on_context_create",
                create,
                (ctx, self.root_context_id() as i32),
                (),
            )
            .is_none()
        {
            return context;
        }
        self.settle();
        if let Some(stream) = self.live_stream_mut(context) {
            stream.request_headers_visible = true;
        }
        let on_headers = self.exports.request_headers.clone();
        let Some(action) = self.invoke(
            context,
            "proxy_on_request_headers",
            on_headers,
            (ctx, header_count, i32::from(end_of_stream)),
            0,
        ) else {
            return context;
        };
        self.settle();
        let allow_stop = self.store.data().options.allow_on_headers_stop_iteration;
        let Some(stream) = self.live_stream_mut(context) else {
            return context;
        };
        if stream.is_settled() || stream.headers_state != HeadersState::Arriving {
            return context;
        }
        match Action::from_raw(action) {
            Action::Continue => {
                stream.request_headers_visible = false;
                stream.forward_buffered();
            }
            Action::Pause if allow_stop => stream.headers_state = HeadersState::Stopped,
            Action::Pause => stream.headers_state = HeadersState::StoppedAll,
        }
        context
    }

    /// Delivers one more piece of the request body, as Envoy's `decodeData`.
    /// Data arriving after the request was replied or reset is discarded, as Envoy
    /// does.
    pub fn send_request_body(
        &mut self,
        context: ContextId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<()> {
        let failed = self.failure.is_some();
        let stream = self
            .live_stream_mut(context)
            .ok_or(HostError::UnknownContext(context))?;
        if !stream.has_body || stream.end_of_stream {
            return Err(HostError::InvalidState {
                context,
                message: "the request already ended; no more body can be sent".into(),
            });
        }
        stream.end_of_stream = end_of_stream;
        if stream.is_settled() {
            return Ok(());
        }
        if failed {
            fail_closed(stream);
            return Ok(());
        }
        if stream.headers_state == HeadersState::StoppedAll {
            stream.held_body.extend_from_slice(chunk);
            if end_of_stream {
                stream.outcome = Outcome::Hung;
            }
            return Ok(());
        }
        self.deliver_body(context, chunk.to_vec(), end_of_stream);
        Ok(())
    }

    /// `decodeData` on this filter: buffer, call `proxy_on_request_body`, act on
    /// its result.
    fn deliver_body(&mut self, context: ContextId, chunk: Vec<u8>, end_of_stream: bool) {
        let limit = self.store.data().options.buffer_limit_bytes;
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        if stream.buffering_request {
            if stream.request_body.len() + chunk.len() > limit {
                self.payload_too_large(context);
                return;
            }
            stream.request_body.extend_from_slice(&chunk);
        } else {
            stream.request_body = chunk;
        }
        stream.request_body_visible = true;
        let size = stream.request_body.len() as i32;
        let on_body = self.exports.request_body.clone();
        let ctx = context as i32;
        let Some(action) = self.invoke(
            context,
            "proxy_on_request_body",
            on_body,
            (ctx, size, i32::from(end_of_stream)),
            0,
        ) else {
            return;
        };
        self.settle();
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        if stream.is_settled() {
            return;
        }
        match Action::from_raw(action) {
            Action::Continue => stream.forward_buffered(),
            Action::Pause => {
                stream.buffering_request = true;
                if stream.request_body.len() > limit {
                    self.payload_too_large(context);
                }
            }
        }
    }

    /// Applies deferred actions until none is left (Envoy's
    /// `doAfterVmCallActions`; nested callbacks drain the same queue).
    pub(crate) fn settle(&mut self) {
        loop {
            if self.failure.is_some() {
                self.store.data_mut().deferred.clear();
                return;
            }
            let Some(action) = self.store.data_mut().deferred.pop_front() else {
                return;
            };
            match action {
                Deferred::ContinueRequest(context) => self.resume_request(context),
                // The host never holds the response direction.
                Deferred::ContinueResponse => {}
                Deferred::LocalReply {
                    context,
                    status,
                    details,
                    body,
                    headers,
                } => self.local_reply(context, status, headers, body, details),
                Deferred::Reset(context) => self.reset_stream(context),
            }
        }
    }

    /// `continueDecoding()`.
    fn resume_request(&mut self, context: ContextId) {
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        if stream.is_settled() {
            return;
        }
        stream.request_headers_visible = false;
        if stream.headers_state == HeadersState::StoppedAll {
            // Envoy now hands the held body to this filter's decodeData.
            stream.pass_headers();
            if matches!(stream.outcome, Outcome::Hung) {
                stream.outcome = Outcome::Pending;
            }
            let held = std::mem::take(&mut stream.held_body);
            if stream.has_body && (!held.is_empty() || stream.end_of_stream) {
                let end_of_stream = stream.end_of_stream;
                self.deliver_body(context, held, end_of_stream);
                return;
            }
        }
        if let Some(stream) = self.live_stream_mut(context) {
            stream.forward_buffered();
        }
    }

    /// Envoy's buffer-limit reply for a paused body.
    fn payload_too_large(&mut self, context: ContextId) {
        self.local_reply(
            context,
            413,
            HeaderMap::new(),
            b"Payload Too Large".to_vec(),
            "request_payload_too_large".into(),
        );
    }

    /// `sendLocalReply`: builds the response and runs it through the plugin's
    /// response callbacks. A second reply on the same stream is ignored.
    fn local_reply(
        &mut self,
        context: ContextId,
        status: u32,
        extra: HeaderMap,
        body: Vec<u8>,
        details: String,
    ) {
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        if stream.responding || stream.closing {
            return;
        }
        stream.responding = true;
        stream.buffering_request = false;
        let mut headers = HeaderMap::new();
        headers.add(":status", status.to_string());
        for (name, value) in extra.iter() {
            headers.add(name, value);
        }
        if !body.is_empty() {
            if !headers.contains("content-type") {
                headers.add("content-type", "text/plain");
            }
            headers.replace("content-length", body.len().to_string());
        }
        self.run_response(context, headers, body, Some(details));
    }

    /// The encoder path through this filter for a local reply (`details` set) or
    /// the route's response.
    fn run_response(
        &mut self,
        context: ContextId,
        headers: HeaderMap,
        body: Vec<u8>,
        details: Option<String>,
    ) {
        let header_count = headers.len() as i32;
        let body_len = body.len() as i32;
        let end_on_headers = body.is_empty();
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        stream.responding = true;
        stream.response_headers = headers;
        stream.response_headers_visible = true;
        let ctx = context as i32;
        let on_headers = self.exports.response_headers.clone();
        let Some(action) = self.invoke(
            context,
            "proxy_on_response_headers",
            on_headers,
            (ctx, header_count, i32::from(end_on_headers)),
            0,
        ) else {
            return;
        };
        self.settle();
        if Action::from_raw(action) == Action::Continue {
            if let Some(stream) = self.live_stream_mut(context) {
                stream.response_headers_visible = false;
            }
        }
        if !end_on_headers {
            let Some(stream) = self.live_stream_mut(context) else {
                return;
            };
            stream.response_body = body;
            stream.response_body_visible = true;
            let on_body = self.exports.response_body.clone();
            if self
                .invoke(
                    context,
                    "proxy_on_response_body",
                    on_body,
                    (ctx, body_len, 1),
                    0,
                )
                .is_none()
            {
                return;
            }
            self.settle();
        }
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        stream.response_headers_visible = false;
        stream.response_body_visible = false;
        let status = stream
            .response_headers
            .get_str(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = stream.response_headers.clone();
        let body = stream.response_body.clone();
        stream.client_response = Some(ClientResponse {
            status,
            headers: headers.clone(),
            body: body.clone(),
            local: details.is_some(),
        });
        if let Some(details) = details {
            stream.outcome = Outcome::Replied(LocalReply {
                status,
                headers,
                body,
                details,
            });
        }
    }

    /// `resetStream()` from `proxy_close_stream`: the client sees a reset and the
    /// stream is torn down.
    fn reset_stream(&mut self, context: ContextId) {
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        if stream.closing {
            return;
        }
        if !stream.responding {
            stream.outcome = Outcome::Reset;
        }
        self.teardown(context);
    }

    /// The client went away: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`;
    /// the context's pending calls are cancelled and will never be answered.
    pub fn abort(&mut self, context: ContextId) -> Result<()> {
        if self.stream(context).is_none() {
            return Err(HostError::UnknownContext(context));
        }
        self.teardown(context);
        Ok(())
    }

    /// Completes the stream: a continued request gets a `200` from the route with
    /// no body (see [`Vm::finish_with_response`]); a replied one is torn down. A
    /// request the plugin still holds is an error; use [`Vm::abort`] for that.
    pub fn finish(&mut self, context: ContextId) -> Result<()> {
        let stream = self
            .stream(context)
            .ok_or(HostError::UnknownContext(context))?;
        if stream.deleted {
            return Ok(());
        }
        match (&stream.outcome, stream.responding) {
            (Outcome::Continued { .. }, false) => {
                self.finish_with_response(context, 200, HeaderMap::new(), Vec::new())
            }
            (Outcome::Replied(_) | Outcome::Reset | Outcome::Continued { .. }, _) => {
                self.teardown(context);
                Ok(())
            }
            (outcome, _) => Err(HostError::InvalidState {
                context,
                message: format!(
                    "cannot finish a request in state {outcome:?}; answer its calls or abort it"
                ),
            }),
        }
    }

    /// The route answers a continued request: the response runs through the
    /// plugin's response callbacks, then the stream is torn down.
    pub fn finish_with_response(
        &mut self,
        context: ContextId,
        status: u32,
        headers: impl Into<HeaderMap>,
        body: impl Into<Vec<u8>>,
    ) -> Result<()> {
        let failed = self.failure.is_some();
        let stream = self
            .live_stream_mut(context)
            .ok_or(HostError::UnknownContext(context))?;
        if !stream.outcome.is_continued() || stream.responding {
            return Err(HostError::InvalidState {
                context,
                message: format!(
                    "only a continued request without a response can get one from the route (state {:?})",
                    stream.outcome
                ),
            });
        }
        if failed {
            let reply = fail_closed_reply();
            stream.responding = true;
            stream.client_response = Some(ClientResponse {
                status: reply.status,
                headers: reply.headers,
                body: Vec::new(),
                local: true,
            });
        } else {
            let mut all = HeaderMap::new();
            all.add(":status", status.to_string());
            for (name, value) in headers.into().iter() {
                all.add(name, value);
            }
            self.run_response(context, all, body.into(), None);
        }
        self.teardown(context);
        Ok(())
    }

    fn teardown(&mut self, context: ContextId) {
        let Some(stream) = self.live_stream_mut(context) else {
            return;
        };
        if stream.closing {
            return;
        }
        stream.closing = true;
        let ctx = context as i32;
        self.store.data_mut().log_phase = true;
        let on_log = self.exports.log.clone();
        self.invoke(context, "proxy_on_log", on_log, ctx, ());
        self.store.data_mut().log_phase = false;
        let on_done = self.exports.done.clone();
        let done = self.invoke(context, "proxy_on_done", on_done, ctx, 1);
        let on_delete = self.exports.delete.clone();
        self.invoke(context, "proxy_on_delete", on_delete, ctx, ());
        self.settle();
        // Envoy cancels outstanding calls in `~Context`, after `proxy_on_delete`,
        // so calls dispatched from `proxy_on_log` are cancelled too.
        self.store
            .data_mut()
            .calls
            .cancel_context(context, CallState::Cancelled);
        if let Some(stream) = self.store.data_mut().streams.get_mut(&context) {
            stream.done_result = done.map(|d| d != 0);
            stream.deleted = true;
            stream.request_headers_visible = false;
            stream.request_body_visible = false;
        }
    }
}

/// Envoy's `failStream` for a request that meets a failed VM.
fn fail_closed(stream: &mut Stream) {
    let reply = fail_closed_reply();
    stream.responding = true;
    stream.client_response = Some(ClientResponse {
        status: reply.status,
        headers: reply.headers.clone(),
        body: Vec::new(),
        local: true,
    });
    stream.outcome = Outcome::Replied(reply);
}
