//! Chat completion requests: validation, deterministic answer generation,
//! and rendering as a JSON `chat.completion` or as SSE chunks.
//!
//! Token model: a content string is always words joined by single spaces
//! (or, in verifier, judge and planner replies, by a newline); token 0 is
//! the first word, every later token is its separator followed by its word,
//! so the tokens concatenate back to the content exactly. Prompt tokens are the
//! whitespace-separated words of all message text plus 3 per message.
//!
//! In the `llama_cpp` dialect an answer that ends naturally (`finish_reason`
//! `stop`) also generates an end-of-sequence token: empty, not part of the
//! content, but counted in `completion_tokens` and (when asked) given a
//! logprobs entry, as llama-server does.

use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::dialect::{self, Dialect};
use crate::directives::Directives;
use crate::error::ApiError;
use crate::faults::FaultKind;
use crate::planner::{self, PlanInputs, PlannerPrompt};
use crate::questions::{self, Drawn, ErrorModel, Forced, Prompt, Quality, Question};
use crate::rng::{Fnv64, SplitMix64};
use crate::stats::Tally;
use crate::synthesis::{self, Inputs};

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

/// Vocabulary words never used as filler before `ANSWER:` (they could read
/// as an answer).
const NOT_FILLER: &[&str] = &["answer", "is", "seven", "42", "3.14", "yes", "no", "maybe"];

/// A validated `POST /v1/chat/completions` request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    /// The `messages` array as sent (hashed canonically for the answer seed).
    pub messages: Value,
    /// Every text of every message (string contents and text parts), in order.
    pub texts: Vec<String>,
    /// The text of the last `user` message (its text parts joined by `\n`).
    pub last_user: Option<String>,
    pub message_count: u64,
    pub n: u64,
    pub max_tokens: Option<u64>,
    pub logprobs: bool,
    pub top_logprobs: u64,
    pub stream: bool,
    pub include_usage: bool,
    /// The OpenAI `seed` field: a different seed gives a different (still reproducible)
    /// sample, as repeated samples of a real model at a temperature differ.
    pub seed: Option<u64>,
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
        let (texts, last_user) = message_texts(&messages)?;
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
            last_user,
            message_count,
            n,
            max_tokens,
            logprobs: opt_bool(&obj, "logprobs")?,
            top_logprobs: opt_uint(&obj, "top_logprobs", MAX_TOP_LOGPROBS)?.unwrap_or(0),
            stream,
            include_usage,
            seed: opt_uint(&obj, "seed", u64::MAX)?,
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

/// Every text of `messages`, and the text of the last user message.
fn message_texts(messages: &Value) -> Result<(Vec<String>, Option<String>), ApiError> {
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
    let mut last_user = None;
    for (i, msg) in list.iter().enumerate() {
        let Some(msg) = msg.as_object() else {
            return Err(ApiError::invalid(
                format!("messages[{i}] must be an object"),
                param,
            ));
        };
        let Some(Value::String(role)) = msg.get("role") else {
            return Err(ApiError::invalid(
                format!("messages[{i}].role must be a string"),
                param,
            ));
        };
        let first_text = texts.len();
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
        if role == "user" {
            last_user = Some(texts.get(first_text..).unwrap_or(&[]).join("\n"));
        }
    }
    Ok((texts, last_user))
}

/// The tokens of `content` (see the module docs); concatenating them gives
/// `content` back.
pub fn tokens(content: &str) -> impl Iterator<Item = &str> {
    let mut rest = content;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // Every token but the first starts with its separating space or
        // newline.
        let first = rest.chars().next().map_or(0, char::len_utf8);
        let end = rest
            .get(first..)
            .and_then(|r| r.find([' ', '\n']))
            .map_or(rest.len(), |i| i + first);
        let (tok, tail) = rest.split_at_checked(end).unwrap_or((rest, ""));
        rest = tail;
        Some(tok)
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f64,
    /// The `top_logprobs` list, most likely first. For an ordinary token:
    /// alternatives, each less likely than the chosen token. For the answer
    /// token of a keyed question: the chosen token, then alternatives.
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
    /// For the answer to a keyed question that was not cut by `max_tokens`:
    /// whether it is correct.
    pub keyed: Option<bool>,
    /// Whether an end-of-sequence token follows the content (`llama_cpp`,
    /// `finish_reason` `stop`). It counts as a completion token; when
    /// logprobs were asked for, its entry is the last of `logprobs`.
    pub eos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub head_len: usize,
    pub block_len: usize,
}

