//! Looper: a proxy-wasm plugin that serves virtual OpenAI models by running a bounded
//! collaboration of upstream models inside Envoy.
//!
//! Everything that decides is plain Rust driven by events with time as input ([`exchange`],
//! [`looper`], [`config`], [`openai`]); [`adapter`] alone talks to the proxy, and only exists
//! in the `wasm32` build.

pub mod config;
pub mod contract;
pub mod exchange;
pub mod gateway;
pub mod ids;
pub mod looper;
pub mod metrics;
pub mod model_scan;
pub mod openai;
pub mod prompt;
pub mod router;
pub mod stable_sort;
pub mod template;
pub mod time;
pub mod vote;

#[cfg(target_arch = "wasm32")]
mod adapter;
