//! Planner prompts (Workflows): a planner model is asked for a JSON plan of
//! steps that worker models then run.
//!
//! A planner prompt is recognised by the gateway's words (the last user
//! message outside its `<label-NONCE>` blocks): a line `Available workers:`
//! followed by one `- <name>: <description>` line per worker, and the text
//! `"steps"` (the JSON format description). `at most N steps` gives the
//! bound (default [`DEFAULT_MAX_STEPS`]); `Your previous plan was invalid`
//! makes it a re-plan prompt.
//!
//! The reply is a plan drawn from PRNG streams keyed by the seed, the model,
//! the question's identity, whether it is a re-plan and the choice index
//! (not by the nonce, the worker descriptions or `n`). With probability
//! `planner_error_rate` (one uniform draw, in its own stream, compared with
//! the rate: raising the rate only turns valid plans into invalid ones) the
//! plan is invalid in one of the [`PlanError`] ways. The valid plan's shape
//! has its own stream, so an `unknown_worker` or `long_instruction` plan is
//! the valid plan with one step spoiled.

use crate::rng::{Fnv64, SplitMix64};

/// The step bound when the prompt states none.
pub const DEFAULT_MAX_STEPS: u64 = 4;
/// Larger stated bounds are read as this (it caps a `too_many_steps` plan).
pub const MAX_STEPS_CAP: u64 = 10_000;
/// The worker of an `unknown_worker` plan's spoiled step (with `-x`
/// appended while it is one of the listed workers).
pub const ROGUE_WORKER: &str = "rogue-model";
/// The length in characters of a `long_instruction` plan's long instruction
/// (longer when the prompt allows that many: see
/// [`PlannerPrompt::long_instruction_len`]).
pub const LONG_INSTRUCTION_CHARS: usize = 5000;
/// Larger stated instruction bounds are read as this.
pub const MAX_INSTRUCTION_CAP: u64 = 1_000_000;
/// How many steps beyond the bound a `too_many_steps` plan has.
pub const EXTRA_STEPS: u64 = 5;

const WORKERS_LINE: &str = "Available workers:";
const STEPS_MARKER: &str = "\"steps\"";
const REPLAN_MARKER: &str = "Your previous plan was invalid";

/// The ways a plan can be invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// Not JSON: a plan cut in the middle, or prose without a `{`.
    BadJson,
    /// One step's worker is not a listed worker.
    UnknownWorker,
    /// `N + 5` steps.
    TooManySteps,
    /// `s1` after `s2` and `s2` after `s1`.
    Cycle,
    /// One instruction of [`LONG_INSTRUCTION_CHARS`] characters.
    LongInstruction,
}

impl PlanError {
    pub const ALL: [PlanError; 5] = [
        PlanError::BadJson,
        PlanError::UnknownWorker,
        PlanError::TooManySteps,
        PlanError::Cycle,
        PlanError::LongInstruction,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlanError::BadJson => "bad_json",
            PlanError::UnknownWorker => "unknown_worker",
            PlanError::TooManySteps => "too_many_steps",
            PlanError::Cycle => "cycle",
            PlanError::LongInstruction => "long_instruction",
        }
    }

    pub fn parse(s: &str) -> Option<PlanError> {
        let s = s.trim();
        PlanError::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// What a planner prompt asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannerPrompt {
    /// The listed worker names, in order, without duplicates.
    pub workers: Vec<String>,
    /// `N` of `at most N steps` (default [`DEFAULT_MAX_STEPS`], at most
    /// [`MAX_STEPS_CAP`]).
    pub max_steps: u64,
    /// `M` of `at most M characters` (or `bytes`), if the prompt states it.
    pub max_instruction: Option<u64>,
    /// Whether the prompt says `Your previous plan was invalid`.
    pub replan: bool,
}

impl PlannerPrompt {
    /// The length of a `long_instruction` plan's instruction:
    /// [`LONG_INSTRUCTION_CHARS`], or one more than the stated bound when
    /// that bound is larger.
    pub fn long_instruction_len(&self) -> usize {
        let over = self.max_instruction.map_or(0, |m| m.saturating_add(1));
        usize::try_from(over)
            .unwrap_or(usize::MAX)
            .max(LONG_INSTRUCTION_CHARS)
    }
}

