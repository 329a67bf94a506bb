//! `GET /v1/models`: the virtual models (and configured pass-through models) in OpenAI's list
//! format.

use crate::config::Config;
use serde_json::{json, Value};

fn model_object(id: &str, owned_by: &str) -> Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": owned_by })
}

pub fn list(config: &Config) -> Vec<u8> {
    let data: Vec<Value> = config
        .virtual_models
        .iter()
        .map(|v| model_object(&v.name, "looper"))
        .chain(
            config
                .listed_passthrough_models
                .iter()
                .map(|name| model_object(name, "passthrough")),
        )
        .collect();
    json!({ "object": "list", "data": data })
        .to_string()
        .into_bytes()
}

/// `GET /v1/models/{id}` for a virtual model.
pub fn retrieve(id: &str) -> Vec<u8> {
    model_object(id, "looper").to_string().into_bytes()
}
