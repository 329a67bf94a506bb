//! Fusion (SPEC §4.4): a panel answers independently; a judge compares the answers (quoted
//! between tags the answers cannot close) and returns a structured analysis; a finalizer
//! writes the answer in the output contract. The judge is skipped when the finalizer's prompt
//! does not use `{analysis}`. A judge reply that is not JSON is tolerated (the finalizer goes
//! on without analysis); a failed judge or finalizer call, or a final answer that breaks the
//! contract, gives the panel vote.

use super::evidence::{self, Evidence};
use super::{Algorithm, Answer, CallDone, CallId, CallOutcome, CallPlan, Runtime};
use crate::config::FusionRecipe;
use crate::contract::Contract;
use crate::prompt;
use crate::template::var;
use serde_json::{json, Value};

pub struct Fusion {
    recipe: FusionRecipe,
    panel_calls: Vec<(CallId, usize)>,
    pending: usize,
    evidence: Vec<Evidence>,
    judge_call: Option<CallId>,
    finalizer_call: Option<CallId>,
}

/// The judge's analysis: the first JSON object in its reply (a bracketed citation such as
/// `[1]` before it is not one).
pub fn parse_analysis(text: &str) -> Option<Value> {
    for (start, c) in text.char_indices() {
        if c != '{' {
            continue;
        }
        let rest = text.get(start..)?;
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        if let Some(Ok(value @ Value::Object(_))) = stream.next() {
            return Some(value);
        }
    }
    None
}

impl Fusion {
    pub fn new(recipe: FusionRecipe) -> Self {
        Fusion {
            recipe,
            panel_calls: Vec::new(),
            pending: 0,
            evidence: Vec::new(),
            judge_call: None,
            finalizer_call: None,
        }
    }

    fn usable(&self, rt: &Runtime) -> Vec<&Evidence> {
        let text = rt.recipe().contract == Contract::Text;
        self.evidence
            .iter()
            .filter(|e| text || e.answer.is_some())
            .collect()
    }

    fn after_panel(&mut self, rt: &mut Runtime) {
        rt.detail(
            "panel",
            json!({"asked": self.panel_calls.len(), "answered": self.evidence.len(),
                   "votes": evidence::tally(&self.evidence.iter().collect::<Vec<_>>())}),
        );
        if self.usable(rt).is_empty() {
            let evidence = std::mem::take(&mut self.evidence);
            evidence::finish_with_vote(rt, evidence, "no panel answer in the contract");
            return;
        }
        let wants_analysis = self.recipe.finalizer_prompt.uses(var::ANALYSIS);
        match self.recipe.judge {
            Some(judge) if wants_analysis => {
                let usable = self.usable(rt);
                let messages = evidence::prompt(rt, &self.recipe.judge_prompt, &usable, "");
                let plan = CallPlan::own("judge", messages);
                match rt.dispatch(judge, plan) {
                    Ok(call) => self.judge_call = Some(call),
                    Err(stop) => {
                        let why = format!("judge not asked: {}", stop.describe());
                        self.vote(rt, &why);
                    }
                }
            }
            Some(_) => {
                rt.note("the finalizer prompt does not use {analysis}: judge skipped");
                self.finalize(rt, None);
            }
            None => self.finalize(rt, None),
        }
    }

    fn vote(&mut self, rt: &mut Runtime, why: &str) {
        let evidence = std::mem::take(&mut self.evidence);
        evidence::finish_with_vote(rt, evidence, why);
    }

    fn on_judge(&mut self, rt: &mut Runtime, done: CallDone) {
        match done.outcome {
            CallOutcome::Ok(completion) => {
                let analysis = completion.content().and_then(parse_analysis);
                match &analysis {
                    Some(a) => {
                        let trusted = a.get("trusted_answer").cloned().unwrap_or(Value::Null);
                        rt.annotate(done.call, trusted.as_str().map(str::to_string), None);
                        rt.detail("judge", a.clone());
                    }
                    None => rt.note("judge reply had no JSON analysis; finalizing without it"),
                }
                self.finalize(rt, analysis);
            }
            CallOutcome::Failed { kind, .. } => {
                let why = format!("judge failed: {}", kind.describe());
                self.vote(rt, &why);
            }
        }
    }

