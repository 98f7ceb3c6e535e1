//! Bounded, incremental scanners that read audit facts from bodies as they pass.
//!
//! * [`find_model`] reads the top-level `"model"` string of a JSON request from a bounded prefix.
//! * [`UsageScanner`] reads token usage from a JSON response's `usage` object or from an SSE
//!   stream's usage chunk. It never changes a byte, and holds at most one SSE event (or a
//!   [`SCAN_WINDOW`]-byte window of a JSON body) in memory.
//!
//! Both are public so that they can be fuzzed and benchmarked on their own.
//!
//! # Example
//!
//! ```
//! use fastgate_layer::audit::scan::{UsageScanner, find_model};
//!
//! assert_eq!(find_model(br#"{"stream":true,"model":"gpt-x","messages":[]}"#).as_deref(), Some("gpt-x"));
//!
//! let mut scan = UsageScanner::sse();
//! scan.push(b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":3,");
//! scan.push(b"\"completion_tokens\":4,\"total_tokens\":7}}\r\n\r\ndata: [DONE]\n\n");
//! assert_eq!(scan.usage().unwrap().total_tokens, 7);
//! ```

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;

use super::TokenUsage;

/// Largest SSE event, and the JSON window, a scanner holds (64 KiB).
pub const SCAN_WINDOW: usize = 64 * 1024;

/// Bytes of a JSON window kept when the window is full, so that a `usage` object that straddles
/// the boundary is still seen.
const JSON_TAIL: usize = 4 * 1024;

/// Longest model name recorded.
const MAX_MODEL_LEN: usize = 256;

/// Largest token count kept from a backend's `usage` (2^40, about 10^12): a million requests'
/// worth of it still fits a database's signed 64-bit sum.
pub const MAX_TOKENS: u64 = 1 << 40;

static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// The last `"usage": {...}` object in `bytes` with at least one token count.
pub fn extract_usage(bytes: &[u8]) -> Option<TokenUsage> {
    let mut found = None;
    let mut from = 0;
    // `"usage"` plus at least `:{}` must fit in what is left.
    while bytes.len() - from >= 10 {
        let Some(at) = USAGE_KEY.find(&bytes[from..]) else {
            break;
        };
        let rest = skip_ws(&bytes[from + at + 7..]);
        from = bytes.len() - rest.len();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = skip_ws(rest);
        from = bytes.len() - rest.len();
        if rest.first() != Some(&b'{') {
            // `"usage": null` in intermediate chunks: skip the value.
            if rest.starts_with(b"null") {
                from += 4;
            }
            continue;
        }
        let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<UsageJson>();
        if let Some(Ok(u)) = stream.next()
            && (u.prompt_tokens.is_some()
                || u.completion_tokens.is_some()
                || u.total_tokens.is_some())
        {
            // Counts a backend reports are capped: a nonsense value must not overflow a sum
            // here or in the database's rollups (PostgreSQL refuses a bigint overflow, and
            // with it the whole audit batch).
            let cap = |v: u64| v.min(MAX_TOKENS);
            let prompt = cap(u.prompt_tokens.unwrap_or(0));
            let completion = cap(u.completion_tokens.unwrap_or(0));
            found = Some(TokenUsage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: cap(u.total_tokens.unwrap_or(prompt + completion)),
            });
        }
        from += stream.byte_offset().max(1);
    }
    found
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    &b[n..]
}

#[derive(Debug)]
enum Mode {
    Json,
    Sse {
        /// Consecutive line terminators seen with no content between them.
        newlines: u8,
        /// The last terminator was `\r` (a following `\n` belongs to it).
        last_cr: bool,
        /// The current event grew past the window; it is skipped.
        overflow: bool,
    },
}

/// Reads token usage from a response body as it passes. See the [module docs](self).
#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    buf: Vec<u8>,
    usage: Option<TokenUsage>,
}

impl UsageScanner {
    /// A scanner for an `application/json` body.
    pub fn json() -> Self {
        Self {
            mode: Mode::Json,
            buf: Vec::new(),
            usage: None,
        }
    }

    /// A scanner for a `text/event-stream` body.
    pub fn sse() -> Self {
        Self {
            mode: Mode::Sse {
                newlines: 0,
                last_cr: false,
                overflow: false,
            },
            buf: Vec::new(),
            usage: None,
        }
    }

