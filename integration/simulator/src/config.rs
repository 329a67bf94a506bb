//! The simulator's JSON config: parsing, defaults and validation.
//!
//! Parsing is hand-written over `serde_json::Value` (no serde derive, which
//! keeps compile times down) with a small [`Fields`] helper that tracks which
//! keys were consumed, so any unknown key is reported with its full path
//! (`models.sim-small.failure_rates.foo`). To add a setting: add a struct
//! field, read it in the matching `parse_*` function, document it in the
//! README. Nested objects get their own struct and `parse_*` function.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::dialect::Dialect;
use crate::faults::{FailureRates, FaultKind};
use crate::items::{valid_topic, ItemBank, TOPIC_RULE};
use crate::questions::{Calibration, ErrorModel, Quality};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub seed: u64,
    pub models: BTreeMap<String, ModelConfig>,
    /// ρ of the item-response error model, in `[0, 1)`.
    pub correlation: f64,
    /// κ of the item-response error model, > 0.
    pub confidence_spread: f64,
    /// The `item_bank` path as written (relative to the config file's
    /// directory); [`Config::load`] reads it into `items`.
    pub item_bank: Option<String>,
    /// The loaded item bank (empty unless one was given).
    pub items: Arc<ItemBank>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Fixed delay before answering.
    pub latency_ms: u64,
    /// Plus a uniform draw from `[0, latency_jitter_ms]`.
    pub latency_jitter_ms: u64,
    /// Delay before each token chunk of a stream.
    pub token_latency_ms: u64,
    /// Words in a generated answer (after the `[model]` prefix word).
    pub answer_words: u64,
    /// Whether the model returns logprobs when asked.
    pub logprobs: bool,
    /// Centre (mean) of generated token logprobs; `<= 0`.
    pub mean_logprob: f64,
    /// How long a `hang` fault holds the request.
    pub hang_ms: u64,
    /// `slow` fault: bytes per write.
    pub slow_chunk_bytes: u64,
    /// `slow` fault: pause between writes.
    pub slow_interval_ms: u64,
    pub failure_rates: FailureRates,
    /// Accuracy, calibration, verifier and judge settings (flat keys in JSON).
    pub quality: Quality,
    /// Ignore the request's `seed` and the choice index: every sample of an
    /// item is the same answer.
    pub deterministic: bool,
    /// The wire format of its responses.
    pub dialect: Dialect,
    /// The context size in tokens: a request with more prompt tokens gets
    /// a 400 (`None`: unlimited).
    pub context_tokens: Option<u64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            latency_ms: 0,
            latency_jitter_ms: 0,
            token_latency_ms: 0,
            answer_words: 12,
            logprobs: true,
            mean_logprob: -0.3,
            hang_ms: 120_000,
            slow_chunk_bytes: 10,
            slow_interval_ms: 50,
            failure_rates: FailureRates::new(),
            quality: Quality::default(),
            deterministic: false,
            dialect: Dialect::OpenAi,
            context_tokens: None,
        }
    }
}

