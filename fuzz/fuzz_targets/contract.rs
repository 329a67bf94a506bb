//! Reading answers out of model text: `extract` and `check` of every output contract (choice,
//! exact, code, json, text), `normalize_exact`, and the prompt helpers that quote model text
//! (`fence`, `clip`). The first byte picks the contracts' parameters and the clip size; the
//! rest is the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use looper::contract::{normalize_exact, Contract};
use looper::prompt::{clip, fence};

const OPTIONS: [&str; 4] = ["ABCD", "AB", "ABCDEFGHIJ", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"];
const LANGUAGES: [Option<&str>; 4] = [None, Some("python"), Some("json"), Some("c++")];
const KEYS: [&[&str]; 4] = [&[], &["answer"], &["answer", "confidence"], &["steps"]];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let pick = usize::from(selector & 3);
    let contracts = [
        Contract::Choice {
            options: OPTIONS.get(pick).copied().unwrap_or("AB").chars().collect(),
        },
        Contract::Exact,
        Contract::Code {
            language: LANGUAGES.get(pick).copied().flatten().map(String::from),
        },
        Contract::Json {
            required_keys: KEYS
                .get(pick)
                .copied()
                .unwrap_or(&[])
                .iter()
                .map(|k| (*k).to_string())
                .collect(),
        },
        Contract::Text,
    ];
    for contract in &contracts {
        let extracted = contract.extract(&text);
        match (&extracted, contract.check(&text)) {
            (Some(e), Ok(c)) => assert_eq!(e, &c),
            (None, Err(reason)) => assert!(!reason.is_empty()),
            (e, c) => panic!("extract {e:?} but check {c:?}"),
        }
        let Some(found) = extracted else {
            continue;
        };
        assert!(
            found.span.start <= found.span.end && text.get(found.span.clone()).is_some(),
            "{} span {:?} in {} bytes",
            contract.name(),
            found.span,
            text.len()
        );
        if let Contract::Choice { options } = contract {
            let mut letters = found.value.chars();
            assert!(letters.next().is_some_and(|c| options.contains(&c)));
            assert!(letters.next().is_none());
        }
        if matches!(contract, Contract::Json { .. }) {
            assert!(serde_json::from_str::<serde_json::Value>(&found.value).is_ok());
        }
    }
    let _ = normalize_exact(&text);

    let fenced = fence("answer", "n0nce", &text);
    let lower = fenced.to_ascii_lowercase();
    assert_eq!(
        lower.matches("</answer-n0nce>").count(),
        1,
        "quoted text closes its fence: {fenced:?}"
    );
    let _ = clip(&text, usize::from(selector) * 4);
});
