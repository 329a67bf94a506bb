//! Recipes: an algorithm with its models and parameters, plus what every looper enforces
//! (budget, failure policy, output contract, per-role sampling parameters).

use super::reader::{ConfigResult, Node, Object};
use super::{bounds, is_valid_name, named, ConfigError, ModelId, UpstreamModel};
use crate::contract::Contract;
use crate::template::{self, var, Template};
use std::collections::HashMap;
use std::rc::Rc;

/// Defaults of the recipe-level bounds.
pub mod recipe_defaults {
    /// Confidence threshold of a candidate when none is configured (the usual starting point
    /// before calibrating on dev data).
    pub const THRESHOLD: f64 = 0.7;
    /// AutoMix verification samples (the paper's code uses 8; 4 halves the cost).
    pub const SAMPLES: u64 = 4;
    pub const SAMPLE_TEMPERATURE: f64 = 1.0;
    pub const HYBRID_WEIGHT: f64 = 0.5;
    /// Parallel calls of a Ratings panel.
    pub const RATINGS_CONCURRENCY: u64 = 3;
    pub const MAX_SAMPLES: u64 = 16;
}

/// What happens when a call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Go on with what succeeded (the algorithm decides what that means).
    Skip,
    /// Any failed call fails the request (502).
    Fail,
    /// Retry the failed step once on this model.
    Fallback(ModelId),
}

/// Sampling parameters a recipe sets for the calls of one role.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoleParams {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub reasoning_effort: Option<String>,
}

/// Bounds every looper enforces for one request of this recipe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub max_calls: u32,
    /// Calls in flight at once for one request; further calls wait in a queue.
    pub max_concurrent: u32,
    /// Overrides `limits.request_deadline_ms` when set (never beyond the hard maximum).
    pub deadline_ms: Option<u64>,
    /// Caps every call's timeout for this recipe (each model's own timeout still applies).
    pub call_timeout_ms: Option<u64>,
    /// Total tokens (prompt + completion) over every call of a request.
    pub token_budget: Option<u64>,
    /// Total cost over every call of a request, from the models' prices.
    pub cost_budget: Option<f64>,
}

/// How a Confidence candidate's answer is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfidenceMethod {
    /// Geometric mean probability of the answer tokens (all tokens when the answer cannot be
    /// located).
    AvgLogprob,
    /// Mean probability gap between the chosen token and the runner-up.
    Margin,
    /// A weighted mix of the two.
    Hybrid,
    /// One verification call that rates the answer.
    SelfVerify,
    /// `samples` verification samples at a high temperature; the share that says "correct".
    Automix,
}