impl Choice {
    /// Completion tokens: the content's, plus the end-of-sequence token.
    pub fn completion_tokens(&self) -> u64 {
        self.tokens.saturating_add(u64::from(self.eos))
    }

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

    /// The `usage` object in `dialect`'s shape (llama.cpp adds
    /// `prompt_tokens_details`).
    pub fn to_json_in(self, dialect: Dialect) -> Value {
        let mut v = self.to_json();
        if let (Dialect::LlamaCpp, Some(obj)) = (dialect, v.as_object_mut()) {
            obj.insert(
                "prompt_tokens_details".to_string(),
                json!({"cached_tokens": 0}),
            );
        }
        v
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
    /// The wire format (the model's `dialect`).
    pub dialect: Dialect,
    /// The counts llama.cpp's `timings` report: the usage (forced or
    /// not), also when the `no_usage` fault drops it.
    pub counts: Usage,
    /// Body-level fault applied when rendering.
    pub fault: Option<FaultKind>,
    /// What this response adds to the question counters once delivered.
    pub tally: Tally,
}

/// Everything [`generate`] needs besides the request.
pub struct GenParams<'a> {
    pub seed: u64,
    pub model: &'a ModelConfig,
    pub directives: &'a Directives,
    pub fault: Option<FaultKind>,
    pub id: String,
    pub created: u64,
    /// The keyed question the request carries, if any.
    pub question: Option<&'a Question>,
    /// The model's quality settings with directive overrides applied.
    pub quality: Quality,
    /// The population-wide error model settings.
    pub errors: ErrorModel,
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

/// What the request asks the model to do.
enum Task<'a> {
    /// Random words.
    Plain,
    /// Answer a keyed question.
    Keyed(&'a Question),
    /// Verify a proposed answer.
    Verify {
        proposed: String,
        with_confidence: bool,
        basis: String,
    },
    /// Pick the best of numbered responses.
    Judge {
        responses: Vec<String>,
        basis: String,
    },
    /// Write an answer from quoted references (and maybe an analysis).
    Synthesize {
        /// The answer extracted from each reference.
        references: Vec<Option<String>>,
        /// The analysis' `trusted_answer`.
        trusted: Option<String>,
        basis: String,
    },
    /// Analyse quoted answers as JSON (Fusion judge).
    FusionJudge {
        references: Vec<Option<String>>,
        basis: String,
    },
    /// Write a plan of worker steps as JSON (Workflows planner).
    Plan {
        prompt: PlannerPrompt,
        /// What the plan is drawn from: the question's identity, else the
        /// `question` block, else the gateway's words.
        identity: String,
    },
}

fn task<'a>(req: &ChatRequest, p: &GenParams<'a>) -> Task<'a> {
    match questions::classify(req.last_user.as_deref()) {
        Prompt::Verify {
            proposed,
            with_confidence,
            outside,
        } => Task::Verify {
            proposed,
            with_confidence,
            basis: outside,
        },
        Prompt::Judge { responses, outside } => Task::Judge {
            responses,
            basis: outside,
        },
        Prompt::Synthesize {
            answers,
            analysis,
            outside,
        } => {
            let key = p.question.map(|q| &q.key);
            Task::Synthesize {
                references: extract_all(&answers, key),
                trusted: analysis.and_then(|a| synthesis::trusted_answer(&a, key)),
                basis: outside,
            }
        }
        Prompt::FusionJudge { answers, outside } => Task::FusionJudge {
            references: extract_all(&answers, p.question.map(|q| &q.key)),
            basis: outside,
        },
        Prompt::Plan {
            planner,
            question,
            outside,
        } => Task::Plan {
            prompt: planner,
            identity: match p.question {
                Some(q) => q.identity.clone(),
                None => question.unwrap_or(outside),
            },
        },
        Prompt::Other => p.question.map_or(Task::Plain, Task::Keyed),
    }
}

fn extract_all(answers: &[String], key: Option<&questions::Key>) -> Vec<Option<String>> {
    answers
        .iter()
        .map(|a| synthesis::reference_answer(a, key))
        .collect()
}

/// Whether a fault still delivers a usable answer (so it counts in the
/// question counters).
fn delivers_answer(fault: Option<FaultKind>) -> bool {
    matches!(
        fault,
        None | Some(FaultKind::Hang | FaultKind::Slow | FaultKind::NoUsage)
    )
}

