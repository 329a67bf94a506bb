//! Structure detectors: what shape of task a request is, read from its text with linear scans
//! (no regular expressions, so a megabyte of input costs one pass per detector).

use super::overlapping::Searcher;
use super::text::is_whole_word;
use serde_json::Value;
use std::sync::OnceLock;

/// A structure detector a `structure` signal names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    /// Option labels `A)`, `(B)`, `C.`, `D:` in sequence from A: the number of options.
    MultipleChoice,
    /// Fenced code blocks: how many.
    CodeFence,
    /// A function or class stub to complete (0/1).
    StarterCode,
    /// An input/output specification: stdin/stdout, Input/Output sections (0/1).
    IoSpec,
    /// A constraints section or bounds such as `1 <= n <= 10^5` (0/1).
    Constraints,
    /// An answer accepted within a tolerance: "absolute or relative error", `1e-6` (0/1).
    FloatTolerance,
    /// The client asked for JSON, in `response_format` or in words (0/1).
    JsonRequested,
    /// Math notation: LaTeX commands, `$...$`, powers, symbols, arithmetic (a count).
    Math,
}

impl Detector {
    pub const NAMES: &'static [&'static str] = &[
        "multiple_choice",
        "code_fence",
        "starter_code",
        "io_spec",
        "constraints",
        "float_tolerance",
        "json_requested",
        "math",
    ];

    pub fn parse(name: &str) -> Option<Detector> {
        Some(match name {
            "multiple_choice" => Detector::MultipleChoice,
            "code_fence" => Detector::CodeFence,
            "starter_code" => Detector::StarterCode,
            "io_spec" => Detector::IoSpec,
            "constraints" => Detector::Constraints,
            "float_tolerance" => Detector::FloatTolerance,
            "json_requested" => Detector::JsonRequested,
            "math" => Detector::Math,
            _ => return None,
        })
    }

    /// The detector's value in a scanned text.
    pub fn measure(self, shape: &Shape, response_format: Option<&Value>) -> f64 {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        match self {
            Detector::MultipleChoice => f64::from(shape.options),
            Detector::CodeFence => f64::from(shape.fences),
            Detector::StarterCode => flag(shape.starter_code()),
            Detector::IoSpec => flag(shape.io_spec()),
            Detector::Constraints => flag(shape.constraints()),
            Detector::FloatTolerance => flag(shape.float_tolerance()),
            Detector::JsonRequested => flag(json_format(response_format) || shape.has(JSON)),
            Detector::Math => f64::from(shape.math),
        }
    }
}

/// Phrase groups the detectors look for in lowercase text, as bit positions.
const STARTER: u64 = 1;
const STUB: u64 = 1 << 1;
const IO: u64 = 1 << 2;
const LESS_EQUAL: u64 = 1 << 3;
const POWER_OF_TEN: u64 = 1 << 4;
const TOLERANCE: u64 = 1 << 5;
const SMALL_NUMBER: u64 = 1 << 6;
const ERROR_WORD: u64 = 1 << 7;
const JSON: u64 = 1 << 8;

const PHRASES: &[(&str, u64)] = &[
    ("starter code", STARTER),
    ("complete the function", STARTER),
    ("complete the following function", STARTER),
    ("implement the function", STARTER),
    ("complete the code", STARTER),
    ("class solution", STARTER),
    ("pass\n", STUB),
    ("todo", STUB),
    ("your code here", STUB),
    ("unimplemented!", STUB),
    ("...", STUB),
    ("stdin", IO),
    ("stdout", IO),
    ("standard input", IO),
    ("standard output", IO),
    ("input format", IO),
    ("output format", IO),
    ("sample input", IO),
    ("sample output", IO),
    ("example input", IO),
    ("≤", LESS_EQUAL),
    ("<=", LESS_EQUAL),
    ("\\le ", LESS_EQUAL),
    ("10^", POWER_OF_TEN),
    ("10**", POWER_OF_TEN),
    ("\\cdot 10", POWER_OF_TEN),
    ("1e5", POWER_OF_TEN),
    ("1e9", POWER_OF_TEN),
    ("absolute or relative error", TOLERANCE),
    ("relative or absolute error", TOLERANCE),
    ("relative error", TOLERANCE),
    ("absolute error", TOLERANCE),
    ("within a tolerance", TOLERANCE),
    ("1e-", SMALL_NUMBER),
    ("10^{-", SMALL_NUMBER),
    ("10^-", SMALL_NUMBER),
    ("error", ERROR_WORD),
    ("precision", ERROR_WORD),
    ("tolerance", ERROR_WORD),
    ("decimal", ERROR_WORD),
    ("json", JSON),
];

