//! Tests of the parent module, compiled only under #[cfg(test)].

use super::*;
use serde_json::{json, Value};

fn env(name: &str) -> Option<String> {
    (name == "SIM_KEY").then(|| "sekret".to_string())
}

fn minimal() -> Value {
    json!({
        "models": {"a": {"cluster": "c1"}, "b": {"cluster": "c2", "model": "b-upstream"}},
        "recipes": {"r": {"algorithm": "single", "models": ["a", "b"]}},
        "virtual_models": {"vllm-sr/auto": {"recipe": "r"}}
    })
}

fn parse(v: &Value) -> Result<Config, ConfigError> {
    Config::from_json(v.to_string().as_bytes(), &env)
}

fn error_path(v: &Value) -> String {
    parse(v).unwrap_err().path
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(&minimal()).unwrap();
    let a = &c.models[0];
    assert_eq!(a.alias, "a");
    assert_eq!(a.authority, "c1");
    assert_eq!(a.path, "/v1/chat/completions");
    assert_eq!(a.upstream_model, "a");
    assert_eq!(a.timeout_ms, defaults::TIMEOUT_MS);
    assert!(!a.logprobs);
    assert_eq!(c.models[1].upstream_model, "b-upstream");
    assert_eq!(c.recipes[0].budget.max_calls, 2);
    assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
    assert_eq!(c.limits.request_deadline_ms, defaults::REQUEST_DEADLINE_MS);
    assert!(!c.trace_allowed);
    assert_eq!(c.reply_model_name, ReplyModelName::Virtual);
    assert!(c.virtual_model("vllm-sr/auto").is_some());
    assert!(c.is_unknown_virtual("vllm-sr/other"));
    assert!(!c.is_unknown_virtual("gpt-4o"));
    assert!(!c.is_unknown_virtual("vllm-sr/auto"));
}

#[test]
fn the_shipped_filters_parse() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/filters")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&path).unwrap();
            Config::from_json(&bytes, &|_| Some("x".to_string()))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

#[test]
fn full_model_entry() {
    let mut v = minimal();
    v["models"]["a"] = json!({
        "cluster": "openai", "authority": "api.openai.com", "path": "/v1/chat/completions",
        "model": "gpt-4o-mini", "auth": {"env": "SIM_KEY"},
        "headers": {"openai-organization": "org-1"},
        "price": {"input_per_million": 0.15, "output_per_million": 0.6},
        "logprobs": true, "timeout_ms": 5000
    });
    let c = parse(&v).unwrap();
    let a = &c.models[0];
    let cred = a.credential.as_ref().unwrap();
    assert_eq!(cred.header, "authorization");
    assert_eq!(cred.value.expose(), "Bearer sekret");
    assert!(!format!("{a:?}").contains("sekret"), "secrets never print");
    assert_eq!(
        a.extra_headers,
        vec![("openai-organization".into(), "org-1".into())]
    );
    assert!((a.price.cost(1_000_000, 1_000_000) - 0.75).abs() < 1e-9);
    assert!(a.logprobs);
    assert_eq!(a.timeout_ms, 5000);
}

#[test]
fn literal_credentials_and_custom_headers() {
    let mut v = minimal();
    v["models"]["a"]["auth"] = json!({"header": "api-key", "value": "k1"});
    let c = parse(&v).unwrap();
    let cred = c.models[0].credential.as_ref().unwrap();
    assert_eq!(
        (cred.header.as_str(), cred.value.expose()),
        ("api-key", "k1")
    );
}

