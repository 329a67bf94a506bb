//! `[sim:...]` directives embedded in message text.
//!
//! Syntax: `[sim:KEY=VALUE]` applies to every model, `[sim:KEY@MODEL=VALUE]`
//! only to `MODEL`. A model-scoped directive beats an unscoped one; within
//! the same scope the last occurrence (in message order) wins. Keys:
//!
//! | key       | value                                  |
//! |-----------|----------------------------------------|
//! | `fault`   | a fault kind, or `none` to suppress `failure_rates` |
//! | `latency` | milliseconds (replaces latency + jitter) |
//! | `answer`  | fixed answer text, up to the closing `]` |
//! | `finish`  | `stop`, `length` or `content_filter`   |
//! | `usage`   | `P,C`: forced prompt/completion tokens |
//! | `mc`      | the correct option letter of a multiple-choice question |
//! | `options` | the option letters (2–26 distinct capitals; default `ABCD`) |
//! | `exact`   | the answer of an exact-answer question |
//! | `item`    | a stable identity for the question |
//! | `accuracy`, `verifier_sensitivity`, `verifier_specificity`, `judge_skill`, `synth_skill`, `judge_garbage_rate` (alias `judge_garbage`) | a probability overriding the model's setting |
//! | `calibration` | `calibrated`, `overconfident`, `underconfident` or `random` |
//! | `confidence` | the answer token's probability, in `(0, 1]` |
//! | `correct` | `yes` or `no`: force the answer's correctness |
//! | `planner_error_rate` (alias `planner_error`) | a probability overriding the model's setting |
//! | `replan_error` | a probability replacing `planner_error_rate` on re-plan prompts only |
//! | `planner_error_kind` | the kind of an invalid plan: `bad_json`, `unknown_worker`, `too_many_steps`, `cycle` or `long_instruction` |
//!
//! `mc` and `exact` set the same thing (the key), so the last one wins.
//!
//! A malformed directive (unknown key, bad value, no closing `]`) is a 400,
//! so that typos in tests fail loudly instead of being silently ignored.

use crate::faults::FaultKind;
use crate::planner::PlanError;
use crate::questions::{Calibration, QualityOverrides};

const OPEN: &str = "[sim:";

/// What a directive asks for the fault: a specific kind, or explicitly none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDirective {
    None,
    Kind(FaultKind),
}

/// The key a directive gives a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDirective {
    /// `[sim:mc=B]`.
    Choice(char),
    /// `[sim:exact=TEXT]`, whitespace collapsed.
    Exact(String),
}

/// Where a directive was found: (index of the text, byte offset of `[sim:`).
pub type Location = (usize, usize);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directives {
    pub fault: Option<FaultDirective>,
    pub latency_ms: Option<u64>,
    pub answer: Option<String>,
    pub finish: Option<&'static str>,
    pub usage: Option<(u64, u64)>,
    /// The question's key and where its directive was found.
    pub key: Option<(KeyDirective, Location)>,
    pub options: Option<Vec<char>>,
    pub item: Option<String>,
    pub confidence: Option<f64>,
    pub correct: Option<bool>,
    /// `[sim:replan_error=P]`: the planner error rate on re-plan prompts.
    pub replan_error: Option<f64>,
    /// `[sim:planner_error_kind=KIND]`: the kind of an invalid plan.
    pub planner_error_kind: Option<PlanError>,
    pub quality: QualityOverrides,
}

