//! Every occurrence of every pattern of an Aho–Corasick automaton in a text, overlapping ones
//! included, in one pass: what the crate's `find_overlapping_iter` reports, for about a fifth
//! fewer wasm instructions a byte. The crate's iterator leaves and re-enters its search on
//! every match and keeps the search's position in memory; this loop keeps the state in a
//! local and steps through the text as a slice.

use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, MatchKind, StartKind};

/// A DFA's transition table is about (pattern bytes) × (byte classes) × 4 bytes: 124 MiB for
/// 256 KiB of random printable keywords. Above this estimate a group gets the compact NFA,
/// which follows failure links per byte (slower) in memory about the size of its patterns.
pub const MAX_DFA_BYTES: usize = 2 << 20;

/// The automaton of a pattern set, built for overlapping searches: standard match semantics
/// (the only one that reports overlapping matches), unanchored, and no prefilter, so that a
/// start state is an ordinary state and only match (and dead) states are special.
#[derive(Clone, Debug)]
pub enum Searcher {
    Dfa(DFA),
    Nfa(NFA),
}

impl Searcher {
    /// A DFA when its estimated table fits [`MAX_DFA_BYTES`], the contiguous NFA otherwise.
    pub fn build<P: AsRef<[u8]>>(patterns: &[P]) -> Result<Searcher, String> {
        if estimated_dfa_bytes(patterns) <= MAX_DFA_BYTES {
            Searcher::dfa(patterns)
        } else {
            Searcher::nfa(patterns)
        }
    }

    pub fn dfa<P: AsRef<[u8]>>(patterns: &[P]) -> Result<Searcher, String> {
        refuse_empty(patterns)?;
        DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(patterns)
            .map(Searcher::Dfa)
            .map_err(|e| e.to_string())
    }

    pub fn nfa<P: AsRef<[u8]>>(patterns: &[P]) -> Result<Searcher, String> {
        refuse_empty(patterns)?;
        NFA::builder()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(patterns)
            .map(Searcher::Nfa)
            .map_err(|e| e.to_string())
    }

    /// Heap bytes held by the automaton.
    pub fn memory_usage(&self) -> usize {
        match self {
            Searcher::Dfa(dfa) => dfa.memory_usage(),
            Searcher::Nfa(nfa) => nfa.memory_usage(),
        }
    }

    /// Calls `on_match(pattern, start, end)` for each occurrence, ordered by end, then as
    /// the automaton lists the patterns ending there.
    pub fn each_match(&self, haystack: &str, on_match: impl FnMut(usize, usize, usize)) {
        match self {
            Searcher::Dfa(dfa) => each_match(dfa, haystack, on_match),
            Searcher::Nfa(nfa) => each_match(nfa, haystack, on_match),
        }
    }
}

/// An empty pattern matches at every position, between every two bytes: the loop below
/// reports matches as bytes arrive, so it has none to give.
fn refuse_empty<P: AsRef<[u8]>>(patterns: &[P]) -> Result<(), String> {
    if patterns.iter().any(|p| p.as_ref().is_empty()) {
        return Err("an empty pattern matches everywhere".to_string());
    }
    Ok(())
}

/// Transition table bytes of a DFA for `patterns`: one state per pattern byte at most, a
/// row per state as wide as the power of two at or above the byte classes, four bytes a
/// transition. Each distinct byte can split off the range below it as well as its own, so
/// there are at most twice the distinct bytes plus one classes.
fn estimated_dfa_bytes<P: AsRef<[u8]>>(patterns: &[P]) -> usize {
    let mut seen = [false; 256];
    let mut states = 1usize;
    for pattern in patterns {
        let pattern = pattern.as_ref();
        states = states.saturating_add(pattern.len());
        for &byte in pattern {
            if let Some(slot) = seen.get_mut(usize::from(byte)) {
                *slot = true;
            }
        }
    }
    let classes = (2 * seen.iter().filter(|s| **s).count() + 1).min(256);
    states
        .saturating_mul(classes.next_power_of_two())
        .saturating_mul(4)
}

