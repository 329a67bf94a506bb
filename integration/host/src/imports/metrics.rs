//! Metric hostcalls; the semantics live in [`crate::metrics`].

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::{finish, memory, Fault};
use crate::state::HostState;

fn define(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    ptr: i32,
    len: i32,
    ret: i32,
) -> Result<(), Fault> {
    let name = memory::read_string(caller, ptr, len)?;
    let state = caller.data_mut();
    let id = state.metric_ids.define(&state.shared, kind, &name)?;
    memory::write_u32(caller, ret, id)
}

fn get(caller: &mut Caller<'_, HostState>, id: i32, ret: i32) -> Result<(), Fault> {
    let state = caller.data();
    let value = state.metric_ids.get(&state.shared, id as u32)?;
    memory::write_u64(caller, ret, value)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>, kind: i32, ptr: i32, len: i32, ret: i32| {
            finish(define(&mut caller, kind, ptr, len, ret))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |caller: Caller<'_, HostState>, id: i32, offset: i64| {
            let state = caller.data();
            finish(
                state
                    .metric_ids
                    .increment(&state.shared, id as u32, offset)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |caller: Caller<'_, HostState>, id: i32, value: i64| {
            let state = caller.data();
            finish(
                state
                    .metric_ids
                    .record(&state.shared, id as u32, value as u64)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: i32, ret: i32| finish(get(&mut caller, id, ret)),
    )?;
    Ok(())
}
