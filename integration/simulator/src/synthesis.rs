//! Synthesis prompts (ReMoM synthesis and later rounds, the Fusion
//! finalizer) and Fusion judge prompts.
//!
//! Both quote the question in a `<question-NONCE>` block and the candidate
//! answers ("references") in `<answer-NONCE>` blocks (see
//! [`crate::questions::classify`]). The simulator reads each reference's
//! answer the way the verifier does ([`reference_answer`]) and then decides:
//! with probability `skill` (a synthesizer's `synth_skill`, a Fusion judge's
//! `judge_skill`) it gives the key when some reference gives it; otherwise it
//! follows the plurality of the references (ties to the earliest; a Fusion
//! analysis' `trusted_answer` is one more vote, after the references). With
//! no reference answer at all, the caller falls back to the model's own
//! answer.
//!
//! Draws are keyed by the seed, the model, the question's identity, the
//! extracted reference answers (not their wording or the nonce) and the
//! choice index. The skill draw comes first and is compared with the skill,
//! so raising the skill only turns plurality picks into key picks.

use serde_json::Value;

use crate::questions::{self, extract_answer, matches_key, Drawn, Forced, Key, Question};
use crate::rng::{Fnv64, SplitMix64};

/// The answer `text` states. With a key: as the verifier reads it
/// ([`extract_answer`]). Without one: the text after its last `ANSWER:`
/// (case insensitive) up to the end of that line, whitespace collapsed.
pub fn reference_answer(text: &str, key: Option<&Key>) -> Option<String> {
    match key {
        Some(k) => extract_answer(text, k),
        None => {
            let at = text.to_ascii_lowercase().rfind("answer:")?;
            let rest = text.get(at + "answer:".len()..)?;
            let line = rest.lines().next().unwrap_or("");
            let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
            (!words.is_empty()).then_some(words)
        }
    }
}

/// The `trusted_answer` of an analysis block (a JSON object, possibly with
/// text around it), read as an answer.
pub fn trusted_answer(analysis: &str, key: Option<&Key>) -> Option<String> {
    let object = |s: &str| {
        serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
    };
    let value = object(analysis.trim()).or_else(|| {
        let start = analysis.find('{')?;
        let end = analysis.rfind('}')?;
        object(analysis.get(start..=end)?)
    })?;
    let text = match value.get("trusted_answer")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    reference_answer(&text, key)
}

/// Whether two extracted answers are the same answer.
fn same(key: Option<&Key>, a: &str, b: &str) -> bool {
    match key {
        Some(Key::Choice { .. }) => a == b,
        _ => matches_key(&Key::Exact(a.to_string()), b),
    }
}

/// One distinct answer among the votes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// As its first voter wrote it.
    pub answer: String,
    /// Positions of its voters (reference indices from 0; the trusted
    /// answer of an analysis is `references.len()`).
    pub voters: Vec<usize>,
}

/// The distinct answers of `references` (then `trusted`), most votes first;
/// ties go to the answer that appears first.
pub fn tally(
    references: &[Option<String>],
    trusted: Option<&str>,
    key: Option<&Key>,
) -> Vec<Group> {
    let votes = references
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_deref().map(|a| (i, a)))
        .chain(trusted.map(|t| (references.len(), t)));
    let mut groups: Vec<Group> = Vec::new();
    for (i, answer) in votes {
        match groups.iter_mut().find(|g| same(key, &g.answer, answer)) {
            Some(g) => g.voters.push(i),
            None => groups.push(Group {
                answer: answer.to_string(),
                voters: vec![i],
            }),
        }
    }
    // Stable: equal counts keep their order of first appearance.
    groups.sort_by_key(|g| std::cmp::Reverse(g.voters.len()));
    groups
}

/// What a synthesis or a Fusion judge bases its decision on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub seed: u64,
    pub model: &'a str,
    pub question: Option<&'a Question>,
    /// The answer extracted from each reference, in order.
    pub references: &'a [Option<String>],
    /// An analysis' `trusted_answer` (synthesis only).
    pub trusted: Option<&'a str>,
    /// The gateway's words, for seeding when there is no key.
    pub basis: &'a str,
    pub index: u64,
}

