//! Cost of the auto router per request, by input size (`make bench`).
//!
//! Routes requests of 1 KB to 1 MB through the shipped router (`filters/auto.json`) and
//! reports the time per request next to the time to parse the same body as JSON, measured in
//! the same run, so the ratio holds on any machine. Native code; inside Envoy the plugin runs
//! on V8, which is slower by a roughly constant factor.

use looper::config::{Config, Target};
use looper::openai::ChatRequest;
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIZES: &[(&str, usize)] = &[
    ("1 KB", 1 << 10),
    ("16 KB", 16 << 10),
    ("128 KB", 128 << 10),
    ("1 MB", 1 << 20),
];

/// Prose with a keyword every few sentences, like a long document or conversation.
const PROSE: &str = "The committee met on Tuesday to review the results of the spring survey. \
    Most members agreed that the response rate was lower than last year, and several asked \
    whether the questionnaire had been too long. The chair suggested a shorter form for the \
    autumn round. A short note on the quantum chemistry seminar closed the meeting. ";

/// Russian prose with Chinese phrases: case folding and word boundaries beyond ASCII.
const MULTILINGUAL: &str = "Комитет собрался во вторник, чтобы обсудить результаты весеннего \
    опроса. Большинство согласилось, что доля ответов ниже прошлогодней. 委员会讨论了原子结构。 ";

/// Keywords, file paths, numbers and options in every sentence: the worst case a client can
/// send to make routing expensive.
const DENSE: &str = "Compute 12*7 + 3 in the function; see src/app.py. Thanks! Prove the \
    enzyme reaction, quantum photon, array from standard input.\nA) x\nB) y\nC) z\n";

fn body(filler: &str, size: usize) -> Vec<u8> {
    let question = "Which orbital has the lowest energy?\nA) 2p\nB) 1s\nC) 3d\nD) 2s";
    let room = size.saturating_sub(question.len() + 120);
    let mut text = filler.repeat(room / filler.len() + 1);
    let mut cut = room.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(question);
    json!({"model": "vllm-sr/auto", "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": text}
    ]})
    .to_string()
    .into_bytes()
}

/// Mean time of `f` over enough runs to fill `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < budget || runs < 5 {
        f();
        runs += 1;
    }
    start.elapsed() / runs
}

fn main() {
    let config = Config::from_json(include_bytes!("../../filters/auto.json"), &|_| None)
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    let Some(Target::Router(id)) = config.virtual_model("vllm-sr/auto").map(|v| v.target) else {
        eprintln!("vllm-sr/auto is not routed in filters/auto.json");
        std::process::exit(1)
    };
    let Some(router) = config.router(id) else {
        std::process::exit(1)
    };
    let budget = Duration::from_millis(600);
    println!(
        "Router `{}`: {} signals, {} projections, {} decisions.\n",
        router.name,
        router.signals.len(),
        router.projections.len(),
        router.decisions.len()
    );
    println!(
        "| text | body | route µs/request | MB/s | JSON parse µs | route / parse | decision |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for (kind, filler) in [
        ("prose", PROSE),
        ("multilingual", MULTILINGUAL),
        ("dense", DENSE),
    ] {
        for &(label, size) in SIZES {
            let bytes = body(filler, size);
            let request = match ChatRequest::parse(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e:?}");
                    std::process::exit(1)
                }
            };
            let headers = vec![None; config.signal_headers.len()];
            let mut decision = String::new();
            let route = time(budget, || {
                let route = router.route(black_box(&request), &headers);
                if let Some(route) = route {
                    decision = router.decision_name(&route).to_string();
                }
            });
            // The parse a routed request pays: the body checked, and its `messages` tree,
            // which the router reads (built on first use, so the timed routes above reuse it).
            let parse = time(budget, || {
                let request = ChatRequest::parse(black_box(&bytes)).ok();
                black_box(request.as_ref().and_then(|r| r.field("messages")).is_some());
            });
            let micros = route.as_secs_f64() * 1e6;
            let parse_micros = parse.as_secs_f64() * 1e6;
            let mbps = bytes.len() as f64 / route.as_secs_f64() / 1e6;
            let ratio = micros / parse_micros;
            println!(
            "| {kind} | {label} | {micros:.1} | {mbps:.0} | {parse_micros:.1} | {ratio:.2} | {decision} |"
        );
            rows.push(
                json!({"text": kind, "body": label, "bytes": bytes.len(), "route_us": micros,
                         "parse_us": parse_micros, "mb_per_s": mbps, "route_over_parse": ratio,
                         "decision": decision}),
            );
        }
    }
    let out = json!({"benchmark": "signals", "router": router.name, "rows": rows});
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/bench-signals.json");
    if let Err(e) = std::fs::write(&path, format!("{out:#}\n")) {
        eprintln!("could not write {}: {e}", path.display());
    } else {
        println!("\nwrote {}", path.display());
    }
}
