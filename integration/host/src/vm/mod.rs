//! One simulated Envoy worker VM running the plugin.
//!
//! A `Vm` owns a wasmtime `Store` (and so all state; nothing is global), drives
//! the plugin's callbacks in Envoy's order, applies deferred actions after each
//! callback, and exposes what happened for assertions. The downstream request flow
//! lives in [`flow`], answering dispatched calls and timers in [`calls`], and guest
//! invocation with trap handling in [`guest`].

mod calls;
mod flow;
mod guest;

use std::collections::BTreeMap;

use wasmtime::{Store, StoreLimitsBuilder};

pub use calls::TimerEvent;
pub use guest::{FailureKind, VmFailure};

use crate::abi::LogLevel;
use crate::error::{HostError, Result};
use crate::headers::HeaderMap;
use crate::metrics::Metric;
use crate::options::VmOptions;
use crate::plugin::Plugin;
use crate::request::{ClientResponse, ContextId, Forwarded, LocalReply, Outcome};
use crate::shared::SharedStore;
use crate::state::{GuestExports, HostState, LogEntry};
use crate::stream::Stream;
use guest::Exports;

/// Context id of the root context; HTTP contexts count up from the next id, like
/// Envoy's per-VM context id allocation.
pub const ROOT_CONTEXT_ID: ContextId = 1;

/// A running plugin instance with Envoy's behaviour around it.
pub struct Vm {
    store: Store<HostState>,
    exports: Exports,
    last_context: ContextId,
    fuel_per_callback: u64,
    last_fuel_used: u64,
    total_fuel_used: u64,
    failure: Option<VmFailure>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("contexts", &self.last_context)
            .field("failure", &self.failure)
            .finish()
    }
}

impl Vm {
    /// Instantiates the plugin and starts it like an Envoy worker: `_initialize`,
    /// `proxy_on_context_create(root, 0)`, `proxy_on_vm_start(root, len)`.
    /// Configure it next with [`Vm::configure`].
    pub fn new(plugin: &Plugin, options: VmOptions) -> Result<Vm> {
        let shared = options.shared.clone().unwrap_or_default();
        let limits = StoreLimitsBuilder::new()
            .memory_size(options.memory_limit_bytes)
            .trap_on_grow_failure(true)
            .build();
        let fuel_per_callback = options.fuel_per_callback;
        let vm_config_len = options.vm_config.len() as i32;
        let mut store = Store::new(
            plugin.engine(),
            HostState::new(options, shared, limits, ROOT_CONTEXT_ID),
        );
        store.limiter(|state| &mut state.limits);
        let _ = store.set_fuel(fuel_per_callback);
        let instance = plugin
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| HostError::Abi("export memory is not a memory".into()))?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .map_err(|e| HostError::Abi(format!("proxy_on_memory_allocate: {e:#}")))?;
        store.data_mut().guest = Some(GuestExports { memory, allocate });
        let exports = Exports::resolve(&instance, &mut store)?;