impl Inputs<'_> {
    /// A PRNG stream for `what`, keyed by everything the decision may
    /// depend on.
    pub fn stream(&self, what: &[u8]) -> SplitMix64 {
        let mut h = Fnv64::new();
        h.bytes(b"looper-sim/")
            .bytes(what)
            .u64(self.seed)
            .str(self.model)
            .str(self.question.map_or(self.basis, |q| q.identity.as_str()))
            .u64(self.references.len() as u64);
        for r in self.references {
            match r {
                Some(a) => h.bytes(b"+").str(a),
                None => h.bytes(b"-"),
            };
        }
        match self.trusted {
            Some(t) => h.bytes(b"+").str(t),
            None => h.bytes(b"-"),
        };
        SplitMix64::new(h.u64(self.index).finish())
    }

    fn key(&self) -> Option<&Key> {
        self.question.map(|q| &q.key)
    }
}

/// A synthesized answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    /// The answer, whether it matches the key (always false without a key),
    /// the answer token's probability and its rivals.
    pub drawn: Drawn,
    /// Seeds the filler words and the other tokens' logprobs.
    pub lp_seed: u64,
    /// The distinct reference answers, most votes first.
    pub groups: Vec<Group>,
}

/// Choice `inputs.index` of a synthesis (`what` = `synth`) or a Fusion
/// judge's trusted answer (`what` = `fusion-judge`), made with probability
/// `skill` of giving a key that some reference gives. `None` when there is
/// no vote at all (no reference answer and no trusted answer).
pub fn pick(
    inputs: &Inputs<'_>,
    what: &[u8],
    skill: f64,
    calibration: questions::Calibration,
    forced: Forced,
) -> Option<Pick> {
    let key = inputs.key();
    let groups = tally(inputs.references, inputs.trusted, key);
    let plurality = groups.first()?.answer.clone();
    let mut rng = inputs.stream(what);
    let skilled = rng.next_f64() < skill;
    let u_p = rng.next_f64();
    let (right, mut wrongs) = match key {
        Some(k) => {
            let (right, wrongs) = questions::candidates(k);
            (Some(right), wrongs)
        }
        None => (None, Vec::new()),
    };
    questions::shuffle(&mut wrongs, &mut rng);
    let lp_seed = rng.next_u64();
    let key_given = key.is_some_and(|k| {
        inputs
            .references
            .iter()
            .flatten()
            .any(|a| matches_key(k, a))
    });
    let text = match (key, &right, forced.correct) {
        (Some(_), Some(r), Some(true)) => r.clone(),
        (Some(k), Some(r), Some(false)) => groups
            .iter()
            .map(|g| &g.answer)
            .find(|a| !matches_key(k, a))
            .or(wrongs.first())
            .unwrap_or(r)
            .clone(),
        (Some(_), Some(r), None) if skilled && key_given => r.clone(),
        _ => plurality,
    };
    // A reference's spelling of the key becomes the key itself.
    let correct = key.is_some_and(|k| matches_key(k, &text));
    let text = match (&right, correct) {
        (Some(r), true) => r.clone(),
        _ => text,
    };
    let mut rivals: Vec<String> = Vec::new();
    if let (Some(r), false) = (&right, correct) {
        rivals.push(r.clone());
    }
    for a in groups.iter().map(|g| &g.answer).chain(wrongs.iter()) {
        if !same(key, a, &text) && !rivals.iter().any(|r| same(key, r, a)) {
            rivals.push(a.clone());
        }
    }
    let (lo, hi) = calibration.range(correct || key.is_none());
    Some(Pick {
        drawn: Drawn {
            text,
            correct,
            p: forced.confidence.unwrap_or(lo + (hi - lo) * u_p),
            rivals,
        },
        lp_seed,
        groups,
    })
}

/// How a Fusion judge's reply looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeStyle {
    /// The JSON object alone.
    Bare,
    /// A line of prose, then the object in a ```json fence.
    Fenced,
    /// Prose without any JSON object.
    Garbage,
}

/// Choice `inputs.index`'s style: garbage with probability
/// `garbage_rate`, else bare or fenced, 50/50.
pub fn judge_style(inputs: &Inputs<'_>, garbage_rate: f64) -> JudgeStyle {
    let mut rng = inputs.stream(b"fusion-judge-style");
    let garbage = rng.next_f64() < garbage_rate;
    let fenced = rng.next_f64() < 0.5;
    match (garbage, fenced) {
        (true, _) => JudgeStyle::Garbage,
        (false, true) => JudgeStyle::Fenced,
        (false, false) => JudgeStyle::Bare,
    }
}

fn numbered(voters: &[usize]) -> String {
    let names: Vec<String> = voters.iter().map(|i| (i + 1).to_string()).collect();
    match names.as_slice() {
        [one] => format!("Answer {one}"),
        [init @ .., last] => format!("Answers {} and {last}", init.join(", ")),
        [] => "No answer".to_string(),
    }
}

