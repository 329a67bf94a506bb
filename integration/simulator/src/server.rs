//! The listener, per-connection loop, routing, and the chat completion
//! handler that ties config, directives, faults, generation and stats
//! together.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::completion::{generate, ChatRequest, EventKind, GenParams, SseEvent, Usage};
use crate::config::{Config, ModelConfig};
use crate::dialect::Dialect;
use crate::directives::{Directives, FaultDirective};
use crate::error::ApiError;
use crate::faults::{self, FaultKind};
use crate::http::{self, Conn, ReadError, Request};
use crate::questions;
use crate::stats::{Stats, Tally};

/// Shared by all connection threads.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub stats: Stats,
    next_id: AtomicU64,
}

impl State {
    pub fn new(config: Config) -> Self {
        State {
            stats: Stats::new(config.models.keys()),
            config,
            next_id: AtomicU64::new(1),
        }
    }
}

pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
}

impl Server {
    pub fn bind(config: Config, addr: impl ToSocketAddrs) -> io::Result<Server> {
        Ok(Server {
            listener: TcpListener::bind(addr)?,
            state: Arc::new(State::new(config)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<State> {
        Arc::clone(&self.state)
    }

    /// Accepts connections forever, one thread per connection.
    pub fn run(self) {
        for stream in self.listener.incoming() {
            match stream {
                Ok(stream) => {
                    let state = Arc::clone(&self.state);
                    // If no thread can be spawned the connection is dropped.
                    let _ = thread::Builder::new()
                        .name("looper-sim-conn".into())
                        .spawn(move || serve_connection(&state, stream));
                }
                // E.g. EMFILE: back off instead of spinning.
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Runs the accept loop on a background thread (for in-process tests).
    pub fn spawn(self) -> io::Result<SocketAddr> {
        let addr = self.local_addr()?;
        thread::Builder::new()
            .name("looper-sim-accept".into())
            .spawn(move || self.run())?;
        Ok(addr)
    }
}

/// What to do with the connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Read the next request (unless the client asked to close).
    Continue,
    /// Close, letting the client read what was sent.
    Close,
    /// Drop the socket now (faults, write errors).
    Drop,
}

fn serve_connection(state: &State, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    loop {
        let req = match conn.read_request() {
            Ok(req) => req,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(status, message)) => {
                let err = ApiError::new(status, "invalid_request_error", message);
                if send_error(&mut conn.stream, &err, Dialect::OpenAi, &[], true) != Flow::Drop {
                    http::close_gracefully(&mut conn.stream);
                }
                return;
            }
        };
        let close = !req.keep_alive;
        match route(state, &mut conn.stream, &req, close) {
            Flow::Continue if !close => {}
            Flow::Continue | Flow::Close => {
                http::close_gracefully(&mut conn.stream);
                return;
            }
            Flow::Drop => return,
        }
    }
}

fn route(state: &State, stream: &mut TcpStream, req: &Request, close: bool) -> Flow {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v1/chat/completions") => chat(state, stream, &req.body, close),
        ("GET", "/v1/models") => {
            let data: Vec<_> = state
                .config
                .models
                .keys()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "looper-sim"}))
                .collect();
            send_json(stream, &json!({"object": "list", "data": data}), close)
        }
        ("GET", "/healthz") => flow(
            http::write_response(stream, 200, "text/plain; charset=utf-8", &[], b"ok", close),
            close,
        ),
        ("GET", "/sim/stats") => send_json(stream, &state.stats.to_json(), close),
        ("GET", "/sim/usage") => send_json(stream, &state.stats.usage_json(), close),
        ("POST", "/sim/reset") => {
            state.stats.reset();
            send_json(stream, &json!({"ok": true}), close)
        }
        _ => send_error(
            stream,
            &ApiError::not_found(&req.path),
            Dialect::OpenAi,
            &[],
            close,
        ),
    }
}

fn flow(result: io::Result<()>, close: bool) -> Flow {
    match (result, close) {
        (Err(_), _) => Flow::Drop,
        (Ok(()), true) => Flow::Close,
        (Ok(()), false) => Flow::Continue,
    }
}

fn send_json(stream: &mut TcpStream, v: &serde_json::Value, close: bool) -> Flow {
    let body = serde_json::to_vec(v).unwrap_or_default();
    flow(
        http::write_response(stream, 200, "application/json", &[], &body, close),
        close,
    )
}

/// Sends `err` with its body in `dialect`'s shape.
fn send_error(
    stream: &mut TcpStream,
    err: &ApiError,
    dialect: Dialect,
    extra: &[(&str, &str)],
    close: bool,
) -> Flow {
    flow(
        http::write_response(
            stream,
            err.status,
            "application/json",
            extra,
            &err.body_in(dialect),
            close,
        ),
        close,
    )
}

/// The dialect of the configured model a request body names, if it can be
/// read at all (for errors found before the request is fully validated);
/// else the default.
fn dialect_of_body(config: &Config, body: &[u8]) -> Dialect {
    serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .and_then(|m| config.models.get(m))
        .map_or(Dialect::default(), |mc| mc.dialect)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How the response bytes are put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Normal,
    /// `slow`: `bytes` per write, `interval` between writes.
    Drip {
        bytes: usize,
        interval: Duration,
    },
    /// `truncate`: half the body, then close.
    Truncate,
}

fn chat(state: &State, stream: &mut TcpStream, body: &[u8], close: bool) -> Flow {
    let stats = &state.stats;
    let _in_flight = stats.in_flight();
    let req = match ChatRequest::parse(body) {
        Ok(req) => req,
        Err(e) => {
            stats.rejected();
            let dialect = dialect_of_body(&state.config, body);
            return send_error(stream, &e, dialect, &[], close);
        }
    };
    let Some(mc) = state.config.models.get(&req.model) else {
        stats.rejected();
        let err = ApiError::model_not_found(&req.model);
        return send_error(stream, &err, Dialect::default(), &[], close);
    };
    let scanned = Directives::scan(req.texts.iter().map(String::as_str), &req.model)
        .and_then(|d| Ok((questions::question(&d, &req.texts, &state.config.items)?, d)));
    let (question, directives) = match scanned {
        Ok(found) => found,
        Err(msg) => {
            stats.rejected();
            let err = ApiError::invalid(
                format!("invalid simulator directive: {msg}"),
                Some("messages"),
            )
            .with_code("invalid_directive");
            return send_error(stream, &err, mc.dialect, &[], close);
        }
    };
    let model = req.model.as_str();
    // The usage log's key: the item bank tag the request carries.
    let tag = question.as_ref().and_then(|q| q.tag.as_deref());
    let counter = stats.begin_request(model, tag);
    // A prompt larger than the context is refused before anything else
    // (latency, faults, generation), with a JSON body even for a stream.
    let prompt_tokens = req.prompt_tokens();
    if let Some(ctx) = mc.context_tokens.filter(|&ctx| prompt_tokens > ctx) {
        stats.context_overflow(model);
        let err = ApiError::context_overflow(mc.dialect, prompt_tokens, ctx);
        return send_error(stream, &err, mc.dialect, &[], close);
    }
    let drawn = faults::draw(
        state.config.seed,
        model,
        body,
        counter,
        &mc.failure_rates,
        mc.latency_jitter_ms,
    );
    let fault = match directives.fault {
        Some(FaultDirective::Kind(k)) => Some(k),
        Some(FaultDirective::None) => None,
        None => drawn.fault,
    };
    if let Some(kind) = fault {
        stats.fault(model, kind);
    }

    let latency = directives
        .latency_ms
        .unwrap_or(mc.latency_ms.saturating_add(drawn.jitter_ms));
    if latency > 0 && !http::wait_while_connected(stream, ms(latency)) {
        stats.cancelled(model);
        return Flow::Drop;
    }

    let mut delivery = Delivery::Normal;
    match fault {
        Some(kind) if kind.status().is_some() => {
            let err = ApiError::simulated(kind.status().unwrap_or(500));
            let extra: &[(&str, &str)] = if kind == FaultKind::Status429 {
                &[("retry-after", "1")]
            } else {
                &[]
            };
            return send_error(stream, &err, mc.dialect, extra, close);
        }
        Some(FaultKind::Reset) => {
            let _ = stream.shutdown(Shutdown::Both);
            return Flow::Drop;
        }
        // Hold the request, then answer normally (falls through to `_`).
        Some(FaultKind::Hang) if !http::wait_while_connected(stream, ms(mc.hang_ms)) => {
            stats.cancelled(model);
            return Flow::Drop;
        }
        Some(FaultKind::Truncate) => delivery = Delivery::Truncate,
        Some(FaultKind::Slow) => {
            delivery = Delivery::Drip {
                bytes: usize::try_from(mc.slow_chunk_bytes).unwrap_or(10).max(1),
                interval: ms(mc.slow_interval_ms),
            }
        }
        _ => {}
    }

    let completion = generate(
        &req,
        &GenParams {
            // The request's own `seed` picks another sample; without one
            // (or for a deterministic model), the config's.
            seed: match req.seed {
                Some(s) if !mc.deterministic => crate::rng::mix_seed(state.config.seed, s),
                _ => state.config.seed,
            },
            errors: state.config.error_model(),
            model: mc,
            directives: &directives,
            fault,
            id: format!(
                "chatcmpl-sim-{}",
                state.next_id.fetch_add(1, Ordering::Relaxed)
            ),
            created: unix_now(),
            question: question.as_ref(),
            quality: directives.quality.apply(&mc.quality),
        },
    );
    // What this response adds to the stats once it is sent. It is recorded
    // just before the write that completes the response (so a client that
    // has read the whole response always finds it in /sim/stats) and taken
    // back if that write fails. Truncated responses never commit.
    let mut outcome = Outcome {
        usage: None,
        ok: fault.is_none(),
        tally: completion.tally,
    };
    let result = if req.stream {
        let events = completion.to_sse_events();
        if events.iter().any(|e| e.kind == EventKind::Usage) {
            outcome.usage = completion.usage;
        }
        let mut commit = || stats.commit(model, tag, outcome.usage, outcome.ok, &outcome.tally);
        send_stream(stream, &events, delivery, mc, close, &mut commit)
    } else {
        if !matches!(
            fault,
            Some(FaultKind::Garbage | FaultKind::WrongShape | FaultKind::CutJson)
        ) {
            outcome.usage = completion.usage;
        }
        let body = completion.to_json_body();
        let mut commit = || stats.commit(model, tag, outcome.usage, outcome.ok, &outcome.tally);
        send_body(stream, &body, delivery, close, &mut commit)
    };
    match result {
        Ok(Sent::Complete) => {
            if close {
                Flow::Close
            } else {
                Flow::Continue
            }
        }
        Ok(Sent::Truncated) => Flow::Drop,
        Err(Failed { committed }) => {
            if committed {
                stats.uncommit(model, tag, outcome.usage, outcome.ok, &outcome.tally);
            }
            stats.cancelled(model);
            Flow::Drop
        }
    }
}

/// Stats a completed response contributes.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    usage: Option<Usage>,
    ok: bool,
    tally: Tally,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Complete,
    /// Deliberately cut short (`truncate`).
    Truncated,
}

