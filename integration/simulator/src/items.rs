//! Item banks: keyed questions whose key lives only in the simulator (and
//! in whoever wrote the bank), so that a prompt carries nothing but an
//! opaque `[item:TAG]`.
//!
//! ```json
//! {"items": {"q1": {"kind": "mc", "options": "ABCD", "key": "C", "difficulty": 0.4,
//!                   "distractor": "B", "attraction": 0.5},
//!            "q2": {"kind": "exact", "key": "42", "difficulty": -1.0, "topic": "code"}}}
//! ```
//!
//! An item's optional `topic` selects a model's `topic_skills` entry (see
//! [`crate::questions::irt_p`]).
//!
//! Parsing is as strict as the config's: an unknown field, a wrong type or
//! a bad value is an error naming its path (`items.q1.key`). [`find_tag`]
//! finds a request's tag; [`crate::questions::question`] turns the item into
//! the request's [`crate::questions::Question`].

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::config::{err, join, ConfigError, Fields};
use crate::questions::{matches_key, Distractor, Key, DEFAULT_OPTIONS};

/// At most this many items in a bank.
pub const MAX_ITEMS: usize = 200_000;
/// A tag is 1 to 64 of `[A-Za-z0-9_-]`.
pub const MAX_TAG_LEN: usize = 64;
/// What opens a tag in a prompt: `[item:TAG]`.
pub const TAG_OPEN: &str = "[item:";
/// Longest exact key or distractor, in bytes.
const MAX_EXACT_BYTES: usize = 4096;
/// Bound on `difficulty` (catches typos such as `1e9`).
pub const MAX_DIFFICULTY: f64 = 100.0;

/// One item of the bank.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: Key,
    /// The item-response difficulty `d`, if given.
    pub difficulty: Option<f64>,
    /// The attractive wrong answer, if given.
    pub distractor: Option<Distractor>,
    /// The item's topic, if given ([`valid_topic`]).
    pub topic: Option<String>,
}

/// Items by tag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemBank {
    items: HashMap<String, Item>,
}

/// A problem with an item bank, naming the offending path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankError(pub ConfigError);

impl fmt::Display for BankError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.path.is_empty() {
            write!(f, "invalid item bank: {}", self.0.message)
        } else {
            write!(
                f,
                "invalid item bank at `{}`: {}",
                self.0.path, self.0.message
            )
        }
    }
}

impl std::error::Error for BankError {}

/// Whether `tag` is 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_tag(tag: &str) -> bool {
    (1..=MAX_TAG_LEN).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `topic` is a valid topic name: 1 to 64 of `[A-Za-z0-9_-]`, as a
/// tag (an item's `topic`, a key of a model's `topic_skills`).
pub fn valid_topic(topic: &str) -> bool {
    valid_tag(topic)
}

/// What a bad topic name is told.
pub(crate) const TOPIC_RULE: &str =
    "a topic must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'";

impl ItemBank {
    pub fn from_json_str(text: &str) -> Result<ItemBank, BankError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| BankError(err("", format!("not valid JSON: {e}"))))?;
        ItemBank::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<ItemBank, BankError> {
        parse_bank(value).map_err(BankError)
    }

    /// Reads and parses the bank at `path`; the message names the file.
    pub fn load(path: &std::path::Path) -> Result<ItemBank, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read item bank {shown}: {e}"))?;
        ItemBank::from_json_str(&text).map_err(|e| format!("{shown}: {e}"))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The item of `tag`, with the bank's own copy of the tag.
    pub fn get(&self, tag: &str) -> Option<(&str, &Item)> {
        self.items.get_key_value(tag).map(|(t, i)| (t.as_str(), i))
    }
}

fn parse_bank(value: &Value) -> Result<ItemBank, ConfigError> {
    let mut f = Fields::new("", value)?;
    let path = f.path_of("items");
    let map = f
        .take("items")
        .ok_or_else(|| err(&path, "missing required field"))?
        .as_object()
        .ok_or_else(|| err(&path, "expected an object of tag -> item"))?;
    f.finish()?;
    if map.len() > MAX_ITEMS {
        return Err(err(
            &path,
            format!("{} items; at most {MAX_ITEMS} are allowed", map.len()),
        ));
    }
    let mut items = HashMap::with_capacity(map.len());
    for (tag, v) in map {
        let item_path = join(&path, tag);
        if !valid_tag(tag) {
            return Err(err(
                &item_path,
                "a tag must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
            ));
        }
        items.insert(tag.clone(), parse_item(&item_path, v)?);
    }
    Ok(ItemBank { items })
}

