//! Calling into the guest: the exports the host drives, and the single place
//! where a guest call runs, so fuel, context bookkeeping and trap handling are the
//! same for every callback.

use wasmtime::{Instance, Store, Trap, TypedFunc, WasmParams, WasmResults};

use super::Vm;
use crate::abi::LogLevel;
use crate::error::{HostError, Result};
use crate::headers::HeaderMap;
use crate::request::{ClientResponse, ContextId, LocalReply, Outcome};
use crate::state::HostState;

/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
pub(crate) type HttpCallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The callbacks of ABI 0.2.1 the host invokes. A missing callback is skipped and
/// treated as its neutral result (`Continue`, `true`), as Envoy does.
#[derive(Clone)]
pub(crate) struct Exports {
    pub initialize: Option<TypedFunc<(), ()>>,
    pub context_create: Option<TypedFunc<(i32, i32), ()>>,
    pub vm_start: Option<TypedFunc<(i32, i32), i32>>,
    pub configure: Option<TypedFunc<(i32, i32), i32>>,
    pub tick: Option<TypedFunc<i32, ()>>,
    pub queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    pub request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub http_call_response: Option<HttpCallResponseFn>,
    pub log: Option<TypedFunc<i32, ()>>,
    pub done: Option<TypedFunc<i32, i32>>,
    pub delete: Option<TypedFunc<i32, ()>>,
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(func) => func.typed::<P, R>(&*store).map(Some).map_err(|e| {
            HostError::Abi(format!("export {name} has an unexpected signature: {e:#}"))
        }),
    }
}

impl Exports {
    pub(crate) fn resolve(instance: &Instance, store: &mut Store<HostState>) -> Result<Self> {
        Ok(Exports {
            initialize: typed(instance, store, "_initialize")?,
            context_create: typed(instance, store, "proxy_on_context_create")?,
            vm_start: typed(instance, store, "proxy_on_vm_start")?,
            configure: typed(instance, store, "proxy_on_configure")?,
            tick: typed(instance, store, "proxy_on_tick")?,
            queue_ready: typed(instance, store, "proxy_on_queue_ready")?,
            request_headers: typed(instance, store, "proxy_on_request_headers")?,
            request_body: typed(instance, store, "proxy_on_request_body")?,
            response_headers: typed(instance, store, "proxy_on_response_headers")?,
            response_body: typed(instance, store, "proxy_on_response_body")?,
            http_call_response: typed(instance, store, "proxy_on_http_call_response")?,
            log: typed(instance, store, "proxy_on_log")?,
            done: typed(instance, store, "proxy_on_done")?,
            delete: typed(instance, store, "proxy_on_delete")?,
        })
    }
}

/// Why the VM died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The plugin panicked (the SDK logs the message at critical, then aborts).
    Panic,
    /// The callback used up [`VmOptions::fuel_per_callback`](crate::VmOptions::fuel_per_callback).
    OutOfFuel,
    /// Linear memory tried to grow past [`VmOptions::memory_limit_bytes`](crate::VmOptions::memory_limit_bytes).
    MemoryLimit,
    /// The plugin called WASI `proc_exit`.
    ProcExit,
    /// The plugin called an import this host does not implement.
    UnknownImport,
    /// Any other trap.
    Trap,
}

/// A trap that killed the VM. Afterwards the VM behaves like Envoy's default
/// `failure_policy: FAIL_CLOSED`: new requests get a 503 without reaching the
/// plugin and no callback runs again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmFailure {
    /// Export that trapped (`proxy_on_request_body`, `_initialize`, ...).
    pub callback: &'static str,
    /// Context it ran for.
    pub context: ContextId,
    /// Classification of the trap.
    pub kind: FailureKind,
    /// Wasmtime's description.
    pub message: String,
    /// The panic message the SDK logged at critical level during that callback.
    pub panic_message: Option<String>,
}

impl std::fmt::Display for VmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (context {}) trapped: {:?}: {}",
            self.callback, self.context, self.kind, self.message
        )?;
        if let Some(panic) = &self.panic_message {
            write!(f, "; plugin panic: {panic}")?;
        }
        Ok(())
    }
}

/// Callbacks after which Envoy's `CHECK_FAIL_HTTP` answers the stream with 503.
const STREAM_CALLBACKS: &[&str] = &[
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_response_headers",
    "proxy_on_response_body",
];

/// The reply Envoy's `failStream` sends.
pub(crate) fn fail_closed_reply() -> LocalReply {
    LocalReply {
        status: 503,
        headers: HeaderMap::from([(":status", "503")]),
        body: Vec::new(),
        details: "wasm_fail_stream".to_string(),
    }
}

impl Vm {
    /// Runs one guest callback for `context`. Returns `None` when the VM is (or
    /// just became) failed; `default` when the module does not export it.
    pub(crate) fn invoke<P, R>(
        &mut self,
        context: ContextId,
        name: &'static str,
        func: Option<TypedFunc<P, R>>,
        params: P,
        default: R,
    ) -> Option<R>
    where
        P: WasmParams,
        R: WasmResults,
    {
        if self.failure.is_some() {
            return None;
        }
        let Some(func) = func else {
            return Some(default);
        };
        let state = self.store.data_mut();
        match state.streams.get_mut(&context) {
            Some(stream) => stream.callbacks.push(name),
            None => state.root_callbacks.push(name),
        }
        state.active = context;
        state.effective = context;
        let logs_before = state.logs.len();
        // Fuel is only consumed when enabled, which `Plugin` always does.
        let _ = self.store.set_fuel(self.fuel_per_callback);
        let result = func.call(&mut self.store, params);
        self.last_fuel_used = self
            .fuel_per_callback
            .saturating_sub(self.store.get_fuel().unwrap_or(0));
        self.total_fuel_used = self.total_fuel_used.saturating_add(self.last_fuel_used);
        let state = self.store.data_mut();
        state.active = 0;
        state.effective = 0;
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.fail(context, name, &error, logs_before);
                None
            }
        }
    }

    fn fail(
        &mut self,
        context: ContextId,
        callback: &'static str,
        error: &wasmtime::Error,
        logs_before: usize,
    ) {
        let message = format!("{error:#}");
        let kind = match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => FailureKind::OutOfFuel,
            Some(Trap::UnreachableCodeReached) => FailureKind::Panic,
            _ if message.contains("forcing trap when growing memory") => FailureKind::MemoryLimit,
            _ if message.contains("proc_exit") => FailureKind::ProcExit,
            _ if message.contains("unknown import") => FailureKind::UnknownImport,
            _ => FailureKind::Trap,
        };
        let state = self.store.data_mut();
        let panic_message = state
            .logs
            .get(logs_before..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|entry| entry.level == LogLevel::Critical)
            .map(|entry| entry.message.clone());
        state.deferred.clear();
        state.call_response = None;
        state.log_phase = false;
        for stream in state.streams.values_mut().filter(|s| !s.deleted) {
            if stream.id == context && STREAM_CALLBACKS.contains(&callback) {
                let reply = fail_closed_reply();
                stream.responding = true;
                stream.client_response = Some(ClientResponse {
                    status: reply.status,
                    headers: reply.headers.clone(),
                    body: Vec::new(),
                    local: true,
                });
                stream.outcome = Outcome::Replied(reply);
            } else if stream.outcome == Outcome::Pending && !stream.responding {
                stream.outcome = Outcome::Hung;
            }
        }
        self.failure = Some(VmFailure {
            callback,
            context,
            kind,
            message,
            panic_message,
        });
    }
}
