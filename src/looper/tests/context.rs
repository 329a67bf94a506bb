//! A prompt beyond a model's context window, as real servers report it (integration/real): the
//! next model may take it; when none can, the client gets OpenAI's 400
//! `context_length_exceeded`, not a 502.
//!
//! Part of the looper tests, compiled only under #[cfg(test)].

use super::*;

/// llama.cpp's `llama-server`, measured: an integer `code` and its own `type`.
const LLAMA_CPP: &str = r#"{"error":{"code":400,"message":"request (3031 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3031,"n_ctx":2048}}"#;
const OPENAI: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;

fn overflow(body: &'static str) -> Script {
    raw(3, 400, body)
}

fn assert_context_length_exceeded(error: &ApiError) {
    assert_eq!(error.status, 400);
    assert_eq!(error.code, Some("context_length_exceeded"));
    assert_eq!(error.kind, "invalid_request_error");
    assert_eq!(error.param.as_deref(), Some("messages"));
}

#[test]
fn single_fails_over_to_a_model_with_a_larger_window() {
    let recipe = json!({"algorithm": "single", "models": ["m0", "m1"]});
    let mut h = Harness::new(
        config(recipe, &[1000, 1000]),
        vec![overflow(LLAMA_CPP), answer(5, "it fits here")],
    );
    assert_eq!(content_of(&h.run().unwrap()), "it fits here");
    assert_eq!(h.models_called(), vec![0, 1]);
    assert_eq!(h.trace()["steps"][0]["outcome"], "context_overflow");
    assert_eq!(h.trace()["steps"][0]["status"], 400);
}

#[test]
fn single_with_no_model_that_fits_is_context_length_exceeded() {
    let recipe = json!({"algorithm": "single", "models": ["m0", "m1"]});
    let mut h = Harness::new(
        config(recipe.clone(), &[1000, 1000]),
        vec![overflow(LLAMA_CPP), overflow(OPENAI)],
    );
    assert_context_length_exceeded(&h.run().unwrap_err());
    // One model that fails otherwise: the gateway cannot say the prompt is the problem.
    let mut h = Harness::new(
        config(recipe, &[1000, 1000]),
        vec![overflow(LLAMA_CPP), status(500)],
    );
    assert_eq!(h.run().unwrap_err().status, 502);
}

#[test]
fn another_upstream_400_is_still_the_request_rejected() {
    let recipe = json!({"algorithm": "single", "models": ["m0", "m1"]});
    let mut h = Harness::new(
        config(recipe, &[1000, 1000]),
        vec![
            raw(
                3,
                400,
                r#"{"error":{"code":400,"message":"Field 'temperature': type must be number","type":"invalid_request_error"}}"#,
            ),
            answer(5, "never asked"),
        ],
    );
    let error = h.run().unwrap_err();
    assert_eq!(error.code, Some("upstream_rejected_request"));
    assert_eq!(h.models_called(), vec![0]);
}

#[test]
fn every_fan_out_algorithm_maps_an_all_overflow_to_context_length_exceeded() {
    let choice = json!({"type": "choice", "options": "ABCD"});
    let recipes = [
        json!({"algorithm": "confidence", "candidates": [{"model": "m0", "threshold": 0.5},
               {"model": "m1", "threshold": 0.5}, {"model": "m2", "threshold": 0.5}],
               "method": "avg_logprob", "contract": choice}),
        json!({"algorithm": "ratings", "members": [{"model": "m0", "accuracy": 0.6},
               {"model": "m1", "accuracy": 0.6}, {"model": "m2", "accuracy": 0.6}],
               "contract": choice}),
        json!({"algorithm": "remom", "pool": ["m0", "m1"], "breadth_schedule": [2],
               "synthesizer": "m2", "contract": choice}),
        json!({"algorithm": "fusion", "panel": ["m0", "m1"], "judge": "m2", "finalizer": "m2",
               "contract": choice}),
    ];
    for recipe in recipes {
        let name = recipe["algorithm"].clone();
        let mut h = Harness::new(
            config(recipe, &[1000, 1000, 1000]),
            vec![overflow(LLAMA_CPP), overflow(OPENAI), overflow(LLAMA_CPP)],
        );
        let error = h.run().unwrap_err();
        assert_eq!(error.code, Some("context_length_exceeded"), "{name}");
        assert_context_length_exceeded(&error);
    }
}

#[test]
fn a_judge_prompt_beyond_the_window_gives_the_panel_vote() {
    // The panel's prompts fit; the judge's, which quotes every answer, does not.
    let judge: Script = std::rc::Rc::new(|body: &Value| {
        if last_message(body).contains("trusted_answer") {
            return Reply::After(
                1,
                CallResult::Response {
                    status: 400,
                    body: LLAMA_CPP.into(),
                },
            );
        }
        Reply::After(1, ok("ANSWER: C"))
    });
    let recipe = json!({"algorithm": "fusion", "panel": ["m0", "m1"], "judge": "m2",
        "finalizer": "m2", "contract": {"type": "choice", "options": "ABCD"}});
    let mut h = Harness::new(
        config(recipe, &[1000, 1000, 1000]),
        vec![answer(1, "ANSWER: C"), answer(2, "ANSWER: C"), judge],
    );
    assert!(content_of(&h.run().unwrap()).ends_with("ANSWER: C"));
    assert!(h.trace()["stop_reason"]
        .as_str()
        .unwrap()
        .contains("judge failed"));
}
