//! Output contracts (SPEC §4.6): what shape the final answer must have. A contract gives the
//! instruction appended to worker and synthesis prompts, extracts a comparable answer from
//! free text (for votes and confidence), and checks a final answer.
//!
//! Extraction is lenient on purpose: models write `ANSWER: B`, `The answer is (B)`,
//! `\boxed{B}` or end with a lone `B`, and all of these must count as the same vote.

use serde_json::Value;
use std::ops::Range;

/// Longest answer kept for voting; longer extractions are cut (on a character boundary).
const MAX_ANSWER: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contract {
    /// One option letter out of `options` (e.g. `ABCD`).
    Choice { options: Vec<char> },
    /// A short exact answer: a number or a normalised string.
    Exact,
    /// A fenced code block, preferably in `language`.
    Code { language: Option<String> },
    /// A JSON value, an object with `required_keys` when any are listed.
    Json { required_keys: Vec<String> },
    /// Free text: nothing to extract beyond the text itself.
    Text,
}

/// An answer found in a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// The normalised answer: equal answers compare equal (`b` and `(B)` are both `B`).
    pub value: String,
    /// Byte range of the raw answer in the response text, to locate its tokens.
    pub span: Range<usize>,
}

impl Contract {
    pub fn name(&self) -> &'static str {
        match self {
            Contract::Choice { .. } => "choice",
            Contract::Exact => "exact",
            Contract::Code { .. } => "code",
            Contract::Json { .. } => "json",
            Contract::Text => "text",
        }
    }

    /// How many answers are possible, when that is known (for log-odds vote weights).
    pub fn option_count(&self) -> Option<usize> {
        match self {
            Contract::Choice { options } => Some(options.len()),
            _ => None,
        }
    }

    /// The instruction appended to prompts; `None` for free text.
    pub fn instruction(&self) -> Option<String> {
        match self {
            Contract::Choice { options } => {
                let letters: Vec<String> = options.iter().map(char::to_string).collect();
                Some(format!(
                    "Finish your reply with a final line of the form `ANSWER: X`, where X is \
                     exactly one of {}.",
                    letters.join(", ")
                ))
            }
            Contract::Exact => Some(
                "Finish your reply with a final line of the form `ANSWER: <answer>` giving only \
                 the final answer (a number or a short phrase)."
                    .to_string(),
            ),
            Contract::Code { language } => Some(match language {
                Some(lang) => {
                    format!("Put the complete solution in a single fenced code block (```{lang}).")
                }
                None => "Put the complete solution in a single fenced code block.".to_string(),
            }),
            Contract::Json { required_keys } if required_keys.is_empty() => {
                Some("Reply with a single valid JSON value and nothing else.".to_string())
            }
            Contract::Json { required_keys } => Some(format!(
                "Reply with a single valid JSON object and nothing else. It must contain the \
                 keys: {}.",
                required_keys.join(", ")
            )),
            Contract::Text => None,
        }
    }

    /// The answer in `text`, normalised, or `None` when the contract cannot find one.
    pub fn extract(&self, text: &str) -> Option<Extracted> {
        match self {
            Contract::Choice { options } => extract_choice(text, options),
            Contract::Exact => extract_exact(text),
            Contract::Code { language } => extract_code(text, language.as_deref()),
            Contract::Json { required_keys } => extract_json(text, required_keys),
            Contract::Text => {
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    return None;
                }
                let start = text.len() - text.trim_start().len();
                Some(Extracted {
                    value: cap(&collapse_whitespace(&trimmed.to_lowercase())),
                    span: start..start + trimmed.len(),
                })
            }
        }
    }

    /// Whether `text` satisfies the contract, with the reason when it does not.
    pub fn check(&self, text: &str) -> Result<Extracted, String> {
        self.extract(text).ok_or_else(|| match self {
            Contract::Choice { options } => format!(
                "no answer among {} found",
                options.iter().collect::<String>()
            ),
            Contract::Exact => "no final answer found".to_string(),
            Contract::Code { .. } => "no fenced code block found".to_string(),
            Contract::Json { required_keys } if !required_keys.is_empty() => format!(
                "no JSON object with the keys {} found",
                required_keys.join(", ")
            ),
            Contract::Json { .. } => "no valid JSON found".to_string(),
            Contract::Text => "the answer is empty".to_string(),
        })
    }
}