    /// The usage seen so far (for JSON: complete after [`finish`](Self::finish)).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// Bytes currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Look at the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        match self.mode {
            Mode::Json => self.push_json(chunk),
            Mode::Sse { .. } => self.push_sse(chunk),
        }
    }

    /// The body ended: scan what is left.
    pub fn finish(&mut self) {
        if !self.buf.is_empty() {
            if let Mode::Sse { overflow: true, .. } = self.mode {
                self.buf.clear();
                return;
            }
            self.note(extract_usage(&self.buf));
            self.buf.clear();
        }
    }

    /// Scan a whole body that arrived in one piece, without copying it.
    pub fn push_complete(&mut self, body: &[u8]) {
        if self.buf.is_empty() {
            self.note(extract_usage(body));
        } else {
            self.push(body);
            self.finish();
        }
    }

    fn note(&mut self, usage: Option<TokenUsage>) {
        if usage.is_some() {
            self.usage = usage;
        }
    }

    fn push_json(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let take = (SCAN_WINDOW - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() == SCAN_WINDOW {
                let found = extract_usage(&self.buf);
                self.note(found);
                self.buf.drain(..SCAN_WINDOW - JSON_TAIL);
            }
        }
    }

    fn push_sse(&mut self, chunk: &[u8]) {
        let Mode::Sse {
            mut newlines,
            mut last_cr,
            mut overflow,
        } = self.mode
        else {
            return;
        };
        if self.buf.is_empty()
            && newlines == 0
            && !last_cr
            && !overflow
            && (chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n"))
        {
            // The common case: the chunk holds whole events and nothing is pending. Scan it in
            // place (the last usage in it wins, as it would event by event); the state stays fresh.
            let found = scan_event(chunk);
            self.note(found);
            return;
        }
        let mut start = 0; // start of the current event within `chunk`
        let mut pos = 0; // first byte not yet examined
        for i in memchr::memchr2_iter(b'\n', b'\r', chunk) {
            if i > pos {
                newlines = 0;
                last_cr = false;
            }
            pos = i + 1;
            if chunk[i] == b'\n' && last_cr {
                last_cr = false; // second half of CRLF
                if start == i && self.buf.is_empty() {
                    start = pos; // the `\n` of a CRLF that ended the previous event
                }
                continue;
            }
            last_cr = chunk[i] == b'\r';
            newlines += 1;
            if newlines >= 2 {
                newlines = 0;
                let event = &chunk[start..pos];
                if overflow {
                    overflow = false;
                    self.buf.clear();
                } else if self.buf.is_empty() {
                    let found = scan_event(event);
                    self.note(found);
                } else {
                    self.buf.extend_from_slice(event);
                    let found = scan_event(&self.buf);
                    self.note(found);
                    self.buf.clear();
                }
                start = pos;
            }
        }
        if pos < chunk.len() {
            newlines = 0;
            last_cr = false;
        }
        let rest = &chunk[start..];
        if !rest.is_empty() && !overflow {
            if self.buf.len() + rest.len() > SCAN_WINDOW {
                overflow = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(rest);
            }
        }
        self.mode = Mode::Sse {
            newlines,
            last_cr,
            overflow,
        };
    }
}

fn scan_event(event: &[u8]) -> Option<TokenUsage> {
    extract_usage(event)
}

