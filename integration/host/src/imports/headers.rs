//! Header map hostcalls for maps 0..3 and 6..7.
//!
//! Availability follows Envoy's `Context::getMap`: a map whose pointer is null
//! (request headers after they were continued, response headers before the
//! response, call-response maps outside `proxy_on_http_call_response`, trailers
//! that never arrived) reads as an empty pair list, while a value lookup or any
//! write is `BadArgument` (`NotFound` during `proxy_on_log`, like Envoy's
//! access-log phase). Keys are lower-cased; values are raw bytes.

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::maps::{deserialize_pairs, serialize_pairs};
use crate::abi::{finish, memory, Fault, MapType, Status};
use crate::headers::HeaderMap;
use crate::state::HostState;

fn map_type(raw: i32) -> Result<MapType, Fault> {
    MapType::from_raw(raw).ok_or(Fault::Status(Status::BadArgument))
}

fn key(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String, Fault> {
    memory::read_string(caller, ptr, len)
}

fn with_map_mut(
    caller: &mut Caller<'_, HostState>,
    map: MapType,
    edit: impl FnOnce(&mut HeaderMap),
) -> Result<(), Fault> {
    let target = caller.data_mut().map_mut(map).ok_or(Status::BadArgument)?;
    edit(target);
    Ok(())
}

fn get_pairs(
    caller: &mut Caller<'_, HostState>,
    map: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fault> {
    let map = map_type(map)?;
    let bytes = match caller.data().map(map) {
        Some(headers) if !headers.is_empty() => serialize_pairs(headers.entries()),
        // cpp-host copies an empty string for an empty or missing map.
        _ => Vec::new(),
    };
    memory::return_bytes(caller, &bytes, ret_ptr, ret_len)
}

fn set_pairs(
    caller: &mut Caller<'_, HostState>,
    map: i32,
    ptr: i32,
    len: i32,
) -> Result<(), Fault> {
    let map = map_type(map)?;
    let pairs =
        deserialize_pairs(&memory::read(caller, ptr, len)?).map_err(|_| Status::BadArgument)?;
    let replacement: HeaderMap = pairs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
        .collect();
    with_map_mut(caller, map, |target| *target = replacement)
}

fn get_value(
    caller: &mut Caller<'_, HostState>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fault> {
    let map = map_type(map)?;
    let name = key(caller, key_ptr, key_len)?;
    let value = {
        let state = caller.data();
        let missing = if state.log_phase {
            Status::NotFound
        } else {
            Status::BadArgument
        };
        let headers = state.map(map).ok_or(missing)?;
        headers.get(&name).ok_or(Status::NotFound)?.to_vec()
    };
    memory::return_bytes(caller, &value, ret_ptr, ret_len)
}

fn add_value(
    caller: &mut Caller<'_, HostState>,
    map: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> Result<(), Fault> {
    let map = map_type(map)?;
    let name = key(caller, kp, kl)?;
    let value = memory::read(caller, vp, vl)?;
    with_map_mut(caller, map, |target| target.add(&name, &value))
}

fn replace_value(
    caller: &mut Caller<'_, HostState>,
    map: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> Result<(), Fault> {
    let map = map_type(map)?;
    let name = key(caller, kp, kl)?;
    let value = memory::read(caller, vp, vl)?;
    with_map_mut(caller, map, |target| target.replace(&name, &value))
}

fn remove_value(
    caller: &mut Caller<'_, HostState>,
    map: i32,
    kp: i32,
    kl: i32,
) -> Result<(), Fault> {
    let map = map_type(map)?;
    let name = key(caller, kp, kl)?;
    with_map_mut(caller, map, |target| target.remove(&name))
}

fn map_size(caller: &mut Caller<'_, HostState>, map: i32, ret: i32) -> Result<(), Fault> {
    let map = map_type(map)?;
    let size = {
        let headers = caller.data().map(map).ok_or(Status::BadArgument)?;
        headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
    };
    memory::write_u32(caller, ret, size as u32)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map: i32, ret_ptr: i32, ret_len: i32| {
            finish(get_pairs(&mut caller, map, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map: i32, ptr: i32, len: i32| {
            finish(set_pairs(&mut caller, map, ptr, len))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map: i32,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_len: i32| { finish(get_value(&mut caller, map, kp, kl, ret_ptr, ret_len)) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_add_header_map_value",
        |mut caller: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            finish(add_value(&mut caller, map, kp, kl, vp, vl))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_replace_header_map_value",
        |mut caller: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            finish(replace_value(&mut caller, map, kp, kl, vp, vl))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>, map: i32, kp: i32, kl: i32| {
            finish(remove_value(&mut caller, map, kp, kl))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_size",
        |mut caller: Caller<'_, HostState>, map: i32, ret: i32| {
            finish(map_size(&mut caller, map, ret))
        },
    )?;
    Ok(())
}
