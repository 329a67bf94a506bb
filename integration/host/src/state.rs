//! The data every hostcall works on: one `HostState` per wasmtime `Store`, i.e. per
//! [`Vm`](crate::Vm). Nothing here is global, so VMs are independent unless they
//! were given the same [`SharedStore`].

use std::collections::{BTreeMap, VecDeque};

use wasmtime::{Memory, StoreLimits, TypedFunc};

use crate::abi::{BufferType, LogLevel, MapType, Status};
use crate::calls::{CallRegistry, CallResponse};
use crate::headers::HeaderMap;
use crate::metrics::MetricIds;
use crate::options::VmOptions;
use crate::request::ContextId;
use crate::shared::SharedStore;
use crate::stream::Stream;
use crate::wasi::Rng;

/// Guest exports the hostcalls need while the guest is running.
#[derive(Clone)]
pub(crate) struct GuestExports {
    pub memory: Memory,
    pub allocate: TypedFunc<i32, i32>,
}

/// One `proxy_log` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Level the plugin used.
    pub level: LogLevel,
    /// The message.
    pub message: String,
    /// Context whose callback logged it (0 outside callbacks).
    pub context: ContextId,
}

/// Actions Envoy defers until the current VM call returns (`addAfterVmCallAction`).
#[derive(Debug)]
pub(crate) enum Deferred {
    ContinueRequest(ContextId),
    ContinueResponse,
    LocalReply {
        context: ContextId,
        status: u32,
        details: String,
        body: Vec<u8>,
        headers: HeaderMap,
    },
    Reset(ContextId),
}

/// Virtual time: a fixed Unix start plus what the test advanced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub start_unix_ms: u64,
    pub elapsed_ns: u64,
}

impl Clock {
    pub(crate) fn now_unix_ns(&self) -> u64 {
        self.start_unix_ms
            .saturating_mul(1_000_000)
            .saturating_add(self.elapsed_ns)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.start_unix_ms + self.elapsed_ns / 1_000_000
    }
}

pub(crate) struct HostState {
    pub limits: StoreLimits,
    pub guest: Option<GuestExports>,
    pub options: VmOptions,
    pub shared: SharedStore,
    /// Identity of this VM inside the shared store (queue notifications).
    pub vm_uid: u64,
    pub root_id: ContextId,
    pub clock: Clock,
    pub rng: Rng,
    pub logs: Vec<LogEntry>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Context whose callback is running (0 when the guest is idle).
    pub active: ContextId,
    /// Context hostcalls act on (`proxy_set_effective_context`).
    pub effective: ContextId,
    pub streams: BTreeMap<ContextId, Stream>,
    pub root_callbacks: Vec<&'static str>,
    pub root_status: (u32, String),
    pub calls: CallRegistry,
    /// The call response being delivered (maps 6/7, buffer 4).
    pub call_response: Option<CallResponse>,
    pub deferred: VecDeque<Deferred>,
    pub tick_period_ms: u32,
    pub last_tick_ms: u64,
    pub metric_ids: MetricIds,
    /// Plugin configuration, visible during `proxy_on_configure` only.
    pub plugin_config: Option<Vec<u8>>,
    /// `proxy_on_log` is running: maps read like Envoy's access-log phase.
    pub log_phase: bool,
    pub done_calls: u32,
}

impl HostState {
    pub(crate) fn new(
        options: VmOptions,
        shared: SharedStore,
        limits: StoreLimits,
        root_id: ContextId,
    ) -> Self {
        let vm_uid = shared.register_vm();
        HostState {
            limits,
            guest: None,
            clock: Clock {
                start_unix_ms: options.start_time_unix_ms,
                elapsed_ns: 0,
            },
            rng: Rng::new(options.random_seed),
            options,
            shared,
            vm_uid,
            root_id,
            logs: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            active: 0,
            effective: 0,
            streams: BTreeMap::new(),
            root_callbacks: Vec::new(),
            root_status: (0, String::new()),
            calls: CallRegistry::default(),
            call_response: None,
            deferred: VecDeque::new(),
            tick_period_ms: 0,
            last_tick_ms: 0,
            metric_ids: MetricIds::default(),
            plugin_config: None,
            log_phase: false,
            done_calls: 0,
        }
    }

    /// The live stream hostcalls act on, if the effective context is one.
    pub(crate) fn stream(&self) -> Option<&Stream> {
        self.streams.get(&self.effective).filter(|s| !s.deleted)
    }

    pub(crate) fn stream_mut(&mut self) -> Option<&mut Stream> {
        self.streams.get_mut(&self.effective).filter(|s| !s.deleted)
    }

    /// Whether `id` names a live context (`proxy_set_effective_context`).
    pub(crate) fn is_live_context(&self, id: ContextId) -> bool {
        id == self.root_id || self.streams.get(&id).is_some_and(|s| !s.deleted)
    }

    /// `proxy_get_status` state of the effective context.
    pub(crate) fn status_mut(&mut self) -> &mut (u32, String) {
        let effective = self.effective;
        match self.streams.get_mut(&effective) {
            Some(stream) => &mut stream.status,
            None => &mut self.root_status,
        }
    }

