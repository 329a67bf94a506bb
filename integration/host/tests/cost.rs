//! The plugin's own work per request, counted in wasm instructions (wasmtime fuel), which,
//! unlike time, does not depend on the machine or its load. In Envoy each instruction costs
//! about a nanosecond on the benchmark machine, on the request's path (`make bench`).

use looper_host::{Plugin, Request, Vm, VmOptions};
use serde_json::json;

const CONFIG: &str = r#"{"models": {"a": {"cluster": "simulator", "model": "sim-a"}},
    "recipes": {"single": {"algorithm": "single", "models": ["a"]}},
    "virtual_models": {"looper/single": {"recipe": "single"}}}"#;

/// A chat request of about `filler_words × 6` bytes whose `messages` come before `model`, as
/// the official clients send them, so the plugin must scan the whole text for the name.
fn body(model: &str, filler_words: usize) -> Vec<u8> {
    let content = format!(
        "{}Which option is right? A) one B) two",
        "lorem ".repeat(filler_words)
    );
    serde_json::to_vec(&json!({"messages": [{"role": "user", "content": content}], "model": model}))
        .unwrap()
}

fn configured_vm() -> Vm {
    let mut vm = Vm::new(
        Plugin::shared(),
        VmOptions::default().with_cluster("simulator"),
    )
    .unwrap();
    assert!(vm.configure(CONFIG));
    vm
}

/// Fuel the plugin spends on a request for a model it does not serve, up to the moment it
/// lets the request go.
fn pass_through_fuel(vm: &mut Vm, filler_words: usize) -> (u64, usize) {
    let body = body("not-ours", filler_words);
    let size = body.len();
    let before = vm.total_fuel_used();
    let ctx = vm.send_request(Request::post("/v1/chat/completions", body));
    let used = vm.total_fuel_used() - before;
    assert!(vm.forwarded(ctx).is_some(), "the request passes through");
    vm.finish(ctx).unwrap();
    (used, size)
}

#[test]
fn a_pass_through_costs_a_few_instructions_a_byte() {
    let mut vm = configured_vm();
    pass_through_fuel(&mut vm, 10); // the first request sets up the VM's allocator
    let (small, small_size) = pass_through_fuel(&mut vm, 160);
    let (large, large_size) = pass_through_fuel(&mut vm, 16_000);
    let per_byte = (large - small) as f64 / (large_size - small_size) as f64;
    println!("pass-through: {small} instructions for {small_size} B, {per_byte:.2} a byte more");
    // The scan for `model` skips string text 16 bytes a step (SIMD): about 2 instructions a
    // byte. A byte-at-a-time loop here cost 20, on every request the plugin does not serve.
    assert!(per_byte < 5.0, "{per_byte:.2} instructions a byte");
    assert!(small < 60_000, "{small} instructions for a 1 KB request");
}

/// Fuel for one `single` request up to its call, and from the call's answer to the reply;
/// and the request's size.
fn single_fuel(vm: &mut Vm, filler_words: usize) -> (u64, u64, usize) {
    let body = body("looper/single", filler_words);
    let size = body.len();
    let before = vm.total_fuel_used();
    let ctx = vm.send_request(Request::post("/v1/chat/completions", body));
    let request = vm.total_fuel_used() - before;
    let call = vm.pending_calls_for(ctx).pop().expect("one call");
    let answer = json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": "sim-a",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "B) two"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 3, "total_tokens": 303}});
    let before = vm.total_fuel_used();
    vm.respond_json(call.token, 200, &answer).unwrap();
    let response = vm.total_fuel_used() - before;
    assert_eq!(vm.reply(ctx).expect("a reply").status, 200);
    vm.finish(ctx).unwrap();
    (request, response, size)
}

#[test]
fn a_single_request_reads_its_body_a_bounded_number_of_times() {
    let mut vm = configured_vm();
    single_fuel(&mut vm, 10);
    let (small, answer, small_size) = single_fuel(&mut vm, 160);
    let (large, _, large_size) = single_fuel(&mut vm, 1_600);
    let per_byte = (large - small) as f64 / (large_size - small_size) as f64;
    println!(
        "single: {small} instructions to the call and {answer} for the answer at {small_size} B; \
         {per_byte:.1} a byte more"
    );
    // Scanned once for `model`, skimmed for the text of `messages` and checked without
    // building them; the text goes into the sub-call as the client wrote it: about 18
    // instructions a byte. Parsing `messages` into a tree as well cost 21; serialising that
    // tree again instead of the text, 34; with the scan a byte at a time it was 53.
    assert!(per_byte < 20.0, "{per_byte:.1} instructions a byte");
    // An answer of about 230 bytes: its `usage` is read straight into counts. Parsed into a
    // tree first, as before, the same answer cost 51,232.
    assert!(answer < 50_000, "{answer} instructions for the answer");
}

/// Prose with a keyword every few sentences (as `integration/bench/signals.rs` sends).
const PROSE: &str = "The committee met on Tuesday to review the results of the spring survey. \
    Most members agreed that the response rate was lower than last year, and several asked \
    whether the questionnaire had been too long. The chair suggested a shorter form for the \
    autumn round. A short note on the quantum chemistry seminar closed the meeting. ";

/// Fuel for one request to the shipped auto router up to its first calls, and its size: the
/// prose in one user turn, or in the first of two.
fn routed_fuel(vm: &mut Vm, repeats: usize, turns: usize) -> (u64, usize) {
    let question = "Which orbital has the lowest energy? A) 2p B) 1s";
    let prose = PROSE.repeat(repeats);
    let messages = if turns == 1 {
        json!([{"role": "user", "content": format!("{prose}{question}")}])
    } else {
        json!([{"role": "user", "content": prose}, {"role": "assistant", "content": "Noted."},
               {"role": "user", "content": question}])
    };
    let body = serde_json::to_vec(&json!({"messages": messages, "model": "vllm-sr/auto"})).unwrap();
    let size = body.len();
    let before = vm.total_fuel_used();
    let ctx = vm.send_request(Request::post("/v1/chat/completions", body));
    let used = vm.total_fuel_used() - before;
    assert!(
        !vm.pending_calls_for(ctx).is_empty(),
        "the routed recipe calls a model"
    );
    vm.abort(ctx).unwrap();
    (used, size)
}

#[test]
fn a_routed_request_reads_its_text_a_bounded_number_of_times() {
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../filters/auto.json"
    ))
    .unwrap();
    let mut vm = Vm::new(
        Plugin::shared(),
        VmOptions::default().with_cluster("simulator"),
    )
    .unwrap();
    assert!(vm.configure(&config));
    for turns in [1, 2] {
        routed_fuel(&mut vm, 1, turns);
        let (small, small_size) = routed_fuel(&mut vm, 3, turns);
        let (large, large_size) = routed_fuel(&mut vm, 400, turns);
        let per_byte = (large - small) as f64 / (large_size - small_size) as f64;
        println!(
            "auto router, {turns} user turn(s): {small} instructions to the calls at \
             {small_size} B; {per_byte:.1} a byte more"
        );
        // Parsed, then searched by one automaton for every keyword list of its text and the
        // structure phrases, by two regular expressions, and scanned for labels and math
        // with `memchr`: about 130 instructions a byte (the routed recipe's sub-calls
        // among them). Before: 280, with the crate's overlapping iterator, a pass per
        // keyword scope and one for the phrases, and every byte tested by the scans.
        assert!(per_byte < 160.0, "{per_byte:.1} instructions a byte");
        assert!(small < 280_000, "{small} instructions for a 1 KB request");
    }
}
