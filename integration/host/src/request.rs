//! What a test sends downstream and what comes back: requests, outcomes and the
//! responses a client would see.

use std::borrow::Cow;

use crate::headers::HeaderMap;

/// Id of a proxy-wasm context (root or HTTP stream).
pub type ContextId = u32;

/// A downstream HTTP request.
///
/// `headers` carries the pseudo headers (`:method`, `:path`, `:authority`,
/// `:scheme`) like Envoy's request header map. `body: None` means the headers end
/// the stream (`end_of_stream = true` on `proxy_on_request_headers`, as for a GET).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Request headers including pseudo headers.
    pub headers: HeaderMap,
    /// Body, if the request has one.
    pub body: Option<Vec<u8>>,
    /// Deliver the body in chunks of this size (then a final empty end-of-stream
    /// call, as Envoy's HTTP/1 codec does); `None` delivers it in one call.
    pub chunk_size: Option<usize>,
}

/// The `:authority` the request builders use.
pub const DEFAULT_AUTHORITY: &str = "looper.test";

impl Request {
    /// A request with the four pseudo headers and no body.
    pub fn new(method: &str, path: &str) -> Self {
        let headers = HeaderMap::from([
            (":method", method),
            (":path", path),
            (":authority", DEFAULT_AUTHORITY),
            (":scheme", "http"),
        ]);
        Request {
            headers,
            body: None,
            chunk_size: None,
        }
    }

    /// `GET path`, headers only.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// `POST path` with a body and its `content-length`, like a real client sends.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path).body(body)
    }

    /// `POST path` with a JSON body and `content-type: application/json`.
    pub fn post_json(path: &str, body: &serde_json::Value) -> Self {
        Self::post(path, body.to_string()).header("content-type", "application/json")
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(name, value);
        self
    }

    /// Sets the body and `content-length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        let body = body.into();
        self.headers
            .replace("content-length", body.len().to_string());
        self.body = Some(body);
        self
    }

    /// Delivers the body in chunks of `size` bytes.
    pub fn chunked(mut self, size: usize) -> Self {
        self.chunk_size = Some(size.max(1));
        self
    }
}

/// Where a downstream request stands, from the client's and the route's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin holds the request (paused, waiting for calls or more body).
    Pending,
    /// Envoy would never finish this request: the headers were paused without
    /// `allow_on_headers_stop_iteration`, so the body is held back from the plugin,
    /// or the VM failed outside a stream callback while the request waited on it.
    /// The client waits until it or a route timeout gives up.
    Hung,
    /// A local reply was sent (by the plugin, by Envoy's buffer limit, or by the
    /// fail-closed path of a failed VM).
    Replied(LocalReply),
    /// The whole request went on to the route, as the plugin left it.
    Continued {
        /// Headers that reached the route.
        headers: HeaderMap,
        /// Body that reached the route.
        body: Vec<u8>,
    },
    /// The plugin reset the stream (`proxy_close_stream`).
    Reset,
}

impl Outcome {
    /// The local reply, if there is one.
    pub fn reply(&self) -> Option<&LocalReply> {
        match self {
            Outcome::Replied(reply) => Some(reply),
            _ => None,
        }
    }

    /// Whether the plugin still holds the request.
    pub fn is_pending(&self) -> bool {
        matches!(self, Outcome::Pending)
    }

    /// Whether the request went on to the route.
    pub fn is_continued(&self) -> bool {
        matches!(self, Outcome::Continued { .. })
    }
}

/// A local reply after the plugin's own response callbacks ran on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// Final `:status`.
    pub status: u32,
    /// Final response headers, `:status` included.
    pub headers: HeaderMap,
    /// Final body.
    pub body: Vec<u8>,
    /// Response code details (`request_payload_too_large`, `wasm_fail_stream`, or
    /// what the plugin passed; the Rust SDK passes none).
    pub details: String,
}

impl LocalReply {
    /// First value of a header as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// Body as text (lossy).
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// Body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }
}

/// The response a client received, local or from upstream, after the plugin's
/// response callbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// Final `:status`.
    pub status: u32,
    /// Final headers, `:status` included.
    pub headers: HeaderMap,
    /// Final body.
    pub body: Vec<u8>,
    /// Whether it was a local reply rather than the route's response.
    pub local: bool,
}

impl ClientResponse {
    /// First value of a header as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// Body as text (lossy).
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// Body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }
}

/// What reached the route so far. With "continue headers, pause body" the route
/// sees the headers long before (or without) the body, as notes §0.2 describe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Headers as the plugin left them when they passed the filter.
    pub headers: HeaderMap,
    /// Body bytes forwarded so far.
    pub body: Vec<u8>,
    /// Whether the end of the request was forwarded.
    pub end_of_stream: bool,
}
