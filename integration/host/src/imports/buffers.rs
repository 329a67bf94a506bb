//! Body and configuration buffers (`proxy_get_buffer_bytes`,
//! `proxy_set_buffer_bytes`, `proxy_get_buffer_status`).
//!
//! Reads follow proxy-wasm-cpp-host: a missing buffer is `NotFound` (the SDK's
//! `None`), a read past the end is clipped, and a zero-length result writes nothing
//! (so the SDK sees a null pointer and returns `None`). Writes follow Envoy's
//! `Buffer::copyFrom` ([`splice_buffer`]); read-only buffers are `BadArgument`.

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::{finish, memory, BufferType, Fault, Status};
use crate::state::{splice_buffer, HostState};

fn get_buffer(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    start: i32,
    max: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fault> {
    let kind = BufferType::from_raw(kind).ok_or(Status::BadArgument)?;
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    let bytes = {
        let buffer = caller.data().buffer(kind).ok_or(Status::NotFound)?;
        if start >= buffer.len() || max == 0 {
            return Ok(());
        }
        let end = start.saturating_add(max).min(buffer.len());
        buffer.get(start..end).unwrap_or_default().to_vec()
    };
    memory::return_bytes(caller, &bytes, ret_ptr, ret_len)
}

fn set_buffer(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> Result<(), Fault> {
    let kind = BufferType::from_raw(kind).ok_or(Status::BadArgument)?;
    let data = memory::read(caller, ptr, len)?;
    let state = caller.data_mut();
    if let Some(buffer) = state.buffer_mut(kind) {
        return Ok(splice_buffer(
            buffer,
            start as u32 as usize,
            size as u32 as usize,
            &data,
        )?);
    }
    if state.buffer(kind).is_some() {
        return Err(Status::BadArgument.into());
    }
    Err(Status::NotFound.into())
}

fn buffer_status(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    ret_len: i32,
    ret_flags: i32,
) -> Result<(), Fault> {
    let kind = BufferType::from_raw(kind).ok_or(Status::BadArgument)?;
    let len = caller.data().buffer(kind).ok_or(Status::NotFound)?.len();
    memory::write_u32(caller, ret_len, len as u32)?;
    memory::write_u32(caller, ret_flags, 0)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_len: i32| {
            finish(get_buffer(&mut caller, kind, start, max, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32| { finish(set_buffer(&mut caller, kind, start, size, ptr, len)) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, HostState>, kind: i32, ret_len: i32, ret_flags: i32| {
            finish(buffer_status(&mut caller, kind, ret_len, ret_flags))
        },
    )?;
    Ok(())
}
