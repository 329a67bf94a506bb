//! `single`: one model, then the failover list.
//!
//! Part of the looper tests, compiled only under #[cfg(test)].

use super::*;

fn single(models: &[&str]) -> Value {
    json!({"algorithm": "single", "models": models})
}

#[test]
fn first_model_answers() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[1000, 1000]),
        vec![answer(20, "zero"), answer(5, "one")],
    );
    let result = h.run().unwrap();
    assert_eq!(content_of(&result), "zero");
    assert_eq!(result.model(), ModelId(0));
    assert_eq!(h.models_called(), vec![0]);
    let rt = h.looper.runtime();
    assert_eq!(rt.usage().total_tokens, 15);
    assert!((rt.cost() - (10.0 * 1.0 + 5.0 * 2.0) / 1e6).abs() < 1e-12);
    // The sub-call is the client's request with only the model changed.
    let body = &h.dispatched[0].3;
    assert_eq!(body["model"], "up-0");
    assert_eq!(body["top_k"], 4);
    assert_eq!(body["temperature"], 0.3);
}

#[test]
fn fails_over_on_every_retryable_failure() {
    let failures = [
        status(500),
        status(502),
        status(503),
        status(429),
        status(401),
        reset(3),
        hang(),
        raw(2, 200, "not json"),
        raw(2, 200, "{\"choices\":[]}"),
        raw(
            2,
            503,
            "upstream connect error or disconnect/reset before headers",
        ),
    ];
    for failure in failures {
        let mut h = Harness::new(
            config(single(&["m0", "m1"]), &[100, 1000]),
            vec![failure, answer(5, "one")],
        );
        let result = h.run().unwrap();
        assert_eq!(content_of(&result), "one");
        assert_eq!(h.models_called(), vec![0, 1]);
        let trace = h.looper.runtime().trace();
        assert_eq!(trace["steps"].as_array().unwrap().len(), 2);
        assert!(trace["notes"][0]
            .as_str()
            .unwrap()
            .contains("failover to m1"));
    }
}

#[test]
fn usage_of_failed_calls_is_counted() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 1000]),
        vec![
            raw(
                1,
                200,
                "{\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1}}",
            ),
            answer(5, "one"),
        ],
    );
    h.run().unwrap();
    assert_eq!(h.looper.runtime().usage().prompt_tokens, 17);
    assert_eq!(h.looper.runtime().usage().total_tokens, 23);
}

#[test]
fn request_errors_do_not_fail_over() {
    for code in [400, 422, 413] {
        let mut h = Harness::new(
            config(single(&["m0", "m1"]), &[100, 1000]),
            vec![status(code), answer(5, "one")],
        );
        let err = h.run().unwrap_err();
        assert_eq!(err.status, if code == 413 { 413 } else { 400 });
        assert!(
            !err.message.contains("cluster xyz"),
            "no upstream internals"
        );
        assert_eq!(h.models_called(), vec![0]);
    }
}

#[test]
fn all_failed_is_502_without_upstream_details() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![status(500), hang()],
    );
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 502);
    assert!(!err.message.contains("cluster"));
    assert_eq!(h.models_called(), vec![0, 1]);
    assert!(h.looper.runtime().trace()["stop_reason"]
        .as_str()
        .unwrap()
        .contains("exhausted"));
}

#[test]
fn max_calls_bounds_the_failover() {
    let mut recipe = single(&["m0", "m1", "m2"]);
    recipe["max_calls"] = json!(2);
    let mut h = Harness::new(
        config(recipe, &[100, 100, 100]),
        vec![status(500), status(500), answer(1, "two")],
    );
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 502);
    assert_eq!(h.models_called(), vec![0, 1]);
    let trace = h.looper.runtime().trace();
    assert!(trace["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("max_calls")));
}

#[test]
fn deadline_ends_the_request_with_504() {
    let mut recipe = single(&["m0", "m1"]);
    recipe["deadline_ms"] = json!(150);
    let mut h = Harness::new(config(recipe, &[100, 1000]), vec![hang(), hang()]);
    let err = h.run().unwrap_err();
    assert_eq!(err.status, 504);
    // The second call only had the 50 ms left before the deadline.
    assert_eq!(h.dispatched[0].2, 100);
    assert_eq!(h.dispatched[1].2, 50);
    assert_eq!(h.now, Millis(1_000_000 + 150));
}

#[test]
fn recipe_call_timeout_caps_model_timeouts() {
    let mut recipe = single(&["m0"]);
    recipe["call_timeout_ms"] = json!(40);
    let mut h = Harness::new(config(recipe, &[1000]), vec![answer(1, "x")]);
    h.run().unwrap();
    assert_eq!(h.dispatched[0].2, 40);
}

#[test]
fn refused_dispatch_fails_over() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![answer(1, "zero"), answer(1, "one")],
    );
    let (first, _, _, _) = h.dispatched[0].clone();
    h.take(first);
    h.looper.on_call_result(first, CallResult::Rejected, h.now);
    h.drain();
    let result = h.run().unwrap();
    assert_eq!(content_of(&result), "one");
}

