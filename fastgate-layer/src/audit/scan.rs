//! Bounded, incremental scanners that read audit facts from bodies as they pass.
//!
//! * [`ModelScanner`] reads the top-level `"model"` string of a JSON request as it streams,
//!   wherever it is in the body, holding no body bytes ([`find_model`]: the same on a whole body).
//! * [`UsageScanner`] reads token usage from a JSON response's `usage` object or from an SSE
//!   stream's usage chunk. It never changes a byte, and holds at most one SSE event (or a
//!   [`SCAN_WINDOW`]-byte window of a JSON body) in memory.
//!   A `gzip` or `deflate` body reaches it decoded through
//!   [`DecodingScanner`](super::decode::DecodingScanner).
//!
//! They are public so that they can be fuzzed and benchmarked on their own.
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

use memchr::memmem::{Finder, FinderRev};
use serde::Deserialize;

use super::TokenUsage;

/// Largest SSE event, and the JSON window, a [`UsageScanner`] holds (64 KiB). The request's model
/// is not limited to it: [`ModelScanner`] holds no body bytes and reads the whole body.
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
static EVAL_COUNT_KEY: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"eval_count\""));
static PROMPT_EVAL_COUNT_KEY: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"prompt_eval_count\""));

/// The counts of one `usage` object. Nested objects (`prompt_tokens_details`,
/// `input_tokens_details`, …) and other fields are skipped.
#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    /// OpenAI's Responses API and Anthropic's Messages API.
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    /// Anthropic: input written to and read from its prompt cache, not counted in
    /// `input_tokens` (the Responses API counts its cached tokens inside `input_tokens`).
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl UsageJson {
    /// The prompt's tokens: `prompt_tokens`, or `input_tokens` plus Anthropic's cached input.
    fn prompt(&self) -> Option<u64> {
        self.prompt_tokens.or_else(|| {
            self.input_tokens.map(|n| {
                n.saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
                    .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
            })
        })
    }
}

/// Token counts as reported, each one `None` until a backend reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    prompt: Option<u64>,
    completion: Option<u64>,
    total: Option<u64>,
}

impl Counts {
    /// The counts, if there is one. Counts a backend reports are capped: a nonsense value must
    /// not overflow a sum here or in the database's rollups (PostgreSQL refuses a bigint
    /// overflow, and with it the whole audit batch).
    fn new(prompt: Option<u64>, completion: Option<u64>, total: Option<u64>) -> Option<Self> {
        let cap = |v: Option<u64>| v.map(|v| v.min(MAX_TOKENS));
        (prompt.is_some() || completion.is_some() || total.is_some()).then(|| Self {
            prompt: cap(prompt),
            completion: cap(completion),
            total: cap(total),
        })
    }

    /// `later` over `self`, count by count: a stream may report its counts in several objects
    /// (Anthropic: `input_tokens` in `message_start`, the final `output_tokens` in
    /// `message_delta`). A total reported before a count changed is stale: it is then derived.
    fn merge(self, later: Self) -> Self {
        let changed = later.prompt.is_some() || later.completion.is_some();
        Self {
            prompt: later.prompt.or(self.prompt),
            completion: later.completion.or(self.completion),
            total: later.total.or(if changed { None } else { self.total }),
        }
    }

    fn usage(self) -> TokenUsage {
        let sum = self
            .prompt
            .unwrap_or(0)
            .saturating_add(self.completion.unwrap_or(0));
        TokenUsage {
            prompt_tokens: self.prompt,
            completion_tokens: self.completion,
            total_tokens: self.total.unwrap_or(sum.min(MAX_TOKENS)),
        }
    }
}

/// The counts of the `"usage": {...}` objects in `bytes` (a later one's counts over an earlier
/// one's); without one, the last `"prompt_eval_count"` / `"eval_count"` of Ollama's native API
/// (its final object, or NDJSON line, carries them at the top level).
///
/// `prompt_tokens` is also read from `input_tokens`, `completion_tokens` from `output_tokens`
/// (OpenAI's Responses API, Anthropic's Messages API). A count not reported stays `None`; a
/// total not reported is the sum of the others.
pub fn extract_usage(bytes: &[u8]) -> Option<TokenUsage> {
    extract_counts(bytes).map(Counts::usage)
}

fn extract_counts(bytes: &[u8]) -> Option<Counts> {
    extract_openai_usage(bytes).or_else(|| extract_ollama_counts(bytes))
}

/// The number after the last `key` (a quoted name) and a colon in `bytes`.
fn last_count(bytes: &[u8], key: &FinderRev<'_>, key_len: usize) -> Option<u64> {
    let at = key.rfind(bytes)?;
    let rest = skip_ws(&bytes[at + key_len..]);
    let rest = skip_ws(rest.strip_prefix(b":")?);
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    // The number must end inside what was seen: a body cut after `"eval_count":29` of 290
    // does not count 29.
    let ended = rest
        .get(digits)
        .is_some_and(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'));
    if digits == 0 || digits > 19 || !ended {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn extract_ollama_counts(bytes: &[u8]) -> Option<Counts> {
    let completion = last_count(bytes, &EVAL_COUNT_KEY, b"\"eval_count\"".len());
    let prompt = last_count(
        bytes,
        &PROMPT_EVAL_COUNT_KEY,
        b"\"prompt_eval_count\"".len(),
    );
    Counts::new(prompt, completion, None)
}

fn extract_openai_usage(bytes: &[u8]) -> Option<Counts> {
    let mut found: Option<Counts> = None;
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
            && let Some(counts) = Counts::new(
                u.prompt(),
                u.completion_tokens.or(u.output_tokens),
                u.total_tokens,
            )
        {
            found = Some(found.map_or(counts, |f| f.merge(counts)));
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
        /// The current event grew past the window: only its head and tail are kept
        /// ([`EVENT_HEAD`], [`EVENT_TAIL`]).
        overflow: bool,
    },
}

/// Reads token usage from a response body as it passes, and notes when the stream's terminal
/// event has passed ([`terminal`](Self::terminal)). See the [module docs](self).
#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    buf: Vec<u8>,
    usage: Option<Counts>,
    /// An NDJSON stream (Ollama's native API): its `"done":true` line is looked for.
    lines: bool,
    /// The terminal event (`data: [DONE]`, or the `"done":true` line) has passed whole.
    terminal: bool,
}

impl UsageScanner {
    fn with_mode(mode: Mode, lines: bool) -> Self {
        Self {
            mode,
            buf: Vec::new(),
            usage: None,
            lines,
            terminal: false,
        }
    }

    /// A scanner for an `application/json` body.
    pub fn json() -> Self {
        Self::with_mode(Mode::Json, false)
    }

    /// A scanner for an NDJSON stream (`application/x-ndjson`, Ollama's native API): read as
    /// one JSON text for its usage (the last counts win), and its final line, the one with
    /// `"done":true`, is the stream's [`terminal`](Self::terminal) event.
    pub fn ndjson() -> Self {
        Self::with_mode(Mode::Json, true)
    }

    /// A scanner for a `text/event-stream` body.
    pub fn sse() -> Self {
        Self::with_mode(
            Mode::Sse {
                newlines: 0,
                last_cr: false,
                overflow: false,
            },
            false,
        )
    }

    /// The usage seen so far (for JSON: complete after [`finish`](Self::finish)).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(Counts::usage)
    }

    /// Whether the stream's terminal event has passed whole: an SSE event whose data is
    /// `[DONE]` (OpenAI's Chat Completions; `data:[DONE]` too), an SSE event of a terminal type
    /// (OpenAI's Responses API: `response.completed`, `response.failed`, `response.incomplete`;
    /// Anthropic's Messages API: `message_stop`), or an NDJSON stream's line with `"done":true`
    /// (Ollama's last object) up to its newline. A client may close the connection as soon as
    /// it has read it, before the backend ends the body.
    ///
    /// `[DONE]` counts only as an event's whole `data` line, not as text inside a JSON value
    /// (where a `\n` before `data:` would be escaped). An event's type is its `event:` field
    /// (`event: response.completed`), or the top-level `"type"` its data starts with
    /// (`data: {"type":"response.completed",…`); the name as text elsewhere in the data (a
    /// delta's text) does not count. Only the last event's own lines are looked at, a few bytes
    /// each: its data is not parsed. Ollama's key is looked for as its Go encoder writes it,
    /// `"done":true`, without spaces; inside a string its quotes would be escaped.
    pub fn terminal(&self) -> bool {
        self.terminal
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
                self.note(scan_event(overflow_tail(&self.buf)));
                self.buf.clear();
                return;
            }
            self.note(extract_counts(&self.buf));
            self.buf.clear();
        }
    }

    /// Scan a whole body that arrived in one piece, without copying it.
    pub fn push_complete(&mut self, body: &[u8]) {
        if self.buf.is_empty() {
            self.note(extract_counts(body));
        } else {
            self.push(body);
            self.finish();
        }
    }

    fn note(&mut self, counts: Option<Counts>) {
        if let Some(counts) = counts {
            self.usage = Some(self.usage.map_or(counts, |u| u.merge(counts)));
        }
    }

    fn push_json(&mut self, mut chunk: &[u8]) {
        let last = chunk.last().copied();
        while !chunk.is_empty() {
            let take = (SCAN_WINDOW - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() == SCAN_WINDOW {
                let found = extract_counts(&self.buf);
                self.note(found);
                self.buf.drain(..SCAN_WINDOW - JSON_TAIL);
            }
        }
        if let Some(last) = last {
            // The terminal line has passed once its newline has, and only while it is the last
            // whole line that passed.
            self.terminal = self.lines && last == b'\n' && is_done_line(&self.buf);
        }
    }

    /// An SSE event (or, on the fast path, several whole ones) has passed.
    #[inline]
    fn event(&mut self, event: &[u8]) {
        let found = scan_event(event);
        self.note(found);
        // Only while it is the last event that passed (a backend may send more after it).
        self.terminal = is_terminal_event(event);
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
            // place (the last usage in it wins, as it would event by event; `[DONE]` is the
            // last event of a stream); the state stays fresh.
            self.event(chunk);
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
                    // An event too large to hold (a Responses API `response.completed` repeats
                    // the whole answer): its head says whether it is the terminal event, its
                    // tail holds the usage (the response object's last members).
                    overflow = false;
                    keep_overflow(&mut self.buf, event);
                    self.note(scan_event(overflow_tail(&self.buf)));
                    self.terminal = last_event_has_terminal_type(overflow_head(&self.buf));
                    self.buf.clear();
                } else if self.buf.is_empty() {
                    self.event(event);
                } else {
                    self.buf.extend_from_slice(event);
                    let held = std::mem::take(&mut self.buf);
                    self.event(&held);
                    self.buf = held;
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
        if !rest.is_empty() {
            // Part of another event passed after the last whole one.
            self.terminal = false;
        }
        if !rest.is_empty() {
            if overflow {
                keep_overflow(&mut self.buf, rest);
            } else if self.buf.len() + rest.len() > SCAN_WINDOW {
                overflow = true;
                // Keep the event's first bytes (its `event:` line and the start of its data) and
                // its last ones; one allocation per oversized event.
                let mut kept = Vec::with_capacity(EVENT_HEAD + 2 * EVENT_TAIL);
                let held = self.buf.len().min(EVENT_HEAD);
                let taken = (EVENT_HEAD - held).min(rest.len());
                kept.extend_from_slice(&self.buf[..held]);
                kept.extend_from_slice(&rest[..taken]);
                keep_overflow(&mut kept, &self.buf[held..]);
                keep_overflow(&mut kept, &rest[taken..]);
                self.buf = kept;
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

/// Ollama's last NDJSON line has it (see [`UsageScanner::terminal`]).
static DONE_TRUE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"done\":true"));
/// Every other line of Ollama's has it.
static DONE_FALSE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"done\":false"));