    /// A header map for reading, or `None` where Envoy's pointer would be null.
    pub(crate) fn map(&self, map: MapType) -> Option<&HeaderMap> {
        match map {
            MapType::RequestHeaders => self
                .stream()
                .filter(|s| s.request_headers_visible || self.log_phase)
                .map(|s| &s.request_headers),
            MapType::ResponseHeaders => self
                .stream()
                .filter(|s| s.response_headers_visible || (self.log_phase && s.responding))
                .map(|s| &s.response_headers),
            MapType::HttpCallResponseHeaders => self.call_response.as_ref().map(|r| &r.headers),
            MapType::HttpCallResponseTrailers => self
                .call_response
                .as_ref()
                .and_then(|r| r.trailers.as_ref()),
            MapType::RequestTrailers
            | MapType::ResponseTrailers
            | MapType::GrpcReceiveInitialMetadata
            | MapType::GrpcReceiveTrailingMetadata => None,
        }
    }

    /// A header map for writing; the access-log phase is read-only.
    pub(crate) fn map_mut(&mut self, map: MapType) -> Option<&mut HeaderMap> {
        match map {
            MapType::RequestHeaders => self
                .stream_mut()
                .filter(|s| s.request_headers_visible)
                .map(|s| &mut s.request_headers),
            MapType::ResponseHeaders => self
                .stream_mut()
                .filter(|s| s.response_headers_visible)
                .map(|s| &mut s.response_headers),
            MapType::HttpCallResponseHeaders => self.call_response.as_mut().map(|r| &mut r.headers),
            MapType::HttpCallResponseTrailers => self
                .call_response
                .as_mut()
                .and_then(|r| r.trailers.as_mut()),
            MapType::RequestTrailers
            | MapType::ResponseTrailers
            | MapType::GrpcReceiveInitialMetadata
            | MapType::GrpcReceiveTrailingMetadata => None,
        }
    }

    /// A buffer for reading, or `None` (`NotFound`).
    pub(crate) fn buffer(&self, buffer: BufferType) -> Option<&[u8]> {
        match buffer {
            BufferType::RequestBody => self
                .stream()
                .filter(|s| s.request_body_visible)
                .map(|s| s.request_body.as_slice()),
            BufferType::ResponseBody => self
                .stream()
                .filter(|s| s.response_body_visible)
                .map(|s| s.response_body.as_slice()),
            BufferType::HttpCallResponseBody => {
                self.call_response.as_ref().map(|r| r.body.as_slice())
            }
            BufferType::VmConfiguration => Some(self.options.vm_config.as_slice()),
            BufferType::PluginConfiguration => self.plugin_config.as_deref(),
            BufferType::DownstreamData
            | BufferType::UpstreamData
            | BufferType::GrpcReceiveBuffer
            | BufferType::CallData => None,
        }
    }

    /// The mutable body buffers; every other buffer is read-only in Envoy.
    pub(crate) fn buffer_mut(&mut self, buffer: BufferType) -> Option<&mut Vec<u8>> {
        match buffer {
            BufferType::RequestBody => self
                .stream_mut()
                .filter(|s| s.request_body_visible)
                .map(|s| &mut s.request_body),
            BufferType::ResponseBody => self
                .stream_mut()
                .filter(|s| s.response_body_visible)
                .map(|s| &mut s.response_body),
            _ => None,
        }
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        let context = self.effective;
        self.logs.push(LogEntry {
            level,
            message,
            context,
        });
    }
}

/// Envoy's `Buffer::copyFrom`: replace everything (`start == 0`, `length >=
/// size`), prepend (`start == 0`, `length == 0`) or append (`start >= size`);
/// anything else is `BadArgument`.
pub(crate) fn splice_buffer(
    buffer: &mut Vec<u8>,
    start: usize,
    length: usize,
    data: &[u8],
) -> Result<(), Status> {
    if start == 0 {
        if length == 0 {
            buffer.splice(0..0, data.iter().copied());
            Ok(())
        } else if length >= buffer.len() {
            buffer.clear();
            buffer.extend_from_slice(data);
            Ok(())
        } else {
            Err(Status::BadArgument)
        }
    } else if start >= buffer.len() {
        buffer.extend_from_slice(data);
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_follows_envoy_copy_from() {
        let mut buf = b"hello".to_vec();
        splice_buffer(&mut buf, 0, 5, b"bye").unwrap();
        assert_eq!(buf, b"bye");
        splice_buffer(&mut buf, 0, 0, b">").unwrap();
        assert_eq!(buf, b">bye");
        splice_buffer(&mut buf, 4, 0, b"!").unwrap();
        assert_eq!(buf, b">bye!");
        splice_buffer(&mut buf, 0, usize::MAX, b"x").unwrap();
        assert_eq!(buf, b"x");
        let mut buf = b"hello".to_vec();
        assert_eq!(
            splice_buffer(&mut buf, 1, 2, b"x"),
            Err(Status::BadArgument)
        );
        assert_eq!(
            splice_buffer(&mut buf, 0, 2, b"x"),
            Err(Status::BadArgument)
        );
    }
}
