//! Confidence: escalation by score, with every scoring method and failure.
//!
//! Part of the looper tests, compiled only under #[cfg(test)].

use super::*;

/// A choice answer whose answer token has probability `p` (with one alternative).
fn mc_body(letter: &str, p: f64) -> Vec<u8> {
    let content = format!("Reasoning. ANSWER: {letter}");
    let logprobs = json!({"content": [
        {"token": "Reasoning.", "logprob": -2.0, "top_logprobs": [
            {"token": "Reasoning.", "logprob": -2.0}, {"token": "Thus", "logprob": -2.5}]},
        {"token": " ANSWER:", "logprob": -0.01, "top_logprobs": [
            {"token": " ANSWER:", "logprob": -0.01}, {"token": " Answer:", "logprob": -5.0}]},
        {"token": format!(" {letter}"), "logprob": p.ln(), "top_logprobs": [
            {"token": format!(" {letter}"), "logprob": p.ln()},
            {"token": " Z", "logprob": (1.0 - p).max(1e-9).ln()}]}
    ]});
    completion_body(&content, logprobs, 20, 10)
}

/// Answers `letter` with answer-token probability `p` (logprobs only when asked), and rates
/// verification requests with `verdict`.
fn model(letter: &'static str, p: f64, verdict: &'static str) -> Script {
    std::rc::Rc::new(move |body: &Value| {
        if is_verification(body) {
            let n = body["n"].as_u64().unwrap_or(1) as usize;
            let choices: Vec<Value> = (0..n)
                .map(|i| json!({"index": i, "message": {"content": verdict}, "finish_reason": "stop"}))
                .collect();
            let body = json!({"choices": choices,
                "usage": {"prompt_tokens": 50, "completion_tokens": 5 * n as u64}});
            return Reply::After(
                3,
                CallResult::Response {
                    status: 200,
                    body: body.to_string().into_bytes(),
                },
            );
        }
        let mut bytes = mc_body(letter, p);
        if body.get("logprobs") != Some(&json!(true)) {
            let mut v: Value = serde_json::from_slice(&bytes).unwrap();
            v["choices"][0]["logprobs"] = Value::Null;
            bytes = v.to_string().into_bytes();
        }
        Reply::After(
            10,
            CallResult::Response {
                status: 200,
                body: bytes,
            },
        )
    })
}

fn recipe(method: &str, thresholds: &[f64]) -> Value {
    let candidates: Vec<Value> = thresholds
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"model": format!("m{i}"), "threshold": t}))
        .collect();
    json!({"algorithm": "confidence", "candidates": candidates, "method": method,
           "contract": {"type": "choice", "options": "ABCD"}})
}

fn chosen(answer: &Answer) -> String {
    content_of(answer).rsplit(' ').next().unwrap().to_string()
}

#[test]
fn stops_at_the_first_confident_candidate() {
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.8, 0.8]), &[1000, 1000]),
        vec![model("A", 0.95, ""), model("B", 0.99, "")],
    );
    let result = h.run().unwrap();
    assert_eq!(chosen(&result), "A");
    assert_eq!(h.models_called(), vec![0]);
    let confidence = h.looper.runtime().confidence().unwrap();
    assert!(
        (confidence - 0.95).abs() < 1e-9,
        "answer token only: {confidence}"
    );
    // The candidate was asked for logprobs and the contract's instruction.
    let body = &h.dispatched[0].3;
    assert_eq!(body["logprobs"], true);
    assert!(body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("ANSWER: X"));
    assert!(!h.events.contains(&LooperEvent::Escalation));
}

#[test]
fn escalates_when_not_confident() {
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.8, 0.8]), &[1000, 1000]),
        vec![model("A", 0.5, ""), model("B", 0.9, "")],
    );
    let result = h.run().unwrap();
    assert_eq!(chosen(&result), "B");
    assert_eq!(h.models_called(), vec![0, 1]);
    assert!(h.events.contains(&LooperEvent::Escalation));
    let trace = h.trace();
    assert_eq!(trace["steps"][0]["answer"], "A");
    assert!((trace["steps"][0]["score"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(trace["chosen_candidate"], 1);
}

#[test]
fn when_nothing_passes_the_most_confident_answer_wins_not_the_last() {
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.9, 0.9, 0.9]), &[1000, 1000, 1000]),
        vec![
            model("A", 0.3, ""),
            model("B", 0.8, ""),
            model("C", 0.6, ""),
        ],
    );
    let result = h.run().unwrap();
    assert_eq!(chosen(&result), "B");
    assert_eq!(h.models_called(), vec![0, 1, 2]);
    assert!((h.looper.runtime().confidence().unwrap() - 0.8).abs() < 1e-9);
    assert!(h.trace()["stop_reason"]
        .as_str()
        .unwrap()
        .contains("most confident"));
}

