//! Chat completion requests: validation, deterministic answer generation,
//! and rendering as a JSON `chat.completion` or as SSE chunks.
//!
//! Token model: a content string is always words joined by single spaces;
//! token 0 is the first word, every later token is `" " + word`, so the
//! tokens concatenate back to the content exactly. Prompt tokens are the
//! whitespace-separated words of all message text plus 3 per message.

use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::directives::Directives;
use crate::error::ApiError;
use crate::faults::FaultKind;
use crate::rng::{Fnv64, SplitMix64};

pub const MAX_N: u64 = 8;
pub const MAX_TOP_LOGPROBS: u64 = 20;
/// Approximate content size of a `huge` answer.
pub const HUGE_BYTES: usize = 12 * 1024 * 1024;
/// Size of the block a `huge` answer repeats (and of its SSE pieces).
const HUGE_STREAM_PIECE: usize = 64 * 1024;
/// Stands in for the invalid bytes of a `bad_utf8` answer until after
/// serialisation (JSON strings cannot hold invalid UTF-8).
const BAD_UTF8_MARKER: &str = "__looper_sim_bad_utf8__";
const BAD_UTF8_BYTES: &[u8] = b"caf\xc3\x28\xff\xfe";
/// Body of a `garbage` fault: not JSON, not even UTF-8.
pub const GARBAGE: &[u8] = b"<html><body>502 upstream \xff\xfe\x80 garbage {{{ not json";

/// Answer vocabulary. Deliberately mixes ASCII with accented Latin, CJK,
/// RTL scripts, Greek/Cyrillic, symbols and emoji (4-byte UTF-8) so that
/// UTF-8 handling downstream is exercised. No word contains whitespace.
pub const VOCAB: &[&str] = &[
    "the",
    "model",
    "answer",
    "is",
    "likely",
    "because",
    "signal",
    "loop",
    "verify",
    "result",
    "consensus",
    "draft",
    "naïve",
    "café",
    "résumé",
    "jalapeño",
    "über",
    "façade",
    "日本語",
    "中文",
    "한국어",
    "Ωmega",
    "Δelta",
    "πρώτο",
    "Привет",
    "مرحبا",
    "שלום",
    "🙂",
    "🚀",
    "∑",
    "→",
    "✓",
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "sigma",
    "tau",
    "omega",
    "seven",
    "42",
    "3.14",
    "yes",
    "no",
    "maybe",
];

/// A validated `POST /v1/chat/completions` request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    /// The `messages` array as sent (hashed canonically for the answer seed).
    pub messages: Value,
    /// Every text of every message (string contents and text parts), in order.
    pub texts: Vec<String>,
    pub message_count: u64,
    pub n: u64,
    pub max_tokens: Option<u64>,
    pub logprobs: bool,
    pub top_logprobs: u64,
    pub stream: bool,
    pub include_usage: bool,
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match field(obj, key) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ApiError::invalid(format!("`{key}` must be a boolean"), Some(key))),
    }
}