    fn finalize(&mut self, rt: &mut Runtime, analysis: Option<Value>) {
        let analysis_text = match &analysis {
            Some(a) => prompt::fence(
                "analysis",
                rt.nonce(),
                &serde_json::to_string_pretty(a).unwrap_or_default(),
            ),
            None => "(no analysis available)".to_string(),
        };
        let usable = self.usable(rt);
        let messages = evidence::prompt(rt, &self.recipe.finalizer_prompt, &usable, &analysis_text);
        let plan = CallPlan::own("finalizer", messages).final_answer();
        match rt.dispatch(self.recipe.finalizer, plan) {
            Ok(call) => self.finalizer_call = Some(call),
            Err(stop) => {
                let why = format!("finalizer not asked: {}", stop.describe());
                self.vote(rt, &why);
            }
        }
    }

    fn on_finalizer(&mut self, rt: &mut Runtime, done: CallDone) {
        let contract = rt.recipe().contract.clone();
        match done.outcome {
            CallOutcome::Ok(completion) => {
                let text = completion.content().unwrap_or("");
                match contract.check(text) {
                    Ok(extracted) => {
                        rt.annotate(done.call, Some(extracted.value), None);
                        let alias = rt.alias(done.model).to_string();
                        rt.finish(
                            Ok(Answer::Upstream {
                                model: done.model,
                                completion,
                            }),
                            format!("finalized by {alias} from {} answers", self.evidence.len()),
                        );
                    }
                    Err(why) => {
                        let why =
                            format!("finalizer broke the `{}` contract ({why})", contract.name());
                        self.vote(rt, &why);
                    }
                }
            }
            CallOutcome::Failed { kind, .. } => {
                let why = format!("finalizer failed: {}", kind.describe());
                self.vote(rt, &why);
            }
        }
    }
}

impl Algorithm for Fusion {
    fn on_deadline(&mut self, rt: &mut Runtime) {
        self.vote(rt, "request deadline reached");
    }

    fn start(&mut self, rt: &mut Runtime) {
        for (member, m) in self.recipe.panel.iter().enumerate() {
            match rt.dispatch(m.model, CallPlan::answer("panel")) {
                Ok(call) => {
                    self.panel_calls.push((call, member));
                    self.pending += 1;
                }
                Err(_) => break,
            }
        }
    }

    fn on_call_done(&mut self, rt: &mut Runtime, done: CallDone) {
        if Some(done.step) == self.judge_call {
            self.on_judge(rt, done);
            return;
        }
        if Some(done.step) == self.finalizer_call {
            self.on_finalizer(rt, done);
            return;
        }
        let Some(member) = self
            .panel_calls
            .iter()
            .find(|(c, _)| *c == done.step)
            .map(|(_, m)| *m)
        else {
            return;
        };
        self.pending = self.pending.saturating_sub(1);
        if let CallOutcome::Ok(completion) = done.outcome {
            let member = evidence::member_for(&self.recipe.panel, member, done.model);
            let e = Evidence::new(rt, &member, completion, 0);
            rt.annotate(done.call, e.answer.clone(), None);
            self.evidence.push(e);
        }
        if self.pending == 0 {
            self.after_panel(rt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_is_found_in_prose_or_fences() {
        let a = parse_analysis("Here you go:\n```json\n{\"trusted_answer\": \"B\"}\n```").unwrap();
        assert_eq!(a["trusted_answer"], "B");
        let a =
            parse_analysis("{\"agreement\": \"all\", \"trusted_answer\": \"C\"} trailing").unwrap();
        assert_eq!(a["trusted_answer"], "C");
        assert!(parse_analysis("no json at all").is_none());
        assert!(
            parse_analysis("[1, 2]").is_none(),
            "an analysis is an object"
        );
    }
}
