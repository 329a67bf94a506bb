//! `proxy_log`, `proxy_get_log_level`: every line is recorded with its level and
//! the context that logged it.

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::{finish, memory, Fault, LogLevel, Status};
use crate::state::HostState;

fn log(caller: &mut Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> Result<(), Fault> {
    let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
    let message = memory::read_string(caller, ptr, len)?;
    caller.data_mut().log(level, message);
    Ok(())
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            finish(log(&mut caller, level, ptr, len))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_log_level",
        |mut caller: Caller<'_, HostState>, ret: i32| {
            let level = caller.data().options.log_level as u32;
            finish(memory::write_u32(&mut caller, ret, level))
        },
    )?;
    Ok(())
}
