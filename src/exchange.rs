//! One client request from headers to reply: routes it (virtual model, `GET /v1/models`, or
//! pass-through), buffers and validates the body, runs the looper, and renders the reply as
//! JSON or SSE with the `x-looper-*` headers. Plain Rust: the adapter feeds it host events and
//! carries out the [`Command`]s it returns.

use crate::config::{routing, ModelId, ReplyModelName, RouterId, Secret, Target, UpstreamModel};
use crate::config::{Algorithm, Config, Overload};
use crate::gateway::{Admission, Gateway};
use crate::looper::{Answer, CallId, CallResult, Looper, LooperCommand, LooperEvent};
use crate::metrics::{Global, MetricId};
use crate::model_scan::{ModelScanner, Scan};
use crate::openai::{models, sse, ApiError, ChatRequest, FinalCompletion, StreamRewriter};
use crate::router::{Route, Router};
use crate::time::Millis;
use std::collections::VecDeque;
use std::rc::Rc;

pub const CHAT_COMPLETIONS_PATH: &str = "/v1/chat/completions";
pub const MODELS_PATH: &str = "/v1/models";
/// Commands a request usually queues at once (a call, a reply, its metrics): the queue is not
/// regrown for them.
const COMMANDS_PER_REQUEST: usize = 16;
/// Request header the gateway sets to route a streamed final call; one from a client is
/// always removed, so a client can never pick a cluster.
pub const STREAM_CLUSTER_HEADER: &str = "x-looper-cluster";
/// The upstream's `:authority` for a streamed final call (the route rewrites the host from
/// it, so route matching still sees the client's host); removed from client requests too.
pub const STREAM_AUTHORITY_HEADER: &str = "x-looper-authority";
/// Client request headers a streamed final call keeps: tracing, nothing else.
pub const FORWARDED_CLIENT_HEADERS: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-forwarded-proto",
];
/// Request header with which a client asks for `looper_trace` (honoured only when the
/// operator allows traces).
pub const TRACE_HEADER: &str = "x-looper-trace";

/// What the adapter returns to the host from a request callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// A header of the gateway's own reply or stream: every name is the gateway's.
pub type ReplyHeader = (&'static str, String);

/// What the exchange asks of the host.
#[derive(Debug, PartialEq)]
pub enum Command {
    HttpCall {
        call: CallId,
        cluster: String,
        headers: Vec<(String, String)>,
        /// The credential header, kept apart so that no `Debug` output or log shows it.
        credential: Option<(String, Secret)>,
        body: Vec<u8>,
        timeout_ms: u64,
    },
    /// Send the client's own request on as the recipe's final call: its headers become
    /// `:method`, `:scheme`, `:authority` (for route matching), the tracing headers of
    /// [`FORWARDED_CLIENT_HEADERS`], and `headers` (the route picks the cluster from
    /// [`STREAM_CLUSTER_HEADER`] and the upstream host from [`STREAM_AUTHORITY_HEADER`]);
    /// nothing else of the client's reaches the model. The body is replaced, the request
    /// resumed, and the answer streams back through [`Exchange::on_response_headers`] and
    /// [`Exchange::on_response_body`].
    ForwardUpstream {
        headers: Vec<(String, String)>,
        /// The credential header, kept apart so that no `Debug` output or log shows it.
        credential: Option<(String, Secret)>,
        body: Vec<u8>,
    },
    /// A local reply; the adapter sends at most one.
    Reply {
        status: u16,
        headers: Vec<ReplyHeader>,
        body: Vec<u8>,
    },
    Count(MetricId),
    /// Adds to a counter (never zero).
    Add(MetricId, u64),
    Record(MetricId, u64),
}

/// The request line and the few headers the gateway reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// The value of `x-looper-trace`, if present.
    pub trace: Option<&'a [u8]>,
    /// The values of [`Config::signal_headers`](crate::config::Config::signal_headers), in
    /// that order (the only headers routing reads).
    pub signal_headers: &'a [Option<Vec<u8>>],
}

enum State {
    /// Waiting for request headers.
    New,
    /// A chat completion request whose body is arriving.
    Buffering(Box<Buffering>),
    /// Released to the normal route; nothing more to do.
    PassThrough,
    Running(Box<Running>),
    /// A reply was produced.
    Done,
}

