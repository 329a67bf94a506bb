//! Errors reported to the test author.
//!
//! Traps inside the guest are *not* errors of the host API: they are part of the
//! scenario (Envoy turns them into a failed VM), so they are recorded on the [`Vm`]
//! (see [`Vm::failure`]) instead of being returned here. `HostError` covers misuse of
//! the harness and problems loading or instantiating the module.
//!
//! [`Vm`]: crate::Vm
//! [`Vm::failure`]: crate::Vm::failure

use std::fmt;
use std::path::PathBuf;

/// Result alias used by the host API.
pub type Result<T, E = HostError> = std::result::Result<T, E>;

/// Everything that can go wrong while driving the fake Envoy.
#[derive(Debug)]
#[non_exhaustive]
pub enum HostError {
    /// The plugin file does not exist; the message tells how to build it.
    MissingPlugin(PathBuf),
    /// The file exists but could not be read or compiled.
    Load {
        /// Where the module came from (a path or `<bytes>`).
        source: String,
        /// Wasmtime's explanation.
        message: String,
    },
    /// The module is not a proxy-wasm 0.2.1 module.
    Abi(String),
    /// Instantiation or `_initialize` failed.
    Instantiate(String),
    /// A context id that this VM never created or already deleted.
    UnknownContext(u32),
    /// A token that was never dispatched or is no longer pending.
    UnknownToken(u32),
    /// The operation does not fit the stream's current state.
    InvalidState {
        /// The context the operation targeted.
        context: u32,
        /// What was expected and what was found.
        message: String,
    },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::MissingPlugin(path) => write!(
                f,
                "plugin not found at {}: build the plugin first: \
                 cargo build --release --target wasm32-wasip1 \
                 (or point LOOPER_WASM at a built module)",
                path.display()
            ),
            HostError::Load { source, message } => {
                write!(f, "cannot load wasm module {source}: {message}")
            }
            HostError::Abi(message) => write!(f, "not a proxy-wasm 0.2.1 module: {message}"),
            HostError::Instantiate(message) => {
                write!(f, "cannot instantiate the plugin: {message}")
            }
            HostError::UnknownContext(id) => write!(f, "unknown or deleted context id {id}"),
            HostError::UnknownToken(token) => {
                write!(f, "http call token {token} is unknown or no longer pending")
            }
            HostError::InvalidState { context, message } => {
                write!(f, "context {context}: {message}")
            }
        }
    }
}

impl std::error::Error for HostError {}