impl Directives {
    /// Fields set in `over` replace those in `self`.
    fn overlay(&mut self, over: Directives) {
        if over.fault.is_some() {
            self.fault = over.fault;
        }
        if over.latency_ms.is_some() {
            self.latency_ms = over.latency_ms;
        }
        if over.answer.is_some() {
            self.answer = over.answer;
        }
        if over.finish.is_some() {
            self.finish = over.finish;
        }
        if over.usage.is_some() {
            self.usage = over.usage;
        }
        if over.key.is_some() {
            self.key = over.key;
        }
        if over.options.is_some() {
            self.options = over.options;
        }
        if over.item.is_some() {
            self.item = over.item;
        }
        if over.confidence.is_some() {
            self.confidence = over.confidence;
        }
        if over.correct.is_some() {
            self.correct = over.correct;
        }
        if over.replan_error.is_some() {
            self.replan_error = over.replan_error;
        }
        if over.planner_error_kind.is_some() {
            self.planner_error_kind = over.planner_error_kind;
        }
        self.quality.overlay(&over.quality);
    }

    /// Collects the directives that apply to `model` from `texts` (every
    /// text of every message, in order).
    pub fn scan<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        model: &str,
    ) -> Result<Directives, String> {
        let mut global = Directives::default();
        let mut scoped = Directives::default();
        for (text_index, text) in texts.into_iter().enumerate() {
            let mut rest = text;
            while let Some(start) = rest.find(OPEN) {
                let offset = text.len() - rest.len() + start;
                let after = rest.get(start + OPEN.len()..).unwrap_or("");
                let end = after.find(']').ok_or_else(|| {
                    format!(
                        "unterminated directive `{}`",
                        clip(rest.get(start..).unwrap_or(""))
                    )
                })?;
                let body = after.get(..end).unwrap_or("");
                rest = after.get(end + 1..).unwrap_or("");
                let (key, target, value) = split_directive(body)?;
                let mut parsed = parse_one(key, value)?;
                if let Some((_, at)) = &mut parsed.key {
                    *at = (text_index, offset);
                }
                match target {
                    None => global.overlay(parsed),
                    Some(m) if m == model => scoped.overlay(parsed),
                    Some(_) => {}
                }
            }
        }
        global.overlay(scoped);
        Ok(global)
    }
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// `key[@model]=value` → `(key, model, value)`.
fn split_directive(body: &str) -> Result<(&str, Option<&str>, &str), String> {
    let (lhs, value) = body
        .split_once('=')
        .ok_or_else(|| format!("directive `[sim:{}]` has no `=`", clip(body)))?;
    match lhs.split_once('@') {
        Some((key, model)) => Ok((key.trim(), Some(model.trim()), value)),
        None => Ok((lhs.trim(), None, value)),
    }
}

