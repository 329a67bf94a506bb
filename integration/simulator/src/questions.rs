//! Questions with a key, and the gateway's verifier and judge prompts.
//!
//! A request can carry a *keyed question*: `[sim:mc=B]` (multiple choice,
//! options `A`–`D` unless `[sim:options=...]`) or `[sim:exact=42]`. A model
//! then answers `[<model>] <filler> ANSWER: <answer>`, correct with
//! probability [`Quality::accuracy`], and the answer token's probability
//! follows [`Quality::calibration`].
//!
//! The gateway's own prompts quote the question (directives included) in
//! `<question-NONCE>` tags, so the simulator also knows the key when it is
//! asked to *verify* a proposed answer (`Proposed answer:` in the last user
//! message) or to *judge* numbered responses (`Response 1:` … `BEST:`).
//! [`classify`] also recognises synthesis and Fusion judge prompts, which
//! [`crate::synthesis`] answers, and planner prompts, which
//! [`crate::planner`] answers.
//!
//! Everything is drawn from PRNG streams keyed by stable inputs: the seed, the
//! model, the question's identity (never the gateway's nonce) and the choice
//! index. Each decision has its own stream and compares one uniform draw with
//! a probability, so raising a model's accuracy only turns wrong answers into
//! right ones (common random numbers), which keeps comparisons between
//! settings low-noise.
//!
//! Per-model settings live in [`Quality`] (config, overridable by
//! directives); per-item data (the key, and for an item bank's items the
//! difficulty and the distractor) lives in [`Question`]. [`p_correct`] is
//! the one place that combines them.
//!
//! **Item-response model.** When the question has a difficulty `d` and the
//! model an ability `θ`, `p = floor + (1 − floor) σ(a (θ − d))`. The model's
//! confidence on the item is `c ~ Beta(κ p, κ (1 − p))`, drawn once per
//! (seed, model, item); a sample is correct iff `Φ(z) < c` with
//! `z = √ρ g_item + √(1 − ρ) g_sample`, where `g_item` is shared by every
//! model and sample of the item (see [`ErrorModel`]). Otherwise the old
//! model applies: correct iff one uniform draw is below `accuracy`.
//!
//! **Topic skills.** An item may carry a topic `t` and a model a skill
//! `δ_t` for it ([`Quality::topic_skills`]): the model then answers that
//! item with ability `θ + δ_t` (`θ_m + θ_{m,t}` of the generative model),
//! everywhere the item-response `p` is used. See [`irt_p`] for what it does
//! not change.

use std::collections::BTreeMap;

use crate::directives::{Directives, KeyDirective};
use crate::dist;
use crate::items::{self, ItemBank};
use crate::planner::{self, PlannerPrompt};
use crate::rng::{Fnv64, SplitMix64};

/// How the answer token's probability relates to correctness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// Correct answers p ~ U(0.75, 0.99), wrong ones p ~ U(0.25, 0.6).
    Calibrated,
    /// p ~ U(0.85, 0.99) either way.
    Overconfident,
    /// p ~ U(0.2, 0.5) either way.
    Underconfident,
    /// p ~ U(0.2, 0.99) either way.
    Random,
}

impl Calibration {
    pub const ALL: [Calibration; 4] = [
        Calibration::Calibrated,
        Calibration::Overconfident,
        Calibration::Underconfident,
        Calibration::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Calibration::Calibrated => "calibrated",
            Calibration::Overconfident => "overconfident",
            Calibration::Underconfident => "underconfident",
            Calibration::Random => "random",
        }
    }

    pub fn parse(s: &str) -> Option<Calibration> {
        let s = s.trim();
        Calibration::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The answer token's probability reported by a model whose confidence
    /// on the item is `c` (item-response model): `c` itself when
    /// calibrated, pushed up or down on the logit scale, or uniform in
    /// `[0.2, 0.99)` (from `u`) when random.
    pub(crate) fn report(self, c: f64, u: f64) -> f64 {
        match self {
            Calibration::Calibrated => c,
            Calibration::Overconfident => dist::sigmoid(dist::logit(c) + 1.5),
            Calibration::Underconfident => dist::sigmoid(dist::logit(c) - 1.0),
            Calibration::Random => 0.2 + 0.79 * u,
        }
    }

    /// The range the answer token's probability is drawn from.
    pub(crate) fn range(self, correct: bool) -> (f64, f64) {
        match (self, correct) {
            (Calibration::Calibrated, true) => (0.75, 0.99),
            (Calibration::Calibrated, false) => (0.25, 0.6),
            (Calibration::Overconfident, _) => (0.85, 0.99),
            (Calibration::Underconfident, _) => (0.2, 0.5),
            (Calibration::Random, _) => (0.2, 0.99),
        }
    }
}

/// A model's quality settings (config, overridable per request by
/// directives). All probabilities are in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    /// P(answer a keyed question correctly).
    pub accuracy: f64,
    pub calibration: Calibration,
    /// P(say CORRECT | the proposed answer is correct).
    pub verifier_sensitivity: f64,
    /// P(say INCORRECT | the proposed answer is wrong).
    pub verifier_specificity: f64,
    /// P(a judge picks the first correct response, when there is one).
    /// A Fusion judge uses it as its synthesis skill (see [`crate::synthesis`]).
    pub judge_skill: f64,
    /// P(a synthesizer answers the key, when a reference gives it; else it
    /// follows the plurality of the references).
    pub synth_skill: f64,
    /// P(a Fusion judge replies with text that is not JSON).
    pub judge_garbage_rate: f64,
    /// P(a planner replies with an invalid plan).
    pub planner_error_rate: f64,
    /// Item-response ability `θ`. `None`: questions are answered with
    /// `accuracy`, whatever their difficulty.
    pub ability: Option<f64>,
    /// Item-response discrimination `a`.
    pub discrimination: f64,
    /// Item-response guessing floor: `p` never falls below it.
    pub guess_floor: f64,
    /// Per-topic ability shifts `δ_t`: on an item of topic `t` the model's
    /// ability is `θ + δ_t` (0 for a topic not listed, or an item without a
    /// topic). Only used with an `ability`.
    pub topic_skills: BTreeMap<String, f64>,
}