/// The phrases, in the order of their pattern numbers, for an automaton that finds them
/// along with keywords of the same lowercase text.
pub fn phrase_patterns() -> impl Iterator<Item = &'static str> {
    PHRASES.iter().map(|(p, _)| *p)
}

/// Adds the bit of phrase `index`, found at `start..end` of the lowercase text `lower`.
pub fn note_phrase(phrases: &mut u64, index: usize, lower: &str, start: usize, end: usize) {
    let Some(&(_, bit)) = PHRASES.get(index) else {
        return;
    };
    if bit == JSON && !is_whole_word(lower, start, end) {
        return;
    }
    *phrases |= bit;
}

/// One automaton for every phrase, built on first use and kept for the VM's lifetime.
fn phrase_automaton() -> Option<&'static Searcher> {
    static AUTOMATON: OnceLock<Option<Searcher>> = OnceLock::new();
    AUTOMATON
        .get_or_init(|| {
            let phrases: Vec<&str> = phrase_patterns().collect();
            Searcher::dfa(&phrases).ok()
        })
        .as_ref()
}

/// Everything the structure detectors read of one text, gathered in three linear passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub options: u32,
    pub fences: u32,
    pub math: u32,
    phrases: u64,
    input_heading: bool,
    output_heading: bool,
    constraints_heading: bool,
    signature: bool,
}

impl Shape {
    /// `text` is the scope's text, `lower` its lowercase form.
    pub fn scan(text: &str, lower: &str) -> Shape {
        let mut phrases = 0;
        if let Some(automaton) = phrase_automaton() {
            automaton.each_match(lower, |pattern, start, end| {
                note_phrase(&mut phrases, pattern, lower, start, end);
            });
        }
        Shape::scan_with_phrases(text, lower, phrases)
    }

    /// As [`Shape::scan`], with the phrases already found (by a keyword pass over `lower`).
    pub fn scan_with_phrases(text: &str, lower: &str, phrases: u64) -> Shape {
        let mut shape = Shape {
            options: multiple_choice_options(text),
            math: math_markers(text),
            phrases,
            ..Shape::default()
        };
        let mut fence_markers = 0u32;
        for line in lower.lines() {
            let t = line.trim_start();
            if t.starts_with("```") || t.starts_with("~~~") {
                fence_markers += 1;
            }
            if ["def ", "fn ", "func ", "function ", "public ", "class "]
                .iter()
                .any(|k| t.starts_with(k))
            {
                shape.signature = true;
            }
            let heading = t.trim_end().trim_start_matches('#').trim();
            let heading = heading.strip_suffix(':').unwrap_or(heading).trim_end();
            match heading {
                "input" => shape.input_heading = true,
                "output" => shape.output_heading = true,
                "constraints" => shape.constraints_heading = true,
                _ => {}
            }
        }
        shape.fences = fence_markers.div_ceil(2);
        shape
    }

    fn has(&self, bits: u64) -> bool {
        self.phrases & bits != 0
    }

    fn starter_code(&self) -> bool {
        self.has(STARTER) || (self.signature && self.has(STUB))
    }

    fn io_spec(&self) -> bool {
        self.has(IO) || (self.input_heading && self.output_heading)
    }

    fn constraints(&self) -> bool {
        self.constraints_heading || (self.has(LESS_EQUAL) && self.has(POWER_OF_TEN))
    }

    fn float_tolerance(&self) -> bool {
        self.has(TOLERANCE) || (self.has(SMALL_NUMBER) && self.has(ERROR_WORD))
    }
}