/// A write failed (the client went away); `committed` says whether the
/// stats had already been committed.
#[derive(Debug)]
struct Failed {
    committed: bool,
}

/// Tracks whether the commit callback ran, to report it in [`Failed`].
struct Committer<'a> {
    commit: &'a mut dyn FnMut(),
    done: bool,
}

impl Committer<'_> {
    fn commit(&mut self) {
        if !self.done {
            (self.commit)();
            self.done = true;
        }
    }

    fn fail(&self) -> impl Fn(io::Error) -> Failed {
        let committed = self.done;
        move |_| Failed { committed }
    }
}

fn drip(stream: &mut TcpStream, data: &[u8], bytes: usize, interval: Duration) -> io::Result<()> {
    for (i, piece) in data.chunks(bytes).enumerate() {
        if i > 0 {
            thread::sleep(interval);
        }
        stream.write_all(piece)?;
    }
    Ok(())
}

/// Sends a non-streaming 200 JSON body, calling `commit` just before the
/// write that completes it.
fn send_body(
    stream: &mut TcpStream,
    body: &[u8],
    delivery: Delivery,
    close: bool,
    commit: &mut dyn FnMut(),
) -> Result<Sent, Failed> {
    let mut c = Committer {
        commit,
        done: false,
    };
    match delivery {
        Delivery::Normal => {
            c.commit();
            http::write_response(stream, 200, "application/json", &[], body, close)
                .map_err(c.fail())?;
        }
        Delivery::Drip { bytes, interval } => {
            let head = http::head(200, "application/json", Some(body.len()), &[], close);
            stream.write_all(&head).map_err(c.fail())?;
            c.commit();
            drip(stream, body, bytes, interval).map_err(c.fail())?;
        }
        Delivery::Truncate => {
            let mut out = http::head(200, "application/json", Some(body.len()), &[], true);
            out.extend_from_slice(body.get(..body.len() / 2).unwrap_or(&[]));
            stream.write_all(&out).map_err(c.fail())?;
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(Sent::Truncated);
        }
    }
    Ok(Sent::Complete)
}