/// Whether the last whole line at the end of `buf` (which ends with its newline) is Ollama's
/// final object: it holds `"done":true` and not `"done":false` (a line that is not the last has
/// `"done":false`, and may hold `"done":true` inside a tool call's arguments, which Ollama writes
/// as a JSON object). Only the part of the line still in the scan window is looked at.
fn is_done_line(buf: &[u8]) -> bool {
    let Some(line) = buf.strip_suffix(b"\n") else {
        return false;
    };
    let line = &line[memchr::memrchr(b'\n', line).map_or(0, |i| i + 1)..];
    DONE_TRUE_KEY.find(line).is_some() && DONE_FALSE_KEY.find(line).is_none()
}

fn scan_event(event: &[u8]) -> Option<Counts> {
    // Ollama's counts come in JSON / NDJSON, never in SSE: not looked for here.
    extract_openai_usage(event)
}

/// Whether the last event in `events` (whole events, ending with their blank line) is
/// `data: [DONE]`: a `data:` field at the start of a line, one optional space, `[DONE]`, then
/// only the line ends. A few byte compares at the end of the slice.
fn is_done_event(events: &[u8]) -> bool {
    let Some(rest) = events.trim_ascii_end().strip_suffix(b"[DONE]") else {
        return false;
    };
    let rest = rest.strip_suffix(b" ").unwrap_or(rest);
    let Some(rest) = rest.strip_suffix(b"data:") else {
        return false;
    };
    matches!(rest.last(), None | Some(b'\n' | b'\r'))
}

/// Bytes of an SSE event larger than the [`SCAN_WINDOW`] kept from its start, to tell whether it
/// is the terminal event: its first lines (`event: response.completed`,
/// `data: {"type":"response.completed",…`).
const EVENT_HEAD: usize = 256;

/// Bytes of an SSE event larger than the [`SCAN_WINDOW`] kept from its end, where its usage is
/// read: a Responses API response object ends with `usage`, then `user` and `metadata` (at most
/// 16 pairs of 64 + 512 characters).
const EVENT_TAIL: usize = 16 * 1024;

/// Add `piece` of an oversized event to what is kept of it in `kept`: its first [`EVENT_HEAD`]
/// bytes (already there), then at least its last [`EVENT_TAIL`] bytes and at most twice that
/// (the bytes in between are dropped only every `EVENT_TAIL` bytes or so: amortised O(piece)).
fn keep_overflow(kept: &mut Vec<u8>, piece: &[u8]) {
    if piece.len() >= EVENT_TAIL {
        kept.truncate(EVENT_HEAD);
        kept.extend_from_slice(&piece[piece.len() - EVENT_TAIL..]);
        return;
    }
    if kept.len() + piece.len() > EVENT_HEAD + 2 * EVENT_TAIL {
        // Then `kept` holds more than `EVENT_HEAD + EVENT_TAIL` bytes: `from` is past the head.
        let from = kept.len() - (EVENT_TAIL - piece.len());
        kept.drain(EVENT_HEAD..from);
    }
    kept.extend_from_slice(piece);
}

/// The head of what [`keep_overflow`] kept.
fn overflow_head(kept: &[u8]) -> &[u8] {
    &kept[..kept.len().min(EVENT_HEAD)]
}

/// The tail of what [`keep_overflow`] kept (possibly starting inside a JSON string: `"usage"`
/// there is a key all the same, as a string's own quotes are escaped).
fn overflow_tail(kept: &[u8]) -> &[u8] {
    kept.get(EVENT_HEAD..).unwrap_or_default()
}

/// Types of the events that end a stream, besides `data: [DONE]`: OpenAI's Responses API's
/// last event (a response done, failed, or cut short) and Anthropic's Messages API's.
const TERMINAL_TYPES: [&[u8]; 4] = [
    b"response.completed",
    b"response.failed",
    b"response.incomplete",
    b"message_stop",
];

/// Whether the last event in `events` (whole events, ending with their blank line) is the
/// stream's terminal event (see [`UsageScanner::terminal`]).
#[inline]
fn is_terminal_event(events: &[u8]) -> bool {
    is_done_event(events) || last_event_has_terminal_type(events)
}

/// Whether the last event in `events` is of a terminal type: its `event:` field names one, or
/// its data starts with a JSON object whose first member is `"type"` naming one. `events` may
/// also be the head of one event whose last line is cut.
///
/// The event's lines are walked from its end back to the blank line before it (one `memrchr`
/// over the event), and only a few bytes at the start of each are compared: no allocation, and
/// the data is not parsed.
fn last_event_has_terminal_type(events: &[u8]) -> bool {
    // The event without its blank line.
    let trail = events
        .iter()
        .rev()
        .take_while(|&&c| matches!(c, b'\n' | b'\r'))
        .count();
    let event = &events[..events.len() - trail];
    let mut end = event.len();
    let mut event_type: Option<&[u8]> = None;
    let mut first_data: Option<&[u8]> = None;
    loop {
        let start = memchr::memrchr2(b'\n', b'\r', &event[..end]).map_or(0, |i| i + 1);
        let line = &event[start..end];
        if line.is_empty() {
            break; // the blank line that ended the event before, or the start of `events`
        }
        // A field's value loses one leading space (the SSE spec); a later `event:` line wins.
        let value = |name: &[u8]| {
            line.strip_prefix(name)
                .map(|v| v.strip_prefix(b" ").unwrap_or(v))
        };
        if let Some(v) = value(b"event:") {
            event_type = event_type.or(Some(v));
        } else if let Some(v) = value(b"data:") {
            first_data = Some(v); // walking backwards: the first one is seen last
        }
        if start == 0 {
            break;
        }
        // Step back over this line's terminator (`\n`, `\r` or `\r\n`).
        end = start - 1;
        if event[end] == b'\n' && end > 0 && event[end - 1] == b'\r' {
            end -= 1;
        }
    }
    event_type.is_some_and(|t| TERMINAL_TYPES.contains(&t))
        || first_data.is_some_and(data_has_terminal_type)
}