struct Buffering {
    scanner: ModelScanner,
    /// The body so far; dropped once it passes the limit (the scan goes on without it).
    body: Vec<u8>,
    /// Bytes of the host's buffer already read.
    seen: usize,
    over_limit: bool,
}

struct Running {
    looper: Looper,
    request: Rc<ChatRequest>,
    virtual_index: usize,
    /// How the router chose the recipe; `None` for a pinned virtual model.
    route: Option<(RouterId, Route)>,
    /// The final call, once it was forwarded as the client's own request.
    stream: Option<FinalStream>,
    /// The overload recipe answers instead of the request's own.
    degraded: bool,
    /// Held while the looper runs (dropped with this state when the reply goes out).
    _admission: Option<Admission>,
}

struct FinalStream {
    call: CallId,
    model: ModelId,
    /// Rewrites the upstream's stream once its headers said 200.
    rewriter: Option<StreamRewriter>,
}

/// What to do with the response headers of a forwarded final call.
#[derive(Debug, PartialEq)]
pub enum ResponseHead {
    /// Not a forwarded call (a pass-through, or already answered): leave it alone.
    Untouched,
    /// The answer streams: the response headers become `:status`, `date` and these (the
    /// upstream's others could reveal the provider), and each body chunk goes through
    /// [`Exchange::on_response_body`].
    Stream { headers: Vec<ReplyHeader> },
    /// The final call failed before any byte: the exchange queued a [`Command::Reply`]
    /// (the recipe's fallback) that replaces the upstream's response.
    Replaced,
}

pub struct Exchange {
    gateway: Rc<Gateway>,
    state: State,
    started: Millis,
    trace_requested: bool,
    /// Allow-listed header values for routing signals (UTF-8, trimmed, bounded).
    signal_headers: Vec<Option<String>>,
    commands: VecDeque<Command>,
    replied: bool,
}