#[test]
fn a_zero_threshold_accepts_anything() {
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.0, 0.9]), &[1000, 1000]),
        vec![model("A", 0.01, ""), model("B", 0.99, "")],
    );
    assert_eq!(chosen(&h.run().unwrap()), "A");
}

#[test]
fn margin_and_hybrid_scores() {
    // p = 0.9 against 0.1: margin 0.8, hybrid 0.5·0.9 + 0.5·0.8 = 0.85.
    for (method, want) in [("margin", 0.8), ("hybrid", 0.85)] {
        let mut h = Harness::new(
            config(recipe(method, &[0.0]), &[1000]),
            vec![model("A", 0.9, "")],
        );
        h.run().unwrap();
        let got = h.looper.runtime().confidence().unwrap();
        assert!((got - want).abs() < 1e-6, "{method}: {got}");
        assert_eq!(h.dispatched[0].3["top_logprobs"], 2);
    }
}

#[test]
fn a_model_without_logprobs_gets_the_fallback_method() {
    let mut cfg_recipe = recipe("avg_logprob", &[0.8, 0.8]);
    cfg_recipe["fallback_method"] = json!("self_verify");
    let config = {
        let c = config(cfg_recipe, &[1000, 1000]);
        // m0 is configured without logprobs.
        let mut v: Value = json!({});
        let _ = &mut v;
        c
    };
    let mut models = (*config).clone();
    models.models[0].logprobs = false;
    let mut h = Harness::new(
        Rc::new(models),
        vec![
            model("A", 0.2, "VERDICT: CORRECT\nCONFIDENCE: 92"),
            model("B", 0.9, ""),
        ],
    );
    let result = h.run().unwrap();
    assert_eq!(chosen(&result), "A");
    assert!(
        h.dispatched[0].3.get("logprobs").is_none(),
        "not asked for logprobs"
    );
    assert!(is_verification(&h.dispatched[1].3));
    assert_eq!(
        h.dispatched[1].1,
        ModelId(0),
        "the candidate verifies itself"
    );
    assert!((h.looper.runtime().confidence().unwrap() - 0.92).abs() < 1e-9);
}

#[test]
fn logprobs_missing_from_the_response_also_fall_back() {
    let no_logprobs: Script = std::rc::Rc::new(|body: &Value| {
        if is_verification(body) {
            return Reply::After(1, ok("VERDICT: INCORRECT\nCONFIDENCE: 10"));
        }
        Reply::After(1, ok("thinking... ANSWER: C"))
    });
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.8, 0.8]), &[1000, 1000]),
        vec![no_logprobs, model("B", 0.95, "")],
    );
    let result = h.run().unwrap();
    assert_eq!(chosen(&result), "B");
    assert!(h.notes().contains("no usable logprobs"), "{}", h.notes());
}

#[test]
fn self_verify_uses_the_configured_verifier() {
    let mut r = recipe("self_verify", &[0.7, 0.7]);
    r["verifier"] = json!("m2");
    let mut h = Harness::new(
        config(r, &[1000, 1000, 1000]),
        vec![
            model("A", 0.9, "unused"),
            model("B", 0.9, "unused"),
            model("-", 0.9, "VERDICT: INCORRECT\nCONFIDENCE: 20"),
        ],
    );
    let result = h.run().unwrap();
    // Both rated 0.2: nothing passes; the first of equal scores is kept.
    assert_eq!(chosen(&result), "A");
    assert_eq!(h.models_called(), vec![0, 2, 1, 2]);
    let verify = &h.dispatched[1].3;
    assert!(verify.get("logprobs").is_none());
    let prompt = last_message(verify);
    assert!(prompt.contains("<question-n0nce>") && prompt.contains("<answer-n0nce>"));
    assert!(prompt.contains("ANSWER: A"), "the answer is quoted");
}

#[test]
fn automix_counts_correct_samples() {
    let mut r = recipe("automix", &[0.6]);
    r["samples"] = json!(5);
    r["sample_temperature"] = json!(0.9);
    let mut h = Harness::new(
        config(r, &[1000]),
        vec![model("A", 0.9, "VERDICT: CORRECT")],
    );
    h.run().unwrap();
    let verify = &h.dispatched[1].3;
    assert_eq!(verify["n"], 5);
    assert_eq!(verify["temperature"], 0.9);
    assert_eq!(h.looper.runtime().confidence(), Some(1.0));
    // Verification usage counts too.
    assert_eq!(h.looper.runtime().usage().prompt_tokens, 20 + 50);
}