/// Whether `data` starts with a JSON object whose first member is `"type"` naming a terminal
/// event (`{"type":"message_stop"}`; whitespace allowed between the tokens).
fn data_has_terminal_type(data: &[u8]) -> bool {
    let Some(rest) = skip_ws(data).strip_prefix(b"{") else {
        return false;
    };
    let Some(rest) = skip_ws(rest).strip_prefix(b"\"type\"") else {
        return false;
    };
    let Some(rest) = skip_ws(rest).strip_prefix(b":") else {
        return false;
    };
    let Some(rest) = skip_ws(rest).strip_prefix(b"\"") else {
        return false;
    };
    TERMINAL_TYPES.iter().any(|t| {
        rest.strip_prefix(*t)
            .is_some_and(|r| r.first() == Some(&b'"'))
    })
}

/// The top-level `"model"` string of a JSON object: [`ModelScanner`] over a whole (or truncated)
/// body in one piece.
///
/// Returns `None` when the body is not a JSON object, has no top-level `model` string, or ends
/// before it. Names longer than 256 bytes are cut.
pub fn find_model(json: &[u8]) -> Option<String> {
    let mut scan = ModelScanner::new();
    scan.push(json);
    scan.into_model()
}

/// `b"model"`, the key looked for.
const MODEL_KEY: &[u8] = b"model";

/// `b"stream"`, the other key looked for.
const STREAM_KEY: &[u8] = b"stream";

/// [`State::KeyStr`]'s `matched` once the key cannot be `model` (or `stream`).
const NO_MATCH: u8 = u8::MAX;

/// Reads the top-level `"model"` string of a JSON request body as it passes, in any number of
/// frames split anywhere (inside a key, a value, an escape sequence or a UTF-8 character).
///
/// A resumable byte-level state machine: it never holds body bytes, only a few dozen bytes of
/// state plus the model name itself (at most 256 bytes kept), whatever the size of the body and
/// wherever in it `model` comes. Each byte is looked at once at most; strings (message contents,
/// base64 images) are crossed eight bytes at a time, then with `memchr`. A `"model"` key nested in
/// another value, or the text `"model"` inside a string, does not count; only the first top-level
/// one does.
///
/// It also notes whether the request asks for a stream: a top-level `"stream": true`
/// ([`stream`](Self::stream)). It stops once it knows both (the model found, and `stream` seen
/// with any value), at the end of the object, or as soon as the body is clearly not a JSON object
/// or is malformed; a model found before that is kept.
///
/// Keys are compared as raw bytes: a key spelled with escapes (`"mod\u0065l"`) is not taken for
/// `model` (no client writes it so, and it keeps the key state to a counter).
///
/// The model's value is decoded as `serde_json` decodes a string (escapes, surrogate pairs, UTF-8
/// validation; a value that is not a valid JSON string gives no model), except that a value
/// without any `\` may hold raw control characters. Control characters are then dropped, and the
/// name is cut at a character boundary to at most 256 bytes.
///
/// ```
/// use fastgate_layer::audit::scan::ModelScanner;
///
/// let mut scan = ModelScanner::new();
/// scan.push(br#"{"messages":[{"role":"user","content":"a \"model\": here"}],"mo"#);
/// assert!(!scan.is_done());
/// scan.push(br#"del":"gpt-\u00e9","stream":true,"n":1}"#);
/// assert!(scan.is_done());
/// assert_eq!(scan.model(), Some("gpt-é"));
/// assert!(scan.stream());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ModelScanner {
    state: State,
    value: ModelValue,
    /// The model was read: `value.out`.
    found: bool,
    /// The model was moved out ([`take_model`](Self::take_model)).
    taken: bool,
    /// `stream` was seen: whether its value is `true`.
    stream: Option<bool>,
}

/// Which of the keys looked for a key is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Key {
    #[default]
    Other,
    Model,
    Stream,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Before the object's `{`.
    #[default]
    Start,
    /// After `{` or `,`: a key's opening quote (or `}`: no model).
    Key,
    /// In a key; `matched` bytes of it equal the start of `model`, or of `stream` when `stream`
    /// (its first byte decides; `NO_MATCH`: it is neither).
    KeyStr { matched: u8, stream: bool },
    /// In a key, after a `\`: the escaped byte is skipped.
    KeyEscape,
    /// After a key, before `:`.
    Colon { key: Key },
    /// After `:`, before the value.
    Value { key: Key },
    /// In the value of `stream`, `matched` (1 to 3) bytes of `true` read.
    StreamTrue { matched: u8 },
    /// In a top-level number, `true`, `false` or `null` that is skipped.
    Scalar,
    /// In a top-level array or object that is skipped, outside strings; `depth` ≥ 1.
    Skip { depth: usize },
    /// In a string of a skipped value (`depth` 0: the value is this string); `escape`: after a `\`.
    SkipStr { depth: usize, escape: bool },
    /// After a skipped value: `,` (or the end of the object: no model).
    Next,
    /// In the model's string value ([`ModelValue`]).
    Model,
    /// The model was found and `stream` seen (or, in the body's last piece, no `stream` key can
    /// follow): nothing more to read.
    Found,
    /// No model: not an object, malformed, no top-level `model` string, or a value that is not a
    /// valid string.
    Failed,
}

/// The model's string value, decoded as it streams.
#[derive(Debug, Clone, Default)]
struct ModelValue {
    /// The name so far: control characters dropped, at most `MAX_MODEL_LEN` bytes.
    out: String,
    /// `out` is complete (the next character did not fit); the rest is only validated.
    full: bool,
    /// The start of a UTF-8 character cut by the end of a frame (`utf8_len` bytes).
    utf8: [u8; 4],
    utf8_len: u8,
    /// Where in an escape sequence the value is.
    esc: Esc,
    /// The value has a `\`: it is read as `serde_json` reads a string, which refuses raw control
    /// characters (a value without one was read as plain UTF-8, which allows them).
    escaped: bool,
    /// The value has a raw byte below 0x20.
    raw_control: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Esc {
    /// Not in an escape.
    #[default]
    None,
    /// After `\` (`high`: a leading surrogate before it, which only `\u` may follow).
    Start { high: Option<u16> },
    /// After `\u` and `digits` hex digits making `code`.
    Hex {
        high: Option<u16>,
        digits: u8,
        code: u16,
    },
    /// After a leading surrogate: its trailing surrogate's `\` must come.
    Low { high: u16 },
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl ModelScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the answers are known: the model found and `stream` seen, or the object
    /// ended, or the body cannot be a JSON object. Further [`push`](Self::push)es do nothing.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Found | State::Failed)
    }

    /// The model, once found.
    pub fn model(&self) -> Option<&str> {
        (self.found && !self.taken).then_some(self.value.out.as_str())
    }

    /// The model, if it was found.
    pub fn into_model(self) -> Option<String> {
        (self.found && !self.taken).then_some(self.value.out)
    }

    /// The model, once found, moved out (the scanner goes on for `stream`); `None` afterwards.
    pub fn take_model(&mut self) -> Option<String> {
        if !self.found || self.taken {
            return None;
        }
        self.taken = true;
        Some(std::mem::take(&mut self.value.out))
    }

    /// Whether the body so far has a top-level `"stream": true`.
    pub fn stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The state after the model or `stream` became known.
    fn known(&self) -> State {
        if self.stream.is_some() && self.found {
            State::Found
        } else {
            State::Next
        }
    }

    /// Heap bytes held (the model name's buffer): never more than a few hundred.
    pub fn buffered(&self) -> usize {
        self.value.out.capacity()
    }

