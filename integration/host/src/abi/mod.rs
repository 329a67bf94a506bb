//! The proxy-wasm ABI 0.2.1 vocabulary: status codes, enum values and the
//! encodings the host and the guest exchange through linear memory.
//!
//! Numbers follow the spec (`proxy-wasm/spec abi-versions/v0.2.1`) and Envoy's
//! `WasmResult`; the Rust SDK 0.2.5 (`src/types.rs`) uses the same values.

pub mod maps;
pub(crate) mod memory;

/// Status codes returned by every hostcall (Envoy's `WasmResult`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A key, map, buffer or queue does not exist.
    NotFound = 1,
    /// The call is not valid in this state or with these arguments.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// An input could not be parsed.
    ParseFailure = 4,
    /// A pointer or length points outside linear memory.
    InvalidMemoryAccess = 6,
    /// A queue is empty.
    Empty = 7,
    /// Compare-and-swap failed on shared data.
    CasMismatch = 8,
    /// The host could not perform the operation.
    InternalFailure = 10,
    /// An HTTP call was reset (reported through `proxy_get_status`).
    BrokenConnection = 11,
    /// The host does not implement this operation.
    Unimplemented = 12,
}

impl Status {
    /// The wire value returned to the guest.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Why a hostcall did not succeed: either a status for the guest, or a trap
/// (e.g. the guest allocator trapped while the host was returning bytes).
#[derive(Debug)]
pub(crate) enum Fault {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fault {
    fn from(status: Status) -> Self {
        Fault::Status(status)
    }
}

impl From<wasmtime::Error> for Fault {
    fn from(error: wasmtime::Error) -> Self {
        Fault::Trap(error)
    }
}

/// Converts a hostcall outcome into what wasmtime expects from an import.
pub(crate) fn finish(result: Result<(), Fault>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok.code()),
        Err(Fault::Status(status)) => Ok(status.code()),
        Err(Fault::Trap(error)) => Err(error),
    }
}

/// Header map selector (`proxy_*_header_map_*`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Downstream request headers.
    RequestHeaders,
    /// Downstream request trailers.
    RequestTrailers,
    /// Response headers (upstream response or local reply).
    ResponseHeaders,
    /// Response trailers.
    ResponseTrailers,
    /// gRPC initial metadata (not supported by this host).
    GrpcReceiveInitialMetadata,
    /// gRPC trailing metadata (not supported by this host).
    GrpcReceiveTrailingMetadata,
    /// Headers of the HTTP call response being delivered.
    HttpCallResponseHeaders,
    /// Trailers of the HTTP call response being delivered.
    HttpCallResponseTrailers,
}

impl MapType {
    /// Decodes the wire value.
    pub fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcReceiveInitialMetadata,
            5 => MapType::GrpcReceiveTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffer selector (`proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// Downstream request body.
    RequestBody,
    /// Response body.
    ResponseBody,
    /// TCP downstream data (unused for HTTP filters).
    DownstreamData,
    /// TCP upstream data (unused for HTTP filters).
    UpstreamData,
    /// Body of the HTTP call response being delivered.
    HttpCallResponseBody,
    /// gRPC message (not supported by this host).
    GrpcReceiveBuffer,
    /// `vm_config.configuration`.
    VmConfiguration,
    /// The plugin configuration, readable during `proxy_on_configure` only.
    PluginConfiguration,
    /// Foreign function call data (not supported by this host).
    CallData,
}

impl BufferType {
    /// Decodes the wire value.
    pub fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// Stream selector for `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// The HTTP request direction (decoding).
    Request,
    /// The HTTP response direction (encoding).
    Response,
    /// TCP downstream.
    Downstream,
    /// TCP upstream.
    Upstream,
}

impl StreamType {
    /// Decodes the wire value.
    pub fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => StreamType::Request,
            1 => StreamType::Response,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// Log levels of `proxy_log` / `proxy_get_log_level`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Trace.
    Trace = 0,
    /// Debug.
    Debug = 1,
    /// Info (Envoy's default component level).
    Info = 2,
    /// Warn.
    Warn = 3,
    /// Error.
    Error = 4,
    /// Critical; the SDK's panic hook logs the panic message at this level.
    Critical = 5,
}

impl LogLevel {
    /// Decodes the wire value.
    pub fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// Callback results of `proxy_on_*_headers/body/trailers`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Let the stream go on.
    Continue,
    /// Stop iteration (headers) or stop and buffer (body).
    Pause,
}

impl Action {
    /// Decodes the wire value; anything but 0 stops iteration, as in Envoy.
    pub fn from_raw(raw: i32) -> Self {
        if raw == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
