//! Item banks (`--items`, `[item:TAG]`), the item-response error model and
//! the per-item usage log, over real HTTP. Statistical checks use fixed
//! seeds and wide (about 4–5 sigma) bounds, so they are deterministic and
//! would only fail on a real behaviour change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use looper_sim::dist::{normal, sigmoid};
use looper_sim::rng::SplitMix64;
use looper_sim::{Config, ItemBank, Server};
use serde_json::{json, Map, Value};

const BIN: &str = env!("CARGO_BIN_EXE_looper-sim");

fn start_with(config: &str, bank: &Value) -> SocketAddr {
    let mut c = Config::from_json_str(config).unwrap();
    c.items = Arc::new(ItemBank::from_value(bank).unwrap());
    Server::bind(c, "127.0.0.1:0").unwrap().spawn().unwrap()
}

fn ask(c: &mut Client, req: &Value) -> Value {
    let r = c.post_json("/v1/chat/completions", req);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn answer_of(content: &str) -> &str {
    content.rsplit("ANSWER: ").next().unwrap()
}

/// The probability of the (one-token) answer of choice `i`.
fn answer_p(v: &Value, i: usize) -> f64 {
    v["choices"][i]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["logprob"]
        .as_f64()
        .unwrap()
        .exp()
}

fn with_logprobs(mut req: Value) -> Value {
    req["logprobs"] = json!(true);
    req
}

fn fence(label: &str, nonce: &str, text: &str) -> String {
    format!("<{label}-{nonce}>\n{text}\n</{label}-{nonce}>")
}

/// A bank of `n` multiple-choice items `t0`..: key `C`, difficulty from
/// `difficulty(i)`, and `extra` fields merged into each item.
fn mc_bank(n: usize, difficulty: impl Fn(usize) -> f64, extra: &Value) -> Value {
    let mut items = Map::new();
    for i in 0..n {
        let mut item = json!({"kind": "mc", "options": "ABCD", "key": "C",
                              "difficulty": difficulty(i)});
        for (k, v) in extra.as_object().unwrap() {
            item[k] = v.clone();
        }
        items.insert(format!("t{i}"), item);
    }
    json!({ "items": items })
}

/// Seeded normal difficulties with standard deviation `sd`.
fn normal_difficulties(n: usize, seed: u64, sd: f64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| sd * normal(&mut rng)).collect()
}

fn question(tag: &str) -> String {
    format!(
        "Question {tag}: choose the correct option. A) one B) two C) three D) four [item:{tag}]"
    )
}

/// Whether `model` answers item `t{i}` correctly, for `n` items.
fn correctness(c: &mut Client, model: &str, n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| {
            answer_of(&content(
                &ask(c, &chat(model, &question(&format!("t{i}")))),
                0,
            )) == "C"
        })
        .collect()
}

/// The phi coefficient of two binary series.
fn phi(x: &[bool], y: &[bool]) -> f64 {
    let (mut n11, mut n10, mut n01, mut n00) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (a, b) in x.iter().zip(y) {
        match (a, b) {
            (true, true) => n11 += 1.0,
            (true, false) => n10 += 1.0,
            (false, true) => n01 += 1.0,
            (false, false) => n00 += 1.0,
        }
    }
    let den = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00);
    (n11 * n00 - n10 * n01) / den.sqrt()
}

const SMALL_BANK: &str = r#"{"items": {
  "q1": {"kind": "mc", "options": "ABCD", "key": "C", "difficulty": 0.4,
         "distractor": "B", "attraction": 0.5},
  "q2": {"kind": "exact", "key": "42", "difficulty": -1.0},
  "q3": {"kind": "mc", "options": "ABCDE", "key": "E"}
}}"#;

const SMALL_CONFIG: &str = r#"{
  "seed": 11,
  "models": {
    "irt":     {"ability": 0.5, "answer_words": 3},
    "acc":     {"accuracy": 0.7, "answer_words": 3},
    "perfect": {"verifier_sensitivity": 1.0, "verifier_specificity": 1.0,
                "judge_skill": 1.0, "synth_skill": 1.0}
  }
}"#;

