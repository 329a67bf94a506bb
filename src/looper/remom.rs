//! ReMoM (SPEC §4.3): rounds of parallel samples spread over a pool of models, then one
//! synthesis that sees the question and every valid answer. Rounds after the first see the
//! previous round's answers (as in Mixture-of-Agents layers).
//!
//! Within a round, once the answers in agree so that the calls still pending cannot change
//! the plurality, the round stops waiting (those calls are abandoned and reported). When the
//! synthesis fails or breaks the output contract, the reply is the vote over the evidence,
//! ties going to the stronger model, never the longest text.

use super::evidence::{self, Evidence};
use super::{Algorithm, Answer, CallDone, CallId, CallOutcome, CallPlan, LooperEvent, Runtime};
use crate::config::{Distribution, PoolMember, RemomRecipe};
use crate::contract::Contract;
use crate::vote::{self, Ballot};
use serde_json::{json, Value};

/// Worker temperature when neither the client nor the recipe sets one: repeated samples of one
/// model must differ.
const SAMPLE_TEMPERATURE: f64 = 0.7;

pub struct Remom {
    recipe: RemomRecipe,
    /// Samples started so far: each gets its own `seed`, so repeated samples of one model
    /// differ (and stay reproducible when the client sets a seed).
    samples: u64,
    round: usize,
    /// This round's calls and the pool member each asks.
    round_calls: Vec<(CallId, usize)>,
    pending: usize,
    /// Successful responses of every round.
    evidence: Vec<Evidence>,
    rounds: Vec<Value>,
    synthesis_call: Option<CallId>,
}