fn opt_uint(obj: &Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                format!("`{key}` must be an integer between 0 and {max}"),
                Some(key),
            )),
        },
    }
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}"), None))?;
        let Value::Object(mut obj) = value else {
            return Err(ApiError::invalid(
                "request body must be a JSON object",
                None,
            ));
        };
        let model = match field(&obj, "model") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ApiError::invalid("`model` must be a string", Some("model"))),
            None => {
                return Err(ApiError::invalid(
                    "missing required parameter `model`",
                    Some("model"),
                ))
            }
        };
        let messages = obj.remove("messages").unwrap_or(Value::Null);
        let texts = message_texts(&messages)?;
        let message_count = messages.as_array().map_or(0, |a| a.len() as u64);
        let n = match opt_uint(&obj, "n", MAX_N)? {
            None => 1,
            Some(0) => return Err(ApiError::invalid("`n` must be at least 1", Some("n"))),
            Some(n) => n,
        };
        let max_tokens = match opt_uint(&obj, "max_completion_tokens", u64::MAX)? {
            Some(m) => Some(m),
            None => opt_uint(&obj, "max_tokens", u64::MAX)?,
        };
        let stream = opt_bool(&obj, "stream")?;
        let include_usage = match field(&obj, "stream_options") {
            None => false,
            Some(Value::Object(so)) => opt_bool(so, "include_usage").map_err(|_| {
                ApiError::invalid(
                    "`stream_options.include_usage` must be a boolean",
                    Some("stream_options"),
                )
            })?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "`stream_options` must be an object",
                    Some("stream_options"),
                ))
            }
        };
        Ok(ChatRequest {
            model,
            messages,
            texts,
            message_count,
            n,
            max_tokens,
            logprobs: opt_bool(&obj, "logprobs")?,
            top_logprobs: opt_uint(&obj, "top_logprobs", MAX_TOP_LOGPROBS)?.unwrap_or(0),
            stream,
            include_usage,
        })
    }

    /// Whitespace-separated words of all message text, plus 3 per message.
    pub fn prompt_tokens(&self) -> u64 {
        let words: usize = self
            .texts
            .iter()
            .map(|t| t.split_whitespace().count())
            .sum();
        words as u64 + 3 * self.message_count
    }
}

fn message_texts(messages: &Value) -> Result<Vec<String>, ApiError> {
    let param = Some("messages");
    let list = match messages {
        Value::Array(list) if !list.is_empty() => list,
        Value::Array(_) => return Err(ApiError::invalid("`messages` must not be empty", param)),
        Value::Null => {
            return Err(ApiError::invalid(
                "missing required parameter `messages`",
                param,
            ))
        }
        _ => return Err(ApiError::invalid("`messages` must be an array", param)),
    };
    let mut texts = Vec::new();
    for (i, msg) in list.iter().enumerate() {
        let Some(msg) = msg.as_object() else {
            return Err(ApiError::invalid(
                format!("messages[{i}] must be an object"),
                param,
            ));
        };
        if !matches!(msg.get("role"), Some(Value::String(_))) {
            return Err(ApiError::invalid(
                format!("messages[{i}].role must be a string"),
                param,
            ));
        }
        match msg.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => texts.push(s.clone()),
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let Some(part) = part.as_object() else {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}] must be an object"),
                            param,
                        ));
                    };
                    if part.get("type").and_then(Value::as_str) == Some("text") {
                        match part.get("text") {
                            Some(Value::String(t)) => texts.push(t.clone()),
                            _ => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}].text must be a string"),
                                    param,
                                ))
                            }
                        }
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content must be a string, an array of parts, or null"),
                    param,
                ))
            }
        }
    }
    Ok(texts)
}

/// The tokens of `content` (see the module docs); concatenating them gives
/// `content` back.
pub fn tokens(content: &str) -> impl Iterator<Item = &str> {
    let mut rest = content;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // Every token but the first starts with its separating space.
        let end = rest
            .get(1..)
            .and_then(|r| r.find(' '))
            .map_or(rest.len(), |i| i + 1);
        let (tok, tail) = rest.split_at_checked(end).unwrap_or((rest, ""));
        rest = tail;
        Some(tok)
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f64,
    /// Alternatives, each less likely than the chosen token, most likely first.
    pub top: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub content: String,
    pub tokens: u64,
    pub finish_reason: &'static str,
    /// One entry per token when logprobs were asked for and supported.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Set for `huge` answers, whose content is one head followed by one
    /// block repeated: lets rendering escape and serialise the block once.
    pub repeat: Option<Repeat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub head_len: usize,
    pub block_len: usize,
}