/// 2 to 26 distinct capital letters.
fn parse_options(s: &str) -> Option<Vec<char>> {
    let letters: Vec<char> = s.chars().collect();
    let mut sorted = letters.clone();
    sorted.sort_unstable();
    sorted.dedup();
    ((2..=26).contains(&letters.len())
        && sorted.len() == letters.len()
        && letters.iter().all(char::is_ascii_uppercase))
    .then_some(letters)
}

/// One capital letter among `options`.
fn option_letter(path: &str, s: &str, options: &[char]) -> Result<char, ConfigError> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if options.contains(&c) => Ok(c),
        _ => Err(err(
            path,
            format!(
                "expected one of the option letters {}",
                options.iter().collect::<String>()
            ),
        )),
    }
}

/// An exact answer: whitespace collapsed, non-empty, without `answer:`
/// (which would confuse the extraction of the answer from a reply).
fn exact_text(path: &str, s: &str) -> Result<String, ConfigError> {
    let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return Err(err(path, "must not be empty"));
    }
    if text.len() > MAX_EXACT_BYTES {
        return Err(err(path, format!("at most {MAX_EXACT_BYTES} bytes")));
    }
    if text.to_ascii_lowercase().contains("answer:") {
        return Err(err(path, "must not contain `answer:`"));
    }
    Ok(text)
}

fn parse_item(path: &str, v: &Value) -> Result<Item, ConfigError> {
    let mut f = Fields::new(path, v)?;
    let kind_path = f.path_of("kind");
    let kind = f
        .str("kind")?
        .ok_or_else(|| err(&kind_path, "missing required field (mc or exact)"))?;
    let key_path = f.path_of("key");
    let key_text = f
        .str("key")?
        .ok_or_else(|| err(&key_path, "missing required field"))?;
    let key = match kind {
        "mc" => {
            let options = match f.str("options")? {
                None => DEFAULT_OPTIONS.chars().collect(),
                Some(s) => parse_options(s).ok_or_else(|| {
                    err(
                        &f.path_of("options"),
                        "expected 2 to 26 distinct capital letters",
                    )
                })?,
            };
            let answer = option_letter(&key_path, key_text, &options)?;
            Key::Choice { answer, options }
        }
        "exact" => Key::Exact(exact_text(&key_path, key_text)?),
        _ => return Err(err(&kind_path, "expected \"mc\" or \"exact\"")),
    };
    let difficulty = f.opt_f64("difficulty")?;
    if difficulty.is_some_and(|d| d.abs() > MAX_DIFFICULTY) {
        return Err(err(
            &f.path_of("difficulty"),
            format!("must be between -{MAX_DIFFICULTY} and {MAX_DIFFICULTY}"),
        ));
    }
    let distractor_path = f.path_of("distractor");
    let distractor = match f.str("distractor")? {
        None => None,
        Some(s) => Some(match &key {
            Key::Choice { answer, options } => {
                let letter = option_letter(&distractor_path, s, options)?;
                if letter == *answer {
                    return Err(err(&distractor_path, "must differ from the key"));
                }
                letter.to_string()
            }
            Key::Exact(_) => {
                let text = exact_text(&distractor_path, s)?;
                if matches_key(&key, &text) {
                    return Err(err(&distractor_path, "must not match the key"));
                }
                text
            }
        }),
    };
    let attraction_path = f.path_of("attraction");
    let attraction = f.opt_f64("attraction")?;
    if attraction.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
        return Err(err(&attraction_path, "must be a probability in [0, 1]"));
    }
    if attraction.is_some() && distractor.is_none() {
        return Err(err(&attraction_path, "needs a `distractor`"));
    }
    let topic_path = f.path_of("topic");
    let topic = f.str("topic")?.map(str::to_string);
    if topic.as_deref().is_some_and(|t| !valid_topic(t)) {
        return Err(err(&topic_path, TOPIC_RULE));
    }
    f.finish()?;
    Ok(Item {
        key,
        difficulty,
        distractor: distractor.map(|answer| Distractor {
            answer,
            attraction: attraction.unwrap_or(0.0),
        }),
        topic,
    })
}

