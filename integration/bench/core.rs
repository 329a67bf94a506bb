//! The sans-IO core's own cost per request, by recipe and body size (`make bench`).
//!
//! Each recipe of `integration/bench/gateway/plugin.json` runs once against the real simulator
//! (in-process, on loopback) and its upstream answers are recorded; then the same request is
//! replayed through a fresh [`Exchange`] many times, answering each call from the recording,
//! so the timed loop is the plugin's own work: parse, route, build sub-calls, read answers,
//! vote, render. Native code; V8 runs the same code slower by a roughly constant factor.
//!
//! `cargo bench -p looper --bench core -- --once RECIPE KB` replays one request 20 times and exits, for
//! `valgrind --tool=callgrind` (instruction counts do not depend on the machine's load).

// A benchmark that meets something unexpected must stop loudly, not measure it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use looper::config::Config;
use looper::exchange::{Command, Exchange, RequestHead};
use looper::gateway::Gateway;
use looper::looper::CallResult;
use looper::time::Millis;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

const PLUGIN: &str = include_str!("gateway/plugin.json");
const SIM: &str = include_str!("gateway/sim.json");
const RECIPES: &[&str] = &[
    "single",
    "confidence-2",
    "ratings-3",
    "remom-1x4",
    "remom-2x4",
    "fusion-3",
    "workflows-4",
];
const SIZES_KB: &[usize] = &[1, 16, 128];
const T0: Millis = Millis(1_700_000_000_000);

/// The same request shape as `gateway.py`: filler text, then a question the simulator answers
/// with a letter.
fn chat_body(model: &str, size_kb: usize) -> Vec<u8> {
    let question = "Which option is right? A) one B) two C) three D) four [sim:mc=B]\n";
    let envelope =
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": ""}]})
            .to_string()
            .len();
    let missing = (size_kb * 1024).saturating_sub(envelope + question.len());
    let mut content = "lorem ".repeat(missing / 6 + 1);
    content.truncate(missing);
    content.push_str(question);
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
        .to_string()
        .into_bytes()
}

/// One blocking HTTP/1.1 POST to the simulator; returns status and body.
fn post(addr: SocketAddr, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect to the simulator");
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n");
    for (name, value) in headers.iter().filter(|(n, _)| !n.starts_with(':')) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn gateway() -> Rc<Gateway> {
    let config = Config::from_json(PLUGIN.as_bytes(), &|_| None).expect("the bench configuration");
    Gateway::new(config, 7, 11)
}

/// Drives one request through `exchange`; `answer` gives each dispatched call's result.
/// Returns the reply's status and the number of calls made.
fn run(
    exchange: &mut Exchange,
    body: &[u8],
    mut answer: impl FnMut(usize, &[(String, String)], &[u8]) -> (u16, Vec<u8>),
) -> (u16, usize) {
    let head = RequestHead {
        method: b"POST",
        path: b"/v1/chat/completions",
        trace: None,
        signal_headers: &[],
    };
    exchange.on_request_headers(head, false, T0);
    exchange.on_request_body(body.len(), body, true, T0);
    let mut calls = 0;
    let mut pending = Vec::new();
    loop {
        while let Some(command) = exchange.poll_command() {
            match command {
                Command::HttpCall {
                    call,
                    headers,
                    body,
                    ..
                } => {
                    let (status, reply) = answer(calls, &headers, &body);
                    calls += 1;
                    pending.push((call, status, reply));
                }
                Command::Reply { status, body, .. } => {
                    black_box(body);
                    return (status, calls);
                }
                Command::ForwardUpstream { .. } => panic!("the bench never streams"),
                Command::Count(_) | Command::Add(..) | Command::Record(..) => {}
            }
        }
        // Answers arrive in dispatch order, one callback each, as the host would deliver them.
        if pending.is_empty() {
            panic!("the exchange stopped without a reply");
        }
        let (call, status, body) = pending.remove(0);
        exchange.on_call_result(call, CallResult::Response { status, body }, T0);
    }
}

/// Upstream answers for one recipe and size, recorded from the simulator, in call order.
fn record(gw: &Rc<Gateway>, sim: SocketAddr, recipe: &str, size_kb: usize) -> Vec<(u16, Vec<u8>)> {
    let body = chat_body(&format!("bench/{recipe}"), size_kb);
    let mut recorded = Vec::new();
    let mut exchange = gw.exchange(T0);
    let (status, _) = run(&mut exchange, &body, |_, headers, call_body| {
        let path = headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map_or("/v1/chat/completions", |(_, v)| v.as_str());
        let reply = post(sim, path, headers, call_body);
        recorded.push(reply.clone());
        reply
    });
    assert_eq!(
        status, 200,
        "{recipe} {size_kb} KB did not succeed against the simulator"
    );
    recorded
}

fn replay(gw: &Rc<Gateway>, body: &[u8], recorded: &[(u16, Vec<u8>)]) -> usize {
    let mut exchange = gw.exchange(T0);
    let (status, calls) = run(&mut exchange, body, |i, _, _| {
        recorded.get(i).cloned().unwrap_or((503, Vec::new()))
    });
    assert_eq!(status, 200);
    calls
}

fn start_simulator() -> SocketAddr {
    let config = looper_sim::Config::from_json_str(SIM).expect("the bench simulator configuration");
    looper_sim::Server::bind(config, "127.0.0.1:0")
        .and_then(looper_sim::Server::spawn)
        .expect("start the simulator")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let sim = start_simulator();
    let gw = gateway();
    if let Some(pos) = args.iter().position(|a| a == "--once") {
        let recipe = args.get(pos + 1).map_or("remom-1x4", String::as_str);
        let size: usize = args.get(pos + 2).and_then(|s| s.parse().ok()).unwrap_or(1);
        let recorded = record(&gw, sim, recipe, size);
        let body = chat_body(&format!("bench/{recipe}"), size);
        // Replays dominate the profile; the recording is the simulator's work.
        let mut calls = 0;
        for _ in 0..20 {
            calls = replay(&gw, &body, &recorded);
        }
        println!("{recipe} {size} KB: {calls} calls, replayed 20 times");
        return;
    }
    let mut rows = Vec::new();
    println!("| recipe | body | calls | core µs/request (native) |");
    println!("| --- | --- | --- | --- |");
    for &size in SIZES_KB {
        for &recipe in RECIPES {
            let recorded = record(&gw, sim, recipe, size);
            let body = chat_body(&format!("bench/{recipe}"), size);
            let budget = Duration::from_millis(300);
            let mut runs = 0u32;
            let mut calls = 0;
            let start = Instant::now();
            while start.elapsed() < budget || runs < 5 {
                calls = replay(&gw, black_box(&body), &recorded);
                runs += 1;
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(runs);
            println!("| {recipe} | {size} KB | {calls} | {us:.1} |");
            rows.push(serde_json::json!({
                "recipe": recipe, "body_kb": size, "calls": calls, "core_us": us,
            }));
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/bench-core.json");
    std::fs::write(&out, serde_json::to_string_pretty(&rows).unwrap() + "\n").unwrap();
    println!("\nwritten to {}", out.display());
}
