//! Tests of the parent module, compiled only under #[cfg(test)].

use crate::config::{Config, ConfigError, Target};
use crate::openai::ChatRequest;
use serde_json::{json, Value};

fn config_with(routers: Value) -> Result<Config, ConfigError> {
    let v = json!({
        "models": {"m": {"cluster": "c"}},
        "recipes": {
            "cheap": {"algorithm": "single", "models": ["m"]},
            "deep": {"algorithm": "single", "models": ["m"]},
            "strict": {"algorithm": "single", "models": ["m"]}
        },
        "routers": routers,
        "virtual_models": {"x/auto": {"router": "auto"}, "x/pinned": {"recipe": "cheap"}}
    });
    Config::from_json(v.to_string().as_bytes(), &|_| None)
}

fn router_config(signals: Value, projections: Value, decisions: Value) -> Config {
    config_with(json!({"auto": {
        "signals": signals, "projections": projections, "decisions": decisions
    }}))
    .unwrap()
}

fn error_of(routers: Value) -> ConfigError {
    config_with(routers).unwrap_err()
}

fn request(body: Value) -> ChatRequest {
    ChatRequest::parse(body.to_string().as_bytes()).unwrap()
}

fn user(text: &str) -> ChatRequest {
    request(json!({"model": "x/auto", "messages": [{"role": "user", "content": text}]}))
}

/// (decision, fired signals, value of each signal by name)
fn route(config: &Config, req: &ChatRequest, headers: &[Option<String>]) -> (String, Vec<String>) {
    let router = config.routers.first().unwrap();
    let route = router.route(req, headers).unwrap();
    (
        router.decision_name(&route).to_string(),
        router.fired_names(&route).map(str::to_string).collect(),
    )
}

fn value_of(config: &Config, req: &ChatRequest, signal: &str) -> f64 {
    let router = config.routers.first().unwrap();
    let route = router.route(req, &[]).unwrap();
    let i = router
        .signals
        .iter()
        .position(|s| s.name == signal)
        .unwrap();
    route.values[i]
}

fn catch_all() -> Value {
    json!([{"name": "default", "recipe": "cheap"}])
}

#[test]
fn keywords_match_case_insensitively_beyond_ascii_and_count_every_occurrence() {
    let config = router_config(
        json!({
            "medical": {"type": "keywords", "keywords": ["Diagnose", "ÄRZTLICH"]},
            "words": {"type": "keywords", "keywords": ["cat"], "whole_word": true},
            "shared": {"type": "keywords", "keywords": ["diagnose"], "min": 2},
            "exact_case": {"type": "keywords", "keywords": ["NaN"], "case_sensitive": true}
        }),
        json!({}),
        catch_all(),
    );
    let req = user("Ärztlich: DIAGNOSE the cat, concatenate, diagnose again; nan");
    assert_eq!(value_of(&config, &req, "medical"), 3.0);
    assert_eq!(value_of(&config, &req, "words"), 1.0);
    assert_eq!(value_of(&config, &req, "shared"), 2.0);
    assert_eq!(value_of(&config, &req, "exact_case"), 0.0);
    let (_, fired) = route(&config, &req, &[]);
    assert_eq!(fired, ["medical", "shared", "words"]);
    let (_, fired) = route(&config, &user("one diagnose, concatenated"), &[]);
    assert_eq!(fired, ["medical"], "min 2 and whole words hold");
}

#[test]
fn text_signals_read_their_scope_and_array_content() {
    let config = router_config(
        json!({
            "system_says_code": {"type": "keywords", "keywords": ["coding assistant"], "scope": "system"},
            "last": {"type": "keywords", "keywords": ["urgent"], "scope": "last_user"},
            "any_user": {"type": "keywords", "keywords": ["urgent"]}
        }),
        json!({}),
        catch_all(),
    );
    let req = request(json!({"model": "x/auto", "messages": [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": [{"type": "text", "text": "urgent"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "now something else"}]}
    ]}));
    let (_, fired) = route(&config, &req, &[]);
    assert_eq!(fired, ["any_user", "system_says_code"]);
}