fn verb(voters: &[usize]) -> &'static str {
    if voters.len() == 1 {
        "gives"
    } else {
        "give"
    }
}

/// The JSON object of a Fusion judge's analysis: `agreement`,
/// `contradictions`, `unique_insights` and `trusted_answer`
/// (`ANSWER: <trusted>`), on one line with `, ` and `: ` separators.
pub fn analysis_json(
    references: &[Option<String>],
    groups: &[Group],
    trusted: Option<&str>,
) -> String {
    let given = references.iter().flatten().count();
    let agreement = match groups.first() {
        None => "none of the answers states a final answer".to_string(),
        Some(g) if groups.len() == 1 && given > 1 => {
            format!("all {given} answers give {}", g.answer)
        }
        Some(g) => format!(
            "{} of {} answers give {}",
            g.voters.len(),
            references.len(),
            g.answer
        ),
    };
    let mut contradictions = Vec::new();
    let mut insights = Vec::new();
    if let Some(top) = groups.first() {
        for g in groups.iter().skip(1) {
            contradictions.push(format!(
                "{} {} {}, not {}",
                numbered(&g.voters),
                verb(&g.voters),
                g.answer,
                top.answer
            ));
            if g.voters.len() == 1 {
                insights.push(format!(
                    "only {} considers {}",
                    numbered(&g.voters),
                    g.answer
                ));
            }
        }
    }
    for (i, r) in references.iter().enumerate() {
        if r.is_none() {
            insights.push(format!("Answer {} states no final answer", i + 1));
        }
    }
    let trusted = match trusted {
        Some(t) => format!("ANSWER: {t}"),
        None => "no answer stands out".to_string(),
    };
    let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".to_string());
    let list = |items: &[String]| {
        let inner: Vec<String> = items.iter().map(|i| s(i)).collect();
        format!("[{}]", inner.join(", "))
    };
    format!(
        "{{\"agreement\": {}, \"contradictions\": {}, \"unique_insights\": {}, \"trusted_answer\": {}}}",
        s(&agreement),
        list(&contradictions),
        list(&insights),
        s(&trusted)
    )
}

/// Texts a Fusion judge may reply with instead of JSON (no braces).
const GARBAGE_REPLIES: &[&str] = &[
    "Having compared the answers, I think most of them make reasonable points; \
     I would trust the one that explains itself best.",
    "The answers differ in places. Some are more careful than others, and the \
     question deserves a closer look before trusting any of them.",
    "I cannot produce the requested format right now, but the answers seem broadly sensible.",
];