fn cap(s: &str) -> String {
    crate::openai::error::truncate(s, MAX_ANSWER).to_string()
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Byte offsets of every case-insensitive occurrence of the ASCII `needle` in `haystack`.
fn find_all_ascii_ci(haystack: &str, needle: &str) -> Vec<usize> {
    let hay = haystack.as_bytes();
    let needle = needle.as_bytes();
    if needle.is_empty() || hay.len() < needle.len() {
        return Vec::new();
    }
    (0..=hay.len() - needle.len())
        .filter(|&i| {
            hay.get(i..i + needle.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        })
        .collect()
}

/// Positions of `answer` markers (not inside a word, followed by a separator), in the order
/// to try them: markers that begin a line first (a final `ANSWER: X` line), then the rest;
/// the last first within each group.
fn answer_markers(text: &str) -> Vec<(usize, usize)> {
    let mut line_start = Vec::new();
    let mut inline = Vec::new();
    for marker in find_all_ascii_ci(text, "answer") {
        let head = text.get(..marker).unwrap_or("");
        if is_word_char(head.chars().next_back()) {
            continue;
        }
        let lead = skip_answer_lead(text, marker + "answer".len());
        if lead == marker + "answer".len() {
            continue; // no separator: `answers`, `answered`...
        }
        if starts_line(head) {
            line_start.push((marker, lead));
        } else {
            inline.push((marker, lead));
        }
    }
    line_start.reverse();
    inline.reverse();
    line_start.extend(inline);
    line_start
}

/// Whether nothing but decoration, or the word `final`, stands before the end of `head` on
/// its line. It reads back only until a sixth letter: with many markers on one long line, each
/// reads its own stretch of the line, not the whole line again.
fn starts_line(head: &str) -> bool {
    let mut word: Vec<char> = Vec::with_capacity(5);
    for c in head.chars().rev() {
        if c == '\n' {
            break;
        }
        if c.is_whitespace() || matches!(c, '*' | '#' | '>' | '-' | '_') {
            continue;
        }
        if word.len() == "final".len() {
            return false;
        }
        word.push(c);
    }
    word.is_empty()
        || word
            .iter()
            .rev()
            .collect::<String>()
            .eq_ignore_ascii_case("final")
}

/// The content of the last `\boxed{...}` (braces balanced), with its byte range.
fn last_boxed(text: &str) -> Option<(String, Range<usize>)> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (offset, c) in text.get(start..)?.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let end = start + offset;
                    return Some((text.get(start..end)?.to_string(), start..end));
                }
            }
            _ => {}
        }
    }
    None
}

/// After an `answer` marker: skips `is`, `:`, `*`, spaces and opening brackets, and returns
/// where the answer starts.
fn skip_answer_lead(text: &str, mut at: usize) -> usize {
    loop {
        let rest = text.get(at..).unwrap_or("");
        let Some(c) = rest.chars().next() else {
            return at;
        };
        let minus_sign = c == '-'
            && rest
                .get(1..)
                .and_then(|r| r.chars().next())
                .is_some_and(|n| n.is_ascii_digit());
        if c == ':' || c == '*' || c == ' ' || c == '\t' || c == '=' || (c == '-' && !minus_sign) {
            at += c.len_utf8();
        } else if rest.len() >= 2
            && rest.get(..2).is_some_and(|w| w.eq_ignore_ascii_case("is"))
            && !rest
                .get(2..)
                .and_then(|r| r.chars().next())
                .is_some_and(char::is_alphanumeric)
        {
            at += 2;
        } else {
            return at;
        }
    }
}

fn is_word_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