fn small() -> SocketAddr {
    start_with(SMALL_CONFIG, &serde_json::from_str(SMALL_BANK).unwrap())
}

#[test]
fn bank_files_load_and_bad_banks_exit_2() {
    let dir = std::env::temp_dir().join(format!("looper-sim-items-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sim.json");
    std::fs::write(&config, SMALL_CONFIG).unwrap();
    let good = dir.join("good.json");
    std::fs::write(&good, SMALL_BANK).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"items": {"q1": {"kind": "mc", "key": "Z"}}}"#).unwrap();
    let with_bank = dir.join("with-bank.json");
    std::fs::write(
        &with_bank,
        SMALL_CONFIG.replacen(
            "\"seed\": 11,",
            "\"seed\": 11, \"item_bank\": \"bad.json\",",
            1,
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (code, err) = run(&["--config", &path(&config), "--items", &path(&bad)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("items.q1.key") && err.contains("bad.json"),
        "{err}"
    );
    // The config's `item_bank` is relative to the config file.
    let (code, err) = run(&["--config", &path(&with_bank)]);
    assert_eq!(code, 2);
    assert!(err.contains("items.q1.key"), "{err}");
    let (code, err) = run(&[
        "--config",
        &path(&config),
        "--items",
        "/nonexistent/bank.json",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read item bank"), "{err}");
    assert_eq!(run(&["--config", &path(&config), "--items"]).0, 2);

    // `--items` beats the config's `item_bank`, and the bank is served.
    let mut child = Command::new(BIN)
        .args([
            "--config",
            &path(&with_bank),
            "--items",
            &path(&good),
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
        let v = post(
            addr,
            &chat(
                "acc",
                "What is six times seven? [item:q2] [sim:correct=yes]",
            ),
        );
        assert_eq!(answer_of(&content(&v.json(), 0)), "42");
    });
    child.kill().unwrap();
    child.wait().unwrap();
    result.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // Validation names the path (more cases in the unit tests).
    let e = ItemBank::from_json_str(
        r#"{"items": {"q": {"kind": "exact", "key": "7", "distractor": "7.0"}}}"#,
    )
    .unwrap_err();
    assert_eq!(e.0.path, "items.q.distractor");
    let e =
        ItemBank::from_json_str(r#"{"items": {"a/b": {"kind": "mc", "key": "A"}}}"#).unwrap_err();
    assert_eq!(e.0.path, "items.a/b");
}

#[test]
fn a_tag_gives_the_key_and_unknown_tags_are_rejected() {
    let addr = small();
    let mut c = Client::connect(addr);
    let right = ask(&mut c, &chat("irt", "Pick. [item:q1] [sim:correct=yes]"));
    assert_eq!(answer_of(&content(&right, 0)), "C");
    let wrong = ask(&mut c, &chat("irt", "Pick. [item:q1] [sim:correct=no]"));
    assert!(["A", "B", "D"].contains(&answer_of(&content(&wrong, 0))));
    let exact = ask(&mut c, &chat("acc", "Compute. [item:q2] [sim:correct=no]"));
    assert!(["43", "44", "45"].contains(&answer_of(&content(&exact, 0))));
    // Five options, the bank's, even for a model without ability.
    let letters: HashSet<String> = (0..60)
        .map(|s| {
            let mut req = chat("acc", "Pick. [item:q3] [sim:correct=no]");
            req["seed"] = json!(s);
            answer_of(&content(&ask(&mut c, &req), 0)).to_string()
        })
        .collect();
    assert_eq!(
        letters,
        ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect()
    );
    // The identity is the tag: the wording around it does not matter.
    for model in ["irt", "acc"] {
        let a = content(&ask(&mut c, &chat(model, "Pick. [item:q1]")), 0);
        let req = json!({"model": model, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Another wording entirely [item:q1]"}]});
        assert_eq!(content(&ask(&mut c, &req), 0), a);
    }
    assert_eq!(stats(addr)["totals"]["rejected"], 0);
    for bad in [
        "Pick. [item:nope]",
        "Pick. [item:q1 ]",
        "Pick. [item:q1",
        "Pick. [item:q1] [sim:mc=A]",
        "Pick. [item:q1] [sim:item=x]",
    ] {
        let r = c.post_json("/v1/chat/completions", &chat("irt", bad));
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"]["code"], "invalid_directive", "{bad}");
    }
    assert_eq!(stats(addr)["totals"]["rejected"], 5);
    // Directive keys still work without a tag.
    let v = ask(&mut c, &chat("acc", "Q [sim:mc=B] [sim:correct=yes]"));
    assert_eq!(answer_of(&content(&v, 0)), "B");
}

#[test]
fn tags_are_recognised_inside_quoted_prompts() {
    let addr = small();
    let mut c = Client::connect(addr);
    let nonce = "00ff00ff00ff00ff";
    let q = fence("question", nonce, "Question q1: choose. [item:q1]");
    let verify = |answer: &str| {
        let user = format!(
            "Check whether a proposed answer to a question is correct.\n\nQuestion:\n{q}\n\n\
             Proposed answer:\n{}\n\nFinish with `VERDICT: CORRECT` or `VERDICT: INCORRECT`, \
             then `CONFIDENCE: N`.",
            fence("answer", nonce, answer)
        );
        chat("perfect", &user)
    };
    let yes = content(&ask(&mut c, &verify("[m] thinking ANSWER: C")), 0);
    assert!(yes.contains("VERDICT: CORRECT"), "{yes}");
    let no = content(&ask(&mut c, &verify("[m] thinking ANSWER: B")), 0);
    assert!(no.contains("VERDICT: INCORRECT"), "{no}");
    let s = &stats(addr)["models"]["perfect"];
    assert_eq!(s["verifications"], 2);
    assert_eq!(s["verifications_invalid"], 0);

    // Synthesis: with skill 1 the key among the references wins over the plurality.
    let answers: Vec<String> = ["ANSWER: A", "ANSWER: C", "ANSWER: A"]
        .iter()
        .enumerate()
        .map(|(i, a)| format!("Answer {}:\n{}", i + 1, fence("answer", nonce, a)))
        .collect();
    let synth = format!(
        "Write the single best answer.\n\nQuestion:\n{q}\n\nAnswers:\n{}\n\nFinish with `ANSWER: X`.",
        answers.join("\n\n")
    );
    let v = ask(&mut c, &chat("perfect", &synth));
    assert_eq!(answer_of(&content(&v, 0)), "C");
    assert_eq!(stats(addr)["models"]["perfect"]["answers_correct"], 1);

    // Ratings judge: picks the response that gives the key.
    let judge = format!(
        "Question:\n{q}\n\nResponse 1:\n{}\n\nResponse 2:\n{}\n\nFinish with a line `BEST: N`.",
        fence("response", nonce, "ANSWER: D"),
        fence("response", nonce, "ANSWER: C")
    );
    for s in 0..10 {
        let mut req = chat("perfect", &judge);
        req["seed"] = json!(s);
        assert!(content(&ask(&mut c, &req), 0).ends_with("BEST: 2"));
    }
}

const IRT_CONFIG: &str = r#"{
  "seed": 5,
  "correlation": 0.5,
  "models": {
    "irt":  {"ability": 0.5, "discrimination": 1.2, "guess_floor": 0.25, "answer_words": 1},
    "flat": {"accuracy": 0.9, "answer_words": 1}
  }
}"#;

#[test]
fn accuracy_follows_the_item_response_model() {
    let n = 2000;
    let d = normal_difficulties(n, 1, 1.5);
    let addr = start_with(IRT_CONFIG, &mc_bank(n, |i| d[i], &json!({})));
    let mut c = Client::connect(addr);
    let ps: Vec<f64> = d
        .iter()
        .map(|d| 0.25 + 0.75 * sigmoid(1.2 * (0.5 - d)))
        .collect();
    let expected = ps.iter().sum::<f64>() / n as f64;
    let sd = ps.iter().map(|p| p * (1.0 - p)).sum::<f64>().sqrt() / n as f64;
    let right = correctness(&mut c, "irt", n);
    let k = right.iter().filter(|r| **r).count();
    let acc = k as f64 / n as f64;
    assert!(
        (acc - expected).abs() < 4.5 * sd,
        "accuracy {acc}, expected {expected} ± {sd}"
    );
    // Harder items are missed more often.
    let (easy, hard): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| d[*i] < 0.0);
    let rate = |idx: &[usize]| idx.iter().filter(|i| right[**i]).count() as f64 / idx.len() as f64;
    assert!(
        rate(&easy) > rate(&hard) + 0.15,
        "{} {}",
        rate(&easy),
        rate(&hard)
    );
    let s = &stats(addr)["models"]["irt"];
    assert_eq!(s["answers_correct"], k);
    assert_eq!(s["answers_wrong"], n - k);
    // Without an ability, the model's accuracy, whatever the difficulty.
    let flat = correctness(&mut c, "flat", n);
    let acc = flat.iter().filter(|r| **r).count() as f64 / n as f64;
    assert!((acc - 0.9).abs() < 0.03, "flat accuracy {acc}");
}

/// A bank of `n` items, even ones of topic `code`, odd ones without a topic.
fn topic_bank(n: usize, d: &[f64]) -> Value {
    let mut bank = mc_bank(n, |i| d[i], &json!({}));
    for i in (0..n).step_by(2) {
        bank["items"][format!("t{i}")]["topic"] = json!("code");
    }
    bank
}

#[test]
fn topic_skills_shift_the_ability_on_their_topic_only() {
    let n = 1000;
    let d = normal_difficulties(n, 4, 1.0);
    let bank = topic_bank(n, &d);
    let skilled = start_with(
        r#"{"seed": 5, "correlation": 0.3, "models": {
            "m": {"ability": 0.0, "discrimination": 1.2, "answer_words": 1,
                  "topic_skills": {"code": 2.0, "other": -3.0}}}}"#,
        &bank,
    );
    let plain = start_with(
        r#"{"seed": 5, "correlation": 0.3, "models": {
            "m": {"ability": 0.0, "discrimination": 1.2, "answer_words": 1}}}"#,
        &bank,
    );
    let shifted = start_with(
        r#"{"seed": 5, "correlation": 0.3, "models": {
            "m": {"ability": 2.0, "discrimination": 1.2, "answer_words": 1}}}"#,
        &bank,
    );
    let skilled = correctness(&mut Client::connect(skilled), "m", n);
    let plain = correctness(&mut Client::connect(plain), "m", n);
    let shifted = correctness(&mut Client::connect(shifted), "m", n);
    // On `code` items the model answers exactly as with ability 0 + 2; on the
    // others exactly as without topic skills.
    for i in 0..n {
        let want = if i % 2 == 0 { shifted[i] } else { plain[i] };
        assert_eq!(skilled[i], want, "item t{i}");
    }
    let rate = |r: &[bool], parity: usize| {
        (parity..n).step_by(2).filter(|i| r[*i]).count() as f64 / (n / 2) as f64
    };
    let expected = |theta: f64| {
        (0..n)
            .step_by(2)
            .map(|i| sigmoid(1.2 * (theta - d[i])))
            .sum::<f64>()
            / (n / 2) as f64
    };
    assert!((rate(&skilled, 0) - expected(2.0)).abs() < 0.07);
    assert!(rate(&skilled, 0) > rate(&plain, 0) + 0.2);
}