    /// Look at the next piece of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.scan(chunk, false);
    }

    /// Look at the last piece of the body: once the model is read, the rest is crossed only if
    /// it holds the text `"stream"` (without it, no top-level `stream` key can follow), so a
    /// body with its model first and no `stream` key costs no more than it did before `stream`
    /// was looked for.
    pub fn push_last(&mut self, chunk: &[u8]) {
        self.scan(chunk, true);
    }

    fn scan(&mut self, chunk: &[u8], last: bool) {
        let mut state = self.state;
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            state = match state {
                State::Start => match b {
                    b'{' => State::Key,
                    _ if is_ws(b) => state,
                    _ => State::Failed,
                },
                State::Key => match b {
                    b'"' => State::KeyStr {
                        matched: 0,
                        stream: false,
                    },
                    _ if is_ws(b) => state,
                    _ => State::Failed,
                },
                State::KeyStr { matched, stream } => {
                    let rest = &chunk[i..];
                    let n = quote_or_backslash(rest).unwrap_or(rest.len());
                    // The key's first byte tells which of the two it may be.
                    let stream = if matched == 0 && n > 0 {
                        rest[0] == b's'
                    } else {
                        stream
                    };
                    let want = if stream { STREAM_KEY } else { MODEL_KEY };
                    let end = usize::from(matched) + n;
                    let matched = if matched != NO_MATCH
                        && end <= want.len()
                        && rest[..n] == want[usize::from(matched)..end]
                    {
                        end as u8
                    } else {
                        NO_MATCH
                    };
                    i += n + 1;
                    state = match rest.get(n) {
                        None => State::KeyStr { matched, stream },
                        Some(b'"') => State::Colon {
                            // Only the first of each counts.
                            key: match (usize::from(matched) == want.len(), stream) {
                                (true, false) if !self.found => Key::Model,
                                (true, true) if self.stream.is_none() => Key::Stream,
                                _ => Key::Other,
                            },
                        },
                        Some(_) => State::KeyEscape,
                    };
                    continue;
                }
                State::KeyEscape => State::KeyStr {
                    matched: NO_MATCH,
                    stream: false,
                },
                State::Colon { key } => match b {
                    b':' => State::Value { key },
                    _ if is_ws(b) => state,
                    _ => State::Failed,
                },
                State::Value { key: Key::Model } => match b {
                    b'"' => State::Model,
                    _ if is_ws(b) => state,
                    _ => State::Failed,
                },
                State::Value { key: Key::Stream } => match b {
                    b't' => State::StreamTrue { matched: 1 },
                    _ if is_ws(b) => state,
                    _ => {
                        // `false`, `null`, anything else: not a stream; skipped as any value.
                        self.stream = Some(false);
                        state = State::Value { key: Key::Other };
                        continue;
                    }
                },
                State::StreamTrue { matched } => {
                    if b == b"true"[usize::from(matched)] {
                        if matched == 3 {
                            self.stream = Some(true);
                            self.known()
                        } else {
                            State::StreamTrue {
                                matched: matched + 1,
                            }
                        }
                    } else {
                        // Not `true` (a malformed value): skipped as a scalar.
                        self.stream = Some(false);
                        state = State::Scalar;
                        continue;
                    }
                }
                State::Value { key: Key::Other } => match b {
                    b'"' => State::SkipStr {
                        depth: 0,
                        escape: false,
                    },
                    b'{' | b'[' => State::Skip { depth: 1 },
                    _ if is_ws(b) => state,
                    _ => {
                        // A scalar (or nothing, as in `"a":,`, which was always let pass):
                        // this byte may already end it.
                        state = State::Scalar;
                        continue;
                    }
                },
                State::Scalar => {
                    if matches!(b, b',' | b'}' | b']') || is_ws(b) {
                        state = State::Next;
                        continue;
                    }
                    state
                }
                State::Skip { mut depth } => {
                    // The structure between the strings of a skipped value, in a tight loop.
                    let rest = &chunk[i..];
                    let mut n = 0;
                    state = loop {
                        let Some(&c) = rest.get(n) else {
                            break State::Skip { depth };
                        };
                        n += 1;
                        match c {
                            b'"' => {
                                break State::SkipStr {
                                    depth,
                                    escape: false,
                                };
                            }
                            b'{' | b'[' => depth += 1,
                            b'}' | b']' if depth == 1 => break State::Next,
                            b'}' | b']' => depth -= 1,
                            _ => {}
                        }
                    };
                    i += n;
                    continue;
                }
                State::SkipStr {
                    depth,
                    escape: true,
                } => State::SkipStr {
                    depth,
                    escape: false,
                },
                State::SkipStr {
                    depth,
                    escape: false,
                } => {
                    let rest = &chunk[i..];
                    let Some(n) = quote_or_backslash(rest) else {
                        break;
                    };
                    i += n + 1;
                    state = match (rest[n], depth) {
                        (b'"', 0) => State::Next,
                        (b'"', _) => State::Skip { depth },
                        _ => State::SkipStr {
                            depth,
                            escape: true,
                        },
                    };
                    continue;
                }
                State::Next => match b {
                    b',' => State::Key,
                    _ if is_ws(b) => state,
                    _ => State::Failed,
                },
                State::Model => {
                    let (used, end) = self.value.read(&chunk[i..]);
                    i += used;
                    state = match end {
                        None => State::Model,
                        Some(true) => {
                            self.found = true;
                            if last
                                && self.stream.is_none()
                                && memchr::memmem::find(&chunk[i..], b"\"stream\"").is_none()
                            {
                                State::Found
                            } else {
                                self.known()
                            }
                        }
                        Some(false) => State::Failed,
                    };
                    continue;
                }
                State::Found | State::Failed => break,
            };
            i += 1;
        }
        self.state = state;
    }
}