fn extract_choice(text: &str, options: &[char]) -> Option<Extracted> {
    let letter_at = |at: usize| -> Option<Extracted> {
        let rest = text.get(at..)?;
        let mut chars = rest.char_indices();
        let (mut offset, mut c) = chars.next()?;
        let mut bracketed = false;
        if matches!(c, '(' | '[' | '{') {
            bracketed = true;
            (offset, c) = chars.next()?;
        }
        let upper = c.to_ascii_uppercase();
        if !options.contains(&upper) {
            return None;
        }
        let tail = rest.get(offset + c.len_utf8()..).unwrap_or("");
        let after = tail.chars().next();
        // `ANSWER: Because ...` is not the option B, nor `I'm sure` the option I.
        if !bracketed && (is_word_char(after) || matches!(after, Some('\'' | '’'))) {
            return None;
        }
        if !bracketed {
            // The rest of the letter's line, read only as far as needed: the next marker may
            // be on the same line.
            let mut line_rest = tail.chars().take_while(|&x| x != '\n');
            // A lowercase letter is an option only when nothing but punctuation follows it on
            // its line (`answer: c`), not in prose (`the answer is a multiple of 3`); `I`
            // followed by words (`I think`) is the pronoun.
            if c.is_ascii_lowercase()
                && !line_rest
                    .clone()
                    .all(|x| x.is_whitespace() || matches!(x, '.' | '*' | ')' | ']'))
            {
                return None;
            }
            let next_word = line_rest.find(|x| !x.is_whitespace());
            if upper == 'I' && next_word.is_some_and(char::is_lowercase) {
                return None;
            }
        }
        let start = at + offset;
        Some(Extracted {
            value: upper.to_string(),
            span: start..start + c.len_utf8(),
        })
    };

    // 1. `ANSWER: X`, `The answer is (X)`, `**Answer:** X`: a final answer line first.
    for (_, lead) in answer_markers(text) {
        if let Some(found) = letter_at(lead) {
            return Some(found);
        }
    }
    // 2. `\boxed{X}`.
    if let Some((inner, range)) = last_boxed(text) {
        let trimmed = inner
            .trim()
            .trim_start_matches("\\text{")
            .trim_end_matches('}');
        let mut chars = trimmed.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            let upper = c.to_ascii_uppercase();
            if options.contains(&upper) {
                return Some(Extracted {
                    value: upper.to_string(),
                    span: range,
                });
            }
        }
    }
    // 3. A lone final letter: `... so B`, `(C)`, `D.`
    let trimmed_end = text.trim_end().trim_end_matches(['.', '*', ')', ']']);
    let last = trimmed_end.chars().next_back()?;
    let upper = last.to_ascii_uppercase();
    let start = trimmed_end.len() - last.len_utf8();
    let before = trimmed_end.get(..start).and_then(|b| b.chars().next_back());
    if options.contains(&upper) && !is_word_char(before) && last.is_ascii_uppercase() {
        return Some(Extracted {
            value: upper.to_string(),
            span: start..start + last.len_utf8(),
        });
    }
    // 4. A reply that opens with one option as it was labelled: `B) Red`, `(B) Red`, `B. Red`.
    // Small real models answer this way more often than in any other form.
    opening_label(text, options)
}

/// The option label a reply opens with, when it names no other option the same way (a reply
/// that restates the list, `A) Green B) Red`, has not chosen). `B)` and `(B)` open an answer
/// wherever they stand; `B.` and `B:` also open prose (`A. Smith said`, `C: drive`), so they
/// count only in a short one-line reply such as `D. Orange`.
fn opening_label(text: &str, options: &[char]) -> Option<Extracted> {
    const SHORT_REPLY_WORDS: usize = 6;
    let start = text.len() - text.trim_start().len();
    let rest = text.get(start..)?;
    let (letter_at, letter, close, bracket) = match rest.as_bytes() {
        [b'(', l, b')', ..] => (start + 1, *l, start + 3, true),
        [l, b')', ..] => (start, *l, start + 2, true),
        [l, b'.' | b':', ..] => (start, *l, start + 2, false),
        _ => return None,
    };
    let letter = char::from(letter);
    if !letter.is_ascii_uppercase() || !options.contains(&letter) {
        return None;
    }
    let after_label = text.get(close..).unwrap_or("");
    if after_label
        .chars()
        .next()
        .is_some_and(|c| !c.is_whitespace())
    {
        return None;
    }
    let first_word = after_label.split_whitespace().next();
    // `I) think` and `A: i'm` are prose; an option's text starts like a sentence.
    if first_word.is_some_and(|w| w.chars().next().is_some_and(char::is_lowercase)) {
        return None;
    }
    if !bracket {
        let trimmed = after_label.trim();
        if trimmed.contains('\n') || trimmed.split_whitespace().count() > SHORT_REPLY_WORDS {
            return None;
        }
    }
    // Another option labelled anywhere later, `C)`, `C.` or `C:` after a space, a newline or
    // `(`: the reply restates the list.
    let bytes = text.as_bytes();
    let labels_another = bytes.windows(4).enumerate().any(|(i, w)| {
        let [before, l, mark, next] = w else {
            return false;
        };
        let labelled = match mark {
            b')' => true,
            b'.' | b':' => next.is_ascii_whitespace(),
            _ => false,
        };
        i + 1 != letter_at
            && labelled
            && matches!(before, b' ' | b'\n' | b'\t' | b'(')
            && options.contains(&char::from(*l))
    });
    if labels_another {
        return None;
    }
    Some(Extracted {
        value: letter.to_string(),
        span: letter_at..letter_at + 1,
    })
}