/// A config problem, always naming the offending field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid config: {}", self.message)
        } else {
            write!(f, "invalid config at `{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        message: message.into(),
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Upper bound for any millisecond setting (one day), so sums cannot
/// overflow and typos like `1e12` are caught.
const MAX_MS: u64 = 86_400_000;
/// Upper bound for `answer_words`.
const MAX_ANSWER_WORDS: u64 = 1_000_000;
/// Bound on `ability` and `discrimination` (catches typos).
const MAX_IRT: f64 = 100.0;
/// Bound on `confidence_spread`.
const MAX_SPREAD: f64 = 1e6;
/// Upper bound for `context_tokens`.
const MAX_CONTEXT_TOKENS: u64 = 1 << 30;
/// At most this many entries in a model's `topic_skills`.
pub const MAX_TOPICS: usize = 1000;

impl Config {
    pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| err("", format!("not valid JSON: {e}")))?;
        Config::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Config, ConfigError> {
        let mut f = Fields::new("", value)?;
        let seed = f.u64("seed", 0, u64::MAX)?;
        let defaults = ErrorModel::default();
        let correlation = f.f64("correlation", defaults.correlation)?;
        if !(0.0..1.0).contains(&correlation) {
            return Err(err(&f.path_of("correlation"), "must be in [0, 1)"));
        }
        let confidence_spread = f.f64("confidence_spread", defaults.confidence_spread)?;
        if !(confidence_spread > 0.0 && confidence_spread <= MAX_SPREAD) {
            return Err(err(
                &f.path_of("confidence_spread"),
                format!("must be above 0 and at most {MAX_SPREAD}"),
            ));
        }
        let item_bank = f.str("item_bank")?.map(str::to_string);
        if item_bank.as_deref() == Some("") {
            return Err(err(&f.path_of("item_bank"), "must not be empty"));
        }
        let models_path = f.path_of("models");
        let models_value = f
            .take("models")
            .ok_or_else(|| err(&models_path, "missing required field"))?;
        let models_map = models_value
            .as_object()
            .ok_or_else(|| err(&models_path, "expected an object of model name -> settings"))?;
        if models_map.is_empty() {
            return Err(err(&models_path, "at least one model is required"));
        }
        let mut models = BTreeMap::new();
        for (name, v) in models_map {
            let path = join(&models_path, name);
            validate_model_name(&path, name)?;
            models.insert(name.clone(), parse_model(&path, v)?);
        }
        f.finish()?;
        Ok(Config {
            seed,
            models,
            correlation,
            confidence_spread,
            item_bank,
            items: Arc::new(ItemBank::default()),
        })
    }

    /// Reads the config file at `config_path` and its item bank: the
    /// `items` file when given (the `--items` flag), else the config's
    /// `item_bank`, relative to the config file's directory. The message
    /// names the file and the field.
    pub fn load(config_path: &str, items: Option<&str>) -> Result<Config, String> {
        let text = std::fs::read_to_string(config_path)
            .map_err(|e| format!("cannot read config {config_path}: {e}"))?;
        let mut config = Config::from_json_str(&text).map_err(|e| format!("{config_path}: {e}"))?;
        let bank = match (items, &config.item_bank) {
            (Some(path), _) => Some(Path::new(path).to_path_buf()),
            (None, Some(path)) => Some(
                Path::new(config_path)
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(path),
            ),
            (None, None) => None,
        };
        if let Some(path) = bank {
            config.items = Arc::new(ItemBank::load(&path)?);
        }
        Ok(config)
    }

    /// The population-wide settings of the error model.
    pub fn error_model(&self) -> ErrorModel {
        ErrorModel {
            item_seed: self.seed,
            correlation: self.correlation,
            confidence_spread: self.confidence_spread,
        }
    }
}

fn validate_model_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 256 {
        return Err(err(path, "model names must be 1..=256 bytes"));
    }
    // `]` would end a `[sim:...@MODEL=...]` directive early and `=` would
    // split it in the wrong place.
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '[' | ']' | '='))
    {
        return Err(err(
            path,
            format!(
                "model name contains {c:?}; whitespace, control characters, '[', ']' and '=' are not allowed"
            ),
        ));
    }
    Ok(())
}