fn json_format(response_format: Option<&Value>) -> bool {
    let format = response_format
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    matches!(format, Some("json_object" | "json_schema"))
}

/// Number of options labelled in sequence from `A` (or `a`); fewer than two is no list.
///
/// At the start of a line a label is `A)`, `(A)`, `A.` or `A:` in either case. Inside a line
/// only upper-case `A)` and `(A)` count: lower-case `(a) (b) (c)`, `Plan A: ... Plan B:` and
/// "plan A. Then" are how prose enumerates parts of one question, not options.
pub fn multiple_choice_options(text: &str) -> u32 {
    let bytes = text.as_bytes();
    // Only the punctuation after a label can end one: found by `memchr` (16 bytes a step in
    // wasm), not by testing every byte.
    options_among(bytes, memchr::memchr3_iter(b')', b':', b'.', bytes))
}

/// [`multiple_choice_options`] over the labels whose punctuation is at one of `candidates`
/// (every other position ends none).
fn options_among(bytes: &[u8], candidates: impl Iterator<Item = usize>) -> u32 {
    let mut upper = 0u32;
    let mut lower = 0u32;
    let at = |i: Option<usize>| i.and_then(|i| bytes.get(i)).copied();
    let starts_line = |pos: usize| {
        let before = bytes.get(..pos).unwrap_or_default();
        let indent = before
            .iter()
            .rev()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        let start = before.len() - indent;
        start == 0 || before.get(start - 1) == Some(&b'\n')
    };
    for p in candidates {
        let Some(&punct) = bytes.get(p) else {
            continue;
        };
        if !matches!(punct, b')' | b':' | b'.') {
            continue;
        }
        let Some(letter_at) = p.checked_sub(1) else {
            continue;
        };
        let Some(letter) = at(Some(letter_at)) else {
            continue;
        };
        if !matches!(letter, b'A'..=b'J' | b'a'..=b'j') {
            continue;
        }
        if !at(Some(p + 1)).is_none_or(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            continue;
        }
        let parenthesised = punct == b')' && at(p.checked_sub(2)) == Some(b'(');
        let label_start = if parenthesised { p - 2 } else { letter_at };
        let labelled = if starts_line(label_start) {
            !(punct != b')' && parenthesised)
        } else {
            let before = label_start
                .checked_sub(1)
                .and_then(|i| bytes.get(i))
                .copied();
            letter.is_ascii_uppercase()
                && punct == b')'
                && before.is_none_or(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b':'))
        };
        if labelled {
            let bit = 1u32 << (letter.to_ascii_lowercase() - b'a');
            if letter.is_ascii_uppercase() {
                upper |= bit;
            } else {
                lower |= bit;
            }
        }
    }
    let n = upper.trailing_ones().max(lower.trailing_ones());
    if n >= 2 {
        n
    } else {
        0
    }
}

const LATEX_COMMANDS: &[&str] = &[
    "frac", "sqrt", "sum", "int", "boxed", "cdot", "times", "pi", "le", "ge", "neq", "infty",
    "alpha", "beta", "theta", "lambda", "sigma", "mathbb", "binom", "log", "sin", "cos", "lim",
    "partial", "prod", "mod",
];

/// UTF-8 of the math symbols √ ∑ ∫ π ≤ ≥ ≠ × ÷ ∞ ≈.
const MATH_SYMBOLS: &[&[u8]] = &[
    "√".as_bytes(),
    "∑".as_bytes(),
    "∫".as_bytes(),
    "π".as_bytes(),
    "≤".as_bytes(),
    "≥".as_bytes(),
    "≠".as_bytes(),
    "×".as_bytes(),
    "÷".as_bytes(),
    "∞".as_bytes(),
    "≈".as_bytes(),
];

