//! The auto router (SPEC §3): signals read from the request, projected onto bands, matched by
//! prioritised decisions, the winner naming the recipe to run. Computed once per request,
//! with no model call: keyword automata, regular expressions compiled at configure time and
//! linear structure scans.

mod overlapping;
mod signals;
mod structure;
mod text;

pub use overlapping::{Searcher, MAX_DFA_BYTES};
pub use signals::{
    KeywordGroup, LengthUnit, Measure, Owner, Parameter, Signal, SignalKind, MAX_REGEX_MATCHES,
    MAX_REGEX_TEXT, MAX_VALUE,
};
pub use structure::{phrase_patterns, Detector};
pub use text::{estimate_tokens, Scope};

use crate::config::RecipeId;
use crate::openai::ChatRequest;
use serde_json::{json, Map, Value};

/// A weighted sum of signals mapped onto named bands.
#[derive(Clone, Debug)]
pub struct Projection {
    pub name: String,
    pub terms: Vec<Term>,
    /// In order; every band but the last has an upper bound (`below`), strictly increasing.
    pub bands: Vec<Band>,
}

#[derive(Clone, Debug)]
pub struct Term {
    pub signal: usize,
    pub weight: f64,
    /// `Some(cap)`: the term is `weight * min(value, cap)`; `None`: `weight` when fired.
    pub value_cap: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Band {
    pub name: String,
    pub below: Option<f64>,
}

impl Projection {
    fn score(&self, values: &[f64], fired: &[bool]) -> f64 {
        self.terms
            .iter()
            .map(|t| match t.value_cap {
                Some(cap) => {
                    let value = values.get(t.signal).copied().unwrap_or(0.0);
                    t.weight * value.clamp(-MAX_VALUE, MAX_VALUE).min(cap)
                }
                None if fired.get(t.signal).copied().unwrap_or(false) => t.weight,
                None => 0.0,
            })
            .sum()
    }

    fn band(&self, score: f64) -> usize {
        self.bands
            .iter()
            .position(|b| b.below.is_none_or(|below| score < below))
            .unwrap_or(self.bands.len().saturating_sub(1))
    }
}

#[derive(Clone, Debug)]
pub enum Condition {
    Signal(usize),
    /// The projection's band is one of `bands` (a bit per band index).
    Band {
        projection: usize,
        bands: u64,
    },
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

impl Condition {
    fn holds(&self, fired: &[bool], bands: &[(usize, f64)]) -> bool {
        match self {
            Condition::Signal(s) => fired.get(*s).copied().unwrap_or(false),
            Condition::Band {
                projection,
                bands: wanted,
            } => bands
                .get(*projection)
                .is_some_and(|(band, _)| wanted & (1u64 << band) != 0),
            Condition::All(all) => all.iter().all(|c| c.holds(fired, bands)),
            Condition::Any(any) => any.iter().any(|c| c.holds(fired, bands)),
            Condition::Not(c) => !c.holds(fired, bands),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub name: String,
    pub priority: u32,
    /// `None` for the catch-all.
    pub when: Option<Condition>,
    pub recipe: RecipeId,
    pub description: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Router {
    pub name: String,
    pub signals: Vec<Signal>,
    pub keyword_groups: Vec<KeywordGroup>,
    pub projections: Vec<Projection>,
    /// Sorted by priority, highest first (configuration order among equals); the catch-all
    /// is last.
    pub decisions: Vec<Decision>,
}

/// The router's verdict on one request, with what it saw (for headers and the trace).
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub decision: usize,
    pub recipe: RecipeId,
    pub values: Vec<f64>,
    pub fired: Vec<bool>,
    /// Per projection: band index and score.
    pub bands: Vec<(usize, f64)>,
}

impl Router {
    /// `headers` holds the values of the configuration's allow-listed headers, in its order.
    pub fn route(&self, request: &ChatRequest, headers: &[Option<String>]) -> Option<Route> {
        let evaluated = signals::evaluate(&self.signals, &self.keyword_groups, request, headers);
        let bands: Vec<(usize, f64)> = self
            .projections
            .iter()
            .map(|p| {
                let score = p.score(&evaluated.values, &evaluated.fired);
                (p.band(score), score)
            })
            .collect();
        let decision = self.decisions.iter().position(|d| {
            d.when
                .as_ref()
                .is_none_or(|c| c.holds(&evaluated.fired, &bands))
        })?;
        Some(Route {
            decision,
            recipe: self.decisions.get(decision)?.recipe,
            values: evaluated.values,
            fired: evaluated.fired,
            bands,
        })
    }

    pub fn decision_name(&self, route: &Route) -> &str {
        self.decisions
            .get(route.decision)
            .map_or("", |d| d.name.as_str())
    }

    /// Names of the signals that fired, in configuration order.
    pub fn fired_names<'a>(&'a self, route: &'a Route) -> impl Iterator<Item = &'a str> + 'a {
        self.signals
            .iter()
            .zip(&route.fired)
            .filter(|(_, fired)| **fired)
            .map(|(s, _)| s.name.as_str())
    }

    /// `projection=band` pairs.
    pub fn band_names<'a>(
        &'a self,
        route: &'a Route,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.projections
            .iter()
            .zip(&route.bands)
            .map(|(p, (band, _))| {
                let band = p.bands.get(*band).map_or("", |b| b.name.as_str());
                (p.name.as_str(), band)
            })
    }

    /// `looper_trace.route`.
    pub fn trace(&self, route: &Route, recipe_name: &str) -> Value {
        let mut bands = Map::new();
        for (p, (band, score)) in self.projections.iter().zip(&route.bands) {
            let band = p.bands.get(*band).map_or("", |b| b.name.as_str());
            bands.insert(p.name.clone(), json!({"band": band, "score": score}));
        }
        let mut signals = Map::new();
        for ((s, fired), value) in self.signals.iter().zip(&route.fired).zip(&route.values) {
            if *fired {
                signals.insert(s.name.clone(), json!(value));
            }
        }
        json!({
            "router": self.name,
            "decision": self.decision_name(route),
            "recipe": recipe_name,
            "bands": bands,
            "signals": signals,
        })
    }
}

#[cfg(test)]
mod tests;
