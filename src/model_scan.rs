//! Finds the top-level `"model"` of a JSON request body while it is still arriving, so a
//! request for a model the plugin does not serve is released to the normal route after its
//! first chunk instead of being buffered whole.
//!
//! The scan only has to be right about where the top-level keys are; the full parse at the
//! end of the body remains the authority for virtual requests.

/// What the scan has learned so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Not enough bytes yet.
    Pending,
    /// The first top-level `model` string.
    Model(String),
    /// The top-level `model` is longer than any configured name.
    LongModel,
    /// The body is not a JSON object, the object ended without `model`, or `model` is not a
    /// string. Only the full parse can say more.
    Unknown,
}

/// Longest key worth capturing; only `model` matters.
const MAX_KEY: usize = 16;
/// Longest model name captured; longer names cannot be virtual (names are capped at 256).
pub const MAX_MODEL: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Key,
    Colon,
    Value,
    CommaOrEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    None,
    Key,
    Model,
}

#[derive(Debug)]
pub struct ModelScanner {
    depth: u32,
    started: bool,
    in_string: bool,
    escape: bool,
    expect: Expect,
    capture: Capture,
    raw: Vec<u8>,
    overflow: bool,
    key_is_model: bool,
    result: Scan,
}

impl Default for ModelScanner {
    fn default() -> Self {
        ModelScanner {
            depth: 0,
            started: false,
            in_string: false,
            escape: false,
            expect: Expect::Key,
            capture: Capture::None,
            raw: Vec::new(),
            overflow: false,
            key_is_model: false,
            result: Scan::Pending,
        }
    }
}

impl ModelScanner {
    pub fn result(&self) -> &Scan {
        &self.result
    }

    /// Feeds the next bytes of the body; returns the result once it is known.
    pub fn feed(&mut self, bytes: &[u8]) -> &Scan {
        let mut rest = bytes;
        while let Some((&b, tail)) = rest.split_first() {
            if self.result != Scan::Pending {
                break;
            }
            self.step(b);
            rest = tail;
            // Inside a string nobody captures (message text: nearly all of a body), only a
            // quote or a backslash can matter, so the bytes between are skipped in one search.
            if self.in_string && !self.escape && self.capture == Capture::None {
                let skip = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                rest = rest.get(skip..).unwrap_or_default();
            }
        }
        &self.result
    }

    fn push_raw(&mut self, b: u8) {
        let cap = match self.capture {
            Capture::Key => MAX_KEY + 2,
            Capture::Model => MAX_MODEL + 2,
            Capture::None => return,
        };
        if self.raw.len() < cap {
            self.raw.push(b);
        } else {
            self.overflow = true;
        }
    }

    fn step(&mut self, b: u8) {
        if self.in_string {
            self.push_raw(b);
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                self.end_capture();
            }
            return;
        }
        if b.is_ascii_whitespace() {
            return;
        }
        if !self.started {
            self.started = true;
            if b != b'{' {
                self.result = Scan::Unknown;
                return;
            }
            self.depth = 1;
            return;
        }
        let top = self.depth == 1;
        match b {
            b'"' => {
                self.in_string = true;
                if top && self.expect == Expect::Key {
                    self.begin_capture(Capture::Key);
                } else if top && self.expect == Expect::Value && self.key_is_model {
                    self.begin_capture(Capture::Model);
                }
                self.push_raw(b);
            }
            b'{' | b'[' => {
                if top && self.expect == Expect::Value && self.key_is_model {
                    self.result = Scan::Unknown;
                }
                self.depth += 1;
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.result = Scan::Unknown;
                } else if self.depth == 1 {
                    self.expect = Expect::CommaOrEnd;
                }
            }
            b':' if top => self.expect = Expect::Value,
            b',' if top => self.expect = Expect::Key,
            _ => {
                if top && self.expect == Expect::Value {
                    if self.key_is_model {
                        // A number or literal where the model name should be.
                        self.result = Scan::Unknown;
                    }
                    self.expect = Expect::CommaOrEnd;
                }
            }
        }
    }

    fn begin_capture(&mut self, capture: Capture) {
        self.capture = capture;
        self.raw.clear();
        self.overflow = false;
    }

    fn end_capture(&mut self) {
        let capture = std::mem::replace(&mut self.capture, Capture::None);
        match capture {
            Capture::None => {
                if self.depth == 1 && self.expect == Expect::Value {
                    self.expect = Expect::CommaOrEnd;
                }
            }
            Capture::Key => {
                self.key_is_model =
                    !self.overflow && json_string(&self.raw).is_some_and(|k| k == "model");
                self.expect = Expect::Colon;
            }
            Capture::Model => {
                self.result = if self.overflow {
                    Scan::LongModel
                } else {
                    match json_string(&self.raw) {
                        Some(model) => Scan::Model(model),
                        None => Scan::Unknown,
                    }
                };
            }
        }
    }
}