/// Spreads `n` samples over the pool, interleaved so a capped concurrency mixes models.
pub fn distribute(pool: &[PoolMember], distribution: Distribution, n: usize) -> Vec<usize> {
    let counts: Vec<usize> = match distribution {
        Distribution::FirstOnly => {
            let mut c = vec![0; pool.len()];
            if let Some(first) = c.first_mut() {
                *first = n;
            }
            c
        }
        Distribution::RoundRobin => (0..pool.len())
            .map(|i| n / pool.len().max(1) + usize::from(i < n % pool.len().max(1)))
            .collect(),
        Distribution::Weighted => {
            // Largest remainder: floors of the exact shares, then the leftovers to the
            // largest fractions (earlier members first on equal fractions).
            let total: f64 = pool.iter().map(|m| m.weight).sum();
            let exact: Vec<f64> = pool
                .iter()
                .map(|m| {
                    if total > 0.0 {
                        m.weight / total * n as f64
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
            let assigned: usize = counts.iter().sum();
            let order = crate::stable_sort::sorted_positions(pool.len(), &|a, b| {
                let fa = exact.get(a).map_or(0.0, |x| x - x.floor());
                let fb = exact.get(b).map_or(0.0, |x| x - x.floor());
                fb.total_cmp(&fa)
            });
            for &i in order.iter().take(n.saturating_sub(assigned)) {
                if let Some(c) = counts.get_mut(i) {
                    *c += 1;
                }
            }
            counts
        }
    };
    let mut left = counts;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let before = out.len();
        for (i, c) in left.iter_mut().enumerate() {
            if *c > 0 {
                *c -= 1;
                out.push(i);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

impl Remom {
    pub fn new(recipe: RemomRecipe) -> Self {
        Remom {
            recipe,
            samples: 0,
            round: 0,
            round_calls: Vec::new(),
            pending: 0,
            evidence: Vec::new(),
            rounds: Vec::new(),
            synthesis_call: None,
        }
    }

    fn breadth(&self) -> u32 {
        self.recipe
            .breadth_schedule
            .get(self.round)
            .copied()
            .unwrap_or(0)
    }

    fn worker_plan(&self, rt: &Runtime) -> CallPlan {
        let previous: Vec<&Evidence> = self
            .evidence
            .iter()
            .filter(|e| e.round + 1 == self.round)
            .collect();
        let mut plan = if self.round == 0 || previous.is_empty() {
            CallPlan::answer("worker")
        } else {
            let messages = evidence::prompt(rt, &self.recipe.round_prompt, &previous, "");
            CallPlan::own("worker", messages)
        };
        let role_sets_temperature = rt.recipe().role("worker").and_then(|r| r.temperature);
        if role_sets_temperature.is_none() && rt.request().field("temperature").is_none() {
            plan = plan.with("temperature", json!(SAMPLE_TEMPERATURE));
        }
        if let Some(ms) = self.recipe.round_deadline_ms {
            plan = plan.until(rt.now().plus(ms));
        }
        plan
    }

    fn start_round(&mut self, rt: &mut Runtime) {
        let breadth = self.breadth() as usize;
        let assignment = distribute(&self.recipe.pool, self.recipe.distribution, breadth);
        let plan = self.worker_plan(rt);
        let base_seed = rt
            .request()
            .field("seed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.round_calls.clear();
        self.pending = 0;
        for member in assignment {
            let Some(model) = self.recipe.pool.get(member).map(|m| m.model) else {
                continue;
            };
            let seed = base_seed.wrapping_add(self.samples);
            self.samples += 1;
            match rt.dispatch(model, plan.clone().with("seed", json!(seed))) {
                Ok(call) => {
                    self.round_calls.push((call, member));
                    self.pending += 1;
                }
                Err(_) => break,
            }
        }
        if self.pending == 0 {
            rt.note(format!("round {} could not start", self.round + 1));
            self.end_round(rt, false);
        }
    }

    fn round_ballots(&self) -> Vec<Ballot> {
        self.evidence
            .iter()
            .filter(|e| e.round == self.round)
            .filter_map(|e| {
                Some(Ballot {
                    answer: e.answer.clone()?,
                    weight: 1.0,
                    strength: e.strength,
                })
            })
            .collect()
    }

    fn round_successes(&self) -> usize {
        self.evidence
            .iter()
            .filter(|e| e.round == self.round)
            .count()
    }

    fn end_round(&mut self, rt: &mut Runtime, early: bool) {
        let breadth = self.breadth();
        let quorum = self.recipe.quorum(breadth);
        let successes = self.round_successes();
        let met = successes >= quorum as usize;
        // Calls of this round still running or queued: no longer waited for.
        let abandoned: Vec<CallId> = self
            .round_calls
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| {
                rt.call(*c).is_some_and(|r| {
                    matches!(
                        r.state,
                        super::CallState::InFlight | super::CallState::Queued
                    )
                })
            })
            .collect();
        for call in &abandoned {
            rt.abandon(*call);
        }
        let this_round: Vec<&Evidence> = self
            .evidence
            .iter()
            .filter(|e| e.round == self.round)
            .collect();
        self.rounds.push(json!({
            "round": self.round + 1,
            "breadth": breadth,
            "started": self.round_calls.len(),
            "successes": successes,
            "quorum": quorum,
            "quorum_met": met,
            "early_stop": early,
            "abandoned": abandoned.len(),
            "votes": evidence::tally(&this_round),
        }));
        if early {
            rt.note(format!(
                "round {}: outcome decided; stopped waiting for {} calls",
                self.round + 1,
                abandoned.len()
            ));
        }
        if !met {
            rt.event(LooperEvent::QuorumShortfall);
            rt.note(format!(
                "round {} below quorum: {successes} of {breadth} succeeded, {quorum} needed",
                self.round + 1
            ));
        }
        rt.detail("rounds", Value::Array(self.rounds.clone()));
        self.pending = 0;
        self.round += 1;
        if self.round < self.recipe.breadth_schedule.len() {
            self.start_round(rt);
        } else {
            self.synthesize(rt);
        }
    }

    fn usable(&self, contract: &Contract) -> Vec<&Evidence> {
        self.evidence
            .iter()
            .filter(|e| *contract == Contract::Text || e.answer.is_some())
            .collect()
    }

    fn synthesize(&mut self, rt: &mut Runtime) {
        let contract = rt.recipe().contract.clone();
        let usable = self.usable(&contract);
        if usable.is_empty() {
            let evidence = std::mem::take(&mut self.evidence);
            evidence::finish_with_vote(rt, evidence, "no valid answer to synthesize");
            return;
        }
        let messages = evidence::prompt(rt, &self.recipe.synthesis_prompt, &usable, "");
        let plan = CallPlan::own("synthesizer", messages).final_answer();
        match rt.dispatch(self.recipe.synthesizer, plan) {
            Ok(call) => self.synthesis_call = Some(call),
            Err(stop) => {
                let why = format!("synthesis not started: {}", stop.describe());
                let evidence = std::mem::take(&mut self.evidence);
                evidence::finish_with_vote(rt, evidence, &why);
            }
        }
    }

    fn on_synthesis(&mut self, rt: &mut Runtime, done: CallDone) {
        let contract = rt.recipe().contract.clone();
        let evidence = std::mem::take(&mut self.evidence);
        match done.outcome {
            CallOutcome::Ok(completion) => {
                let text = completion.content().unwrap_or("");
                match contract.check(text) {
                    Ok(extracted) => {
                        rt.annotate(done.call, Some(extracted.value.clone()), None);
                        let agreeing = evidence
                            .iter()
                            .filter(|e| e.answer.as_deref() == Some(extracted.value.as_str()))
                            .count();
                        rt.detail(
                            "synthesis",
                            json!({"answer": extracted.value, "agreeing_evidence": agreeing,
                                   "evidence": evidence.len()}),
                        );
                        let alias = rt.alias(done.model).to_string();
                        rt.finish(
                            Ok(Answer::Upstream {
                                model: done.model,
                                completion,
                            }),
                            format!("synthesized by {alias} from {} answers", evidence.len()),
                        );
                    }
                    Err(why) => {
                        let why =
                            format!("synthesis broke the `{}` contract ({why})", contract.name());
                        evidence::finish_with_vote(rt, evidence, &why);
                    }
                }
            }
            CallOutcome::Failed { kind, .. } => {
                let why = format!("synthesis failed: {}", kind.describe());
                evidence::finish_with_vote(rt, evidence, &why);
            }
        }
    }
}

impl Algorithm for Remom {
    fn start(&mut self, rt: &mut Runtime) {
        self.start_round(rt);
    }

    fn on_deadline(&mut self, rt: &mut Runtime) {
        let evidence = std::mem::take(&mut self.evidence);
        evidence::finish_with_vote(rt, evidence, "request deadline reached");
    }

    fn on_call_done(&mut self, rt: &mut Runtime, done: CallDone) {
        if Some(done.step) == self.synthesis_call {
            self.on_synthesis(rt, done);
            return;
        }
        let Some(member) = self
            .round_calls
            .iter()
            .find(|(c, _)| *c == done.step)
            .map(|(_, m)| *m)
        else {
            return;
        };
        self.pending = self.pending.saturating_sub(1);
        if let CallOutcome::Ok(completion) = done.outcome {
            let member = evidence::member_for(&self.recipe.pool, member, done.model);
            let e = Evidence::new(rt, &member, completion, self.round);
            rt.annotate(done.call, e.answer.clone(), None);
            self.evidence.push(e);
        }
        if self.pending == 0 {
            self.end_round(rt, false);
            return;
        }
        if self.recipe.early_stop {
            let quorum = self.recipe.quorum(self.breadth()) as usize;
            let ballots = self.round_ballots();
            if self.round_successes() >= quorum && vote::is_decided(&ballots, self.pending as f64) {
                self.end_round(rt, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelId;

    fn pool(weights: &[f64]) -> Vec<PoolMember> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| PoolMember {
                model: ModelId(i),
                weight: *w,
                strength: *w,
            })
            .collect()
    }

    fn counts(assignment: &[usize], n: usize) -> Vec<usize> {
        (0..n)
            .map(|i| assignment.iter().filter(|a| **a == i).count())
            .collect()
    }

    #[test]
    fn weighted_distribution_uses_largest_remainders() {
        let a = distribute(&pool(&[1.0, 2.0]), Distribution::Weighted, 4);
        assert_eq!(counts(&a, 2), vec![1, 3]);
        assert_eq!(a, vec![0, 1, 1, 1], "interleaved");
        let a = distribute(&pool(&[1.0, 1.0, 1.0]), Distribution::Weighted, 4);
        assert_eq!(counts(&a, 3), vec![2, 1, 1]);
        let a = distribute(&pool(&[0.0, 1.0]), Distribution::Weighted, 3);
        assert_eq!(counts(&a, 2), vec![0, 3]);
    }

    #[test]
    fn round_robin_and_first_only() {
        let a = distribute(&pool(&[1.0, 5.0, 1.0]), Distribution::RoundRobin, 5);
        assert_eq!(a, vec![0, 1, 2, 0, 1]);
        let a = distribute(&pool(&[1.0, 5.0]), Distribution::FirstOnly, 3);
        assert_eq!(a, vec![0, 0, 0]);
        assert!(distribute(&[], Distribution::RoundRobin, 3).is_empty());
    }
}