/// Builds the completion for `req`. Deterministic in everything but `id`
/// and `created`.
pub fn generate(req: &ChatRequest, p: &GenParams<'_>) -> Completion {
    let task = task(req, p);
    let mut tally = Tally::default();
    let mut choices = Vec::new();
    for index in 0..req.n {
        let choice = generate_choice(req, p, &task, index, &mut tally);
        match choice.keyed {
            Some(true) => tally.answers_correct += 1,
            Some(false) => tally.answers_wrong += 1,
            None => {}
        }
        choices.push(choice);
    }
    if p.fault == Some(FaultKind::EmptyChoices) {
        choices.clear();
    }
    if !delivers_answer(p.fault) {
        tally = Tally::default();
    }
    let usage = Usage {
        prompt_tokens: req.prompt_tokens(),
        completion_tokens: choices.iter().map(Choice::completion_tokens).sum(),
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
        dialect: p.model.dialect,
        counts: usage,
        fault: p.fault,
        tally,
    }
}

/// The answer tokens of a keyed question carry a drawn probability.
#[derive(Debug, Clone)]
struct AnswerToken {
    p: f64,
    /// The same word of the other plausible answers, most likely first.
    rivals: Vec<String>,
}

/// A choice before truncation and rendering.
struct Draft {
    /// Tokens, each with its leading separator (but the first).
    tokens: Vec<String>,
    /// Parallel to `tokens`: set for the answer tokens of a keyed question.
    answer: Vec<Option<AnswerToken>>,
    /// Seeds the logprobs of the ordinary tokens.
    lp_seed: u64,
    keyed: Option<bool>,
}

impl Draft {
    fn new(tokens: Vec<String>, lp_seed: u64) -> Draft {
        Draft {
            answer: vec![None; tokens.len()],
            tokens,
            lp_seed,
            keyed: None,
        }
    }

    /// A reply whose content is `text` (already in the token model), with
    /// logprobs seeded by the reply itself so they are as stable as it is.
    fn reply(text: &str, seed: u64, model: &str, index: u64) -> Draft {
        let lp_seed = Fnv64::new()
            .bytes(b"looper-sim/reply")
            .u64(seed)
            .str(model)
            .str(text)
            .u64(index)
            .finish();
        Draft::new(tokens(text).map(str::to_string).collect(), lp_seed)
    }
}

/// Words as tokens: the first bare, later ones after a space.
fn word_tokens<'a>(words: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