/// The content of a Fusion judge's reply.
pub fn judge_reply(model: &str, style: JudgeStyle, json: &str, index: u64) -> String {
    match style {
        JudgeStyle::Bare => json.to_string(),
        JudgeStyle::Fenced => {
            format!("[{model}] Here is my analysis of the answers:\n```json\n{json}\n```")
        }
        JudgeStyle::Garbage => {
            let i = usize::try_from(index).unwrap_or(0) % GARBAGE_REPLIES.len();
            let text = GARBAGE_REPLIES.get(i).copied().unwrap_or("No analysis.");
            format!("[{model}] {text}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::questions::{Calibration, DEFAULT_OPTIONS};

    fn mc(answer: char) -> Question {
        Question::new(
            "q",
            Key::Choice {
                answer,
                options: DEFAULT_OPTIONS.chars().collect(),
            },
        )
    }

    fn refs(list: &[&str]) -> Vec<Option<String>> {
        list.iter()
            .map(|a| (!a.is_empty()).then(|| a.to_string()))
            .collect()
    }

    fn inputs<'a>(
        q: Option<&'a Question>,
        r: &'a [Option<String>],
        t: Option<&'a str>,
        i: u64,
    ) -> Inputs<'a> {
        Inputs {
            seed: 3,
            model: "m",
            question: q,
            references: r,
            trusted: t,
            basis: "b",
            index: i,
        }
    }

    fn choose(
        q: Option<&Question>,
        r: &[Option<String>],
        t: Option<&str>,
        skill: f64,
        i: u64,
    ) -> Option<Pick> {
        pick(
            &inputs(q, r, t, i),
            b"synth",
            skill,
            Calibration::Calibrated,
            Forced::default(),
        )
    }

    #[test]
    fn extraction_with_and_without_a_key() {
        let q = mc('B');
        assert_eq!(
            reference_answer("[m] x ANSWER: (c)", Some(&q.key)).as_deref(),
            Some("C")
        );
        assert_eq!(reference_answer("no marker here", None), None);
        assert_eq!(
            reference_answer("Answer:  New   York \nmore", None).as_deref(),
            Some("New York")
        );
        assert_eq!(
            trusted_answer("{\n  \"trusted_answer\": \"ANSWER: D\"\n}", Some(&q.key)).as_deref(),
            Some("D")
        );
        assert_eq!(
            trusted_answer(
                "x {\"trusted_answer\": 42} y",
                Some(&Key::Exact("42".into()))
            )
            .as_deref(),
            Some("42")
        );
        assert_eq!(trusted_answer("not json", Some(&q.key)), None);
        assert_eq!(trusted_answer("{\"agreement\": \"x\"}", Some(&q.key)), None);
    }

    #[test]
    fn tally_orders_by_votes_then_first_appearance() {
        let e = Key::Exact("42".into());
        let g = tally(&refs(&["43", "42.0", "", "42", "43"]), Some("44"), Some(&e));
        let summary: Vec<(&str, Vec<usize>)> = g
            .iter()
            .map(|g| (g.answer.as_str(), g.voters.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![("43", vec![0, 4]), ("42.0", vec![1, 3]), ("44", vec![5])]
        );
    }

    #[test]
    fn skill_and_plurality() {
        let q = mc('C');
        let r = refs(&["A", "C", "A"]);
        for i in 0..50 {
            let hi = choose(Some(&q), &r, None, 1.0, i).unwrap();
            assert_eq!(hi.drawn.text, "C");
            assert!(hi.drawn.correct);
            let lo = choose(Some(&q), &r, None, 0.0, i).unwrap();
            assert_eq!(lo.drawn.text, "A");
            assert_eq!(lo.drawn.rivals.first().map(String::as_str), Some("C"));
            // Key absent: the plurality, ties to the first reference.
            let tie = choose(Some(&q), &refs(&["B", "D", "D", "B"]), None, 1.0, i).unwrap();
            assert_eq!(tie.drawn.text, "B");
            // The trusted answer is one more vote.
            let t = choose(Some(&q), &refs(&["B", "D"]), Some("D"), 0.0, i).unwrap();
            assert_eq!(t.drawn.text, "D");
        }
        assert!(choose(Some(&q), &refs(&["", ""]), None, 1.0, 0).is_none());
        // Without a key: the plurality.
        let n = choose(None, &refs(&["x y", "z", "X  Y."]), None, 1.0, 0).unwrap();
        assert_eq!(n.drawn.text, "x y");
        assert!(!n.drawn.correct);
    }

    #[test]
    fn exact_spelling_of_the_key_becomes_the_key() {
        let q = Question::new("q", Key::Exact("42".into()));
        let p = choose(Some(&q), &refs(&["**42.0**", "43"]), None, 1.0, 0).unwrap();
        assert_eq!(p.drawn.text, "42");
        assert!(p.drawn.correct);
    }

    #[test]
    fn forced_correctness() {
        let q = mc('C');
        let r = refs(&["A", "C", "C"]);
        let inp = inputs(Some(&q), &r, None, 0);
        let yes = Forced {
            confidence: Some(0.4),
            correct: Some(true),
        };
        let no = Forced {
            confidence: None,
            correct: Some(false),
        };
        let p = pick(&inp, b"synth", 0.0, Calibration::Calibrated, yes).unwrap();
        assert_eq!((p.drawn.text.as_str(), p.drawn.p), ("C", 0.4));
        let p = pick(&inp, b"synth", 1.0, Calibration::Calibrated, no).unwrap();
        assert_eq!(p.drawn.text, "A");
        let all_right = refs(&["C"]);
        let p = pick(
            &inputs(Some(&q), &all_right, None, 0),
            b"synth",
            1.0,
            Calibration::Calibrated,
            no,
        )
        .unwrap();
        assert!(!p.drawn.correct);
    }

    #[test]
    fn analysis_json_parses() {
        let r = refs(&["B", "", "C", "B"]);
        let g = tally(&r, None, None);
        let json = analysis_json(&r, &g, Some("B"));
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["agreement"], "2 of 4 answers give B");
        assert_eq!(v["contradictions"][0], "Answer 3 gives C, not B");
        assert_eq!(v["unique_insights"].as_array().unwrap().len(), 2);
        assert_eq!(v["trusted_answer"], "ANSWER: B");
        for (i, reply) in GARBAGE_REPLIES.iter().enumerate() {
            assert!(!reply.contains('{'), "{i}");
        }
    }
}