fn clip(s: &str) -> String {
    s.chars().take(72).collect()
}

/// The item named by the last `[item:TAG]` in `texts` (every text of every
/// message, in order), with the bank's copy of the tag. `Ok(None)` when
/// there is no tag; an error for a malformed tag or one the bank does not
/// hold.
pub fn find_tag<'b>(
    bank: &'b ItemBank,
    texts: &[String],
) -> Result<Option<(&'b str, &'b Item)>, String> {
    let mut found = None;
    for text in texts {
        let mut rest = text.as_str();
        while let Some(start) = rest.find(TAG_OPEN) {
            let after = rest.get(start + TAG_OPEN.len()..).unwrap_or("");
            let end = after
                .get(..after.len().min(MAX_TAG_LEN + 1))
                .and_then(|head| head.find(']'))
                .filter(|&end| valid_tag(after.get(..end).unwrap_or("")))
                .ok_or_else(|| {
                    format!(
                        "malformed item tag `{}` (expected [item:TAG], TAG 1 to 64 of A-Z a-z 0-9 _ -)",
                        clip(rest.get(start..).unwrap_or(""))
                    )
                })?;
            let tag = after.get(..end).unwrap_or("");
            let hit = bank.get(tag).ok_or_else(|| {
                if bank.is_empty() {
                    format!("unknown item tag `{tag}` (no item bank is loaded)")
                } else {
                    format!("unknown item tag `{tag}`")
                }
            })?;
            found = Some(hit);
            rest = after.get(end + 1..).unwrap_or("");
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_path(text: &str) -> String {
        ItemBank::from_json_str(text).unwrap_err().0.path
    }

    #[test]
    fn parses_both_kinds() {
        let bank = ItemBank::from_json_str(
            r#"{"items": {
                "q1": {"kind": "mc", "options": "ABCDE", "key": "C", "difficulty": 0.4,
                       "distractor": "B", "attraction": 0.5},
                "q-2_x": {"kind": "exact", "key": "  New   York ", "difficulty": -1.0,
                          "distractor": "Boston"},
                "q3": {"kind": "mc", "key": "A", "topic": "code_2-x"}}}"#,
        )
        .unwrap();
        assert_eq!(bank.len(), 3);
        let (tag, q1) = bank.get("q1").unwrap();
        assert_eq!(tag, "q1");
        assert_eq!(
            q1.key,
            Key::Choice {
                answer: 'C',
                options: "ABCDE".chars().collect()
            }
        );
        assert_eq!(q1.difficulty, Some(0.4));
        assert_eq!(
            q1.distractor,
            Some(Distractor {
                answer: "B".into(),
                attraction: 0.5
            })
        );
        let (_, q2) = bank.get("q-2_x").unwrap();
        assert_eq!(q2.key, Key::Exact("New York".into()));
        assert_eq!(q2.distractor.as_ref().unwrap().attraction, 0.0);
        let (_, q3) = bank.get("q3").unwrap();
        assert_eq!(q3.difficulty, None);
        assert_eq!(q3.distractor, None);
        assert_eq!(q3.topic.as_deref(), Some("code_2-x"));
        assert_eq!(q1.topic, None);
        assert!(bank.get("q4").is_none());
    }

    #[test]
    fn errors_name_the_path() {
        let item = |body: &str| format!(r#"{{"items": {{"t": {body}}}}}"#);
        for (body, path) in [
            (r#"{"kind": "mc", "key": "E"}"#, "items.t.key"),
            (r#"{"kind": "mc", "key": "b"}"#, "items.t.key"),
            (r#"{"kind": "mc", "key": "AB"}"#, "items.t.key"),
            (r#"{"kind": "mc"}"#, "items.t.key"),
            (r#"{"kind": "mc", "key": 3}"#, "items.t.key"),
            (r#"{"key": "A"}"#, "items.t.kind"),
            (r#"{"kind": "essay", "key": "A"}"#, "items.t.kind"),
            (
                r#"{"kind": "mc", "key": "A", "options": "AA"}"#,
                "items.t.options",
            ),
            (
                r#"{"kind": "mc", "key": "A", "options": "A"}"#,
                "items.t.options",
            ),
            (
                r#"{"kind": "mc", "key": "A", "difficulty": "hard"}"#,
                "items.t.difficulty",
            ),
            (
                r#"{"kind": "mc", "key": "A", "difficulty": 1e9}"#,
                "items.t.difficulty",
            ),
            (
                r#"{"kind": "mc", "key": "A", "distractor": "A"}"#,
                "items.t.distractor",
            ),
            (
                r#"{"kind": "mc", "key": "A", "distractor": "Z"}"#,
                "items.t.distractor",
            ),
            (
                r#"{"kind": "mc", "key": "A", "distractor": "B", "attraction": 1.5}"#,
                "items.t.attraction",
            ),
            (
                r#"{"kind": "mc", "key": "A", "attraction": 0.5}"#,
                "items.t.attraction",
            ),
            (
                r#"{"kind": "mc", "key": "A", "colour": "red"}"#,
                "items.t.colour",
            ),
            (
                r#"{"kind": "exact", "key": "42", "options": "ABCD"}"#,
                "items.t.options",
            ),
            (r#"{"kind": "exact", "key": "   "}"#, "items.t.key"),
            (
                r#"{"kind": "exact", "key": "the answer: 4"}"#,
                "items.t.key",
            ),
            (
                r#"{"kind": "exact", "key": "42", "distractor": "42.0"}"#,
                "items.t.distractor",
            ),
            (r#"{"kind": "mc", "key": "A", "topic": 3}"#, "items.t.topic"),
            (
                r#"{"kind": "mc", "key": "A", "topic": ""}"#,
                "items.t.topic",
            ),
            (
                r#"{"kind": "mc", "key": "A", "topic": "two words"}"#,
                "items.t.topic",
            ),
            (r#"[]"#, "items.t"),
        ] {
            assert_eq!(error_path(&item(body)), path, "{body}");
        }
        assert_eq!(
            error_path(r#"{"items": {"bad tag": {"kind": "mc", "key": "A"}}}"#),
            "items.bad tag"
        );
        let long = "x".repeat(65);
        assert_eq!(
            error_path(&format!(
                r#"{{"items": {{"{long}": {{"kind": "mc", "key": "A"}}}}}}"#
            )),
            format!("items.{long}")
        );
        assert_eq!(error_path(r#"{"items": []}"#), "items");
        assert_eq!(error_path(r#"{}"#), "items");
        assert_eq!(error_path(r#"{"items": {}, "extra": 1}"#), "extra");
        assert_eq!(error_path(r#"nope"#), "");
        let e = ItemBank::from_json_str(&item(r#"{"kind": "mc", "key": "E"}"#)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid item bank at `items.t.key`: "),
            "{e}"
        );
    }

    #[test]
    fn finds_the_last_tag() {
        let bank = ItemBank::from_json_str(
            r#"{"items": {"a": {"kind": "mc", "key": "A"}, "b": {"kind": "exact", "key": "7"}}}"#,
        )
        .unwrap();
        let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(find_tag(&bank, &texts(&["no tag here"])).unwrap(), None);
        let (tag, _) = find_tag(&bank, &texts(&["x [item:a] y", "<q-1>\n[item:b]\n</q-1>"]))
            .unwrap()
            .unwrap();
        assert_eq!(tag, "b");
        assert!(find_tag(&bank, &texts(&["[item:c]"]))
            .unwrap_err()
            .contains("unknown"));
        for bad in ["[item:a b]", "[item:]", "[item:a", "[item:é]"] {
            assert!(
                find_tag(&bank, &texts(&[bad]))
                    .unwrap_err()
                    .contains("malformed"),
                "{bad}"
            );
        }
        let long = format!("[item:{}]", "a".repeat(65));
        assert!(find_tag(&bank, &texts(&[&long])).is_err());
        let empty = ItemBank::default();
        assert!(find_tag(&empty, &texts(&["[item:a]"]))
            .unwrap_err()
            .contains("no item bank"));
    }
}