#[test]
fn errors_name_the_field() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| v["models"] = json!(5)), "models"),
        (Box::new(|v| v["models"] = json!({})), "models"),
        (Box::new(|v| v["extra"] = json!(1)), "extra"),
        (
            Box::new(|v| v["models"]["a"]["timeout_ms"] = json!(0)),
            "models.a.timeout_ms",
        ),
        (
            Box::new(|v| v["models"]["a"]["timeout_ms"] = json!(10_000_000)),
            "models.a.timeout_ms",
        ),
        (
            Box::new(|v| v["models"]["a"]["timout_ms"] = json!(5)),
            "models.a.timout_ms",
        ),
        (
            Box::new(|v| {
                v["models"]["a"]
                    .as_object_mut()
                    .unwrap()
                    .remove("cluster")
                    .map(|_| ())
                    .unwrap()
            }),
            "models.a.cluster",
        ),
        (
            Box::new(|v| v["models"]["a"]["cluster"] = json!("")),
            "models.a.cluster",
        ),
        (
            Box::new(|v| v["models"]["a"]["path"] = json!("v1/chat")),
            "models.a.path",
        ),
        (
            Box::new(|v| v["models"]["a"]["logprobs"] = json!("yes")),
            "models.a.logprobs",
        ),
        (
            Box::new(|v| v["models"]["a"]["price"] = json!({"input_per_million": -1})),
            "models.a.price.input_per_million",
        ),
        (
            Box::new(|v| v["models"]["a"]["auth"] = json!({"env": "MISSING"})),
            "models.a.auth.env",
        ),
        (
            Box::new(|v| v["models"]["a"]["auth"] = json!({})),
            "models.a.auth",
        ),
        (
            Box::new(|v| v["models"]["a"]["auth"] = json!({"env": "SIM_KEY", "value": "x"})),
            "models.a.auth",
        ),
        (
            Box::new(|v| v["models"]["a"]["headers"] = json!({"Content-Length": "1"})),
            "models.a.headers.Content-Length",
        ),
        (
            Box::new(|v| v["models"]["a"]["headers"] = json!({"host": "x"})),
            "models.a.headers.host",
        ),
        (
            Box::new(|v| v["models"]["a"]["headers"] = json!({"x-ok": "a\r\nb"})),
            "models.a.headers.x-ok",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["algorithm"] = json!("magic")),
            "recipes.r.algorithm",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["algorithm"] = json!("workflows")),
            "recipes.r.models",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["models"] = json!([])),
            "recipes.r.models",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["models"] = json!(["a", "zz"])),
            "recipes.r.models[1]",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["models"] = json!(["a", "a"])),
            "recipes.r.models[1]",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["max_calls"] = json!(0)),
            "recipes.r.max_calls",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["max_calls"] = json!(1000)),
            "recipes.r.max_calls",
        ),
        (
            Box::new(|v| v["recipes"]["r"]["bogus"] = json!(1)),
            "recipes.r.bogus",
        ),
        (
            Box::new(|v| v["virtual_models"]["vllm-sr/auto"]["recipe"] = json!("nope")),
            "virtual_models.vllm-sr/auto.recipe",
        ),
        (
            Box::new(|v| v["virtual_models"] = json!({})),
            "virtual_models",
        ),
        (
            Box::new(|v| v["limits"] = json!({"max_body_bytes": 0})),
            "limits.max_body_bytes",
        ),
        (
            Box::new(|v| v["limits"] = json!({"request_deadline_ms": 99_999_999})),
            "limits.request_deadline_ms",
        ),
        (
            Box::new(|v| v["trace"] = json!({"allow": 1})),
            "trace.allow",
        ),
        (
            Box::new(|v| v["response"] = json!({"model": "x"})),
            "response.model",
        ),
        (
            Box::new(|v| v["passthrough_models"] = json!(["ok", 3])),
            "passthrough_models[1]",
        ),
    ];
    for (edit, path) in cases {
        let mut v = minimal();
        edit(&mut v);
        assert_eq!(error_path(&v), path, "{v}");
    }
}

#[test]
fn too_many_models_in_a_recipe_is_refused() {
    let mut v = minimal();
    let mut models = serde_json::Map::new();
    let mut names = Vec::new();
    for i in 0..=bounds::MAX_MODELS_PER_RECIPE {
        models.insert(format!("m{i}"), json!({"cluster": "c"}));
        names.push(json!(format!("m{i}")));
    }
    v["models"] = Value::Object(models);
    v["recipes"]["r"]["models"] = Value::Array(names);
    assert_eq!(error_path(&v), "recipes.r.models");
}