impl Choice {
    /// The content as (head, block, repetitions).
    fn parts(&self) -> Option<(&str, &str, usize)> {
        let r = self.repeat?;
        let head = self.content.get(..r.head_len)?;
        let block = self.content.get(r.head_len..r.head_len + r.block_len)?;
        let reps = (self.content.len() - r.head_len) / r.block_len.max(1);
        Some((head, block, reps))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    /// `None` when the `no_usage` fault drops it.
    pub usage: Option<Usage>,
    pub include_usage: bool,
    /// Body-level fault applied when rendering.
    pub fault: Option<FaultKind>,
}

/// Everything [`generate`] needs besides the request.
pub struct GenParams<'a> {
    pub seed: u64,
    pub model: &'a ModelConfig,
    pub directives: &'a Directives,
    pub fault: Option<FaultKind>,
    pub id: String,
    pub created: u64,
}

fn choice_seed(seed: u64, req: &ChatRequest, index: u64) -> u64 {
    Fnv64::new()
        .bytes(b"looper-sim/answer")
        .u64(seed)
        .str(&req.model)
        .json(&req.messages)
        .u64(req.n)
        .u64(index)
        .finish()
}

/// Builds the completion for `req`. Deterministic in everything but `id`
/// and `created`.
pub fn generate(req: &ChatRequest, p: &GenParams<'_>) -> Completion {
    let mut choices = Vec::new();
    for index in 0..req.n {
        choices.push(generate_choice(req, p, choice_seed(p.seed, req, index)));
    }
    if p.fault == Some(FaultKind::EmptyChoices) {
        choices.clear();
    }
    let usage = Usage {
        prompt_tokens: req.prompt_tokens(),
        completion_tokens: choices.iter().map(|c| c.tokens).sum(),
    };
    let usage = match p.directives.usage {
        Some((prompt_tokens, completion_tokens)) => Usage {
            prompt_tokens,
            completion_tokens,
        },
        None => usage,
    };
    Completion {
        id: p.id.clone(),
        created: p.created,
        model: req.model.clone(),
        choices,
        usage: (p.fault != Some(FaultKind::NoUsage)).then_some(usage),
        include_usage: req.include_usage,
        fault: p.fault,
    }
}

fn generate_choice(req: &ChatRequest, p: &GenParams<'_>, seed: u64) -> Choice {
    let mut rng = SplitMix64::new(seed);
    let prefix = format!("[{}]", req.model);
    if p.fault == Some(FaultKind::Huge) {
        return huge_choice(prefix, &mut rng);
    }
    let mut words: Vec<&str> = match &p.directives.answer {
        Some(text) => text.split_whitespace().collect(),
        None => {
            let mut w = vec![prefix.as_str()];
            for _ in 0..p.model.answer_words {
                w.push(vocab_word(rng.below(VOCAB.len() as u64)));
            }
            w
        }
    };
    let mut finish_reason = "stop";
    if let Some(max) = req.max_tokens {
        if (words.len() as u64) > max {
            words.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            finish_reason = "length";
        }
    }
    if let Some(forced) = p.directives.finish {
        finish_reason = forced;
    }
    if p.fault == Some(FaultKind::BadUtf8) {
        let mid = words.len() / 2;
        match words.get_mut(mid) {
            Some(w) => *w = BAD_UTF8_MARKER,
            None => words.push(BAD_UTF8_MARKER),
        }
    }
    let content = words.join(" ");
    let logprobs = (req.logprobs && p.model.logprobs).then(|| {
        tokens(&content)
            .enumerate()
            .map(|(i, tok)| {
                token_logprob(seed, i as u64, tok, p.model.mean_logprob, req.top_logprobs)
            })
            .collect()
    });
    Choice {
        tokens: words.len() as u64,
        content,
        finish_reason,
        logprobs,
        repeat: None,
    }
}