impl Quality {
    /// The ability shift `δ_t` on an item of `topic` (0 when the item has no
    /// topic or the model no skill for it).
    pub fn topic_skill(&self, topic: Option<&str>) -> f64 {
        topic
            .and_then(|t| self.topic_skills.get(t))
            .copied()
            .unwrap_or(0.0)
    }
}

impl Default for Quality {
    fn default() -> Self {
        Quality {
            accuracy: 0.7,
            calibration: Calibration::Calibrated,
            verifier_sensitivity: 0.9,
            verifier_specificity: 0.8,
            judge_skill: 0.8,
            synth_skill: 0.7,
            judge_garbage_rate: 0.0,
            planner_error_rate: 0.0,
            ability: None,
            discrimination: 1.0,
            guess_floor: 0.0,
            topic_skills: BTreeMap::new(),
        }
    }
}

/// [`Quality`] fields set by directives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualityOverrides {
    pub accuracy: Option<f64>,
    pub calibration: Option<Calibration>,
    pub verifier_sensitivity: Option<f64>,
    pub verifier_specificity: Option<f64>,
    pub judge_skill: Option<f64>,
    pub synth_skill: Option<f64>,
    pub judge_garbage_rate: Option<f64>,
    pub planner_error_rate: Option<f64>,
}

impl QualityOverrides {
    /// Fields set in `over` replace those in `self`.
    pub fn overlay(&mut self, over: &QualityOverrides) {
        fn set<T: Copy>(slot: &mut Option<T>, v: Option<T>) {
            if v.is_some() {
                *slot = v;
            }
        }
        set(&mut self.accuracy, over.accuracy);
        set(&mut self.calibration, over.calibration);
        set(&mut self.verifier_sensitivity, over.verifier_sensitivity);
        set(&mut self.verifier_specificity, over.verifier_specificity);
        set(&mut self.judge_skill, over.judge_skill);
        set(&mut self.synth_skill, over.synth_skill);
        set(&mut self.judge_garbage_rate, over.judge_garbage_rate);
        set(&mut self.planner_error_rate, over.planner_error_rate);
    }

    pub fn apply(&self, base: &Quality) -> Quality {
        Quality {
            accuracy: self.accuracy.unwrap_or(base.accuracy),
            calibration: self.calibration.unwrap_or(base.calibration),
            verifier_sensitivity: self
                .verifier_sensitivity
                .unwrap_or(base.verifier_sensitivity),
            verifier_specificity: self
                .verifier_specificity
                .unwrap_or(base.verifier_specificity),
            judge_skill: self.judge_skill.unwrap_or(base.judge_skill),
            synth_skill: self.synth_skill.unwrap_or(base.synth_skill),
            judge_garbage_rate: self.judge_garbage_rate.unwrap_or(base.judge_garbage_rate),
            planner_error_rate: self.planner_error_rate.unwrap_or(base.planner_error_rate),
            ability: base.ability,
            discrimination: base.discrimination,
            guess_floor: base.guess_floor,
            topic_skills: base.topic_skills.clone(),
        }
    }
}

/// The default multiple-choice options.
pub const DEFAULT_OPTIONS: &str = "ABCD";

/// A question's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// Multiple choice: the correct letter among `options` (distinct
    /// capital letters, 2 to 26 of them).
    Choice { answer: char, options: Vec<char> },
    /// Exact answer: words joined by single spaces.
    Exact(String),
}

/// An item's attractive wrong answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Distractor {
    /// An option letter, or an exact answer that does not match the key.
    pub answer: String,
    /// P(a wrong answer is the distractor rather than the usual draw).
    pub attraction: f64,
}

/// A keyed question, as the simulator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// What the answer draws are keyed by: `tag:<TAG>` for an item bank's
    /// `[item:TAG]`, `item:<ID>` for `[sim:item=ID]`, else the text
    /// (message or text part) holding the key directive, or, when the
    /// directive sits inside a `<label-NONCE>` block of that text (the
    /// gateway quoting the question), the inside of that block.
    pub identity: String,
    pub key: Key,
    /// Item-response difficulty (item banks only).
    pub difficulty: Option<f64>,
    /// Attractive wrong answer (item banks only).
    pub distractor: Option<Distractor>,
    /// The item's topic, which selects a model's topic skill (item banks
    /// only).
    pub topic: Option<String>,
    /// The item bank's tag, when the question comes from the bank.
    pub tag: Option<String>,
}

impl Question {
    /// A question with only an identity and a key (as directives give).
    pub fn new(identity: impl Into<String>, key: Key) -> Question {
        Question {
            identity: identity.into(),
            key,
            difficulty: None,
            distractor: None,
            topic: None,
            tag: None,
        }
    }
}