#[test]
fn not_json_is_a_root_error() {
    let err = Config::from_json(b"{nope", &env).unwrap_err();
    assert_eq!(err.path, "");
    assert!(err.to_string().contains("not valid JSON"));
    let err = Config::from_json(b"{\"virtual_models\": \"\xff\"}", &env).unwrap_err();
    assert_eq!(err.path, "");
    assert!(
        err.message.contains("not valid UTF-8 (at byte 20)"),
        "{err}"
    );
    let err = Config::from_json(b"[]", &env).unwrap_err();
    assert!(err.message.contains("an object"));
}

#[test]
fn authority_defaults_to_the_host_of_istio_cluster_names() {
    let mut v = minimal();
    v["models"]["a"]["cluster"] = json!("outbound|443||api.openai.com");
    v["models"]["b"]["cluster"] = json!("outbound|8000|v1|vllm.models.svc.cluster.local");
    let c = parse(&v).unwrap();
    assert_eq!(c.models[0].authority, "api.openai.com");
    assert_eq!(c.models[1].authority, "vllm.models.svc.cluster.local:8000");
    v["models"]["a"]["cluster"] = json!("a|b");
    assert_eq!(error_path(&v), "models.a");
    v["models"]["a"]["cluster"] = json!("c1");
    v["models"]["a"]["authority"] = json!("bad host");
    assert_eq!(error_path(&v), "models.a.authority");
}

#[test]
fn the_credential_header_cannot_be_set_twice() {
    let mut v = minimal();
    v["models"]["a"]["auth"] = json!({"env": "SIM_KEY"});
    v["models"]["a"]["headers"] = json!({"authorization": "Bearer other"});
    assert_eq!(error_path(&v), "models.a.headers.authorization");
}

#[test]
fn names_that_collide_as_metrics_are_refused() {
    let mut v = minimal();
    v["virtual_models"]["vllm_sr/auto"] = json!({"recipe": "r"});
    let err = parse(&v).unwrap_err();
    assert!(err.path.starts_with("virtual_models."), "{err}");
    assert!(err.message.contains("metric name"));
}

#[test]
fn namespaces_can_be_set_and_passthrough_models_must_stay_outside() {
    let mut v = minimal();
    v["passthrough_models"] = json!(["vllm-sr/other"]);
    assert_eq!(error_path(&v), "passthrough_models[0]");
    v["namespaces"] = json!([]);
    let c = parse(&v).unwrap();
    assert!(!c.is_unknown_virtual("vllm-sr/other"));
    v["namespaces"] = json!(["looper/"]);
    let c = parse(&v).unwrap();
    assert!(c.is_unknown_virtual("looper/x"));
    v["namespaces"] = json!(["looper"]);
    assert_eq!(error_path(&v), "namespaces[0]");
}

fn with_recipe(recipe: Value) -> Value {
    let mut v = minimal();
    v["models"]["c"] = json!({"cluster": "c3", "price": {"input_per_million": 0.1}});
    v["recipes"]["r"] = recipe;
    v
}

#[test]
fn confidence_recipe_defaults_and_price_order() {
    let v = with_recipe(json!({"algorithm": "confidence", "order": "price",
        "candidates": [{"model": "c"}, {"model": "a", "threshold": 0.9}]}));
    let c = parse(&v).unwrap();
    let Algorithm::Confidence(r) = &c.recipes[0].algorithm else {
        panic!("not confidence")
    };
    // `a` (no price: 0) is cheaper than `c` (0.1 per million), so it moves first.
    assert_eq!(r.candidates[0].model, ModelId(0));
    assert_eq!(r.candidates[0].threshold, 0.9);
    assert_eq!(r.candidates[1].threshold, 0.7);
    assert_eq!(r.method, ConfidenceMethod::AvgLogprob);
    assert_eq!(r.fallback_method, ConfidenceMethod::SelfVerify);
    assert_eq!(r.samples, 4);
    assert_eq!(c.recipes[0].budget.max_calls, 4);
    assert_eq!(c.recipes[0].budget.max_concurrent, 1);
}