fn generate_choice(
    req: &ChatRequest,
    p: &GenParams<'_>,
    task: &Task<'_>,
    index: u64,
    tally: &mut Tally,
) -> Choice {
    // A deterministic model draws every choice as choice 0.
    let index = if p.model.deterministic { 0 } else { index };
    let seed = choice_seed(p.seed, req, index);
    let prefix = format!("[{}]", req.model);
    if p.fault == Some(FaultKind::Huge) {
        return huge_choice(prefix, &mut SplitMix64::new(seed), p.model.dialect);
    }
    let mut draft = match (&p.directives.answer, task) {
        (Some(text), _) => Draft::new(word_tokens(text.split_whitespace()), seed),
        (None, Task::Plain) => plain_draft(&prefix, p.model.answer_words, seed),
        (None, Task::Keyed(q)) => keyed_draft(req, p, q, &prefix, index),
        (
            None,
            Task::Verify {
                proposed,
                with_confidence,
                basis,
            },
        ) => {
            let v = questions::verify(
                p.seed, &req.model, p.question, proposed, &p.quality, basis, index,
            );
            if index == 0 {
                tally.verifications += 1;
                tally.verifications_invalid += u64::from(v.invalid);
            }
            let verdict = if v.correct { "CORRECT" } else { "INCORRECT" };
            let mut text = format!("{prefix} Checked.\nVERDICT: {verdict}");
            if *with_confidence {
                text.push_str(&format!("\nCONFIDENCE: {}", v.confidence));
            }
            Draft::reply(&text, p.seed, &req.model, index)
        }
        (None, Task::Judge { responses, basis }) => {
            let best = questions::judge(
                p.seed, &req.model, p.question, responses, &p.quality, basis, index,
            );
            if index == 0 {
                tally.judgements += 1;
            }
            Draft::reply(
                &format!("{prefix} Judged.\nBEST: {best}"),
                p.seed,
                &req.model,
                index,
            )
        }
        (
            None,
            Task::Synthesize {
                references,
                trusted,
                basis,
            },
        ) => {
            if index == 0 {
                tally.syntheses += 1;
            }
            let inputs = Inputs {
                seed: p.seed,
                model: &req.model,
                question: p.question,
                references,
                trusted: trusted.as_deref(),
                basis,
                index,
            };
            let forced = Forced {
                confidence: p.directives.confidence,
                correct: p.directives.correct,
            };
            let pick = synthesis::pick(
                &inputs,
                b"synth",
                p.quality.synth_skill,
                p.quality.calibration,
                forced,
            );
            match (pick, p.question) {
                (Some(pick), q) => {
                    let mut d =
                        answer_draft(&prefix, p.model.answer_words, &pick.drawn, pick.lp_seed);
                    d.keyed = q.map(|_| pick.drawn.correct);
                    d
                }
                (None, Some(q)) => keyed_draft(req, p, q, &prefix, index),
                (None, None) => plain_draft(&prefix, p.model.answer_words, seed),
            }
        }
        (None, Task::FusionJudge { references, basis }) => {
            if index == 0 {
                tally.judgements += 1;
            }
            let inputs = Inputs {
                seed: p.seed,
                model: &req.model,
                question: p.question,
                references,
                trusted: None,
                basis,
                index,
            };
            let forced = Forced {
                confidence: None,
                correct: p.directives.correct,
            };
            let style = synthesis::judge_style(&inputs, p.quality.judge_garbage_rate);
            let pick = synthesis::pick(
                &inputs,
                b"fusion-judge",
                p.quality.judge_skill,
                p.quality.calibration,
                forced,
            );
            let groups = pick.as_ref().map(|k| k.groups.clone()).unwrap_or_default();
            // No reference answer: the judge trusts its own answer.
            let trusted = match (pick, p.question) {
                (Some(k), _) => Some(k.drawn.text),
                (None, Some(q)) => Some(
                    questions::draw_answer(
                        p.seed, &req.model, q, &p.quality, &p.errors, forced, index,
                    )
                    .text,
                ),
                (None, None) => None,
            };
            let json = synthesis::analysis_json(references, &groups, trusted.as_deref());
            let text = synthesis::judge_reply(&req.model, style, &json, index);
            Draft::reply(&text, p.seed, &req.model, index)
        }
        (None, Task::Plan { prompt, identity }) => {
            let inputs = PlanInputs {
                seed: p.seed,
                model: &req.model,
                identity,
                replan: prompt.replan,
                index,
            };
            let rate = match (prompt.replan, p.directives.replan_error) {
                (true, Some(r)) => r,
                _ => p.quality.planner_error_rate,
            };
            let plan = planner::plan(&inputs, prompt, rate, p.directives.planner_error_kind);
            // Every choice is a plan.
            tally.plans += 1;
            tally.plans_invalid += u64::from(!plan.valid);
            Draft::reply(&plan.text, p.seed, &req.model, index)
        }
    };
    let full_len = draft.tokens.len();
    let dialect = p.model.dialect;
    // With an end-of-sequence token the answer needs one token more than its
    // content to end naturally: llama-server stops with `length` when the
    // limit is reached first, even right after the last word.
    let needed = (full_len as u64).saturating_add(u64::from(dialect.has_eos()));
    let mut finish_reason = "stop";
    if let Some(max) = req.max_tokens {
        if (full_len as u64) > max {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            draft.tokens.truncate(max);
            draft.answer.truncate(max);
        }
        if needed > max {
            finish_reason = "length";
        }
    }
    if let Some(forced) = p.directives.finish {
        finish_reason = forced;
    }
    let eos = dialect.has_eos() && finish_reason == "stop";
    if p.fault == Some(FaultKind::BadUtf8) {
        let mid = draft.tokens.len() / 2;
        match draft.tokens.get_mut(mid) {
            Some(t) => *t = format!("{}{BAD_UTF8_MARKER}", split_sep(t).0),
            None => draft.tokens.push(BAD_UTF8_MARKER.to_string()),
        }
    }
    let keyed = draft.keyed.filter(|_| draft.tokens.len() == full_len);
    let logprobs = (req.logprobs && p.model.logprobs).then(|| {
        draft
            .tokens
            .iter()
            .enumerate()
            .map(
                |(i, tok)| match draft.answer.get(i).and_then(Option::as_ref) {
                    Some(a) => answer_logprob(draft.lp_seed, i as u64, tok, a, req.top_logprobs),
                    None => token_logprob(
                        draft.lp_seed,
                        i as u64,
                        tok,
                        p.model.mean_logprob,
                        req.top_logprobs,
                    ),
                },
            )
            .chain(eos.then(|| {
                eos_logprob(
                    draft.lp_seed,
                    draft.tokens.len() as u64,
                    p.model.mean_logprob,
                    req.top_logprobs,
                )
            }))
            .collect()
    });
    Choice {
        tokens: draft.tokens.len() as u64,
        content: draft.tokens.concat(),
        finish_reason,
        logprobs,
        repeat: None,
        keyed,
        eos,
    }
}

