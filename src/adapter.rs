//! The only module that talks to the proxy: maps proxy-wasm callbacks to [`Exchange`] events
//! and carries out the commands it returns. No routing or looper decision lives here.
//!
//! Host calls go through `proxy_wasm::hostcalls` and are used only in the phases where the
//! host accepts them; header values are read as bytes because the SDK's string accessors
//! panic on non-UTF-8 values, and a panic would kill the VM for every later request.

use crate::config::Config;
use crate::exchange::{
    Command, Exchange, Flow, RequestHead, ResponseHead, FORWARDED_CLIENT_HEADERS,
    STREAM_AUTHORITY_HEADER, STREAM_CLUSTER_HEADER, TRACE_HEADER,
};
use crate::gateway::Gateway;
use crate::looper::{CallId, CallResult};
use crate::metrics::MetricKind;
use crate::time::Millis;
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Host time in milliseconds, never going backwards within a VM.
#[derive(Default)]
struct Clock {
    last: Cell<u64>,
}

impl Clock {
    fn now(&self) -> Millis {
        let host = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let now = host.max(self.last.get());
        self.last.set(now);
        Millis(now)
    }
}

/// Host ids of the catalogue's metrics, by catalogue index.
type MetricIds = Rc<Vec<Option<u32>>>;

#[derive(Default)]
struct Root {
    gateway: Option<Rc<Gateway>>,
    metric_ids: MetricIds,
    clock: Rc<Clock>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::from_json(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(err) => {
                error!("looper: refusing configuration: {err}");
                return false;
            }
        };
        // SipHash under random keys: two unpredictable, unrelated seeds.
        let random = RandomState::new();
        let now = self.clock.now().0;
        let gateway = Gateway::new(
            config,
            random.hash_one((now, 1u8)),
            random.hash_one((now, 2u8)),
        );
        let ids = gateway
            .metrics()
            .defs()
            .iter()
            .map(|def| {
                let kind = match def.kind {
                    MetricKind::Counter => MetricType::Counter,
                    MetricKind::Histogram => MetricType::Histogram,
                };
                hostcalls::define_metric(kind, &def.name).ok()
            })
            .collect();
        self.metric_ids = Rc::new(ids);
        let config = gateway.config();
        info!(
            "looper: configured {} virtual models, {} recipes, {} upstream models",
            config.virtual_models.len(),
            config.recipes.len(),
            config.models.len()
        );
        self.gateway = Some(gateway);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let exchange = self
            .gateway
            .as_ref()
            .map(|gateway| gateway.exchange(self.clock.now()));
        Some(Box::new(Filter {
            exchange,
            calls: HashMap::new(),
            replied: false,
            request_body_size: 0,
            metric_ids: Rc::clone(&self.metric_ids),
            clock: Rc::clone(&self.clock),
        }))
    }
}

struct Filter {
    /// `None` only when no configuration was accepted: then every request passes through.
    exchange: Option<Exchange>,
    /// Host token → our call id, for calls in flight.
    calls: HashMap<u32, CallId>,
    /// A local reply was sent: our own response callbacks now run for it and must not act.
    replied: bool,
    /// Bytes of request body Envoy holds for this request (to replace it whole).
    request_body_size: usize,
    metric_ids: MetricIds,
    clock: Rc<Clock>,
}

fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

