//! A tiny WebAssembly assembler for ABI tests that must not depend on the Looper
//! plugin. It emits the binary format directly (the `wat` feature of wasmtime is
//! deliberately off to keep CI builds small).
//!
//! Every module has a memory, a bump allocator exported as
//! `proxy_on_memory_allocate`, the `proxy_abi_version_0_2_1` marker, and the
//! imports listed in [`Import`]; tests add the callbacks they need.

#![allow(dead_code)]

/// Scratch words the guest code uses as return slots of hostcalls.
pub const RET_PTR: i32 = 1024;
pub const RET_LEN: i32 = 1028;
pub const RET_CODE: i32 = 1032;
const DATA_START: u32 = 2048;
const HEAP_START: i32 = 65536;
const PAGES: u32 = 32;

const I32: u8 = 0x7f;
const I64: u8 = 0x7e;

/// The `env` imports every test module declares, in index order.
#[derive(Copy, Clone)]
pub enum Import {
    Log = 0,
    GetBufferBytes,
    SendLocalResponse,
    HttpCall,
    GetHeaderMapValue,
    ContinueStream,
    GetStatus,
    GrpcCall,
    SetTickPeriod,
    SetSharedData,
    DefineMetric,
    IncrementMetric,
    RegisterSharedQueue,
    EnqueueSharedQueue,
}

const IMPORTS: &[(&str, &[u8])] = &[
    ("proxy_log", &[I32; 3]),
    ("proxy_get_buffer_bytes", &[I32; 5]),
    ("proxy_send_local_response", &[I32; 8]),
    ("proxy_http_call", &[I32; 10]),
    ("proxy_get_header_map_value", &[I32; 5]),
    ("proxy_continue_stream", &[I32; 1]),
    ("proxy_get_status", &[I32; 3]),
    ("proxy_grpc_call", &[I32; 12]),
    ("proxy_set_tick_period_milliseconds", &[I32; 1]),
    ("proxy_set_shared_data", &[I32; 5]),
    ("proxy_define_metric", &[I32; 4]),
    ("proxy_increment_metric", &[I32, I64]),
    ("proxy_register_shared_queue", &[I32; 3]),
    ("proxy_enqueue_shared_queue", &[I32; 3]),
];

struct Func {
    export: String,
    params: Vec<u8>,
    results: Vec<u8>,
    locals: u32,
    body: Vec<u8>,
}

/// Module under construction.
pub struct Guest {
    funcs: Vec<Func>,
    data: Vec<u8>,
    abi_marker: bool,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    pub fn new() -> Self {
        let mut guest = Guest {
            funcs: Vec::new(),
            data: Vec::new(),
            abi_marker: true,
        };
        // proxy_on_memory_allocate(len) -> ptr: bump the heap pointer (global 0).
        let mut alloc = Vec::new();
        alloc.extend([0x23, 0x00]); // global.get 0 (result)
        alloc.extend([0x23, 0x00, 0x20, 0x00, 0x6a, 0x24, 0x00]); // heap += len
        guest.func("proxy_on_memory_allocate", &[I32], &[I32], alloc);
        guest
    }

    /// Drops the ABI marker export (to test the version check).
    pub fn without_abi_marker(mut self) -> Self {
        self.abi_marker = false;
        self
    }

    /// Places bytes in the data segment and returns `(ptr, len)`.
    pub fn data(&mut self, bytes: &[u8]) -> (i32, i32) {
        let ptr = DATA_START as usize + self.data.len();
        self.data.extend_from_slice(bytes);
        // Keep entries 4-aligned for readability of memory dumps.
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
        (ptr as i32, bytes.len() as i32)
    }

    /// Defines an exported function with i32 params. `i64` params are not needed.
    pub fn func(&mut self, export: &str, params: &[u8], results: &[u8], body: Vec<u8>) {
        self.funcs.push(Func {
            export: export.to_string(),
            params: params.to_vec(),
            results: results.to_vec(),
            locals: 0,
            body,
        });
    }

    /// `proxy_on_context_create(ctx, parent)` doing nothing.
    pub fn with_context_create(mut self) -> Self {
        self.func("proxy_on_context_create", &[I32, I32], &[], Vec::new());
        self
    }