fn parse_model(path: &str, v: &Value) -> Result<ModelConfig, ConfigError> {
    let d = ModelConfig::default();
    let mut f = Fields::new(path, v)?;
    let mut m = ModelConfig {
        latency_ms: f.u64("latency_ms", d.latency_ms, MAX_MS)?,
        latency_jitter_ms: f.u64("latency_jitter_ms", d.latency_jitter_ms, MAX_MS)?,
        token_latency_ms: f.u64("token_latency_ms", d.token_latency_ms, MAX_MS)?,
        answer_words: f.u64("answer_words", d.answer_words, MAX_ANSWER_WORDS)?,
        logprobs: f.bool("logprobs", d.logprobs)?,
        mean_logprob: f.f64("mean_logprob", d.mean_logprob)?,
        hang_ms: f.u64("hang_ms", d.hang_ms, MAX_MS)?,
        slow_chunk_bytes: f.u64("slow_chunk_bytes", d.slow_chunk_bytes, 1 << 20)?,
        slow_interval_ms: f.u64("slow_interval_ms", d.slow_interval_ms, 60_000)?,
        failure_rates: FailureRates::new(),
        quality: Quality {
            accuracy: f.probability("accuracy", d.quality.accuracy)?,
            calibration: match f.str("calibration")? {
                None => d.quality.calibration,
                Some(name) => Calibration::parse(name).ok_or_else(|| {
                    err(
                        &f.path_of("calibration"),
                        "expected calibrated, overconfident, underconfident or random",
                    )
                })?,
            },
            verifier_sensitivity: f
                .probability("verifier_sensitivity", d.quality.verifier_sensitivity)?,
            verifier_specificity: f
                .probability("verifier_specificity", d.quality.verifier_specificity)?,
            judge_skill: f.probability("judge_skill", d.quality.judge_skill)?,
            synth_skill: f.probability("synth_skill", d.quality.synth_skill)?,
            judge_garbage_rate: f
                .probability("judge_garbage_rate", d.quality.judge_garbage_rate)?,
            planner_error_rate: f
                .probability("planner_error_rate", d.quality.planner_error_rate)?,
            ability: f.opt_f64("ability")?,
            discrimination: f.f64("discrimination", d.quality.discrimination)?,
            guess_floor: f.probability("guess_floor", d.quality.guess_floor)?,
            topic_skills: BTreeMap::new(),
        },
        deterministic: f.bool("deterministic", d.deterministic)?,
        dialect: match f.str("dialect")? {
            None => d.dialect,
            Some(name) => Dialect::parse(name).ok_or_else(|| {
                err(
                    &f.path_of("dialect"),
                    format!("expected {}", Dialect::NAMES),
                )
            })?,
        },
        context_tokens: f.opt_u64("context_tokens", 1, MAX_CONTEXT_TOKENS)?,
    };
    if m.quality.ability.is_some_and(|t| t.abs() > MAX_IRT) {
        return Err(err(
            &f.path_of("ability"),
            format!("must be between -{MAX_IRT} and {MAX_IRT}"),
        ));
    }
    if !(0.0..=MAX_IRT).contains(&m.quality.discrimination) {
        return Err(err(
            &f.path_of("discrimination"),
            format!("must be between 0 and {MAX_IRT}"),
        ));
    }
    if !(-50.0..=0.0).contains(&m.mean_logprob) {
        return Err(err(
            &f.path_of("mean_logprob"),
            "must be between -50 and 0 inclusive",
        ));
    }
    if m.slow_chunk_bytes == 0 {
        return Err(err(&f.path_of("slow_chunk_bytes"), "must be at least 1"));
    }
    if let Some(rates) = f.take("failure_rates") {
        m.failure_rates = parse_rates(&f.path_of("failure_rates"), rates)?;
    }
    let skills_path = f.path_of("topic_skills");
    if let Some(skills) = f.take("topic_skills") {
        if m.quality.ability.is_none() {
            return Err(err(
                &skills_path,
                "needs an `ability` (topic skills shift it)",
            ));
        }
        m.quality.topic_skills = parse_topic_skills(&skills_path, skills)?;
    }
    f.finish()?;
    Ok(m)
}

/// `{"<topic>": δ}`: each δ a number in `[-MAX_IRT, MAX_IRT]`, like `ability`.
fn parse_topic_skills(path: &str, v: &Value) -> Result<BTreeMap<String, f64>, ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| err(path, "expected an object of topic -> ability shift"))?;
    if map.len() > MAX_TOPICS {
        return Err(err(
            path,
            format!("{} topics; at most {MAX_TOPICS} are allowed", map.len()),
        ));
    }
    let mut skills = BTreeMap::new();
    for (topic, delta) in map {
        let at = join(path, topic);
        if !valid_topic(topic) {
            return Err(err(&at, TOPIC_RULE));
        }
        let delta = delta
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| err(&at, "expected a number"))?;
        if delta.abs() > MAX_IRT {
            return Err(err(
                &at,
                format!("must be between -{MAX_IRT} and {MAX_IRT}"),
            ));
        }
        skills.insert(topic.clone(), delta);
    }
    Ok(skills)
}