/// `[<model>] <answer_words filler words> ANSWER: <answer>`.
fn keyed_draft(
    req: &ChatRequest,
    p: &GenParams<'_>,
    q: &Question,
    prefix: &str,
    index: u64,
) -> Draft {
    let forced = Forced {
        confidence: p.directives.confidence,
        correct: p.directives.correct,
    };
    let drawn = questions::draw_answer(p.seed, &req.model, q, &p.quality, &p.errors, forced, index);
    let lp_seed = questions::answer_seed(p.seed, &req.model, q, index);
    let mut draft = answer_draft(prefix, p.model.answer_words, &drawn, lp_seed);
    draft.keyed = Some(drawn.correct);
    draft
}

/// `[<model>] <answer_words random words>`.
fn plain_draft(prefix: &str, answer_words: u64, seed: u64) -> Draft {
    let mut rng = SplitMix64::new(seed);
    let mut words = vec![prefix];
    for _ in 0..answer_words {
        words.push(vocab_word(rng.below(VOCAB.len() as u64)));
    }
    Draft::new(word_tokens(words), seed)
}

/// `[<model>] <answer_words filler words> ANSWER: <drawn answer>`, the
/// filler and the other tokens' logprobs seeded by `lp_seed`.
fn answer_draft(prefix: &str, answer_words: u64, drawn: &Drawn, lp_seed: u64) -> Draft {
    let filler: Vec<&str> = VOCAB
        .iter()
        .copied()
        .filter(|w| !NOT_FILLER.contains(w))
        .collect();
    let mut rng = SplitMix64::new(lp_seed);
    let mut words = vec![prefix];
    for _ in 0..answer_words {
        let i = usize::try_from(rng.below(filler.len() as u64)).unwrap_or(0);
        words.push(filler.get(i).copied().unwrap_or("the"));
    }
    words.push("ANSWER:");
    let answer_start = words.len();
    words.extend(drawn.text.split_whitespace());
    let tokens = word_tokens(words);
    let mut draft = Draft::new(tokens, lp_seed);
    for (j, slot) in draft.answer.iter_mut().skip(answer_start).enumerate() {
        let chosen = drawn.text.split_whitespace().nth(j).unwrap_or("");
        let mut rivals: Vec<String> = Vec::new();
        for r in &drawn.rivals {
            if let Some(w) = r.split_whitespace().nth(j) {
                if w != chosen && !rivals.iter().any(|x| x == w) {
                    rivals.push(w.to_string());
                }
            }
        }
        *slot = Some(AnswerToken { p: drawn.p, rivals });
    }
    draft
}

/// A ~12 MiB answer: the prefix word, then a 64 KiB block of random words
/// repeated (cheap to build even in debug builds). Ignores `max_tokens` and
/// the answer directive: the point is size.
fn huge_choice(prefix: String, rng: &mut SplitMix64, dialect: Dialect) -> Choice {
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
        keyed: None,
        eos: dialect.has_eos(),
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
    let (sep, word) = split_sep(token);
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
        alts.push((format!("{sep}{candidate}"), lp));
        k += 1;
    }
    TokenLogprob { logprob, top: alts }
}

/// What may follow the end-of-sequence token in its `top_logprobs`, before
/// vocabulary words.
const EOS_RIVALS: &[&str] = &["\n", "\n\n", ".", " "];