    /// `proxy_on_log`, `proxy_on_done` (returning true) and `proxy_on_delete`,
    /// all doing nothing.
    pub fn with_teardown(mut self) -> Self {
        self.func("proxy_on_log", &[I32], &[], Vec::new());
        self.func("proxy_on_done", &[I32], &[I32], op::i32(1));
        self.func("proxy_on_delete", &[I32], &[], Vec::new());
        self
    }

    /// A stream callback `(ctx, n, eos) -> action` (request/response headers/body).
    pub fn stream_callback(mut self, export: &str, body: Vec<u8>) -> Self {
        self.func(export, &[I32, I32, I32], &[I32], body);
        self
    }

    /// A void callback taking one context id (`proxy_on_log`, `proxy_on_tick`, ...).
    pub fn void_callback(mut self, export: &str, body: Vec<u8>) -> Self {
        self.func(export, &[I32], &[], body);
        self
    }

    /// `proxy_on_configure(ctx, len) -> bool`.
    pub fn configure(mut self, body: Vec<u8>) -> Self {
        self.func("proxy_on_configure", &[I32, I32], &[I32], body);
        self
    }

    /// `proxy_on_queue_ready(ctx, queue)`.
    pub fn queue_ready(mut self, body: Vec<u8>) -> Self {
        self.func("proxy_on_queue_ready", &[I32, I32], &[], body);
        self
    }

    /// `proxy_on_http_call_response(ctx, token, headers, body, trailers)`.
    pub fn http_call_response(mut self, body: Vec<u8>) -> Self {
        self.func(
            "proxy_on_http_call_response",
            &[I32, I32, I32, I32, I32],
            &[],
            body,
        );
        self
    }

    /// Encodes the module.
    pub fn build(&self) -> Vec<u8> {
        let mut types: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut type_of = |params: Vec<u8>, results: Vec<u8>| -> u32 {
            let key = (params, results);
            match types.iter().position(|t| *t == key) {
                Some(i) => i as u32,
                None => {
                    types.push(key);
                    types.len() as u32 - 1
                }
            }
        };
        let import_types: Vec<u32> = IMPORTS
            .iter()
            .map(|(_, params)| type_of(params.to_vec(), vec![I32]))
            .collect();
        let marker_type = type_of(vec![], vec![]);
        let func_types: Vec<u32> = self
            .funcs
            .iter()
            .map(|f| type_of(f.params.clone(), f.results.clone()))
            .collect();

        let mut out = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        section(
            &mut out,
            1,
            vector(types.iter().map(|(p, r)| {
                let mut t = vec![0x60];
                t.extend(bytes_vec(p));
                t.extend(bytes_vec(r));
                t
            })),
        );
        section(
            &mut out,
            2,
            vector(IMPORTS.iter().zip(&import_types).map(|((name, _), ty)| {
                let mut e = name_bytes("env");
                e.extend(name_bytes(name));
                e.push(0x00);
                e.extend(uleb(*ty));
                e
            })),
        );
        let mut defined: Vec<u32> = func_types.clone();
        if self.abi_marker {
            defined.push(marker_type);
        }
        section(&mut out, 3, vector(defined.iter().map(|t| uleb(*t))));
        section(
            &mut out,
            5,
            vector(std::iter::once({
                let mut m = vec![0x00];
                m.extend(uleb(PAGES));
                m
            })),
        );
        section(
            &mut out,
            6,
            vector(std::iter::once({
                let mut g = vec![I32, 0x01];
                g.extend(i32_const(HEAP_START));
                g.push(0x0b);
                g
            })),
        );
        let first = IMPORTS.len() as u32;
        let mut exports: Vec<Vec<u8>> = self
            .funcs
            .iter()
            .enumerate()
            .map(|(i, f)| export(&f.export, 0x00, first + i as u32))
            .collect();
        if self.abi_marker {
            exports.push(export(
                "proxy_abi_version_0_2_1",
                0x00,
                first + self.funcs.len() as u32,
            ));
        }
        exports.push(export("memory", 0x02, 0));
        section(&mut out, 7, vector(exports.into_iter()));
        let mut bodies: Vec<Vec<u8>> = self
            .funcs
            .iter()
            .map(|f| {
                let mut code = if f.locals > 0 {
                    let mut l = uleb(1);
                    l.extend(uleb(f.locals));
                    l.push(I32);
                    l
                } else {
                    uleb(0)
                };
                code.extend(&f.body);
                code.push(0x0b);
                let mut entry = uleb(code.len() as u32);
                entry.extend(code);
                entry
            })
            .collect();
        if self.abi_marker {
            bodies.push(vec![0x02, 0x00, 0x0b]);
        }
        section(&mut out, 10, vector(bodies.into_iter()));
        if !self.data.is_empty() {
            section(
                &mut out,
                11,
                vector(std::iter::once({
                    let mut d = vec![0x00];
                    d.extend(i32_const(DATA_START as i32));
                    d.push(0x0b);
                    d.extend(bytes_vec(&self.data));
                    d
                })),
            );
        }
        out
    }
}