#[test]
fn user_and_last_user_lists_count_alike_with_one_or_several_user_turns() {
    // With one user turn the two scopes read one text, searched in one pass by an automaton
    // holding both lists (per case mode); with several, apart. The counts must not tell.
    let config = router_config(
        json!({
            "user_any": {"type": "keywords", "keywords": ["urgent", "rgen"]},
            "user_word": {"type": "keywords", "keywords": ["urgent"], "whole_word": true},
            "last_any": {"type": "keywords", "keywords": ["urgent", "gent"], "scope": "last_user"},
            "last_exact": {"type": "keywords", "keywords": ["Urgent"], "scope": "last_user",
                           "case_sensitive": true},
            "user_exact": {"type": "keywords", "keywords": ["Urgent", "URGENT"],
                           "case_sensitive": true}
        }),
        json!({}),
        catch_all(),
    );
    let one = user("Urgent: urgently URGENT");
    let several = request(json!({"model": "x/auto", "messages": [
        {"role": "user", "content": "Urgent: urgently"},
        {"role": "assistant", "content": "urgent"},
        {"role": "user", "content": "URGENT"}
    ]}));
    let none = request(json!({"model": "x/auto", "messages": [
        {"role": "system", "content": "urgent"}
    ]}));
    let counts = |req: &ChatRequest| -> Vec<f64> {
        [
            "user_any",
            "user_word",
            "last_any",
            "last_exact",
            "user_exact",
        ]
        .iter()
        .map(|name| value_of(&config, req, name))
        .collect()
    };
    // "urgent" 3 times and "rgen" 3 times in lowercase; whole words: "urgent" twice.
    assert_eq!(counts(&one), [6.0, 2.0, 6.0, 1.0, 2.0]);
    // The last user turn is "URGENT" alone.
    assert_eq!(counts(&several), [6.0, 2.0, 2.0, 0.0, 2.0]);
    assert_eq!(counts(&none), [0.0; 5]);
    let router = config.routers.first().unwrap();
    assert_eq!(router.keyword_groups.len(), 2, "one group per case mode");
    assert!(
        router.keyword_groups.iter().all(|g| !g.phrases),
        "no structure signal reads these texts: no phrases to carry"
    );
}

#[test]
fn structure_phrases_found_by_a_keyword_pass_read_as_their_own_pass_reads_them() {
    // A case-insensitive keyword group holds the structure phrases when the router has
    // structure signals, and its pass stands in for the shape's own phrase pass: the
    // detectors must read the same, whatever the scopes and turns.
    let mut structure = serde_json::Map::new();
    for scope in ["user", "last_user", "system", "all"] {
        for detect in [
            "starter_code",
            "io_spec",
            "constraints",
            "float_tolerance",
            "json_requested",
            "multiple_choice",
            "math",
            "code_fence",
        ] {
            structure.insert(
                format!("{detect}_{scope}"),
                json!({"type": "structure", "detect": detect, "scope": scope}),
            );
        }
    }
    let names: Vec<String> = structure.keys().cloned().collect();
    let alone = router_config(Value::Object(structure.clone()), json!({}), catch_all());
    let mut with_keywords = structure;
    for (name, scope, case_sensitive) in [
        ("kw_user", "user", false),
        ("kw_last", "last_user", false),
        ("kw_all", "all", false),
        ("kw_exact", "system", true),
        ("kw_system", "system", false),
    ] {
        with_keywords.insert(
            name.to_string(),
            json!({"type": "keywords", "keywords": ["json", "error", "function"],
                   "scope": scope, "case_sensitive": case_sensitive}),
        );
    }
    let shared = router_config(Value::Object(with_keywords), json!({}), catch_all());
    let phrases = "Complete the function below. Your code here; TODO. Read from STDIN, write \
        to standard output. 1 <= n <= 10^5. Answers within 1e-6 relative error are accepted. \
        Reply in JSON, not json5 or jsonl.";
    let requests = [
        user(phrases),
        user("nothing of the kind"),
        request(json!({"model": "x/auto", "messages": [
            {"role": "system", "content": "Answer in JSON. 1e9 at most."},
            {"role": "user", "content": phrases},
            {"role": "assistant", "content": "absolute error"},
            {"role": "user", "content": "class Solution: pass\n"}
        ]})),
        request(json!({"model": "x/auto", "messages": [
            {"role": "developer", "content": phrases}
        ]})),
    ];
    for req in &requests {
        for name in &names {
            assert_eq!(
                value_of(&shared, req, name),
                value_of(&alone, req, name),
                "{name} of {req:?}"
            );
        }
    }
    for name in [
        "starter_code_user",
        "io_spec_user",
        "constraints_user",
        "float_tolerance_user",
        "json_requested_user",
        "json_requested_system",
    ] {
        assert_eq!(value_of(&shared, &requests[2], name), 1.0, "{name}");
    }
    let router = shared.routers.first().unwrap();
    assert!(router.keyword_groups.iter().any(|g| g.phrases));
    assert!(!router
        .keyword_groups
        .iter()
        .any(|g| g.phrases && g.case_sensitive));
}

