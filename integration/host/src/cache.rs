//! On-disk cache of compiled modules.
//!
//! Compiling the plugin with a debug-built Cranelift takes ~10 s per test binary,
//! while loading wasmtime's own serialized artifact takes a few milliseconds. The
//! first test binary compiles and stores the artifact; later binaries (and later
//! runs, until the `.wasm` changes) load it.
//!
//! The key covers the module bytes (two independent 64-bit hashes plus the length)
//! and the engine's `precompile_compatibility_hash` (wasmtime version, target and
//! compilation settings), so a rebuilt plugin or a different engine configuration
//! never reuses a stale artifact. Wasmtime also checks the artifact header on load;
//! any load error falls back to compiling.
//!
//! Location: `$LOOPER_HOST_CACHE`, or `target/looper-host-cache` of this workspace;
//! `LOOPER_HOST_CACHE=off` disables the cache. Only the newest [`KEEP`] artifacts
//! are kept, so rebuilding the plugin all day does not fill the disk.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::{Engine, Module};

/// Environment variable that moves (or, with `off`, disables) the cache.
pub const CACHE_ENV: &str = "LOOPER_HOST_CACHE";

/// Artifacts kept after each store (the ABI tests add a few dozen small ones).
const KEEP: usize = 64;

fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV) {
        Some(value) if value == "off" || value == "0" => None,
        Some(value) => Some(PathBuf::from(value)),
        None => Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/looper-host-cache")),
    }
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut sip = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut sip);
    bytes.hash(&mut sip);
    let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        fnv ^= u64::from(*byte);
        fnv = fnv.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:016x}{:016x}-{}", sip.finish(), fnv, bytes.len())
}

/// Loads the compiled module from the cache or compiles (and stores) it.
pub(crate) fn load_or_compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Module> {
    let Some(dir) = cache_dir() else {
        return Module::from_binary(engine, bytes);
    };
    let path = dir.join(format!("{}.cwasm", cache_key(engine, bytes)));
    if let Ok(artifact) = std::fs::read(&path) {
        // SAFETY: `Module::deserialize` requires bytes produced by
        // `Module::serialize` of a compatible engine. The file was written by
        // `store` below from `Module::serialize`, under a name derived from the
        // module bytes and the engine's compatibility hash, and replaced only by
        // atomic renames; wasmtime validates the header and rejects incompatible
        // artifacts, in which case we compile instead.
        if let Ok(module) = unsafe { Module::deserialize(engine, &artifact) } {
            return Ok(module);
        }
    }
    let module = Module::from_binary(engine, bytes)?;
    store(&dir, &path, &module);
    Ok(module)
}

/// Best effort: a read-only or full disk only costs the next run a compile.
fn store(dir: &Path, path: &Path, module: &Module) {
    let Ok(artifact) = module.serialize() else {
        return;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let temp = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&temp, artifact).is_ok() && std::fs::rename(&temp, path).is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    prune(dir);
}

/// Deletes all but the [`KEEP`] most recently written artifacts.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut artifacts: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    if artifacts.len() <= KEEP {
        return;
    }
    artifacts.sort();
    let excess = artifacts.len() - KEEP;
    for (_, path) in artifacts.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}