/// A JSON string's value, from its quoted text.
fn json_string(raw: &[u8]) -> Option<String> {
    serde_json::from_str(std::str::from_utf8(raw).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_whole(body: &str) -> Scan {
        ModelScanner::default().feed(body.as_bytes()).clone()
    }

    fn scan_bytewise(body: &str) -> Scan {
        let mut s = ModelScanner::default();
        for b in body.as_bytes() {
            s.feed(std::slice::from_ref(b));
        }
        s.result().clone()
    }

    #[test]
    fn finds_top_level_model_anywhere() {
        let cases = [
            (r#"{"model":"a/b","messages":[]}"#, "a/b"),
            (
                r#" { "messages": [{"model": "inner", "content": "}\"{"}], "model" : "x" }"#,
                "x",
            ),
            (r#"{"meta":{"model":"no"},"model":"yes"}"#, "yes"),
            (r#"{"model":"vllm-sr\/auto"}"#, "vllm-sr/auto"),
            (
                r#"{"modelx":"no","n":1,"stream":true,"model":"caf\u00e9"}"#,
                "café",
            ),
            (r#"{"a":[1,{"b":"]"}],"model":"z"}"#, "z"),
        ];
        for (body, want) in cases {
            assert_eq!(scan_whole(body), Scan::Model(want.to_string()), "{body}");
            assert_eq!(scan_bytewise(body), Scan::Model(want.to_string()), "{body}");
        }
    }

    #[test]
    fn unknown_when_no_string_model() {
        for body in [
            r#"{"messages":[]}"#,
            r#"{"model":5}"#,
            r#"{"model":{"name":"x"}}"#,
            r#"[{"model":"x"}]"#,
            "garbage",
        ] {
            assert_eq!(scan_whole(body), Scan::Unknown, "{body}");
        }
    }

    #[test]
    fn pending_until_the_value_is_complete() {
        let mut s = ModelScanner::default();
        assert_eq!(
            s.feed(br#"{"messages":[{"role":"user"}],"mod"#),
            &Scan::Pending
        );
        assert_eq!(s.feed(br#"el":"vllm-"#), &Scan::Pending);
        assert_eq!(s.feed(br#"sr/auto","#), &Scan::Model("vllm-sr/auto".into()));
    }

    #[test]
    fn skipped_string_text_keeps_escapes_across_chunks() {
        let body =
            r#"{"messages":[{"content":"a \\\" } \\\\ \" \"model\": \"no\" ]"}],"model":"yes"}"#;
        assert_eq!(scan_whole(body), Scan::Model("yes".into()));
        assert_eq!(scan_bytewise(body), Scan::Model("yes".into()));
        for cut in 0..body.len() {
            let mut s = ModelScanner::default();
            s.feed(&body.as_bytes()[..cut]);
            assert_eq!(
                s.feed(&body.as_bytes()[cut..]),
                &Scan::Model("yes".into()),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn very_long_names_are_reported_as_long() {
        let body = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL + 10));
        assert_eq!(scan_whole(&body), Scan::LongModel);
    }
}
