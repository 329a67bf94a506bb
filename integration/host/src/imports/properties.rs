//! `proxy_get_property` / `proxy_set_property`.
//!
//! Lookup order: values the plugin set on this stream, then
//! [`VmOptions::properties`](crate::VmOptions::properties), then a few values Envoy
//! derives itself (`plugin_root_id`, `plugin_name`, `plugin_vm_id`, and
//! `request.{path,url_path,method,host,scheme,id,protocol}` plus
//! `request.headers.<name>` from the stream's request headers). Missing is
//! `NotFound`. Setting a property outside a stream is `NotFound`, like Envoy
//! without stream info.

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::maps::split_property_path;
use crate::abi::{finish, memory, Fault, Status};
use crate::state::HostState;

fn derived(state: &HostState, path: &[String]) -> Option<Vec<u8>> {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["plugin_root_id"] | ["plugin_name"] => Some(state.options.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => Some(state.options.vm_id.clone().into_bytes()),
        ["request", field] => {
            let headers = &state.stream()?.request_headers;
            let value = match *field {
                "path" => headers.get(":path")?.to_vec(),
                "url_path" => {
                    let path = headers.get(":path")?;
                    path.split(|b| *b == b'?')
                        .next()
                        .unwrap_or_default()
                        .to_vec()
                }
                "method" => headers.get(":method")?.to_vec(),
                "host" => headers.get(":authority")?.to_vec(),
                "scheme" => headers.get(":scheme")?.to_vec(),
                "id" => headers.get("x-request-id")?.to_vec(),
                "protocol" => b"HTTP/1.1".to_vec(),
                _ => return None,
            };
            Some(value)
        }
        ["request", "headers", name] => Some(state.stream()?.request_headers.get(name)?.to_vec()),
        _ => None,
    }
}

fn get_property(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fault> {
    let raw = memory::read(caller, ptr, len)?;
    let path = split_property_path(&raw);
    let value = {
        let state = caller.data();
        state
            .stream()
            .and_then(|s| s.properties.get(&raw).cloned())
            .or_else(|| state.options.properties.get(&path).cloned())
            .or_else(|| derived(state, &path))
            .ok_or(Status::NotFound)?
    };
    memory::return_bytes(caller, &value, ret_ptr, ret_len)
}

fn set_property(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    value_ptr: i32,
    value_len: i32,
) -> Result<(), Fault> {
    let raw = memory::read(caller, ptr, len)?;
    let value = memory::read(caller, value_ptr, value_len)?;
    let stream = caller.data_mut().stream_mut().ok_or(Status::NotFound)?;
    stream.properties.insert(raw, value);
    Ok(())
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32, ret_ptr: i32, ret_len: i32| {
            finish(get_property(&mut caller, ptr, len, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32, vp: i32, vl: i32| {
            finish(set_property(&mut caller, ptr, len, vp, vl))
        },
    )?;
    Ok(())
}
