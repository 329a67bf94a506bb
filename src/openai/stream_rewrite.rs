//! Rewrites an upstream's SSE stream on its way to the client, chunk by chunk, so that the
//! final step of a recipe can stream for real instead of being buffered.
//!
//! Each `data:` event is a `chat.completion.chunk`; the rewriter gives it the gateway's `id`,
//! `created` and `model`, keeps only the fields the buffered reply keeps, adds the usage of
//! every earlier sub-call to the upstream's usage chunk (the final call always asks for one),
//! and drops that chunk when the client did not ask for usage. A stream that ends without
//! `[DONE]`, or without any choice, or that sends an event which is not a chunk, gets a
//! well-formed error event, so a client never mistakes a cut or empty answer for a whole one;
//! the error event carries the usage so far when the client asked for usage. Events can be split anywhere across chunks, inside UTF-8 characters included:
//! only complete lines are rewritten, the rest waits for the next chunk.

use super::Usage;
use serde_json::{json, Map, Value};

/// A line longer than this is not SSE from a model: the stream is ended with an error.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Top-level chunk fields passed to the client; provider extensions could reveal what stands
/// behind the virtual model.
const KEPT_FIELDS: &[&str] = &["choices", "usage", "system_fingerprint", "service_tier"];

#[derive(Debug)]
pub struct StreamRewriter {
    id: String,
    model: String,
    created: u64,
    earlier_usage: Usage,
    client_wants_usage: bool,
    /// Bytes of an unfinished line.
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline: a line that arrives in many small
    /// chunks is searched once, not once per chunk.
    scanned: usize,
    upstream_usage: Option<Usage>,
    /// A chunk with at least one choice went by: the stream carries an answer.
    saw_choice: bool,
    saw_done: bool,
    /// The stream was ended early (oversized line); later bytes are dropped.
    broken: bool,
}

impl StreamRewriter {
    /// `earlier_usage` sums the sub-calls that ran before the final one.
    pub fn new(
        id: String,
        model: String,
        created: u64,
        earlier_usage: Usage,
        client_wants_usage: bool,
    ) -> Self {
        StreamRewriter {
            id,
            model,
            created,
            earlier_usage,
            client_wants_usage,
            pending: Vec::new(),
            scanned: 0,
            upstream_usage: None,
            saw_choice: false,
            saw_done: false,
            broken: false,
        }
    }

    /// The final call's own usage, once its usage chunk went by.
    pub fn upstream_usage(&self) -> Option<Usage> {
        self.upstream_usage
    }

    /// Whether the upstream ended its stream properly with `[DONE]`.
    pub fn is_complete(&self) -> bool {
        self.saw_done
    }