#[test]
fn ratings_recipe_weights() {
    let v = with_recipe(json!({"algorithm": "ratings",
        "contract": {"type": "choice", "options": "ABCD"},
        "members": [{"model": "a", "accuracy": 0.7}, {"model": "b", "weight": 2.5}, {"model": "c"}],
        "judge": "a"}));
    let c = parse(&v).unwrap();
    let Algorithm::Ratings(r) = &c.recipes[0].algorithm else {
        panic!("not ratings")
    };
    assert!((r.members[0].weight - (3.0f64 * 0.7 / 0.3).ln()).abs() < 1e-9);
    assert_eq!(r.members[1].weight, 2.5);
    assert_eq!(r.members[2].weight, 1.0);
    assert_eq!(r.options, 4);
    assert_eq!(r.judge, Some(ModelId(0)));
    assert_eq!(c.recipes[0].budget.max_calls, 4);
    assert_eq!(c.recipes[0].budget.max_concurrent, 3);
}

#[test]
fn recipe_errors_name_the_field() {
    let cases = [
        (
            json!({"algorithm": "confidence", "candidates": [{"model": "a", "threshold": 1.5}]}),
            "recipes.r.candidates[0].threshold",
        ),
        (
            json!({"algorithm": "confidence", "candidates": [{"model": "a"}], "method": "vibes"}),
            "recipes.r.method",
        ),
        (
            json!({"algorithm": "confidence", "candidates": [{"model": "a"}],
                "fallback_method": "margin"}),
            "recipes.r.fallback_method",
        ),
        (
            json!({"algorithm": "confidence", "candidates": [{"model": "a"}, {"model": "a"}]}),
            "recipes.r.candidates[1].model",
        ),
        (
            json!({"algorithm": "confidence", "candidates": []}),
            "recipes.r.candidates",
        ),
        (
            json!({"algorithm": "confidence", "candidates": [{"model": "a"}], "samples": 99}),
            "recipes.r.samples",
        ),
        (
            json!({"algorithm": "confidence", "candidates": [{"model": "a"}], "max_concurrent": 2}),
            "recipes.r.max_concurrent",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a", "weight": 1, "accuracy": 0.5}]}),
            "recipes.r.members[0]",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}], "judge": "zz"}),
            "recipes.r.judge",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}],
                "contract": {"type": "choice", "options": "AAB"}}),
            "recipes.r.contract.options",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}],
                "contract": {"type": "yaml"}}),
            "recipes.r.contract.type",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}],
                "on_failure": {"policy": "fallback"}}),
            "recipes.r.on_failure",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}],
                "on_failure": {"policy": "retry"}}),
            "recipes.r.on_failure.policy",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}],
                "roles": {"verifier": {"temperature": 0.1}}}),
            "recipes.r.roles.verifier",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}],
                "roles": {"answer": {"reasoning_effort": "max"}}}),
            "recipes.r.roles.answer.reasoning_effort",
        ),
        (
            json!({"algorithm": "ratings", "members": [{"model": "a"}], "token_budget": 0}),
            "recipes.r.token_budget",
        ),
        (
            json!({"algorithm": "single", "models": ["a"], "members": []}),
            "recipes.r.members",
        ),
        (
            json!({"algorithm": "workflows", "models": ["a"]}),
            "recipes.r.models",
        ),
    ];
    for (recipe, path) in cases {
        let v = with_recipe(recipe.clone());
        assert_eq!(error_path(&v), path, "{recipe}");
    }
}

fn workflows(extra: Value) -> Value {
    let mut r = json!({"algorithm": "workflows",
        "workers": {"coder": {"model": "a", "description": "writes code"}, "tester": {"model": "b"}},
        "steps": [{"id": "s1", "worker": "coder", "instruction": "write"},
                  {"id": "s2", "worker": "tester", "instruction": "test", "after": ["s1"],
                   "prompt": "{question} {output:s1}"}],
        "finalizer": "b"});
    if let (Value::Object(base), Value::Object(extra)) = (&mut r, extra) {
        base.extend(extra);
    }
    r
}

