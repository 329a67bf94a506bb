//! Workflows (SPEC §4.5): named workers run steps as a DAG under the recipe's budget. The
//! steps come from the recipe (static roles, e.g. planner → patcher → verifier) or from a
//! planner model whose JSON plan is validated before anything runs; an invalid plan gets one
//! re-plan with the errors, then the recipe's static plan. A finalizer writes the answer in
//! the output contract, with one repair call if it does not; when the finalizer fails, the
//! vote over the steps' extractable answers (or the last step's result) stands.

use super::evidence::{self, Evidence};
use super::{plan, Algorithm, Answer, CallDone, CallId, CallOutcome, CallPlan, Runtime};
use crate::config::{workflow_vars as wv, FailurePolicy, PoolMember, Step, WorkflowsRecipe};
use crate::contract::Contract;
use crate::openai::UpstreamCompletion;
use crate::prompt;
use crate::template::{self, var};
use serde_json::{json, Value};

/// Longest step result quoted in a later prompt.
const MAX_QUOTED: usize = 16 * 1024;

#[derive(Debug)]
enum StepState {
    Waiting,
    Running(CallId),
    Done(UpstreamCompletion, crate::config::ModelId),
    Failed(String),
}

pub struct Workflows {
    recipe: WorkflowsRecipe,
    steps: Vec<Step>,
    states: Vec<StepState>,
    /// The call each step started, for the trace.
    step_calls: Vec<Option<CallId>>,
    source: &'static str,
    planner_call: Option<CallId>,
    replanned: bool,
    plan_errors: Vec<Vec<String>>,
    finalizer_call: Option<CallId>,
    repair_call: Option<CallId>,
    /// The finalizer's reply while a repair is under way.
    first_final: Option<UpstreamCompletion>,
}

impl Workflows {
    pub fn new(recipe: WorkflowsRecipe) -> Self {
        Workflows {
            recipe,
            steps: Vec::new(),
            states: Vec::new(),
            step_calls: Vec::new(),
            source: "static",
            planner_call: None,
            replanned: false,
            plan_errors: Vec::new(),
            finalizer_call: None,
            repair_call: None,
            first_final: None,
        }
    }