fn parse_one(key: &str, value: &str) -> Result<Directives, String> {
    let mut d = Directives::default();
    match key {
        "fault" => {
            d.fault = Some(if value.trim() == "none" {
                FaultDirective::None
            } else {
                FaultDirective::Kind(
                    FaultKind::parse(value)
                        .ok_or_else(|| format!("unknown fault kind `{}`", clip(value)))?,
                )
            });
        }
        "latency" => {
            let ms = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms <= 86_400_000)
                .ok_or_else(|| format!("latency must be milliseconds, got `{}`", clip(value)))?;
            d.latency_ms = Some(ms);
        }
        "answer" => d.answer = Some(value.to_string()),
        "finish" => {
            d.finish = Some(match value.trim() {
                "stop" => "stop",
                "length" => "length",
                "content_filter" => "content_filter",
                other => {
                    return Err(format!(
                        "finish must be stop, length or content_filter, got `{}`",
                        clip(other)
                    ))
                }
            });
        }
        "usage" => {
            let parsed = value.split_once(',').and_then(|(p, c)| {
                Some((p.trim().parse::<u64>().ok()?, c.trim().parse::<u64>().ok()?))
            });
            let (p, c) = parsed
                .filter(|(p, c)| p.checked_add(*c).is_some())
                .ok_or_else(|| {
                    format!("usage must be `PROMPT,COMPLETION`, got `{}`", clip(value))
                })?;
            d.usage = Some((p, c));
        }
        "mc" => {
            let letter = single_capital(value)
                .ok_or_else(|| format!("mc must be one capital letter, got `{}`", clip(value)))?;
            d.key = Some((KeyDirective::Choice(letter), (0, 0)));
        }
        "options" => {
            let letters: Vec<char> = value.trim().chars().collect();
            let mut sorted = letters.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let ok = (2..=26).contains(&letters.len())
                && sorted.len() == letters.len()
                && letters.iter().all(char::is_ascii_uppercase);
            if !ok {
                return Err(format!(
                    "options must be 2 to 26 distinct capital letters, got `{}`",
                    clip(value)
                ));
            }
            d.options = Some(letters);
        }
        "exact" => {
            let text = value.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() {
                return Err("exact needs an answer".to_string());
            }
            d.key = Some((KeyDirective::Exact(text), (0, 0)));
        }
        "item" => {
            let id = value.trim();
            if id.is_empty() {
                return Err("item needs an id".to_string());
            }
            d.item = Some(id.to_string());
        }
        "accuracy" => d.quality.accuracy = Some(probability(key, value)?),
        "verifier_sensitivity" => d.quality.verifier_sensitivity = Some(probability(key, value)?),
        "verifier_specificity" => d.quality.verifier_specificity = Some(probability(key, value)?),
        "judge_skill" => d.quality.judge_skill = Some(probability(key, value)?),
        "synth_skill" => d.quality.synth_skill = Some(probability(key, value)?),
        "judge_garbage_rate" | "judge_garbage" => {
            d.quality.judge_garbage_rate = Some(probability(key, value)?);
        }
        "planner_error_rate" | "planner_error" => {
            d.quality.planner_error_rate = Some(probability(key, value)?);
        }
        "replan_error" => d.replan_error = Some(probability(key, value)?),
        "planner_error_kind" => {
            d.planner_error_kind = Some(PlanError::parse(value).ok_or_else(|| {
                format!(
                    "planner_error_kind must be bad_json, unknown_worker, too_many_steps, cycle or long_instruction, got `{}`",
                    clip(value)
                )
            })?);
        }
        "calibration" => {
            d.quality.calibration = Some(Calibration::parse(value).ok_or_else(|| {
                format!(
                    "calibration must be calibrated, overconfident, underconfident or random, got `{}`",
                    clip(value)
                )
            })?);
        }
        "confidence" => {
            let p = probability(key, value)?;
            if p <= 0.0 {
                return Err("confidence must be above 0".to_string());
            }
            d.confidence = Some(p);
        }
        "correct" => {
            d.correct = Some(match value.trim() {
                "yes" => true,
                "no" => false,
                other => return Err(format!("correct must be yes or no, got `{}`", clip(other))),
            });
        }
        other => return Err(format!("unknown directive `{}`", clip(other))),
    }
    Ok(d)
}

fn single_capital(value: &str) -> Option<char> {
    let mut chars = value.trim().chars();
    let c = chars.next()?;
    (chars.next().is_none() && c.is_ascii_uppercase()).then_some(c)
}

