//! Ratings (SPEC §4.2): a panel answers in parallel (the runtime keeps at most
//! `max_concurrent` calls in flight); the answers the output contract can extract are put to a
//! rating-weighted vote, and the strongest model behind the winning answer provides the reply.
//! Without extractable answers (free text), a judge picks one, or the highest-rated response
//! wins. Once the votes still to come cannot change the winner, the rest is not waited for.

use super::{Algorithm, Answer, CallDone, CallId, CallOutcome, CallPlan, Runtime};
use crate::config::{ModelId, RatingsRecipe};
use crate::contract::Contract;
use crate::openai::UpstreamCompletion;
use crate::prompt;
use crate::vote::{self, Ballot};
use serde_json::{json, Value};

/// Longest panel answer quoted to the judge.
const MAX_QUOTED: usize = 16 * 1024;

struct Response {
    member: usize,
    /// Vote weight: the member's, or 0 for a fallback model's answer (its rating is unknown
    /// and it must not vote twice).
    weight: f64,
    model: ModelId,
    completion: UpstreamCompletion,
    answer: Option<String>,
}

pub struct Ratings {
    recipe: RatingsRecipe,
    /// Panel calls and the member each one asks.
    calls: Vec<(CallId, usize)>,
    pending: usize,
    responses: Vec<Response>,
    judge_call: Option<CallId>,
}

impl Ratings {
    pub fn new(recipe: RatingsRecipe) -> Self {
        Ratings {
            recipe,
            calls: Vec::new(),
            pending: 0,
            responses: Vec::new(),
            judge_call: None,
        }
    }

    fn weight(&self, member: usize) -> f64 {
        self.recipe.members.get(member).map_or(0.0, |m| m.weight)
    }

    fn ballots(&self) -> (Vec<Ballot>, Vec<usize>) {
        let mut ballots = Vec::new();
        let mut sources = Vec::new();
        for (i, r) in self.responses.iter().enumerate() {
            if let Some(answer) = &r.answer {
                ballots.push(Ballot {
                    answer: answer.clone(),
                    weight: r.weight,
                    strength: r.weight,
                });
                sources.push(i);
            }
        }
        (ballots, sources)
    }

    fn pending_weight(&self) -> f64 {
        let answered: Vec<usize> = self.responses.iter().map(|r| r.member).collect();
        self.calls
            .iter()
            .filter(|(_, m)| !answered.contains(m))
            .map(|(_, m)| self.weight(*m))
            .sum::<f64>()
    }

    fn record_votes(&self, rt: &mut Runtime) {
        let (ballots, _) = self.ballots();
        let mut totals: Vec<(String, f64, usize)> = Vec::new();
        for b in &ballots {
            match totals.iter_mut().find(|t| t.0 == b.answer) {
                Some(t) => {
                    t.1 += b.weight;
                    t.2 += 1;
                }
                None => totals.push((b.answer.clone(), b.weight, 1)),
            }
        }
        let votes: Vec<Value> = totals
            .iter()
            .map(|(a, w, n)| json!({"answer": a, "weight": w, "votes": n}))
            .collect();
        rt.detail("votes", Value::Array(votes));
    }

    /// Finishes with the vote if the panel is done, or if the votes still to come cannot
    /// change the winner.
    fn try_conclude(&mut self, rt: &mut Runtime) {
        let voting = rt.recipe().contract != Contract::Text;
        if voting && self.recipe.early_stop && self.pending > 0 {
            let (ballots, _) = self.ballots();
            if vote::is_decided(&ballots, self.pending_weight()) {
                rt.note(format!(
                    "vote decided with {} answers still pending",
                    self.pending
                ));
                self.conclude(rt);
            }
            return;
        }
        if self.pending == 0 {
            self.conclude(rt);
        }
    }

    fn conclude(&mut self, rt: &mut Runtime) {
        self.record_votes(rt);
        let (ballots, sources) = self.ballots();
        if let Some(outcome) = vote::plurality(&ballots) {
            let Some(index) = sources.get(outcome.best_ballot).copied() else {
                return;
            };
            let total: f64 = ballots.iter().map(|b| b.weight.max(0.0)).sum();
            let share = if total > 0.0 {
                outcome.weight / total
            } else {
                0.0
            };
            rt.set_confidence(share);
            rt.detail(
                "winner",
                json!({"answer": outcome.answer, "weight": outcome.weight,
                       "votes": outcome.votes, "tie_broken": outcome.tie_broken}),
            );
            self.finish_with(rt, index, format!("weighted vote for {}", outcome.answer));
            return;
        }
        if self.responses.is_empty() {
            rt.finish(
                Err(rt.no_answer("no panel member answered")),
                "every panel call failed",
            );
            return;
        }
        if self.recipe.judge.is_some() && self.responses.len() > 1 {
            self.ask_judge(rt);
            return;
        }
        let best = self.highest_rated();
        self.finish_with(
            rt,
            best,
            "no extractable answers; highest-rated response".into(),
        );
    }

    fn highest_rated(&self) -> usize {
        let mut best = 0;
        for (i, r) in self.responses.iter().enumerate() {
            let current = self
                .responses
                .get(best)
                .map_or(f64::MIN, |b| self.weight(b.member));
            if self.weight(r.member) > current {
                best = i;
            }
        }
        best
    }