/// The keyed question of a request: the item of its last `[item:TAG]`
/// when it has one, else the one its `mc`/`exact` directives give (`None`
/// without any). An error for an unknown or malformed tag, for a tag
/// combined with `mc`, `exact`, `options` or `item` directives, or when
/// the `mc` answer is not one of the options.
pub fn question(
    d: &Directives,
    texts: &[String],
    bank: &ItemBank,
) -> Result<Option<Question>, String> {
    if let Some((tag, item)) = items::find_tag(bank, texts)? {
        if d.key.is_some() || d.options.is_some() || d.item.is_some() {
            return Err(format!(
                "[item:{tag}] cannot be combined with the mc, exact, options or item directives"
            ));
        }
        return Ok(Some(Question {
            identity: format!("tag:{tag}"),
            key: item.key.clone(),
            difficulty: item.difficulty,
            distractor: item.distractor.clone(),
            topic: item.topic.clone(),
            tag: Some(tag.to_string()),
        }));
    }
    let Some((spec, (text_index, offset))) = &d.key else {
        return Ok(None);
    };
    let key = match spec {
        KeyDirective::Choice(answer) => {
            let options = d
                .options
                .clone()
                .unwrap_or_else(|| DEFAULT_OPTIONS.chars().collect());
            if !options.contains(answer) {
                let listed: String = options.iter().collect();
                return Err(format!(
                    "mc answer {answer} is not one of the options {listed}"
                ));
            }
            Key::Choice {
                answer: *answer,
                options,
            }
        }
        KeyDirective::Exact(text) => Key::Exact(text.clone()),
    };
    let identity = match &d.item {
        Some(id) => format!("item:{id}"),
        None => {
            let text = texts.get(*text_index).map_or("", String::as_str);
            enclosing_block(text, *offset).unwrap_or(text).to_string()
        }
    };
    Ok(Some(Question::new(identity, key)))
}

/// The item-response probability `floor + (1 − floor) σ(a (θ + δ_t − d))`,
/// when the question has a difficulty and the model an ability; `δ_t` is
/// the model's skill for the item's topic ([`Quality::topic_skill`], 0
/// without one).
///
/// The topic skill shifts the ability and nothing else, so it reaches
/// everything this `p` drives: the model's answers and their reported
/// confidence, and the own answer a synthesizer or a Fusion judge falls
/// back to when no reference states one. Verifier verdicts
/// (`verifier_sensitivity`, `verifier_specificity`), judge picks
/// (`judge_skill`) and a synthesizer's recognition of the key among the
/// references (`synth_skill`) do not depend on the ability, and so not on
/// the topic either: a specialist is better at *answering* its topic, not
/// at grading others' answers on it. A model that should also grade its
/// topic better needs higher skills, which then hold for every item.
pub fn irt_p(quality: &Quality, question: &Question) -> Option<f64> {
    let (ability, d) = (quality.ability?, question.difficulty?);
    let theta = ability + quality.topic_skill(question.topic.as_deref());
    let floor = quality.guess_floor;
    Some(floor + (1.0 - floor) * dist::sigmoid(quality.discrimination * (theta - d)))
}

/// Correctness odds of a model on a question: the item-response `p` when
/// it applies ([`irt_p`]), else the model's accuracy.
pub fn p_correct(quality: &Quality, question: &Question) -> f64 {
    irt_p(quality, question).unwrap_or(quality.accuracy)
}

/// Population-wide settings of the item-response error model (global
/// config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorModel {
    /// The config's seed: the item-level draws (`g_item`, shared by every
    /// model and sample, and each model's confidence on the item) use it,
    /// never the request's `seed`.
    pub item_seed: u64,
    /// ρ in `[0, 1)`: the weight of the item's shared normal in each
    /// sample's correctness draw.
    pub correlation: f64,
    /// κ > 0: the confidence is Beta(κ p, κ (1 − p)); larger is tighter.
    pub confidence_spread: f64,
}

impl Default for ErrorModel {
    fn default() -> Self {
        ErrorModel {
            item_seed: 0,
            correlation: 0.0,
            confidence_spread: 4.0,
        }
    }
}

impl ErrorModel {
    /// The model's confidence `c ~ Beta(κ p, κ (1 − p))` on the question,
    /// clamped to `[0.001, 0.999]`: one draw per (seed, model, identity).
    pub fn confidence(&self, model: &str, identity: &str, p: f64) -> f64 {
        let p = p.clamp(1e-6, 1.0 - 1e-6);
        let k = self.confidence_spread;
        let mut rng = stream(self.item_seed, model, b"item-confidence", identity, 0);
        dist::beta(&mut rng, k * p, k * (1.0 - p)).clamp(0.001, 0.999)
    }

    /// `U = Φ(√ρ g_item + √(1 − ρ) g_sample)`: uniform for every model,
    /// correlated across models and samples of one item through `g_item`.
    pub fn copula_uniform(&self, seed: u64, model: &str, identity: &str, index: u64) -> f64 {
        let g_item = dist::normal(&mut stream(self.item_seed, "", b"item-normal", identity, 0));
        let g_sample = dist::normal(&mut stream(seed, model, b"sample-normal", identity, index));
        let rho = self.correlation.clamp(0.0, 1.0);
        dist::phi(rho.sqrt() * g_item + (1.0 - rho).sqrt() * g_sample)
    }
}

/// Directive-level forcing of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Forced {
    /// `[sim:confidence=P]`: the answer token's probability.
    pub confidence: Option<f64>,
    /// `[sim:correct=yes|no]`.
    pub correct: Option<bool>,
}

/// One drawn answer to a keyed question.
#[derive(Debug, Clone, PartialEq)]
pub struct Drawn {
    /// The answer text (a letter, or the exact answer or a wrong one).
    pub text: String,
    pub correct: bool,
    /// Probability of each answer token.
    pub p: f64,
    /// Other plausible answers, most likely first: for a wrong answer the
    /// key comes first. They feed the answer token's `top_logprobs`.
    pub rivals: Vec<String>,
}