fn pair_config(correlation: f64) -> String {
    format!(
        r#"{{"seed": 9, "correlation": {correlation}, "models": {{
            "m1": {{"ability": 0.0, "answer_words": 1}},
            "m2": {{"ability": 0.0, "answer_words": 1}}}}}}"#
    )
}

#[test]
fn correlation_couples_the_errors_of_models() {
    let n = 1000;
    let bank = mc_bank(n, |_| 0.0, &json!({}));
    let mut phis = Vec::new();
    for rho in [0.0, 0.8] {
        let addr = start_with(&pair_config(rho), &bank);
        let mut c = Client::connect(addr);
        let a = correctness(&mut c, "m1", n);
        let b = correctness(&mut c, "m2", n);
        for x in [&a, &b] {
            let acc = x.iter().filter(|r| **r).count() as f64 / n as f64;
            assert!((acc - 0.5).abs() < 0.075, "rho {rho}: accuracy {acc}");
        }
        phis.push(phi(&a, &b));
    }
    // About 0.03 and 0.32 (the standard error is about 0.03): the
    // models' own confidences (κ = 4) dilute the shared normal.
    assert!(phis[0].abs() < 0.1, "rho 0: phi {}", phis[0]);
    assert!(phis[1] > 0.2, "rho 0.8: phi {}", phis[1]);
}

