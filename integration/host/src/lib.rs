//! `looper-host`: a stateful fake Envoy for testing the Looper proxy-wasm plugin.
//!
//! It loads the real release `.wasm` into wasmtime, provides the proxy-wasm ABI
//! 0.2.1 imports (and the WASI slice a `wasm32-wasip1` module needs) on real state,
//! and lets a test drive requests, look at the HTTP calls the plugin dispatched,
//! answer them in any order, move virtual time, and read what the client got.
//! It models what Envoy 1.40 does around a plugin (deferred actions, the 1 MiB
//! buffer limit and its 413, synthesized 503/504 call failures, cancelled calls on
//! client abort, fail-closed after a trap) so scenario tests catch the same bugs
//! Envoy would expose. See `/work/shared/platform-notes.md` §1 and §2.2.
//!
//! ```no_run
//! use looper_host::{Plugin, Request, Vm, VmOptions};
//!
//! let mut vm = Vm::new(Plugin::shared(), VmOptions::default().with_cluster("simulator")).unwrap();
//! let config = r#"{"models": {"m": {"cluster": "simulator"}},
//!     "recipes": {"r": {"algorithm": "single", "models": ["m"]}},
//!     "virtual_models": {"vllm-sr/auto": {"recipe": "r"}}}"#;
//! assert!(vm.configure(config));
//! let ctx = vm.send_request(Request::get("/v1/models"));
//! let reply = vm.reply(ctx).expect("a local reply");
//! assert_eq!(reply.status, 200);
//! ```
//!
//! Modelled on Higress `wasm-go/pkg/test` (stateful, scenario-level) rather than
//! the expectation-scripted `proxy-wasm/test-framework`.

pub mod abi;
mod cache;
mod calls;
mod error;
mod headers;
mod imports;
mod metrics;
mod options;
mod plugin;
mod request;
mod shared;
mod state;
mod stream;
mod vm;
mod wasi;

pub use abi::LogLevel;
pub use cache::CACHE_ENV;
pub use calls::{CallResponse, CallState, HttpCall, CONNECT_FAILURE_BODY, TIMEOUT_BODY};
pub use error::{HostError, Result};
pub use headers::HeaderMap;
pub use imports::IMPLEMENTED as IMPLEMENTED_ENV_IMPORTS;
pub use metrics::{Metric, MetricKind};
pub use options::{
    VmOptions, DEFAULT_BUFFER_LIMIT, DEFAULT_FUEL_PER_CALLBACK, DEFAULT_MEMORY_LIMIT,
    DEFAULT_START_TIME_UNIX_MS,
};
pub use plugin::{Plugin, ABI_MARKER, WASM_PATH_ENV};
pub use request::{
    ClientResponse, ContextId, Forwarded, LocalReply, Outcome, Request, DEFAULT_AUTHORITY,
};
pub use shared::SharedStore;
pub use state::LogEntry;
pub use vm::{FailureKind, TimerEvent, Vm, VmFailure, ROOT_CONTEXT_ID};
pub use wasi::IMPLEMENTED as IMPLEMENTED_WASI_IMPORTS;