/// The logprob of the end-of-sequence token after `index` content tokens:
/// drawn as an ordinary token's (`mean * Exp(1)`, from its own stream);
/// its `top_logprobs` list starts with the token itself (`""`), then
/// newlines and punctuation, then vocabulary words, strictly decreasing.
fn eos_logprob(seed: u64, index: u64, mean: f64, top: u64) -> TokenLogprob {
    let mut rng = SplitMix64::new(Fnv64::new().u64(seed).bytes(b"eos").u64(index).finish());
    let exp1 = -(1.0 - rng.next_f64()).ln();
    let logprob = round6((mean * exp1).max(-30.0)).min(0.0);
    let rest = 1.0 - logprob.exp();
    let mut list = Vec::new();
    if top == 0 {
        return TokenLogprob { logprob, top: list };
    }
    list.push((String::new(), logprob));
    let mut cursor = rng.below(VOCAB.len() as u64);
    let mut prev = logprob;
    for k in 1..top {
        let name = match EOS_RIVALS.get(usize::try_from(k - 1).unwrap_or(usize::MAX)) {
            Some(r) => (*r).to_string(),
            None => {
                let w = vocab_word(cursor % VOCAB.len() as u64);
                cursor += 1;
                format!(" {w}")
            }
        };
        let kf = k as f64;
        let by_mass = (rest * 0.5f64.powf(kf)).ln();
        let mut lp = round6(by_mass.min(logprob - 0.05 * kf).max(-60.0 - kf));
        if lp >= prev {
            lp = round6(prev - 1e-6);
        }
        list.push((name, lp));
        prev = lp;
    }
    TokenLogprob { logprob, top: list }
}

/// A token's separator (leading spaces or newlines) and its word.
fn split_sep(token: &str) -> (&str, &str) {
    let word = token.trim_start_matches([' ', '\n']);
    (token.get(..token.len() - word.len()).unwrap_or(""), word)
}

/// The logprob of an answer token of a keyed question: `ln p`, and a
/// `top_logprobs` list of `top` entries that starts with the chosen token.
/// The runner-up (the first rival: the key when the answer is wrong) gets
/// `min(0.8 (1 - p), 0.9 p)`, so the chosen token stays the most likely
/// (greedy decoding) and the margin grows with `p`; each later entry gets
/// half the previous one (at most `0.1 (1 - p)` for the third), so the
/// probabilities sum to less than 1. After the rivals come vocabulary words.
fn answer_logprob(seed: u64, index: u64, token: &str, a: &AnswerToken, top: u64) -> TokenLogprob {
    let p = a.p.clamp(0.0, 1.0);
    let logprob = round6(p.ln().max(-30.0)).min(0.0);
    let mut list = Vec::new();
    if top == 0 {
        return TokenLogprob { logprob, top: list };
    }
    let (sep, word) = split_sep(token);
    list.push((token.to_string(), logprob));
    let mut rng = SplitMix64::new(
        Fnv64::new()
            .u64(seed)
            .bytes(b"answer-alt")
            .u64(index)
            .finish(),
    );
    let mut cursor = rng.below(VOCAB.len() as u64);
    let mut used: Vec<&str> = vec![word];
    let mut rivals = a.rivals.iter().map(String::as_str);
    let rest = 1.0 - p;
    let mut mass = (0.8 * rest).min(0.9 * p);
    let mut prev = logprob;
    for k in 1..top {
        let name = loop {
            if let Some(r) = rivals.next() {
                if !used.contains(&r) {
                    break r;
                }
                continue;
            }
            let candidate = vocab_word(cursor % VOCAB.len() as u64);
            cursor += 1;
            if !used.contains(&candidate) {
                break candidate;
            }
        };
        used.push(name);
        let mut lp = round6(mass.ln().max(-60.0 - k as f64));
        if lp >= prev {
            lp = round6(prev - 1e-6);
        }
        list.push((format!("{sep}{name}"), lp));
        prev = lp;
        mass = if k == 1 {
            (mass * 0.5).min(0.1 * rest)
        } else {
            mass * 0.5
        };
    }
    TokenLogprob { logprob, top: list }
}

/// One `logprobs.content` entry; llama.cpp adds token ids (the empty
/// end-of-sequence token has id [`dialect::EOS_ID`]).
fn logprob_entry(token: &str, lp: &TokenLogprob, dialect: Dialect) -> Value {
    let with_id = |mut v: Value, t: &str| {
        if let (Dialect::LlamaCpp, Some(obj)) = (dialect, v.as_object_mut()) {
            obj.insert("id".to_string(), json!(dialect::token_id(t)));
        }
        v
    };
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|(t, l)| with_id(json!({"token": t, "logprob": l, "bytes": t.as_bytes()}), t))
        .collect();
    with_id(
        json!({
            "token": token,
            "logprob": lp.logprob,
            "bytes": token.as_bytes(),
            "top_logprobs": top,
        }),
        token,
    )
}