#[test]
fn workflows_recipe_defaults() {
    let c = parse(&with_recipe(workflows(json!({})))).unwrap();
    let recipe = &c.recipes[0];
    let crate::config::Algorithm::Workflows(w) = &recipe.algorithm else {
        panic!("not workflows");
    };
    assert_eq!(w.workers.len(), 2);
    assert_eq!(w.workers[1].description, "a general assistant");
    assert_eq!(w.steps[1].after, vec![0]);
    assert!(w.planner.is_none());
    assert_eq!(w.max_steps, 4);
    assert!(w.replan);
    // Two steps, a finalizer and a repair.
    assert_eq!(recipe.budget.max_calls, 6);
    assert_eq!(recipe.budget.max_concurrent, 2);
    let c = parse(&with_recipe(workflows(
        json!({"planner": "a", "max_parallel": 3}),
    )))
    .unwrap();
    assert_eq!(c.recipes[0].budget.max_calls, 8, "planner and re-plan too");
    assert_eq!(c.recipes[0].budget.max_concurrent, 3);
}

#[test]
fn workflows_errors_name_the_field() {
    let cases = [
        (json!({"workers": {}}), "recipes.r.workers"),
        (
            json!({"workers": {"bad name": {"model": "a"}}}),
            "recipes.r.workers.bad name",
        ),
        (
            json!({"workers": {"w": {"model": "zz"}}}),
            "recipes.r.workers.w.model",
        ),
        (
            json!({"workers": {"w": {"model": "a", "role": "x"}}}),
            "recipes.r.workers.w.role",
        ),
        (json!({"steps": []}), "recipes.r.steps"),
        (
            json!({"steps": [{"id": "s1", "worker": "nobody"}]}),
            "recipes.r.steps[0].worker",
        ),
        (
            json!({"steps": [{"id": "s1", "worker": "coder"}, {"id": "s1", "worker": "coder"}]}),
            "recipes.r.steps[1].id",
        ),
        (
            json!({"steps": [{"id": "s1", "worker": "coder", "after": ["s2"]},
                              {"id": "s2", "worker": "coder"}]}),
            "recipes.r.steps[0].after[0]",
        ),
        (
            json!({"steps": [{"id": "s1", "worker": "coder"},
                              {"id": "s2", "worker": "coder", "prompt": "{question} {output:s3}"}]}),
            "recipes.r.steps[1].prompt",
        ),
        (
            json!({"steps": [{"id": "s1", "worker": "coder", "prompt": "no question"}]}),
            "recipes.r.steps[0].prompt",
        ),
        (
            json!({"steps": [{"id": "s1", "worker": "coder", "instruction": "x".repeat(5000)}],
                   "max_instruction_chars": 100}),
            "recipes.r.steps[0].instruction",
        ),
        (
            json!({"steps": [{"id": "s1", "worker": "coder", "on_failure": {"policy": "retry"}}]}),
            "recipes.r.steps[0].on_failure.policy",
        ),
        (
            json!({"steps": [{"id": "s1", "worker": "coder", "timeout_ms": 0}]}),
            "recipes.r.steps[0].timeout_ms",
        ),
        (json!({"max_steps": 0}), "recipes.r.max_steps"),
        (json!({"max_steps": 17}), "recipes.r.max_steps"),
        (json!({"planner": "a", "max_steps": 1}), "recipes.r.steps"),
        (json!({"planner": "nope"}), "recipes.r.planner"),
        (json!({"finalizer": null}), "recipes.r.finalizer"),
        (json!({"max_parallel": 0}), "recipes.r.max_parallel"),
        (
            json!({"max_parallel": 2, "max_concurrent": 2}),
            "recipes.r.max_parallel",
        ),
        (
            json!({"planner": "a", "planner_timeout_ms": 0}),
            "recipes.r.planner_timeout_ms",
        ),
        (json!({"replan": "yes"}), "recipes.r.replan"),
        (
            json!({"prompts": {"planner": "{question}"}}),
            "recipes.r.prompts.planner",
        ),
        (
            json!({"prompts": {"worker": "{question} {answers}"}}),
            "recipes.r.prompts.worker",
        ),
        (
            json!({"prompts": {"judge": "{question}"}}),
            "recipes.r.prompts.judge",
        ),
    ];
    for (extra, path) in cases {
        let v = with_recipe(workflows(extra.clone()));
        assert_eq!(error_path(&v), path, "{extra}");
    }
}