/// Normalises an exact answer: numbers in canonical form, strings lowercased with spaces
/// collapsed and decoration (`$`, `**`, a final period, quotes) removed.
pub fn normalize_exact(raw: &str) -> String {
    let mut s = raw.trim();
    loop {
        let before = s;
        s = s
            .trim_matches(|c: char| c == '$' || c == '*' || c == '`' || c == '"' || c == '\'')
            .trim();
        s = s.strip_suffix('.').unwrap_or(s).trim();
        if let Some(inner) = s.strip_prefix("\\text{").and_then(|r| r.strip_suffix('}')) {
            s = inner.trim();
        }
        if s == before {
            break;
        }
    }
    // Only thousands separators go (`1,234,567`); `1, 2` stays a list.
    let numeric = if is_grouped_number(s) {
        s.replace(',', "")
    } else {
        s.to_string()
    };
    if let Ok(n) = numeric.parse::<f64>() {
        if n.is_finite() {
            if n.fract() == 0.0 && n.abs() < 1e15 {
                return format!("{}", n as i64);
            }
            return format!("{n}");
        }
    }
    cap(&collapse_whitespace(&s.to_lowercase()))
}

/// `1,234` or `-12,345.5`: digits grouped by threes with commas.
fn is_grouped_number(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) || !int.contains(',') {
        return false;
    }
    let groups: Vec<&str> = int.split(',').collect();
    groups
        .first()
        .is_some_and(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()))
        && groups
            .iter()
            .skip(1)
            .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
}

fn extract_exact(text: &str) -> Option<Extracted> {
    let make = |raw: &str, span: Range<usize>| {
        let value = normalize_exact(raw);
        (!value.is_empty()).then_some(Extracted { value, span })
    };
    if let Some((inner, range)) = last_boxed(text) {
        if let Some(found) = make(&inner, range) {
            return Some(found);
        }
    }
    for (_, lead) in answer_markers(text) {
        let line_end = text
            .get(lead..)
            .and_then(|r| r.find('\n'))
            .map_or(text.len(), |i| lead + i);
        if let Some(found) = make(text.get(lead..line_end)?, lead..line_end) {
            return Some(found);
        }
    }
    // The final non-empty line.
    let trimmed = text.trim_end();
    let line_start = trimmed.rfind('\n').map_or(0, |i| i + 1);
    let line = trimmed.get(line_start..)?;
    make(line, line_start..trimmed.len())
}

/// Fenced code blocks: (language tag, code, code byte range).
fn fenced_blocks(text: &str) -> Vec<(String, String, Range<usize>)> {
    let mut blocks = Vec::new();
    let mut search = 0;
    while let Some(open) = text.get(search..).and_then(|r| r.find("```")) {
        let open = search + open;
        let info_start = open + 3;
        let Some(info_end) = text.get(info_start..).and_then(|r| r.find('\n')) else {
            break;
        };
        let info_end = info_start + info_end;
        let code_start = info_end + 1;
        let Some(close) = text.get(code_start..).and_then(|r| r.find("```")) else {
            break;
        };
        let code_end = code_start + close;
        let lang = text
            .get(info_start..info_end)
            .unwrap_or("")
            .trim()
            .to_lowercase();
        let code = text.get(code_start..code_end).unwrap_or("").to_string();
        blocks.push((lang, code, code_start..code_end));
        search = code_end + 3;
    }
    blocks
}

fn extract_code(text: &str, language: Option<&str>) -> Option<Extracted> {
    let blocks = fenced_blocks(text);
    let wanted = language.map(str::to_lowercase);
    let chosen = blocks
        .iter()
        .rev()
        .find(|(lang, _, _)| wanted.as_deref().is_some_and(|w| lang == w))
        .or_else(|| blocks.last())?;
    let normalized: Vec<&str> = chosen.1.lines().map(str::trim_end).collect();
    let value = normalized.join("\n").trim_matches('\n').to_string();
    (!value.is_empty()).then(|| Extracted {
        value,
        span: chosen.2.clone(),
    })
}

fn json_ok(value: &Value, required_keys: &[String]) -> bool {
    if required_keys.is_empty() {
        return true;
    }
    value
        .as_object()
        .is_some_and(|obj| required_keys.iter().all(|k| obj.contains_key(k)))
}

