//! Answers collected from a panel or from rounds of samples, and what the patterns do with
//! them: quote them in a prompt, or put them to a vote when a later step fails.

use super::{Answer, Runtime};
use crate::config::{ModelId, PoolMember};
use crate::contract::Contract;
use crate::openai::UpstreamCompletion;
use crate::prompt;
use crate::template::{self, Template, Vars};
use crate::vote::{self, Ballot};
use serde_json::{json, Value};

/// Longest answer quoted in a prompt.
const MAX_QUOTED: usize = 16 * 1024;

/// One successful response.
pub struct Evidence {
    pub model: ModelId,
    pub strength: f64,
    pub completion: UpstreamCompletion,
    /// The contract's reading of it (`None` for free text, or when it has none).
    pub answer: Option<String>,
    /// Round (ReMoM) or 0.
    pub round: usize,
}

impl Evidence {
    pub fn new(
        rt: &Runtime,
        member: &PoolMember,
        completion: UpstreamCompletion,
        round: usize,
    ) -> Evidence {
        let contract = &rt.recipe().contract;
        let answer = match contract {
            Contract::Text => None,
            _ => completion
                .content()
                .and_then(|t| contract.extract(t))
                .map(|e| e.value),
        };
        Evidence {
            model: member.model,
            strength: member.strength,
            completion,
            answer,
            round,
        }
    }

    pub fn text(&self) -> &str {
        self.completion.content().unwrap_or("")
    }
}

/// The pool entry behind an answer from `model` for the step of pool entry `index`. A
/// fallback model's answer keeps no strength: its standing in the pool is unknown.
pub fn member_for(pool: &[PoolMember], index: usize, model: ModelId) -> PoolMember {
    match pool.get(index) {
        Some(m) if m.model == model => *m,
        _ => PoolMember {
            model,
            weight: 0.0,
            strength: 0.0,
        },
    }
}

/// The answers as numbered blocks between `<answer-nonce>` tags that their content cannot
/// close.
pub fn quote(evidence: &[&Evidence], nonce: &str) -> String {
    let mut out = String::new();
    for (i, e) in evidence.iter().enumerate() {
        let text = &prompt::clip(e.text(), MAX_QUOTED);
        out.push_str(&format!(
            "Answer {}:\n{}\n\n",
            i + 1,
            prompt::fence("answer", nonce, text)
        ));
    }
    out.trim_end().to_string()
}

/// The gateway's own prompt from `template`, quoting the question and `evidence`.
pub fn prompt(rt: &Runtime, template: &Template, evidence: &[&Evidence], analysis: &str) -> Value {
    let nonce = rt.nonce();
    let question = template::question_parts(
        rt.request().field("messages").unwrap_or(&Value::Null),
        nonce,
    );
    let answers = quote(evidence, nonce);
    let contract = rt.recipe().contract.instruction().unwrap_or_default();
    let content = template.render(&Vars {
        question: &question,
        answers: &answers,
        analysis,
        contract: &contract,
        count: evidence.len(),
    });
    json!([{"role": "user", "content": content}])
}

/// The plurality of the extracted answers (one vote each, ties to the stronger model),
/// with the index of the response to return and a trace of the tally. Free text cannot be
/// voted on: the strongest model's response stands.
pub fn fallback(evidence: &[Evidence]) -> Option<(usize, Value)> {
    let mut ballots = Vec::new();
    let mut sources = Vec::new();
    for (i, e) in evidence.iter().enumerate() {
        if let Some(answer) = &e.answer {
            ballots.push(Ballot {
                answer: answer.clone(),
                weight: 1.0,
                strength: e.strength,
            });
            sources.push(i);
        }
    }
    if let Some(outcome) = vote::plurality(&ballots) {
        let index = *sources.get(outcome.best_ballot)?;
        let trace = json!({"answer": outcome.answer, "votes": outcome.votes,
                           "of": ballots.len(), "tie_broken": outcome.tie_broken});
        return Some((index, trace));
    }
    let mut best: Option<usize> = None;
    for (i, e) in evidence.iter().enumerate() {
        if best.is_none_or(|b| evidence.get(b).is_some_and(|x| e.strength > x.strength)) {
            best = Some(i);
        }
    }
    best.map(|i| (i, json!({"strongest_model_response": true})))
}

/// Ends the looper with the vote over `evidence`, or with a failure when there is none.
pub fn finish_with_vote(rt: &mut Runtime, mut evidence: Vec<Evidence>, why: &str) {
    match fallback(&evidence) {
        Some((index, trace)) if index < evidence.len() => {
            rt.detail("fallback_vote", trace);
            let chosen = evidence.swap_remove(index);
            let alias = rt.alias(chosen.model).to_string();
            rt.finish(
                Ok(Answer::Upstream {
                    model: chosen.model,
                    completion: chosen.completion,
                }),
                format!("{why}; returning the vote over the evidence (reply from {alias})"),
            );
        }
        _ => {
            let error = rt.no_answer("no usable answer was produced");
            rt.finish(Err(error), format!("{why}; no evidence to vote on"));
        }
    }
}

/// A vote tally for the trace: every answer with its count.
pub fn tally(evidence: &[&Evidence]) -> Value {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in evidence {
        if let Some(answer) = &e.answer {
            match counts.iter_mut().find(|(a, _)| a == answer) {
                Some(c) => c.1 += 1,
                None => counts.push((answer.clone(), 1)),
            }
        }
    }
    Value::Array(
        counts
            .into_iter()
            .map(|(a, n)| json!({"answer": a, "votes": n}))
            .collect(),
    )
}