#[test]
fn the_benchmark_configuration_is_accepted() {
    // `make bench` runs this configuration in real Envoy; a refusal would only show there.
    let bytes = include_bytes!("../../integration/bench/gateway/plugin.json");
    let config = Config::from_json(bytes, &|_| None).expect("the bench configuration loads");
    assert_eq!(config.virtual_models.len(), 8);
}

#[test]
fn the_overload_policy_defaults_to_reject_under_a_bounded_cap() {
    let c = parse(&minimal()).unwrap();
    assert_eq!(
        c.limits.max_concurrent_requests,
        defaults::MAX_CONCURRENT_REQUESTS as usize
    );
    assert_eq!(c.limits.overload, Overload::Reject);
    assert_eq!(c.limits.retry_after_s, 1);

    let mut v = minimal();
    v["recipes"]["fan"] =
        json!({"algorithm": "ratings", "members": [{"model": "a"}, {"model": "b"}]});
    v["limits"] = json!({"max_concurrent_requests": 8, "retry_after_s": 5,
                         "overload": {"policy": "degrade", "recipe": "r"}});
    let c = parse(&v).unwrap();
    assert_eq!(c.limits.max_concurrent_requests, 8);
    assert_eq!(c.limits.retry_after_s, 5);
    assert_eq!(c.limits.overload, Overload::Degrade(RecipeId(1)));
}

#[test]
fn a_bad_overload_policy_names_its_field() {
    let mut v = minimal();
    v["recipes"]["fan"] =
        json!({"algorithm": "ratings", "members": [{"model": "a"}, {"model": "b"}]});
    for (limits, path) in [
        (
            json!({"max_concurrent_requests": 0}),
            "limits.max_concurrent_requests",
        ),
        (json!({"retry_after_s": 0}), "limits.retry_after_s"),
        (
            json!({"overload": {"policy": "drop"}}),
            "limits.overload.policy",
        ),
        (json!({"overload": {}}), "limits.overload.policy"),
        (
            json!({"overload": {"policy": "degrade"}}),
            "limits.overload.recipe",
        ),
        (
            json!({"overload": {"policy": "degrade", "recipe": "nope"}}),
            "limits.overload.recipe",
        ),
        // Degrading to a fan-out would add load exactly when there is too much.
        (
            json!({"overload": {"policy": "degrade", "recipe": "fan"}}),
            "limits.overload.recipe",
        ),
        (
            json!({"overload": {"policy": "reject", "recipe": "r"}}),
            "limits.overload.recipe",
        ),
    ] {
        v["limits"] = limits.clone();
        assert_eq!(error_path(&v), path, "{limits}");
    }
}

#[test]
fn recipes_that_read_the_messages_build_them_at_parse() {
    let reads = |recipe: Value| parse(&with_recipe(recipe)).unwrap().recipes[0].reads_messages();
    assert!(!reads(json!({"algorithm": "single", "models": ["a"]})));
    assert!(reads(json!({"algorithm": "single", "models": ["a"],
        "contract": {"type": "choice", "options": "AB"}})));
    let scored = json!({"algorithm": "confidence", "candidates": [{"model": "a"}]});
    assert!(
        !reads(scored),
        "its fallback verifier builds them when it runs"
    );
    let verified = json!({"algorithm": "confidence", "method": "self_verify",
        "candidates": [{"model": "a"}]});
    assert!(reads(verified));
    assert!(reads(
        json!({"algorithm": "remom", "pool": [{"model": "a"}], "breadth_schedule": [2],
        "synthesizer": "b"})
    ));
    assert!(reads(
        json!({"algorithm": "ratings", "members": [{"model": "a"}]})
    ));
}
