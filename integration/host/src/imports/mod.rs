//! The `env` imports of proxy-wasm ABI 0.2.1, one module per concern.
//!
//! Every function here runs *inside* a guest call and only touches [`HostState`];
//! none calls a guest callback (only the allocator), because the SDK holds
//! `RefCell` borrows during callbacks and would panic on re-entry. Actions Envoy
//! defers (`continue_stream`, `send_local_response`, `close_stream`) are queued in
//! [`HostState::deferred`] and applied by the [`Vm`](crate::Vm) after the callback
//! returns.
//!
//! [`HostState`]: crate::state::HostState
//! [`HostState::deferred`]: crate::state::HostState

mod buffers;
mod context;
mod headers;
mod http_call;
mod logging;
mod metrics;
mod properties;
mod shared;
mod stream;
mod time;

use wasmtime::Linker;

use crate::state::HostState;

/// The `env` functions this host implements. Any other import of the module is
/// linked as a trap (see [`Plugin::trapping_imports`](crate::Plugin::trapping_imports)).
pub const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_size",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_get_property",
    "proxy_set_property",
];

/// Adds every `env` hostcall to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    time::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    http_call::add_to_linker(linker)?;
    context::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    shared::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    Ok(())
}

const ENV: &str = "env";
