//! Knobs of one simulated worker VM. Defaults mirror a stock Envoy 1.40 with the
//! settings Looper's deployment guide asks for.

use std::collections::HashMap;

use crate::abi::LogLevel;
use crate::shared::SharedStore;

/// Envoy's default per-request buffer limit (1 MiB).
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;
/// proxy-wasm-cpp-host's maximum linear memory (1 GiB).
pub const DEFAULT_MEMORY_LIMIT: usize = 1024 * 1024 * 1024;
/// Fuel (≈ wasm instructions) one top-level callback may burn before it traps;
/// large enough for parsing MiB-sized bodies, small enough to stop a runaway loop
/// within about a second.
pub const DEFAULT_FUEL_PER_CALLBACK: u64 = 2_000_000_000;
/// A fixed start time (2023-11-14T22:13:20Z) so runs are reproducible.
pub const DEFAULT_START_TIME_UNIX_MS: u64 = 1_700_000_000_000;

/// Options for [`Vm::new`](crate::Vm::new).
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// WASI environment (`vm_config.environment_variables`).
    pub env: Vec<(String, String)>,
    /// Cluster names the fake Envoy knows; `proxy_http_call` to any other name is
    /// `BadArgument`, as with a missing thread-local cluster.
    pub clusters: Vec<String>,
    /// Per-request buffer limit; a paused body above it gets Envoy's 413.
    pub buffer_limit_bytes: usize,
    /// `PluginConfig.allow_on_headers_stop_iteration` (Envoy ≥ 1.35). When false,
    /// `Pause` on request headers becomes `StopAllIterationAndWatermark`: the body
    /// is held back from the plugin until it resumes the stream.
    pub allow_on_headers_stop_iteration: bool,
    /// Virtual wall clock at VM start.
    pub start_time_unix_ms: u64,
    /// Linear memory cap; growing past it traps (the VM fails).
    pub memory_limit_bytes: usize,
    /// Fuel for each top-level callback; running out traps (the VM fails).
    pub fuel_per_callback: u64,
    /// `vm_config.configuration`, passed to `proxy_on_vm_start`.
    pub vm_config: Vec<u8>,
    /// Static properties for `proxy_get_property`, keyed by path parts.
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    /// Seed of WASI `random_get` (and so of std's `HashMap` hashing).
    pub random_seed: u64,
    /// `root_id` of the plugin (`plugin_root_id` property).
    pub root_id: String,
    /// `vm_id`; scopes shared data and queues.
    pub vm_id: String,
    /// What `proxy_get_log_level` reports. Every `proxy_log` is recorded whatever
    /// the level, so tests can assert on debug lines.
    pub log_level: LogLevel,
    /// Process-wide state to share with other VMs; a fresh store when `None`.
    pub shared: Option<SharedStore>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            env: Vec::new(),
            clusters: Vec::new(),
            buffer_limit_bytes: DEFAULT_BUFFER_LIMIT,
            allow_on_headers_stop_iteration: true,
            start_time_unix_ms: DEFAULT_START_TIME_UNIX_MS,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT,
            fuel_per_callback: DEFAULT_FUEL_PER_CALLBACK,
            vm_config: Vec::new(),
            properties: HashMap::new(),
            random_seed: 0x5eed,
            root_id: String::new(),
            vm_id: String::new(),
            log_level: LogLevel::Info,
            shared: None,
        }
    }
}

impl VmOptions {
    /// Adds a known cluster.
    pub fn with_cluster(mut self, name: &str) -> Self {
        self.clusters.push(name.to_string());
        self
    }

    /// Adds a WASI environment variable.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a static property.
    pub fn with_property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.properties
            .insert(path.iter().map(|p| p.to_string()).collect(), value.into());
        self
    }

    /// Shares data, queues and metrics with other VMs.
    pub fn with_shared(mut self, store: &SharedStore) -> Self {
        self.shared = Some(store.clone());
        self
    }
}
