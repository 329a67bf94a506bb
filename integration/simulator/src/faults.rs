//! Fault kinds and how they are chosen for a request.
//!
//! A fault comes either from a directive in the prompt (see
//! [`crate::directives`]) or from the model's `failure_rates`, drawn with a
//! PRNG seeded by `hash(seed, model, request body, per-model request counter)`.
//! How each fault is *performed* lives in [`crate::server`] (transport-level
//! faults) and [`crate::completion`] (body-level faults).

use std::collections::BTreeMap;

use crate::rng::{Fnv64, SplitMix64};

/// Every way the simulator can misbehave. The declaration order is the order
/// in which `failure_rates` are laid out on `[0, 1)` when drawing a fault, so
/// it is part of the deterministic behaviour: append new kinds at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Status500,
    Status503,
    Status429,
    Hang,
    Reset,
    Truncate,
    Garbage,
    Status502,
    Status400,
    EmptyChoices,
    NoUsage,
    WrongShape,
    BadUtf8,
    Slow,
    Huge,
    CutJson,
}

impl FaultKind {
    pub const ALL: [FaultKind; 16] = [
        FaultKind::Status500,
        FaultKind::Status503,
        FaultKind::Status429,
        FaultKind::Hang,
        FaultKind::Reset,
        FaultKind::Truncate,
        FaultKind::Garbage,
        FaultKind::Status502,
        FaultKind::Status400,
        FaultKind::EmptyChoices,
        FaultKind::NoUsage,
        FaultKind::WrongShape,
        FaultKind::BadUtf8,
        FaultKind::Slow,
        FaultKind::Huge,
        FaultKind::CutJson,
    ];

    /// Canonical name: the `failure_rates` key and the key in `/sim/stats`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Status500 => "status_500",
            FaultKind::Status502 => "status_502",
            FaultKind::Status503 => "status_503",
            FaultKind::Status400 => "status_400",
            FaultKind::Status429 => "status_429",
            FaultKind::Hang => "hang",
            FaultKind::Reset => "reset",
            FaultKind::Truncate => "truncate",
            FaultKind::Garbage => "garbage",
            FaultKind::EmptyChoices => "empty_choices",
            FaultKind::NoUsage => "no_usage",
            FaultKind::WrongShape => "wrong_shape",
            FaultKind::BadUtf8 => "bad_utf8",
            FaultKind::Slow => "slow",
            FaultKind::Huge => "huge",
            FaultKind::CutJson => "cut_json",
        }
    }

    /// Parses a fault kind as written in a directive: the canonical name, or
    /// for status faults the bare code (`500` as well as `status_500`).
    pub fn parse(s: &str) -> Option<FaultKind> {
        let s = s.trim();
        FaultKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s || k.status().is_some_and(|code| code.to_string() == s))
    }

    /// The HTTP status for the faults that are just an error response.
    pub fn status(self) -> Option<u16> {
        match self {
            FaultKind::Status500 => Some(500),
            FaultKind::Status502 => Some(502),
            FaultKind::Status503 => Some(503),
            FaultKind::Status400 => Some(400),
            FaultKind::Status429 => Some(429),
            _ => None,
        }
    }
}

/// Probability per fault kind; kinds not present have probability 0.
pub type FailureRates = BTreeMap<FaultKind, f64>;

/// Walks the cumulative distribution of `rates` (in [`FaultKind`] order)
/// with `u` in `[0, 1)`.
pub fn pick(rates: &FailureRates, u: f64) -> Option<FaultKind> {
    let mut acc = 0.0;
    for (&kind, &p) in rates {
        if p <= 0.0 {
            continue;
        }
        acc += p;
        if u < acc {
            return Some(kind);
        }
    }
    None
}

/// Per-request random draws that do not depend on the answer: the
/// `failure_rates` fault and the latency jitter. Seeded by
/// `hash(seed, model, body, counter)`; always draws in the same order so the
/// jitter does not depend on whether a fault was configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestDraw {
    pub fault: Option<FaultKind>,
    pub jitter_ms: u64,
}

pub fn draw(
    seed: u64,
    model: &str,
    body: &[u8],
    counter: u64,
    rates: &FailureRates,
    jitter_max_ms: u64,
) -> RequestDraw {
    let h = Fnv64::new()
        .bytes(b"looper-sim/request")
        .u64(seed)
        .str(model)
        .u64(body.len() as u64)
        .bytes(body)
        .u64(counter)
        .finish();
    let mut rng = SplitMix64::new(h);
    let u = rng.next_f64();
    let jitter_ms = rng.up_to(jitter_max_ms);
    RequestDraw {
        fault: pick(rates, u),
        jitter_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
        }
        assert_eq!(FaultKind::parse("500"), Some(FaultKind::Status500));
        assert_eq!(FaultKind::parse("429"), Some(FaultKind::Status429));
        assert_eq!(FaultKind::parse("404"), None);
        assert_eq!(FaultKind::parse("nope"), None);
    }

    #[test]
    fn pick_walks_cumulative_rates() {
        let mut rates = FailureRates::new();
        rates.insert(FaultKind::Status500, 0.25);
        rates.insert(FaultKind::Hang, 0.25);
        assert_eq!(pick(&rates, 0.0), Some(FaultKind::Status500));
        assert_eq!(pick(&rates, 0.3), Some(FaultKind::Hang));
        assert_eq!(pick(&rates, 0.5), None);
        assert_eq!(pick(&FailureRates::new(), 0.0), None);
    }

    #[test]
    fn draw_rates_are_roughly_honoured() {
        let mut rates = FailureRates::new();
        rates.insert(FaultKind::Status503, 0.2);
        let hits = (0..10_000)
            .filter(|&i| draw(42, "m", b"{}", i, &rates, 0).fault.is_some())
            .count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
        assert_eq!(
            draw(1, "m", b"x", 3, &rates, 10),
            draw(1, "m", b"x", 3, &rates, 10)
        );
    }
}
