//! Ratings: a rating-weighted vote over a bounded parallel panel.
//!
//! Part of the looper tests, compiled only under #[cfg(test)].

use super::*;

fn recipe(members: Value) -> Value {
    json!({"algorithm": "ratings", "members": members,
           "contract": {"type": "choice", "options": "AB"}})
}

fn says(latency: u64, letter: &'static str) -> Script {
    std::rc::Rc::new(move |_| Reply::After(latency, ok(&format!("I pick ANSWER: {letter}"))))
}

fn letter(answer: &Answer) -> String {
    content_of(answer).rsplit(' ').next().unwrap().to_string()
}

#[test]
fn the_best_model_wins_over_a_majority_of_weaker_ones() {
    // Accuracies 0.6, 0.7, 0.8 on a binary question: log-odds weights 0.41, 0.85, 1.39.
    let members = json!([{"model": "m0", "accuracy": 0.6}, {"model": "m1", "accuracy": 0.7},
                         {"model": "m2", "accuracy": 0.8}]);
    let mut h = Harness::new(
        config(recipe(members), &[1000, 1000, 1000]),
        vec![says(5, "B"), says(6, "B"), says(7, "A")],
    );
    let result = h.run().unwrap();
    assert_eq!(letter(&result), "A");
    assert_eq!(result.model(), ModelId(2));
    let trace = h.trace();
    assert_eq!(trace["winner"]["answer"], "A");
    assert_eq!(trace["votes"].as_array().unwrap().len(), 2);
}

#[test]
fn plain_weights_give_a_majority_vote() {
    let members = json!([{"model": "m0"}, {"model": "m1"}, {"model": "m2"}]);
    let mut h = Harness::new(
        config(recipe(members), &[1000, 1000, 1000]),
        vec![says(5, "B"), says(6, "A"), says(7, "B")],
    );
    let result = h.run().unwrap();
    assert_eq!(letter(&result), "B");
    assert!((h.looper.runtime().confidence().unwrap() - 2.0 / 3.0).abs() < 1e-9);
}

#[test]
fn a_tie_goes_to_the_stronger_model() {
    let members = json!([{"model": "m0", "weight": 1.0}, {"model": "m1", "weight": 1.0},
                         {"model": "m2", "weight": 1.0}, {"model": "m3", "weight": 1.0}]);
    let mut cfg = recipe(members);
    cfg["max_concurrent"] = json!(4);
    // Equal weights but m3 is listed with the same weight: tie broken by strength (equal),
    // then by the first answer seen.
    let mut h = Harness::new(
        config(cfg, &[1000, 1000, 1000, 1000]),
        vec![says(5, "A"), says(6, "B"), says(7, "A"), says(8, "B")],
    );
    let result = h.run().unwrap();
    assert_eq!(letter(&result), "A");
    assert_eq!(h.trace()["winner"]["tie_broken"], true);

    let members = json!([{"model": "m0", "weight": 1.0}, {"model": "m1", "weight": 1.0},
                         {"model": "m2", "weight": 1.0}, {"model": "m3", "weight": 1.0}]);
    let mut cfg = recipe(members);
    cfg["max_concurrent"] = json!(4);
    cfg["members"][3]["weight"] = json!(1.0000000001);
    cfg["members"][1]["weight"] = json!(0.9999999999);
    let mut h = Harness::new(
        config(cfg, &[1000, 1000, 1000, 1000]),
        vec![says(5, "A"), says(6, "B"), says(7, "A"), says(8, "B")],
    );
    let result = h.run().unwrap();
    assert_eq!(
        letter(&result),
        "B",
        "m3 is the strongest of the tied answers"
    );
    assert_eq!(result.model(), ModelId(3));
}

#[test]
fn concurrency_stays_within_max_concurrent() {
    let members: Vec<Value> = (0..5).map(|i| json!({"model": format!("m{i}")})).collect();
    let mut cfg = recipe(Value::Array(members));
    cfg["max_concurrent"] = json!(2);
    let mut h = Harness::new(
        config(cfg, &[1000; 5]),
        vec![
            says(5, "A"),
            says(9, "B"),
            says(3, "A"),
            says(4, "B"),
            says(2, "B"),
        ],
    );
    h.run().unwrap();
    assert_eq!(h.max_in_flight, 2);
}

#[test]
fn the_vote_ends_early_once_pending_votes_cannot_change_it() {
    let members: Vec<Value> = (0..5).map(|i| json!({"model": format!("m{i}")})).collect();
    let mut cfg = recipe(Value::Array(members));
    cfg["max_concurrent"] = json!(5);
    let mut h = Harness::new(
        config(cfg, &[1000; 5]),
        vec![says(1, "A"), says(2, "A"), says(3, "A"), hang(), hang()],
    );
    let result = h.run().unwrap();
    assert_eq!(letter(&result), "A");
    assert_eq!(h.now, T0.plus(3), "did not wait for the hanging members");
    assert_eq!(h.looper.runtime().abandoned_calls(), 2);
    assert!(h.notes().contains("decided"));
}