const CALIBRATION_CONFIG: &str = r#"{
  "seed": 3,
  "models": {
    "cal":   {"ability": 0.0, "calibration": "calibrated", "answer_words": 1},
    "over":  {"ability": 0.0, "calibration": "overconfident", "answer_words": 1},
    "under": {"ability": 0.0, "calibration": "underconfident", "answer_words": 1},
    "rand":  {"ability": 0.0, "calibration": "random", "answer_words": 1},
    "nolp":  {"ability": 0.0, "logprobs": false, "answer_words": 1}
  }
}"#;

/// `(correct, reported p)` of `model` on items `t0`..`t{n-1}`.
fn confidences(c: &mut Client, model: &str, n: usize) -> Vec<(bool, f64)> {
    (0..n)
        .map(|i| {
            let v = ask(c, &with_logprobs(chat(model, &question(&format!("t{i}")))));
            (answer_of(&content(&v, 0)) == "C", answer_p(&v, 0))
        })
        .collect()
}

#[test]
fn calibrated_confidence_is_calibrated_and_overconfidence_shows() {
    let n = 2000;
    let d = normal_difficulties(n, 2, 1.5);
    let addr = start_with(CALIBRATION_CONFIG, &mc_bank(n, |i| d[i], &json!({})));
    let mut c = Client::connect(addr);
    let cal = confidences(&mut c, "cal", n);
    let mut bins: BTreeMap<usize, Vec<(bool, f64)>> = BTreeMap::new();
    for (ok, p) in &cal {
        assert!((0.001..=0.999).contains(p), "{p}");
        bins.entry(((p * 5.0) as usize).min(4))
            .or_default()
            .push((*ok, *p));
    }
    let mut checked = 0;
    for (bin, v) in &bins {
        if v.len() < 50 {
            continue;
        }
        checked += 1;
        let m = v.len() as f64;
        let acc = v.iter().filter(|(ok, _)| *ok).count() as f64 / m;
        let mean_p = v.iter().map(|(_, p)| p).sum::<f64>() / m;
        let sd = (mean_p * (1.0 - mean_p) / m).sqrt();
        assert!(
            (acc - mean_p).abs() < 4.5 * sd + 0.02,
            "bin {bin}: accuracy {acc} vs mean p {mean_p} over {m}"
        );
    }
    assert!(checked >= 4, "{bins:?}");
    let summary = |v: &[(bool, f64)]| {
        let m = v.len() as f64;
        (
            v.iter().filter(|(ok, _)| *ok).count() as f64 / m,
            v.iter().map(|(_, p)| p).sum::<f64>() / m,
        )
    };
    let (acc, mean_p) = summary(&cal);
    assert!((acc - mean_p).abs() < 0.04, "calibrated: {acc} vs {mean_p}");
    let (acc, mean_p) = summary(&confidences(&mut c, "over", n));
    assert!(
        mean_p > acc + 0.08,
        "overconfident: accuracy {acc}, reported {mean_p}"
    );
    let (acc, mean_p) = summary(&confidences(&mut c, "under", n));
    assert!(
        mean_p < acc - 0.05,
        "underconfident: accuracy {acc}, reported {mean_p}"
    );
    let random = confidences(&mut c, "rand", 300);
    assert!(random.iter().all(|(_, p)| (0.2..0.99).contains(p)));
    // Right and wrong answers alike: no signal.
    let (right, wrong): (Vec<_>, Vec<_>) = random.iter().partition(|(ok, _)| *ok);
    let mean = |v: &[&(bool, f64)]| v.iter().map(|(_, p)| p).sum::<f64>() / v.len() as f64;
    assert!((mean(&right) - mean(&wrong)).abs() < 0.08);
    // No logprobs for a model without them.
    let v = ask(&mut c, &with_logprobs(chat("nolp", &question("t0"))));
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
}