/// The planner prompt whose gateway words (the last user message outside
/// its blocks) are `outside`, if it is one.
pub fn recognise(outside: &str) -> Option<PlannerPrompt> {
    if !outside.contains(STEPS_MARKER) {
        return None;
    }
    let mut lines = outside.lines();
    lines.by_ref().find(|l| l.trim() == WORKERS_LINE)?;
    let mut workers: Vec<String> = Vec::new();
    let mut started = false;
    for line in lines {
        let t = line.trim();
        if t.is_empty() {
            // Blank lines before the first worker are tolerated.
            if started {
                break;
            }
            continue;
        }
        started = true;
        if let Some(name) = worker_name(t) {
            if !workers.contains(&name) {
                workers.push(name);
            }
        }
    }
    Some(PlannerPrompt {
        workers,
        max_steps: at_most(outside, &["step"])
            .unwrap_or(DEFAULT_MAX_STEPS)
            .min(MAX_STEPS_CAP),
        max_instruction: at_most(outside, &["character", "byte"])
            .map(|m| m.min(MAX_INSTRUCTION_CAP)),
        replan: outside.contains(REPLAN_MARKER),
    })
}

/// The name of a `- <name>: <description>` line (also `* `; the
/// description is optional). `None` for a line that is not a list item.
fn worker_name(line: &str) -> Option<String> {
    let rest = line.strip_prefix('-').or_else(|| line.strip_prefix('*'))?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim();
    let name = match rest.split_once(": ") {
        Some((name, _)) => name,
        None => rest.strip_suffix(':').unwrap_or(rest),
    };
    let name = name.trim_matches(|c: char| c == '`' || c == '*' || c.is_whitespace());
    (!name.is_empty()).then(|| name.to_string())
}

/// `N` of the first `at most N <unit>` (case insensitive; `unit` is one of
/// `units`, singular or plural), saturating.
fn at_most(outside: &str, units: &[&str]) -> Option<u64> {
    // ASCII lower-casing keeps byte offsets.
    let lower = outside.to_ascii_lowercase();
    let marker = "at most ";
    let mut from = 0;
    while let Some(rel) = lower.get(from..).and_then(|r| r.find(marker)) {
        let start = from + rel + marker.len();
        from = start;
        let rest = lower.get(start..).unwrap_or("");
        let digits_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, tail) = rest.split_at(digits_len);
        let tail = tail.trim_start();
        if digits.is_empty() || !units.iter().any(|u| tail.starts_with(u)) {
            continue;
        }
        return Some(digits.parse::<u64>().unwrap_or(u64::MAX));
    }
    None
}

/// What a plan is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct PlanInputs<'a> {
    pub seed: u64,
    pub model: &'a str,
    /// The question's identity (see [`crate::questions::Question`]), else
    /// the inside of the `question` block, else the gateway's words.
    pub identity: &'a str,
    pub replan: bool,
    pub index: u64,
}

impl PlanInputs<'_> {
    fn stream(&self, what: &[u8]) -> SplitMix64 {
        SplitMix64::new(
            Fnv64::new()
                .bytes(b"looper-sim/planner-")
                .bytes(what)
                .u64(self.seed)
                .str(self.model)
                .str(self.identity)
                .u64(u64::from(self.replan))
                .u64(self.index)
                .finish(),
        )
    }
}

/// One planner reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The reply's content.
    pub text: String,
    /// Whether the plan is valid (no error and at least one listed worker).
    pub valid: bool,
    /// The injected error, if any.
    pub error: Option<PlanError>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    id: String,
    worker: String,
    instruction: String,
    after: Vec<String>,
}

const WORK_OUT: &str = "Work out the answer to the question.";