impl ConfidenceMethod {
    pub fn name(&self) -> &'static str {
        match self {
            ConfidenceMethod::AvgLogprob => "avg_logprob",
            ConfidenceMethod::Margin => "margin",
            ConfidenceMethod::Hybrid => "hybrid",
            ConfidenceMethod::SelfVerify => "self_verify",
            ConfidenceMethod::Automix => "automix",
        }
    }

    pub fn needs_logprobs(&self) -> bool {
        matches!(
            self,
            ConfidenceMethod::AvgLogprob | ConfidenceMethod::Margin | ConfidenceMethod::Hybrid
        )
    }

    fn parse(node: &Node<'_>) -> ConfigResult<ConfidenceMethod> {
        Ok(match node.string()? {
            "avg_logprob" => ConfidenceMethod::AvgLogprob,
            "margin" => ConfidenceMethod::Margin,
            "hybrid" => ConfidenceMethod::Hybrid,
            "self_verify" => ConfidenceMethod::SelfVerify,
            "automix" => ConfidenceMethod::Automix,
            other => {
                return Err(node.error(format!(
                    "unknown method `{other}` (one of: avg_logprob, margin, hybrid, \
                     self_verify, automix)"
                )))
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub model: ModelId,
    /// The answer is accepted when its confidence is at least this (0 accepts anything).
    pub threshold: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfidenceRecipe {
    /// In the order they are tried.
    pub candidates: Vec<Candidate>,
    pub method: ConfidenceMethod,
    /// For candidates that give no logprobs (configured so, or none came back).
    pub fallback_method: ConfidenceMethod,
    /// Share of `avg_logprob` in `hybrid` (the rest is `margin`).
    pub hybrid_weight: f64,
    /// Who verifies for `self_verify`/`automix`; the candidate itself when `None`.
    pub verifier: Option<ModelId>,
    pub samples: u32,
    pub sample_temperature: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Member {
    pub model: ModelId,
    /// Vote weight: configured, or the log-odds of a configured accuracy.
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RatingsRecipe {
    pub members: Vec<Member>,
    /// Accuracy-derived weights use this many possible answers (the contract's options, or
    /// 2 when unknown).
    pub options: usize,
    /// Picks the best response when no answer can be extracted for a vote.
    pub judge: Option<ModelId>,
    /// Stop waiting once the members still pending cannot change the winner.
    pub early_stop: bool,
}

/// A model of a ReMoM pool or a Fusion panel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolMember {
    pub model: ModelId,
    /// Share of a round's samples (`weighted` distribution).
    pub weight: f64,
    /// Breaks vote ties towards the stronger model (defaults to the weight).
    pub strength: f64,
}

/// How a ReMoM round's samples are spread over the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// In proportion to the weights (largest remainder).
    Weighted,
    /// One per model in turn.
    RoundRobin,
    /// All on the first model (self-consistency of one model).
    FirstOnly,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RemomRecipe {
    pub pool: Vec<PoolMember>,
    /// Parallel samples per round.
    pub breadth_schedule: Vec<u32>,
    pub distribution: Distribution,
    /// Successes a round needs to count as having reached quorum (default: half its breadth,
    /// rounded up).
    pub min_success: Option<u32>,
    /// Caps how long a round waits (its calls' timeouts).
    pub round_deadline_ms: Option<u64>,
    pub synthesizer: ModelId,
    /// Stop waiting in a round once the calls still pending cannot change its plurality.
    pub early_stop: bool,
    pub round_prompt: Template,
    pub synthesis_prompt: Template,
}

impl RemomRecipe {
    pub fn quorum(&self, breadth: u32) -> u32 {
        self.min_success.unwrap_or(breadth.div_ceil(2)).min(breadth)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FusionRecipe {
    pub panel: Vec<PoolMember>,
    /// Analyses the panel's answers; asked only when the finalizer prompt uses `{analysis}`.
    pub judge: Option<ModelId>,
    pub finalizer: ModelId,
    pub judge_prompt: Template,
    pub finalizer_prompt: Template,
}

/// A kind of worker a workflow step can name.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    pub name: String,
    pub model: ModelId,
    /// Shown to the planner.
    pub description: String,
}

/// A step of a workflow plan: configured (static roles, the fallback plan) or validated from
/// a planner's reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: String,
    /// Index into the recipe's workers.
    pub worker: usize,
    pub instruction: String,
    /// Indices of the steps whose results it needs (earlier in the list).
    pub after: Vec<usize>,
    /// A prompt of its own (static steps); the recipe's worker prompt otherwise.
    pub prompt: Option<Template>,
    pub on_failure: Option<FailurePolicy>,
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowsRecipe {
    /// The allow-list: the only workers a plan may name.
    pub workers: Vec<Worker>,
    /// The static plan, run as is without a planner, or when the planner's plans are invalid.
    pub steps: Vec<Step>,
    /// Asks for a plan first when set.
    pub planner: Option<ModelId>,
    pub finalizer: ModelId,
    pub max_steps: usize,
    pub max_instruction_chars: usize,
    /// Timeout of each planner call; a quarter of the deadline when unset.
    pub planner_timeout_ms: Option<u64>,
    /// One re-plan call, with the validation errors, before the static plan.
    pub replan: bool,
    pub planner_prompt: Template,
    pub worker_prompt: Template,
    pub finalizer_prompt: Template,
    pub repair_prompt: Template,
}

/// Variables of workflow prompts.
pub mod workflow_vars {
    pub const WORKERS: &str = "workers";
    pub const MAX_STEPS: &str = "max_steps";
    pub const MAX_INSTRUCTION: &str = "max_instruction";
    pub const INSTRUCTION: &str = "instruction";
    pub const INPUTS: &str = "inputs";
    pub const OUTPUTS: &str = "outputs";
    pub const ANSWER: &str = "answer";
    pub const PROBLEM: &str = "problem";
    /// `{output:STEP}`: one earlier step's result.
    pub const OUTPUT_PREFIX: &str = "output:";
}

/// What a recipe runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Algorithm {
    /// One model, with the rest of `models` as an ordered failover list.
    Single { models: Vec<ModelId> },
    /// Sequential escalation through candidates until one is confident enough.
    Confidence(ConfidenceRecipe),
    /// A bounded parallel panel and a rating-weighted vote.
    Ratings(RatingsRecipe),
    /// Rounds of parallel samples, then a synthesis.
    Remom(RemomRecipe),
    /// A panel, a judge's structured analysis, and a finalizer.
    Fusion(FusionRecipe),
    /// Steps of named workers run as a DAG, from a static plan or a validated planner's plan.
    Workflows(WorkflowsRecipe),
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Single { .. } => "single",
            Algorithm::Confidence(_) => "confidence",
            Algorithm::Ratings(_) => "ratings",
            Algorithm::Remom(_) => "remom",
            Algorithm::Fusion(_) => "fusion",
            Algorithm::Workflows(_) => "workflows",
        }
    }

    /// The roles whose calls this algorithm makes (for `roles` overrides).
    fn roles(&self) -> &'static [&'static str] {
        match self {
            Algorithm::Single { .. } => &["answer"],
            Algorithm::Confidence(_) => &["answer", "verifier"],
            Algorithm::Ratings(_) => &["answer", "judge"],
            Algorithm::Remom(_) => &["worker", "synthesizer"],
            Algorithm::Fusion(_) => &["panel", "judge", "finalizer"],
            Algorithm::Workflows(_) => &["planner", "worker", "finalizer"],
        }
    }
}

const AVAILABLE: &str = "single, confidence, ratings, remom, fusion, workflows";
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub algorithm: Algorithm,
    pub budget: Budget,
    pub contract: Contract,
    pub on_failure: FailurePolicy,
    roles: Vec<(String, RoleParams)>,
}

impl Recipe {
    /// Whether running this recipe reads the client's messages as a tree (its own prompts,
    /// the contract's instruction), so the request builds the tree while checking them
    /// rather than after. A wrong answer costs time only: the tree is built when first read.
    pub fn reads_messages(&self) -> bool {
        let own_prompts = match &self.algorithm {
            Algorithm::Single { .. } => false,
            // The fallback method (always a verification) runs only for an answer without
            // logprobs: then the tree is built when the verifier's prompt is.
            Algorithm::Confidence(c) => matches!(
                c.method,
                ConfidenceMethod::SelfVerify | ConfidenceMethod::Automix
            ),
            _ => true,
        };
        own_prompts || !matches!(self.contract, Contract::Text)
    }

    /// Sampling overrides for calls of `role`.
    pub fn role(&self, role: &str) -> Option<&RoleParams> {
        self.roles.iter().find(|(r, _)| r == role).map(|(_, p)| p)
    }
}

pub(super) fn parse_recipes(
    field: &Node<'_>,
    aliases: &HashMap<&str, ModelId>,
    models: &[UpstreamModel],
) -> ConfigResult<Vec<Rc<Recipe>>> {
    let obj = named(field, "recipe")?;
    if obj.len() > bounds::MAX_RECIPES {
        return Err(obj.error(format!("at most {} recipes", bounds::MAX_RECIPES)));
    }
    let mut recipes = Vec::with_capacity(obj.len());
    for (name, field) in obj.entries() {
        if name.is_empty() || name.len() > bounds::MAX_NAME_LEN || !is_valid_name(name) {
            return Err(field.error("recipe name must be 1-256 characters of [A-Za-z0-9-_.:/@]"));
        }
        recipes.push(Rc::new(parse_recipe(name, &field, aliases, models)?));
    }
    Ok(recipes)
}

const COMMON_FIELDS: &[&str] = &[
    "algorithm",
    "description",
    "contract",
    "on_failure",
    "roles",
    "max_calls",
    "max_concurrent",
    "deadline_ms",
    "call_timeout_ms",
    "token_budget",
    "cost_budget",
];

fn allowed(specific: &[&'static str]) -> Vec<&'static str> {
    COMMON_FIELDS.iter().chain(specific).copied().collect()
}

fn parse_recipe(
    name: &str,
    field: &Node<'_>,
    aliases: &HashMap<&str, ModelId>,
    models: &[UpstreamModel],
) -> ConfigResult<Recipe> {
    let obj = field.object()?;
    let algorithm_field = obj.required("algorithm")?;
    let contract = match obj.field("contract") {
        Some(f) => parse_contract(&f)?,
        None => Contract::Text,
    };
    let (algorithm, default_calls, default_concurrency) = match algorithm_field.string()? {
        "single" => {
            obj.deny_unknown(&allowed(&["models"]))?;
            let models = parse_model_list(&obj.required("models")?, aliases)?;
            let calls = models.len() as u64;
            (Algorithm::Single { models }, calls, 1)
        }
        "confidence" => {
            obj.deny_unknown(&allowed(&[
                "candidates",
                "order",
                "method",
                "fallback_method",
                "hybrid_weight",
                "verifier",
                "samples",
                "sample_temperature",
            ]))?;
            let recipe = parse_confidence(&obj, aliases, models)?;
            // One answer and, at most, one verification call per candidate.
            let calls = recipe.candidates.len() as u64 * 2;
            (Algorithm::Confidence(recipe), calls, 1)
        }
        "ratings" => {
            obj.deny_unknown(&allowed(&["members", "judge", "early_stop"]))?;
            let recipe = parse_ratings(&obj, aliases, &contract)?;
            let calls = recipe.members.len() as u64 + u64::from(recipe.judge.is_some());
            (
                Algorithm::Ratings(recipe),
                calls,
                recipe_defaults::RATINGS_CONCURRENCY,
            )
        }
        "remom" => {
            obj.deny_unknown(&allowed(&[
                "pool",
                "breadth_schedule",
                "distribution",
                "min_success",
                "round_deadline_ms",
                "synthesizer",
                "early_stop",
                "prompts",
            ]))?;
            let recipe = parse_remom(&obj, aliases)?;
            let samples: u64 = recipe.breadth_schedule.iter().map(|b| u64::from(*b)).sum();
            let widest = recipe.breadth_schedule.iter().copied().max().unwrap_or(1);
            (Algorithm::Remom(recipe), samples + 1, u64::from(widest))
        }
        "fusion" => {
            obj.deny_unknown(&allowed(&["panel", "judge", "finalizer", "prompts"]))?;
            let recipe = parse_fusion(&obj, aliases)?;
            let calls = recipe.panel.len() as u64 + 1 + u64::from(recipe.judge.is_some());
            let panel = recipe.panel.len() as u64;
            (Algorithm::Fusion(recipe), calls, panel)
        }
        "workflows" => {
            obj.deny_unknown(&allowed(&[
                "workers",
                "steps",
                "planner",
                "finalizer",
                "max_steps",
                "max_parallel",
                "max_instruction_chars",
                "planner_timeout_ms",
                "replan",
                "prompts",
            ]))?;
            let recipe = parse_workflows(&obj, aliases)?;
            // Planner and re-plan, every step, the finalizer and one repair.
            let calls = 2 * u64::from(recipe.planner.is_some()) + recipe.max_steps as u64 + 2;
            let parallel = obj
                .opt_integer("max_parallel", 1, bounds::MAX_CALLS)?
                .unwrap_or(2);
            (Algorithm::Workflows(recipe), calls, parallel)
        }
        other => {
            return Err(algorithm_field.error(format!(
                "unknown algorithm `{other}` (available: {AVAILABLE})"
            )))
        }
    };
    let max_calls = obj
        .opt_integer("max_calls", 1, bounds::MAX_CALLS)?
        .unwrap_or(default_calls.clamp(1, bounds::MAX_CALLS));
    if let (Some(_), Some(f)) = (obj.field("max_concurrent"), obj.field("max_parallel")) {
        return Err(f.error("give `max_parallel` or `max_concurrent`, not both"));
    }
    let parallel_field = obj.field("max_concurrent").or_else(|| match algorithm {
        Algorithm::Workflows(_) => obj.field("max_parallel"),
        _ => None,
    });
    let max_concurrent = match parallel_field {
        Some(f)
            if matches!(
                algorithm,
                Algorithm::Single { .. } | Algorithm::Confidence(_)
            ) =>
        {
            return Err(f.error(format!(
                "`{}` makes one call at a time; max_concurrent does not apply",
                algorithm.name()
            )))
        }
        Some(f) => f.integer(1, bounds::MAX_CALLS)?,
        None => default_concurrency,
    };
    let budget = Budget {
        max_calls: max_calls as u32,
        max_concurrent: max_concurrent.min(max_calls) as u32,
        deadline_ms: obj.opt_integer("deadline_ms", 1, bounds::MAX_DEADLINE_MS)?,
        call_timeout_ms: obj.opt_integer("call_timeout_ms", 1, bounds::MAX_TIMEOUT_MS)?,
        token_budget: obj.opt_integer("token_budget", 1, u64::MAX >> 1)?,
        cost_budget: obj.opt_number("cost_budget", 0.0, 1e9)?,
    };
    let on_failure = match obj.field("on_failure") {
        Some(f) => parse_failure_policy(&f, aliases)?,
        None => FailurePolicy::Skip,
    };
    let roles = match obj.field("roles") {
        Some(f) => parse_roles(&f, algorithm.roles())?,
        None => Vec::new(),
    };
    if let Some(description) = obj.field("description") {
        description.string()?;
    }
    Ok(Recipe {
        name: name.to_string(),
        algorithm,
        budget,
        contract,
        on_failure,
        roles,
    })
}

fn parse_model(node: &Node<'_>, aliases: &HashMap<&str, ModelId>) -> ConfigResult<ModelId> {
    let alias = node.string()?;
    aliases
        .get(alias)
        .copied()
        .ok_or_else(|| node.error(format!("unknown model `{alias}` (not in `models`)")))
}

pub(super) fn parse_model_list(
    field: &Node<'_>,
    aliases: &HashMap<&str, ModelId>,
) -> ConfigResult<Vec<ModelId>> {
    let items = field.elements()?;
    check_list_len(field, items.len())?;
    let mut ids = Vec::with_capacity(items.len());
    for node in &items {
        let id = parse_model(node, aliases)?;
        if ids.contains(&id) {
            return Err(node.error("this model is listed twice"));
        }
        ids.push(id);
    }
    Ok(ids)
}

fn check_list_len(field: &Node<'_>, len: usize) -> ConfigResult<()> {
    if len == 0 {
        return Err(field.error("must list at least one model"));
    }
    if len > bounds::MAX_MODELS_PER_RECIPE {
        return Err(field.error(format!("at most {} models", bounds::MAX_MODELS_PER_RECIPE)));
    }
    Ok(())
}

fn parse_confidence(
    obj: &Object<'_>,
    aliases: &HashMap<&str, ModelId>,
    models: &[UpstreamModel],
) -> ConfigResult<ConfidenceRecipe> {
    let list = obj.required("candidates")?;
    let items = list.elements()?;
    check_list_len(&list, items.len())?;
    let mut candidates: Vec<Candidate> = Vec::with_capacity(items.len());
    for item in &items {
        let entry = item.object()?;
        entry.deny_unknown(&["model", "threshold"])?;
        let model_field = entry.required("model")?;
        let model = parse_model(&model_field, aliases)?;
        if candidates.iter().any(|c| c.model == model) {
            return Err(model_field.error("this model is listed twice"));
        }
        candidates.push(Candidate {
            model,
            threshold: entry
                .opt_number("threshold", 0.0, 1.0)?
                .unwrap_or(recipe_defaults::THRESHOLD),
        });
    }
    if let Some(order) = obj.field("order") {
        match order.string()? {
            "declared" => {}
            "price" => {
                let price = |c: &Candidate| {
                    models.get(c.model.0).map_or(0.0, |m| {
                        m.price.input_per_million + m.price.output_per_million
                    })
                };
                crate::stable_sort::sort_by(&mut candidates, |a, b| price(a).total_cmp(&price(b)));
            }
            _ => return Err(order.error("must be \"declared\" or \"price\"")),
        }
    }
    let method = match obj.field("method") {
        Some(f) => ConfidenceMethod::parse(&f)?,
        None => ConfidenceMethod::AvgLogprob,
    };
    let fallback_method = match obj.field("fallback_method") {
        Some(f) => {
            let m = ConfidenceMethod::parse(&f)?;
            if m.needs_logprobs() {
                return Err(f.error("must not need logprobs (self_verify or automix)"));
            }
            m
        }
        None => ConfidenceMethod::SelfVerify,
    };
    let verifier = obj
        .field("verifier")
        .map(|f| parse_model(&f, aliases))
        .transpose()?;
    Ok(ConfidenceRecipe {
        candidates,
        method,
        fallback_method,
        hybrid_weight: obj
            .opt_number("hybrid_weight", 0.0, 1.0)?
            .unwrap_or(recipe_defaults::HYBRID_WEIGHT),
        verifier,
        samples: obj
            .opt_integer("samples", 1, recipe_defaults::MAX_SAMPLES)?
            .unwrap_or(recipe_defaults::SAMPLES) as u32,
        sample_temperature: obj
            .opt_number("sample_temperature", 0.0, 2.0)?
            .unwrap_or(recipe_defaults::SAMPLE_TEMPERATURE),
    })
}

fn parse_ratings(
    obj: &Object<'_>,
    aliases: &HashMap<&str, ModelId>,
    contract: &Contract,
) -> ConfigResult<RatingsRecipe> {
    let options = contract.option_count().unwrap_or(2);
    let list = obj.required("members")?;
    let items = list.elements()?;
    check_list_len(&list, items.len())?;
    let mut members: Vec<Member> = Vec::with_capacity(items.len());
    for item in &items {
        let entry = item.object()?;
        entry.deny_unknown(&["model", "weight", "accuracy"])?;
        let model_field = entry.required("model")?;
        let model = parse_model(&model_field, aliases)?;
        if members.iter().any(|m| m.model == model) {
            return Err(model_field.error("this model is listed twice"));
        }
        let weight = match (entry.field("weight"), entry.field("accuracy")) {
            (Some(w), None) => w.number(0.0, 1e6)?,
            (None, Some(a)) => crate::vote::log_odds_weight(a.number(0.0, 1.0)?, options),
            (None, None) => 1.0,
            (Some(_), Some(_)) => return Err(entry.error("set `weight` or `accuracy`, not both")),
        };
        members.push(Member { model, weight });
    }
    let judge = obj
        .field("judge")
        .map(|f| parse_model(&f, aliases))
        .transpose()?;
    Ok(RatingsRecipe {
        members,
        options,
        judge,
        early_stop: obj.opt_bool("early_stop")?.unwrap_or(true),
    })
}

/// `[{"model": "a", "weight": 2, "strength": 1.5}, "b", ...]`: aliases or objects.
fn parse_pool(field: &Node<'_>, aliases: &HashMap<&str, ModelId>) -> ConfigResult<Vec<PoolMember>> {
    let items = field.elements()?;
    check_list_len(field, items.len())?;
    let mut pool: Vec<PoolMember> = Vec::with_capacity(items.len());
    for item in &items {
        let member = if item.string().is_ok() {
            PoolMember {
                model: parse_model(item, aliases)?,
                weight: 1.0,
                strength: 1.0,
            }
        } else {
            let entry = item.object()?;
            entry.deny_unknown(&["model", "weight", "strength"])?;
            let weight = entry.opt_number("weight", 0.0, 1e6)?.unwrap_or(1.0);
            PoolMember {
                model: parse_model(&entry.required("model")?, aliases)?,
                weight,
                strength: entry.opt_number("strength", 0.0, 1e6)?.unwrap_or(weight),
            }
        };
        if pool.iter().any(|m| m.model == member.model) {
            return Err(item.error("this model is listed twice"));
        }
        pool.push(member);
    }
    if pool.iter().all(|m| m.weight == 0.0) {
        return Err(field.error("at least one model needs a weight above 0"));
    }
    Ok(pool)
}

/// The `prompts` object: each template checked against the variables its role may use.
fn parse_prompt(
    prompts: Option<&Object<'_>>,
    key: &str,
    default: &str,
    allowed: &[&str],
    required: &[&str],
) -> ConfigResult<Template> {
    match prompts.and_then(|p| p.field(key)) {
        Some(f) => Template::parse(f.string()?, allowed, required).map_err(|e| f.error(e)),
        None => Template::parse(default, allowed, required)
            .map_err(|e| ConfigError::new(key, format!("built-in default is broken: {e}"))),
    }
}

fn parse_remom(obj: &Object<'_>, aliases: &HashMap<&str, ModelId>) -> ConfigResult<RemomRecipe> {
    let pool = parse_pool(&obj.required("pool")?, aliases)?;
    let schedule_field = obj.required("breadth_schedule")?;
    let items = schedule_field.elements()?;
    if items.is_empty() || items.len() > bounds::MAX_ROUNDS {
        return Err(schedule_field.error(format!("must list 1 to {} rounds", bounds::MAX_ROUNDS)));
    }
    let mut breadth_schedule = Vec::with_capacity(items.len());
    for item in &items {
        breadth_schedule.push(item.integer(1, bounds::MAX_BREADTH)? as u32);
    }
    let samples: u64 = breadth_schedule.iter().map(|b| u64::from(*b)).sum();
    if samples + 1 > bounds::MAX_CALLS {
        return Err(schedule_field.error(format!(
            "{samples} samples and a synthesis exceed the {} calls a request may make",
            bounds::MAX_CALLS
        )));
    }
    let distribution = match obj.field("distribution") {
        Some(f) => match f.string()? {
            "weighted" => Distribution::Weighted,
            "round_robin" => Distribution::RoundRobin,
            "first_only" => Distribution::FirstOnly,
            _ => return Err(f.error("must be weighted, round_robin or first_only")),
        },
        None => Distribution::Weighted,
    };
    let min_success = match obj.field("min_success") {
        Some(f) => {
            let narrowest = breadth_schedule.iter().copied().min().unwrap_or(1);
            Some(f.integer(1, u64::from(narrowest))? as u32)
        }
        None => None,
    };
    let prompts = obj.field("prompts").map(|f| f.object()).transpose()?;
    if let Some(p) = &prompts {
        p.deny_unknown(&["round", "synthesis"])?;
    }
    let vars = [var::QUESTION, var::ANSWERS, var::CONTRACT, var::COUNT];
    let needed = [var::QUESTION, var::ANSWERS];
    Ok(RemomRecipe {
        pool,
        breadth_schedule,
        distribution,
        min_success,
        round_deadline_ms: obj.opt_integer("round_deadline_ms", 1, bounds::MAX_DEADLINE_MS)?,
        synthesizer: parse_model(&obj.required("synthesizer")?, aliases)?,
        early_stop: obj.opt_bool("early_stop")?.unwrap_or(true),
        round_prompt: parse_prompt(
            prompts.as_ref(),
            "round",
            template::defaults::ROUND,
            &vars,
            &needed,
        )?,
        synthesis_prompt: parse_prompt(
            prompts.as_ref(),
            "synthesis",
            template::defaults::SYNTHESIS,
            &vars,
            &needed,
        )?,
    })
}

fn parse_fusion(obj: &Object<'_>, aliases: &HashMap<&str, ModelId>) -> ConfigResult<FusionRecipe> {
    let panel = parse_pool(&obj.required("panel")?, aliases)?;
    let prompts = obj.field("prompts").map(|f| f.object()).transpose()?;
    if let Some(p) = &prompts {
        p.deny_unknown(&["judge", "finalizer"])?;
    }
    let judge_prompt = parse_prompt(
        prompts.as_ref(),
        "judge",
        template::defaults::JUDGE,
        &[var::QUESTION, var::ANSWERS, var::COUNT],
        &[var::QUESTION, var::ANSWERS],
    )?;
    let finalizer_prompt = parse_prompt(
        prompts.as_ref(),
        "finalizer",
        template::defaults::FINALIZER,
        &[
            var::QUESTION,
            var::ANSWERS,
            var::ANALYSIS,
            var::CONTRACT,
            var::COUNT,
        ],
        &[var::QUESTION],
    )?;
    Ok(FusionRecipe {
        panel,
        judge: obj
            .field("judge")
            .map(|f| parse_model(&f, aliases))
            .transpose()?,
        finalizer: parse_model(&obj.required("finalizer")?, aliases)?,
        judge_prompt,
        finalizer_prompt,
    })
}

/// Bounds of workflow plans.
pub mod workflow_bounds {
    pub const MAX_STEPS: u64 = 16;
    pub const MAX_INSTRUCTION_CHARS: u64 = 8192;
    pub const DEFAULT_MAX_STEPS: u64 = 4;
    pub const DEFAULT_MAX_INSTRUCTION_CHARS: u64 = 2000;
}

/// Step ids and worker names: 1-32 characters of `[A-Za-z0-9_-]`.
pub(crate) fn valid_step_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_workflows(
    obj: &Object<'_>,
    aliases: &HashMap<&str, ModelId>,
) -> ConfigResult<WorkflowsRecipe> {
    use workflow_vars as wv;
    let workers_field = obj.required("workers")?;
    let workers_obj = workers_field.object()?;
    if workers_obj.is_empty() || workers_obj.len() > bounds::MAX_MODELS_PER_RECIPE {
        return Err(workers_field.error(format!(
            "must name 1 to {} workers",
            bounds::MAX_MODELS_PER_RECIPE
        )));
    }
    let mut workers = Vec::new();
    for (name, field) in workers_obj.entries() {
        if !valid_step_id(name) {
            return Err(field.error("worker names are 1-32 characters of [A-Za-z0-9_-]"));
        }
        let w = field.object()?;
        w.deny_unknown(&["model", "description"])?;
        workers.push(Worker {
            name: name.to_string(),
            model: parse_model(&w.required("model")?, aliases)?,
            description: w
                .opt_string("description")?
                .unwrap_or("a general assistant")
                .to_string(),
        });
    }
    let planner = obj
        .field("planner")
        .map(|f| parse_model(&f, aliases))
        .transpose()?;
    let max_steps = obj
        .opt_integer("max_steps", 1, workflow_bounds::MAX_STEPS)?
        .unwrap_or(workflow_bounds::DEFAULT_MAX_STEPS) as usize;
    let max_instruction_chars =
        obj.opt_integer(
            "max_instruction_chars",
            16,
            workflow_bounds::MAX_INSTRUCTION_CHARS,
        )?
        .unwrap_or(workflow_bounds::DEFAULT_MAX_INSTRUCTION_CHARS) as usize;

    let prompts = obj.field("prompts").map(|f| f.object()).transpose()?;
    if let Some(p) = &prompts {
        p.deny_unknown(&["planner", "worker", "finalizer", "repair"])?;
    }
    let planner_prompt = parse_prompt(
        prompts.as_ref(),
        "planner",
        template::defaults::PLANNER,
        &[
            var::QUESTION,
            wv::WORKERS,
            wv::MAX_STEPS,
            wv::MAX_INSTRUCTION,
        ],
        &[var::QUESTION, wv::WORKERS],
    )?;
    let step_vars = [var::QUESTION, wv::INSTRUCTION, wv::INPUTS, var::CONTRACT];
    let worker_prompt = parse_prompt(
        prompts.as_ref(),
        "worker",
        template::defaults::WORKER,
        &step_vars,
        &[var::QUESTION, wv::INSTRUCTION],
    )?;
    let finalizer_prompt = parse_prompt(
        prompts.as_ref(),
        "finalizer",
        template::defaults::FINALIZE,
        &[var::QUESTION, wv::OUTPUTS, var::CONTRACT],
        &[var::QUESTION, wv::OUTPUTS],
    )?;
    let repair_prompt = parse_prompt(
        prompts.as_ref(),
        "repair",
        template::defaults::REPAIR,
        &[var::QUESTION, wv::ANSWER, wv::PROBLEM, var::CONTRACT],
        &[wv::ANSWER],
    )?;

    let steps_field = obj.required("steps")?;
    let items = steps_field.elements()?;
    if items.is_empty() || items.len() > workflow_bounds::MAX_STEPS as usize {
        return Err(steps_field.error(format!(
            "must list 1 to {} steps",
            workflow_bounds::MAX_STEPS
        )));
    }
    if planner.is_some() && items.len() > max_steps {
        return Err(steps_field.error(format!(
            "the fallback plan has {} steps but max_steps is {max_steps}",
            items.len()
        )));
    }
    let mut steps: Vec<Step> = Vec::with_capacity(items.len());
    for item in &items {
        let s = item.object()?;
        s.deny_unknown(&[
            "id",
            "worker",
            "instruction",
            "after",
            "prompt",
            "on_failure",
            "timeout_ms",
        ])?;
        let id_field = s.required("id")?;
        let id = id_field.string()?;
        if !valid_step_id(id) {
            return Err(id_field.error("step ids are 1-32 characters of [A-Za-z0-9_-]"));
        }
        if steps.iter().any(|x| x.id == id) {
            return Err(id_field.error(format!("step `{id}` is defined twice")));
        }
        let worker_field = s.required("worker")?;
        let worker_name = worker_field.string()?;
        let worker = workers
            .iter()
            .position(|w| w.name == worker_name)
            .ok_or_else(|| worker_field.error(format!("unknown worker `{worker_name}`")))?;
        let instruction = match s.field("instruction") {
            Some(f) => {
                let text = f.string()?;
                if text.chars().count() > max_instruction_chars {
                    return Err(f.error(format!(
                        "must be at most {max_instruction_chars} characters"
                    )));
                }
                text.to_string()
            }
            None => String::new(),
        };
        let mut after = Vec::new();
        if let Some(list) = s.field("after") {
            for dep in list.elements()? {
                let name = dep.string()?;
                // Dependencies name earlier steps, so the static plan is acyclic by construction.
                let index = steps
                    .iter()
                    .position(|x| x.id == name)
                    .ok_or_else(|| dep.error(format!("`{name}` is not an earlier step")))?;
                if !after.contains(&index) {
                    after.push(index);
                }
            }
        }
        let prompt = match s.field("prompt") {
            Some(f) => {
                let ancestors = ancestors(&steps, &after);
                let allowed = |name: &str| {
                    step_vars.contains(&name)
                        || name
                            .strip_prefix(wv::OUTPUT_PREFIX)
                            .is_some_and(|dep| ancestors.iter().any(|a| a == dep))
                };
                let available = "{question}, {instruction}, {inputs}, {contract}, and {output:STEP} for a step it depends on";
                Some(
                    Template::parse_with(f.string()?, &allowed, available, &[var::QUESTION])
                        .map_err(|e| f.error(e))?,
                )
            }
            None => None,
        };
        steps.push(Step {
            id: id.to_string(),
            worker,
            instruction,
            after,
            prompt,
            on_failure: s
                .field("on_failure")
                .map(|f| parse_failure_policy(&f, aliases))
                .transpose()?,
            timeout_ms: s.opt_integer("timeout_ms", 1, bounds::MAX_TIMEOUT_MS)?,
        });
    }
    Ok(WorkflowsRecipe {
        workers,
        steps,
        planner,
        finalizer: parse_model(&obj.required("finalizer")?, aliases)?,
        max_steps: max_steps.max(if planner.is_some() { 1 } else { items.len() }),
        max_instruction_chars,
        planner_timeout_ms: obj.opt_integer("planner_timeout_ms", 1, bounds::MAX_TIMEOUT_MS)?,
        replan: obj.opt_bool("replan")?.unwrap_or(true),
        planner_prompt,
        worker_prompt,
        finalizer_prompt,
        repair_prompt,
    })
}

/// Ids of every step `after` depends on, directly or not.
fn ancestors(steps: &[Step], after: &[usize]) -> Vec<String> {
    let mut seen: Vec<usize> = Vec::new();
    let mut stack: Vec<usize> = after.to_vec();
    while let Some(i) = stack.pop() {
        if seen.contains(&i) {
            continue;
        }
        seen.push(i);
        if let Some(s) = steps.get(i) {
            stack.extend(s.after.iter().copied());
        }
    }
    seen.iter()
        .filter_map(|i| steps.get(*i).map(|s| s.id.clone()))
        .collect()
}

fn parse_contract(field: &Node<'_>) -> ConfigResult<Contract> {
    let obj = field.object()?;
    let kind = obj.required("type")?;
    Ok(match kind.string()? {
        "choice" => {
            obj.deny_unknown(&["type", "options"])?;
            let options: Vec<char> = match obj.field("options") {
                Some(f) => {
                    let letters = f.string()?;
                    let options: Vec<char> = letters.chars().collect();
                    let valid = options.len() >= 2
                        && options.len() <= 26
                        && options.iter().all(char::is_ascii_uppercase)
                        && options
                            .iter()
                            .enumerate()
                            .all(|(i, c)| !options.iter().skip(i + 1).any(|d| d == c));
                    if !valid {
                        return Err(
                            f.error("must be 2 to 26 distinct capital letters, e.g. \"ABCD\"")
                        );
                    }
                    options
                }
                None => "ABCD".chars().collect(),
            };
            Contract::Choice { options }
        }
        "exact" => {
            obj.deny_unknown(&["type"])?;
            Contract::Exact
        }
        "code" => {
            obj.deny_unknown(&["type", "language"])?;
            Contract::Code {
                language: obj.opt_string("language")?.map(|l| l.trim().to_lowercase()),
            }
        }
        "json" => {
            obj.deny_unknown(&["type", "required_keys"])?;
            let mut keys = Vec::new();
            if let Some(list) = obj.field("required_keys") {
                for key in list.elements()? {
                    keys.push(key.non_empty_string(256)?.to_string());
                }
            }
            Contract::Json {
                required_keys: keys,
            }
        }
        "text" => {
            obj.deny_unknown(&["type"])?;
            Contract::Text
        }
        other => {
            return Err(kind.error(format!(
                "unknown contract `{other}` (one of: choice, exact, code, json, text)"
            )))
        }
    })
}

fn parse_failure_policy(
    field: &Node<'_>,
    aliases: &HashMap<&str, ModelId>,
) -> ConfigResult<FailurePolicy> {
    let obj = field.object()?;
    obj.deny_unknown(&["policy", "model"])?;
    let policy = obj.required("policy")?;
    let model = obj.field("model");
    match (policy.string()?, model) {
        ("skip", None) => Ok(FailurePolicy::Skip),
        ("fail", None) => Ok(FailurePolicy::Fail),
        ("fallback", Some(m)) => Ok(FailurePolicy::Fallback(parse_model(&m, aliases)?)),
        ("fallback", None) => Err(obj.error("`fallback` needs a `model`")),
        ("skip" | "fail", Some(m)) => Err(m.error("only `fallback` takes a model")),
        _ => Err(policy.error("must be \"skip\", \"fail\" or \"fallback\"")),
    }
}

fn parse_roles(field: &Node<'_>, known: &[&str]) -> ConfigResult<Vec<(String, RoleParams)>> {
    let obj = field.object()?;
    obj.deny_unknown(known)?;
    let mut roles = Vec::new();
    for (role, entry) in obj.entries() {
        let params = entry.object()?;
        params.deny_unknown(&["temperature", "max_tokens", "reasoning_effort"])?;
        let reasoning_effort = match params.field("reasoning_effort") {
            Some(f) => match f.string()? {
                e @ ("minimal" | "low" | "medium" | "high") => Some(e.to_string()),
                _ => return Err(f.error("must be minimal, low, medium or high")),
            },
            None => None,
        };
        roles.push((
            role.to_string(),
            RoleParams {
                temperature: params.opt_number("temperature", 0.0, 2.0)?,
                max_tokens: params.opt_integer("max_tokens", 1, 1_000_000)?,
                reasoning_effort,
            },
        ));
    }
    Ok(roles)
}