fn each_match<A: Automaton>(
    automaton: &A,
    haystack: &str,
    mut on_match: impl FnMut(usize, usize, usize),
) {
    let Ok(start) = automaton.start_state(Anchored::No) else {
        return;
    };
    let mut sid = start;
    for (at, &byte) in haystack.as_bytes().iter().enumerate() {
        sid = automaton.next_state(Anchored::No, sid, byte);
        if !automaton.is_special(sid) {
            continue;
        }
        if automaton.is_dead(sid) {
            // Unanchored standard searches never die; this only ends a search that would.
            return;
        }
        // Without a prefilter only match states are special, but a start state made
        // special by one must not be read as a match.
        if !automaton.is_match(sid) {
            continue;
        }
        let end = at + 1;
        for index in 0..automaton.match_len(sid) {
            let pattern = automaton.match_pattern(sid, index);
            let start = end.saturating_sub(automaton.pattern_len(pattern));
            on_match(pattern.as_usize(), start, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::AhoCorasick;

    /// What the crate's own overlapping iterator reports.
    fn reference<P: AsRef<[u8]>>(patterns: &[P], haystack: &str) -> Vec<(usize, usize, usize)> {
        reference_with(aho_corasick::AhoCorasickKind::DFA, patterns, haystack)
    }

    fn reference_with<P: AsRef<[u8]>>(
        kind: aho_corasick::AhoCorasickKind,
        patterns: &[P],
        haystack: &str,
    ) -> Vec<(usize, usize, usize)> {
        let ac = AhoCorasick::builder()
            .kind(Some(kind))
            .build(patterns)
            .unwrap();
        ac.find_overlapping_iter(haystack)
            .map(|m| (m.pattern().as_usize(), m.start(), m.end()))
            .collect()
    }

    /// What both of ours report; they must agree.
    fn ours(patterns: &[&str], haystack: &str) -> Vec<(usize, usize, usize)> {
        let run = |searcher: Searcher| {
            let mut found = Vec::new();
            searcher.each_match(haystack, |p, s, e| found.push((p, s, e)));
            found
        };
        let dfa = run(Searcher::dfa(patterns).unwrap());
        let nfa = run(Searcher::nfa(patterns).unwrap());
        assert_eq!(
            dfa, nfa,
            "the DFA and the NFA disagree on {patterns:?} in {haystack:?}"
        );
        dfa
    }

    #[test]
    fn reports_what_the_crates_overlapping_iterator_reports() {
        let pattern_sets: &[&[&str]] = &[
            &["he", "she", "his", "hers"],
            &["a", "aa", "aaa", "aaaa"],
            &["quantum", "quantum chemistry", "chemistry", "chem", "try"],
            &["abc", "bcd", "cde", "b", "c"],
            &["überprüfung", "prüf", "ü", "原子", "子结构", "结构"],
            &["x"],
            &["same", "same", "sam"],
            &["longer pattern than the text"],
        ];
        let haystacks = [
            "",
            "ushers",
            "aaaaaaa",
            "a quantum chemistry seminar, quantumchemistry, chemtry",
            "abcdefg bcd cde abcde",
            "die Überprüfung und überprüfung: prüfen ü 委员会讨论了原子结构。",
            "xxx x",
            "same sam samesame",
            "short",
        ];
        for patterns in pattern_sets {
            for haystack in haystacks {
                assert_eq!(
                    ours(patterns, haystack),
                    reference(patterns, haystack),
                    "{patterns:?} in {haystack:?}"
                );
            }
        }
    }

    #[test]
    fn matches_on_texts_made_of_the_patterns_own_bytes() {
        // Every string of up to six letters from {a, b}, against patterns that overlap in
        // every way two-letter alphabets allow.
        let patterns = ["a", "ab", "ba", "aba", "bab", "bb", "abba", "aaa"];
        for len in 0..=6u32 {
            for bits in 0..(1u32 << len) {
                let text: String = (0..len)
                    .map(|i| if bits >> i & 1 == 1 { 'b' } else { 'a' })
                    .collect();
                assert_eq!(
                    ours(&patterns, &text),
                    reference(&patterns, &text),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn an_empty_pattern_is_refused() {
        assert!(Searcher::build(&["a", ""]).is_err());
        assert!(Searcher::dfa(&[""]).is_err());
        assert!(Searcher::nfa(&["", "b"]).is_err());
    }

    #[test]
    fn a_pattern_set_whose_table_would_be_large_gets_the_compact_automaton() {
        let letters: Vec<String> = (0..40).map(|i| format!("keyword{i}")).collect();
        assert!(matches!(
            Searcher::build(&letters).unwrap(),
            Searcher::Dfa(_)
        ));
        // 256 KiB of keywords over every printable byte: about 124 MiB as a DFA.
        let mut seed = 7u32;
        let printable: Vec<Vec<u8>> = (0..1000)
            .map(|_| {
                (0..256)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        0x21 + (seed >> 16) as u8 % 94
                    })
                    .collect()
            })
            .collect();
        let searcher = Searcher::build(&printable).unwrap();
        assert!(matches!(searcher, Searcher::Nfa(_)));
        assert!(
            searcher.memory_usage() < 16 << 20,
            "{} bytes",
            searcher.memory_usage()
        );
        // And it finds what the crate's own NFA finds: whole keywords, overlapping pieces of
        // them, and the junk between.
        let mut haystack = String::new();
        for (i, keyword) in printable.iter().enumerate().step_by(97) {
            let keyword = std::str::from_utf8(keyword).unwrap();
            haystack.push_str(keyword);
            haystack.push_str(&keyword[i % 200..]);
            haystack.push_str(" ~~ ");
        }
        let mut found = Vec::new();
        searcher.each_match(&haystack, |p, s, e| found.push((p, s, e)));
        assert!(found.len() >= 11, "{} matches", found.len());
        assert_eq!(
            found,
            reference_with(
                aho_corasick::AhoCorasickKind::ContiguousNFA,
                &printable,
                &haystack
            )
        );
    }
}