fn extract_json(text: &str, required_keys: &[String]) -> Option<Extracted> {
    let accept = |candidate: &str, span: Range<usize>| -> Option<Extracted> {
        let value: Value = serde_json::from_str(candidate.trim()).ok()?;
        json_ok(&value, required_keys).then(|| Extracted {
            value: value.to_string(),
            span,
        })
    };
    let whole_start = text.len() - text.trim_start().len();
    if let Some(found) = accept(text, whole_start..text.trim_end().len()) {
        return Some(found);
    }
    for (lang, code, range) in fenced_blocks(text).into_iter().rev() {
        if lang.is_empty() || lang == "json" {
            if let Some(found) = accept(&code, range) {
                return Some(found);
            }
        }
    }
    // The first balanced object or array that parses.
    for (start, c) in text.char_indices() {
        if c != '{' && c != '[' {
            continue;
        }
        let mut stream =
            serde_json::Deserializer::from_str(text.get(start..)?).into_iter::<Value>();
        if let Some(Ok(value)) = stream.next() {
            let end = start + stream.byte_offset();
            if json_ok(&value, required_keys) {
                return Some(Extracted {
                    value: value.to_string(),
                    span: start..end,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice() -> Contract {
        Contract::Choice {
            options: "ABCD".chars().collect(),
        }
    }

    fn value(contract: &Contract, text: &str) -> Option<String> {
        contract.extract(text).map(|e| e.value)
    }

    #[test]
    fn choice_answers_in_every_usual_form() {
        let c = choice();
        let cases = [
            ("Reasoning...\nANSWER: B", "B"),
            ("answer: c", "C"),
            ("The answer is (D).", "D"),
            ("**Answer:** A", "A"),
            ("Final Answer: [C]", "C"),
            ("so it must be \\boxed{B}", "B"),
            ("\\boxed{\\text{D}}", "D"),
            ("I think the right option is\n(C)", "C"),
            ("...therefore B.", "B"),
            ("First I thought ANSWER: A but no. ANSWER: D", "D"),
            ("answer is b", "B"),
            ("Final answer: C\nThe answer is a multiple of 3.", "C"),
            ("I think A is wrong; the answer is C", "C"),
            // As SmolLM2-135M answers through llama-server (integration/real).
            ("A) Green", "A"),
            ("B) Red is a primary color.", "B"),
            (" (C) Purple", "C"),
            ("D. Orange", "D"),
            ("B)", "B"),
            ("C: Purple", "C"),
            (
                "B) Red. It is one of the three primary colors of paint.",
                "B",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(value(&c, text).as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn choice_refuses_what_is_not_an_option() {
        let c = choice();
        for text in [
            "ANSWER: E",
            "Answer: Because the sky is blue",
            "I have no idea",
            "The answers are many",
            "",
            "Final: a",
            "the answer is a multiple of 3",
            // Restating the options is not choosing one.
            "A) Green\nB) Red\nC) Purple",
            "A) Green B) Red",
            "(A) Green or (B) Red",
            // Not an option label.
            "A.I. is a field",
            "E) none",
            "a) green",
            // Restated with other marks.
            "A. Green\nB. Red\nC. Purple\nD. Orange",
            "A: Green B: Red",
            "B) Red or (D) Orange",
            // Prose that opens like a label.
            "A. Smith said that the answer depends on the paint you use today",
            "C: drive is full\nplease clean it",
            "A: i'm not sure",
            "B) because red is primary",
        ] {
            assert_eq!(value(&c, text), None, "{text}");
        }
    }

    #[test]
    fn ten_options_do_not_read_pronouns_as_answers() {
        let c = Contract::Choice {
            options: "ABCDEFGHIJ".chars().collect(),
        };
        assert_eq!(
            value(&c, "Final answer: I'm sure it's (C)").as_deref(),
            Some("C")
        );
        assert_eq!(
            value(&c, "ANSWER: I think it is G\nG").as_deref(),
            Some("G")
        );
        assert_eq!(value(&c, "ANSWER: I").as_deref(), Some("I"));
    }

    #[test]
    fn choice_span_points_at_the_letter() {
        let text = "Thinking. ANSWER: (B)";
        let e = choice().extract(text).unwrap();
        assert_eq!(&text[e.span.clone()], "B");
    }

    #[test]
    fn exact_answers_normalise() {
        let c = Contract::Exact;
        let cases = [
            ("work\nANSWER: 1,234", "1234"),
            ("\\boxed{42}", "42"),
            ("The answer is $3.50$.", "3.5"),
            ("ANSWER: **Paris**", "paris"),
            ("lines\n  New   York  ", "new york"),
            ("ANSWER: 7.0", "7"),
            ("ANSWER: 42\n\nThis answer is based on the table.", "42"),
            ("ANSWER: 1, 2", "1, 2"),
            ("ANSWER: -1,234,567.5", "-1234567.5"),
            ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ];
        for (text, want) in cases {
            assert_eq!(value(&c, text).as_deref(), Some(want), "{text}");
        }
        assert_eq!(value(&c, "   "), None);
    }

    #[test]
    fn code_prefers_the_wanted_language() {
        let c = Contract::Code {
            language: Some("python".into()),
        };
        let text = "```bash\nls\n```\nthen\n```python\nprint(1)   \n```\nand ```js\nx\n```";
        assert_eq!(value(&c, text).as_deref(), Some("print(1)"));
        let any = Contract::Code { language: None };
        assert_eq!(value(&any, "```\na\n```").as_deref(), Some("a"));
        assert_eq!(value(&any, "no code"), None);
        assert_eq!(value(&any, "```python\nunterminated"), None);
    }

    #[test]
    fn json_is_found_and_checked() {
        let c = Contract::Json {
            required_keys: vec!["name".into()],
        };
        assert_eq!(
            value(&c, "Sure: ```json\n{\"name\": \"x\", \"a\": 1}\n```").as_deref(),
            Some("{\"a\":1,\"name\":\"x\"}")
        );
        assert_eq!(
            value(&c, "prefix {\"name\": 2} suffix").as_deref(),
            Some("{\"name\":2}")
        );
        assert_eq!(value(&c, "{\"other\": 1}"), None);
        assert_eq!(value(&c, "{broken"), None);
        let any = Contract::Json {
            required_keys: vec![],
        };
        assert_eq!(value(&any, "[1, 2]").as_deref(), Some("[1,2]"));
    }

    #[test]
    fn text_is_the_trimmed_text() {
        assert_eq!(
            value(&Contract::Text, "  Hello   World \n").as_deref(),
            Some("hello world")
        );
        assert!(Contract::Text.check(" ").is_err());
    }

    #[test]
    fn instructions_and_checks() {
        assert!(choice().instruction().unwrap().contains("A, B, C, D"));
        assert!(Contract::Text.instruction().is_none());
        let err = choice().check("nothing").unwrap_err();
        assert!(err.contains("ABCD"));
    }

    /// Found by fuzzing (`fuzz/seeds/contract/slow-answer-markers.txt`): every `answer` marker
    /// re-read its whole line, so a long line of markers took quadratic time (1 MiB of
    /// `answer: ` ran for minutes natively, longer in the VM, and upstream answers may be
    /// megabytes). Markers on one line now cost what the line costs.
    #[test]
    fn many_markers_on_one_line_take_linear_time() {
        let markers = "answer: ".repeat(64 * 1024);
        let lowercase = "answer: a b ".repeat(40 * 1024);
        // About 0.1 s unoptimised; the quadratic reading took more than a minute (no timed
        // assertion: a regression shows as a test that never ends).
        assert_eq!(choice().extract(&markers), None);
        assert_eq!(choice().extract(&lowercase), None);
        assert!(Contract::Exact.extract(&markers).is_some());
        // The bounded look-back still tells a final answer line from prose.
        for (text, want) in [
            ("x\n ** Final  answer: C", Some("C")),
            ("x\n#### final answer: C\nthe answer is B", Some("C")),
            ("x\n> answer: C\nthe final answer: D", Some("C")),
            ("finals answer: C\nsee answer: D", Some("D")),
        ] {
            assert_eq!(value(&choice(), text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn extraction_never_panics_on_odd_text() {
        let odd = [
            "ANSWER:",
            "answer",
            "\\boxed{",
            "\\boxed{}}}",
            "```",
            "```\n",
            "{{{{[[[",
            "ANSWER: 🙂",
            "ß ANSWER:(",
            "\u{0}\u{ffff}",
        ];
        let contracts = [
            choice(),
            Contract::Exact,
            Contract::Code { language: None },
            Contract::Json {
                required_keys: vec![],
            },
            Contract::Text,
        ];
        for c in &contracts {
            for text in odd {
                let _ = c.extract(text);
            }
        }
    }
}
