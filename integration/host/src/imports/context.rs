//! Context plumbing: `proxy_set_effective_context` (the SDK calls it before every
//! `on_http_call_response` and unwraps the result), `proxy_done`, and
//! `proxy_call_foreign_function` (no foreign functions exist here: `NotFound`).

use wasmtime::{Caller, Linker};

use super::ENV;
use crate::abi::{finish, Status};
use crate::state::HostState;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, context: i32| {
            let state = caller.data_mut();
            let context = context as u32;
            if state.is_live_context(context) {
                state.effective = context;
                finish(Ok(()))
            } else {
                finish(Err(Status::BadArgument.into()))
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_done", |mut caller: Caller<'_, HostState>| {
        caller.data_mut().done_calls += 1;
        finish(Ok(()))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |_: Caller<'_, HostState>, _np: i32, _nl: i32, _ap: i32, _al: i32, _rp: i32, _rl: i32| {
            finish(Err(Status::NotFound.into()))
        },
    )?;
    Ok(())
}