/// A ~12 MiB answer: the prefix word, then a 64 KiB block of random words
/// repeated (cheap to build even in debug builds). Ignores `max_tokens` and
/// the answer directive: the point is size.
fn huge_choice(prefix: String, rng: &mut SplitMix64) -> Choice {
    let mut block = String::new();
    let mut block_words = 0u64;
    while block.len() < HUGE_STREAM_PIECE {
        block.push(' ');
        block.push_str(vocab_word(rng.below(VOCAB.len() as u64)));
        block_words += 1;
    }
    let reps = HUGE_BYTES
        .saturating_sub(prefix.len())
        .div_ceil(block.len());
    let mut content = String::with_capacity(prefix.len() + reps * block.len());
    content.push_str(&prefix);
    for _ in 0..reps {
        content.push_str(&block);
    }
    Choice {
        repeat: Some(Repeat {
            head_len: prefix.len(),
            block_len: block.len(),
        }),
        content,
        tokens: 1 + block_words * reps as u64,
        finish_reason: "stop",
        logprobs: None,
    }
}

fn vocab_word(i: u64) -> &'static str {
    VOCAB
        .get(usize::try_from(i).unwrap_or(0))
        .copied()
        .unwrap_or("the")
}

fn round6(x: f64) -> f64 {
    // `+ 0.0` turns -0.0 into 0.0.
    (x * 1e6).round() / 1e6 + 0.0
}

/// The logprob of token `index` and its `top` alternatives. Each token has
/// its own PRNG stream, so a token's logprob does not depend on
/// `max_tokens` or `top_logprobs`. The chosen logprob is `mean * Exp(1)`
/// (mean `mean`, always `<= 0`); alternatives share the remaining
/// probability mass geometrically and are strictly decreasing and strictly
/// below the chosen token.
fn token_logprob(seed: u64, index: u64, token: &str, mean: f64, top: u64) -> TokenLogprob {
    let mut rng = SplitMix64::new(Fnv64::new().u64(seed).bytes(b"logprob").u64(index).finish());
    let exp1 = -(1.0 - rng.next_f64()).ln();
    let logprob = round6((mean * exp1).max(-30.0)).min(0.0);
    let rest = 1.0 - logprob.exp();
    let leading_space = token.starts_with(' ');
    let word = token.trim_start_matches(' ');
    let mut alts = Vec::new();
    let mut cursor = rng.below(VOCAB.len() as u64);
    let mut k = 0u64;
    while k < top {
        let candidate = vocab_word(cursor % VOCAB.len() as u64);
        cursor += 1;
        if candidate == word {
            continue;
        }
        let kf = (k + 1) as f64;
        let by_mass = (rest * 0.5f64.powf(kf)).ln();
        let lp = round6(by_mass.min(logprob - 0.05 * kf).max(-60.0 - kf));
        let text = if leading_space {
            format!(" {candidate}")
        } else {
            candidate.to_string()
        };
        alts.push((text, lp));
        k += 1;
    }
    TokenLogprob { logprob, top: alts }
}

fn logprob_entry(token: &str, lp: &TokenLogprob) -> Value {
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|(t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()}))
        .collect();
    json!({
        "token": token,
        "logprob": lp.logprob,
        "bytes": token.as_bytes(),
        "top_logprobs": top,
    })
}

fn logprobs_json(content: &str, lps: Option<&Vec<TokenLogprob>>) -> Value {
    match lps {
        None => Value::Null,
        Some(lps) => {
            let entries: Vec<Value> = tokens(content)
                .zip(lps)
                .map(|(t, lp)| logprob_entry(t, lp))
                .collect();
            json!({"content": entries, "refusal": null})
        }
    }
}

fn to_bytes(v: &Value, fault: Option<FaultKind>) -> Vec<u8> {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    if fault == Some(FaultKind::BadUtf8) {
        replace_all(&bytes, BAD_UTF8_MARKER.as_bytes(), BAD_UTF8_BYTES)
    } else {
        bytes
    }
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay.get(i..i + needle.len()) == Some(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.extend(hay.get(i));
            i += 1;
        }
    }
    out
}