#[test]
fn regex_signals_count_matches_and_bad_patterns_are_refused() {
    let config = router_config(
        json!({"paths": {"type": "regex", "pattern": r"\b[\w/]+\.(py|rs)\b", "min": 2}}),
        json!({}),
        catch_all(),
    );
    let req = user("see src/main.rs and lib/util.py and notes.txt");
    assert_eq!(value_of(&config, &req, "paths"), 2.0);
    let err = error_of(json!({"auto": {
        "signals": {"bad": {"type": "regex", "pattern": "(unclosed"}},
        "decisions": catch_all()
    }}));
    assert_eq!(err.path, "routers.auto.signals.bad.pattern");
    let err = error_of(json!({"auto": {
        "signals": {"huge": {"type": "regex", "pattern": r"\w{1000}\w{1000}\w{1000}"}},
        "decisions": catch_all()
    }}));
    assert_eq!(err.path, "routers.auto.signals.huge.pattern", "{err}");
}

#[test]
fn length_structure_conversation_and_parameter_signals() {
    let config = router_config(
        json!({
            "short": {"type": "length", "scope": "last_user", "max": 20},
            "tokens": {"type": "length", "unit": "tokens", "min": 0},
            "options": {"type": "structure", "detect": "multiple_choice", "min": 3},
            "turns": {"type": "conversation", "measure": "user_turns", "min": 2},
            "tools": {"type": "conversation", "measure": "tools"},
            "effort": {"type": "parameter", "name": "reasoning_effort", "values": ["high"]},
            "small_budget": {"type": "parameter", "name": "max_tokens", "max": 256},
            "streaming": {"type": "parameter", "name": "stream"},
            "json": {"type": "structure", "detect": "json_requested"}
        }),
        json!({}),
        catch_all(),
    );
    let req = request(json!({
        "model": "x/auto",
        "messages": [{"role": "user", "content": "Which?\nA) one\nB) two\nC) three"}],
        "reasoning_effort": "high",
        "max_completion_tokens": 100,
        "stream": false,
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f"}}]
    }));
    let (_, fired) = route(&config, &req, &[]);
    assert_eq!(
        fired,
        [
            "effort",
            "json",
            "options",
            "small_budget",
            "tokens",
            "tools"
        ]
    );
    assert_eq!(value_of(&config, &req, "options"), 3.0);
    assert_eq!(value_of(&config, &req, "tokens"), 8.0);
    let req = request(json!({
        "model": "x/auto", "stream": true, "max_tokens": 4000, "reasoning_effort": "low",
        "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "there"}]
    }));
    let (_, fired) = route(&config, &req, &[]);
    assert_eq!(fired, ["short", "streaming", "tokens", "turns"]);
}

#[test]
fn header_signals_read_only_their_values() {
    let config = router_config(
        json!({
            "gold": {"type": "header", "name": "x-tier", "values": ["gold", "platinum"]},
            "tenant": {"type": "header", "name": "x-tenant"}
        }),
        json!({}),
        catch_all(),
    );
    assert_eq!(config.signal_headers, ["x-tier", "x-tenant"]);
    let req = user("hello");
    let (_, fired) = route(&config, &req, &[Some("GOLD".into()), None]);
    assert_eq!(fired, ["gold"]);
    let (_, fired) = route(&config, &req, &[Some("silver".into()), Some("acme".into())]);
    assert_eq!(fired, ["tenant"]);
    for secret in ["authorization", "cookie"] {
        let err = error_of(json!({"auto": {
            "signals": {"s": {"type": "header", "name": secret}},
            "decisions": catch_all()
        }}));
        assert_eq!(err.path, "routers.auto.signals.s.name");
    }
}

