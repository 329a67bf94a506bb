//! The least a filter on Looper's path can do, for the gateway bench's floor.
//!
//! The plugin configuration picks the mode:
//! - `pause`: hold the request at its headers and release it with its whole body (what any
//!   filter that reads the body must do), then let the route answer;
//! - `dispatch`: in addition, send the body unchanged to the `simulator` cluster with one
//!   `dispatch_http_call` (its `model` renamed from `floor/dispatch` to `sim-a`) and answer with
//!   the response as a local reply (the shape of Looper's `single`), parsing nothing;
//! - `forward`: as `pause`, then hold the route's response headers, buffer its body, and
//!   replace a header and the whole body (with the same bytes) before letting it go: the
//!   shape of a `single` whose one call goes through the router and whose answer is rewritten;
//! - `forward_reply`: as `forward`, but the buffered answer goes out as a local reply;
//! - `metrics`, `reads`, `absent`: as `pause`, with 20 host calls at the request headers
//!   (`increment_metric`; reads of `:path`, which the host hands back through the module's
//!   allocator; reads of a header that is not there), to price a host call.
//!
//! Built with the `aho` or `matchers` feature, the module also builds the router's matchers
//! from its configuration when it loads, so the linker keeps their code: V8's idle memory
//! with them tells what the spec's keyword and regex signals alone cost under eager
//! compilation, whatever the rest of a plugin does.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { mode: Mode::Pause, counter: None }) });
}}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Pause,
    Dispatch,
    Forward,
    ForwardReply,
    Metrics,
    Reads,
    Absent,
}

struct Root {
    mode: Mode,
    counter: Option<u32>,
}

/// Host calls a request makes in the `metrics`, `reads` and `absent` modes.
const HOST_CALLS: usize = 20;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.mode = match config.trim_ascii() {
            b"dispatch" => Mode::Dispatch,
            b"forward" => Mode::Forward,
            b"forward_reply" => Mode::ForwardReply,
            b"metrics" => Mode::Metrics,
            b"reads" => Mode::Reads,
            b"absent" => Mode::Absent,
            _ => Mode::Pause,
        };
        self.counter = hostcalls::define_metric(MetricType::Counter, "floor_calls").ok();
        #[cfg(feature = "aho")]
        if matchers::any_match(&config) {
            let _ = hostcalls::log(proxy_wasm::types::LogLevel::Debug, "a matcher matched");
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            mode: self.mode,
            counter: self.counter,
        }))
    }
}

struct Floor {
    mode: Mode,
    counter: Option<u32>,
}

impl Context for Floor {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        size: usize,
        _trailers: usize,
    ) {
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let headers = vec![("content-type", "application/json")];
        let _ = hostcalls::send_http_response(200, headers, Some(&body));
    }
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        for _ in 0..HOST_CALLS {
            match (self.mode, self.counter) {
                (Mode::Metrics, Some(id)) => {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                (Mode::Reads, _) => {
                    let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
                }
                (Mode::Absent, _) => {
                    let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-absent");
                }
                _ => break,
            }
        }
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if self.mode != Mode::Dispatch {
            return Action::Continue;
        }
        let mut body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        rename_model(&mut body);
        let headers = vec![
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "simulator"),
            ("content-type", "application/json"),
        ];
        let timeout = Duration::from_secs(30);
        match hostcalls::dispatch_http_call("simulator", headers, Some(&body), vec![], timeout) {
            Ok(_) => Action::Pause,
            Err(_) => {
                let _ = hostcalls::send_http_response(503, vec![], None);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream || !matches!(self.mode, Mode::Forward | Mode::ForwardReply) {
            return Action::Continue;
        }
        let _ =
            hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, "content-length", None);
        Action::Pause
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !matches!(self.mode, Mode::Forward | Mode::ForwardReply) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if self.mode == Mode::ForwardReply {
            let headers = vec![("content-type", "application/json")];
            let _ = hostcalls::send_http_response(200, headers, Some(&body));
            return Action::Pause;
        }
        let _ = hostcalls::set_map_value_bytes(
            MapType::HttpResponseHeaders,
            "x-floor",
            Some(b"forward"),
        );
        let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, &body);
        Action::Continue
    }
}

/// `"floor/dispatch"` → `"sim-a"`, padded to the same length with JSON whitespace after
/// the closing quote, so nothing else in the body moves.
fn rename_model(body: &mut [u8]) {
    const FROM: &[u8] = b"\"floor/dispatch\"";
    const TO: &[u8] = b"\"sim-a\"         ";
    if let Some(at) = body.windows(FROM.len()).position(|w| w == FROM) {
        if let Some(slot) = body.get_mut(at..at + FROM.len()) {
            slot.copy_from_slice(TO);
        }
    }
}

/// The matchers Looper's router builds, over the configuration's text: keyword automata
/// (aho-corasick's DFA and contiguous NFA, as `src/router/overlapping.rs` builds them) and,
/// with `matchers`, a case-insensitive regular expression.
#[cfg(feature = "aho")]
mod matchers {
    use aho_corasick::automaton::Automaton;
    use aho_corasick::{dfa::DFA, nfa::contiguous::NFA, Input, MatchKind, StartKind};

    pub fn any_match(config: &[u8]) -> bool {
        let text = String::from_utf8_lossy(config);
        let keywords: Vec<&str> = text.split(',').filter(|k| !k.is_empty()).collect();
        let input = Input::new(text.as_ref());
        let dfa = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(&keywords)
            .ok()
            .and_then(|dfa| dfa.try_find(&input).ok().flatten());
        let nfa = NFA::builder()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(&keywords)
            .ok()
            .and_then(|nfa| nfa.try_find(&input).ok().flatten());
        // Every matcher runs, none skipped by a short circuit.
        let regex = regex_match(&text);
        dfa.is_some() | nfa.is_some() | regex
    }

    #[cfg(feature = "matchers")]
    fn regex_match(text: &str) -> bool {
        regex::RegexBuilder::new(text)
            .case_insensitive(true)
            .build()
            .map(|regex| regex.is_match(text))
            .unwrap_or(false)
    }

    #[cfg(not(feature = "matchers"))]
    fn regex_match(_text: &str) -> bool {
        false
    }
}
