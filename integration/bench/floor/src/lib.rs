//! The least a filter on Looper's path can do, for the gateway bench's floor.
//!
//! The plugin configuration picks the mode:
//! - `pause`: hold the request at its headers and release it with its whole body (what any
//!   filter that reads the body must do), then let the route answer;
//! - `dispatch`: in addition, send the body unchanged to the `simulator` cluster with one
//!   `dispatch_http_call` (its `model` renamed from `floor/dispatch` to `sim-a`) and answer with
//!   the response as a local reply (the shape of Looper's `single`), parsing nothing.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { dispatch: false }) });
}}

struct Root {
    dispatch: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.dispatch = config.trim_ascii() == b"dispatch";
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            dispatch: self.dispatch,
        }))
    }
}

struct Floor {
    dispatch: bool,
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
        if !self.dispatch {
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