fn probability(key: &str, value: &str) -> Result<f64, String> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("{key} must be a number in [0, 1], got `{}`", clip(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(texts: &[&str], model: &str) -> Result<Directives, String> {
        Directives::scan(texts.iter().copied(), model)
    }

    #[test]
    fn parses_all_keys() {
        let d = scan(
            &[
                "hi [sim:fault=500] [sim:latency=7]",
                "[sim:answer=Hello = world!][sim:finish=length][sim:usage=3, 4]",
            ],
            "m",
        )
        .unwrap();
        assert_eq!(d.fault, Some(FaultDirective::Kind(FaultKind::Status500)));
        assert_eq!(d.latency_ms, Some(7));
        assert_eq!(d.answer.as_deref(), Some("Hello = world!"));
        assert_eq!(d.finish, Some("length"));
        assert_eq!(d.usage, Some((3, 4)));
    }

    #[test]
    fn scoped_beats_global_and_last_wins() {
        let texts = [
            "[sim:fault@a=hang] [sim:fault=reset]",
            "[sim:fault=garbage] [sim:fault@b=none]",
        ];
        assert_eq!(
            scan(&texts, "a").unwrap().fault,
            Some(FaultDirective::Kind(FaultKind::Hang))
        );
        assert_eq!(scan(&texts, "b").unwrap().fault, Some(FaultDirective::None));
        assert_eq!(
            scan(&texts, "c").unwrap().fault,
            Some(FaultDirective::Kind(FaultKind::Garbage))
        );
    }

    #[test]
    fn question_keys() {
        let d = scan(
            &[
                "intro [sim:exact=  New   York ]",
                "Q? [sim:mc=C] [sim:options=ABCDE] [sim:accuracy@m=0.9] [sim:accuracy=0.1]",
                "[sim:calibration=random][sim:confidence=0.3][sim:correct=no][sim:item=q7]",
                "[sim:synth_skill@m=0.9] [sim:judge_garbage=1] [sim:synth_skill@x=0.1]",
            ],
            "m",
        )
        .unwrap();
        assert_eq!(d.key, Some((KeyDirective::Choice('C'), (1, 3))));
        assert_eq!(d.options, Some("ABCDE".chars().collect()));
        assert_eq!(d.quality.accuracy, Some(0.9));
        assert_eq!(d.quality.calibration, Some(Calibration::Random));
        assert_eq!(d.confidence, Some(0.3));
        assert_eq!(d.correct, Some(false));
        assert_eq!(d.item.as_deref(), Some("q7"));
        assert_eq!(d.quality.synth_skill, Some(0.9));
        assert_eq!(d.quality.judge_garbage_rate, Some(1.0));
        let p = scan(
            &[
                "[sim:planner_error=0.5] [sim:planner_error_rate@m=0.25] [sim:replan_error=0]",
                "[sim:planner_error_kind=cycle] [sim:planner_error_kind@x=bad_json]",
            ],
            "m",
        )
        .unwrap();
        assert_eq!(p.quality.planner_error_rate, Some(0.25));
        assert_eq!(p.replan_error, Some(0.0));
        assert_eq!(p.planner_error_kind, Some(PlanError::Cycle));
        assert_eq!(
            scan(&["[sim:judge_garbage_rate=0.25]"], "m")
                .unwrap()
                .quality
                .judge_garbage_rate,
            Some(0.25)
        );
        let e = scan(&["[sim:mc=C] then [sim:exact=  New   York ]"], "x").unwrap();
        assert_eq!(
            e.key,
            Some((KeyDirective::Exact("New York".into()), (0, 16)))
        );
        assert_eq!(
            scan(&["[sim:accuracy@m=0.9]"], "x")
                .unwrap()
                .quality
                .accuracy,
            None
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "[sim:fault=nope]",
            "[sim:latency=soon]",
            "[sim:finish=maybe]",
            "[sim:usage=1]",
            "[sim:colour=red]",
            "[sim:fault",
            "[sim:novalue]",
            "[sim:mc=b]",
            "[sim:mc=AB]",
            "[sim:options=A]",
            "[sim:options=ABA]",
            "[sim:options=abc]",
            "[sim:exact=  ]",
            "[sim:accuracy=1.5]",
            "[sim:accuracy=high]",
            "[sim:calibration=meh]",
            "[sim:confidence=0]",
            "[sim:correct=maybe]",
            "[sim:item=]",
            "[sim:synth_skill=2]",
            "[sim:judge_garbage=yes]",
            "[sim:planner_error=2]",
            "[sim:planner_error_rate=-0.5]",
            "[sim:replan_error=x]",
            "[sim:planner_error_kind=loop]",
        ] {
            assert!(scan(&[bad], "m").is_err(), "{bad}");
        }
        // Even when scoped to another model: a typo is a typo.
        assert!(scan(&["[sim:fault@x=nope]"], "m").is_err());
        // Not a directive at all.
        assert_eq!(
            scan(&["[sim] [SIM:fault=500] sim:fault=500"], "m").unwrap(),
            Directives::default()
        );
    }
}