/// Counts math markers: LaTeX commands, `$` delimiters, powers (`x^2`), math symbols and
/// arithmetic between digits (`3 + 4`, `12*7`, `2 = 2`).
pub fn math_markers(text: &str) -> u32 {
    let bytes = text.as_bytes();
    // Each marker is decided by the bytes around it alone, so the three searches for the
    // bytes that can start one (`memchr`, 16 bytes a step in wasm) may visit them in any
    // order.
    let starts = memchr::memchr3_iter(b'\\', b'$', b'^', bytes)
        .chain(memchr::memchr3_iter(b'+', b'*', b'=', bytes))
        .chain(memchr::memchr3_iter(0xC3, 0xCF, 0xE2, bytes));
    markers_among(bytes, starts)
}

/// [`math_markers`] over the markers that start at one of `candidates` (every other position
/// starts none).
fn markers_among(bytes: &[u8], candidates: impl Iterator<Item = usize>) -> u32 {
    let mut count = 0u32;
    let mut dollars = 0u32;
    let at = |i: Option<usize>| i.and_then(|i| bytes.get(i)).copied();
    for i in candidates {
        let Some(&b) = bytes.get(i) else {
            continue;
        };
        match b {
            b'\\' => {
                let rest = bytes.get(i + 1..).unwrap_or_default();
                let len = rest.iter().take_while(|c| c.is_ascii_alphabetic()).count();
                let word = rest.get(..len).unwrap_or_default();
                if LATEX_COMMANDS.iter().any(|c| c.as_bytes() == word) {
                    count += 1;
                }
            }
            b'$' => dollars += 1,
            b'^' => {
                let before = at(i.checked_sub(1));
                let after = at(Some(i + 1));
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b')' | b'}'))
                    && after.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'{' | b'('))
                {
                    count += 1;
                }
            }
            // Not `/`: dates (12/25/2024) are not arithmetic.
            b'+' | b'*' | b'=' if digit_around(bytes, i) => count += 1,
            0xC3 | 0xCF | 0xE2 => {
                let rest = bytes.get(i..).unwrap_or_default();
                if MATH_SYMBOLS.iter().any(|s| rest.starts_with(s)) {
                    count += 1;
                }
            }
            _ => {}
        }
    }
    count + dollars / 2
}