    fn client_messages(rt: &Runtime) -> Value {
        rt.request()
            .field("messages")
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn ask_planner(&mut self, rt: &mut Runtime, errors: Option<&[String]>) {
        let Some(planner) = self.recipe.planner else {
            return self.run(rt, self.recipe.steps.clone(), "static");
        };
        let workers = self
            .recipe
            .workers
            .iter()
            .map(|w| format!("- {}: {}", w.name, w.description))
            .collect::<Vec<_>>()
            .join("\n");
        let question = template::question_parts(&Self::client_messages(rt), rt.nonce());
        let max_steps = self.recipe.max_steps.to_string();
        let max_instruction = self.recipe.max_instruction_chars.to_string();
        let mut content = self
            .recipe
            .planner_prompt
            .render_with(&question, &|name| match name {
                wv::WORKERS => workers.clone(),
                wv::MAX_STEPS => max_steps.clone(),
                wv::MAX_INSTRUCTION => max_instruction.clone(),
                _ => String::new(),
            });
        if let Some(errors) = errors {
            let listing = errors
                .iter()
                .map(|e| format!("- {e}"))
                .collect::<Vec<_>>()
                .join("\n");
            let addendum = format!(
                "\n\nYour previous plan was invalid:\n{listing}\nReply with a corrected plan."
            );
            content = append_text(content, &addendum);
        }
        let messages = json!([{"role": "user", "content": content}]);
        let mut plan = own_call("planner", messages);
        // A hung planner must leave time for the static plan.
        plan.timeout_ms = Some(
            self.recipe
                .planner_timeout_ms
                .unwrap_or(rt.deadline_ms() / 4)
                .max(1),
        );
        match rt.dispatch(planner, plan) {
            Ok(call) => self.planner_call = Some(call),
            Err(stop) => {
                rt.note(format!("planner not asked: {}", stop.describe()));
                self.run(rt, self.recipe.steps.clone(), "fallback");
            }
        }
    }

    fn on_plan(&mut self, rt: &mut Runtime, done: CallDone) {
        let source = if self.replanned { "replan" } else { "planner" };
        let text = match &done.outcome {
            CallOutcome::Ok(c) => c.content().unwrap_or("").to_string(),
            CallOutcome::Failed { kind, .. } => {
                rt.note(format!(
                    "planner failed: {}; using the static plan",
                    kind.describe()
                ));
                return self.run(rt, self.recipe.steps.clone(), "fallback");
            }
        };
        match plan::validate(&text, &self.recipe) {
            Ok(steps) => self.run(rt, steps, source),
            Err(errors) => {
                rt.note(format!("{source} plan invalid: {}", errors.join("; ")));
                self.plan_errors.push(errors.clone());
                if self.recipe.replan && !self.replanned {
                    self.replanned = true;
                    self.ask_planner(rt, Some(&errors));
                } else {
                    self.run(rt, self.recipe.steps.clone(), "fallback");
                }
            }
        }
    }

    fn run(&mut self, rt: &mut Runtime, steps: Vec<Step>, source: &'static str) {
        self.source = source;
        self.states = steps.iter().map(|_| StepState::Waiting).collect();
        self.step_calls = vec![None; steps.len()];
        self.steps = steps;
        let described: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "worker": self.recipe.workers.get(s.worker).map(|w| w.name.as_str()),
                    "instruction": s.instruction,
                    "after": s.after.iter().filter_map(|i| self.steps.get(*i)).map(|d| d.id.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect();
        rt.detail(
            "plan",
            json!({"source": source, "steps": described, "validation_errors": self.plan_errors}),
        );
        self.advance(rt);
    }

    fn finished_step(&self, i: usize) -> bool {
        matches!(
            self.states.get(i),
            Some(StepState::Done(..) | StepState::Failed(_))
        )
    }

    /// Starts every step whose dependencies have ended; finalizes once all have.
    fn advance(&mut self, rt: &mut Runtime) {
        loop {
            let ready: Vec<usize> = (0..self.steps.len())
                .filter(|&i| matches!(self.states.get(i), Some(StepState::Waiting)))
                .filter(|&i| {
                    self.steps
                        .get(i)
                        .is_some_and(|s| s.after.iter().all(|d| self.finished_step(*d)))
                })
                .collect();
            if ready.is_empty() {
                break;
            }
            for i in ready {
                let model = self
                    .steps
                    .get(i)
                    .and_then(|s| self.recipe.workers.get(s.worker))
                    .map(|w| w.model);
                let calls_left =
                    (rt.recipe().budget.max_calls as usize).saturating_sub(rt.calls().len());
                let state = match model {
                    // Validation makes this unreachable; a step must still never stay waiting.
                    None => StepState::Failed("unknown worker".to_string()),
                    Some(_) if calls_left <= 1 => {
                        StepState::Failed("the last call is kept for the finalizer".to_string())
                    }
                    Some(model) => self.start_step(rt, i, model),
                };
                if let Some(slot) = self.states.get_mut(i) {
                    *slot = state;
                }
            }
        }
        self.record_steps(rt);
        let all_ended = (0..self.steps.len()).all(|i| self.finished_step(i));
        if all_ended && self.finalizer_call.is_none() && !rt.is_finished() {
            self.finalize(rt);
        }
    }

    fn start_step(
        &mut self,
        rt: &mut Runtime,
        i: usize,
        model: crate::config::ModelId,
    ) -> StepState {
        let plan = self.step_plan(rt, i);
        match rt.dispatch(model, plan) {
            Ok(call) => {
                if let Some(slot) = self.step_calls.get_mut(i) {
                    *slot = Some(call);
                }
                StepState::Running(call)
            }
            Err(stop) => StepState::Failed(stop.describe().to_string()),
        }
    }

    fn output_of(&self, i: usize, nonce: &str) -> String {
        let id = self.steps.get(i).map_or("?", |s| s.id.as_str());
        match self.states.get(i) {
            Some(StepState::Done(c, _)) => format!(
                "Result of step {id}:\n{}",
                prompt::fence(
                    "output",
                    nonce,
                    &prompt::clip(c.content().unwrap_or(""), MAX_QUOTED)
                )
            ),
            Some(StepState::Failed(why)) => format!("Step {id} failed ({why}); no result."),
            _ => format!("Step {id} has no result."),
        }
    }

    fn step_plan(&self, rt: &Runtime, i: usize) -> CallPlan {
        let Some(step) = self.steps.get(i) else {
            return CallPlan::answer("worker");
        };
        let nonce = rt.nonce().to_string();
        let question = template::question_parts(&Self::client_messages(rt), &nonce);
        let inputs = if step.after.is_empty() {
            "(none: this step starts from the question)".to_string()
        } else {
            step.after
                .iter()
                .map(|d| self.output_of(*d, &nonce))
                .collect::<Vec<_>>()
                .join("\n\n")
        };
        let contract = rt.recipe().contract.instruction().unwrap_or_default();
        let template = step.prompt.as_ref().unwrap_or(&self.recipe.worker_prompt);
        // A planner's instruction is model output the client's question may have steered.
        let instruction = if self.source == "planner" || self.source == "replan" {
            prompt::fence("instruction", &nonce, &step.instruction)
        } else {
            step.instruction.clone()
        };
        let content = template.render_with(&question, &|name| match name {
            wv::INSTRUCTION => instruction.clone(),
            wv::INPUTS => inputs.clone(),
            var::CONTRACT => contract.clone(),
            other => other
                .strip_prefix(wv::OUTPUT_PREFIX)
                .and_then(|id| self.steps.iter().position(|s| s.id == id))
                .map(|d| self.output_of(d, &nonce))
                .unwrap_or_default(),
        });
        let mut plan = CallPlan::own("worker", json!([{"role": "user", "content": content}]));
        plan.on_failure = step.on_failure;
        plan.timeout_ms = step.timeout_ms;
        plan
    }

    fn on_step(&mut self, rt: &mut Runtime, i: usize, done: CallDone) {
        let state = match done.outcome {
            CallOutcome::Ok(c) => {
                let contract = rt.recipe().contract.clone();
                let answer = c
                    .content()
                    .and_then(|t| contract.extract(t))
                    .map(|e| e.value);
                rt.annotate(done.call, answer, None);
                StepState::Done(c, done.model)
            }
            CallOutcome::Failed { kind, .. } => StepState::Failed(kind.describe()),
        };
        if let Some(slot) = self.states.get_mut(i) {
            *slot = state;
        }
        self.advance(rt);
    }

    fn record_steps(&self, rt: &mut Runtime) {
        let states: Vec<Value> = self
            .steps
            .iter()
            .zip(&self.states)
            .zip(&self.step_calls)
            .map(|((s, st), call)| {
                let (state, error) = match st {
                    StepState::Waiting => ("waiting", Value::Null),
                    StepState::Running(_) => ("running", Value::Null),
                    StepState::Done(..) => ("done", Value::Null),
                    StepState::Failed(why) => ("failed", json!(why)),
                };
                json!({"id": s.id, "state": state, "call": call.map(|c| c.0), "error": error})
            })
            .collect();
        rt.detail("step_states", Value::Array(states));
    }

    fn finalize(&mut self, rt: &mut Runtime) {
        let nonce = rt.nonce().to_string();
        let done: Vec<usize> = (0..self.steps.len())
            .filter(|&i| matches!(self.states.get(i), Some(StepState::Done(..))))
            .collect();
        if done.is_empty() {
            let error = rt.no_answer("every workflow step failed");
            rt.finish(Err(error), "every step failed");
            return;
        }
        let outputs = (0..self.steps.len())
            .map(|i| self.output_of(i, &nonce))
            .collect::<Vec<_>>()
            .join("\n\n");
        let question = template::question_parts(&Self::client_messages(rt), &nonce);
        let contract = rt.recipe().contract.instruction().unwrap_or_default();
        let content = self
            .recipe
            .finalizer_prompt
            .render_with(&question, &|name| match name {
                wv::OUTPUTS => outputs.clone(),
                var::CONTRACT => contract.clone(),
                _ => String::new(),
            });
        let plan = own_call("finalizer", json!([{"role": "user", "content": content}]));
        match rt.dispatch(self.recipe.finalizer, plan) {
            Ok(call) => self.finalizer_call = Some(call),
            Err(stop) => {
                let why = format!("finalizer not asked: {}", stop.describe());
                rt.detail(
                    "final_check",
                    json!({"passed": false, "problem": why, "repaired": false}),
                );
                self.fallback(rt, &why);
            }
        }
    }

    fn on_final(&mut self, rt: &mut Runtime, done: CallDone, repaired: bool) {
        let contract = rt.recipe().contract.clone();
        let completion = match done.outcome {
            CallOutcome::Ok(c) => c,
            CallOutcome::Failed { kind, .. } => {
                let who = if repaired { "repair" } else { "finalizer" };
                rt.detail("final_check", json!({"passed": false, "problem": format!("{who} failed"), "repaired": repaired}));
                return self.fallback(rt, &format!("{who} failed: {}", kind.describe()));
            }
        };
        let text = completion.content().unwrap_or("").to_string();
        match contract.check(&text) {
            Ok(extracted) => {
                rt.annotate(done.call, Some(extracted.value), None);
                rt.detail("final_check", json!({"passed": true, "repaired": repaired}));
                let alias = rt.alias(done.model).to_string();
                rt.finish(
                    Ok(Answer::Upstream {
                        model: done.model,
                        completion,
                    }),
                    format!(
                        "{} by {alias} after {} steps ({} plan)",
                        if repaired { "repaired" } else { "finalized" },
                        self.steps.len(),
                        self.source
                    ),
                );
            }
            Err(problem) if !repaired => {
                rt.detail(
                    "final_check",
                    json!({"passed": false, "problem": problem, "repaired": false}),
                );
                self.repair(rt, completion, &problem);
            }
            Err(problem) => {
                rt.detail(
                    "final_check",
                    json!({"passed": false, "problem": problem, "repaired": true}),
                );
                self.fallback(
                    rt,
                    &format!(
                        "the repaired answer still broke the `{}` contract ({problem})",
                        contract.name()
                    ),
                );
            }
        }
    }

    fn repair(&mut self, rt: &mut Runtime, first: UpstreamCompletion, problem: &str) {
        let nonce = rt.nonce().to_string();
        let question = template::question_parts(&Self::client_messages(rt), &nonce);
        let contract = rt.recipe().contract.instruction().unwrap_or_default();
        let answer = prompt::fence(
            "answer",
            &nonce,
            &prompt::clip(first.content().unwrap_or(""), MAX_QUOTED),
        );
        let content = self
            .recipe
            .repair_prompt
            .render_with(&question, &|name| match name {
                wv::ANSWER => answer.clone(),
                wv::PROBLEM => problem.to_string(),
                var::CONTRACT => contract.clone(),
                _ => String::new(),
            });
        self.first_final = Some(first);
        let plan = own_call("finalizer", json!([{"role": "user", "content": content}]));
        match rt.dispatch(self.recipe.finalizer, plan) {
            Ok(call) => self.repair_call = Some(call),
            Err(stop) => {
                let why = format!("repair not asked: {}", stop.describe());
                rt.detail(
                    "final_check",
                    json!({"passed": false, "problem": why, "repaired": true}),
                );
                self.fallback(rt, &why);
            }
        }
    }

    /// The vote over the steps' extractable answers; for free text, the latest step's result.
    fn fallback(&mut self, rt: &mut Runtime, why: &str) {
        self.record_steps(rt);
        let pieces: Vec<(PoolMember, UpstreamCompletion)> = self
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, state)| match state {
                // Later steps build on earlier ones: they win ties.
                StepState::Done(c, model) => Some((
                    PoolMember {
                        model: *model,
                        weight: 1.0,
                        strength: (i + 1) as f64,
                    },
                    c.clone(),
                )),
                _ => None,
            })
            .collect();
        let free_text = rt.recipe().contract == Contract::Text;
        let evidence: Vec<Evidence> = pieces
            .into_iter()
            .map(|(member, c)| Evidence::new(rt, &member, c, 0))
            // Under a contract, only a step output that satisfies it may become the answer.
            .filter(|e| free_text || e.answer.is_some())
            .collect();
        evidence::finish_with_vote(rt, evidence, why);
    }
}

