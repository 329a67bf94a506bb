//! Signals: numbers read from the request without any model, each with a rule for when it
//! fires. All keyword lists that read the same text in the same case mode share one
//! Aho–Corasick automaton, so the keywords cost one pass over that text, whatever their
//! number (`user` and `last_user` share one, searched once per distinct text).

use super::overlapping::Searcher;
use super::structure::{self, Detector, Shape};
use super::text::{estimate_tokens, is_whole_word, RequestText, Scope};
use crate::openai::ChatRequest;
use regex::Regex;
use serde_json::Value;
use std::cell::OnceCell;

/// Regular expression matches are counted up to this many (enough for any threshold).
pub const MAX_REGEX_MATCHES: usize = 100;
/// Regular expressions read at most this much of their scope's text. Finding each next match
/// may rescan the rest of the text, so counting matches costs up to matches × text: this
/// bound keeps the worst case of any pattern to a few milliseconds.
pub const MAX_REGEX_TEXT: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthUnit {
    Chars,
    Tokens,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    UserTurns,
    Messages,
    SystemPrompt,
    Tools,
}

impl Measure {
    pub const NAMES: &'static [&'static str] =
        &["user_turns", "messages", "system_prompt", "tools"];

    pub fn parse(name: &str) -> Option<Measure> {
        Some(match name {
            "user_turns" => Measure::UserTurns,
            "messages" => Measure::Messages,
            "system_prompt" => Measure::SystemPrompt,
            "tools" => Measure::Tools,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parameter {
    MaxTokens,
    Temperature,
    TopP,
    ReasoningEffort,
    Stream,
    /// Number of choices asked for.
    N,
}

impl Parameter {
    pub const NAMES: &'static [&'static str] = &[
        "max_tokens",
        "temperature",
        "top_p",
        "reasoning_effort",
        "stream",
        "n",
    ];

    pub fn parse(name: &str) -> Option<Parameter> {
        Some(match name {
            "max_tokens" => Parameter::MaxTokens,
            "temperature" => Parameter::Temperature,
            "top_p" => Parameter::TopP,
            "reasoning_effort" => Parameter::ReasoningEffort,
            "stream" => Parameter::Stream,
            "n" => Parameter::N,
            _ => return None,
        })
    }

    fn value(self, request: &ChatRequest) -> Option<&Value> {
        let field = |name| request.field(name).filter(|v| !v.is_null());
        match self {
            Parameter::MaxTokens => field("max_completion_tokens").or_else(|| field("max_tokens")),
            Parameter::Temperature => field("temperature"),
            Parameter::TopP => field("top_p"),
            Parameter::ReasoningEffort => field("reasoning_effort"),
            Parameter::Stream => field("stream"),
            Parameter::N => field("n"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum SignalKind {
    /// Counted by the keyword pass of the signal's [`KeywordGroup`].
    Keywords,
    Regex {
        regex: Regex,
        scope: Scope,
    },
    Length {
        unit: LengthUnit,
        scope: Scope,
    },
    Structure {
        detector: Detector,
        scope: Scope,
    },
    Conversation(Measure),
    /// With `values`, fires on equality (value 1/0); otherwise on the number.
    Parameter {
        parameter: Parameter,
        values: Option<Vec<String>>,
    },
    /// `header` indexes the configuration's allow-listed header names.
    Header {
        header: usize,
        values: Option<Vec<String>>,
    },
}

#[derive(Clone, Debug)]
pub struct Signal {
    pub name: String,
    pub kind: SignalKind,
    pub min: f64,
    pub max: f64,
}

/// Keyword lists of one case mode that read the same text: one scope, or `user` and
/// `last_user`, which are one text when the request has one user turn (searched once then,
/// and once per text otherwise).
#[derive(Clone, Debug)]
pub struct KeywordGroup {
    pub scopes: Vec<Scope>,
    pub case_sensitive: bool,
    pub automaton: Searcher,
    /// Per pattern: what a match of it counts for.
    pub owners: Vec<Owner>,
    /// The group holds every structure phrase (`Owner::Phrase`): its pass finds them for the
    /// shape of its text too, which then needs no phrase pass of its own.
    pub phrases: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A keyword of this signal, read in this scope, and whether it must match a whole word.
    Keyword {
        signal: usize,
        whole_word: bool,
        scope: Scope,
    },
    /// The structure phrase of this index.
    Phrase(usize),
}

/// What the signals read of one request.
pub struct Evaluated {
    pub values: Vec<f64>,
    pub fired: Vec<bool>,
}

pub fn evaluate(
    signals: &[Signal],
    groups: &[KeywordGroup],
    request: &ChatRequest,
    headers: &[Option<String>],
) -> Evaluated {
    let text = RequestText::new(request);
    let mut values = vec![0.0; signals.len()];
    // Per scope (as aliased), the structure phrases a keyword pass found in its lowercase text.
    let mut phrases_found: [Option<u64>; 4] = [None; 4];
    for group in groups {
        // The texts the group's scopes read: one, or two when `last_user` is not `user` (a
        // group holds those two scopes at most).
        let first = group.scopes.first().map(|s| text.alias(*s));
        let second = group
            .scopes
            .get(1)
            .map(|s| text.alias(*s))
            .filter(|s| Some(*s) != first);
        for searched in first.into_iter().chain(second) {
            let haystack = if group.case_sensitive {
                text.get(searched)
            } else {
                text.lowercase(searched)
            };
            let mut phrases = 0;
            group.automaton.each_match(haystack, |pattern, start, end| {
                match group.owners.get(pattern) {
                    Some(&Owner::Keyword {
                        signal,
                        whole_word,
                        scope,
                    }) => {
                        if text.alias(scope) != searched
                            || whole_word && !is_whole_word(haystack, start, end)
                        {
                            return;
                        }
                        if let Some(v) = values.get_mut(signal) {
                            *v += 1.0;
                        }
                    }
                    Some(&Owner::Phrase(index)) => {
                        structure::note_phrase(&mut phrases, index, haystack, start, end);
                    }
                    None => {}
                }
            });
            if group.phrases && !group.case_sensitive {
                if let Some(slot) = phrases_found.get_mut(searched.index()) {
                    *slot = Some(phrases);
                }
            }
        }
    }
    // Structure detectors share one scan per scope.
    let shapes: [OnceCell<Shape>; 4] = Default::default();
    let mut fired = Vec::with_capacity(signals.len());
    for (signal, value) in signals.iter().zip(values.iter_mut()) {
        let (v, fires) = match &signal.kind {
            SignalKind::Keywords => (*value, None),
            SignalKind::Regex { regex, scope } => {
                let haystack = prefix(text.get(*scope), MAX_REGEX_TEXT);
                let matches = regex.find_iter(haystack).take(MAX_REGEX_MATCHES).count();
                (matches as f64, None)
            }
            SignalKind::Length { unit, scope } => {
                let t = text.get(*scope);
                let n = match unit {
                    LengthUnit::Chars => t.chars().count() as u64,
                    LengthUnit::Tokens => estimate_tokens(t),
                };
                (n as f64, None)
            }
            SignalKind::Structure { detector, scope } => {
                let at = text.alias(*scope).index();
                let shape = shapes.get(at).map(|cell| {
                    cell.get_or_init(|| {
                        let (original, lower) = (text.get(*scope), text.lowercase(*scope));
                        match phrases_found.get(at).copied().flatten() {
                            Some(phrases) => Shape::scan_with_phrases(original, lower, phrases),
                            None => Shape::scan(original, lower),
                        }
                    })
                });
                let format = request.field("response_format");
                (shape.map_or(0.0, |s| detector.measure(s, format)), None)
            }
            SignalKind::Conversation(measure) => (conversation(*measure, &text, request), None),
            SignalKind::Parameter { parameter, values } => {
                parameter_signal(parameter.value(request), values.as_deref(), signal)
            }
            SignalKind::Header { header, values } => {
                let present = headers.get(*header).and_then(Option::as_deref);
                let hit = match (present, values) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(allowed)) => allowed.iter().any(|a| a.eq_ignore_ascii_case(v)),
                };
                (if hit { 1.0 } else { 0.0 }, Some(hit))
            }
        };
        *value = v;
        fired.push(fires.unwrap_or(signal.min <= v && v <= signal.max));
    }
    Evaluated { values, fired }
}

/// Value and whether it fires, for a request parameter.
fn parameter_signal(
    value: Option<&Value>,
    allowed: Option<&[String]>,
    signal: &Signal,
) -> (f64, Option<bool>) {
    let Some(value) = value else {
        return (0.0, Some(false));
    };
    if let Some(allowed) = allowed {
        // Numbers compare as numbers (`values: ["0"]` matches `0.0`), the rest as text.
        let hit = allowed.iter().any(|a| match value {
            Value::String(s) => a == s,
            Value::Number(n) => a.parse::<f64>().ok() == n.as_f64(),
            Value::Bool(b) => a == if *b { "true" } else { "false" },
            _ => false,
        });
        return (if hit { 1.0 } else { 0.0 }, Some(hit));
    }
    let number = match value {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match number {
        Some(n) => {
            let n = n.clamp(-MAX_VALUE, MAX_VALUE);
            (n, Some(signal.min <= n && n <= signal.max))
        }
        None => (0.0, Some(false)),
    }
}

/// Signal values are clamped to ±this, so weighted sums stay finite.
pub const MAX_VALUE: f64 = 1e12;

/// At most `max` bytes of `text`, cut on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn conversation(measure: Measure, text: &RequestText<'_>, request: &ChatRequest) -> f64 {
    fn role(m: &Value) -> Option<&str> {
        m.get("role").and_then(Value::as_str)
    }
    let messages = text.messages();
    let n = match measure {
        Measure::UserTurns => messages.iter().filter(|m| role(m) == Some("user")).count(),
        Measure::Messages => messages.len(),
        Measure::SystemPrompt => usize::from(
            messages
                .iter()
                .any(|m| matches!(role(m), Some("system" | "developer"))),
        ),
        Measure::Tools => {
            let count = |name| {
                request
                    .field(name)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            };
            count("tools") + count("functions")
        }
    };
    n as f64
}
