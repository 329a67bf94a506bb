//! Shared data and shared queues, backed by the VM's [`SharedStore`].
//!
//! [`SharedStore`]: crate::SharedStore

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::{finish, memory, Fault};
use crate::state::HostState;

fn get_data(
    caller: &mut Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_len: i32,
    ret_cas: i32,
) -> Result<(), Fault> {
    let key = memory::read_string(caller, key_ptr, key_len)?;
    let state = caller.data();
    let (value, cas) = state
        .shared
        .get_data(&state.options.vm_id, &key)
        .ok_or(crate::abi::Status::NotFound)?;
    memory::return_bytes(caller, &value, ret_ptr, ret_len)?;
    memory::write_u32(caller, ret_cas, cas)
}

fn set_data(
    caller: &mut Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    ptr: i32,
    len: i32,
    cas: i32,
) -> Result<(), Fault> {
    let key = memory::read_string(caller, key_ptr, key_len)?;
    let value = memory::read(caller, ptr, len)?;
    let state = caller.data();
    Ok(state
        .shared
        .set_data(&state.options.vm_id, &key, value, cas as u32)?)
}

fn register_queue(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    ret: i32,
) -> Result<(), Fault> {
    let name = memory::read_string(caller, ptr, len)?;
    let state = caller.data();
    let id = state
        .shared
        .register_queue(&state.options.vm_id, &name, state.vm_uid, state.root_id);
    memory::write_u32(caller, ret, id)
}

fn resolve_queue(
    caller: &mut Caller<'_, HostState>,
    vm_ptr: i32,
    vm_len: i32,
    ptr: i32,
    len: i32,
    ret: i32,
) -> Result<(), Fault> {
    let vm_id = memory::read_string(caller, vm_ptr, vm_len)?;
    let name = memory::read_string(caller, ptr, len)?;
    let id = caller
        .data()
        .shared
        .resolve_queue(&vm_id, &name)
        .ok_or(crate::abi::Status::NotFound)?;
    memory::write_u32(caller, ret, id)
}

fn enqueue(
    caller: &mut Caller<'_, HostState>,
    queue: i32,
    ptr: i32,
    len: i32,
) -> Result<(), Fault> {
    let value = memory::read(caller, ptr, len)?;
    Ok(caller.data().shared.enqueue(queue as u32, value)?)
}

fn dequeue(
    caller: &mut Caller<'_, HostState>,
    queue: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fault> {
    let value = caller.data().shared.dequeue(queue as u32)?;
    memory::return_bytes(caller, &value, ret_ptr, ret_len)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32, rp: i32, rl: i32, rc: i32| {
            finish(get_data(&mut caller, kp, kl, rp, rl, rc))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
            finish(set_data(&mut caller, kp, kl, vp, vl, cas))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32, ret: i32| {
            finish(register_queue(&mut caller, ptr, len, ret))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, HostState>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| {
            finish(resolve_queue(&mut caller, vp, vl, np, nl, ret))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        |mut caller: Caller<'_, HostState>, queue: i32, ptr: i32, len: i32| {
            finish(enqueue(&mut caller, queue, ptr, len))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut caller: Caller<'_, HostState>, queue: i32, rp: i32, rl: i32| {
            finish(dequeue(&mut caller, queue, rp, rl))
        },
    )?;
    Ok(())
}