fn parse_rates(path: &str, v: &Value) -> Result<FailureRates, ConfigError> {
    let mut f = Fields::new(path, v)?;
    let mut rates = FailureRates::new();
    let mut sum = 0.0;
    for kind in FaultKind::ALL {
        let p = f.f64(kind.name(), 0.0)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(err(
                &f.path_of(kind.name()),
                "must be a probability in [0, 1]",
            ));
        }
        if p > 0.0 {
            rates.insert(kind, p);
            sum += p;
        }
    }
    f.finish()?;
    if sum > 1.0 + 1e-9 {
        return Err(err(
            path,
            format!("rates sum to {sum}, which is more than 1"),
        ));
    }
    Ok(rates)
}

/// Reads the fields of one JSON object, remembering which were used so
/// that [`Fields::finish`] can reject unknown ones. `null` counts as absent.
pub(crate) struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(path: &str, v: &'a Value) -> Result<Self, ConfigError> {
        let map = v
            .as_object()
            .ok_or_else(|| err(path, "expected a JSON object"))?;
        Ok(Fields {
            path: path.to_string(),
            map,
            known: Vec::new(),
        })
    }

    pub(crate) fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(crate) fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn u64(
        &mut self,
        key: &'static str,
        default: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(n),
                Some(_) => Err(err(&self.path_of(key), format!("must be at most {max}"))),
                None => Err(err(&self.path_of(key), "expected a non-negative integer")),
            },
        }
    }

    pub(crate) fn f64(&mut self, key: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(&self.path_of(key), "expected a number")),
        }
    }

    /// An integer in `[min, max]`, or `None` when absent.
    pub(crate) fn opt_u64(
        &mut self,
        key: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(err(
                    &self.path_of(key),
                    format!("expected an integer between {min} and {max}"),
                )),
            },
        }
    }

    /// A finite number, or `None` when absent.
    pub(crate) fn opt_f64(&mut self, key: &'static str) -> Result<Option<f64>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| err(&self.path_of(key), "expected a number")),
        }
    }

    pub(crate) fn probability(
        &mut self,
        key: &'static str,
        default: f64,
    ) -> Result<f64, ConfigError> {
        let p = self.f64(key, default)?;
        if (0.0..=1.0).contains(&p) {
            Ok(p)
        } else {
            Err(err(&self.path_of(key), "must be a probability in [0, 1]"))
        }
    }

    pub(crate) fn str(&mut self, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| err(&self.path_of(key), "expected a string")),
        }
    }

    pub(crate) fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| err(&self.path_of(key), "expected true or false")),
        }
    }

    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        let mut unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !self.known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(key) => Err(err(
                &self.path_of(key),
                format!("unknown field (known fields: {})", self.known.join(", ")),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_model_settings_parse() {
        let c = Config::from_json_str(
            r#"{"seed":3,"correlation":0.8,"confidence_spread":10,"item_bank":"bank.json",
            "models":{"m":{"ability":1.5,"discrimination":2,"guess_floor":0.25,
            "deterministic":true}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.error_model(),
            ErrorModel {
                item_seed: 3,
                correlation: 0.8,
                confidence_spread: 10.0
            }
        );
        assert_eq!(c.item_bank.as_deref(), Some("bank.json"));
        assert!(c.items.is_empty());
        let m = &c.models["m"];
        assert_eq!(m.quality.ability, Some(1.5));
        assert_eq!(m.quality.discrimination, 2.0);
        assert_eq!(m.quality.guess_floor, 0.25);
        assert!(m.deterministic);
        assert_eq!(m.dialect, Dialect::OpenAi);
        assert_eq!(m.context_tokens, None);
        let d = Config::from_json_str(r#"{"models":{"m":{}}}"#).unwrap();
        assert_eq!(d.error_model(), ErrorModel::default());
        assert_eq!(d.item_bank, None);
    }

    #[test]
    fn topic_skills_parse() {
        let c = Config::from_json_str(
            r#"{"models":{"m":{"ability":1,"topic_skills":{"code":2.5,"math":-0.5,"x":0}},
            "n":{"ability":0}}}"#,
        )
        .unwrap();
        let q = &c.models["m"].quality;
        assert_eq!(q.topic_skills.len(), 3);
        assert_eq!(q.topic_skill(Some("code")), 2.5);
        assert_eq!(q.topic_skill(Some("math")), -0.5);
        assert_eq!(q.topic_skill(Some("chat")), 0.0);
        assert_eq!(q.topic_skill(None), 0.0);
        assert!(c.models["n"].quality.topic_skills.is_empty());
        // `null` counts as absent, as for every field.
        let c = Config::from_json_str(r#"{"models":{"m":{"topic_skills":null}}}"#).unwrap();
        assert!(c.models["m"].quality.topic_skills.is_empty());
    }

    #[test]
    fn dialect_and_context_tokens_parse() {
        let c = Config::from_json_str(
            r#"{"models":{"l":{"dialect":"llama_cpp","context_tokens":2048},
            "o":{"dialect":"openai","context_tokens":1},"n":{"dialect":null}}}"#,
        )
        .unwrap();
        assert_eq!(c.models["l"].dialect, Dialect::LlamaCpp);
        assert_eq!(c.models["l"].context_tokens, Some(2048));
        assert_eq!(c.models["o"].dialect, Dialect::OpenAi);
        assert_eq!(c.models["o"].context_tokens, Some(1));
        assert_eq!(c.models["n"], ModelConfig::default());
        let e = Config::from_json_str(r#"{"models":{"m":{"dialect":"llama"}}}"#).unwrap_err();
        assert_eq!(e.path, "models.m.dialect");
        assert!(e.message.contains("openai or llama_cpp"), "{e}");
        let e = Config::from_json_str(r#"{"models":{"m":{"context_tokens":0}}}"#).unwrap_err();
        assert_eq!(e.path, "models.m.context_tokens");
        assert!(e.message.contains("between 1 and"), "{e}");
        // Unknown keys next to them are still named.
        let e = Config::from_json_str(r#"{"models":{"m":{"dialekt":"openai"}}}"#).unwrap_err();
        assert_eq!(e.path, "models.m.dialekt");
        assert!(e.message.contains("dialect, context_tokens"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_json_str(r#"{"models":{"m":{}}}"#).unwrap();
        assert_eq!(c.seed, 0);
        assert_eq!(c.models["m"], ModelConfig::default());
    }

    #[test]
    fn full_model_parses() {
        let c = Config::from_json_str(
            r#"{"seed":7,"models":{"m":{"latency_ms":5,"latency_jitter_ms":2,
            "token_latency_ms":1,"answer_words":3,"logprobs":false,"mean_logprob":-1.5,
            "hang_ms":10,"slow_chunk_bytes":4,"slow_interval_ms":1,
            "failure_rates":{"status_500":0.1,"hang":0.2,"huge":0.0},
            "accuracy":0.55,"calibration":"overconfident","verifier_sensitivity":1,
            "verifier_specificity":0.5,"judge_skill":0,"synth_skill":0.25,
            "judge_garbage_rate":0.5,"planner_error_rate":0.25}}}"#,
        )
        .unwrap();
        let m = &c.models["m"];
        assert_eq!(c.seed, 7);
        assert_eq!(m.latency_ms, 5);
        assert!(!m.logprobs);
        assert_eq!(m.failure_rates.len(), 2);
        assert_eq!(m.failure_rates[&FaultKind::Hang], 0.2);
        assert_eq!(
            m.quality,
            Quality {
                accuracy: 0.55,
                calibration: Calibration::Overconfident,
                verifier_sensitivity: 1.0,
                verifier_specificity: 0.5,
                judge_skill: 0.0,
                synth_skill: 0.25,
                judge_garbage_rate: 0.5,
                planner_error_rate: 0.25,
                ability: None,
                discrimination: 1.0,
                guess_floor: 0.0,
                topic_skills: BTreeMap::new(),
            }
        );
    }

    fn error_path(text: &str) -> String {
        Config::from_json_str(text).unwrap_err().path
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            error_path(r#"{"models":{"m":{"failure_rates":{"foo":1}}}}"#),
            "models.m.failure_rates.foo"
        );
        assert_eq!(
            error_path(r#"{"models":{"m":{"latency":1}}}"#),
            "models.m.latency"
        );
        assert_eq!(error_path(r#"{"modls":{}, "models":{"m":{}}}"#), "modls");
        assert_eq!(error_path(r#"{"seed":-1,"models":{"m":{}}}"#), "seed");
        assert_eq!(
            error_path(r#"{"models":{"m":{"latency_ms":1.5}}}"#),
            "models.m.latency_ms"
        );
        assert_eq!(
            error_path(r#"{"models":{"m":{"mean_logprob":0.5}}}"#),
            "models.m.mean_logprob"
        );
        assert_eq!(
            error_path(r#"{"models":{"m":{"logprobs":"yes"}}}"#),
            "models.m.logprobs"
        );
        assert_eq!(
            error_path(r#"{"models":{"m":{"failure_rates":{"hang":1.5}}}}"#),
            "models.m.failure_rates.hang"
        );
        assert_eq!(
            error_path(r#"{"models":{"m":{"failure_rates":{"hang":0.6,"reset":0.6}}}}"#),
            "models.m.failure_rates"
        );
        for (key, bad) in [
            ("accuracy", "1.1"),
            ("accuracy", "\"high\""),
            ("verifier_sensitivity", "-0.1"),
            ("verifier_specificity", "2"),
            ("judge_skill", "true"),
            ("synth_skill", "1.5"),
            ("judge_garbage_rate", "-1"),
            ("planner_error_rate", "1.5"),
            ("planner_error_rate", "\"often\""),
            ("calibration", "\"meh\""),
            ("calibration", "1"),
            ("ability", "\"high\""),
            ("ability", "1000"),
            ("discrimination", "-1"),
            ("guess_floor", "1.5"),
            ("deterministic", "1"),
            ("dialect", "\"llama.cpp\""),
            ("dialect", "\"OpenAI\""),
            ("dialect", "1"),
            ("dialect", "true"),
            ("context_tokens", "0"),
            ("context_tokens", "-1"),
            ("context_tokens", "1.5"),
            ("context_tokens", "\"2048\""),
            ("context_tokens", "1e12"),
            ("context_tokens", "2000000000"),
        ] {
            assert_eq!(
                error_path(&format!(r#"{{"models":{{"m":{{"{key}":{bad}}}}}}}"#)),
                format!("models.m.{key}")
            );
        }
        for (key, bad) in [
            ("correlation", "1"),
            ("correlation", "-0.1"),
            ("confidence_spread", "0"),
            ("confidence_spread", "\"wide\""),
            ("item_bank", "\"\""),
            ("item_bank", "3"),
        ] {
            assert_eq!(
                error_path(&format!(r#"{{"{key}":{bad},"models":{{"m":{{}}}}}}"#)),
                key
            );
        }
        for (bad, path) in [
            (r#"{"code":"strong"}"#, "models.m.topic_skills.code"),
            (r#"{"code":1000}"#, "models.m.topic_skills.code"),
            (r#"{"code":-101}"#, "models.m.topic_skills.code"),
            (r#"{"code":null}"#, "models.m.topic_skills.code"),
            (r#"{"two words":1}"#, "models.m.topic_skills.two words"),
            (r#"{"":1}"#, "models.m.topic_skills."),
            (r#"[1]"#, "models.m.topic_skills"),
            (r#"2.5"#, "models.m.topic_skills"),
        ] {
            let config = format!(r#"{{"models":{{"m":{{"ability":1,"topic_skills":{bad}}}}}}}"#);
            assert_eq!(error_path(&config), path, "{bad}");
        }
        let e =
            Config::from_json_str(r#"{"models":{"m":{"topic_skills":{"code":1}}}}"#).unwrap_err();
        assert_eq!(e.path, "models.m.topic_skills");
        assert!(e.message.contains("ability"), "{e}");
        assert_eq!(error_path(r#"{"models":{"a b":{}}}"#), "models.a b");
        assert_eq!(error_path(r#"{"models":{}}"#), "models");
        assert_eq!(error_path(r#"{}"#), "models");
        assert_eq!(error_path(r#"[]"#), "");
        assert_eq!(error_path(r#"{"models":{"m":[]}}"#), "models.m");
    }
}
