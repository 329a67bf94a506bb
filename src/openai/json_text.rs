//! JSON text of the gateway's own prompts, written with a string escaper that skips eight
//! bytes a step. The prompts quote the client's question whole, so at 128 KB escaping it
//! byte by byte (serde_json's writer) was a third of a ReMoM or Fusion request's work.
//! The output is byte for byte what `serde_json::to_string` writes.

use serde_json::value::RawValue;
use serde_json::Value;

/// `value` as compact JSON text, as [`serde_json::value::to_raw_value`] would write it.
pub fn to_raw(value: &Value) -> Option<Box<RawValue>> {
    let mut out = String::with_capacity(text_len_hint(value));
    write_value(&mut out, value);
    // Checks the text once more (a skim, about a byte a step): RawValue has no unchecked
    // constructor, and the text is right by construction.
    RawValue::from_string(out).ok()
}

/// Room for the text: the strings' lengths, with a little for quotes, escapes and syntax.
fn text_len_hint(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len().saturating_add(s.len() / 16).saturating_add(2),
        Value::Array(items) => items
            .iter()
            .map(text_len_hint)
            .fold(2, usize::saturating_add),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.len().saturating_add(4).saturating_add(text_len_hint(v)))
            .fold(2, usize::saturating_add),
        _ => 8,
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Whether one of the eight bytes of `word` is a control character, `"` or `\`.
fn needs_escape(word: u64) -> bool {
    // The classic has-less-than test: the high bit of some byte is set when a byte is below
    // `n` (n <= 128; exact for "some byte", all that is asked). A byte equal to `c` is below 1
    // once xored with `c`.
    let below = |v: u64, n: u64| v.wrapping_sub(LOW_BITS * n) & !v;
    let quote = word ^ (LOW_BITS * u64::from(b'"'));
    let backslash = word ^ (LOW_BITS * u64::from(b'\\'));
    (below(word, 0x20) | below(quote, 1) | below(backslash, 1)) & HIGH_BITS != 0
}

/// The escape serde_json writes for `byte`, if it needs one.
fn escape(byte: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
        "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
        "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    match byte {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        _ => CONTROL.get(usize::from(byte)).copied(),
    }
}

/// `text` as a JSON string, quotes included.
fn write_str(out: &mut String, text: &str) {
    out.push('"');
    let bytes = text.as_bytes();
    // Start of the text not yet written. Escaped bytes are ASCII, so it always sits on a
    // character boundary.
    let mut run = 0;
    let mut escape_in = |out: &mut String, from: usize, part: &[u8]| {
        for (at, escaped) in part
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| Some((from + i, escape(b)?)))
        {
            out.push_str(text.get(run..at).unwrap_or_default());
            out.push_str(escaped);
            run = at + 1;
        }
    };
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    for (n, word) in words.enumerate() {
        let word_bits = <[u8; 8]>::try_from(word).map_or(u64::MAX, u64::from_le_bytes);
        if needs_escape(word_bits) {
            escape_in(out, n * 8, word);
        }
    }
    escape_in(out, bytes.len() - tail.len(), tail);
    out.push_str(text.get(run..).unwrap_or_default());
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same_as_serde_json(value: &Value) {
        let ours = to_raw(value).unwrap();
        assert_eq!(
            ours.get(),
            serde_json::to_string(value).unwrap(),
            "{value:?}"
        );
    }

    #[test]
    fn every_byte_that_needs_an_escape_at_every_position() {
        let specials: Vec<char> = (0u8..0x20).map(char::from).chain(['"', '\\']).collect();
        for special in specials {
            for position in 0..20 {
                let mut text: String = "aé😀 bcdefghijklmnop".chars().take(position).collect();
                text.push(special);
                text.push_str("tail\u{7f}");
                same_as_serde_json(&Value::String(text));
            }
        }
    }

    #[test]
    fn the_word_test_finds_what_the_byte_test_finds() {
        // Every byte value in every lane, beside bytes that sit near the boundaries.
        for lane in 0..8 {
            for byte in 0..=255u8 {
                for fill in [b'a', 0x1f + 1, b'"' + 1, b'\\' - 1, 0x80, 0xff] {
                    let mut word = [fill; 8];
                    word[lane] = byte;
                    let want = word.iter().any(|&b| escape(b).is_some());
                    assert_eq!(needs_escape(u64::from_le_bytes(word)), want, "{word:?}");
                }
            }
        }
    }

    #[test]
    fn whole_prompts_with_every_kind_of_value() {
        let long = "line one\n\t\"quoted\" \\ back\u{1}slash ünïcode 😀 ".repeat(300);
        same_as_serde_json(&json!([
            {"role": "system", "content": long},
            {"role": "user", "content": [{"type": "text", "text": "x"}], "name": null},
            {"n": [1, -2, 3.5, 1e300, 0.1, true, false], "": {}, "empty": [], "k\"ey": "v"}
        ]));
        same_as_serde_json(&json!(""));
        same_as_serde_json(&json!(u64::MAX));
        same_as_serde_json(&json!(i64::MIN));
    }
}
