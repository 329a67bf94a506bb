//! The `looper-sim` binary: startup line, exit codes, the example config.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use looper_sim::questions::Calibration;
use looper_sim::Config;

const BIN: &str = env!("CARGO_BIN_EXE_looper-sim");

fn example_config_path() -> String {
    format!("{}/sim.json", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn binary_serves_on_an_ephemeral_port() {
    let mut child = Command::new(BIN)
        .args([
            "--config",
            &example_config_path(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        let addr: SocketAddr = line
            .trim_end()
            .strip_prefix("looper-sim listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(get(addr, "/healthz").text(), "ok");
        let v = post(addr, &chat("sim-large", "hello")).json();
        assert!(content(&v, 0).starts_with("[sim-large] "));
        assert_eq!(v["usage"]["completion_tokens"], 21);
    });
    child.kill().unwrap();
    child.wait().unwrap();
    result.unwrap();
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn bad_cli_and_config_exit_2() {
    let dir = std::env::temp_dir().join(format!("looper-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"models":{"sim-small":{"failure_rates":{"foo":0.1}}}}"#,
    )
    .unwrap();
    let not_json = dir.join("not.json");
    std::fs::write(&not_json, "{ nope").unwrap();
    let bad = bad.to_str().unwrap();
    let not_json = not_json.to_str().unwrap();

    let (code, err) = run(&["--config", bad, "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("models.sim-small.failure_rates.foo"), "{err}");
    let (code, err) = run(&["--config", not_json]);
    assert_eq!(code, 2);
    assert!(err.contains("JSON"), "{err}");
    assert_eq!(run(&[]).0, 2);
    assert_eq!(run(&["--config"]).0, 2);
    assert_eq!(run(&["--config", "/nonexistent/sim.json"]).0, 2);
    assert_eq!(run(&["--config", &example_config_path(), "--bogus"]).0, 2);
    assert_eq!(
        run(&[
            "--config",
            &example_config_path(),
            "--listen",
            "not-an-addr"
        ])
        .0,
        2
    );
    assert_eq!(run(&["--help"]).0, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_config_matches_the_documented_models() {
    let text = std::fs::read_to_string(example_config_path()).unwrap();
    let c = Config::from_json_str(&text).unwrap();
    assert_eq!(c.seed, 42);
    let names: Vec<&str> = c.models.keys().map(String::as_str).collect();
    assert_eq!(names, ["sim-large", "sim-medium", "sim-small"]);
    let (s, m, l) = (
        &c.models["sim-small"],
        &c.models["sim-medium"],
        &c.models["sim-large"],
    );
    assert_eq!(
        (s.latency_ms, s.answer_words, s.mean_logprob, s.logprobs),
        (5, 12, -0.15, true)
    );
    assert_eq!(
        (m.latency_ms, m.answer_words, m.mean_logprob, m.logprobs),
        (10, 16, -0.4, true)
    );
    assert_eq!((l.latency_ms, l.answer_words, l.logprobs), (20, 20, false));
    assert!(c.models.values().all(|m| m.failure_rates.is_empty()));
    let acc: Vec<f64> = [s, m, l].iter().map(|m| m.quality.accuracy).collect();
    assert_eq!(acc, [0.55, 0.7, 0.85]);
    assert!([s, m, l]
        .iter()
        .all(|m| m.quality.calibration == Calibration::Calibrated));
}