impl Filter {
    fn flow(flow: Flow) -> Action {
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Pause => Action::Pause,
        }
    }

    /// Carries out everything the exchange asked for. A call the host refuses at once is fed
    /// back as a rejected call, which may queue further commands; the loop drains those too.
    fn drain(&mut self) {
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
        while let Some(command) = exchange.poll_command() {
            match command {
                Command::HttpCall {
                    call,
                    cluster,
                    headers,
                    credential,
                    body,
                    timeout_ms,
                } => {
                    let mut headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    if let Some((name, value)) = &credential {
                        headers.push((name.as_str(), value.expose()));
                    }
                    match hostcalls::dispatch_http_call(
                        &cluster,
                        headers,
                        Some(&body),
                        Vec::new(),
                        Duration::from_millis(timeout_ms),
                    ) {
                        Ok(token) => {
                            self.calls.insert(token, call);
                        }
                        Err(status) => {
                            warn!("looper: dispatch to cluster `{cluster}` refused: {status:?}");
                            let now = self.clock.now();
                            exchange.on_call_result(call, CallResult::Rejected, now);
                        }
                    }
                }
                Command::ForwardUpstream {
                    headers,
                    credential,
                    body,
                } => {
                    // The client's headers are replaced whole: only what routes the request
                    // and tracing survive, so no client cookie, key or header reaches the
                    // model.
                    let original =
                        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
                    let kept = original.iter().filter(|(name, _)| {
                        matches!(name.as_str(), ":method" | ":scheme" | ":authority")
                            || FORWARDED_CLIENT_HEADERS.contains(&name.as_str())
                    });
                    let mut map: Vec<(&str, &[u8])> = kept
                        .map(|(name, value)| (name.as_str(), value.as_slice()))
                        .collect();
                    map.extend(
                        headers
                            .iter()
                            .map(|(name, value)| (name.as_str(), value.as_bytes())),
                    );
                    if let Some((name, value)) = &credential {
                        map.push((name.as_str(), value.expose().as_bytes()));
                    }
                    if let Err(status) = hostcalls::set_map_bytes(MapType::HttpRequestHeaders, map)
                    {
                        error!("looper: the final call's headers were refused: {status:?}");
                    }
                    if let Err(status) = hostcalls::set_buffer(
                        BufferType::HttpRequestBody,
                        0,
                        self.request_body_size,
                        &body,
                    ) {
                        error!("looper: the final call's body was refused: {status:?}");
                    }
                    self.request_body_size = body.len();
                    let _ = hostcalls::resume_http_request();
                }
                Command::Reply {
                    status,
                    headers,
                    body,
                } => {
                    if self.replied {
                        continue;
                    }
                    self.replied = true;
                    let headers: Vec<(&str, &str)> =
                        headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    if let Err(status) =
                        hostcalls::send_http_response(u32::from(status), headers, Some(&body))
                    {
                        error!("looper: local reply refused: {status:?}");
                    }
                }
                Command::Count(id) => {
                    if let Some(Some(host_id)) = self.metric_ids.get(id.0) {
                        let _ = hostcalls::increment_metric(*host_id, 1);
                    }
                }
                Command::Add(id, value) => {
                    if let Some(Some(host_id)) = self.metric_ids.get(id.0) {
                        let value = i64::try_from(value).unwrap_or(i64::MAX);
                        let _ = hostcalls::increment_metric(*host_id, value);
                    }
                }
                Command::Record(id, value) => {
                    if let Some(Some(host_id)) = self.metric_ids.get(id.0) {
                        let _ = hostcalls::record_metric(*host_id, value);
                    }
                }
            }
        }
    }
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(call) = self.calls.remove(&token_id) else {
            return;
        };
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
        let result = if num_headers == 0 {
            CallResult::Reset
        } else {
            let status = header(MapType::HttpCallResponseHeaders, ":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
                .unwrap_or(0);
            let cap = exchange.max_upstream_body_bytes();
            if body_size > cap {
                CallResult::BodyTooLarge {
                    status,
                    size: body_size,
                }
            } else {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                CallResult::Response { status, body }
            }
        };
        let now = self.clock.now();
        exchange.on_call_result(call, result, now);
        self.drain();
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // Only the gateway routes a final call by cluster and host; never a client, whatever
        // the plugin's state.
        for name in [STREAM_CLUSTER_HEADER, STREAM_AUTHORITY_HEADER] {
            if header(MapType::HttpRequestHeaders, name).is_some() {
                let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
            }
        }
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let method = header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        let path = header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        let trace = header(MapType::HttpRequestHeaders, TRACE_HEADER);
        let signal_headers: Vec<Option<Vec<u8>>> = exchange
            .signal_header_names()
            .iter()
            .map(|name| header(MapType::HttpRequestHeaders, name))
            .collect();
        let head = RequestHead {
            method: &method,
            path: &path,
            trace: trace.as_deref(),
            signal_headers: &signal_headers,
        };
        let now = self.clock.now();
        let flow = exchange.on_request_headers(head, end_of_stream, now);
        self.drain();
        Self::flow(flow)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let new_bytes = match exchange.body_read_range(body_size) {
            Some((start, len)) if len > 0 => {
                hostcalls::get_buffer(BufferType::HttpRequestBody, start, len)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        self.request_body_size = body_size;
        let now = self.clock.now();
        let flow = exchange.on_request_body(body_size, &new_bytes, end_of_stream, now);
        self.drain();
        Self::flow(flow)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let now = self.clock.now();
        let flow = exchange.on_request_trailers(now);
        self.drain();
        Self::flow(flow)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Our own local reply and pass-through responses go out untouched; only the answer
        // of a forwarded final call is rewritten.
        if self.replied {
            return Action::Continue;
        }
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        if !exchange.forwards_final_call() {
            // A pass-through's response: not even its headers are read.
            return Action::Continue;
        }
        let status = header(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let event_stream = header(MapType::HttpResponseHeaders, "content-type")
            .is_some_and(|t| t.trim_ascii().starts_with(b"text/event-stream"))
            && header(MapType::HttpResponseHeaders, "content-encoding")
                .is_none_or(|e| e.trim_ascii().eq_ignore_ascii_case(b"identity"));
        let now = self.clock.now();
        match exchange.on_response_headers(status, event_stream, now) {
            ResponseHead::Untouched => Action::Continue,
            ResponseHead::Stream { headers } => {
                let date = header(MapType::HttpResponseHeaders, "date");
                let mut map: Vec<(&str, &[u8])> = vec![(":status", b"200")];
                if let Some(date) = &date {
                    map.push(("date", date.as_slice()));
                }
                map.extend(
                    headers
                        .iter()
                        .map(|(name, value)| (*name, value.as_bytes())),
                );
                if let Err(status) = hostcalls::set_map_bytes(MapType::HttpResponseHeaders, map) {
                    error!("looper: the stream's headers were refused: {status:?}");
                }
                self.drain();
                Action::Continue
            }
            ResponseHead::Replaced => {
                // The fallback reply replaces the upstream's response, which has sent
                // nothing to the client yet.
                self.drain();
                Action::Pause
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        if !exchange.rewrites_response() {
            return Action::Continue;
        }
        let chunk = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let now = self.clock.now();
        if let Some(rewritten) = exchange.on_response_body(&chunk, end_of_stream, now) {
            if let Err(status) =
                hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &rewritten)
            {
                error!("looper: rewriting the stream was refused: {status:?}");
            }
        }
        self.drain();
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(exchange) = self.exchange.as_mut() {
            exchange.on_stream_done();
        }
        self.drain();
        // Envoy 1.40 lets calls still in flight run to completion, but delivers their results
        // to the root context id, and the SDK drops them once this context is deleted (it
        // deletes it right after `on_done`, whatever `on_done` returns). Nothing to wait for.
        self.calls.clear();
    }
}