fn stream(seed: u64, model: &str, what: &[u8], identity: &str, index: u64) -> SplitMix64 {
    SplitMix64::new(
        Fnv64::new()
            .bytes(b"looper-sim/")
            .bytes(what)
            .u64(seed)
            .str(model)
            .str(identity)
            .u64(index)
            .finish(),
    )
}

/// The seed of choice `index` of `model`'s answer to a keyed question (for
/// the filler words and the logprobs of the other tokens).
pub fn answer_seed(seed: u64, model: &str, question: &Question, index: u64) -> u64 {
    stream(seed, model, b"keyed", &question.identity, index).next_u64()
}

pub(crate) fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

/// Choice `index` of `model`'s answer. `seed` is the request's (the
/// config's seed mixed with the request's `seed` field); the item-level
/// draws use `errors.item_seed`.
pub fn draw_answer(
    seed: u64,
    model: &str,
    question: &Question,
    quality: &Quality,
    errors: &ErrorModel,
    forced: Forced,
    index: u64,
) -> Drawn {
    let id = question.identity.as_str();
    // Item-response model: the confidence first, then correctness.
    let confidence = irt_p(quality, question).map(|p| errors.confidence(model, id, p));
    let natural = match confidence {
        Some(c) => errors.copula_uniform(seed, model, id, index) < c,
        None => stream(seed, model, b"correct", id, index).next_f64() < quality.accuracy,
    };
    let correct = forced.correct.unwrap_or(natural);
    let mut pick = stream(seed, model, b"wrong", id, index);
    let (right, mut wrongs) = candidates(&question.key);
    shuffle(&mut wrongs, &mut pick);
    // An attractive distractor takes a wrong answer's place with
    // probability `attraction`; it is also the strongest wrong rival.
    let distractor = question.distractor.as_ref();
    let attracted = distractor
        .is_some_and(|d| stream(seed, model, b"attraction", id, index).next_f64() < d.attraction);
    if let Some(d) = distractor {
        if attracted {
            wrongs.retain(|w| *w != d.answer);
            wrongs.insert(0, d.answer.clone());
        } else if !wrongs.contains(&d.answer) {
            // An exact item's distractor: a rival, not the usual wrong draw.
            wrongs.push(d.answer.clone());
        }
    }
    let text = if correct {
        right.clone()
    } else {
        wrongs.first().cloned().unwrap_or_else(|| right.clone())
    };
    let correct = text == right;
    // Runner-up: the key when wrong, else another wrong answer.
    let mut rivals: Vec<String> = wrongs.into_iter().filter(|w| *w != text).collect();
    // Not chosen, the distractor is still the strongest wrong rival.
    if let Some(i) = distractor.and_then(|d| rivals.iter().position(|r| *r == d.answer)) {
        let r = rivals.remove(i);
        rivals.insert(0, r);
    }
    if !correct {
        rivals.insert(0, right);
    }
    let mut conf_rng = stream(seed, model, b"confidence", id, index);
    let drawn_p = match confidence {
        Some(c) => quality.calibration.report(c, conf_rng.next_f64()),
        None => {
            let (lo, hi) = quality.calibration.range(correct);
            uniform(&mut conf_rng, lo, hi)
        }
    };
    Drawn {
        text,
        correct,
        p: forced.confidence.unwrap_or(drawn_p),
        rivals,
    }
}

/// The right answer and every wrong one a model may give.
pub(crate) fn candidates(key: &Key) -> (String, Vec<String>) {
    match key {
        Key::Choice { answer, options } => (
            answer.to_string(),
            options
                .iter()
                .filter(|o| *o != answer)
                .map(char::to_string)
                .collect(),
        ),
        Key::Exact(text) => (text.clone(), wrong_exact(text)),
    }
}

/// Wrong answers to an exact question: `key+1..key+3` for a number (with as
/// many decimals as the key), else `not-<key>`.
fn wrong_exact(key: &str) -> Vec<String> {
    if let Ok(n) = key.parse::<i64>() {
        return (1..=3)
            .map(|d| n.checked_add(d).unwrap_or(n.wrapping_sub(d)).to_string())
            .collect();
    }
    if let Some((int, frac)) = key.split_once('.') {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let int_ok = digits(int.strip_prefix('-').unwrap_or(int));
        if int_ok && digits(frac) && frac.len() <= 12 {
            if let Ok(x) = key.parse::<f64>() {
                let places = frac.len();
                return (1..=3)
                    .map(|d| format!("{:.*}", places, x + f64::from(d)))
                    .collect();
            }
        }
    }
    vec![format!("not-{key}")]
}

/// Normalises an answer for comparison: whitespace collapsed, decoration
/// (`*`, `` ` ``, `$`, quotes) and a trailing `.` dropped, lower case.
fn normalise(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut t = joined.as_str();
    loop {
        let before = t;
        t = t
            .trim_matches(|c: char| matches!(c, '*' | '`' | '$' | '"' | '\''))
            .trim();
        t = t.strip_suffix('.').unwrap_or(t).trim();
        if t == before {
            break;
        }
    }
    t.to_lowercase()
}

/// `s` as a number, ignoring thousands separators (`1,000`).
fn number(s: &str) -> Option<f64> {
    let digits: String = s.chars().filter(|c| *c != ',' && *c != ' ').collect();
    digits.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Whether `proposed` (already extracted) matches the key.
pub fn matches_key(key: &Key, proposed: &str) -> bool {
    match key {
        Key::Choice { answer, .. } => choice_letter(proposed).is_some_and(|c| c == *answer),
        Key::Exact(text) => {
            let (a, b) = (normalise(text), normalise(proposed));
            if a == b {
                return true;
            }
            match (number(&a), number(&b)) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                _ => false,
            }
        }
    }
}

