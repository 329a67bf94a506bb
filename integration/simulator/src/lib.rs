//! looper-sim: a deterministic, fault-injecting, OpenAI-compatible model
//! simulator for Looper's end-to-end tests and benchmarks.
//!
//! Module map:
//! - [`config`]: the JSON config and its validation;
//! - [`http`]: a minimal defensive HTTP/1.1 server layer;
//! - [`completion`]: request validation, answer generation, JSON/SSE rendering;
//! - [`dialect`]: the wire dialects (`openai`, llama.cpp's `llama_cpp`);
//! - [`directives`]: `[sim:...]` directives in message text;
//! - [`items`]: item banks and `[item:TAG]` tags;
//! - [`questions`]: keyed questions, the error model, verifier and judge replies;
//! - [`dist`]: normal, Gamma and Beta draws, Φ;
//! - [`synthesis`]: synthesis (ReMoM, Fusion finalizer) and Fusion judge replies;
//! - [`planner`]: Workflows planner and re-plan replies (JSON plans);
//! - [`faults`]: fault kinds and the `failure_rates` draw;
//! - [`stats`]: `/sim/stats` counters;
//! - [`server`]: listener, routing and the chat handler;
//! - [`rng`]: stable hashing and PRNG.

pub mod completion;
pub mod config;
pub mod dialect;
pub mod directives;
pub mod dist;
pub mod error;
pub mod faults;
pub mod http;
pub mod items;
pub mod planner;
pub mod questions;
pub mod rng;
pub mod server;
pub mod stats;
pub mod synthesis;

pub use config::{Config, ConfigError, ModelConfig};
pub use dialect::Dialect;
pub use items::ItemBank;
pub use server::Server;
