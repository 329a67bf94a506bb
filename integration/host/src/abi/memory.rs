//! The guest memory protocol.
//!
//! Arguments arrive as `(ptr, len)` pairs into the guest's linear memory. Values the
//! host returns are copied into a buffer the guest allocates itself through its
//! exported `proxy_on_memory_allocate(len)`: the host calls that export re-entrantly
//! (through the [`Caller`]), copies the bytes, and writes the buffer's pointer and
//! length as little-endian `u32` at the `ret_ptr`/`ret_len` addresses the guest
//! passed. The guest then owns the buffer (`Vec::from_raw_parts` in the SDK).

use wasmtime::Caller;

use super::{Fault, Status};
use crate::state::{GuestExports, HostState};

fn guest(caller: &Caller<'_, HostState>) -> Result<GuestExports, Fault> {
    // Only missing before instantiation completes; the guest cannot call us then.
    caller
        .data()
        .guest
        .clone()
        .ok_or(Fault::Status(Status::InternalFailure))
}

fn range(ptr: i32, len: usize) -> Result<std::ops::Range<usize>, Fault> {
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len)
        .ok_or(Fault::Status(Status::InvalidMemoryAccess))?;
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of guest memory. A zero length never touches
/// memory, so `(null, 0)` (the SDK's `None`) reads as empty.
pub(crate) fn read(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<Vec<u8>, Fault> {
    let len = len as u32 as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let memory = guest(caller)?.memory;
    memory
        .data(&*caller)
        .get(range(ptr, len)?)
        .map(<[u8]>::to_vec)
        .ok_or(Fault::Status(Status::InvalidMemoryAccess))
}

/// Reads a UTF-8 string argument (names, keys); invalid UTF-8 is replaced, as a
/// C++ host would pass the bytes through unchanged and nobody relies on it.
pub(crate) fn read_string(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<String, Fault> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

/// Writes raw bytes at `ptr`.
pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    bytes: &[u8],
) -> Result<(), Fault> {
    let memory = guest(caller)?.memory;
    memory
        .data_mut(&mut *caller)
        .get_mut(range(ptr, bytes.len())?)
        .ok_or(Fault::Status(Status::InvalidMemoryAccess))?
        .copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian `u32` (pointers, lengths, ids, tokens).
pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    value: u32,
) -> Result<(), Fault> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian `u64` (times, metric values).
pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    value: u64,
) -> Result<(), Fault> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Allocates a guest buffer with `proxy_on_memory_allocate` and copies `bytes` in.
/// A trap inside the allocator (e.g. the memory limit) propagates as a trap.
pub(crate) fn copy_in(caller: &mut Caller<'_, HostState>, bytes: &[u8]) -> Result<u32, Fault> {
    let allocate = guest(caller)?.allocate;
    let len = i32::try_from(bytes.len()).map_err(|_| Fault::Status(Status::InvalidMemoryAccess))?;
    let ptr = allocate.call(&mut *caller, len)?;
    if ptr == 0 {
        return Err(Fault::Status(Status::InvalidMemoryAccess));
    }
    write(caller, ptr, bytes)?;
    Ok(ptr as u32)
}

/// The full return protocol: allocate, copy, and store `(ptr, len)` at the two
/// return addresses.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fault> {
    let ptr = copy_in(caller, bytes)?;
    write_u32(caller, ret_ptr, ptr)?;
    write_u32(caller, ret_len, bytes.len() as u32)
}
