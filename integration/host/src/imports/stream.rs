//! Stream control: `proxy_continue_stream`, `proxy_close_stream`,
//! `proxy_send_local_response`. All three are deferred until the running callback
//! returns, as Envoy does with `addAfterVmCallAction`. `proxy_continue_stream`
//! also drops the request maps at once (Envoy nulls `request_headers_`,
//! `request_body_buffer_`, `request_trailers_` before returning).

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::maps::deserialize_pairs;
use crate::abi::{finish, memory, Fault, Status, StreamType};
use crate::headers::HeaderMap;
use crate::state::{Deferred, HostState};

fn continue_stream(caller: &mut Caller<'_, HostState>, kind: i32) -> Result<(), Fault> {
    let kind = StreamType::from_raw(kind).ok_or(Status::BadArgument)?;
    let state = caller.data_mut();
    let context = state.effective;
    let deferred = match kind {
        StreamType::Request => Deferred::ContinueRequest(context),
        StreamType::Response => Deferred::ContinueResponse,
        StreamType::Downstream => return Ok(()),
        StreamType::Upstream => return Err(Status::Unimplemented.into()),
    };
    if let Some(stream) = state.stream_mut() {
        stream.request_headers_visible = false;
        stream.request_body_visible = false;
        state.deferred.push_back(deferred);
    }
    Ok(())
}

fn close_stream(caller: &mut Caller<'_, HostState>, kind: i32) -> Result<(), Fault> {
    let kind = StreamType::from_raw(kind).ok_or(Status::BadArgument)?;
    let state = caller.data_mut();
    let context = state.effective;
    if matches!(kind, StreamType::Request | StreamType::Response) && state.stream().is_some() {
        state.deferred.push_back(Deferred::Reset(context));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    caller: &mut Caller<'_, HostState>,
    status: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
) -> Result<(), Fault> {
    let details = memory::read_string(caller, details_ptr, details_len)?;
    let body = memory::read(caller, body_ptr, body_len)?;
    let pairs = deserialize_pairs(&memory::read(caller, headers_ptr, headers_len)?)
        .map_err(|_| Status::BadArgument)?;
    let headers: HeaderMap = pairs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
        .collect();
    let state = caller.data_mut();
    let context = state.effective;
    if state.stream().is_some() {
        state.deferred.push_back(Deferred::LocalReply {
            context,
            status: status as u32,
            // Envoy replaces whitespace in details with underscores.
            details: details.replace(char::is_whitespace, "_"),
            body,
            headers,
        });
    }
    Ok(())
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_continue_stream",
        |mut caller: Caller<'_, HostState>, kind: i32| finish(continue_stream(&mut caller, kind)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_close_stream",
        |mut caller: Caller<'_, HostState>, kind: i32| finish(close_stream(&mut caller, kind)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc_status: i32| {
            finish(send_local_response(
                &mut caller,
                status,
                details_ptr,
                details_len,
                body_ptr,
                body_len,
                headers_ptr,
                headers_len,
            ))
        },
    )?;
    Ok(())
}