/// The option letter at the start of `s` (`B`, `(b)`, `**B**.`), if `s`
/// starts with one that is not the start of a word.
fn choice_letter(s: &str) -> Option<char> {
    let s = s.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '(' | '['));
    let mut chars = s.chars();
    let c = chars.next()?.to_ascii_uppercase();
    let next_ok = chars.next().is_none_or(|n| !n.is_alphanumeric());
    (c.is_ascii_uppercase() && next_ok).then_some(c)
}

/// The answer stated in `text`: what follows its last `ANSWER:` (case
/// insensitive) up to the end of that line; without such a marker, the
/// last non-empty line when the text has no more than one. `None` when it
/// is empty or, for a multiple-choice key, not a letter.
pub fn extract_answer(text: &str, key: &Key) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let raw = match lower.rfind("answer:") {
        Some(at) => {
            let rest = text.get(at + "answer:".len()..).unwrap_or("");
            rest.lines().next().unwrap_or("").trim().to_string()
        }
        None => {
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let only = lines.next()?;
            if lines.next().is_some() {
                return None;
            }
            only.to_string()
        }
    };
    match key {
        Key::Choice { .. } => choice_letter(&raw).map(String::from),
        Key::Exact(_) => {
            let words = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            (!words.is_empty()).then_some(words)
        }
    }
}

// ---------------------------------------------------------------------------
// Fenced blocks and prompt classification

/// A `<label-NONCE>` … `</label-NONCE>` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    pub label: &'a str,
    /// The quoted text, without the newline after the opening tag and the
    /// one before the closing tag.
    pub inner: &'a str,
    /// Byte range of the inner text in the scanned text.
    pub inner_start: usize,
    pub inner_end: usize,
    /// Byte range of the whole block, tags included.
    pub outer_start: usize,
    pub outer_end: usize,
}

/// The opening tag at byte `at` (`<label-nonce>`): `(label, nonce, end)`.
fn open_tag(text: &str, at: usize) -> Option<(&str, &str, usize)> {
    let rest = text.get(at..)?.strip_prefix('<')?;
    let label_len = rest
        .find(|c: char| !c.is_ascii_lowercase())
        .unwrap_or(rest.len());
    let label = rest.get(..label_len)?;
    let after = rest.get(label_len..)?.strip_prefix('-')?;
    let nonce_len = after
        .find(|c: char| c == '>' || c == '<' || c == '/' || c.is_whitespace())
        .unwrap_or(after.len());
    let nonce = after.get(..nonce_len)?;
    let tail = after.get(nonce_len..)?;
    if label.is_empty() || nonce.is_empty() || nonce.len() > 128 || !tail.starts_with('>') {
        return None;
    }
    Some((label, nonce, at + 1 + label_len + 1 + nonce_len + 1))
}

/// Every top-level fenced block of `text`, in order.
pub fn blocks(text: &str) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(rel) = text.get(i..).and_then(|r| r.find('<')) {
        let at = i + rel;
        if let Some((label, nonce, open_end)) = open_tag(text, at) {
            let close = format!("</{label}-{nonce}>");
            if let Some(crel) = text.get(open_end..).and_then(|r| r.find(&close)) {
                let close_at = open_end + crel;
                let mut inner_start = open_end;
                let mut inner_end = close_at;
                if text.get(inner_start..inner_start + 1) == Some("\n") && inner_start < inner_end {
                    inner_start += 1;
                }
                if inner_end > inner_start && text.get(inner_end - 1..inner_end) == Some("\n") {
                    inner_end -= 1;
                }
                out.push(Block {
                    label,
                    inner: text.get(inner_start..inner_end).unwrap_or(""),
                    inner_start,
                    inner_end,
                    outer_start: at,
                    outer_end: close_at + close.len(),
                });
                i = close_at + close.len();
                continue;
            }
        }
        i = at + 1;
    }
    out
}

/// `text` without its fenced blocks: the gateway's own words.
pub fn outside_blocks(text: &str) -> String {
    let mut out = String::new();
    let mut last = 0;
    for b in blocks(text) {
        out.push_str(text.get(last..b.outer_start).unwrap_or(""));
        out.push(' ');
        last = b.outer_end;
    }
    out.push_str(text.get(last..).unwrap_or(""));
    out
}

/// The inside of the block of `text` that contains byte `at`, if any.
pub fn enclosing_block(text: &str, at: usize) -> Option<&str> {
    blocks(text)
        .into_iter()
        .find(|b| b.inner_start <= at && at < b.inner_end)
        .map(|b| b.inner)
}

/// What the last user message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A verifier prompt: `Proposed answer:` outside any block.
    Verify {
        /// The quoted proposed answer (the last `answer` block, else the
        /// text after the last `Proposed answer:`).
        proposed: String,
        /// Whether a `CONFIDENCE` line is asked for.
        with_confidence: bool,
        /// The gateway's words, for seeding when there is no key.
        outside: String,
    },
    /// A judge prompt: `Response 1:` and `BEST:` outside any block.
    Judge {
        /// The quoted responses, in order.
        responses: Vec<String>,
        outside: String,
    },
    /// A Fusion judge prompt: a `question` block, `answer` blocks and
    /// `trusted_answer` outside any block.
    FusionJudge {
        /// The quoted answers, in order.
        answers: Vec<String>,
        outside: String,
    },
    /// A synthesis prompt (ReMoM synthesis or later round, Fusion
    /// finalizer, a Workflows step or finalizer that quotes earlier results):
    /// a `question` block and `answer` (or `output`) blocks, and none of the
    /// other prompts' wording (`Proposed answer:`, `BEST:`, `trusted_answer`).
    Synthesize {
        /// The quoted answers, in order.
        answers: Vec<String>,
        /// The first `analysis` block (a Fusion judge's JSON), if any.
        analysis: Option<String>,
        outside: String,
    },
    /// A planner or re-plan prompt (Workflows): an `Available workers:`
    /// line and `"steps"` outside any block (see [`crate::planner`]).
    Plan {
        planner: PlannerPrompt,
        /// The inside of the first `question` block, if any.
        question: Option<String>,
        outside: String,
    },
    Other,
}