/// The first `"` or `\` in `b`. Keys and most skipped strings are short: eight bytes at a time
/// in a register finds their end before `memchr` would have set up; a long string (a message, an
/// image) goes on with `memchr`.
#[inline]
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    let head = b.len().min(32);
    let mut words = b[..head].chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        // A byte of `q` or `s` is zero where `w` has a quote or a backslash; the lowest high bit
        // set below marks the first such byte exactly (borrows only give false marks above it).
        let (q, s) = (w ^ QUOTES, w ^ BACKSLASHES);
        let hit = ((q.wrapping_sub(ONES) & !q) | (s.wrapping_sub(ONES) & !s)) & (ONES << 7);
        if hit != 0 {
            return Some(at + (hit.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if let Some(n) = words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
    {
        return Some(at + n);
    }
    memchr::memchr2(b'"', b'\\', &b[head..]).map(|n| n + head)
}

impl ModelValue {
    /// Reads the value from `rest`: the bytes used (all, unless the value ended) and, once it
    /// ended, whether it is a valid string.
    fn read(&mut self, rest: &[u8]) -> (usize, Option<bool>) {
        let mut i = 0;
        while let Some(&b) = rest.get(i) {
            let esc = self.esc;
            if esc == Esc::None {
                let run = &rest[i..];
                let n = quote_or_backslash(run).unwrap_or(run.len());
                if n > 0 && !self.raw(&run[..n]) {
                    return (i + n, Some(false));
                }
                i += n + 1;
                match run.get(n) {
                    None => return (rest.len(), None),
                    // A UTF-8 character cut short by the quote or the backslash.
                    Some(_) if self.utf8_len > 0 => return (i, Some(false)),
                    Some(b'"') => return (i, Some(!(self.escaped && self.raw_control))),
                    Some(_) => {
                        self.escaped = true;
                        self.esc = Esc::Start { high: None };
                    }
                }
                continue;
            }
            i += 1;
            let ok = match esc {
                Esc::None => true,
                Esc::Start { high } => {
                    let c = match b {
                        b'u' => {
                            self.esc = Esc::Hex {
                                high,
                                digits: 0,
                                code: 0,
                            };
                            continue;
                        }
                        _ if high.is_some() => None,
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        _ => None,
                    };
                    self.esc = Esc::None;
                    self.push_some(c)
                }
                Esc::Hex { high, digits, code } => match char::from(b).to_digit(16) {
                    None => false,
                    Some(d) => {
                        let code = (code << 4) | d as u16;
                        if digits < 3 {
                            self.esc = Esc::Hex {
                                high,
                                digits: digits + 1,
                                code,
                            };
                            continue;
                        }
                        self.esc = Esc::None;
                        // As serde_json: surrogates must come in pairs.
                        let c = match (high, code) {
                            (None, 0xD800..=0xDBFF) => {
                                self.esc = Esc::Low { high: code };
                                continue;
                            }
                            (None, 0xDC00..=0xDFFF) => None,
                            (None, _) => char::from_u32(u32::from(code)),
                            (Some(high), 0xDC00..=0xDFFF) => char::from_u32(
                                0x1_0000
                                    + ((u32::from(high) - 0xD800) << 10)
                                    + (u32::from(code) - 0xDC00),
                            ),
                            (Some(_), _) => None,
                        };
                        self.push_some(c)
                    }
                },
                Esc::Low { high } => {
                    self.esc = Esc::Start { high: Some(high) };
                    b == b'\\'
                }
            };
            if !ok {
                return (i, Some(false));
            }
        }
        (i, None)
    }

    /// Raw bytes of the value (no `"` or `\` among them); false if they are not UTF-8.
    fn raw(&mut self, mut run: &[u8]) -> bool {
        if self.utf8_len > 0 {
            // Complete the character the last frame cut.
            let have = usize::from(self.utf8_len);
            let width = match self.utf8[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - have).min(run.len());
            self.utf8[have..have + take].copy_from_slice(&run[..take]);
            run = &run[take..];
            if have + take < width {
                self.utf8_len = (have + take) as u8;
                return true;
            }
            self.utf8_len = 0;
            let utf8 = self.utf8;
            match std::str::from_utf8(&utf8[..width]) {
                Ok(c) => self.text(c),
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(run) {
            Ok(text) => self.text(text),
            Err(e) if e.error_len().is_some() => return false,
            Err(e) => {
                let (text, cut) = run.split_at(e.valid_up_to());
                // Valid so far, and `cut` (at most 3 bytes) is the start of one character.
                self.text(std::str::from_utf8(text).unwrap_or_default());
                self.utf8[..cut.len()].copy_from_slice(cut);
                self.utf8_len = cut.len() as u8;
            }
        }
        true
    }

    /// Valid raw text of the value.
    fn text(&mut self, text: &str) {
        if self.full {
            self.raw_control |= text.bytes().any(|b| b < 0x20);
            return;
        }
        // No control character (C0, DEL, or C1, which UTF-8 writes as 0xC2 0x80..=0x9F; any 0xC2
        // takes the slow path below): the text is kept as it is, up to the cut.
        if !text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            let mut cut = text.len().min(MAX_MODEL_LEN - self.out.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            if self.out.capacity() == 0 {
                self.out = text[..cut].to_owned();
            } else {
                self.out.push_str(&text[..cut]);
            }
            self.full = cut < text.len();
            return;
        }
        for c in text.chars() {
            self.raw_control |= u32::from(c) < 0x20;
            self.push(c);
        }
    }

    /// A decoded escape; false if it was not valid.
    fn push_some(&mut self, c: Option<char>) -> bool {
        match c {
            Some(c) => {
                self.push(c);
                true
            }
            None => false,
        }
    }

    /// One character of the name: dropped if it is a control character (`\u0000` decodes to a
    /// NUL, which PostgreSQL refuses in text: one such request would fail its whole audit batch),
    /// and once the name is full.
    fn push(&mut self, c: char) {
        if self.full || c.is_control() {
            return;
        }
        if self.out.len() + c.len_utf8() > MAX_MODEL_LEN {
            self.full = true;
        } else {
            self.out.push(c);
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

    /// Feeds `body` in frames whose sizes cycle through `sizes`; checks that the scanner holds no
    /// more than its bound all along.
    fn scan_in_frames(body: &[u8], sizes: &[usize]) -> Option<String> {
        let mut scan = ModelScanner::new();
        let mut rest = body;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (frame, tail) = rest.split_at(size.min(rest.len()));
            scan.push(frame);
            assert!(scan.buffered() <= 2 * MAX_MODEL_LEN);
            rest = tail;
        }
        scan.into_model()
    }

    /// The model wherever the body is cut into two or three frames, and byte by byte.
    fn assert_every_split(body: &[u8], expected: Option<&str>) {
        let whole = find_model(body);
        assert_eq!(
            whole.as_deref(),
            expected,
            "{}",
            String::from_utf8_lossy(body)
        );
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut scan = ModelScanner::new();
                scan.push(&body[..i]);
                scan.push(&body[i..j]);
                scan.push(&body[j..]);
                assert_eq!(scan.into_model(), whole, "frames cut at {i} and {j}");
            }
        }
        assert_eq!(scan_in_frames(body, &[1]), whole, "byte by byte");
    }

    /// A body as openai-python writes it: `messages` (here about 1 MB: a long text with escapes
    /// and non-ASCII characters, a base64 image, an earlier answer with a `model` of its own)
    /// before `model`.
    fn long_chat_body() -> String {
        let text = "Tell me about \\\"model\\\": \\\"fake\\\" — café 😀, {[ ]}.\\n".repeat(9_000);
        let image = "iVBORw0KGgoAAAANSUhEUgAA".repeat(20_000);
        format!(
            r#"{{"messages":[{{"role":"user","content":"{text}"}},{{"role":"assistant","model":"nested","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}],"model":"gpt-4o-mini","stream":true,"n":1}}"#
        )
    }

    #[test]
    fn model_after_a_megabyte_of_messages_whole_and_in_any_frames() {
        let body = long_chat_body();
        assert!(body.len() > 1_000_000 && body.find(r#""model":"gpt"#).unwrap() > 1_000_000);
        let body = body.as_bytes();
        assert_eq!(find_model(body).as_deref(), Some("gpt-4o-mini"));
        for sizes in [
            &[1][..],
            &[7],
            &[4096],
            &[65537],
            &[1, 7, 4096, 65537, 3, 2],
        ] {
            assert_eq!(
                scan_in_frames(body, sizes).as_deref(),
                Some("gpt-4o-mini"),
                "frames of {sizes:?}"
            );
        }
    }

    #[test]
    fn model_split_inside_key_value_escapes_and_utf8_characters() {
        // `\"`, a 2-byte and a 4-byte UTF-8 character in the value, and other keys before it.
        assert_every_split(
            r#"{"messages":[{"content":"x"}],"model":"gpt-\"4\"-é😀"}"#.as_bytes(),
            Some("gpt-\"4\"-é😀"),
        );
        // `\u00e9`, a surrogate pair, `\\` and `\/`.
        assert_every_split(
            br#"{ "n" : 1 , "model" : "m\u00e9-\ud83d\ude00\\\/x" }"#,
            Some("mé-😀\\/x"),
        );
        // An escape in another key; `"model"` nested and inside strings.
        assert_every_split(
            br#"{"mo\"del":"x","a":{"model":"no"},"b":["model","\"model\":\"no\""],"model":"yes"}"#,
            Some("yes"),
        );
        assert_every_split(
            br#"{"messages":[{"model":"nested"}],"content":"\"model\":\"in a string\""}"#,
            None,
        );
        // Control characters dropped, raw or escaped.
        assert_every_split(b"{\"model\":\"a\x01b\\u0000c\"}", None);
        assert_every_split(b"{\"model\":\"a\x01b\tc\"}", Some("abc"));
        assert_every_split(br#"{"model":"a\u0000b\n\u001fc"}"#, Some("abc"));
        // A key written with escapes is not taken for `model` (nor was it before).
        assert_every_split(br#"{"mod\u0065l":"x"}"#, None);
    }

    #[test]
    fn model_scanner_gives_up_on_what_cannot_have_a_model() {
        for body in [
            &b"not json"[..],
            b"",
            b"  ",
            br#"[{"model":"x"}]"#,
            br#""model""#,
            br#"{"a":1}"#,
            br#"{}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1,"model":"x"}"#,
            br#"{"a":1 "model":"x"}"#,
            br#"{"model":42}"#,
            br#"{"model":null,"model":"second"}"#,
            br#"{"model":"bad \x escape"}"#,
            br#"{"model":"lone \udc00 surrogate"}"#,
            br#"{"model":"lone \ud800 surrogate"}"#,
            b"{\"model\":\"not \xff utf-8\"}",
            b"{\"model\":\"cut \xc3\"}",
        ] {
            assert_every_split(body, None);
            let mut scan = ModelScanner::new();
            scan.push(body);
            scan.push(br#","model":"late"}"#);
            assert_eq!(scan.model(), None);
        }
        // Truncated bodies: no model yet, and the scanner still waits.
        for body in [
            &br#"{"messages":[{"content":"x"}],"mod"#[..],
            br#"{"messages":[{"content":"x"#,
            br#"{"model":"gpt"#,
            br#"{"model":"gpt\u00"#,
            b"{\"model\":\"gpt\xf0\x9f",
            br#"{"model""#,
            br#"{"model" : "#,
        ] {
            let mut scan = ModelScanner::new();
            scan.push(body);
            assert!(!scan.is_done(), "{}", String::from_utf8_lossy(body));
            assert_eq!(scan.model(), None);
        }
        // Once the model is found and `stream` seen, the scanner stops: what follows is not
        // looked at. Before that only the first top-level `model` counts.
        let mut scan = ModelScanner::new();
        scan.push(br#"{"model":"first","#);
        assert!(!scan.is_done());
        scan.push(br#""model":"second","stream":true,"#);
        assert!(scan.is_done());
        scan.push(br#""model":"third","stream":false} garbage"#);
        assert_eq!(scan.model(), Some("first"));
        assert!(scan.stream());
    }

    #[test]
    fn model_scanner_memory_is_bounded_by_construction() {
        // No body bytes are kept: the state is a fixed-size value plus the name's buffer.
        assert!(std::mem::size_of::<ModelScanner>() <= 64);
        let long = format!(r#"{{"model":"{}"}}"#, "é".repeat(500_000));
        for sizes in [&[1][..], &[4095], &[usize::MAX]] {
            let model = scan_in_frames(long.as_bytes(), sizes).unwrap();
            assert_eq!(model.len(), MAX_MODEL_LEN);
        }
        let escaped = format!(r#"{{"model":"{}x"}}"#, r"\u0000".repeat(100_000));
        assert_eq!(
            scan_in_frames(escaped.as_bytes(), &[3]).as_deref(),
            Some("x")
        );
    }

    /// `find_model` as it was before the streaming scanner: a cursor over a complete buffer,
    /// decoding the value with `serde_json`. The oracle for how a value is decoded.
    mod before {
        use super::super::MAX_MODEL_LEN;

        /// The top-level `"model"` string of a JSON object, read from a (possibly truncated) prefix.
        ///
        /// Returns `None` when the prefix is not a JSON object, has no top-level `model` string, or ends
        /// before it. Names longer than 256 bytes are cut.
        pub(super) fn find_model(json: &[u8]) -> Option<String> {
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
    }

    /// A small deterministic generator (xorshift64).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn model_values_decode_exactly_as_before_however_split() {
        // Pieces of values: plain and non-ASCII text, raw control characters, every escape, valid
        // and broken surrogates, broken escapes and broken UTF-8, long runs past the 256-byte cut.
        let x100 = "x".repeat(100);
        let e100 = "é".repeat(100);
        let nul50 = r"\u0000".repeat(50);
        let pieces: [&[u8]; 37] = [
            b"a",
            b"Z-1",
            "é".as_bytes(),
            "😀".as_bytes(),
            "\u{85}".as_bytes(),
            b"\x7f",
            b"\n",
            b"\x01",
            br#"\""#,
            br"\\",
            br"\/",
            br"\n",
            br"\t",
            br"\b",
            br"\f",
            br"\r",
            br"\u0000",
            br"\u00e9",
            br"\u00E9",
            br"\ud83d\ude00",
            br"\ud83d",
            br"\ude00",
            br"\ud83d\ud83d",
            br"\ud83dx",
            br"\ud83d\n",
            br"\u12",
            br"\x",
            br"\u00zz",
            b"\xff",
            b"\xc3",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            b"\"",
            b"\\",
            x100.as_bytes(),
            e100.as_bytes(),
            nul50.as_bytes(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut found = 0;
        for _ in 0..3000 {
            let mut value = Vec::new();
            for _ in 0..rng.below(10) {
                // Mostly plain pieces, so that many values stay valid.
                let piece = if rng.below(3) == 0 {
                    pieces[rng.below(pieces.len())]
                } else {
                    pieces[rng.below(4)]
                };
                value.extend_from_slice(piece);
            }
            let mut body = br#"{"messages":[{"model":"nested"}],"model":""#.to_vec();
            body.extend_from_slice(&value);
            body.extend_from_slice(br#"","n":1}"#);
            let expected = before::find_model(&body);
            found += usize::from(expected.is_some());
            assert_eq!(
                find_model(&body),
                expected,
                "{}",
                String::from_utf8_lossy(&body)
            );
            let sizes = [1 + rng.below(5), 1 + rng.below(40), 1, 1 + rng.below(9)];
            assert_eq!(
                scan_in_frames(&body, &sizes),
                expected,
                "{} in frames of {sizes:?}",
                String::from_utf8_lossy(&body)
            );
        }
        // Both kinds were drawn in numbers.
        assert!(found > 1000 && found < 2900, "{found} of 3000 valid");
    }

    #[test]
    fn whole_bodies_read_as_before() {
        for body in [
            &br#" { "messages": [{"role":"user","content":"say \"model\": {x}"}], "n": 1, "stream": true, "model" : "m\u00e9-1", "x": 2}"#[..],
            br#"{"a":,"model":"x"}"#,
            br#"{"a":tru"e","model":"x"}"#,
            br#"{"a":1]"model":"x"}"#,
            br#"{"a":[}],"model":"x"}"#,
            br#"{"a":"\"model\":\"x\"","b":{"model":"y"}}"#,
            br#"{"model" "x"}"#,
            br#"{"model":"x"  "#,
            br#"	{"model"	:	"x"}"#,
            long_chat_body().as_bytes(),
        ] {
            assert_eq!(
                find_model(body),
                before::find_model(body),
                "{}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
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
            assert_eq!(
                s.usage().unwrap().prompt_tokens,
                Some(10),
                "split at {split}"
            );
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
        assert_eq!(s.usage().unwrap().completion_tokens, Some(5));
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
            assert_eq!(s.usage().unwrap().prompt_tokens, Some(10));
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
            (Some(MAX_TOKENS), Some(MAX_TOKENS), MAX_TOKENS)
        );
    }

    #[test]
    fn ollama_native_counts_are_read_whole_split_and_as_ndjson() {
        let last = r#"{"model":"llama3","message":{"role":"assistant","content":"say \"eval_count\": 9"},"done":true,"total_duration":5,"prompt_eval_count":26,"eval_count":290,"eval_duration":4}"#;
        let want = TokenUsage {
            prompt_tokens: Some(26),
            completion_tokens: Some(290),
            total_tokens: 316,
        };
        assert_eq!(extract_usage(last.as_bytes()), Some(want));
        // A stream: many lines without counts, then the final one.
        let mut body = String::new();
        for i in 0..2000 {
            body.push_str(&format!(
                "{{\"model\":\"llama3\",\"message\":{{\"role\":\"assistant\",\"content\":\"t{i}\"}},\"done\":false}}\n"
            ));
        }
        body.push_str(last);
        body.push('\n');
        for split in [1, 7, 4096, SCAN_WINDOW + 1] {
            let mut scan = UsageScanner::json();
            for piece in body.as_bytes().chunks(split) {
                scan.push(piece);
            }
            scan.finish();
            assert_eq!(scan.usage(), Some(want), "split {split}");
        }
        // An OpenAI `usage` object wins; nonsense counts are capped.
        let both = r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"eval_count":7}"#;
        assert_eq!(extract_usage(both.as_bytes()).unwrap().total_tokens, 3);
        let huge = r#"{"prompt_eval_count":99999999999999999,"eval_count":1}"#;
        assert_eq!(
            extract_usage(huge.as_bytes()).unwrap().prompt_tokens,
            Some(MAX_TOKENS)
        );
        assert_eq!(extract_usage(br#"{"eval_count":"x"}"#), None);
        assert_eq!(
            extract_usage(br#"{"prompt_eval_count":2,"eval_count":29"#),
            Some(TokenUsage {
                prompt_tokens: Some(2),
                completion_tokens: None,
                total_tokens: 2,
            })
        );
        // Not in SSE, where Ollama never sends them.
        let mut sse = UsageScanner::sse();
        sse.push(b"data: {\"eval_count\":5}\n\n");
        sse.finish();
        assert_eq!(sse.usage(), None);
    }

    #[test]
    fn usage_without_total_is_summed() {
        let u = extract_usage(br#"{"usage":{"prompt_tokens":2,"completion_tokens":3}}"#).unwrap();
        assert_eq!(u.total_tokens, 5);
        assert!(extract_usage(br#"{"usage":null}"#).is_none());
        assert!(extract_usage(br#"{"usage":{}}"#).is_none());
    }

    #[test]
    fn responses_and_anthropic_usage_names_are_read() {
        // OpenAI's Responses API, with its nested details objects, whole and split anywhere.
        let body = r#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"hi \"usage\": {\"input_tokens\":99}"}]}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":3},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":18},"tools":[]}"#;
        let want = TokenUsage {
            prompt_tokens: Some(11),
            completion_tokens: Some(7),
            total_tokens: 18,
        };
        assert_eq!(extract_usage(body.as_bytes()), Some(want));
        for split in 1..body.len() {
            let mut s = UsageScanner::json();
            s.push(&body.as_bytes()[..split]);
            s.push(&body.as_bytes()[split..]);
            s.finish();
            assert_eq!(s.usage(), Some(want), "split {split}");
        }
        // Its stream: `usage` is null until `response.completed`, inside `response`.
        let sse = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":11,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":7,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":18}}}\n\n",
        );
        for split in 0..sse.len() {
            let mut s = UsageScanner::sse();
            s.push(&sse.as_bytes()[..split]);
            s.push(&sse.as_bytes()[split..]);
            assert_eq!(s.usage(), Some(want), "split {split}");
        }
        // Chat Completions' own details objects do not confuse it either.
        let chat = br#"{"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        assert_eq!(
            extract_usage(chat),
            Some(TokenUsage {
                prompt_tokens: Some(5),
                completion_tokens: Some(2),
                total_tokens: 7,
            })
        );
        // Anthropic's Messages stream: input in `message_start`, the final output in
        // `message_delta`, no total; the counts of both are kept.
        let mut s = UsageScanner::sse();
        s.push(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
        s.push(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n");
        assert_eq!(
            s.usage(),
            Some(TokenUsage {
                prompt_tokens: Some(25),
                completion_tokens: Some(15),
                total_tokens: 40,
            })
        );
        // With its prompt cache: the input written to and read from the cache is input too
        // (Anthropic counts it outside `input_tokens`; it was left out).
        let cached = br#"{"type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":300,"output_tokens":5}}"#;
        assert_eq!(
            extract_usage(cached),
            Some(TokenUsage {
                prompt_tokens: Some(510),
                completion_tokens: Some(5),
                total_tokens: 515,
            })
        );
    }

    #[test]
    fn a_count_not_reported_is_none_not_zero() {
        // Embeddings: no completion tokens.
        let body = br#"{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        assert_eq!(
            extract_usage(body),
            Some(TokenUsage {
                prompt_tokens: Some(5),
                completion_tokens: None,
                total_tokens: 5,
            })
        );
        let only_total = extract_usage(br#"{"usage":{"total_tokens":9}}"#).unwrap();
        assert_eq!(
            (only_total.prompt_tokens, only_total.completion_tokens),
            (None, None)
        );
    }

    #[test]
    fn done_event_is_terminal_however_split() {
        for sep in ["\n\n", "\r\n\r\n", "\r\r", "\n\r\n"] {
            for done in ["data: [DONE]", "data:[DONE]"] {
                let mut body = sse_body(sep);
                let cut = body.rfind("data: [DONE]").unwrap();
                body.truncate(cut);
                body.push_str(done);
                body.push_str(sep);
                // Past `[DONE]` and one line end; a second one ends the event.
                let done_end = body.rfind("[DONE]").unwrap() + "[DONE]".len();
                for split in 0..body.len() {
                    let mut s = UsageScanner::sse();
                    s.push(&body.as_bytes()[..split]);
                    // Not before the event's blank line has passed.
                    assert!(!s.terminal() || split >= done_end + 2, "{sep:?} {split}");
                    s.push(&body.as_bytes()[split..]);
                    assert!(s.terminal(), "{done:?} sep {sep:?} split {split}");
                    assert_eq!(s.usage().unwrap().total_tokens, 15);
                }
                let mut s = UsageScanner::sse();
                for b in body.as_bytes() {
                    s.push(std::slice::from_ref(b));
                }
                assert!(s.terminal(), "byte by byte, {sep:?}");
            }
        }
        // `[DONE]` as text, or an event not yet ended, is not the end.
        for not_done in [
            "data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"\\ndata: [DONE]\"}}]}\n\n",
            "data: x[DONE]\n\n",
            "metadata: [DONE]\n\n",
            "data: [DONE]\n",
            "data: [DONE]",
            "data: [DONE] more\n\n",
        ] {
            let mut s = UsageScanner::sse();
            s.push(not_done.as_bytes());
            assert!(!s.terminal(), "{not_done:?}");
            let mut s = UsageScanner::sse();
            s.push(b"data: {}\n");
            s.push(not_done.as_bytes());
            assert!(!s.terminal(), "{not_done:?} after a pending line");
        }
        // A JSON body is never a stream with a terminal event.
        let mut s = UsageScanner::json();
        s.push(b"data: [DONE]\n\n");
        assert!(!s.terminal());
    }

    /// A Responses API stream: text that names the terminal event in a delta, then the event.
    fn responses_body(sep: &str, named: bool) -> String {
        let event = |name: &str, data: &str| {
            let mut e = String::new();
            if named {
                e.push_str(&format!("event: {name}{}", &sep[..sep.len() / 2]));
            }
            e.push_str(&format!("data: {data}{sep}"));
            e
        };
        let mut body = event(
            "response.created",
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"r","status":"in_progress","usage":null}}"#,
        );
        body.push_str(&event(
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","sequence_number":1,"delta":"event: response.completed\ndata: {\"type\":\"response.completed\"}"}"#,
        ));
        body.push_str(&event(
            "response.completed",
            r#"{"type":"response.completed","sequence_number":2,"response":{"id":"r","status":"completed","usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}}"#,
        ));
        body
    }

    #[test]
    fn responses_and_anthropic_terminal_events_however_split() {
        let anthropic = |sep: &str| {
            let nl = &sep[..sep.len() / 2];
            [
                ("message_start", r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":10,"output_tokens":1}}}"#),
                ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"{\"type\":\"message_stop\"}"}}"#),
                ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ]
            .iter()
            .map(|(name, data)| format!("event: {name}{nl}data: {data}{sep}"))
            .collect::<String>()
        };
        for sep in ["\n\n", "\r\n\r\n", "\r\r"] {
            // With `event:` lines (OpenAI, Anthropic), and with only the data's `type`.
            for body in [
                responses_body(sep, true),
                responses_body(sep, false),
                anthropic(sep),
            ] {
                let last = body.trim_end().rfind(sep).unwrap() + sep.len();
                // The event ends at its second line end (a CRLF's `\n` may follow).
                let end = body.len() - usize::from(sep == "\r\n\r\n");
                for split in 0..body.len() {
                    let mut s = UsageScanner::sse();
                    s.push(&body.as_bytes()[..split]);
                    // Not before the last event's blank line has passed: the earlier events,
                    // whose text names the terminal event, are not it.
                    assert_eq!(s.terminal(), split >= end, "{body:?} split {split}");
                    s.push(&body.as_bytes()[split..]);
                    assert!(s.terminal(), "{body:?} split {split}");
                    assert_eq!(
                        s.usage().unwrap().total_tokens,
                        15,
                        "{body:?} split {split}"
                    );
                    assert_eq!(s.buffered(), 0);
                }
                let mut s = UsageScanner::sse();
                for (i, b) in body.as_bytes().iter().enumerate() {
                    s.push(std::slice::from_ref(b));
                    assert_eq!(s.terminal(), i + 1 >= end, "byte by byte, {body:?} at {i}");
                }
                // The last event alone, and everything before it (not terminal).
                let mut s = UsageScanner::sse();
                s.push(&body.as_bytes()[last..]);
                assert!(s.terminal(), "{body:?}");
                let mut s = UsageScanner::sse();
                s.push(&body.as_bytes()[..last]);
                assert!(!s.terminal(), "{body:?}");
            }
        }
        for terminal in [
            "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{}}\n\n",
            "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{}}\n\n",
            "event:message_stop\ndata:{\"type\":\"message_stop\"}\n\n",
            "data: { \"type\" : \"message_stop\" }\n\n",
            "data: {\"type\":\"response.completed\",\n\n",
            "id: 7\nevent: response.completed\nretry: 10\ndata: {}\n\n",
            // A later `event:` line is the event's type.
            "event: x\nevent: response.completed\ndata: {}\n\n",
            // vLLM writes `type` last, but names the event.
            "event: response.completed\ndata: {\"response\":{},\"type\":\"response.completed\"}\n\n",
        ] {
            let mut s = UsageScanner::sse();
            s.push(terminal.as_bytes());
            assert!(s.terminal(), "{terminal:?}");
            let body = format!("data: {{}}\n\n{terminal}");
            for split in 0..body.len() {
                let mut s = UsageScanner::sse();
                s.push(&body.as_bytes()[..split]);
                s.push(&body.as_bytes()[split..]);
                assert!(s.terminal(), "{terminal:?} split {split}");
            }
        }
        // The name as text in the data, or of a nested object, or another type: not the end.
        for not_terminal in [
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}\n\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"{\\\"type\\\":\\\"response.completed\\\"}\"}\n\n",
            "data: {\"delta\":\"\\nevent: response.completed\\n\"}\n\n",
            "data: {\"item\":{\"type\":\"response.completed\"}}\n\n",
            "data: {\"sequence_number\":3,\"type\":\"response.completed\"}\n\n",
            "data: {\"type\":\"response.completed.x\"}\n\n",
            "data: {\"type\":\"response.complete\"}\n\n",
            "data: {\"type\":\"message_stopped\"}\n\n",
            "data: [{\"type\":\"message_stop\"}]\n\n",
            "data: \"type\":\"message_stop\"\n\n",
            "event: response.completed_x\ndata: {}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\"}\n\n",
            "xevent: message_stop\n\n",
            ": event: message_stop\n\n",
            "data: {}\nmetadata: {\"type\":\"message_stop\"}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}",
        ] {
            let mut s = UsageScanner::sse();
            s.push(not_terminal.as_bytes());
            assert!(!s.terminal(), "{not_terminal:?}");
            let mut s = UsageScanner::sse();
            s.push(b"data: {}\n\ndata: ");
            s.push(not_terminal.as_bytes());
            assert!(!s.terminal(), "{not_terminal:?} after a pending line");
        }
    }

    #[test]
    fn responses_and_anthropic_ends_are_terminal_only_while_last() {
        for (end, after) in [
            (
                "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n",
                "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n",
            ),
            (
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            ),
        ] {
            // Whole events in one chunk (the fast path) and one at a time.
            let mut s = UsageScanner::sse();
            s.push(format!("{end}{after}").as_bytes());
            assert!(!s.terminal(), "{end:?} then {after:?}");
            let mut s = UsageScanner::sse();
            s.push(format!("{after}{end}").as_bytes());
            assert!(s.terminal(), "{after:?} then {end:?}");
            let mut s = UsageScanner::sse();
            s.push(end.as_bytes());
            assert!(s.terminal());
            s.push(after.as_bytes());
            assert!(!s.terminal(), "an event after {end:?}");
            // Part of an event, or a comment, after it.
            for part in ["data: {\"ty", ": keep-alive\n\n"] {
                let mut s = UsageScanner::sse();
                s.push(end.as_bytes());
                s.push(part.as_bytes());
                assert!(!s.terminal(), "{part:?} after {end:?}");
            }
        }
    }

    #[test]
    fn an_oversized_terminal_event_is_terminal_by_its_head() {
        // `response.completed` repeats the whole answer: a long one passes the scan window.
        let text = "x".repeat(SCAN_WINDOW * 2);
        for named in [true, false] {
            let mut body = String::new();
            if named {
                body.push_str("event: response.completed\n");
            }
            body.push_str(&format!(
                "data: {{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"text\":\"{text}\"}}]}}}}\n\n"
            ));
            let mut s = UsageScanner::sse();
            for piece in body.as_bytes().chunks(4096) {
                s.push(piece);
                assert!(s.buffered() <= SCAN_WINDOW);
            }
            assert!(s.terminal(), "named {named}");
            assert_eq!(s.buffered(), 0);
            s.push(b"data: {}\n\n");
            assert!(!s.terminal());
        }
        // An oversized event of another type is not.
        let mut s = UsageScanner::sse();
        s.push(b"event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"text\":\"");
        for _ in 0..(SCAN_WINDOW * 2 / 4096) {
            s.push(&[b'x'; 4096]);
        }
        s.push(b"response.completed\"}\n\n");
        assert!(!s.terminal());
    }

    #[test]
    fn an_oversized_events_usage_is_read_from_its_tail() {
        // A long answer's `response.completed`: the answer again, then the usage and metadata.
        let text = "y".repeat(SCAN_WINDOW * 2);
        let metadata = format!(r#"{{"k":"{}"}}"#, "m".repeat(8 * 1024));
        let body = format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"y\"}}\n\n\
             event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"text\":\"{text} \\\"usage\\\":{{\\\"input_tokens\\\":99}}\"}}],\
             \"usage\":{{\"input_tokens\":10,\"output_tokens\":5,\"total_tokens\":15}},\"user\":null,\"metadata\":{metadata}}}}}\n\n"
        );
        let want = TokenUsage {
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            total_tokens: 15,
        };
        for size in [
            1,
            7,
            1000,
            4096,
            EVENT_TAIL - 1,
            EVENT_TAIL,
            SCAN_WINDOW + 1,
        ] {
            let mut s = UsageScanner::sse();
            for piece in body.as_bytes().chunks(size) {
                s.push(piece);
                assert!(s.buffered() <= SCAN_WINDOW, "size {size}");
            }
            assert_eq!(s.usage(), Some(want), "size {size}");
            assert!(s.terminal(), "size {size}");
            assert_eq!(s.buffered(), 0);
        }
        // Whole, in one chunk (scanned in place), the same.
        let mut s = UsageScanner::sse();
        s.push(body.as_bytes());
        assert_eq!((s.usage(), s.terminal()), (Some(want), true));
        // A body cut inside the event: the tail seen so far is read at the end.
        let cut = body.rfind(",\"user\"").unwrap();
        let mut s = UsageScanner::sse();
        for piece in body.as_bytes()[..cut].chunks(4096) {
            s.push(piece);
        }
        assert!(!s.terminal());
        s.finish();
        assert_eq!(s.usage(), Some(want));
        // Usage further than `EVENT_TAIL` from the end of an oversized event is not read.
        let early = format!(
            "data: {{\"usage\":{{\"input_tokens\":1}},\"text\":\"{}\"}}\n\n",
            "z".repeat(SCAN_WINDOW * 2)
        );
        let mut s = UsageScanner::sse();
        for piece in early.as_bytes().chunks(4096) {
            s.push(piece);
        }
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn ollama_done_line_is_terminal_once_its_newline_passed() {
        let lines = concat!(
            "{\"model\":\"llama3\",\"message\":{\"content\":\"say \\\"done\\\":true\"},\"done\":false}\n",
            "{\"model\":\"llama3\",\"message\":{\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"prompt_eval_count\":26,\"eval_count\":290}\n",
        );
        let end = lines.len() - 1;
        for split in 0..lines.len() {
            let mut s = UsageScanner::ndjson();
            s.push(&lines.as_bytes()[..split]);
            assert!(!s.terminal(), "split {split}");
            s.push(&lines.as_bytes()[split..end]);
            assert!(!s.terminal(), "split {split}, before the newline");
            s.push(b"\n");
            assert!(s.terminal(), "split {split}");
        }
        // A JSON answer is not read for it.
        let mut s = UsageScanner::json();
        s.push(lines.as_bytes());
        assert!(!s.terminal());
        // Only while it is the last whole line: a tool call's arguments (a JSON object in
        // Ollama's native API) may hold `"done":true` on a line that is not the last.
        let tool = "{\"message\":{\"tool_calls\":[{\"function\":{\"arguments\":{\"done\":true}}}]},\"done\":false}\n";
        let mut s = UsageScanner::ndjson();
        s.push(tool.as_bytes());
        assert!(!s.terminal());
        let mut s = UsageScanner::ndjson();
        s.push(lines.as_bytes());
        assert!(s.terminal());
        s.push(b"{\"done\":false}\n");
        assert!(!s.terminal(), "a line after the done line");
    }

    #[test]
    fn done_is_terminal_only_while_it_is_the_last_event_passed() {
        let done = "data: [DONE]\n\n";
        let after = "data: {\"choices\":[]}\n\n";
        // Whole events in one chunk (the fast path) and one at a time.
        let mut s = UsageScanner::sse();
        s.push(format!("{done}{after}").as_bytes());
        assert!(!s.terminal());
        let mut s = UsageScanner::sse();
        s.push(done.as_bytes());
        assert!(s.terminal());
        s.push(after.as_bytes());
        assert!(!s.terminal(), "an event after [DONE]");
        // Part of an event after it.
        let mut s = UsageScanner::sse();
        s.push(done.as_bytes());
        s.push(b"data: {\"choi");
        assert!(!s.terminal(), "a partial event after [DONE]");
        // [DONE] twice is still the end.
        let mut s = UsageScanner::sse();
        s.push(format!("{after}{done}").as_bytes());
        s.push(done.as_bytes());
        assert!(s.terminal());
    }

    #[test]
    fn stream_true_is_noted_anywhere_at_the_top_level_however_split() {
        let cases: [(&[u8], Option<&str>, bool); 12] = [
            (
                br#"{"model":"m","messages":[],"stream":true}"#,
                Some("m"),
                true,
            ),
            (br#"{"stream":true,"model":"m"}"#, Some("m"), true),
            (
                br#"{"messages":[{"stream":true}],"model":"m","stream" : true }"#,
                Some("m"),
                true,
            ),
            (br#"{"model":"m","stream":true"#, Some("m"), true),
            (br#"{"stream":true}"#, None, true),
            (br#"{"model":"m","stream":false,"n":1}"#, Some("m"), false),
            (br#"{"model":"m","stream":"true"}"#, Some("m"), false),
            (br#"{"model":"m","stream":tru}"#, Some("m"), false),
            (
                br#"{"model":"m","streaming":true,"strea":true}"#,
                Some("m"),
                false,
            ),
            (
                br#"{"model":"m","content":"\"stream\":true"}"#,
                Some("m"),
                false,
            ),
            (
                br#"{"model":"m","options":{"stream":true}}"#,
                Some("m"),
                false,
            ),
            (
                br#"{"model":"m","stream":false,"stream":true}"#,
                Some("m"),
                false,
            ),
        ];
        for (body, model, stream) in cases {
            let text = String::from_utf8_lossy(body);
            for split in 0..=body.len() {
                let mut scan = ModelScanner::new();
                scan.push(&body[..split]);
                scan.push(&body[split..]);
                assert_eq!(scan.model(), model, "{text} split {split}");
                assert_eq!(scan.stream(), stream, "{text} split {split}");
                // The same with the second piece known to be the body's last.
                let mut scan = ModelScanner::new();
                scan.push(&body[..split]);
                scan.push_last(&body[split..]);
                assert_eq!(scan.model(), model, "{text} split {split}, last");
                assert_eq!(scan.stream(), stream, "{text} split {split}, last");
            }
            let mut scan = ModelScanner::new();
            for b in body {
                scan.push(std::slice::from_ref(b));
            }
            assert_eq!((scan.model(), scan.stream()), (model, stream), "{text}");
        }
        // In the body's last piece, a model with no `"stream"` text after it ends the scan at
        // once; with the text (even inside a string), the rest is crossed as before.
        let mut scan = ModelScanner::new();
        scan.push_last(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#);
        assert!(scan.is_done());
        assert_eq!((scan.model(), scan.stream()), (Some("m"), false));
        let mut scan = ModelScanner::new();
        scan.push_last(br#"{"model":"m","messages":[{"content":"x"}]"#);
        assert!(
            scan.is_done(),
            "not crossed: the object's end is not needed"
        );
        let mut scan = ModelScanner::new();
        scan.push(br#"{"model":"m","messages":[{"content":""stream""}]"#);
        assert!(!scan.is_done(), "not the last piece: crossed");
        // The model is available as soon as it is read, and can be taken once.
        let mut scan = ModelScanner::new();
        scan.push(br#"{"model":"m","messages":[{"content":"x"#);
        assert!(!scan.is_done());
        assert_eq!(scan.take_model().as_deref(), Some("m"));
        assert_eq!(scan.take_model(), None);
        scan.push(br#""}],"stream":true}"#);
        assert!(scan.is_done() && scan.stream());
    }
}