/// The top-level `"model"` string of a JSON object, read from a (possibly truncated) prefix.
///
/// Returns `None` when the prefix is not a JSON object, has no top-level `model` string, or ends
/// before it. Names longer than 256 bytes are cut.
pub fn find_model(json: &[u8]) -> Option<String> {
    let mut p = Cursor { b: json, i: 0 };
    p.ws();
    p.eat(b'{')?;
    loop {
        p.ws();
        if p.peek()? == b'}' {
            return None;
        }
        let (ks, ke) = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        if &json[ks + 1..ke - 1] == b"model" {
            if p.peek()? != b'"' {
                return None;
            }
            let (vs, ve) = p.string()?;
            let raw = &json[vs + 1..ve - 1];
            let mut model: String = if raw.contains(&b'\\') {
                serde_json::from_slice(&json[vs..ve]).ok()?
            } else {
                String::from_utf8(raw.to_vec()).ok()?
            };
            // `\u0000` decodes to a NUL, which PostgreSQL refuses in text: one such request
            // would fail its whole audit batch. Control characters go.
            if model.chars().any(char::is_control) {
                model.retain(|c| !c.is_control());
            }
            if model.len() > MAX_MODEL_LEN {
                let mut cut = MAX_MODEL_LEN;
                while !model.is_char_boundary(cut) {
                    cut -= 1;
                }
                model.truncate(cut);
            }
            return Some(model);
        }
        p.skip_value()?;
        p.ws();
        match p.next()? {
            b',' => {}
            _ => return None,
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }
    /// A string starting at the cursor; returns the byte range including both quotes.
    fn string(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.next()? {
                b'\\' => {
                    self.next()?;
                }
                b'"' => return Some((start, self.i)),
                _ => {}
            }
        }
    }
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek()?,
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'
                ) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}"#;

    #[test]
    fn model_found_after_nested_values() {
        let json = br#" { "messages": [{"role":"user","content":"say \"model\": {x}"}], "n": 1, "stream": true, "model" : "m\u00e9-1", "x": 2}"#;
        assert_eq!(find_model(json).as_deref(), Some("mé-1"));
    }

    #[test]
    fn model_absent_truncated_or_nested() {
        assert_eq!(
            find_model(br#"{"model":"a\u0000b\n\u001fc"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(find_model(br#"{"a":{"model":"inner"}}"#), None);
        assert_eq!(find_model(br#"{"messages":[1,2"#), None);
        assert_eq!(find_model(br#"{"model":"unterminated"#), None);
        assert_eq!(find_model(br#"{"model":42}"#), None);
        assert_eq!(find_model(b"not json"), None);
        assert_eq!(find_model(b""), None);
        let long = format!(r#"{{"model":"{}"}}"#, "x".repeat(1000));
        assert_eq!(find_model(long.as_bytes()).unwrap().len(), 256);
    }

    #[test]
    fn json_usage_whole_and_split() {
        let body = format!(r#"{{"id":"x","choices":[],"usage":{USAGE}}}"#);
        let mut s = UsageScanner::json();
        s.push_complete(body.as_bytes());
        assert_eq!(s.usage().unwrap().total_tokens, 15);

        for split in 1..body.len() {
            let mut s = UsageScanner::json();
            s.push(&body.as_bytes()[..split]);
            s.push(&body.as_bytes()[split..]);
            s.finish();
            assert_eq!(s.usage().unwrap().prompt_tokens, 10, "split at {split}");
        }
    }

    #[test]
    fn json_usage_after_a_large_prefix_is_bounded() {
        let mut s = UsageScanner::json();
        let filler = vec![b' '; 1000];
        s.push(br#"{"content":""#);
        for _ in 0..200 {
            s.push(&filler);
            assert!(s.buffered() <= SCAN_WINDOW);
        }
        s.push(format!(r#"","usage":{USAGE}}}"#).as_bytes());
        s.finish();
        assert_eq!(s.usage().unwrap().completion_tokens, 5);
    }

    fn sse_body(sep: &str) -> String {
        let mut body = String::new();
        for i in 0..3 {
            body.push_str(&format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}],\"usage\":null}}{sep}"
            ));
        }
        body.push_str(&format!("data: {{\"choices\":[],\"usage\":{USAGE}}}{sep}"));
        body.push_str(&format!("data: [DONE]{sep}"));
        body
    }

    #[test]
    fn sse_usage_every_split_both_separators() {
        for sep in ["\n\n", "\r\n\r\n"] {
            let body = sse_body(sep);
            for split in 0..body.len() {
                let mut s = UsageScanner::sse();
                s.push(&body.as_bytes()[..split]);
                s.push(&body.as_bytes()[split..]);
                assert_eq!(
                    s.usage().unwrap().total_tokens,
                    15,
                    "sep {sep:?} split {split}"
                );
                assert_eq!(s.buffered(), 0);
            }
            // Byte by byte.
            let mut s = UsageScanner::sse();
            for b in body.as_bytes() {
                s.push(std::slice::from_ref(b));
            }
            assert_eq!(s.usage().unwrap().prompt_tokens, 10);
        }
    }

    #[test]
    fn sse_single_newlines_do_not_end_an_event() {
        let mut s = UsageScanner::sse();
        s.push(b"event: x\ndata: {\"usage\":\n");
        assert!(s.buffered() > 0);
        s.push(b"data: 1}\n\n");
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn sse_oversized_event_is_skipped_and_memory_bounded() {
        let mut s = UsageScanner::sse();
        let big = vec![b'a'; 1024];
        s.push(b"data: ");
        for _ in 0..100 {
            s.push(&big);
            assert!(s.buffered() <= SCAN_WINDOW);
        }
        s.push(b"\n\n");
        s.push(format!("data: {{\"usage\":{USAGE}}}\n\n").as_bytes());
        assert_eq!(s.usage().unwrap().total_tokens, 15);
    }

    #[test]
    fn nonsense_token_counts_are_capped_not_overflowed() {
        let u = extract_usage(
            br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615}}"#,
        )
        .unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (MAX_TOKENS, MAX_TOKENS, MAX_TOKENS)
        );
    }

    #[test]
    fn usage_without_total_is_summed() {
        let u = extract_usage(br#"{"usage":{"prompt_tokens":2,"completion_tokens":3}}"#).unwrap();
        assert_eq!(u.total_tokens, 5);
        assert!(extract_usage(br#"{"usage":null}"#).is_none());
        assert!(extract_usage(br#"{"usage":{}}"#).is_none());
    }
}
