//! The request's text as the router's text signals see it: one string per scope, built on first
//! use and shared by every signal of the request, with a lowercase copy for case-insensitive
//! matching.

use crate::openai::ChatRequest;
use crate::prompt::content_text;
use serde_json::Value;
use std::cell::OnceCell;

/// Which messages a text signal reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every user turn (the default).
    User,
    /// The latest user turn only.
    LastUser,
    /// System and developer turns.
    System,
    /// Every message, whatever its role.
    All,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::User, Scope::LastUser, Scope::System, Scope::All];

    pub fn parse(name: &str) -> Option<Scope> {
        Some(match name {
            "user" => Scope::User,
            "last_user" => Scope::LastUser,
            "system" => Scope::System,
            "all" => Scope::All,
            _ => return None,
        })
    }

    /// Position in per-scope tables.
    pub(crate) fn index(self) -> usize {
        match self {
            Scope::User => 0,
            Scope::LastUser => 1,
            Scope::System => 2,
            Scope::All => 3,
        }
    }

    fn takes(self, role: &str) -> bool {
        match self {
            Scope::User | Scope::LastUser => role == "user",
            Scope::System => matches!(role, "system" | "developer"),
            Scope::All => true,
        }
    }
}

/// The texts of one request, computed lazily per scope.
pub struct RequestText<'a> {
    messages: &'a [Value],
    original: [OnceCell<String>; 4],
    lowercase: [OnceCell<String>; 4],
    single_user_turn: OnceCell<bool>,
}

impl<'a> RequestText<'a> {
    pub fn new(request: &'a ChatRequest) -> Self {
        let messages = request
            .field("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        RequestText {
            messages,
            original: Default::default(),
            lowercase: Default::default(),
            single_user_turn: OnceCell::new(),
        }
    }

    pub fn messages(&self) -> &'a [Value] {
        self.messages
    }

    pub fn get(&self, scope: Scope) -> &str {
        let scope = self.alias(scope);
        match self.original.get(scope.index()) {
            Some(cell) => cell.get_or_init(|| self.collect(scope)),
            None => "",
        }
    }

    /// Unicode lowercase, so that case-insensitive keywords match beyond ASCII (`ÄRZTLICH`).
    pub fn lowercase(&self, scope: Scope) -> &str {
        let scope = self.alias(scope);
        match self.lowercase.get(scope.index()) {
            Some(cell) => cell.get_or_init(|| self.get(scope).to_lowercase()),
            None => "",
        }
    }

    /// With a single user turn, the last user turn is every user turn: one copy serves both.
    pub(crate) fn alias(&self, scope: Scope) -> Scope {
        if scope == Scope::LastUser
            && *self.single_user_turn.get_or_init(|| {
                self.messages
                    .iter()
                    .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                    .count()
                    == 1
            })
        {
            Scope::User
        } else {
            scope
        }
    }

    fn collect(&self, scope: Scope) -> String {
        fn role(m: &Value) -> &str {
            m.get("role").and_then(Value::as_str).unwrap_or_default()
        }
        let content = |m: &Value| m.get("content").map(content_text).unwrap_or_default();
        if scope == Scope::LastUser {
            return self
                .messages
                .iter()
                .rev()
                .find(|m| role(m) == "user")
                .map(content)
                .unwrap_or_default();
        }
        let parts: Vec<String> = self
            .messages
            .iter()
            .filter(|m| scope.takes(role(m)))
            .map(content)
            .collect();
        parts.join("\n")
    }
}

/// Neither neighbour of `start..end` in `text` is a letter, digit or `_`.
pub fn is_whole_word(text: &str, start: usize, end: usize) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let before = text.get(..start).and_then(|s| s.chars().next_back());
    let after = text.get(end..).and_then(|s| s.chars().next());
    !before.is_some_and(word) && !after.is_some_and(word)
}

/// A rough token count without a tokenizer: about four ASCII characters per token, one token
/// per CJK character, two other non-ASCII characters per token.
pub fn estimate_tokens(text: &str) -> u64 {
    // An ASCII text, the common case, is recognised a word at a time; the count per
    // character is for texts with other scripts.
    if text.is_ascii() {
        return (text.len() as u64).div_ceil(4);
    }
    let mut ascii = 0u64;
    let mut cjk = 0u64;
    let mut other = 0u64;
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else if is_cjk(c) {
            cjk += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(4) + cjk + other.div_ceil(2)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // kana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0x20000..=0x2FA1F) // supplementary ideographs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn scopes_read_string_and_array_content() {
        let req = request(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": [{"type": "text", "text": "SECOND"},
                                              {"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        }));
        let text = RequestText::new(&req);
        assert_eq!(text.get(Scope::User), "first\nSECOND");
        assert_eq!(text.get(Scope::LastUser), "SECOND");
        assert_eq!(text.get(Scope::System), "Be brief.");
        assert_eq!(text.get(Scope::All), "Be brief.\nfirst\nreply\nSECOND");
        assert_eq!(text.lowercase(Scope::LastUser), "second");
    }

    #[test]
    fn token_estimate_counts_scripts_differently() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcdefgh"), 2);
        assert_eq!(estimate_tokens("你好世界"), 4);
        assert_eq!(estimate_tokens("привет"), 3);
        // Mixed: 5 ASCII (2 tokens), 2 CJK, 6 Cyrillic (3).
        assert_eq!(estimate_tokens("abc你好 привет!"), 7);
    }
}