#[test]
fn a_failed_verifier_counts_as_not_confident() {
    let broken_verifier: Script = std::rc::Rc::new(|body: &Value| {
        if is_verification(body) {
            return Reply::After(1, CallResult::Reset);
        }
        Reply::After(1, ok("ANSWER: A"))
    });
    let mut h = Harness::new(
        config(recipe("self_verify", &[0.5, 0.5]), &[1000, 1000]),
        vec![
            broken_verifier,
            model("B", 0.9, "gibberish without a verdict"),
        ],
    );
    let result = h.run().unwrap();
    // Both verifications failed (reset, then no verdict): both score 0, the first is kept.
    assert_eq!(chosen(&result), "A");
    assert!(h.notes().contains("no usable verdict"), "{}", h.notes());
    assert_eq!(h.looper.runtime().confidence(), Some(0.0));
}

#[test]
fn an_answer_outside_the_contract_scores_zero() {
    let rambler: Script = std::rc::Rc::new(|_| Reply::After(1, ok("I am not sure at all")));
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.5, 0.5]), &[1000, 1000]),
        vec![rambler, model("D", 0.9, "")],
    );
    assert_eq!(chosen(&h.run().unwrap()), "D");
    assert!(h
        .notes()
        .contains("did not answer in the `choice` contract"));
}

#[test]
fn failed_candidates_are_skipped() {
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.8, 0.8]), &[1000, 1000]),
        vec![status(500), model("B", 0.9, "")],
    );
    assert_eq!(chosen(&h.run().unwrap()), "B");
    assert!(h.events.contains(&LooperEvent::PolicySkip));
}

#[test]
fn every_candidate_failing_is_502() {
    let mut h = Harness::new(
        config(recipe("avg_logprob", &[0.8, 0.8]), &[1000, 1000]),
        vec![status(500), reset(2)],
    );
    assert_eq!(h.run().unwrap_err().status, 502);
}

#[test]
fn policy_fail_and_fallback_apply_to_candidates() {
    let mut r = recipe("avg_logprob", &[0.8, 0.8]);
    r["on_failure"] = json!({"policy": "fail"});
    let mut h = Harness::new(
        config(r, &[1000, 1000]),
        vec![status(503), model("B", 0.9, "")],
    );
    assert_eq!(h.run().unwrap_err().status, 502);
    assert_eq!(h.models_called(), vec![0]);

    let mut r = recipe("avg_logprob", &[0.8, 0.8]);
    r["on_failure"] = json!({"policy": "fallback", "model": "m2"});
    let mut h = Harness::new(
        config(r, &[1000, 1000, 1000]),
        vec![status(503), model("B", 0.9, ""), model("C", 0.95, "")],
    );
    assert_eq!(
        chosen(&h.run().unwrap()),
        "C",
        "m0's step was answered by m2"
    );
    assert_eq!(h.models_called(), vec![0, 2]);
}

#[test]
fn budget_stop_returns_the_best_so_far() {
    let mut r = recipe("avg_logprob", &[0.9, 0.9, 0.9]);
    r["max_calls"] = json!(2);
    let mut h = Harness::new(
        config(r, &[1000, 1000, 1000]),
        vec![
            model("A", 0.6, ""),
            model("B", 0.7, ""),
            model("C", 0.99, ""),
        ],
    );
    let result = h.run().unwrap();
    assert_eq!(chosen(&result), "B");
    assert_eq!(h.models_called(), vec![0, 1]);
    assert!(h.events.contains(&LooperEvent::BudgetStop));
    assert!(h.notes().contains("max_calls"));
}

#[test]
fn deadline_returns_the_best_so_far_or_504() {
    let mut r = recipe("avg_logprob", &[0.9, 0.9]);
    r["deadline_ms"] = json!(50);
    let mut h = Harness::new(
        config(r.clone(), &[1000, 1000]),
        vec![model("A", 0.6, ""), hang()],
    );
    // A answered at 10 ms; B hangs until the deadline.
    let result = h.run();
    assert_eq!(result.map(|a| chosen(&a)).ok().as_deref(), Some("A"));

    let mut h = Harness::new(config(r, &[1000, 1000]), vec![hang(), hang()]);
    assert_eq!(h.run().unwrap_err().status, 504);
}

#[test]
fn a_zero_threshold_needs_no_verification_call() {
    let mut r = recipe("self_verify", &[0.9, 0.0]);
    r["candidates"][1]["threshold"] = json!(0.0);
    let mut h = Harness::new(
        config(r, &[1000, 1000]),
        vec![
            model("A", 0.9, "VERDICT: INCORRECT\nCONFIDENCE: 10"),
            model("B", 0.9, "unused"),
        ],
    );
    let result = h.run().unwrap();
    assert_eq!(chosen(&result), "B");
    // m0 answered and was verified; m1 only answered.
    assert_eq!(h.models_called(), vec![0, 0, 1]);
    assert!(h.trace()["stop_reason"]
        .as_str()
        .unwrap()
        .contains("threshold 0"));
    assert_eq!(h.looper.runtime().confidence(), None);
}