fn step(i: usize, worker: &str, instruction: impl Into<String>, after: &[usize]) -> Step {
    Step {
        id: format!("s{i}"),
        worker: worker.to_string(),
        instruction: instruction.into(),
        after: after.iter().map(|a| format!("s{a}")).collect(),
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// `{"steps": [{"id": "s1", "worker": "...", "instruction": "...", "after": []}, ...]}`
/// on one line, with `, ` and `: ` separators.
fn plan_json(steps: &[Step]) -> String {
    let items: Vec<String> = steps
        .iter()
        .map(|s| {
            let after: Vec<String> = s.after.iter().map(|a| quoted(a)).collect();
            format!(
                "{{\"id\": {}, \"worker\": {}, \"instruction\": {}, \"after\": [{}]}}",
                quoted(&s.id),
                quoted(&s.worker),
                quoted(&s.instruction),
                after.join(", ")
            )
        })
        .collect();
    format!("{{\"steps\": [{}]}}", items.join(", "))
}

/// The worker of step `i` (from 1): the listed workers in turn, starting
/// at `offset`.
fn worker(workers: &[String], offset: u64, i: usize) -> &str {
    let len = workers.len().max(1);
    let at = (usize::try_from(offset).unwrap_or(0) + i - 1) % len;
    workers.get(at).map_or("", String::as_str)
}

/// The valid plan: 1 to min(3, N) steps (count uniform), as a chain
/// (work out, check, write the final answer) or, for three steps half of
/// the time, two independent steps then one after both.
fn valid_steps(rng: &mut SplitMix64, workers: &[String], max_steps: u64) -> Vec<Step> {
    let limit = max_steps.clamp(1, 3);
    let count = 1 + rng.below(limit);
    let fan_in = rng.next_f64() < 0.5;
    let offset = rng.below(workers.len().max(1) as u64);
    let w = |i| worker(workers, offset, i);
    match (count, fan_in) {
        (1, _) => vec![step(1, w(1), WORK_OUT, &[])],
        (2, _) => vec![
            step(1, w(1), WORK_OUT, &[]),
            step(
                2,
                w(2),
                "Check the answer of s1 and correct it if needed.",
                &[1],
            ),
        ],
        (_, false) => vec![
            step(1, w(1), WORK_OUT, &[]),
            step(
                2,
                w(2),
                "Check the answer of s1 and correct it if needed.",
                &[1],
            ),
            step(
                3,
                w(3),
                "Write the final answer, using the checked answer of s2.",
                &[2],
            ),
        ],
        (_, true) => vec![
            step(1, w(1), WORK_OUT, &[]),
            step(
                2,
                w(2),
                "Work out the answer to the question independently.",
                &[],
            ),
            step(
                3,
                w(3),
                "Compare the answers of s1 and s2 and give the better one.",
                &[1, 2],
            ),
        ],
    }
}

/// An instruction of exactly `len` ASCII characters (so as many bytes),
/// words joined by single spaces.
fn long_instruction(len: usize) -> String {
    let sentence =
        "Work out the answer to the question step by step and explain every step in detail. ";
    let mut s = sentence.repeat(len / sentence.len() + 1);
    s.truncate(len.saturating_sub(1));
    let trimmed = s.trim_end().len();
    s.truncate(trimmed);
    while s.len() < len {
        s.push('.');
    }
    s
}

/// `steps` with every instruction cut to at most `max` bytes (at a word
/// end when there is one), so that only an injected error breaks the
/// stated bound.
fn fit(mut steps: Vec<Step>, max: Option<u64>) -> Vec<Step> {
    let Some(max) = max.and_then(|m| usize::try_from(m).ok()) else {
        return steps;
    };
    for s in &mut steps {
        if s.instruction.len() <= max.max(1) {
            continue;
        }
        let mut cut = max.max(1);
        while !s.instruction.is_char_boundary(cut) {
            cut -= 1;
        }
        let head = s.instruction.get(..cut).unwrap_or("");
        let next_is_space = s.instruction.get(cut..).is_some_and(|r| r.starts_with(' '));
        let head = match head.rfind(' ') {
            Some(at) if !next_is_space && at > 0 => head.get(..at).unwrap_or(head),
            _ => head,
        };
        s.instruction = head.trim_end().to_string();
    }
    steps
}

/// Texts a planner may reply with instead of JSON (no braces).
const PROSE_REPLIES: &[&str] = &[
    "I would first work out the answer to the question, then have another worker check it.",
    "The question looks simple enough that one worker can answer it; a second could check the result.",
];

/// How the plan is presented.
fn present(model: &str, json: &str, fenced: bool) -> String {
    if fenced {
        format!("[{model}] Here is the plan:\n```json\n{json}\n```")
    } else {
        json.to_string()
    }
}

/// Choice `inputs.index` of a planner reply to `prompt`: invalid with
/// probability `error_rate` (of kind `kind` when given, else drawn
/// uniformly), else valid; bare JSON or fenced after a line of prose,
/// 50/50.
pub fn plan(
    inputs: &PlanInputs<'_>,
    prompt: &PlannerPrompt,
    error_rate: f64,
    kind: Option<PlanError>,
) -> Plan {
    let invalid = inputs.stream(b"error").next_f64() < error_rate;
    let mut kind_rng = inputs.stream(b"kind");
    let drawn_kind = PlanError::ALL
        .get(usize::try_from(kind_rng.below(PlanError::ALL.len() as u64)).unwrap_or(0))
        .copied()
        .unwrap_or(PlanError::BadJson);
    let prose = kind_rng.next_f64() < 0.5;
    let spoiled = kind_rng.next_u64();
    let fenced = inputs.stream(b"style").next_f64() < 0.5;
    let workers = &prompt.workers;
    let m = prompt.max_instruction;
    let steps = fit(
        valid_steps(&mut inputs.stream(b"shape"), workers, prompt.max_steps),
        m,
    );
    let model = inputs.model;

    if workers.is_empty() {
        return Plan {
            text: present(model, "{\"steps\": []}", fenced),
            valid: false,
            error: None,
        };
    }
    let error = invalid.then(|| kind.unwrap_or(drawn_kind));
    let pick = |steps: &[Step]| usize::try_from(spoiled % steps.len().max(1) as u64).unwrap_or(0);
    let text = match error {
        None => present(model, &plan_json(&steps), fenced),
        Some(PlanError::BadJson) if prose => {
            let i = usize::try_from(inputs.index).unwrap_or(0) % PROSE_REPLIES.len();
            let reply = PROSE_REPLIES.get(i).copied().unwrap_or("No plan.");
            format!("[{model}] {reply}")
        }
        Some(PlanError::BadJson) => {
            // Cut the plan in the middle: its outer object is never closed.
            let json = plan_json(&steps);
            let mut cut = json.len() / 2;
            while !json.is_char_boundary(cut) {
                cut -= 1;
            }
            let head = json.get(..cut).unwrap_or("{").trim_end();
            if fenced {
                format!("[{model}] Here is the plan:\n```json\n{head}")
            } else {
                head.to_string()
            }
        }
        Some(PlanError::UnknownWorker) => {
            let mut rogue = ROGUE_WORKER.to_string();
            while workers.contains(&rogue) {
                rogue.push_str("-x");
            }
            let mut steps = steps.clone();
            let i = pick(&steps);
            if let Some(s) = steps.get_mut(i) {
                s.worker = rogue;
            }
            present(model, &plan_json(&steps), fenced)
        }
        Some(PlanError::LongInstruction) => {
            let mut steps = steps.clone();
            let i = pick(&steps);
            if let Some(s) = steps.get_mut(i) {
                s.instruction = long_instruction(prompt.long_instruction_len());
            }
            present(model, &plan_json(&steps), fenced)
        }
        Some(PlanError::TooManySteps) => {
            let count = usize::try_from(prompt.max_steps + EXTRA_STEPS).unwrap_or(usize::MAX);
            let offset = spoiled % workers.len() as u64;
            let steps: Vec<Step> = (1..=count)
                .map(|i| {
                    if i == 1 {
                        step(1, worker(workers, offset, 1), WORK_OUT, &[])
                    } else {
                        step(
                            i,
                            worker(workers, offset, i),
                            format!("Check the answer of s{} and correct it if needed.", i - 1),
                            &[i - 1],
                        )
                    }
                })
                .collect();
            present(model, &plan_json(&fit(steps, m)), fenced)
        }
        Some(PlanError::Cycle) => {
            let offset = spoiled % workers.len() as u64;
            let steps = vec![
                step(
                    1,
                    worker(workers, offset, 1),
                    "Work out the answer to the question, using the check of s2.",
                    &[2],
                ),
                step(
                    2,
                    worker(workers, offset, 2),
                    "Check the answer of s1 and correct it if needed.",
                    &[1],
                ),
            ];
            present(model, &plan_json(&fit(steps, m)), fenced)
        }
    };
    Plan {
        text,
        valid: error.is_none(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn prompt(workers: &[&str], max_steps: u64) -> PlannerPrompt {
        PlannerPrompt {
            workers: workers.iter().map(|w| w.to_string()).collect(),
            max_steps,
            max_instruction: None,
            replan: false,
        }
    }

    fn inputs(identity: &str, index: u64) -> PlanInputs<'_> {
        PlanInputs {
            seed: 5,
            model: "m",
            identity,
            replan: false,
            index,
        }
    }

    #[test]
    fn recognition() {
        let text = "Plan the work.\n\nAvailable workers:\n- sim-small: fast\n* `sim-large`: careful: slow\n\
                    -   sim-small: again\n- sim-medium\n\nReply with JSON {\"steps\": [...]} \
                    using at most 5 steps.";
        let p = recognise(text).unwrap();
        assert_eq!(p.workers, vec!["sim-small", "sim-large", "sim-medium"]);
        assert_eq!(p.max_steps, 5);
        assert_eq!(p.max_instruction, None);
        assert_eq!(p.long_instruction_len(), LONG_INSTRUCTION_CHARS);
        assert!(!p.replan);
        // Blank lines before the list; no bound; a re-plan.
        let p = recognise(
            "Available workers:\n\n- a: x\n\nnot-a-worker: y\n\"steps\"\nYour previous plan was invalid: ...",
        )
        .unwrap();
        assert_eq!(p.workers, vec!["a"]);
        assert_eq!(p.max_steps, DEFAULT_MAX_STEPS);
        assert!(p.replan);
        // Both markers are needed; the workers line must be a line.
        assert_eq!(recognise("Available workers:\n- a: x"), None);
        assert_eq!(recognise("\"steps\" only"), None);
        assert_eq!(recognise("Available workers: a, b \"steps\""), None);
        let steps = |t: &str| at_most(t, &["step"]);
        assert_eq!(steps("At most 12 Steps. at most 3 steps"), Some(12));
        assert_eq!(steps("at most 3 workers, at most 2\nsteps"), Some(2));
        assert_eq!(
            steps("at most 99999999999999999999999 steps"),
            Some(u64::MAX)
        );
        assert_eq!(steps("at most some steps"), None);
        // The plugin's wording: both bounds.
        let p = recognise(
            "Available workers:\n- a: x\n\nRules: at most 99999 steps; each step has an \
             \"instruction\" of at most 6000 characters. {\"steps\": []}",
        )
        .unwrap();
        assert_eq!(p.max_steps, MAX_STEPS_CAP);
        assert_eq!(p.max_instruction, Some(6000));
        assert_eq!(p.long_instruction_len(), 6001);
        let p = recognise("Available workers:\n- a\n\"steps\" at most 300 bytes").unwrap();
        assert_eq!((p.max_steps, p.long_instruction_len()), (4, 5000));
    }

    #[test]
    fn fitting_cuts_at_a_word_end() {
        let one = |text: &str, max| {
            fit(vec![step(1, "w", text, &[])], Some(max))
                .remove(0)
                .instruction
        };
        assert_eq!(one("Work out the answer.", 16), "Work out the");
        assert_eq!(one("Work out the answer.", 12), "Work out the");
        assert_eq!(one("Work out the answer.", 100), "Work out the answer.");
        assert_eq!(one("Unbreakable", 4), "Unbr");
        assert_eq!(one("Unbreakable", 0), "U");
    }

    #[test]
    fn long_instruction_is_exact() {
        for len in [1, 2, 83, 84, 85, 5000, 8193] {
            let s = long_instruction(len);
            assert_eq!(s.chars().count(), len);
            assert_eq!(s.len(), len);
            assert!(!s.contains("  ") && !s.ends_with(' ') && !s.starts_with(' '));
        }
    }

    #[test]
    fn valid_plans_fit_the_bounds() {
        for n in [0, 1, 2, 4] {
            for i in 0..100 {
                let p = plan(&inputs("q", i), &prompt(&["a", "b"], n), 0.0, None);
                assert!(p.valid && p.error.is_none());
                let json = p
                    .text
                    .split_once("```json\n")
                    .map_or(p.text.as_str(), |(_, r)| r.trim_end_matches("\n```"));
                let v: Value = serde_json::from_str(json).unwrap();
                let steps = v["steps"].as_array().unwrap();
                assert!(!steps.is_empty() && steps.len() as u64 <= n.clamp(1, 3));
            }
        }
        let p = plan(&inputs("q", 0), &prompt(&[], 4), 0.0, None);
        assert!(!p.valid);
        assert!(p.text.contains("{\"steps\": []}"));
    }
}