    /// Rewrites the next chunk of the upstream body; returns what to send to the client.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.broken || self.saw_done {
            return out;
        }
        self.pending.extend_from_slice(chunk);
        let mut consumed = 0;
        let mut from = self.scanned;
        while let Some(newline) = self
            .pending
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let end = from + newline;
            let line = self.pending.get(consumed..end).unwrap_or_default().to_vec();
            consumed = end + 1;
            from = consumed;
            self.line(&line, &mut out);
            if self.saw_done || self.broken {
                break;
            }
        }
        self.pending.drain(..consumed.min(self.pending.len()));
        // What is left is the start of a line without its newline.
        self.scanned = self.pending.len();
        if self.pending.len() > MAX_LINE_BYTES {
            self.pending.clear();
            self.scanned = 0;
            self.broken = true;
            out.extend(self.error_event("the upstream sent an oversized stream event"));
        }
        out
    }

    /// The upstream body ended; returns the last bytes for the client.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.broken && !self.saw_done && !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line(&line, &mut out);
        }
        if !self.saw_done && !self.broken {
            self.broken = true;
            out.extend(
                self.error_event("the upstream stream ended before the answer was complete"),
            );
        }
        out
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Some(data) = line
            .strip_prefix(b"data:")
            .map(|d| d.strip_prefix(b" ").unwrap_or(d))
        else {
            // Blank lines end events; comments and other fields carry nothing of the
            // upstream's identity, but only blank lines are needed to keep framing.
            if line.is_empty() {
                out.push(b'\n');
            }
            return;
        };
        if data == b"[DONE]" {
            if !self.saw_choice {
                self.broken = true;
                out.extend(self.error_event("the upstream stream ended without an answer"));
                return;
            }
            self.saw_done = true;
            if self.client_wants_usage && self.upstream_usage.is_none() {
                // The upstream ignored `include_usage`: the client still learns what the
                // earlier calls used.
                let chunk = json!({"id": self.id, "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "choices": [],
                    "usage": self.earlier_usage.to_json()});
                out.extend(format!("data: {chunk}\n\n").into_bytes());
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
            return;
        }
        // Invalid UTF-8 is replaced, as every event-stream decoder does, so a stray byte costs
        // one character, not the answer.
        let parsed = match std::str::from_utf8(data) {
            Ok(text) => serde_json::from_str::<Value>(text),
            Err(_) => serde_json::from_str::<Value>(&String::from_utf8_lossy(data)),
        };
        let chunk = match parsed {
            Ok(Value::Object(chunk)) if chunk.contains_key("error") => {
                // The upstream's message may name hosts or clusters: it stays in the gateway.
                self.broken = true;
                out.extend(self.error_event("the upstream reported an error mid-stream"));
                return;
            }
            Ok(Value::Object(chunk)) if chunk.get("choices").is_some_and(Value::is_array) => chunk,
            _ => {
                // Not a chunk (garbage, a wrong shape): never forwarded as is.
                self.broken = true;
                out.extend(self.error_event("the upstream sent an invalid stream event"));
                return;
            }
        };
        if let Some(rewritten) = self.rewrite(chunk) {
            out.extend_from_slice(b"data: ");
            out.extend(rewritten.to_string().into_bytes());
            out.push(b'\n');
        }
    }

    /// The chunk as the client sees it; `None` when it should be dropped.
    fn rewrite(&mut self, mut chunk: Map<String, Value>) -> Option<Value> {
        let usage = chunk.remove("usage").and_then(|u| Usage::from_json(&u));
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("object".into(), json!("chat.completion.chunk"));
        out.insert("created".into(), json!(self.created));
        out.insert("model".into(), json!(self.model));
        for field in KEPT_FIELDS {
            if let Some(value) = chunk.remove(*field) {
                out.insert((*field).to_string(), value);
            }
        }
        let has_choices = out
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        self.saw_choice |= has_choices;
        if let Some(usage) = usage {
            // Providers that report usage on several chunks report running totals: the
            // last one counts.
            self.upstream_usage = Some(usage);
            if self.client_wants_usage {
                let mut total = self.earlier_usage;
                total.add(&usage);
                out.insert("usage".into(), total.to_json());
            } else if !has_choices {
                return None;
            }
        }
        Some(Value::Object(out))
    }
}