impl Completion {
    /// The non-streaming response body.
    pub fn to_json_body(&self) -> Vec<u8> {
        match self.fault {
            Some(FaultKind::Garbage) => return GARBAGE.to_vec(),
            Some(FaultKind::WrongShape) => return br#"{"unexpected":true}"#.to_vec(),
            _ => {}
        }
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let content = match c.repeat {
                    Some(_) => json!(huge_marker(i)),
                    None => json!(c.content),
                };
                json!({
                    "index": i,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": logprobs_json(&c.content, c.logprobs.as_ref()),
                    "finish_reason": c.finish_reason,
                })
            })
            .collect();
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (self.usage, v.as_object_mut()) {
            obj.insert("usage".to_string(), u.to_json());
        }
        let small = to_bytes(&v, self.fault);
        if self.choices.iter().all(|c| c.repeat.is_none()) {
            return small;
        }
        // Splice each huge content in place of its marker (markers appear in
        // choice order), escaping the repeated block only once.
        let mut out = Vec::new();
        let mut rest = small.as_slice();
        for (i, c) in self.choices.iter().enumerate() {
            let Some((head, block, reps)) = c.parts() else {
                continue;
            };
            let marker = huge_marker(i);
            let Some(pos) = rest
                .windows(marker.len())
                .position(|w| w == marker.as_bytes())
            else {
                continue;
            };
            let (before, after) = rest.split_at(pos);
            out.extend_from_slice(before);
            out.extend_from_slice(&json_escaped(head));
            let block = json_escaped(block);
            out.reserve(block.len() * reps);
            for _ in 0..reps {
                out.extend_from_slice(&block);
            }
            rest = after.get(marker.len()..).unwrap_or(&[]);
        }
        out.extend_from_slice(rest);
        out
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            if let Some(obj) = v.as_object_mut() {
                obj.insert("usage".to_string(), Value::Null);
            }
        }
        v
    }

    /// The SSE events of a streaming response, without `data: ` framing.
    pub fn to_sse_events(&self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let ev = |kind, v: &Value| SseEvent {
            kind,
            data: to_bytes(v, self.fault),
        };
        match self.fault {
            Some(FaultKind::Garbage) => {
                events.push(SseEvent {
                    kind: EventKind::Other,
                    data: GARBAGE.to_vec(),
                });
            }
            Some(FaultKind::WrongShape) => {
                events.push(ev(EventKind::Other, &json!({"unexpected": true})));
            }
            Some(FaultKind::EmptyChoices) => {
                events.push(ev(EventKind::Other, &self.chunk(Vec::new())));
            }
            _ => {}
        }
        if !matches!(self.fault, Some(FaultKind::Garbage | FaultKind::WrongShape)) {
            for (i, c) in self.choices.iter().enumerate() {
                self.push_choice_events(&mut events, i, c);
            }
            if let (true, Some(u)) = (self.include_usage, self.usage) {
                let mut v = self.chunk(Vec::new());
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("usage".to_string(), u.to_json());
                }
                events.push(ev(EventKind::Usage, &v));
            }
        }
        events.push(SseEvent {
            kind: EventKind::Done,
            data: b"[DONE]".to_vec(),
        });
        events
    }

    fn push_choice_events(&self, events: &mut Vec<SseEvent>, index: usize, c: &Choice) {
        let ev = |kind, v: &Value| SseEvent {
            kind,
            data: to_bytes(v, self.fault),
        };
        let role = json!({
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        });
        events.push(ev(EventKind::Role, &self.chunk(vec![role])));
        let pieces: Vec<&str> = match c.parts() {
            Some((head, block, reps)) => {
                let mut p = vec![head];
                p.extend(std::iter::repeat_n(block, reps));
                p
            }
            None => tokens(&c.content).collect(),
        };
        // Consecutive identical pieces (a huge answer's blocks) are
        // serialised once.
        let mut last: Option<(&str, Vec<u8>)> = None;
        for (t, piece) in pieces.iter().enumerate() {
            if let Some((prev, data)) = &last {
                if prev == piece && c.logprobs.is_none() {
                    events.push(SseEvent {
                        kind: EventKind::Token,
                        data: data.clone(),
                    });
                    continue;
                }
            }
            let logprobs = match c.logprobs.as_ref().and_then(|l| l.get(t)) {
                Some(lp) => json!({"content": [logprob_entry(piece, lp)], "refusal": null}),
                None => Value::Null,
            };
            let choice = json!({
                "index": index,
                "delta": {"content": piece},
                "logprobs": logprobs,
                "finish_reason": null,
            });
            let event = ev(EventKind::Token, &self.chunk(vec![choice]));
            last = Some((piece, event.data.clone()));
            events.push(event);
        }
        let fin = json!({
            "index": index,
            "delta": {},
            "logprobs": null,
            "finish_reason": c.finish_reason,
        });
        events.push(ev(EventKind::Finish, &self.chunk(vec![fin])));
    }
}