fn push_event(out: &mut Vec<u8>, ev: &SseEvent) {
    let mut framed = Vec::with_capacity(ev.data.len() + 8);
    framed.extend_from_slice(b"data: ");
    framed.extend_from_slice(&ev.data);
    framed.extend_from_slice(b"\n\n");
    http::push_chunk(out, &framed);
}

const SSE_HEADERS: &[(&str, &str)] = &[("cache-control", "no-cache")];

/// Sends an SSE stream with chunked encoding, calling `commit` just before
/// the write that completes it.
fn send_stream(
    stream: &mut TcpStream,
    events: &[SseEvent],
    delivery: Delivery,
    mc: &ModelConfig,
    close: bool,
    commit: &mut dyn FnMut(),
) -> Result<Sent, Failed> {
    let mut c = Committer {
        commit,
        done: false,
    };
    let head = http::head(200, "text/event-stream", None, SSE_HEADERS, close);
    match delivery {
        Delivery::Normal => {
            // Batch everything between pauses into one write.
            let mut out = head;
            for ev in events {
                if ev.kind == EventKind::Token && mc.token_latency_ms > 0 {
                    stream.write_all(&out).map_err(c.fail())?;
                    out.clear();
                    thread::sleep(ms(mc.token_latency_ms));
                }
                push_event(&mut out, ev);
            }
            out.extend_from_slice(http::LAST_CHUNK);
            c.commit();
            stream.write_all(&out).map_err(c.fail())?;
            Ok(Sent::Complete)
        }
        Delivery::Drip { bytes, interval } => {
            let mut body = Vec::new();
            for ev in events {
                push_event(&mut body, ev);
            }
            body.extend_from_slice(http::LAST_CHUNK);
            stream.write_all(&head).map_err(c.fail())?;
            c.commit();
            drip(stream, &body, bytes, interval).map_err(c.fail())?;
            Ok(Sent::Complete)
        }
        Delivery::Truncate => {
            let mut body = Vec::new();
            for ev in events {
                push_event(&mut body, ev);
            }
            let mut out = http::head(200, "text/event-stream", None, SSE_HEADERS, true);
            out.extend_from_slice(body.get(..body.len() / 2).unwrap_or(&[]));
            stream.write_all(&out).map_err(c.fail())?;
            let _ = stream.shutdown(Shutdown::Both);
            Ok(Sent::Truncated)
        }
    }
}