pub fn classify(last_user: Option<&str>) -> Prompt {
    let Some(text) = last_user else {
        return Prompt::Other;
    };
    let outside = outside_blocks(text);
    if let Some(planner) = planner::recognise(&outside) {
        let question = blocks(text)
            .into_iter()
            .find(|b| b.label == "question")
            .map(|b| b.inner.to_string());
        return Prompt::Plan {
            planner,
            question,
            outside,
        };
    }
    if outside.contains("Proposed answer:") {
        let proposed = blocks(text)
            .into_iter()
            .rfind(|b| b.label == "answer")
            .map(|b| b.inner.to_string())
            .or_else(|| {
                text.rfind("Proposed answer:")
                    .and_then(|at| text.get(at + "Proposed answer:".len()..))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        return Prompt::Verify {
            proposed,
            with_confidence: outside.contains("CONFIDENCE"),
            outside,
        };
    }
    if outside.contains("Response 1:") && outside.contains("BEST:") {
        let mut responses: Vec<String> = blocks(text)
            .into_iter()
            .filter(|b| b.label == "response")
            .map(|b| b.inner.to_string())
            .collect();
        if responses.is_empty() {
            // Unfenced responses: count `Response N:` labels.
            let mut n = 1;
            while outside.contains(&format!("Response {n}:")) && n <= 1000 {
                responses.push(String::new());
                n += 1;
            }
        }
        return Prompt::Judge { responses, outside };
    }
    let all = blocks(text);
    // Workflows quote earlier steps' results as `output` blocks: references like answers.
    let answers: Vec<String> = all
        .iter()
        .filter(|b| b.label == "answer" || b.label == "output")
        .map(|b| b.inner.to_string())
        .collect();
    if answers.is_empty() || !all.iter().any(|b| b.label == "question") {
        return Prompt::Other;
    }
    if outside.contains("trusted_answer") {
        return Prompt::FusionJudge { answers, outside };
    }
    if outside.contains("BEST:") {
        return Prompt::Other;
    }
    let analysis = all
        .iter()
        .find(|b| b.label == "analysis")
        .map(|b| b.inner.to_string());
    Prompt::Synthesize {
        answers,
        analysis,
        outside,
    }
}

/// One verifier reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub correct: bool,
    /// 0–100: ~U(70, 98) when saying CORRECT, ~U(5, 35) when INCORRECT.
    pub confidence: u64,
    /// The key or the proposed answer could not be found.
    pub invalid: bool,
}

/// Choice `index` of `model`'s verdict on `proposed` (the quoted answer
/// block). Without a key or an extractable answer it says INCORRECT.
pub fn verify(
    seed: u64,
    model: &str,
    question: Option<&Question>,
    proposed: &str,
    quality: &Quality,
    basis: &str,
    index: u64,
) -> Verdict {
    let extracted = question.and_then(|q| extract_answer(proposed, &q.key));
    let identity = question.map_or(basis, |q| q.identity.as_str());
    let mut rng = SplitMix64::new(
        Fnv64::new()
            .bytes(b"looper-sim/verify")
            .u64(seed)
            .str(model)
            .str(identity)
            .str(extracted.as_deref().unwrap_or(""))
            .u64(index)
            .finish(),
    );
    let u = rng.next_f64();
    let (correct, invalid) = match (question, &extracted) {
        (Some(q), Some(answer)) => {
            let truth = matches_key(&q.key, answer);
            let says_correct = if truth {
                u < quality.verifier_sensitivity
            } else {
                u >= quality.verifier_specificity
            };
            (says_correct, false)
        }
        _ => (false, true),
    };
    let confidence = if correct {
        70 + rng.up_to(28)
    } else {
        5 + rng.up_to(30)
    };
    Verdict {
        correct,
        confidence,
        invalid,
    }
}

/// Choice `index` of `model`'s pick (1-based) among `responses`: with
/// probability `judge_skill` the first response whose answer matches the
/// key, if any; otherwise a uniformly drawn one.
pub fn judge(
    seed: u64,
    model: &str,
    question: Option<&Question>,
    responses: &[String],
    quality: &Quality,
    basis: &str,
    index: u64,
) -> usize {
    let mut h = Fnv64::new();
    h.bytes(b"looper-sim/judge")
        .u64(seed)
        .str(model)
        .str(question.map_or(basis, |q| q.identity.as_str()))
        .u64(responses.len() as u64);
    for r in responses {
        h.str(r);
    }
    let mut rng = SplitMix64::new(h.u64(index).finish());
    let skilled = rng.next_f64() < quality.judge_skill;
    let random = rng.below(responses.len().max(1) as u64);
    let keyed = question.and_then(|q| {
        responses
            .iter()
            .position(|r| extract_answer(r, &q.key).is_some_and(|a| matches_key(&q.key, &a)))
    });
    match keyed {
        Some(i) if skilled => i + 1,
        _ => usize::try_from(random).unwrap_or(0) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(answer: char) -> Key {
        Key::Choice {
            answer,
            options: DEFAULT_OPTIONS.chars().collect(),
        }
    }

    #[test]
    fn wrong_exact_values() {
        assert_eq!(wrong_exact("42"), vec!["43", "44", "45"]);
        assert_eq!(wrong_exact("-1"), vec!["0", "1", "2"]);
        assert_eq!(wrong_exact("3.14"), vec!["4.14", "5.14", "6.14"]);
        assert_eq!(wrong_exact("Paris"), vec!["not-Paris"]);
        assert_eq!(wrong_exact("1.2.3"), vec!["not-1.2.3"]);
    }

    #[test]
    fn extraction_and_matching() {
        let b = mc('B');
        assert_eq!(
            extract_answer("[m] x y ANSWER: B", &b).as_deref(),
            Some("B")
        );
        assert_eq!(extract_answer("answer: (b).", &b).as_deref(), Some("B"));
        assert_eq!(extract_answer("ANSWER: Because", &b), None);
        assert_eq!(extract_answer("B", &b).as_deref(), Some("B"));
        assert_eq!(extract_answer("two\nlines", &b), None);
        assert_eq!(
            extract_answer("ANSWER: A\nANSWER: C", &b).as_deref(),
            Some("C")
        );
        let e = Key::Exact("42".into());
        assert_eq!(
            extract_answer("ANSWER:  42.0 \nmore", &e).as_deref(),
            Some("42.0")
        );
        assert!(matches_key(&e, "42.0"));
        assert!(matches_key(&e, "**42**."));
        assert!(matches_key(&Key::Exact("1000".into()), "1,000"));
        assert!(!matches_key(&e, "43"));
        let t = Key::Exact("New York".into());
        assert!(matches_key(&t, "new  york."));
        assert!(!matches_key(&t, "not-New York"));
    }

    #[test]
    fn blocks_and_classification() {
        let text = "Check.\n\nQuestion:\n<question-n1>\nWhat? [sim:mc=B]\n</question-n1>\n\n\
                    Proposed answer:\n<answer-n1>\n[m] ANSWER: B\n</answer-n1>\n\nVERDICT only.";
        let bs = blocks(text);
        assert_eq!(bs.len(), 2);
        assert_eq!(bs[0].label, "question");
        assert_eq!(bs[0].inner, "What? [sim:mc=B]");
        assert_eq!(bs[1].inner, "[m] ANSWER: B");
        let at = text.find("[sim:").unwrap();
        assert_eq!(enclosing_block(text, at), Some("What? [sim:mc=B]"));
        match classify(Some(text)) {
            Prompt::Verify {
                proposed,
                with_confidence,
                ..
            } => {
                assert_eq!(proposed, "[m] ANSWER: B");
                assert!(!with_confidence);
            }
            other => panic!("{other:?}"),
        }
        // Quoted markers do not count.
        assert_eq!(
            classify(Some(
                "<answer-x>\nProposed answer: Response 1: BEST: 1\n</answer-x>"
            )),
            Prompt::Other
        );
        // An unclosed tag is plain text.
        assert_eq!(blocks("<answer-x> never closed").len(), 0);
        let judge = "Response 1:\n<response-k>\nANSWER: A\n</response-k>\n\nResponse 2:\n\
                     <response-k>\nANSWER: B\n</response-k>\n\nFinish with `BEST: N`.";
        match classify(Some(judge)) {
            Prompt::Judge { responses, .. } => {
                assert_eq!(responses, vec!["ANSWER: A", "ANSWER: B"])
            }
            other => panic!("{other:?}"),
        }
        // A Workflows finalizer quotes the steps' results as `output` blocks.
        let finalizer = "A team worked on it.\n\nQuestion:\n<question-k>\nWhat? [sim:mc=C]\n\
                         </question-k>\n\nResults:\nResult of step a:\n<output-k>\n\
                         ANSWER: C\n</output-k>";
        match classify(Some(finalizer)) {
            Prompt::Synthesize { answers, .. } => assert_eq!(answers, vec!["ANSWER: C"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn planner_prompts_come_first() {
        let text = "Question:\n<question-n>\nQ? [sim:mc=B]\n</question-n>\n\n\
                    Answer 1:\n<answer-n>\nANSWER: B\n</answer-n>\n\n\
                    Available workers:\n- a: x\n- b: y\n\nProposed answer: BEST: \
                    trusted_answer. Reply with {\"steps\": []}, at most 2 steps.";
        match classify(Some(text)) {
            Prompt::Plan {
                planner, question, ..
            } => {
                assert_eq!(planner.workers, vec!["a", "b"]);
                assert_eq!(planner.max_steps, 2);
                assert_eq!(question.as_deref(), Some("Q? [sim:mc=B]"));
            }
            other => panic!("{other:?}"),
        }
        // Inside a block, the planner's words do not count.
        let quoted = "<question-n>\nAvailable workers:\n- a: x\n\"steps\"\n</question-n>";
        assert_eq!(classify(Some(quoted)), Prompt::Other);
    }

    #[test]
    fn item_response_probability_and_reports() {
        let mut q = Question::new("q", mc('C'));
        let mut quality = Quality::default();
        assert_eq!(irt_p(&quality, &q), None);
        assert_eq!(p_correct(&quality, &q), 0.7);
        quality.ability = Some(1.0);
        assert_eq!(irt_p(&quality, &q), None, "no difficulty, no IRT");
        q.difficulty = Some(1.0);
        quality.guess_floor = 0.25;
        quality.discrimination = 2.0;
        assert_eq!(irt_p(&quality, &q), Some(0.25 + 0.75 * 0.5));
        q.difficulty = Some(0.0);
        let want = 0.25 + 0.75 / (1.0 + (-2.0f64).exp());
        assert!((p_correct(&quality, &q) - want).abs() < 1e-12);
        for c in [0.01, 0.3, 0.5, 0.9] {
            assert_eq!(Calibration::Calibrated.report(c, 0.5), c);
            assert!(Calibration::Overconfident.report(c, 0.5) > c);
            assert!(Calibration::Underconfident.report(c, 0.5) < c);
        }
        assert_eq!(Calibration::Random.report(0.9, 0.0), 0.2);
    }

    #[test]
    fn topic_skills_shift_the_ability() {
        let mut quality = Quality {
            ability: Some(0.5),
            discrimination: 1.2,
            guess_floor: 0.25,
            ..Quality::default()
        };
        let plain = quality.clone();
        quality.topic_skills.insert("code".into(), 2.0);
        quality.topic_skills.insert("math".into(), -1.0);
        let mut shifted = plain.clone();
        let mut q = Question::new("q", mc('C'));
        q.difficulty = Some(1.0);
        let p = |theta: f64| 0.25 + 0.75 * dist::sigmoid(1.2 * (theta - 1.0));
        // No topic, or a topic the model has no skill for: unchanged.
        assert_eq!(irt_p(&quality, &q), irt_p(&plain, &q));
        assert_eq!(irt_p(&quality, &q), Some(p(0.5)));
        q.topic = Some("chat".into());
        assert_eq!(irt_p(&quality, &q), Some(p(0.5)));
        // A skilled topic: exactly the ability plus the skill, either sign.
        q.topic = Some("code".into());
        assert_eq!(irt_p(&quality, &q), Some(p(2.5)));
        assert!(irt_p(&quality, &q) > irt_p(&plain, &q));
        q.topic = Some("math".into());
        assert_eq!(irt_p(&quality, &q), Some(p(-0.5)));
        assert_eq!(p_correct(&quality, &q), p(-0.5));
        // Without an ability the skills do nothing: the flat accuracy.
        let mut flat = quality.clone();
        flat.ability = None;
        assert_eq!(irt_p(&flat, &q), None);
        assert_eq!(p_correct(&flat, &q), flat.accuracy);
        // Draws: a skilled topic answers as the plain model with the shifted
        // ability (the same streams); no topic answers as the plain model.
        let e = ErrorModel {
            item_seed: 7,
            correlation: 0.3,
            confidence_spread: 4.0,
        };
        shifted.ability = Some(2.5);
        let mut right = [0, 0];
        for i in 0..200 {
            let mut item = Question::new(format!("tag:t{i}"), mc('C'));
            item.difficulty = Some(1.0);
            let untagged = draw_answer(1, "m", &item, &quality, &e, Forced::default(), 0);
            assert_eq!(
                untagged,
                draw_answer(1, "m", &item, &plain, &e, Forced::default(), 0)
            );
            item.topic = Some("code".into());
            let skilled = draw_answer(1, "m", &item, &quality, &e, Forced::default(), 0);
            assert_eq!(
                skilled,
                draw_answer(1, "m", &item, &shifted, &e, Forced::default(), 0)
            );
            right[0] += usize::from(untagged.correct);
            right[1] += usize::from(skilled.correct);
        }
        // p(0.5) ≈ 0.53 against p(2.5) ≈ 0.91.
        assert!(right[1] > right[0] + 40, "{right:?}");
    }

    #[test]
    fn the_distractor_is_the_first_wrong_rival() {
        let mut q = Question::new("q", mc('C'));
        q.distractor = Some(Distractor {
            answer: "A".into(),
            attraction: 0.0,
        });
        let quality = Quality::default();
        let e = ErrorModel::default();
        for i in 0..100 {
            let right = draw_answer(
                1,
                "m",
                &q,
                &quality,
                &e,
                Forced {
                    confidence: None,
                    correct: Some(true),
                },
                i,
            );
            assert_eq!(right.rivals.first().map(String::as_str), Some("A"));
            let wrong = draw_answer(
                1,
                "m",
                &q,
                &quality,
                &e,
                Forced {
                    confidence: None,
                    correct: Some(false),
                },
                i,
            );
            assert_eq!(wrong.rivals.first().map(String::as_str), Some("C"));
            if wrong.text != "A" {
                assert_eq!(wrong.rivals.get(1).map(String::as_str), Some("A"));
            }
            assert_eq!(wrong.rivals.len(), 3);
        }
    }

    #[test]
    fn forced_and_common_random_numbers() {
        let q = Question::new("q", mc('C'));
        let mut base = Quality::default();
        for i in 0..200 {
            base.accuracy = 0.3;
            let low = draw_answer(
                1,
                "m",
                &q,
                &base,
                &ErrorModel::default(),
                Forced::default(),
                i,
            );
            base.accuracy = 0.8;
            let high = draw_answer(
                1,
                "m",
                &q,
                &base,
                &ErrorModel::default(),
                Forced::default(),
                i,
            );
            assert!(!low.correct || high.correct, "raising accuracy never loses");
            assert_eq!(low.correct, low.text == "C");
            if !low.correct {
                assert_eq!(low.rivals.first().map(String::as_str), Some("C"));
            }
            assert_eq!(low.rivals.len(), 3);
            let forced = Forced {
                confidence: Some(0.3),
                correct: Some(false),
            };
            let f = draw_answer(1, "m", &q, &base, &ErrorModel::default(), forced, i);
            assert!(!f.correct && f.text != "C");
            assert_eq!(f.p, 0.3);
        }
    }
}