fn path_only(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

impl Exchange {
    pub fn new(gateway: Rc<Gateway>, now: Millis) -> Self {
        Exchange {
            gateway,
            state: State::New,
            started: now,
            trace_requested: false,
            signal_headers: Vec::new(),
            commands: VecDeque::with_capacity(COMMANDS_PER_REQUEST),
            replied: false,
        }
    }

    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Upstream bodies above this size are not read (the call counts as failed).
    pub fn max_upstream_body_bytes(&self) -> usize {
        self.gateway.config().limits.max_upstream_body_bytes
    }

    /// The request headers the adapter must pass in [`RequestHead::signal_headers`].
    pub fn signal_header_names(&self) -> &[String] {
        &self.gateway.config().signal_headers
    }

    pub fn is_replied(&self) -> bool {
        self.replied
    }

    /// How the router chose the running request's recipe, when it was routed.
    pub fn route(&self) -> Option<(&Router, &Route)> {
        match &self.state {
            State::Running(running) => {
                let (id, route) = running.route.as_ref()?;
                Some((self.gateway.config().router(*id)?, route))
            }
            _ => None,
        }
    }

    /// The looper of a running request (for tests and traces).
    pub fn looper(&self) -> Option<&Looper> {
        match &self.state {
            State::Running(running) => Some(&running.looper),
            _ => None,
        }
    }

    pub fn on_request_headers(
        &mut self,
        head: RequestHead<'_>,
        end_of_stream: bool,
        now: Millis,
    ) -> Flow {
        if !matches!(self.state, State::New) {
            return Flow::Continue;
        }
        self.started = now;
        self.trace_requested = head.trace.is_some_and(|v| v.trim_ascii() == b"1");
        self.signal_headers = head
            .signal_headers
            .iter()
            .map(|value| {
                let value = std::str::from_utf8(value.as_deref()?.trim_ascii()).ok()?;
                (value.len() <= routing::bounds::MAX_HEADER_VALUE).then(|| value.to_string())
            })
            .collect();
        let path = path_only(head.path);
        let metrics = self.gateway.metrics();
        if path == CHAT_COMPLETIONS_PATH.as_bytes() && head.method == b"POST" {
            if end_of_stream {
                self.reply_error(&ApiError::invalid_request("the request has no body", None));
                return Flow::Pause;
            }
            self.state = State::Buffering(Box::new(Buffering {
                scanner: ModelScanner::default(),
                body: Vec::new(),
                seen: 0,
                over_limit: false,
            }));
            return Flow::Pause;
        }
        if head.method == b"GET" {
            let path = path.strip_suffix(b"/").unwrap_or(path);
            if path == MODELS_PATH.as_bytes() {
                let body = models::list(self.gateway.config());
                self.commands
                    .push_back(Command::Count(metrics.global(Global::LocalReplies)));
                self.reply(200, Vec::new(), body, "application/json");
                return Flow::Pause;
            }
            if let Some(id) = path
                .strip_prefix(MODELS_PATH.as_bytes())
                .and_then(|rest| rest.strip_prefix(b"/"))
            {
                if let Ok(id) = std::str::from_utf8(id) {
                    if self.gateway.config().virtual_model(id).is_some() {
                        let body = models::retrieve(id);
                        self.commands
                            .push_back(Command::Count(metrics.global(Global::LocalReplies)));
                        self.reply(200, Vec::new(), body, "application/json");
                        return Flow::Pause;
                    }
                }
            }
        }
        self.pass_through();
        Flow::Continue
    }

    /// Where the adapter should read new body bytes from, given the host's buffered total;
    /// `None` when the body is not needed any more (passed through or answered).
    pub fn body_read_range(&self, total: usize) -> Option<(usize, usize)> {
        match &self.state {
            State::Buffering(b) => Some((b.seen, total.saturating_sub(b.seen))),
            _ => None,
        }
    }

    /// Feeds the bytes read from [`Exchange::body_read_range`] (`new_bytes`) and the host's
    /// buffered total.
    ///
    /// The body is kept only up to `limits.max_body_bytes`; past it the scan for `model` goes
    /// on, so a large request for a model the plugin does not serve still passes through,
    /// while one for a virtual model gets a 413.
    pub fn on_request_body(
        &mut self,
        total: usize,
        new_bytes: &[u8],
        end_of_stream: bool,
        now: Millis,
    ) -> Flow {
        let State::Buffering(buffering) = &mut self.state else {
            return match self.state {
                State::PassThrough | State::New => Flow::Continue,
                _ => Flow::Pause,
            };
        };
        let limit = self.gateway.config().limits.max_body_bytes;
        buffering.seen = buffering.seen.saturating_add(new_bytes.len());
        if !buffering.over_limit {
            if buffering.seen.max(total) > limit {
                buffering.over_limit = true;
                buffering.body = Vec::new();
            } else {
                buffering.body.extend_from_slice(new_bytes);
            }
        }
        let over_limit = buffering.over_limit;
        let scan = buffering.scanner.feed(new_bytes).clone();
        let config = self.gateway.config();
        match scan {
            Scan::Model(name) if config.virtual_model(&name).is_none() => {
                if config.is_unknown_virtual(&name) {
                    self.reply_error(&ApiError::model_not_found(&name));
                    return Flow::Pause;
                }
                self.pass_through();
                return Flow::Continue;
            }
            Scan::LongModel => {
                self.pass_through();
                return Flow::Continue;
            }
            Scan::Model(_) | Scan::Unknown if over_limit => {
                self.reply_error(&ApiError::body_too_large(limit));
                return Flow::Pause;
            }
            _ => {}
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        if over_limit {
            self.reply_error(&ApiError::body_too_large(limit));
            return Flow::Pause;
        }
        let body = std::mem::take(&mut buffering.body);
        self.start(&body, &scan, now)
    }

    /// Request trailers end the body (HTTP/2, chunked encoding with trailers): the last body
    /// callback did not say end of stream.
    pub fn on_request_trailers(&mut self, now: Millis) -> Flow {
        match &self.state {
            State::Buffering(b) => {
                let total = b.seen;
                self.on_request_body(total, &[], true, now)
            }
            State::PassThrough | State::New => Flow::Continue,
            _ => Flow::Pause,
        }
    }

    fn pass_through(&mut self) {
        self.state = State::PassThrough;
        let id = self.gateway.metrics().global(Global::Passthrough);
        self.commands.push_back(Command::Count(id));
    }

    /// The whole body is here: parse, choose the virtual model, start the looper.
    fn start(&mut self, body: &[u8], scan: &Scan, now: Millis) -> Flow {
        // The scan found the model before the parse, so the messages can be built while they
        // are checked when what runs next reads them. Routers read them for their signals.
        let build_messages = match scan {
            Scan::Model(name) => {
                let config = self.gateway.config();
                match config.virtual_model(name).map(|v| v.target) {
                    Some(Target::Router(_)) => true,
                    Some(Target::Recipe(id)) => {
                        config.recipe(id).is_some_and(|r| r.reads_messages())
                    }
                    None => false,
                }
            }
            _ => false,
        };
        let request = match ChatRequest::parse_with(body, build_messages) {
            Ok(r) => r,
            Err(err) => {
                self.reply_error(&err);
                return Flow::Pause;
            }
        };
        let config = Rc::clone(self.gateway.config());
        let Some(virtual_index) = config.virtual_model_index(request.model()) else {
            if config.is_unknown_virtual(request.model()) {
                self.reply_error(&ApiError::model_not_found(request.model()));
                return Flow::Pause;
            }
            // The scan saw another name first (duplicate keys): the last one wins, as for
            // every JSON parser upstream, and it is not ours.
            self.pass_through();
            return Flow::Continue;
        };
        let metrics = self.gateway.metrics();
        let mut route = None;
        let recipe_id = match config.virtual_models.get(virtual_index).map(|v| v.target) {
            Some(Target::Recipe(id)) => Some(id),
            Some(Target::Router(router_id)) => config.router(router_id).and_then(|router| {
                let decided = router.route(&request, &self.signal_headers)?;
                let recipe = decided.recipe;
                route = Some((router_id, decided));
                Some(recipe)
            }),
            None => None,
        };
        let Some(recipe) = recipe_id.and_then(|id| config.recipe(id)).cloned() else {
            self.reply_error(&ApiError::internal("virtual model without recipe"));
            return Flow::Pause;
        };
        if let Err(err) = supports(&recipe.algorithm, &request) {
            self.reply_error(&err);
            return Flow::Pause;
        }
        // The cap is checked last, so a request that is wrong gets its 4xx whatever the load.
        let admission = self.gateway.admit();
        let (recipe, degraded) = match (&admission, config.limits.overload) {
            (Some(_), _) => (recipe, false),
            (None, Overload::Degrade(id)) => match config.recipe(id) {
                Some(single) => {
                    self.commands
                        .push_back(Command::Count(metrics.global(Global::OverloadDegraded)));
                    (Rc::clone(single), true)
                }
                None => (recipe, false),
            },
            (None, Overload::Reject) => {
                self.commands
                    .push_back(Command::Count(metrics.global(Global::OverloadRejected)));
                let err = ApiError::overloaded();
                self.reply(err.status, Vec::new(), err.to_json(), "application/json");
                return Flow::Pause;
            }
        };
        if let Some(id) = route
            .as_ref()
            .and_then(|(router, decided)| metrics.decision(*router, decided.decision))
        {
            self.commands.push_back(Command::Count(id));
        }
        self.commands
            .push_back(Command::Count(metrics.global(Global::Requests)));
        self.commands
            .push_back(Command::Count(metrics.virtual_requests(virtual_index)));
        let request = Rc::new(request);
        let nonce = self.gateway.ids().nonce();
        let stream_final = config.stream_final_call && request.stream() && !self.trace_requested;
        let mut looper = Looper::start(config, recipe, Rc::clone(&request), now, nonce);
        if stream_final {
            looper.allow_streamed_final();
        }
        self.state = State::Running(Box::new(Running {
            looper,
            request,
            virtual_index,
            route,
            stream: None,
            degraded,
            _admission: admission,
        }));
        self.drain_looper(now);
        Flow::Pause
    }

    /// The host's answer (or failure) for a dispatched call.
    pub fn on_call_result(&mut self, call: CallId, result: CallResult, now: Millis) {
        if let State::Running(running) = &mut self.state {
            running.looper.on_call_result(call, result, now);
            self.drain_looper(now);
        }
    }

    fn count_tokens(&mut self, model: ModelId, usage: Option<crate::openai::Usage>) {
        let Some(usage) = usage else {
            return;
        };
        let (prompt, completion) = self.gateway.metrics().model_tokens(model);
        if usage.prompt_tokens > 0 {
            self.commands
                .push_back(Command::Add(prompt, usage.prompt_tokens));
        }
        if usage.completion_tokens > 0 {
            self.commands
                .push_back(Command::Add(completion, usage.completion_tokens));
        }
    }

    /// The response headers of the request as Envoy sends it on: for a forwarded final
    /// call, whether its answer streams or the recipe's fallback replaces it.
    pub fn on_response_headers(
        &mut self,
        status: u16,
        event_stream: bool,
        now: Millis,
    ) -> ResponseHead {
        if self.replied {
            return ResponseHead::Untouched;
        }
        let State::Running(running) = &mut self.state else {
            return ResponseHead::Untouched;
        };
        let Some((call, model, streaming)) = running
            .stream
            .as_ref()
            .map(|s| (s.call, s.model, s.rewriter.is_some()))
        else {
            return ResponseHead::Untouched;
        };
        if streaming {
            return ResponseHead::Untouched;
        }
        if status != 200 || !event_stream {
            // Nothing was sent yet: the call failed like any other (a 200 that is not an
            // uncompressed event stream could not be rewritten), and the recipe falls back
            // (a vote over the evidence) as it would have.
            running.stream = None;
            running.looper.on_call_result(
                call,
                CallResult::Response {
                    status,
                    body: Vec::new(),
                },
                now,
            );
            self.drain_looper(now);
            if !self.replied {
                // A streamed call's policy never retries, so the looper has ended; should it
                // not have, the upstream's own error must still not reach the client.
                self.reply_error(&ApiError::all_upstreams_failed(
                    "the final call failed before its first byte",
                ));
            }
            return ResponseHead::Replaced;
        }
        let config = Rc::clone(self.gateway.config());
        let metrics = self.gateway.metrics();
        let mut headers = looper_headers(&config, running, now.since(self.started));
        headers.push(("content-type", "text/event-stream".to_string()));
        headers.push(("cache-control", "no-cache".to_string()));
        let virtual_name = config
            .virtual_models
            .get(running.virtual_index)
            .map_or("", |v| v.name.as_str());
        let reply_model = match config.reply_model_name {
            ReplyModelName::Virtual => virtual_name.to_string(),
            ReplyModelName::UpstreamAlias => config
                .model(model)
                .map_or_else(|| virtual_name.to_string(), |m| m.alias.clone()),
        };
        let rewriter = StreamRewriter::new(
            self.gateway.ids().completion_id(),
            reply_model,
            now.unix_seconds(),
            *running.looper.runtime().usage(),
            running.request.include_usage(),
        );
        let abandoned = running.looper.runtime().abandoned_calls();
        if let Some(stream) = running.stream.as_mut() {
            stream.rewriter = Some(rewriter);
        }
        for _ in 0..abandoned {
            self.commands
                .push_back(Command::Count(metrics.global(Global::AbandonedCalls)));
        }
        self.commands
            .push_back(Command::Count(metrics.response_class(200)));
        ResponseHead::Stream { headers }
    }

    /// Whether the request went on as the recipe's final call, so its response headers go
    /// through [`Exchange::on_response_headers`]; for any other request they need not be read.
    pub fn forwards_final_call(&self) -> bool {
        !self.replied && matches!(&self.state, State::Running(r) if r.stream.is_some())
    }

    /// Whether response bodies go through [`Exchange::on_response_body`] (a forwarded final
    /// call streams); other responses are not even read.
    pub fn rewrites_response(&self) -> bool {
        matches!(&self.state, State::Running(r) if r.stream.as_ref().is_some_and(|s| s.rewriter.is_some()))
    }

    /// A chunk of the forwarded final call's stream; `Some` with the bytes that replace it,
    /// `None` to leave it alone (not a forwarded call).
    pub fn on_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        now: Millis,
    ) -> Option<Vec<u8>> {
        let State::Running(running) = &mut self.state else {
            return None;
        };
        let stream = running.stream.as_mut()?;
        let rewriter = stream.rewriter.as_mut()?;
        let mut out = rewriter.feed(chunk);
        if end_of_stream {
            out.extend(rewriter.finish());
            let usage = rewriter.upstream_usage();
            let model = stream.model;
            let metrics = self.gateway.metrics();
            let outcome = if rewriter.is_complete() {
                "ok"
            } else {
                "reset"
            };
            if let Some(id) = metrics.model_call(model, outcome) {
                self.commands.push_back(Command::Count(id));
            }
            self.commands.push_back(Command::Record(
                metrics.virtual_latency(running.virtual_index),
                now.since(self.started),
            ));
            self.replied = true;
            self.state = State::Done;
            self.count_tokens(model, usage);
        }
        Some(out)
    }

    /// The request deadline may have passed (a timer fired). Early calls do nothing.
    pub fn on_tick(&mut self, now: Millis) {
        if let State::Running(running) = &mut self.state {
            if running.stream.is_some() {
                // The final call is Envoy's own request now, under a route timeout cut at
                // the deadline; a reply of ours could not replace what already streams.
                return;
            }
            running.looper.on_deadline(now);
            self.drain_looper(now);
        }
    }

    /// The host is done with the stream (`on_done`): a request without reply was abandoned by
    /// its client.
    pub fn on_stream_done(&mut self) {
        if let State::Running(running) = &self.state {
            if let Some(stream) = running.stream.as_ref().filter(|s| s.rewriter.is_some()) {
                // The answer was streaming and never reached its end: Envoy reset the stream
                // (an upstream reset, a timeout past the first byte, or the client leaving).
                if let Some(id) = self.gateway.metrics().model_call(stream.model, "reset") {
                    self.commands.push_back(Command::Count(id));
                }
                self.state = State::Done;
                return;
            }
        }
        if !self.replied && matches!(self.state, State::Running(_) | State::Buffering(_)) {
            let id = self.gateway.metrics().global(Global::ClientAborts);
            self.commands.push_back(Command::Count(id));
        }
        self.state = State::Done;
    }

    fn drain_looper(&mut self, now: Millis) {
        let State::Running(running) = &mut self.state else {
            return;
        };
        let config = Rc::clone(self.gateway.config());
        let metrics = self.gateway.metrics();
        let mut finished = false;
        let mut unknown_models = Vec::new();
        let mut finished_calls = Vec::new();
        while let Some(command) = running.looper.poll_command() {
            match command {
                LooperCommand::Dispatch {
                    call,
                    model,
                    body,
                    timeout_ms,
                } => {
                    let Some(upstream) = config.model(model) else {
                        unknown_models.push(call);
                        continue;
                    };
                    let mut headers = vec![
                        (":method".to_string(), "POST".to_string()),
                        (":path".to_string(), upstream.path.clone()),
                        (":authority".to_string(), upstream.authority.clone()),
                        ("content-type".to_string(), "application/json".to_string()),
                    ];
                    headers.extend(upstream.extra_headers.iter().cloned());
                    self.commands.push_back(Command::HttpCall {
                        call,
                        cluster: upstream.cluster.clone(),
                        headers,
                        credential: credential_of(upstream),
                        body,
                        timeout_ms,
                    });
                }
                LooperCommand::StreamFinal {
                    call,
                    model,
                    body,
                    timeout_ms,
                } => {
                    let Some(upstream) = config.model(model) else {
                        unknown_models.push(call);
                        continue;
                    };
                    let mut headers = vec![
                        (
                            STREAM_AUTHORITY_HEADER.to_string(),
                            upstream.authority.clone(),
                        ),
                        (":path".to_string(), upstream.path.clone()),
                        ("content-type".to_string(), "application/json".to_string()),
                        ("content-length".to_string(), body.len().to_string()),
                        (STREAM_CLUSTER_HEADER.to_string(), upstream.cluster.clone()),
                        (
                            "x-envoy-upstream-rq-timeout-ms".to_string(),
                            timeout_ms.to_string(),
                        ),
                    ];
                    headers.extend(upstream.extra_headers.iter().cloned());
                    self.commands.push_back(Command::ForwardUpstream {
                        headers,
                        credential: credential_of(upstream),
                        body,
                    });
                    running.stream = Some(FinalStream {
                        call,
                        model,
                        rewriter: None,
                    });
                }
                LooperCommand::CallFinished {
                    model,
                    outcome,
                    usage,
                    ..
                } => {
                    if let Some(id) = metrics.model_call(model, outcome) {
                        self.commands.push_back(Command::Count(id));
                    }
                    if outcome == "ok" && usage.is_none() {
                        self.commands
                            .push_back(Command::Count(metrics.model_calls_without_usage(model)));
                    }
                    finished_calls.push((model, usage));
                }
                LooperCommand::Event(event) => {
                    let global = match event {
                        LooperEvent::Failover => Global::Failovers,
                        LooperEvent::Escalation => Global::Escalations,
                        LooperEvent::BudgetStop => Global::BudgetStops,
                        LooperEvent::QuorumShortfall => Global::QuorumShortfalls,
                        LooperEvent::PolicySkip => Global::PolicySkip,
                        LooperEvent::PolicyFail => Global::PolicyFail,
                        LooperEvent::PolicyFallback => Global::PolicyFallback,
                    };
                    self.commands
                        .push_back(Command::Count(metrics.global(global)));
                }
                LooperCommand::Finished => finished = true,
            }
        }
        for (model, usage) in finished_calls {
            self.count_tokens(model, usage);
        }
        if finished {
            self.finish(now);
        } else {
            // Cannot happen with a validated configuration; fail the call rather than wait.
            for call in unknown_models {
                self.on_call_result(call, CallResult::Rejected, now);
            }
        }
    }

    fn finish(&mut self, now: Millis) {
        let State::Running(running) = &mut self.state else {
            return;
        };
        let config = Rc::clone(self.gateway.config());
        let metrics = self.gateway.metrics();
        let result = running.looper.take_result();
        let runtime = running.looper.runtime();
        let virtual_model = config.virtual_models.get(running.virtual_index);
        let virtual_name = virtual_model.map_or("", |v| v.name.as_str());
        let recipe = runtime.recipe();
        let latency_ms = now.since(self.started);
        let router = running
            .route
            .as_ref()
            .and_then(|(id, route)| Some((config.router(*id)?, route)));
        let mut headers = looper_headers(&config, running, latency_ms);
        let abandoned = runtime.abandoned_calls();
        if abandoned > 0 {
            for _ in 0..abandoned {
                self.commands
                    .push_back(Command::Count(metrics.global(Global::AbandonedCalls)));
            }
        }
        let trace = (config.trace_allowed && self.trace_requested).then(|| {
            let mut trace = runtime.trace();
            if let (Some((router, route)), serde_json::Value::Object(obj)) = (router, &mut trace) {
                obj.insert("route".into(), router.trace(route, &recipe.name));
            }
            trace
        });
        let usage = *runtime.usage();
        self.commands.push_back(Command::Record(
            metrics.virtual_latency(running.virtual_index),
            latency_ms,
        ));
        let reply_model = |model: ModelId| match config.reply_model_name {
            ReplyModelName::Virtual => virtual_name.to_string(),
            ReplyModelName::UpstreamAlias => config
                .model(model)
                .map_or_else(|| virtual_name.to_string(), |m| m.alias.clone()),
        };
        match result {
            Some(Ok(answer)) => {
                let model = answer.model();
                let Answer::Upstream { completion, .. } = answer;
                let mut completion = FinalCompletion::from_upstream(
                    completion,
                    self.gateway.ids().completion_id(),
                    now.unix_seconds(),
                    reply_model(model),
                    usage,
                );
                if running.request.field("logprobs") != Some(&serde_json::Value::Bool(true)) {
                    // Logprobs the gateway asked for to score confidence are not the client's.
                    completion.clear_logprobs();
                }
                if running.request.stream() {
                    let body = sse::encode(&completion, running.request.include_usage(), trace);
                    headers.push(("cache-control", "no-cache".to_string()));
                    self.reply(200, headers, body, "text/event-stream");
                } else {
                    let body = completion.to_json(trace);
                    self.reply(200, headers, body, "application/json");
                }
            }
            Some(Err(err)) => {
                // The calls that ran are billed even though the request failed: the client
                // sees their tokens next to the error, as it would in a reply.
                let mut extra = vec![("usage", usage.to_json())];
                if let Some(trace) = trace {
                    extra.push(("looper_trace", trace));
                }
                let body = with_fields(&err.to_json(), extra);
                self.reply(err.status, headers, body, "application/json");
            }
            None => {
                let err = ApiError::internal("the looper ended without a result");
                self.reply(err.status, headers, err.to_json(), "application/json");
            }
        }
    }

    /// An error before any looper ran: a 4xx from the gateway itself.
    fn reply_error(&mut self, err: &ApiError) {
        let metrics = self.gateway.metrics();
        if (400..500).contains(&err.status) {
            self.commands
                .push_back(Command::Count(metrics.global(Global::Rejected)));
        }
        self.reply(err.status, Vec::new(), err.to_json(), "application/json");
    }

    fn reply(
        &mut self,
        status: u16,
        mut headers: Vec<ReplyHeader>,
        body: Vec<u8>,
        content_type: &str,
    ) {
        if self.replied {
            return;
        }
        self.replied = true;
        self.state = State::Done;
        // Calls the host has not started yet are no longer wanted.
        self.commands
            .retain(|command| !matches!(command, Command::HttpCall { .. }));
        headers.insert(0, ("content-type", content_type.to_string()));
        if matches!(status, 429 | 503) {
            // The gateway's own back-off answers (every upstream rate limited, load shed).
            let seconds = self.gateway.config().limits.retry_after_s;
            headers.push(("retry-after", seconds.to_string()));
        }
        let metrics = self.gateway.metrics();
        self.commands
            .push_back(Command::Count(metrics.response_class(status)));
        self.commands.push_back(Command::Reply {
            status,
            headers,
            body,
        });
    }
}

/// The credential header a model's calls carry, if it has one.
fn credential_of(upstream: &UpstreamModel) -> Option<(String, Secret)> {
    upstream
        .credential
        .as_ref()
        .map(|c| (c.header.clone(), c.value.clone()))
}

/// The `x-looper-*` headers of a reply: what ran, why, and at what cost.
fn looper_headers(config: &Config, running: &Running, latency_ms: u64) -> Vec<ReplyHeader> {
    let runtime = running.looper.runtime();
    let recipe = runtime.recipe();
    let virtual_name = config
        .virtual_models
        .get(running.virtual_index)
        .map_or("", |v| v.name.as_str());
    let router = running
        .route
        .as_ref()
        .and_then(|(id, route)| Some((config.router(*id)?, route)));
    let decision = router.map_or("pinned", |(router, route)| router.decision_name(route));
    let mut headers = vec![
        ("x-looper-model", virtual_name.to_string()),
        ("x-looper-decision", decision.to_string()),
        ("x-looper-recipe", recipe.name.clone()),
        ("x-looper-algorithm", recipe.algorithm.name().to_string()),
        ("x-looper-calls", runtime.calls_started().to_string()),
        ("x-looper-models", runtime.models_used().join(",")),
        ("x-looper-latency-ms", latency_ms.to_string()),
        ("x-looper-cost", format!("{:.8}", runtime.cost())),
    ];
    if let Some((router, route)) = router {
        let bands: Vec<String> = router
            .band_names(route)
            .map(|(p, band)| format!("{p}={band}"))
            .collect();
        if !bands.is_empty() {
            headers.push(("x-looper-bands", bands.join(",")));
        }
        let fired: Vec<&str> = router.fired_names(route).collect();
        if !fired.is_empty() {
            headers.push(("x-looper-signals", fired.join(",")));
        }
    }
    if let Some(confidence) = runtime.confidence() {
        headers.push(("x-looper-confidence", format!("{confidence:.3}")));
    }
    let abandoned = runtime.abandoned_calls();
    if abandoned > 0 {
        headers.push(("x-looper-abandoned-calls", abandoned.to_string()));
    }
    if running.degraded {
        headers.push(("x-looper-degraded", "overload".to_string()));
    }
    headers
}

/// Whether the recipe can serve what the request asks for; a clear 400 when it cannot.
fn supports(algorithm: &Algorithm, request: &ChatRequest) -> Result<(), ApiError> {
    if matches!(algorithm, Algorithm::Single { .. }) {
        // One upstream answers, so its choices and tool calls come back as sent.
        return Ok(());
    }
    if request.n() > 1 {
        return Err(ApiError::invalid_request(
            format!(
                "the `{}` recipe returns one answer; `n` must be 1",
                algorithm.name()
            ),
            Some("n"),
        ));
    }
    let has_tools = request
        .field("tools")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if has_tools {
        return Err(ApiError::invalid_request(
            format!("the `{}` recipe does not support tools", algorithm.name()),
            Some("tools"),
        ));
    }
    Ok(())
}

/// An error body with top-level fields added next to `error`.
fn with_fields(error_body: &[u8], fields: Vec<(&str, serde_json::Value)>) -> Vec<u8> {
    let parsed = std::str::from_utf8(error_body).map(serde_json::from_str::<serde_json::Value>);
    match parsed {
        Ok(Ok(serde_json::Value::Object(mut obj))) => {
            for (key, value) in fields {
                obj.insert(key.into(), value);
            }
            serde_json::Value::Object(obj).to_string().into_bytes()
        }
        _ => error_body.to_vec(),
    }
}

#[cfg(test)]
mod tests;