#[test]
fn attraction_steers_wrong_answers_to_the_distractor() {
    let n = 300;
    let mut items = Map::new();
    for i in 0..n {
        let (attraction, kind) = match i % 3 {
            0 => (1.0, "mc"),
            1 => (0.0, "mc"),
            _ => (1.0, "exact"),
        };
        let item = if kind == "mc" {
            json!({"kind": "mc", "options": "ABCD", "key": "C", "difficulty": 1.0,
                   "distractor": "A", "attraction": attraction})
        } else {
            json!({"kind": "exact", "key": "120", "difficulty": 1.0,
                   "distractor": "210", "attraction": 1.0})
        };
        items.insert(format!("t{i}"), item);
    }
    let config = r#"{"seed": 4, "models": {
        "weak": {"ability": -1.0, "answer_words": 1},
        "other": {"ability": -1.0, "answer_words": 1}}}"#;
    let addr = start_with(config, &json!({ "items": items }));
    let mut c = Client::connect(addr);
    let (mut wrong_attracted, mut wrong_neutral, mut neutral_distractor) = (0, 0, 0);
    for model in ["weak", "other"] {
        for i in 0..n {
            let v = ask(&mut c, &chat(model, &question(&format!("t{i}"))));
            let a = answer_of(&content(&v, 0)).to_string();
            match i % 3 {
                0 if a != "C" => {
                    wrong_attracted += 1;
                    assert_eq!(a, "A", "item t{i}");
                }
                1 if a != "C" => {
                    wrong_neutral += 1;
                    neutral_distractor += usize::from(a == "A");
                }
                2 if a != "120" => {
                    wrong_attracted += 1;
                    assert_eq!(a, "210", "item t{i}");
                }
                _ => {}
            }
        }
    }
    assert!(wrong_attracted > 200, "{wrong_attracted}");
    // Attraction 0: the wrong answers are spread over the three wrong options.
    let share = neutral_distractor as f64 / wrong_neutral as f64;
    assert!(
        wrong_neutral > 80 && (0.2..0.47).contains(&share),
        "{share} of {wrong_neutral}"
    );
}