fn uleb(mut value: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut value: i64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn name_bytes(name: &str) -> Vec<u8> {
    bytes_vec(name.as_bytes())
}

fn bytes_vec(bytes: &[u8]) -> Vec<u8> {
    let mut out = uleb(bytes.len() as u32);
    out.extend_from_slice(bytes);
    out
}

fn vector(items: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let items: Vec<Vec<u8>> = items.collect();
    let mut out = uleb(items.len() as u32);
    for item in items {
        out.extend(item);
    }
    out
}

fn section(out: &mut Vec<u8>, id: u8, content: Vec<u8>) {
    out.push(id);
    out.extend(uleb(content.len() as u32));
    out.extend(content);
}

fn export(name: &str, kind: u8, index: u32) -> Vec<u8> {
    let mut e = name_bytes(name);
    e.push(kind);
    e.extend(uleb(index));
    e
}

fn i32_const(value: i32) -> Vec<u8> {
    let mut out = vec![0x41];
    out.extend(sleb(i64::from(value)));
    out
}

/// Instruction helpers; each returns encoded bytes to concatenate.
pub mod op {
    use super::Import;

    pub fn i32(value: i32) -> Vec<u8> {
        super::i32_const(value)
    }

    pub fn i64(value: i64) -> Vec<u8> {
        let mut out = vec![0x42];
        out.extend(super::sleb(value));
        out
    }

    pub fn local(index: u32) -> Vec<u8> {
        let mut out = vec![0x20];
        out.extend(super::uleb(index));
        out
    }

    /// `i32.load` from a constant address.
    pub fn load(addr: i32) -> Vec<u8> {
        let mut out = i32(addr);
        out.extend([0x28, 0x02, 0x00]);
        out
    }

    /// Calls an import with constant or computed arguments (already pushed).
    pub fn call(import: Import) -> Vec<u8> {
        let mut out = vec![0x10];
        out.extend(super::uleb(import as u32));
        out
    }

    pub fn drop() -> Vec<u8> {
        vec![0x1a]
    }

    pub fn unreachable() -> Vec<u8> {
        vec![0x00]
    }

    /// `loop br 0 end unreachable`: spins forever.
    pub fn spin() -> Vec<u8> {
        vec![0x03, 0x40, 0x0c, 0x00, 0x0b, 0x00]
    }

    /// `memory.grow(pages)`, result dropped.
    pub fn grow(pages: i32) -> Vec<u8> {
        let mut out = i32(pages);
        out.extend([0x40, 0x00, 0x1a]);
        out
    }

    /// `if (cond) { then } else { otherwise }` where `cond` is on the stack.
    pub fn if_else(then: Vec<u8>, otherwise: Vec<u8>) -> Vec<u8> {
        let mut out = vec![0x04, 0x40];
        out.extend(then);
        out.push(0x05);
        out.extend(otherwise);
        out.push(0x0b);
        out
    }

    /// `i32.eqz`.
    pub fn eqz() -> Vec<u8> {
        vec![0x45]
    }

    /// `i32.eq`.
    pub fn eq() -> Vec<u8> {
        vec![0x46]
    }

    /// `proxy_log(level, ptr, len)` with the result dropped.
    pub fn log(level: i32, (ptr, len): (i32, i32)) -> Vec<u8> {
        [i32(level), i32(ptr), i32(len), call(Import::Log), drop()].concat()
    }

    /// Logs the bytes a hostcall returned through `RET_PTR`/`RET_LEN`.
    pub fn log_returned(level: i32) -> Vec<u8> {
        [
            i32(level),
            load(super::RET_PTR),
            load(super::RET_LEN),
            call(Import::Log),
            drop(),
        ]
        .concat()
    }
}