/// A digit on both sides of the operator at `i`, ignoring one space on each side.
fn digit_around(bytes: &[u8], i: usize) -> bool {
    let left = match i.checked_sub(1).and_then(|j| bytes.get(j)) {
        Some(b' ') => i.checked_sub(2).and_then(|j| bytes.get(j)),
        other => other,
    };
    let right = match bytes.get(i + 1) {
        Some(b' ') => bytes.get(i + 2),
        other => other,
    };
    left.is_some_and(u8::is_ascii_digit) && right.is_some_and(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(text: &str) -> Shape {
        Shape::scan(text, &text.to_lowercase())
    }

    #[test]
    fn multiple_choice_counts_labels_in_sequence() {
        assert_eq!(
            multiple_choice_options("A) one\nB) two\nC) three\nD) four"),
            4
        );
        assert_eq!(multiple_choice_options("Pick: (A) x (B) y (C) z"), 3);
        assert_eq!(multiple_choice_options("Pick one: A) x B) y C) z"), 3);
        assert_eq!(multiple_choice_options("(a) x\n(b) y\n(c) z"), 3);
        assert_eq!(
            multiple_choice_options("(a) Show f is convex. (b) Find it. (c) Plot it."),
            0
        );
        assert_eq!(
            multiple_choice_options("Plan A: go. Plan B: stay. Plan C: wait."),
            0
        );
        assert_eq!(
            multiple_choice_options("you should: a) read, b) write, c) run"),
            0
        );
        assert_eq!(multiple_choice_options("A. red\nB. blue\n  C. green"), 3);
        assert_eq!(multiple_choice_options("a) x\nb) y"), 2);
        assert_eq!(multiple_choice_options("A: yes\nB: no\nC: maybe"), 3);
        assert_eq!(
            multiple_choice_options("We chose plan A. Then B. was next"),
            0
        );
        assert_eq!(multiple_choice_options("B) no A\nC) here"), 0);
        assert_eq!(multiple_choice_options("Vitamin A) is fine"), 0);
        assert_eq!(multiple_choice_options("x(A) y(B) z(C)"), 0);
        assert_eq!(multiple_choice_options(""), 0);
        assert_eq!(multiple_choice_options("A)"), 0);
        assert_eq!(multiple_choice_options("A)B)C)"), 0);
    }

    #[test]
    fn code_fences_pair_up() {
        assert_eq!(shape("```py\nx\n```\ntext\n```\ny\n```").fences, 2);
        assert_eq!(shape("```\nunclosed").fences, 1);
        assert_eq!(shape("no code").fences, 0);
    }

    #[test]
    fn competitive_programming_shapes() {
        let task = shape(
            "Given n.\nInput\nThe first line holds n.\n## Output:\nPrint the answer.\n\
             Constraints:\n1 <= n <= 10^5",
        );
        assert!(task.io_spec());
        assert!(task.constraints());
        assert!(shape("Read from stdin.").io_spec());
        assert!(!shape("what is the output of this function?").io_spec());
        assert!(shape("1 ≤ n ≤ 2·10^5").constraints());
        assert!(!shape("x <= 3").constraints());
        assert!(shape("Complete the function below.\ndef solve(n):\n    pass\n").starter_code());
        assert!(shape("def solve(n):\n    pass\n").starter_code());
        assert!(!shape("def is a keyword").starter_code());
        assert!(
            shape("answers within an absolute or relative error of 1e-6 are accepted")
                .float_tolerance()
        );
        assert!(shape("print 6 decimal places; 1e-6 is fine").float_tolerance());
        assert!(!shape("no tolerance mentioned here").float_tolerance());
    }

    #[test]
    fn json_requested_from_words_or_response_format() {
        let json_words = |t: &str| Detector::JsonRequested.measure(&shape(t), None);
        assert_eq!(json_words("reply in JSON please"), 1.0);
        assert_eq!(json_words("the jsonschema crate"), 0.0);
        let format = serde_json::json!({"type": "json_object"});
        assert_eq!(
            Detector::JsonRequested.measure(&shape("anything"), Some(&format)),
            1.0
        );
    }

    #[test]
    fn math_markers_count_notation() {
        assert_eq!(math_markers("hello world"), 0);
        assert_eq!(math_markers("Let $x^2 + 1 = 10$, find \\frac{1}{x}"), 5);
        assert_eq!(math_markers("What is 12*7?"), 1);
        assert_eq!(math_markers("can we meet on 12/25/2024?"), 0);
        assert_eq!(math_markers("√2 ≈ 1.414 × π"), 4);
        assert_eq!(math_markers("café, naïve, über"), 0);
        assert_eq!(math_markers("\\unknowncommand"), 0);
    }

    #[test]
    fn the_memchr_scans_count_what_a_byte_by_byte_scan_counts() {
        // Texts built from the bytes the scans look at, in every short arrangement, plus
        // real prose: a search that skipped or revisited a byte would count differently.
        let pieces = [
            "A", "B", "b", "(", ")", ".", ":", " ", "\n", "\\frac", "\\x", "$", "^", "2", "+", "*",
            "=", "x", "√", "×", "é", "≈", "—", "\t", "\nA. x", "\nB. y", "\nC: z", " A) ", " B) ",
            " C) ", "(a) ", "(b) ", "(c) ",
        ];
        let mut texts = vec![String::new()];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    texts.push(format!("{a}{b}{c}"));
                    texts.push(format!("{a}{b} {c}{a}"));
                }
            }
        }
        let mut seed = 1u32;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..24 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let piece = pieces.get((seed >> 16) as usize % pieces.len()).unwrap();
                text.push_str(piece);
            }
            texts.push(text);
        }
        texts.push(
            "Which is right?\nA) 2p\nB) 1s\nC) 3d\nD) 2s. Let $x^2 + 1 = 10$, √2 ≈ 1.41".into(),
        );
        // As before the searches: every position a candidate.
        for text in &texts {
            let (bytes, every) = (text.as_bytes(), 0..text.len());
            let options = options_among(bytes, every.clone());
            assert_eq!(multiple_choice_options(text), options, "{text:?}");
            assert_eq!(math_markers(text), markers_among(bytes, every), "{text:?}");
        }
    }
}