fn banded() -> Config {
    router_config(
        json!({
            "hard_words": {"type": "keywords", "keywords": ["prove", "derive"]},
            "math": {"type": "structure", "detect": "math"},
            "mc": {"type": "structure", "detect": "multiple_choice"},
            "chat": {"type": "keywords", "keywords": ["hello"]}
        }),
        json!({"difficulty": {
            "weights": {"hard_words": 1.0, "math": {"weight": 0.5, "of": "value", "cap": 2}},
            "bands": [{"name": "low", "below": 1}, {"name": "medium", "below": 2},
                      {"name": "high"}]
        }}),
        json!([
            {"name": "hard_mc", "priority": 50, "recipe": "deep",
             "when": {"all": [{"signal": "mc"}, {"band": "difficulty", "in": ["medium", "high"]}]}},
            {"name": "greeting", "priority": 10, "recipe": "cheap",
             "when": {"all": [{"signal": "chat"}, {"not": {"signal": "mc"}}]}},
            {"name": "hard", "priority": 50, "recipe": "strict",
             "when": {"band": "difficulty", "is": "high"}},
            {"name": "default", "recipe": "cheap"}
        ]),
    )
}

#[test]
fn projections_sum_weights_and_map_scores_to_bands() {
    let config = banded();
    let router = config.routers.first().unwrap();
    let bands = |text: &str| {
        let route = router.route(&user(text), &[]).unwrap();
        router
            .band_names(&route)
            .map(|(p, b)| format!("{p}={b}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(bands("nothing"), ["difficulty=low"]);
    assert_eq!(bands("prove it"), ["difficulty=medium"]);
    // The math value is capped at 2: 1 + 0.5 * 2 = 2.
    assert_eq!(bands("prove $x^2 + 3^4 + 5^6 = 1$"), ["difficulty=high"]);
}

#[test]
fn the_highest_priority_match_wins_and_equal_priorities_keep_their_order() {
    let config = banded();
    let decide = |text: &str| route(&config, &user(text), &[]).0;
    assert_eq!(decide("hello"), "greeting");
    assert_eq!(decide("hello\nA) x\nB) y"), "default");
    assert_eq!(decide("prove\nA) x\nB) y"), "hard_mc");
    // Both `hard_mc` and `hard` match at priority 50: the one listed first wins.
    assert_eq!(decide("prove $x^2 + 3^4$\nA) x\nB) y"), "hard_mc");
    assert_eq!(decide("prove $x^2 + 3^4$"), "hard");
    let router = config.routers.first().unwrap();
    let route = router.route(&user("hello"), &[]).unwrap();
    let recipe = config.recipe(route.recipe).unwrap();
    assert_eq!(recipe.name, "cheap");
    let trace = router.trace(&route, &recipe.name);
    assert_eq!(trace["decision"], "greeting");
    assert_eq!(trace["bands"]["difficulty"]["band"], "low");
    assert_eq!(trace["signals"], json!({"chat": 1.0}));
    assert!(matches!(
        config.virtual_model("x/auto").unwrap().target,
        Target::Router(_)
    ));
}

#[test]
fn invalid_routing_configurations_name_the_field() {
    let signals = json!({"s": {"type": "keywords", "keywords": ["k"]}});
    let projections = json!({"p": {"weights": {"s": 1}, "bands": [
        {"name": "lo", "below": 1}, {"name": "hi"}]}});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([{"name": "a", "recipe": "cheap", "when": {"signal": "nope"}}, {"name": "d", "recipe": "cheap"}]),
            "routers.auto.decisions[0].when.signal",
            "unknown signal",
        ),
        (
            json!([{"name": "a", "recipe": "cheap", "when": {"band": "p", "is": "mid"}}, {"name": "d", "recipe": "cheap"}]),
            "routers.auto.decisions[0].when.is",
            "no band `mid`",
        ),
        (
            json!([{"name": "a", "recipe": "cheap", "when": {"band": "q", "is": "lo"}}, {"name": "d", "recipe": "cheap"}]),
            "routers.auto.decisions[0].when.band",
            "unknown projection",
        ),
        (
            json!([{"name": "d", "recipe": "nope"}]),
            "routers.auto.decisions[0].recipe",
            "unknown recipe",
        ),
        (
            json!([{"name": "a", "recipe": "cheap", "when": {"signal": "s"}}]),
            "routers.auto.decisions",
            "catch-all",
        ),
        (
            json!([{"name": "a", "recipe": "cheap"}, {"name": "b", "recipe": "cheap"}]),
            "routers.auto.decisions[1]",
            "second catch-all",
        ),
        (
            json!([{"name": "d", "recipe": "cheap", "priority": 5}, {"name": "a", "recipe": "cheap", "when": {"signal": "s"}}]),
            "routers.auto.decisions",
            "`a` can never match",
        ),
        (
            json!([{"name": "a", "recipe": "cheap", "when": {"signal": "s", "not": {"signal": "s"}}}, {"name": "d", "recipe": "cheap"}]),
            "routers.auto.decisions[0].when",
            "exactly one of",
        ),
        (
            json!([{"name": "a", "recipe": "cheap", "when": {"any": []}}, {"name": "d", "recipe": "cheap"}]),
            "routers.auto.decisions[0].when.any",
            "at least one",
        ),
        (
            json!([{"name": "a", "recipe": "cheap", "when": {"signal": "s"}}, {"name": "a", "recipe": "cheap"}]),
            "routers.auto.decisions[1].name",
            "listed twice",
        ),
    ];
    for (decisions, path, message) in cases {
        let err = error_of(json!({"auto": {
            "signals": signals, "projections": projections, "decisions": decisions
        }}));
        assert_eq!(err.path, path, "{err}");
        assert!(err.message.contains(message), "{err}");
    }
    let mut deep = json!({"signal": "s"});
    for _ in 0..9 {
        deep = json!({"not": deep});
    }
    let err = error_of(json!({"auto": {"signals": signals, "decisions": [
        {"name": "a", "recipe": "cheap", "when": deep}, {"name": "d", "recipe": "cheap"}]}}));
    assert!(err.message.contains("nest at most"), "{err}");

    let signal_cases: Vec<(Value, &str)> = vec![
        (
            json!({"type": "keyword", "keywords": ["k"]}),
            "routers.auto.signals.x.type",
        ),
        (
            json!({"type": "keywords", "keywords": []}),
            "routers.auto.signals.x.keywords",
        ),
        (
            json!({"type": "keywords", "keywords": [" "]}),
            "routers.auto.signals.x.keywords[0]",
        ),
        (
            json!({"type": "keywords", "keywords": ["k"], "min": 3, "max": 2}),
            "routers.auto.signals.x",
        ),
        (
            json!({"type": "keywords", "keywords": ["k"], "scope": "everyone"}),
            "routers.auto.signals.x.scope",
        ),
        (
            json!({"type": "keywords", "keywords": ["k"], "regex": "k"}),
            "routers.auto.signals.x.regex",
        ),
        (
            json!({"type": "structure", "detect": "poetry"}),
            "routers.auto.signals.x.detect",
        ),
        (
            json!({"type": "parameter", "name": "model"}),
            "routers.auto.signals.x.name",
        ),
        (
            json!({"type": "length", "unit": "words"}),
            "routers.auto.signals.x.unit",
        ),
        (
            json!({"type": "header", "name": "X-Tier"}),
            "routers.auto.signals.x.name",
        ),
    ];
    for (signal, path) in signal_cases {
        let err = error_of(json!({"auto": {"signals": {"x": signal}, "decisions": catch_all()}}));
        assert_eq!(err.path, path, "{err}");
    }

    let band_cases: Vec<(Value, &str)> = vec![
        (json!([{"name": "lo", "below": 1}]), "2-16 bands"),
        (json!([{"name": "lo"}, {"name": "hi"}]), "needs `below`"),
        (
            json!([{"name": "lo", "below": 1}, {"name": "hi", "below": 2}]),
            "no `below`",
        ),
        (
            json!([{"name": "lo", "below": 2}, {"name": "mid", "below": 1}, {"name": "hi"}]),
            "increase",
        ),
        (json!([{"name": "lo", "below": 1}, {"name": "lo"}]), "twice"),
    ];
    for (bands, message) in band_cases {
        let err = error_of(json!({"auto": {"signals": signals,
            "projections": {"p": {"weights": {"s": 1}, "bands": bands}},
            "decisions": catch_all()}}));
        assert!(err.message.contains(message), "{err}");
    }
    let err = error_of(json!({"auto": {"signals": signals,
        "projections": {"p": {"weights": {"nope": 1}, "bands": [{"name": "lo", "below": 1}, {"name": "hi"}]}},
        "decisions": catch_all()}}));
    assert_eq!(err.path, "routers.auto.projections.p.weights.nope");
}

#[test]
fn virtual_models_name_a_recipe_or_a_router() {
    let base = |vm: Value| {
        json!({
            "models": {"m": {"cluster": "c"}},
            "recipes": {"r": {"algorithm": "single", "models": ["m"]}},
            "routers": {"auto": {"decisions": [{"name": "d", "recipe": "r"}]}},
            "virtual_models": {"x/v": vm}
        })
        .to_string()
    };
    let parse = |vm: Value| Config::from_json(base(vm).as_bytes(), &|_| None);
    assert!(parse(json!({"router": "auto"})).is_ok());
    let err = parse(json!({"router": "nope"})).unwrap_err();
    assert_eq!(err.path, "virtual_models.x/v.router");
    let err = parse(json!({"router": "auto", "recipe": "r"})).unwrap_err();
    assert!(err.message.contains("either"), "{err}");
    let err = parse(json!({})).unwrap_err();
    assert!(err.message.contains("either"), "{err}");
}

#[test]
fn keywords_read_the_whole_text_and_regexes_a_bounded_prefix() {
    let config = router_config(
        json!({
            "k": {"type": "keywords", "keywords": ["needle"]},
            "r": {"type": "regex", "pattern": "needle"},
            "greedy": {"type": "regex", "pattern": "a+b|a"}
        }),
        json!({}),
        catch_all(),
    );
    let late = user(&("hay ".repeat(250_000) + "needle"));
    assert_eq!(value_of(&config, &late, "k"), 1.0);
    assert_eq!(value_of(&config, &late, "r"), 0.0, "past the regex prefix");
    let early = user(&("needle ".to_string() + &"hay ".repeat(250_000)));
    assert_eq!(value_of(&config, &early, "r"), 1.0);
    // Each match of `a+b|a` rescans the rest of the text; the prefix and the match cap keep
    // that bounded.
    let greedy = user(&"a".repeat(1 << 20));
    assert_eq!(
        value_of(&config, &greedy, "greedy"),
        crate::router::MAX_REGEX_MATCHES as f64
    );
}

/// The probe table of the shipped configuration: every request gets the decision, recipe and
/// signals the table expects. Requests go through the exchange the way the adapter feeds it:
/// only the allow-listed headers, as raw bytes.
#[test]
fn shipped_probes_route_as_expected() {
    use crate::exchange::{Flow, RequestHead};
    use crate::gateway::Gateway;
    use crate::time::Millis;

    let config = Config::from_json(include_bytes!("../../filters/auto.json"), &|_| None).unwrap();
    let allow_listed = config.signal_headers.clone();
    let gateway = Gateway::new(config, 1, 2);
    let probes: Value =
        serde_json::from_str(include_str!("../../integration/probes/auto.json")).unwrap();
    let probes = probes["probes"].as_array().unwrap();
    assert!(
        probes.len() >= 40,
        "the acceptance asks for at least 40 probes"
    );
    let mut failures = Vec::new();
    for probe in probes {
        let name = probe["name"].as_str().unwrap();
        let mut body = probe["request"].clone();
        if body.get("model").is_none() {
            body["model"] = json!("vllm-sr/auto");
        }
        let mut text = body.to_string();
        if let Some(pad) = probe.get("pad") {
            let filler = pad["text"]
                .as_str()
                .unwrap()
                .repeat(pad["times"].as_u64().unwrap() as usize);
            text = text.replace("{{PAD}}", &filler);
        }
        let headers: Vec<Option<Vec<u8>>> = allow_listed
            .iter()
            .map(|h| probe["headers"][h].as_str().map(|v| v.as_bytes().to_vec()))
            .collect();
        let now = Millis(1_000);
        let mut exchange = gateway.exchange(now);
        let head = RequestHead {
            method: b"POST",
            path: b"/v1/chat/completions",
            trace: None,
            signal_headers: &headers,
        };
        assert_eq!(exchange.on_request_headers(head, false, now), Flow::Pause);
        exchange.on_request_body(text.len(), text.as_bytes(), true, now);
        let Some((router, route)) = exchange.route() else {
            failures.push(format!(
                "{name}: not routed (replied {})",
                exchange.is_replied()
            ));
            continue;
        };
        let decision = router.decision_name(route);
        let recipe = &gateway.config().recipe(route.recipe).unwrap().name;
        let fired: Vec<&str> = router.fired_names(route).collect();
        let expect = &probe["expect"];
        let mut wrong = Vec::new();
        if expect["decision"] != decision {
            wrong.push(format!("decision {decision}"));
        }
        if expect.get("recipe").is_some_and(|r| r != recipe.as_str()) {
            wrong.push(format!("recipe {recipe}"));
        }
        for s in expect["fired"].as_array().into_iter().flatten() {
            if !fired.contains(&s.as_str().unwrap()) {
                wrong.push(format!("{s} did not fire"));
            }
        }
        for s in expect["not_fired"].as_array().into_iter().flatten() {
            if fired.contains(&s.as_str().unwrap()) {
                wrong.push(format!("{s} fired"));
            }
        }
        if !wrong.is_empty() {
            let bands: Vec<String> = router
                .band_names(route)
                .map(|(p, b)| format!("{p}={b}"))
                .collect();
            failures.push(format!(
                "{name}: {} (fired: {fired:?}; bands: {bands:?})",
                wrong.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn parameter_values_compare_numbers_as_numbers_and_scores_stay_finite() {
    let config = router_config(
        json!({
            "greedy": {"type": "parameter", "name": "temperature", "values": ["0"]},
            "choices": {"type": "parameter", "name": "n", "min": 2},
            "budget": {"type": "parameter", "name": "max_tokens"}
        }),
        json!({"size": {
            "weights": {"budget": {"weight": 1e6, "of": "value"},
                        "greedy": {"weight": -1e6, "of": "value"}},
            "bands": [{"name": "small", "below": 0}, {"name": "big"}]
        }}),
        catch_all(),
    );
    let req = request(json!({"model": "x/auto", "temperature": 0.0, "n": 2,
        "max_tokens": 1e300, "messages": [{"role": "user", "content": "x"}]}));
    let router = config.routers.first().unwrap();
    let route = router.route(&req, &[]).unwrap();
    let fired: Vec<&str> = router.fired_names(&route).collect();
    assert_eq!(fired, ["budget", "choices", "greedy"]);
    let (band, score) = route.bands[0];
    assert!(score.is_finite(), "{score}");
    assert_eq!(band, 1);
}

#[test]
fn keyword_lists_and_weights_are_bounded() {
    let many: Vec<String> = (0..1000).map(|i| format!("{i:0>255}")).collect();
    let err = error_of(json!({"auto": {
        "signals": {"a": {"type": "keywords", "keywords": many},
                    "b": {"type": "keywords", "keywords": many}},
        "decisions": catch_all()
    }}));
    assert_eq!(err.path, "routers.auto.signals");
    assert!(err.message.contains("per router"), "{err}");
    let err = error_of(json!({"auto": {
        "signals": {"s": {"type": "keywords", "keywords": ["k"]}},
        "projections": {"p": {"weights": {"s": 1e9},
            "bands": [{"name": "lo", "below": 1}, {"name": "hi"}]}},
        "decisions": catch_all()
    }}));
    assert_eq!(err.path, "routers.auto.projections.p.weights.s");
    assert!(err.message.contains("between"), "{err}");
}