fn huge_marker(index: usize) -> String {
    format!("__looper_sim_huge_{index}__")
}

/// `s` as the inside of a JSON string literal.
fn json_escaped(s: &str) -> Vec<u8> {
    let quoted = serde_json::to_vec(s).unwrap_or_default();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or(&[])
        .to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Role,
    Token,
    Finish,
    Usage,
    Done,
    Other,
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub kind: EventKind,
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_concatenate_to_content() {
        let c = "[m] café 日本語 🙂 x";
        let t: Vec<&str> = tokens(c).collect();
        assert_eq!(t, vec!["[m]", " café", " 日本語", " 🙂", " x"]);
        assert_eq!(t.concat(), c);
        assert_eq!(tokens("").count(), 0);
        assert_eq!(tokens("one").collect::<Vec<_>>(), vec!["one"]);
    }

    #[test]
    fn vocab_has_no_whitespace_and_enough_words() {
        assert!(VOCAB.len() > MAX_TOP_LOGPROBS as usize + 1);
        for w in VOCAB {
            assert!(!w.is_empty() && !w.contains(char::is_whitespace), "{w}");
        }
        assert!(VOCAB.iter().any(|w| !w.is_ascii()));
    }

    #[test]
    fn logprobs_are_ordered() {
        for i in 0..200 {
            for mean in [0.0, -0.15, -3.0, -50.0] {
                let lp = token_logprob(9, i, " café", mean, 20);
                assert!(lp.logprob <= 0.0);
                let mut prev = lp.logprob;
                for (t, l) in &lp.top {
                    assert!(*l < prev, "{l} !< {prev}");
                    assert!(t.starts_with(' ') && t != " café");
                    prev = *l;
                }
                assert_eq!(lp.top.len(), 20);
            }
        }
    }

    #[test]
    fn huge_renders_like_its_content() {
        let req = ChatRequest::parse(
            br#"{"model":"m","n":2,"messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        let mc = ModelConfig::default();
        let d = Directives::default();
        let p = GenParams {
            seed: 1,
            model: &mc,
            directives: &d,
            fault: Some(FaultKind::Huge),
            id: "x".into(),
            created: 0,
        };
        let c = generate(&req, &p);
        let v: Value = serde_json::from_slice(&c.to_json_body()).unwrap();
        for i in 0..2 {
            let content = v["choices"][i]["message"]["content"].as_str().unwrap();
            assert_eq!(content, c.choices[i].content);
            assert!(content.len() >= HUGE_BYTES);
        }
        assert_ne!(c.choices[0].content, c.choices[1].content);
        let streamed: String = c
            .to_sse_events()
            .iter()
            .filter(|e| e.kind == EventKind::Token)
            .map(|e| {
                let v: Value = serde_json::from_slice(&e.data).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            streamed,
            format!("{}{}", c.choices[0].content, c.choices[1].content)
        );
    }

    #[test]
    fn replace_all_works() {
        assert_eq!(
            replace_all(b"xAByAB", b"AB", b"\xff"),
            b"x\xffy\xff".to_vec()
        );
    }
}