impl StreamRewriter {
    /// An SSE error event followed by `[DONE]`, the way OpenAI-compatible clients expect a
    /// stream to fail after it started. The tokens billed so far ride along, as they do next
    /// to a buffered error, when the client asked for usage.
    fn error_event(&self, message: &str) -> Vec<u8> {
        let mut error = json!({"error": {"message": message, "type": "upstream_error",
                                         "param": null, "code": "stream_interrupted"}});
        if let (true, Value::Object(obj)) = (self.client_wants_usage, &mut error) {
            let mut total = self.earlier_usage;
            if let Some(upstream) = &self.upstream_usage {
                total.add(upstream);
            }
            obj.insert("usage".into(), total.to_json());
        }
        format!("data: {error}\n\ndata: [DONE]\n\n").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter(wants_usage: bool) -> StreamRewriter {
        let earlier = Usage {
            prompt_tokens: 100,
            completion_tokens: 50,
            total_tokens: 150,
            ..Usage::default()
        };
        StreamRewriter::new(
            "chatcmpl-gw".into(),
            "vllm-sr/auto".into(),
            7,
            earlier,
            wants_usage,
        )
    }

    const UPSTREAM: &str = "data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"sim-large\",\"provider_x\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
        data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"sim-large\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"naïve 日本\"}}]}\n\n\
        : keep-alive\n\n\
        data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"sim-large\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
        data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"sim-large\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}\n\n\
        data: [DONE]\n\n";

    fn events(bytes: &[u8]) -> Vec<Value> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| {
                if d == "[DONE]" {
                    json!("[DONE]")
                } else {
                    serde_json::from_str(d).unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn chunks_get_the_gateway_identity_and_the_total_usage() {
        let mut r = rewriter(true);
        let mut out = r.feed(UPSTREAM.as_bytes());
        out.extend(r.finish());
        let events = events(&out);
        assert_eq!(events.len(), 5);
        for chunk in &events[..4] {
            assert_eq!(chunk["id"], "chatcmpl-gw");
            assert_eq!(chunk["model"], "vllm-sr/auto");
            assert_eq!(chunk["created"], 7);
            assert!(chunk.get("provider_x").is_none());
        }
        assert_eq!(events[1]["choices"][0]["delta"]["content"], "naïve 日本");
        assert_eq!(events[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(
            events[3]["usage"],
            json!({"prompt_tokens": 110, "completion_tokens": 55, "total_tokens": 165})
        );
        assert_eq!(events[4], "[DONE]");
        assert!(r.is_complete());
        assert_eq!(r.upstream_usage().unwrap().total_tokens, 15);
        assert!(!String::from_utf8(out).unwrap().contains("sim-large"));
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_output() {
        let mut whole = rewriter(true);
        let mut expected = whole.feed(UPSTREAM.as_bytes());
        expected.extend(whole.finish());
        let bytes = UPSTREAM.as_bytes();
        for size in [1, 2, 3, 7, 64] {
            let mut r = rewriter(true);
            let mut out = Vec::new();
            for piece in bytes.chunks(size) {
                out.extend(r.feed(piece));
            }
            out.extend(r.finish());
            assert_eq!(out, expected, "chunks of {size} bytes");
        }
    }

    #[test]
    fn the_usage_chunk_is_dropped_when_the_client_did_not_ask() {
        let mut r = rewriter(false);
        let mut out = r.feed(UPSTREAM.as_bytes());
        out.extend(r.finish());
        let events = events(&out);
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e.get("usage").is_none()));
        assert_eq!(r.upstream_usage().unwrap().total_tokens, 15);
    }

    #[test]
    fn a_cut_stream_ends_with_an_error_event() {
        let cut = UPSTREAM.find("data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"sim-large\",\"choices\":[{\"index\":0,\"delta\":{},").unwrap();
        let mut r = rewriter(true);
        let mut out = r.feed(&UPSTREAM.as_bytes()[..cut + 20]);
        out.extend(r.finish());
        let events = events(&out);
        let last_two = &events[events.len() - 2..];
        assert_eq!(last_two[0]["error"]["code"], "stream_interrupted");
        assert_eq!(last_two[1], "[DONE]");
        assert!(!r.is_complete());
    }

    #[test]
    fn garbage_and_upstream_errors_are_never_forwarded() {
        for bad in [
            "data: not json\n\n",
            "data: {\"error\":{\"message\":\"cluster outbound|443||secret-host failed\"}}\n\n",
        ] {
            let mut r = rewriter(true);
            let mut out = r.feed(bad.as_bytes());
            out.extend(r.feed(UPSTREAM.as_bytes()));
            out.extend(r.finish());
            let text = String::from_utf8(out).unwrap();
            assert!(
                !text.contains("secret-host") && !text.contains("not json"),
                "{text}"
            );
            let events = events(text.as_bytes());
            assert!(events[0]["error"].is_object());
            assert_eq!(events.last().unwrap(), "[DONE]");
            assert_eq!(events.len(), 2, "nothing after the error: {text}");
        }
    }

    #[test]
    fn a_wrong_shape_or_an_empty_stream_is_an_error_that_reports_the_usage() {
        for bad in [
            "data: {\"unexpected\":true}\n\ndata: [DONE]\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":0,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
            "data: [DONE]\n\n",
        ] {
            let mut r = rewriter(true);
            let mut out = r.feed(bad.as_bytes());
            out.extend(r.finish());
            let events = events(&out);
            let error = events.iter().find(|e| e.get("error").is_some()).unwrap();
            assert_eq!(error["error"]["code"], "stream_interrupted", "{bad}");
            let billed = 150 + r.upstream_usage().map_or(0, |u| u.total_tokens);
            assert_eq!(error["usage"]["total_tokens"], billed, "{bad}");
            assert_eq!(events.last().unwrap(), "[DONE]");
            assert!(!r.is_complete());
        }
        // Without the client's `include_usage`, the error carries no usage.
        let mut r = rewriter(false);
        let out = r.feed(b"data: {\"unexpected\":true}\n\n");
        assert!(events(&out)[0].get("usage").is_none());
    }

    #[test]
    fn invalid_utf8_in_an_event_is_replaced_not_fatal() {
        let mut r = rewriter(false);
        let mut input = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a".to_vec();
        input.extend([0xff, 0xfe]);
        input.extend(b"b\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        let mut out = r.feed(&input);
        out.extend(r.finish());
        let events = events(&out);
        assert_eq!(
            events[0]["choices"][0]["delta"]["content"],
            "a\u{FFFD}\u{FFFD}b"
        );
        assert!(r.is_complete());
    }

    #[test]
    fn an_oversized_line_ends_the_stream() {
        let mut r = rewriter(true);
        let mut out = r.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"");
        out.extend(r.feed(&vec![b'a'; MAX_LINE_BYTES + 1]));
        out.extend(r.feed(UPSTREAM.as_bytes()));
        out.extend(r.finish());
        let events = events(&out);
        assert_eq!(events.len(), 2);
        assert!(events[0]["error"].is_object());
    }

    /// Found while writing the `sse` fuzz target (whose inputs have too few chunks to show
    /// it): every chunk searched the whole unfinished line again, so a long line dripped in
    /// small chunks took quadratic time (a 1000 KiB line in 16-byte chunks: 45 s natively).
    /// Each byte is now searched once.
    #[test]
    fn a_long_line_in_small_chunks_takes_linear_time() {
        let mut body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'a', 1000 * 1024));
        body.extend_from_slice(b"\"}}]}\n\ndata: [DONE]\n\n");
        // Well under a second unoptimised; the repeated search took more than ten natively (no
        // timed assertion: a regression shows as a test that takes minutes).
        let mut r = rewriter(false);
        let mut out = Vec::new();
        for piece in body.chunks(64) {
            out.extend(r.feed(piece));
        }
        out.extend(r.finish());
        let events = events(&out);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0]["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::len),
            Some(1000 * 1024)
        );
        assert!(r.is_complete());
    }

    #[test]
    fn without_an_upstream_usage_chunk_the_earlier_usage_is_still_reported() {
        let mut r = rewriter(true);
        let input = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let mut out = r.feed(input.as_bytes());
        out.extend(r.finish());
        let events = events(&out);
        assert_eq!(events[1]["usage"]["total_tokens"], 150);
        assert_eq!(events[2], "[DONE]");
    }

    #[test]
    fn crlf_framing_and_data_without_a_space_are_read() {
        let mut r = rewriter(false);
        let input = "data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let mut out = r.feed(input.as_bytes());
        out.extend(r.finish());
        let events = events(&out);
        assert_eq!(events[0]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(events[1], "[DONE]");
        assert!(r.is_complete());
    }
}
