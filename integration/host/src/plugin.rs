//! A compiled plugin: one wasmtime `Engine` and `Module`, linked once against the
//! host's imports (`InstancePre`), from which any number of [`Vm`]s are
//! instantiated. Compiling is the expensive step, so a test binary should compile
//! once ([`Plugin::shared`]) and give every test its own `Vm`; compiled artifacts
//! are also cached on disk across test binaries (see [`CACHE_ENV`](crate::CACHE_ENV)).
//!
//! [`Vm`]: crate::Vm

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module};

use crate::error::{HostError, Result};
use crate::state::HostState;
use crate::{cache, imports, wasi};

/// The ABI marker export the SDK 0.2.5 emits.
pub const ABI_MARKER: &str = "proxy_abi_version_0_2_1";
/// Environment variable that overrides the module path of [`Plugin::shared`].
pub const WASM_PATH_ENV: &str = "LOOPER_WASM";

/// A compiled, linked proxy-wasm module.
pub struct Plugin {
    engine: Engine,
    pre: InstancePre<HostState>,
    source: String,
    imports: Vec<String>,
    trapping: Vec<String>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("source", &self.source)
            .field("imports", &self.imports.len())
            .field("trapping", &self.trapping)
            .finish()
    }
}

impl Plugin {
    /// Compiles the module at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Plugin> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(HostError::MissingPlugin(path.to_path_buf()));
        }
        let bytes = std::fs::read(path).map_err(|e| HostError::Load {
            source: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::compile(&bytes, path.display().to_string())
    }

    /// Compiles a module held in memory (e.g. a hand-assembled test module).
    pub fn from_bytes(bytes: &[u8]) -> Result<Plugin> {
        Self::compile(bytes, "<bytes>".to_string())
    }

    /// The Looper plugin, compiled once per process. Its path is `$LOOPER_WASM` or
    /// [`Plugin::default_path`].
    ///
    /// # Panics
    /// If the module is missing or invalid, with a message saying how to build it;
    /// use [`Plugin::try_shared`] to handle that case.
    #[allow(clippy::panic)]
    pub fn shared() -> &'static Plugin {
        match Self::try_shared() {
            Ok(plugin) => plugin,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`Plugin::shared`], without panicking.
    pub fn try_shared() -> std::result::Result<&'static Plugin, &'static HostError> {
        static SHARED: OnceLock<Result<Plugin>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::load(Self::default_path()))
            .as_ref()
    }

    /// `$LOOPER_WASM`, or the workspace's `target/wasm32-wasip1/release/looper.wasm`.
    pub fn default_path() -> PathBuf {
        match std::env::var_os(WASM_PATH_ENV) {
            Some(path) => PathBuf::from(path),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/wasm32-wasip1/release/looper.wasm"),
        }
    }

    fn compile(bytes: &[u8], source: String) -> Result<Plugin> {
        let load_error = |message: String| HostError::Load {
            source: source.clone(),
            message,
        };
        let mut config = Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| load_error(format!("{e:#}")))?;
        let module =
            cache::load_or_compile(&engine, bytes).map_err(|e| load_error(format!("{e:#}")))?;
        check_exports(&module)?;

        let mut linker = Linker::new(&engine);
        imports::add_to_linker(&mut linker)
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        wasi::add_to_linker(&mut linker).map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        let imports: Vec<String> = module
            .imports()
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        let trapping: Vec<String> = module
            .imports()
            .filter(|i| matches!(i.ty(), ExternType::Func(_)))
            .filter(|i| !is_implemented(i.module(), i.name()))
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        Ok(Plugin {
            engine,
            pre,
            source,
            imports,
            trapping,
        })
    }

    /// Where the module came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every import of the module as `module::name`.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Imports the host does not implement; calling one traps (and fails the VM)
    /// with "unknown import: `module::name` has not been defined".
    pub fn trapping_imports(&self) -> &[String] {
        &self.trapping
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }
}

fn is_implemented(module: &str, name: &str) -> bool {
    match module {
        "env" => imports::IMPLEMENTED.contains(&name),
        "wasi_snapshot_preview1" => wasi::IMPLEMENTED.contains(&name),
        _ => false,
    }
}

fn check_exports(module: &Module) -> Result<()> {
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    if !exports.contains(&ABI_MARKER) {
        let found: Vec<&str> = exports
            .iter()
            .copied()
            .filter(|e| e.starts_with("proxy_abi_version"))
            .collect();
        return Err(HostError::Abi(format!(
            "missing export {ABI_MARKER} (ABI markers found: {found:?})"
        )));
    }
    for required in ["memory", "proxy_on_memory_allocate"] {
        if !exports.contains(&required) {
            return Err(HostError::Abi(format!("missing export {required}")));
        }
    }
    Ok(())
}