#[test]
fn deterministic_models_ignore_the_seed_and_the_choice_index() {
    let n = 30;
    let config = r#"{"seed": 8, "models": {
        "det":  {"ability": 0.0, "deterministic": true, "answer_words": 3},
        "free": {"ability": 0.0, "answer_words": 3}}}"#;
    let addr = start_with(config, &mc_bank(n, |_| 0.0, &json!({})));
    let mut c = Client::connect(addr);
    let mut varied = 0;
    for i in 0..n {
        for model in ["det", "free"] {
            let mut contents = HashSet::new();
            let mut answers = HashSet::new();
            for s in 0..5 {
                let mut req = chat(model, &question(&format!("t{i}")));
                req["seed"] = json!(s);
                req["n"] = json!(3);
                let v = ask(&mut c, &req);
                for k in 0..3 {
                    let text = content(&v, k);
                    answers.insert(answer_of(&text).to_string());
                    contents.insert(text);
                }
            }
            if model == "det" {
                assert_eq!(contents.len(), 1, "t{i}: {contents:?}");
            } else {
                varied += usize::from(answers.len() > 1);
            }
        }
    }
    assert!(varied > n / 2, "{varied} of {n} items vary across samples");
}

#[test]
fn usage_log_sums_the_usage_reported_per_item() {
    let addr = small();
    let mut c = Client::connect(addr);
    let mut expected: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut add = |key: &str, usage: Option<&Value>| {
        let e = expected.entry(key.to_string()).or_default();
        e.0 += 1;
        if let Some(u) = usage {
            e.1 += u["prompt_tokens"].as_u64().unwrap();
            e.2 += u["completion_tokens"].as_u64().unwrap();
        }
    };
    // Direct questions, n > 1, forced usage, untagged requests.
    for (key, text, n) in [
        ("q1", "Pick. [item:q1]", 1),
        ("q1", "Pick again. [item:q1]", 3),
        ("q2", "Compute. [item:q2] [sim:usage=5,6]", 1),
        ("untagged", "Just chatting.", 2),
        ("untagged", "Q [sim:mc=A]", 1),
    ] {
        let mut req = chat("irt", text);
        req["n"] = json!(n);
        let v = ask(&mut c, &req);
        add(key, Some(&v["usage"]));
    }
    // A quoted question in a verifier prompt counts for its item.
    let nonce = "abcdefabcdefabcd";
    let verify = format!(
        "Question:\n{}\n\nProposed answer:\n{}\n\nVERDICT only.",
        fence("question", nonce, "Choose. [item:q3]"),
        fence("answer", nonce, "ANSWER: E")
    );
    let v = ask(&mut c, &chat("perfect", &verify));
    add("q3", Some(&v["usage"]));
    // Streams: the usage chunk counts; without it, nothing but the request.
    let mut req = chat("acc", "Pick. [item:q1]");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let sse = parse_sse(&c.post_json("/v1/chat/completions", &req).body);
    add("q1", sse.events.last().unwrap().get("usage"));
    req["stream_options"] = json!({"include_usage": false});
    assert_eq!(c.post_json("/v1/chat/completions", &req).status, 200);
    add("q1", None);
    // Faults: a 500 reports no usage; `no_usage` neither.
    for fault in ["500", "no_usage"] {
        let r = c.post_json(
            "/v1/chat/completions",
            &chat("acc", &format!("Pick. [item:q2] [sim:fault={fault}]")),
        );
        assert!(r.status == 500 || r.status == 200);
        add("q2", None);
    }
    // Rejected requests are not logged.
    assert_eq!(
        c.post_json("/v1/chat/completions", &chat("acc", "[item:zzz]"))
            .status,
        400
    );
    assert_eq!(
        c.post_json("/v1/chat/completions", &chat("nobody", "[item:q1]"))
            .status,
        404
    );

    let usage = get(addr, "/sim/usage").json();
    let entry = |u: &Value| {
        (
            u["requests"].as_u64().unwrap(),
            u["prompt_tokens"].as_u64().unwrap(),
            u["completion_tokens"].as_u64().unwrap(),
        )
    };
    let items = usage["items"].as_object().unwrap();
    assert_eq!(items.len(), 3, "{usage}");
    for (key, want) in &expected {
        let got = if key == "untagged" {
            entry(&usage["untagged"])
        } else {
            entry(&items[key])
        };
        assert_eq!(got, *want, "{key}");
    }
    // The log partitions /sim/stats' totals.
    let totals = &stats(addr)["totals"];
    let sum = expected
        .values()
        .fold((0, 0, 0), |a, e| (a.0 + e.0, a.1 + e.1, a.2 + e.2));
    assert_eq!(sum, entry(totals));
    // Reset clears it.
    Client::connect(addr).request("POST", "/sim/reset", None);
    let usage = get(addr, "/sim/usage").json();
    assert_eq!(
        usage,
        json!({"items": {}, "untagged": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}})
    );
}