        let mut vm = Vm {
            store,
            exports,
            last_context: ROOT_CONTEXT_ID,
            fuel_per_callback,
            last_fuel_used: 0,
            total_fuel_used: 0,
            failure: None,
        };
        let root = ROOT_CONTEXT_ID as i32;
        let init = vm.exports.initialize.clone();
        vm.invoke(0, "_initialize", init, (), ());
        let create = vm.exports.context_create.clone();
        vm.invoke(
            ROOT_CONTEXT_ID,
            "proxy_on_context_create",
            create,
            (root, 0),
            (),
        );
        let start = vm.exports.vm_start.clone();
        let started = vm.invoke(
            ROOT_CONTEXT_ID,
            "proxy_on_vm_start",
            start,
            (root, vm_config_len),
            1,
        );
        vm.settle();
        if let Some(failure) = &vm.failure {
            return Err(HostError::Instantiate(failure.to_string()));
        }
        if started == Some(0) {
            return Err(HostError::Instantiate(format!(
                "proxy_on_vm_start returned false; plugin logs: {:?}",
                vm.logs()
            )));
        }
        Ok(vm)
    }

    /// The root context id.
    pub fn root_context_id(&self) -> ContextId {
        ROOT_CONTEXT_ID
    }

    /// `proxy_on_configure` with this plugin configuration (readable through
    /// buffer type 7 during the call only). Returns what the plugin returned;
    /// `false` on a failed VM.
    pub fn configure(&mut self, plugin_config: &str) -> bool {
        self.configure_bytes(plugin_config.as_bytes())
    }

    /// [`Vm::configure`] with raw bytes.
    pub fn configure_bytes(&mut self, plugin_config: &[u8]) -> bool {
        let len = plugin_config.len() as i32;
        self.store.data_mut().plugin_config = Some(plugin_config.to_vec());
        let configure = self.exports.configure.clone();
        let root = ROOT_CONTEXT_ID as i32;
        let result = self.invoke(
            ROOT_CONTEXT_ID,
            "proxy_on_configure",
            configure,
            (root, len),
            1,
        );
        self.store.data_mut().plugin_config = None;
        self.settle();
        result.is_some_and(|r| r != 0)
    }

    fn next_context_id(&mut self) -> ContextId {
        self.last_context += 1;
        self.last_context
    }

    fn stream(&self, context: ContextId) -> Option<&Stream> {
        self.store.data().streams.get(&context)
    }

    #[track_caller]
    fn known_stream(&self, context: ContextId) -> &Stream {
        match self.stream(context) {
            Some(stream) => stream,
            None => unknown_context(context),
        }
    }

    fn live_stream_mut(&mut self, context: ContextId) -> Option<&mut Stream> {
        self.store
            .data_mut()
            .streams
            .get_mut(&context)
            .filter(|s| !s.deleted)
    }

    // ----- observing streams -------------------------------------------------

    /// Where the request of `context` stands.
    ///
    /// # Panics
    /// If `context` was never created by this VM.
    #[track_caller]
    pub fn outcome(&self, context: ContextId) -> Outcome {
        self.known_stream(context).outcome.clone()
    }

    /// The local reply of `context`, if it was replied.
    #[track_caller]
    pub fn reply(&self, context: ContextId) -> Option<LocalReply> {
        self.known_stream(context).outcome.reply().cloned()
    }

    /// What reached the route so far (headers may have gone on without the body).
    #[track_caller]
    pub fn forwarded(&self, context: ContextId) -> Option<Forwarded> {
        self.known_stream(context).forwarded.clone()
    }

    /// The response the client received (local reply or route response).
    #[track_caller]
    pub fn client_response(&self, context: ContextId) -> Option<ClientResponse> {
        self.known_stream(context).client_response.clone()
    }

    /// The request headers as the plugin left them.
    #[track_caller]
    pub fn request_headers(&self, context: ContextId) -> HeaderMap {
        self.known_stream(context).request_headers.clone()
    }

    /// Export names of the callbacks invoked for `context`, in order.
    #[track_caller]
    pub fn callbacks(&self, context: ContextId) -> Vec<&'static str> {
        self.known_stream(context).callbacks.clone()
    }

    /// Callbacks invoked on the root context (and `_initialize`), in order.
    pub fn root_callbacks(&self) -> Vec<&'static str> {
        self.store.data().root_callbacks.clone()
    }

    /// Whether `context` went through `proxy_on_delete` (or never reached the plugin).
    #[track_caller]
    pub fn is_deleted(&self, context: ContextId) -> bool {
        self.known_stream(context).deleted
    }

    /// What `proxy_on_done` returned for `context`.
    #[track_caller]
    pub fn on_done_result(&self, context: ContextId) -> Option<bool> {
        self.known_stream(context).done_result
    }

    /// Every HTTP context id created so far.
    pub fn contexts(&self) -> Vec<ContextId> {
        self.store.data().streams.keys().copied().collect()
    }

    // ----- observing the VM ---------------------------------------------------

    /// Every `proxy_log` line as `(level, message)`.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.store
            .data()
            .logs
            .iter()
            .map(|entry| (entry.level, entry.message.clone()))
            .collect()
    }

    /// Every `proxy_log` line with the context that logged it.
    pub fn log_entries(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// Log messages that contain `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<String> {
        self.store
            .data()
            .logs
            .iter()
            .filter(|entry| entry.message.contains(needle))
            .map(|entry| entry.message.clone())
            .collect()
    }

    /// Every metric of the stats store this VM shares.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        self.store.data().shared.metrics()
    }

    /// One metric by name.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.store.data().shared.metric(name)
    }

    /// What the plugin wrote to stdout (WASI fd 1).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.store.data().stdout).into_owned()
    }

    /// What the plugin wrote to stderr (WASI fd 2).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.store.data().stderr).into_owned()
    }

    /// The shared data/queue/stats store; pass it to [`VmOptions::with_shared`] to
    /// model another worker of the same Envoy.
    pub fn shared(&self) -> SharedStore {
        self.store.data().shared.clone()
    }

    /// Whether a trap killed the VM.
    pub fn is_failed(&self) -> bool {
        self.failure.is_some()
    }

    /// The trap that killed the VM.
    pub fn failure(&self) -> Option<&VmFailure> {
        self.failure.as_ref()
    }

    /// Fuel the last guest callback used (≈ wasm instructions executed).
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// Fuel every guest callback so far used, the VM's start included.
    pub fn total_fuel_used(&self) -> u64 {
        self.total_fuel_used
    }

    /// Current size of the guest's linear memory in bytes (it never shrinks).
    pub fn memory_bytes(&self) -> usize {
        match &self.store.data().guest {
            Some(guest) => guest.memory.data_size(&self.store),
            None => 0,
        }
    }

    /// Times the plugin called `proxy_done`.
    pub fn proxy_done_calls(&self) -> u32 {
        self.store.data().done_calls
    }
}

#[track_caller]
#[allow(clippy::panic)]
fn unknown_context(context: ContextId) -> ! {
    panic!("context {context} was never created by this VM")
}
