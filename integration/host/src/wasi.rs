//! The slice of `wasi_snapshot_preview1` a proxy-wasm module built for
//! `wasm32-wasip1` imports, written by hand so tests stay deterministic and the
//! build does not pull `wasmtime-wasi`.
//!
//! - `fd_write`: fd 1 and 2 are captured ([`Vm::stdout`]/[`Vm::stderr`]); others are `EBADF`.
//! - `random_get`: a seeded SplitMix64 stream, so std's `HashMap` order is reproducible.
//! - `environ_sizes_get`/`environ_get`: [`VmOptions::env`], like Envoy's
//!   `vm_config.environment_variables`.
//! - `clock_time_get`/`clock_res_get`: the virtual clock (realtime = start time +
//!   advanced time, monotonic = advanced time).
//! - `args_sizes_get`/`args_get`: no arguments; `sched_yield`: no-op.
//! - `proc_exit`: traps, which fails the VM like any other trap.
//!
//! Anything else the module imports is linked as a trap by the [`Plugin`].
//!
//! [`Vm::stdout`]: crate::Vm::stdout
//! [`Vm::stderr`]: crate::Vm::stderr
//! [`VmOptions::env`]: crate::VmOptions::env
//! [`Plugin`]: crate::Plugin

use wasmtime::{Caller, Linker};

use crate::abi::memory;
use crate::abi::{Fault, Status};
use crate::state::HostState;

const MODULE: &str = "wasi_snapshot_preview1";

/// The WASI functions this host implements.
pub const IMPLEMENTED: &[&str] = &[
    "fd_write",
    "random_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "clock_time_get",
    "clock_res_get",
    "sched_yield",
    "proc_exit",
];

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

const CLOCK_REALTIME: i32 = 0;

/// Deterministic generator behind `random_get` (SplitMix64).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Maps a hostcall fault to a WASI errno, keeping traps as traps.
fn errno(result: Result<(), Fault>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(ERRNO_SUCCESS),
        Err(Fault::Status(Status::InvalidMemoryAccess)) => Ok(ERRNO_FAULT),
        Err(Fault::Status(_)) => Ok(ERRNO_INVAL),
        Err(Fault::Trap(error)) => Err(error),
    }
}

fn environment(caller: &Caller<'_, HostState>) -> Vec<Vec<u8>> {
    caller
        .data()
        .options
        .env
        .iter()
        .map(|(k, v)| {
            let mut entry = format!("{k}={v}").into_bytes();
            entry.push(0);
            entry
        })
        .collect()
}

fn fd_write(
    caller: &mut Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> Result<i32, Fault> {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let mut written = Vec::new();
    for index in 0..iovs_len.max(0) {
        let iov = memory::read(caller, iovs.wrapping_add(index * 8), 8)?;
        let field = |at: usize| {
            iov.get(at..at + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(i32::from_le_bytes)
                .unwrap_or(0)
        };
        written.extend(memory::read(caller, field(0), field(4))?);
    }
    memory::write_u32(caller, nwritten, written.len() as u32)?;
    let state = caller.data_mut();
    if fd == 1 {
        state.stdout.extend(written);
    } else {
        state.stderr.extend(written);
    }
    Ok(ERRNO_SUCCESS)
}

fn environ_get(caller: &mut Caller<'_, HostState>, environ: i32, buf: i32) -> Result<(), Fault> {
    let mut offset = 0i32;
    for (index, entry) in environment(caller).iter().enumerate() {
        memory::write_u32(
            caller,
            environ.wrapping_add(index as i32 * 4),
            buf.wrapping_add(offset) as u32,
        )?;
        memory::write(caller, buf.wrapping_add(offset), entry)?;
        offset += entry.len() as i32;
    }
    Ok(())
}

/// Adds the WASI functions to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, HostState>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| {
            match fd_write(&mut caller, fd, iovs, iovs_len, nwritten) {
                Ok(code) => Ok(code),
                Err(fault) => errno(Err(fault)),
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut caller: Caller<'_, HostState>, buf: i32, len: i32| {
            let mut bytes = vec![0u8; len as u32 as usize];
            caller.data_mut().rng.fill(&mut bytes);
            errno(memory::write(&mut caller, buf, &bytes))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut caller: Caller<'_, HostState>, count: i32, size: i32| {
            let env = environment(&caller);
            let total: usize = env.iter().map(Vec::len).sum();
            errno(
                memory::write_u32(&mut caller, count, env.len() as u32)
                    .and_then(|()| memory::write_u32(&mut caller, size, total as u32)),
            )
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |mut caller: Caller<'_, HostState>, environ: i32, buf: i32| {
            errno(environ_get(&mut caller, environ, buf))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut caller: Caller<'_, HostState>, argc: i32, size: i32| {
            errno(
                memory::write_u32(&mut caller, argc, 0)
                    .and_then(|()| memory::write_u32(&mut caller, size, 0)),
            )
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_get",
        |_: Caller<'_, HostState>, _argv: i32, _buf: i32| Ok(ERRNO_SUCCESS),
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, HostState>, id: i32, _precision: i64, out: i32| {
            let clock = caller.data().clock;
            let value = if id == CLOCK_REALTIME {
                clock.now_unix_ns()
            } else {
                clock.elapsed_ns
            };
            errno(memory::write_u64(&mut caller, out, value))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut caller: Caller<'_, HostState>, _id: i32, out: i32| {
            errno(memory::write_u64(&mut caller, out, 1))
        },
    )?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, HostState>| {
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the plugin called proc_exit({code})"
            )))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn rng_is_deterministic_per_seed() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        let mut c = Rng::new(2);
        let (mut x, mut y, mut z) = ([0u8; 13], [0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
    }
}
