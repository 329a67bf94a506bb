//! The streaming scan for the top-level `model` of a request body (`ModelScanner`), fed the
//! body split at fuzzer-chosen points (see `looper_fuzz::chunked`). The result must not depend
//! on the split, and on a body that is a valid JSON object without duplicate top-level keys it
//! must agree with the full parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use looper::model_scan::{ModelScanner, Scan, MAX_MODEL};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// The top-level keys of a JSON object in order, with the `model` values.
struct TopLevel {
    keys: Vec<String>,
    model: Option<Value>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut top = TopLevel {
                    keys: Vec::new(),
                    model: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "model" {
                        top.model = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                    top.keys.push(key);
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

fuzz_target!(|data: &[u8]| {
    let (payload, chunks) = looper_fuzz::chunked(data);
    let mut split = ModelScanner::default();
    for chunk in &chunks {
        split.feed(chunk);
    }
    let result = split.result().clone();
    let whole = ModelScanner::default().feed(payload).clone();
    assert_eq!(result, whole, "the scan depends on the split");
    if let Scan::Model(m) = &result {
        assert!(m.len() <= MAX_MODEL);
    }

    let Ok(top) = serde_json::from_slice::<TopLevel>(payload) else {
        return;
    };
    let mut keys = top.keys.clone();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() != top.keys.len() {
        return; // duplicate keys: the full parse keeps the last, the scan the first
    }
    match (&top.model, &result) {
        (Some(Value::String(s)), Scan::Model(m)) => assert_eq!(s, m),
        (Some(Value::String(_)), Scan::LongModel) => {}
        (Some(Value::String(s)), other) => panic!("model {s:?} scanned as {other:?}"),
        (_, Scan::Unknown) => {}
        (model, other) => panic!("model {model:?} scanned as {other:?}"),
    }
});
