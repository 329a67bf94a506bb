//! A small JSON reader that remembers where it is, so every configuration error can name the
//! exact field (`models.sim-small.timeout_ms`) instead of a line and column in a string that
//! the operator never wrote by hand (Istio turns `pluginConfig` YAML into JSON).

use serde_json::{Map, Value};
use std::fmt;

/// A configuration error: the dotted path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid configuration at `{}`: {}",
                self.path, self.message
            )
        }
    }
}

pub type ConfigResult<T> = Result<T, ConfigError>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value together with its path from the configuration root.
#[derive(Clone)]
pub struct Node<'a> {
    path: String,
    value: &'a Value,
}

impl<'a> Node<'a> {
    pub fn root(value: &'a Value) -> Self {
        Node {
            path: String::new(),
            value,
        }
    }

    /// A node for an array element or other value whose path the caller built.
    pub fn at(path: String, value: &'a Value) -> Self {
        Node { path, value }
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path.clone(), message)
    }

    fn wrong_type(&self, wanted: &str) -> ConfigError {
        self.error(format!("must be {wanted}, found {}", type_name(self.value)))
    }

    pub fn object(&self) -> ConfigResult<Object<'a>> {
        match self.value {
            Value::Object(map) => Ok(Object {
                path: self.path.clone(),
                map,
            }),
            _ => Err(self.wrong_type("an object")),
        }
    }

    pub fn array(&self) -> ConfigResult<&'a Vec<Value>> {
        match self.value {
            Value::Array(items) => Ok(items),
            _ => Err(self.wrong_type("an array")),
        }
    }

    /// The elements of an array, each with its `path[i]`.
    pub fn elements(&self) -> ConfigResult<Vec<Node<'a>>> {
        Ok(self
            .array()?
            .iter()
            .enumerate()
            .map(|(i, value)| Node::at(format!("{}[{i}]", self.path), value))
            .collect())
    }

    pub fn string(&self) -> ConfigResult<&'a str> {
        match self.value {
            Value::String(s) => Ok(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    pub fn non_empty_string(&self, max_len: usize) -> ConfigResult<&'a str> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.error("must not be empty"));
        }
        if s.len() > max_len {
            return Err(self.error(format!("must be at most {max_len} bytes long")));
        }
        Ok(s)
    }

    pub fn bool(&self) -> ConfigResult<bool> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.wrong_type("a boolean")),
        }
    }

    /// An integer within `[min, max]`.
    pub fn integer(&self, min: u64, max: u64) -> ConfigResult<u64> {
        match self.value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.error(format!("must be an integer between {min} and {max}"))),
        }
    }

    /// A finite number within `[min, max]`.
    pub fn number(&self, min: f64, max: f64) -> ConfigResult<f64> {
        match self.value.as_f64() {
            Some(n) if n.is_finite() && n >= min && n <= max => Ok(n),
            _ => Err(self.error(format!("must be a number between {min} and {max}"))),
        }
    }
}

/// A JSON object with its path; rejects keys it does not know so typos do not pass silently.
pub struct Object<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Object<'a> {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path.clone(), message)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Fails on the first key outside `allowed`, naming it and listing what is accepted.
    pub fn deny_unknown(&self, allowed: &[&str]) -> ConfigResult<()> {
        for key in self.map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    join(&self.path, key),
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    pub fn field(&self, key: &str) -> Option<Node<'a>> {
        self.map
            .get(key)
            .map(|value| Node::at(join(&self.path, key), value))
    }

    pub fn required(&self, key: &str) -> ConfigResult<Node<'a>> {
        self.field(key)
            .ok_or_else(|| ConfigError::new(join(&self.path, key), "is required"))
    }

    /// Entries in key order (serde_json keeps objects sorted), each with its own path.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, Node<'a>)> + '_ {
        self.map
            .iter()
            .map(move |(key, value)| (key.as_str(), Node::at(join(&self.path, key), value)))
    }

    pub fn opt_string(&self, key: &str) -> ConfigResult<Option<&'a str>> {
        self.field(key).map(|f| f.string()).transpose()
    }

    pub fn opt_bool(&self, key: &str) -> ConfigResult<Option<bool>> {
        self.field(key).map(|f| f.bool()).transpose()
    }

    pub fn opt_integer(&self, key: &str, min: u64, max: u64) -> ConfigResult<Option<u64>> {
        self.field(key).map(|f| f.integer(min, max)).transpose()
    }

    pub fn opt_number(&self, key: &str, min: f64, max: f64) -> ConfigResult<Option<f64>> {
        self.field(key).map(|f| f.number(min, max)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_nested_field() {
        let value = json!({"models": {"a": {"timeout_ms": -1}}});
        let root = Node::root(&value).object().unwrap();
        let models = root.required("models").unwrap().object().unwrap();
        let a = models.required("a").unwrap().object().unwrap();
        let err = a.opt_integer("timeout_ms", 1, 10).unwrap_err();
        assert_eq!(err.path, "models.a.timeout_ms");
        assert!(err.to_string().contains("models.a.timeout_ms"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let value = json!({"timout_ms": 5});
        let obj = Node::root(&value).object().unwrap();
        let err = obj.deny_unknown(&["timeout_ms"]).unwrap_err();
        assert_eq!(err.path, "timout_ms");
        assert!(err.message.contains("timeout_ms"));
    }

    #[test]
    fn wrong_types_say_what_was_found() {
        let value = json!([1]);
        let err = Node::root(&value).object().err().unwrap();
        assert!(err.message.contains("an array"), "{}", err.message);
    }
}