    fn finish_with(&mut self, rt: &mut Runtime, index: usize, why: String) {
        if index >= self.responses.len() {
            return;
        }
        let response = self.responses.swap_remove(index);
        let alias = rt.alias(response.model).to_string();
        rt.finish(
            Ok(Answer::Upstream {
                model: response.model,
                completion: response.completion,
            }),
            format!("{why} (reply from {alias})"),
        );
    }

    fn ask_judge(&mut self, rt: &mut Runtime) {
        let Some(judge) = self.recipe.judge else {
            return;
        };
        let nonce = rt.nonce().to_string();
        let mut listing = String::new();
        for (i, r) in self.responses.iter().enumerate() {
            let text = r.completion.content().unwrap_or("");
            let quoted = prompt::clip(text, MAX_QUOTED);
            listing.push_str(&format!(
                "Response {}:\n{}\n\n",
                i + 1,
                prompt::fence("response", &nonce, &quoted)
            ));
        }
        let client_messages = rt
            .request()
            .field("messages")
            .cloned()
            .unwrap_or(Value::Null);
        let user = crate::template::render_builtin(
            crate::template::defaults::PICK_BEST,
            &client_messages,
            &nonce,
            listing.trim_end(),
            self.responses.len(),
        );
        let messages = json!([
            {"role": "system", "content": "You are an impartial judge of answers."},
            {"role": "user", "content": user}
        ]);
        match rt.dispatch(judge, CallPlan::own("judge", messages)) {
            Ok(call) => self.judge_call = Some(call),
            Err(stop) => {
                rt.note(format!("judge not asked: {}", stop.describe()));
                let best = self.highest_rated();
                self.finish_with(rt, best, "highest-rated response".into());
            }
        }
    }

    fn on_judge(&mut self, rt: &mut Runtime, outcome: CallOutcome) {
        let pick = match &outcome {
            CallOutcome::Ok(c) => c.content().and_then(parse_best),
            CallOutcome::Failed { .. } => None,
        };
        match pick.and_then(|n| n.checked_sub(1)) {
            Some(index) if index < self.responses.len() => {
                self.finish_with(rt, index, format!("judge picked response {}", index + 1));
            }
            _ => {
                rt.note("judge gave no usable pick; using the highest-rated response");
                let best = self.highest_rated();
                self.finish_with(rt, best, "highest-rated response".into());
            }
        }
    }
}

/// The last `BEST: N` with a number (later prose such as "Response 2 is the best." does
/// not hide it).
fn parse_best(text: &str) -> Option<usize> {
    let upper = text.to_ascii_uppercase();
    let mut end = upper.len();
    while let Some(at) = upper.get(..end).and_then(|head| head.rfind("BEST")) {
        let rest = upper.get(at + 4..).unwrap_or("");
        let rest = rest.trim_start_matches(|c: char| {
            c == ':' || c == '*' || c.is_whitespace() || c == '#' || c.is_ascii_alphabetic()
        });
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            return Some(n);
        }
        end = at;
    }
    None
}

impl Algorithm for Ratings {
    fn on_deadline(&mut self, rt: &mut Runtime) {
        rt.note("request deadline reached: deciding with the answers in");
        self.pending = 0;
        self.conclude(rt);
    }

    fn start(&mut self, rt: &mut Runtime) {
        for member in 0..self.recipe.members.len() {
            let Some(model) = self.recipe.members.get(member).map(|m| m.model) else {
                continue;
            };
            match rt.dispatch(model, CallPlan::answer("answer")) {
                Ok(call) => {
                    self.calls.push((call, member));
                    self.pending += 1;
                }
                Err(_) => break,
            }
        }
    }

    fn on_call_done(&mut self, rt: &mut Runtime, done: CallDone) {
        if Some(done.step) == self.judge_call {
            self.on_judge(rt, done.outcome);
            return;
        }
        let Some(member) = self
            .calls
            .iter()
            .find(|(c, _)| *c == done.step)
            .map(|(_, m)| *m)
        else {
            return;
        };
        self.pending = self.pending.saturating_sub(1);
        if let CallOutcome::Ok(completion) = done.outcome {
            let contract = rt.recipe().contract.clone();
            let answer = match contract {
                Contract::Text => None,
                _ => completion
                    .content()
                    .and_then(|t| contract.extract(t))
                    .map(|e| e.value),
            };
            let own = self.recipe.members.get(member).map(|m| m.model) == Some(done.model);
            let weight = if own { self.weight(member) } else { 0.0 };
            rt.annotate(done.call, answer.clone(), Some(weight));
            self.responses.push(Response {
                member,
                weight,
                model: done.model,
                completion,
                answer,
            });
        } else {
            // A failed member no longer counts as a pending vote.
            self.calls.retain(|(c, _)| *c != done.step);
        }
        self.try_conclude(rt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_picks_parse() {
        assert_eq!(parse_best("Reasoning...\nBEST: 2"), Some(2));
        assert_eq!(parse_best("**Best:** Response 3"), Some(3));
        assert_eq!(parse_best("best: #1"), Some(1));
        assert_eq!(parse_best("nothing"), None);
        assert_eq!(parse_best("BEST: 2\nResponse 2 is the best."), Some(2));
    }
}