/// A call of the workflow's own (planner, finalizer, repair). Its failure is the workflow's to
/// handle (static plan, vote), whatever the recipe's policy says about steps.
fn own_call(role: &'static str, messages: Value) -> CallPlan {
    let mut plan = CallPlan::own(role, messages);
    plan.on_failure = Some(FailurePolicy::Skip);
    plan
}

/// Appends text to a message content (a string, or the last text part).
fn append_text(content: Value, addendum: &str) -> Value {
    match content {
        Value::String(mut s) => {
            s.push_str(addendum);
            Value::String(s)
        }
        Value::Array(mut parts) => {
            parts.push(json!({"type": "text", "text": addendum}));
            Value::Array(parts)
        }
        other => other,
    }
}

impl Algorithm for Workflows {
    fn start(&mut self, rt: &mut Runtime) {
        if self.recipe.planner.is_some() {
            self.ask_planner(rt, None);
        } else {
            self.run(rt, self.recipe.steps.clone(), "static");
        }
    }

    fn on_call_done(&mut self, rt: &mut Runtime, done: CallDone) {
        if Some(done.step) == self.planner_call {
            self.planner_call = None;
            return self.on_plan(rt, done);
        }
        if Some(done.step) == self.finalizer_call {
            return self.on_final(rt, done, false);
        }
        if Some(done.step) == self.repair_call {
            return self.on_final(rt, done, true);
        }
        let step = self
            .states
            .iter()
            .position(|s| matches!(s, StepState::Running(c) if *c == done.step));
        if let Some(i) = step {
            self.on_step(rt, i, done);
        }
    }

    fn on_deadline(&mut self, rt: &mut Runtime) {
        let any_done = self.states.iter().any(|s| matches!(s, StepState::Done(..)));
        if any_done {
            self.fallback(rt, "request deadline reached");
        } else {
            self.record_steps(rt);
            let deadline_ms = rt.deadline_ms();
            rt.finish(
                Err(crate::openai::ApiError::deadline_exceeded(deadline_ms)),
                "request deadline reached before any step ended",
            );
        }
    }
}