#[test]
fn without_early_stop_the_vote_waits_for_every_member() {
    let members = json!([{"model": "m0"}, {"model": "m1"}, {"model": "m2"}]);
    let mut cfg = recipe(members);
    cfg["early_stop"] = json!(false);
    let mut h = Harness::new(
        config(cfg, &[1000; 3]),
        vec![says(1, "A"), says(2, "A"), says(50, "B")],
    );
    assert_eq!(letter(&h.run().unwrap()), "A");
    assert_eq!(h.now, T0.plus(50), "waited for the last member");
    assert_eq!(h.looper.runtime().abandoned_calls(), 0);
}

#[test]
fn failed_members_are_skipped() {
    let members = json!([{"model": "m0"}, {"model": "m1"}, {"model": "m2"}]);
    let mut h = Harness::new(
        config(recipe(members), &[1000, 1000, 1000]),
        vec![status(500), says(3, "B"), reset(4)],
    );
    assert_eq!(letter(&h.run().unwrap()), "B");
    let mut h = Harness::new(
        config(
            recipe(json!([{"model": "m0"}, {"model": "m1"}])),
            &[1000, 1000],
        ),
        vec![status(500), reset(4)],
    );
    assert_eq!(h.run().unwrap_err().status, 502);
}

#[test]
fn without_extractable_answers_the_highest_rated_response_wins() {
    let members = json!([{"model": "m0", "weight": 0.5}, {"model": "m1", "weight": 2.0}]);
    let mut cfg = recipe(members);
    cfg["contract"] = json!({"type": "text"});
    let mut h = Harness::new(
        config(cfg, &[1000, 1000]),
        vec![answer(1, "low rated"), answer(2, "high rated")],
    );
    assert_eq!(content_of(&h.run().unwrap()), "high rated");
}

#[test]
fn a_judge_picks_among_free_text_answers() {
    let members = json!([{"model": "m0", "weight": 2.0}, {"model": "m1", "weight": 1.0}]);
    let mut cfg = recipe(members);
    cfg["contract"] = json!({"type": "text"});
    cfg["judge"] = json!("m2");
    let judge: Script = std::rc::Rc::new(|body: &Value| {
        let prompt = last_message(body);
        assert!(prompt.contains("<response-n0nce>"));
        Reply::After(1, ok("Response 2 is more complete.\nBEST: 2"))
    });
    let mut h = Harness::new(
        config(cfg.clone(), &[1000, 1000, 1000]),
        vec![answer(1, "first"), answer(2, "second"), judge],
    );
    assert_eq!(content_of(&h.run().unwrap()), "second");
    assert_eq!(h.dispatched[2].3["messages"][1]["role"], "user");

    // A judge that fails or answers nonsense falls back to the highest-rated response.
    let mut h = Harness::new(
        config(cfg, &[1000, 1000, 1000]),
        vec![
            answer(1, "first"),
            answer(2, "second"),
            answer(1, "BEST: 9"),
        ],
    );
    assert_eq!(content_of(&h.run().unwrap()), "first");
    assert!(h.notes().contains("judge gave no usable pick"));
}

#[test]
fn the_deadline_decides_with_the_votes_in() {
    let members = json!([{"model": "m0"}, {"model": "m1"}, {"model": "m2"}]);
    let mut r = recipe(members);
    r["deadline_ms"] = json!(50);
    let mut h = Harness::new(
        config(r, &[1000, 1000, 1000]),
        vec![says(10, "B"), hang(), hang()],
    );
    assert_eq!(letter(&h.run().unwrap()), "B");
    assert!(h.notes().contains("deadline"));
}

#[test]
fn a_fallback_answer_gets_no_vote_weight() {
    let members = json!([{"model": "m0", "weight": 3.0}, {"model": "m1", "weight": 1.0},
                         {"model": "m2", "weight": 1.0}]);
    let mut r = recipe(members);
    r["on_failure"] = json!({"policy": "fallback", "model": "m3"});
    r["max_calls"] = json!(5);
    let mut h = Harness::new(
        config(r, &[1000, 1000, 1000, 1000]),
        vec![status(500), says(20, "A"), says(30, "A"), says(5, "B")],
    );
    // m0 fails; its retry on m3 answers B but votes with weight 0, so m1 and m2 decide.
    let result = h.run().unwrap();
    assert_eq!(letter(&result), "A");
    let steps = h.trace()["steps"].as_array().unwrap().clone();
    let retry = steps.iter().find(|s| s["model"] == "m3").unwrap();
    assert_eq!(retry["score"], 0.0);
}
