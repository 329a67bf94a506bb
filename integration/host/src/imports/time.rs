//! The virtual clock and the tick timer.

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::{finish, memory};
use crate::state::HostState;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, ret: i32| {
            let now = caller.data().clock.now_unix_ns();
            finish(memory::write_u64(&mut caller, ret, now))
        },
    )?;
    // Envoy keeps one tick timer per root context; the period restarts it and 0
    // disables it. The Vm fires ticks from `tick()` and `run_for()`.
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut caller: Caller<'_, HostState>, period: i32| {
            let state = caller.data_mut();
            state.tick_period_ms = period as u32;
            state.last_tick_ms = state.clock.now_ms();
            finish(Ok(()))
        },
    )?;
    Ok(())
}
