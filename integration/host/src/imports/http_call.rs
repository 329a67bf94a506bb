//! `proxy_http_call` and `proxy_get_status`.
//!
//! Validation is Envoy's `Context::httpCall`: a negative timeout, an unknown
//! cluster, or a missing `:path`, `:method` or `:authority` is `BadArgument`.
//! Header names are lower-cased and `content-length` is set from a non-empty body,
//! as `buildRequestHeaderMapFromPairs` and `setContentLength` do. The call is
//! recorded and waits for the test to answer it.

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::maps::deserialize_pairs;
use crate::abi::{finish, memory, Fault, Status};
use crate::calls::{CallState, HttpCall};
use crate::headers::HeaderMap;
use crate::state::HostState;

fn read_map(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<HeaderMap, Fault> {
    let pairs =
        deserialize_pairs(&memory::read(caller, ptr, len)?).map_err(|_| Status::BadArgument)?;
    Ok(pairs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
        .collect())
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    caller: &mut Caller<'_, HostState>,
    cluster_ptr: i32,
    cluster_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    trailers_ptr: i32,
    trailers_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> Result<(), Fault> {
    let cluster = memory::read_string(caller, cluster_ptr, cluster_len)?;
    let mut headers = read_map(caller, headers_ptr, headers_len)?;
    let body = memory::read(caller, body_ptr, body_len)?;
    let trailers = read_map(caller, trailers_ptr, trailers_len)?;
    if timeout_ms < 0 {
        return Err(Status::BadArgument.into());
    }
    let state = caller.data_mut();
    if !state.options.clusters.contains(&cluster) {
        return Err(Status::BadArgument.into());
    }
    if [":path", ":method", ":authority"]
        .iter()
        .any(|h| !headers.contains(h))
    {
        return Err(Status::BadArgument.into());
    }
    if !body.is_empty() {
        headers.replace("content-length", body.len().to_string());
    }
    let call = HttpCall {
        token: 0,
        context: state.effective,
        cluster,
        headers,
        body,
        trailers,
        timeout_ms: timeout_ms as u32,
        dispatched_at_ms: state.clock.now_ms(),
        state: CallState::Pending,
    };
    let token = state.calls.dispatch(call);
    memory::write_u32(caller, ret_token, token)
}

fn get_status(
    caller: &mut Caller<'_, HostState>,
    ret_code: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fault> {
    let (code, message) = caller.data_mut().status_mut().clone();
    memory::write_u32(caller, ret_code, code)?;
    // cpp-host copies the message even when empty, so the SDK sees `Some("")`.
    memory::return_bytes(caller, message.as_bytes(), ret_ptr, ret_len)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         cluster_ptr: i32,
         cluster_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         trailers_ptr: i32,
         trailers_len: i32,
         timeout_ms: i32,
         ret_token: i32| {
            finish(http_call(
                &mut caller,
                cluster_ptr,
                cluster_len,
                headers_ptr,
                headers_len,
                body_ptr,
                body_len,
                trailers_ptr,
                trailers_len,
                timeout_ms,
                ret_token,
            ))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_status",
        |mut caller: Caller<'_, HostState>, ret_code: i32, ret_ptr: i32, ret_len: i32| {
            finish(get_status(&mut caller, ret_code, ret_ptr, ret_len))
        },
    )?;
    Ok(())
}