/// The `logprobs` of a choice: one entry per content token, then (when
/// `lps` holds one more) the end-of-sequence token's.
fn logprobs_json(content: &str, lps: Option<&Vec<TokenLogprob>>, dialect: Dialect) -> Value {
    match lps {
        None => Value::Null,
        Some(lps) => {
            let mut text = tokens(content);
            let mut entries = Vec::with_capacity(lps.len());
            for lp in lps {
                match text.next() {
                    Some(t) => entries.push(logprob_entry(t, lp, dialect)),
                    None if dialect.has_eos() => entries.push(logprob_entry("", lp, dialect)),
                    None => break,
                }
            }
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
                    "logprobs": logprobs_json(&c.content, c.logprobs.as_ref(), self.dialect),
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
        if let Some(obj) = v.as_object_mut() {
            if let Some(u) = self.usage {
                obj.insert("usage".to_string(), u.to_json_in(self.dialect));
            }
            if self.dialect == Dialect::LlamaCpp {
                obj.insert(
                    "system_fingerprint".to_string(),
                    json!(dialect::SYSTEM_FINGERPRINT),
                );
                obj.insert("timings".to_string(), dialect::timings(self.counts));
            }
        }
        let small = to_bytes(&v, self.fault);
        if self.fault == Some(FaultKind::CutJson) {
            // Well framed (its own content-length), but the JSON stops half way.
            return small.get(..small.len() / 2).unwrap_or_default().to_vec();
        }
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
        if let Some(obj) = v.as_object_mut() {
            if self.include_usage {
                obj.insert("usage".to_string(), Value::Null);
            }
            if self.dialect == Dialect::LlamaCpp {
                obj.insert(
                    "system_fingerprint".to_string(),
                    json!(dialect::SYSTEM_FINGERPRINT),
                );
            }
        }
        v
    }

    /// Adds llama.cpp's `timings` to the last chunk before `[DONE]`.
    fn add_timings(&self, chunk: &mut Value) {
        if let (Dialect::LlamaCpp, Some(obj)) = (self.dialect, chunk.as_object_mut()) {
            obj.insert("timings".to_string(), dialect::timings(self.counts));
        }
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
            Some(FaultKind::CutJson) => {
                let whole = to_bytes(&self.chunk(Vec::new()), None);
                events.push(SseEvent {
                    kind: EventKind::Other,
                    data: whole.get(..whole.len() / 2).unwrap_or_default().to_vec(),
                });
            }
            _ => {}
        }
        if !matches!(
            self.fault,
            Some(FaultKind::Garbage | FaultKind::WrongShape | FaultKind::CutJson)
        ) {
            let usage_chunk = self.usage.filter(|_| self.include_usage);
            for (i, c) in self.choices.iter().enumerate() {
                // Without a usage chunk, the last finish chunk ends the stream.
                let ends_stream = usage_chunk.is_none() && i + 1 == self.choices.len();
                self.push_choice_events(&mut events, i, c, ends_stream);
            }
            if let Some(u) = usage_chunk {
                let mut v = self.chunk(Vec::new());
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("usage".to_string(), u.to_json_in(self.dialect));
                }
                self.add_timings(&mut v);
                events.push(ev(EventKind::Usage, &v));
            }
        }
        events.push(SseEvent {
            kind: EventKind::Done,
            data: b"[DONE]".to_vec(),
        });
        events
    }

    /// The role, token and finish chunks of choice `index`; `ends_stream`:
    /// its finish chunk is the last chunk of the stream. The end-of-sequence
    /// token adds no chunk (llama-server sends nothing for it: its text is
    /// empty), so its logprobs entry is only in non-streaming bodies.
    fn push_choice_events(
        &self,
        events: &mut Vec<SseEvent>,
        index: usize,
        c: &Choice,
        ends_stream: bool,
    ) {
        let ev = |kind, v: &Value| SseEvent {
            kind,
            data: to_bytes(v, self.fault),
        };
        // llama-server's first delta has a null content.
        let first_content = match self.dialect {
            Dialect::OpenAi => json!(""),
            Dialect::LlamaCpp => Value::Null,
        };
        let role = json!({
            "index": index,
            "delta": {"role": "assistant", "content": first_content},
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
                Some(lp) => json!({
                    "content": [logprob_entry(piece, lp, self.dialect)],
                    "refusal": null,
                }),
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
        let mut fin = self.chunk(vec![fin]);
        if ends_stream {
            self.add_timings(&mut fin);
        }
        events.push(ev(EventKind::Finish, &fin));
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
        // A multi-byte first word, and newline separators.
        assert_eq!(tokens("日本語 x").collect::<Vec<_>>(), vec!["日本語", " x"]);
        assert_eq!(
            tokens("[m] Checked.\nVERDICT: CORRECT").collect::<Vec<_>>(),
            vec!["[m]", " Checked.", "\nVERDICT:", " CORRECT"]
        );
    }

    #[test]
    fn answer_logprobs_are_ordered_and_sum_below_one() {
        for i in 0..200u64 {
            let p = [1.0, 0.99, 0.75, 0.5, 0.3, 0.2, 0.01][(i % 7) as usize];
            let a = AnswerToken {
                p,
                rivals: vec!["C".into(), "A".into(), "D".into()],
            };
            for top in [0, 1, 2, 4, 20] {
                let lp = answer_logprob(i, 3, " B", &a, top);
                assert_eq!(lp.logprob, round6(p.ln()));
                assert_eq!(lp.top.len() as u64, top);
                if top == 0 {
                    continue;
                }
                assert_eq!(lp.top[0], (" B".to_string(), lp.logprob));
                if top > 1 {
                    assert_eq!(lp.top[1].0, " C");
                }
                let mut names: Vec<&str> = lp.top.iter().map(|(t, _)| t.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                assert_eq!(names.len() as u64, top, "{:?}", lp.top);
                let mut prev = f64::INFINITY;
                let mut total = 0.0;
                for (t, l) in &lp.top {
                    assert!(*l < prev && *l <= 0.0, "{t} {l} {prev}");
                    assert!(t.starts_with(' '));
                    prev = *l;
                    total += l.exp();
                }
                assert!(total < 1.0 + 1e-6, "p {p}: {total}");
            }
        }
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
    fn eos_logprobs_are_ordered() {
        for i in 0..200 {
            for mean in [0.0, -0.3, -50.0] {
                for top in [0, 1, 5, 20] {
                    let lp = eos_logprob(9, i, mean, top);
                    assert!(lp.logprob <= 0.0);
                    assert_eq!(lp.top.len() as u64, top);
                    if top == 0 {
                        continue;
                    }
                    assert_eq!(lp.top[0], (String::new(), lp.logprob));
                    let mut names: Vec<&str> = lp.top.iter().map(|(t, _)| t.as_str()).collect();
                    names.sort_unstable();
                    names.dedup();
                    assert_eq!(names.len() as u64, top, "{:?}", lp.top);
                    for pair in lp.top.windows(2) {
                        assert!(pair[1].1 < pair[0].1, "{:?}", lp.top);
                    }
                }
            }
        }
        assert_eq!(eos_logprob(1, 2, -0.3, 3), eos_logprob(1, 2, -0.3, 3));
        assert_eq!(eos_logprob(1, 2, -0.3, 3).top[1].0, "\n");
    }

    #[test]
    fn llama_cpp_usage_counts_the_eos_token() {
        let req = ChatRequest::parse(
            br#"{"model":"m","n":2,"logprobs":true,"messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        let mc = ModelConfig {
            dialect: Dialect::LlamaCpp,
            answer_words: 3,
            ..ModelConfig::default()
        };
        let d = Directives::default();
        for fault in [None, Some(FaultKind::Huge), Some(FaultKind::NoUsage)] {
            let p = GenParams {
                seed: 1,
                model: &mc,
                directives: &d,
                fault,
                id: "x".into(),
                created: 0,
                question: None,
                quality: Quality::default(),
                errors: ErrorModel::default(),
            };
            let c = generate(&req, &p);
            let text: u64 = c.choices.iter().map(|c| c.tokens).sum();
            assert!(c.choices.iter().all(|c| c.eos));
            assert_eq!(c.counts.completion_tokens, text + 2);
            assert_eq!(c.usage.is_none(), fault == Some(FaultKind::NoUsage));
            if fault.is_none() {
                for ch in &c.choices {
                    assert_eq!(ch.logprobs.as_ref().unwrap().len() as u64, ch.tokens + 1);
                }
                let v: Value = serde_json::from_slice(&c.to_json_body()).unwrap();
                assert_eq!(v["usage"]["completion_tokens"], text + 2);
            }
            if fault == Some(FaultKind::NoUsage) {
                // The timings still report what was generated.
                let v: Value = serde_json::from_slice(&c.to_json_body()).unwrap();
                assert!(v.get("usage").is_none());
                assert_eq!(v["timings"]["predicted_n"], text + 2);
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
            question: None,
            quality: Quality::default(),
            errors: ErrorModel::default(),
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