#[test]
fn results_for_unknown_or_finished_calls_are_ignored() {
    let mut h = Harness::new(config(single(&["m0"]), &[100]), vec![answer(1, "zero")]);
    h.looper
        .on_call_result(CallId(99), CallResult::Reset, h.now);
    h.drain();
    assert!(!h.finished);
    let first = h.dispatched[0].0;
    h.run().unwrap();
    let usage = *h.looper.runtime().usage();
    h.looper.on_call_result(
        first,
        CallResult::Response {
            status: 200,
            body: completion("again", 100, 100),
        },
        h.now,
    );
    h.drain();
    assert_eq!(*h.looper.runtime().usage(), usage);
}

#[test]
fn early_deadline_events_do_nothing() {
    let mut h = Harness::new(config(single(&["m0"]), &[100]), vec![answer(1, "zero")]);
    h.looper.on_deadline(h.now.plus(5));
    h.drain();
    assert!(!h.finished);
    assert_eq!(h.looper.next_deadline(), Some(Millis(1_000_000 + 10_000)));
    h.looper.on_deadline(Millis(1_000_000 + 10_000));
    h.drain();
    assert!(h.finished);
    assert_eq!(h.looper.take_result().unwrap().unwrap_err().status, 504);
    assert_eq!(h.looper.next_deadline(), None);
    assert_eq!(h.looper.runtime().abandoned_calls(), 1);
}

#[test]
fn time_never_goes_backwards() {
    let mut h = Harness::new(config(single(&["m0"]), &[100]), vec![answer(1, "zero")]);
    let first = h.dispatched[0].0;
    h.take(first);
    h.looper.on_call_result(
        first,
        CallResult::Response {
            status: 200,
            body: completion("z", 1, 1),
        },
        Millis(5),
    );
    assert_eq!(h.looper.runtime().now(), Millis(1_000_000));
}

#[test]
fn an_answer_arriving_with_the_deadline_still_counts() {
    let mut recipe = single(&["m0"]);
    recipe["deadline_ms"] = json!(100);
    let mut h = Harness::new(config(recipe, &[1000]), vec![answer(100, "just in time")]);
    assert_eq!(h.dispatched[0].2, 100);
    let result = h.run().unwrap();
    assert_eq!(content_of(&result), "just in time");
}

#[test]
fn every_upstream_rate_limited_is_429() {
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![status(429), status(429)],
    );
    assert_eq!(h.run().unwrap_err().status, 429);
    let mut h = Harness::new(
        config(single(&["m0", "m1"]), &[100, 100]),
        vec![status(429), status(500)],
    );
    assert_eq!(h.run().unwrap_err().status, 502);
}

#[test]
fn a_call_cut_at_the_deadline_ends_with_the_deadline_even_if_the_clock_lags() {
    let mut recipe = single(&["m0", "m1"]);
    recipe["deadline_ms"] = json!(700);
    let mut h = Harness::new(config(recipe, &[400, 400]), vec![hang(), hang()]);
    assert!(h.step(), "the first call times out at 400 ms");
    let (second, _, timeout, _) = h.dispatched[1].clone();
    assert_eq!(timeout, 300, "the second call gets what is left");
    // Envoy's timer fires at the deadline by its clock; ours reads 2 ms earlier.
    h.take(second);
    let timeout_result = CallResult::Response {
        status: 504,
        body: b"upstream request timeout".to_vec(),
    };
    h.looper
        .on_call_result(second, timeout_result, T0.plus(698));
    h.drain();
    assert!(h.finished);
    let error = h.looper.take_result().unwrap().unwrap_err();
    assert_eq!(error.status, 504);
}
