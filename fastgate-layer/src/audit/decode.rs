//! Token usage from compressed answers: a [`DecodingScanner`] inflates a `gzip` or `deflate`
//! body for the audit's [`UsageScanner`] while the body itself passes on untouched.
//!
//! The client always gets the backend's bytes as they are (compressed if the backend compressed
//! them). The audit layer reads a *decompressed copy*, decoded incrementally as each frame
//! passes: nothing is held back, and memory stays bounded by the decoder's state (its 32 KiB
//! window and tables, about 43 KiB), one [`DECODE_BUFFER`]-byte output buffer reused for every
//! frame, and the usage scanner's own window. Work is bounded too: decoding stops once more than [`DECODED_MAX`]
//! bytes came out (a decompression bomb) or at the first decode error, and the usage then stays
//! unknown, as for a body without usage.
//!
//! Codings read: `gzip` (and its alias `x-gzip`; several members in a row too, each checked
//! against its CRC-32 and length) and `deflate` (zlib-wrapped as RFC 9110 says, or raw DEFLATE
//! as some servers send it). Anything else (`br`, `zstd`, `compress`, several codings stacked)
//! cannot be read; the audit layer narrows each request's `Accept-Encoding` so that backends do
//! not choose those (see [the audit docs](super#compressed-answers-and-accept-encoding)).
//!
//! # Example
//!
//! ```
//! use std::io::Write;
//! use fastgate_layer::audit::decode::{ContentCoding, DecodingScanner};
//! use fastgate_layer::audit::scan::UsageScanner;
//!
//! let body = br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
//! let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
//! gz.write_all(body).unwrap();
//! let gz = gz.finish().unwrap();
//!
//! let coding = ContentCoding::from_header_values([&http::HeaderValue::from_static("gzip")]);
//! assert_eq!(coding, Some(ContentCoding::Gzip));
//! let mut scan = DecodingScanner::new(ContentCoding::Gzip, UsageScanner::json());
//! for frame in gz.chunks(5) {
//!     scan.push(frame);
//! }
//! scan.finish();
//! assert_eq!(scan.usage().unwrap().total_tokens, 7);
//! ```

use flate2::{Crc, Decompress, FlushDecompress, Status};
use http::{HeaderMap, HeaderValue, header};

use super::TokenUsage;
use super::scan::UsageScanner;

/// Most decompressed bytes read from one answer (64 MiB); past it decoding stops and the usage
/// stays unknown.
pub const DECODED_MAX: u64 = 64 * 1024 * 1024;

/// Size of the output buffer a [`DecodingScanner`] inflates into, reused for every frame (8 KiB).
pub const DECODE_BUFFER: usize = 8 * 1024;

/// A `Content-Encoding` the usage scanner can read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentCoding {
    /// No coding (`identity`): the body is scanned as it passes.
    Identity,
    /// `gzip` or `x-gzip` (RFC 1952).
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 1950), or raw DEFLATE (RFC 1951).
    Deflate,
}

impl ContentCoding {
    /// The coding a response's `Content-Encoding` values name, or `None` when the usage scanner
    /// cannot read through it (an unknown coding, or two codings stacked). `identity` entries
    /// and empty ones are ignored; no value at all is [`Identity`](Self::Identity).
    pub fn from_header_values<'a>(
        values: impl IntoIterator<Item = &'a HeaderValue>,
    ) -> Option<Self> {
        let mut coding = Self::Identity;
        for value in values {
            for item in value.as_bytes().split(|&b| b == b',') {
                let name = item.trim_ascii();
                let this = if name.is_empty() || name.eq_ignore_ascii_case(b"identity") {
                    continue;
                } else if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip")
                {
                    Self::Gzip
                } else if name.eq_ignore_ascii_case(b"deflate") {
                    Self::Deflate
                } else {
                    return None;
                };
                if coding != Self::Identity {
                    return None; // stacked codings: not worth decoding twice
                }
                coding = this;
            }
        }
        Some(coding)
    }

    /// The coding of a response with these headers (see
    /// [`from_header_values`](Self::from_header_values)).
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        Self::from_header_values(headers.get_all(header::CONTENT_ENCODING))
    }
}

/// Where a [`DecodingScanner`] is in its input.
#[derive(Debug)]
enum State {
    /// gzip: inside a member's header.
    GzHeader(GzHeader),
    /// deflate: before the first two bytes tell a zlib header from raw DEFLATE; holds the first
    /// byte when it came alone.
    Sniff(Option<u8>),
    /// Inside the DEFLATE data.
    Inflate,
    /// gzip: inside a member's trailer (CRC-32 and length, little-endian).
    GzTrailer { bytes: [u8; 8], len: u8 },
    /// The deflate stream ended; anything after it is ignored.
    Done,
    /// Decoding stopped: corrupt data, or past [`DECODED_MAX`]. Usage is unknown.
    Failed,
}

/// Reads a gzip member's header (RFC 1952 §2.3) without keeping any of it.
#[derive(Debug, Default)]
struct GzHeader {
    /// Bytes of the 10-byte fixed part read.
    fixed: u8,
    flags: u8,
    step: GzStep,
    /// FEXTRA's bytes left to skip (its length as read so far before that); FHCRC's bytes left.
    count: u16,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum GzStep {
    #[default]
    Fixed,
    /// XLEN's low byte (it is little-endian).
    ExtraLenLow,
    ExtraLenHigh,
    Extra,
    Name,
    Comment,
    HeaderCrc,
    Done,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

impl GzHeader {
    /// Consume header bytes from `input`; returns how many were used, or `None` when this is
    /// not a gzip header. The header is complete when [`done`](Self::done).
    fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut used = 0;
        while used < input.len() && self.step != GzStep::Done {
            let b = input[used];
            match self.step {
                GzStep::Fixed => {
                    match self.fixed {
                        0 if b != 0x1f => return None,
                        1 if b != 0x8b => return None,
                        2 if b != 8 => return None,        // CM: DEFLATE
                        3 if b & 0xe0 != 0 => return None, // reserved flags
                        3 => self.flags = b,
                        _ => {}
                    }
                    used += 1;
                    self.fixed += 1;
                    if self.fixed == 10 {
                        self.next_after(FEXTRA - 1);
                    }
                }
                GzStep::ExtraLenLow => {
                    used += 1;
                    self.count = u16::from(b);
                    self.step = GzStep::ExtraLenHigh;
                }
                GzStep::ExtraLenHigh => {
                    used += 1;
                    self.count |= u16::from(b) << 8;
                    if self.count == 0 {
                        self.next_after(FEXTRA);
                    } else {
                        self.step = GzStep::Extra;
                    }
                }
                GzStep::Extra => {
                    let skip = usize::from(self.count).min(input.len() - used);
                    used += skip;
                    // `skip` is at most `count`, a u16.
                    self.count -= u16::try_from(skip).unwrap_or(self.count);
                    if self.count == 0 {
                        self.next_after(FEXTRA);
                    }
                }
                GzStep::Name | GzStep::Comment => match memchr::memchr(0, &input[used..]) {
                    Some(at) => {
                        used += at + 1;
                        let done = if self.step == GzStep::Name {
                            FNAME
                        } else {
                            FCOMMENT
                        };
                        self.next_after(done);
                    }
                    None => used = input.len(),
                },
                GzStep::HeaderCrc => {
                    used += 1;
                    self.count -= 1;
                    if self.count == 0 {
                        self.step = GzStep::Done;
                    }
                }
                GzStep::Done => {}
            }
        }
        Some(used)
    }

    /// Go to the first optional field after the one whose flag is `passed` (fields come in the
    /// order FEXTRA, FNAME, FCOMMENT, FHCRC).
    fn next_after(&mut self, passed: u8) {
        self.step = if passed < FEXTRA && self.flags & FEXTRA != 0 {
            GzStep::ExtraLenLow
        } else if passed < FNAME && self.flags & FNAME != 0 {
            GzStep::Name
        } else if passed < FCOMMENT && self.flags & FCOMMENT != 0 {
            GzStep::Comment
        } else if self.flags & FHCRC != 0 {
            self.count = 2;
            GzStep::HeaderCrc
        } else {
            GzStep::Done
        };
    }

    fn done(&self) -> bool {
        self.step == GzStep::Done
    }
}

/// Reads token usage from a `gzip` or `deflate` body as it passes. See the [module docs](self).
pub struct DecodingScanner {
    scanner: UsageScanner,
    coding: ContentCoding,
    state: State,
    inflate: Decompress,
    /// CRC-32 and length of the current gzip member's decoded bytes.
    crc: Crc,
    out: Box<[u8]>,
    decoded: u64,
    limit: u64,
}

impl std::fmt::Debug for DecodingScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodingScanner")
            .field("coding", &self.coding)
            .field("state", &self.state)
            .field("decoded", &self.decoded)
            .finish_non_exhaustive()
    }
}

impl DecodingScanner {
    /// Decode a `coding` body for `scanner`, stopping past [`DECODED_MAX`] decoded bytes.
    pub fn new(coding: ContentCoding, scanner: UsageScanner) -> Self {
        Self::with_limit(coding, scanner, DECODED_MAX)
    }

    /// As [`new`](Self::new), stopping past `limit` decoded bytes.
    pub fn with_limit(coding: ContentCoding, scanner: UsageScanner, limit: u64) -> Self {
        let state = match coding {
            ContentCoding::Gzip => State::GzHeader(GzHeader::default()),
            ContentCoding::Deflate => State::Sniff(None),
            ContentCoding::Identity => State::Inflate,
        };
        Self {
            scanner,
            coding,
            state,
            inflate: Decompress::new(false),
            crc: Crc::new(),
            out: vec![0; DECODE_BUFFER].into_boxed_slice(),
            decoded: 0,
            limit,
        }
    }

    /// The usage seen so far; `None` once decoding failed or passed the limit.
    pub fn usage(&self) -> Option<TokenUsage> {
        match self.state {
            State::Failed => None,
            _ => self.scanner.usage(),
        }
    }

    /// Whether the stream's terminal event has passed (see [`UsageScanner::terminal`]); never
    /// once decoding failed.
    pub fn terminal(&self) -> bool {
        !self.failed() && self.scanner.terminal()
    }

    /// Decoded bytes so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Decoding stopped (corrupt data, or past the limit).
    pub fn failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Bytes held besides the fixed buffers (what the usage scanner holds).
    pub fn buffered(&self) -> usize {
        self.scanner.buffered()
    }

    /// Decode the next frame of the body and scan what comes out.
    pub fn push(&mut self, mut input: &[u8]) {
        if self.coding == ContentCoding::Identity {
            self.scanner.push(input);
            return;
        }
        while !input.is_empty() {
            match &mut self.state {
                State::Failed | State::Done => return,
                State::GzHeader(header) => match header.feed(input) {
                    Some(used) => {
                        input = &input[used..];
                        if header.done() {
                            self.inflate.reset(false);
                            self.crc.reset();
                            self.state = State::Inflate;
                        }
                    }
                    None => self.fail(),
                },
                State::Sniff(first) => {
                    let Some(b0) = *first else {
                        *first = Some(input[0]);
                        input = &input[1..];
                        continue;
                    };
                    let b1 = input[0];
                    let zlib = b0 & 0x0f == 8
                        && b0 >> 4 <= 7
                        && (u16::from(b0) << 8 | u16::from(b1)) % 31 == 0;
                    self.inflate.reset(zlib);
                    self.state = State::Inflate;
                    self.inflate_from(&[b0]);
                }
                State::Inflate => input = self.inflate_from(input),
                State::GzTrailer { bytes, len } => {
                    let at = usize::from(*len);
                    let take = (8 - at).min(input.len());
                    bytes[at..at + take].copy_from_slice(&input[..take]);
                    input = &input[take..];
                    *len += take as u8;
                    if *len == 8 {
                        let crc = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                        let size = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                        if crc == self.crc.sum() && size == self.crc.amount() {
                            // Another member may follow (RFC 1952 §2.2).
                            self.state = State::GzHeader(GzHeader::default());
                        } else {
                            self.fail();
                        }
                    }
                }
            }
        }
    }

    /// The body ended: scan what is left. A body cut short keeps the usage seen before the cut,
    /// as an uncompressed one does.
    pub fn finish(&mut self) {
        if !self.failed() {
            self.scanner.finish();
        }
    }

    /// Inflate from `input` until it is used up (or the stream ends); returns what is left.
    fn inflate_from<'a>(&mut self, mut input: &'a [u8]) -> &'a [u8] {
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(input, &mut self.out, FlushDecompress::None);
            let used = usize::try_from(self.inflate.total_in() - in_before).unwrap_or(input.len());
            let made = usize::try_from(self.inflate.total_out() - out_before).unwrap_or(0);
            input = input.get(used..).unwrap_or_default();
            self.decoded += made as u64;
            if self.decoded > self.limit {
                self.fail();
                return &[];
            }
            let decoded = &self.out[..made];
            if self.coding == ContentCoding::Gzip {
                self.crc.update(decoded);
            }
            self.scanner.push(decoded);
            match status {
                Ok(Status::StreamEnd) => {
                    self.state = match self.coding {
                        ContentCoding::Gzip => State::GzTrailer {
                            bytes: [0; 8],
                            len: 0,
                        },
                        _ => State::Done,
                    };
                    return input;
                }
                Ok(Status::Ok | Status::BufError) => {
                    if made == self.out.len() {
                        continue; // more output may be pending
                    }
                    if input.is_empty() {
                        return input;
                    }
                    if used == 0 && made == 0 {
                        // No progress with input and room left (a zlib preset dictionary).
                        self.fail();
                        return &[];
                    }
                }
                Err(_) => {
                    self.fail();
                    return &[];
                }
            }
        }
    }

    fn fail(&mut self) {
        if self.decoded > self.limit {
            tracing::debug!(coding = ?self.coding, limit = self.limit,
                "token usage unknown: the compressed answer decodes to more than the limit");
        } else {
            tracing::debug!(coding = ?self.coding, decoded = self.decoded,
                "token usage unknown: the compressed answer could not be decoded");
        }
        self.state = State::Failed;
        // What the scanner and the output buffer hold is of no use any more.
        self.scanner = UsageScanner::json();
        self.out = Box::default();
    }
}

/// Codings the usage scanner reads through, as `Accept-Encoding` names them.
fn readable(coding: &[u8]) -> bool {
    ["gzip", "x-gzip", "deflate", "identity"]
        .iter()
        .any(|c| coding.eq_ignore_ascii_case(c.as_bytes()))
}

/// One `Accept-Encoding` element: its coding, and whether its `q` is 0 (refused).
fn element(item: &[u8]) -> (&[u8], bool) {
    let mut parts = item.split(|&b| b == b';');
    let coding = parts.next().unwrap_or_default().trim_ascii();
    let refused = parts.any(|p| {
        let p = p.trim_ascii();
        let Some(q) = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q=")) else {
            return false;
        };
        let q = q.trim_ascii();
        q.first() == Some(&b'0') && q.iter().all(|&b| b == b'0' || b == b'.')
    });
    (coding, refused)
}

/// Narrow a request's `Accept-Encoding` to the codings the usage scanner reads (`gzip`,
/// `x-gzip`, `deflate`, `identity`, each with its parameters), so that the backend does not
/// answer in one it cannot read (`br`, `zstd`, …) and hide the token usage. `identity` alone
/// when none of them remains accepted. Costs one header lookup when the request has none, and
/// allocates only when something is removed.
pub(crate) fn narrow_accept_encoding(headers: &mut HeaderMap) {
    let values = headers.get_all(header::ACCEPT_ENCODING);
    let items = || {
        values
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|item| !item.is_empty())
    };
    // Nothing to do (no header, or only readable codings): no allocation.
    if items().all(|item| readable(element(item).0)) {
        return;
    }
    let mut kept = Vec::new();
    let mut accepted = false;
    for item in items() {
        let (coding, refused) = element(item);
        if !readable(coding) {
            continue;
        }
        accepted |= !refused;
        if !kept.is_empty() {
            kept.extend_from_slice(b", ");
        }
        kept.extend_from_slice(item);
    }
    let value = if accepted {
        // Pieces of valid header values joined by ", ": valid too.
        HeaderValue::from_bytes(&kept).unwrap_or(HeaderValue::from_static("identity"))
    } else {
        HeaderValue::from_static("identity")
    };
    headers.insert(header::ACCEPT_ENCODING, value);
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};

    use super::*;

    const USAGE: &str = r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}"#;

    fn json_body() -> Vec<u8> {
        // Long enough that the compressed form spans several frames and deflate blocks.
        let filler = "lorem ipsum dolor sit amet ".repeat(2000);
        format!(
            r#"{{"id":"x","choices":[{{"message":{{"content":"{filler}"}}}}],"usage":{USAGE}}}"#
        )
        .into_bytes()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn scan_in_frames(coding: ContentCoding, body: &[u8], sizes: &[usize]) -> DecodingScanner {
        let mut s = DecodingScanner::new(coding, UsageScanner::json());
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            s.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        s.finish();
        s
    }

    #[test]
    fn gzip_json_in_frames_of_odd_sizes() {
        let body = json_body();
        let gz = gzip(&body);
        for sizes in [&[1][..], &[3, 7, 1], &[13], &[4096, 1], &[gz.len()]] {
            let s = scan_in_frames(ContentCoding::Gzip, &gz, sizes);
            assert!(!s.failed(), "{sizes:?}");
            assert_eq!(s.decoded(), body.len() as u64);
            assert_eq!(s.usage().unwrap().total_tokens, 15, "frames {sizes:?}");
        }
    }

    #[test]
    fn gzip_header_with_optional_fields() {
        let body = json_body();
        let mut e = flate2::GzBuilder::new()
            .filename("answer.json")
            .comment("a comment")
            .extra(vec![7; 300])
            .write(Vec::new(), Compression::fast());
        e.write_all(&body).unwrap();
        let gz = e.finish().unwrap();
        for sizes in [&[1][..], &[2, 5]] {
            let s = scan_in_frames(ContentCoding::Gzip, &gz, sizes);
            assert_eq!(s.usage().unwrap().prompt_tokens, Some(10));
        }
        // FHCRC, set by hand (GzBuilder does not write it): flag bit 1 and two CRC bytes.
        let plain = gzip(br#"{"usage":{"total_tokens":3}}"#);
        let mut with_crc = plain[..10].to_vec();
        with_crc[3] |= FHCRC;
        with_crc.extend_from_slice(&[0xab, 0xcd]);
        with_crc.extend_from_slice(&plain[10..]);
        let s = scan_in_frames(ContentCoding::Gzip, &with_crc, &[1]);
        assert_eq!(s.usage().unwrap().total_tokens, 3);
    }

    #[test]
    fn gzip_sse_with_usage_in_the_last_event() {
        let mut sse = String::new();
        for i in 0..200 {
            sse.push_str(&format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}],\"usage\":null}}\n\n"
            ));
        }
        sse.push_str(&format!("data: {{\"choices\":[],\"usage\":{USAGE}}}\n\n"));
        sse.push_str("data: [DONE]\n\n");
        // As a streaming server writes it: one sync flush per event, each flush one frame.
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        let mut frames = Vec::new();
        let mut sent = 0;
        for event in sse.split_inclusive("\n\n") {
            e.write_all(event.as_bytes()).unwrap();
            e.flush().unwrap();
            let now = e.get_ref().len();
            frames.push(e.get_ref()[sent..now].to_vec());
            sent = now;
        }
        let all = e.finish().unwrap();
        frames.push(all[sent..].to_vec());

        let mut s = DecodingScanner::new(ContentCoding::Gzip, UsageScanner::sse());
        let last_event = frames.len() - 3; // the usage event's frame (then [DONE], the trailer)
        for (i, frame) in frames.iter().enumerate() {
            s.push(frame);
            if i < last_event {
                assert!(s.usage().is_none());
            } else {
                // Seen as soon as its own frame passed: nothing waits for later input.
                assert_eq!(s.usage().unwrap().total_tokens, 15, "frame {i}");
            }
            assert!(s.buffered() < 1024);
        }
        s.finish();
        assert!(!s.failed());
        assert_eq!(s.decoded(), sse.len() as u64);

        // Byte by byte too.
        let s = scan_in_frames(ContentCoding::Gzip, &all, &[1]);
        assert_eq!(s.usage().unwrap().completion_tokens, Some(5));
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let body = json_body();
        for (name, data) in [("zlib", zlib(&body)), ("raw", raw_deflate(&body))] {
            for sizes in [&[1][..], &[2, 9], &[data.len()]] {
                let s = scan_in_frames(ContentCoding::Deflate, &data, sizes);
                assert!(!s.failed(), "{name} {sizes:?}");
                assert_eq!(s.usage().unwrap().total_tokens, 15, "{name} {sizes:?}");
            }
        }
    }

    #[test]
    fn several_gzip_members() {
        let mut gz = gzip(br#"{"id":"x","#);
        gz.extend(gzip(format!(r#""usage":{USAGE}}}"#).as_bytes()));
        let s = scan_in_frames(ContentCoding::Gzip, &gz, &[5]);
        assert_eq!(s.usage().unwrap().total_tokens, 15);
    }

    #[test]
    fn corrupt_gzip_is_unknown_usage_not_a_panic() {
        let body = json_body();
        let gz = gzip(&body);
        // Not gzip at all: plain JSON labelled gzip.
        let s = scan_in_frames(ContentCoding::Gzip, &body, &[7]);
        assert!(s.failed() && s.usage().is_none());
        // Flipped bits in the data, in the trailer's CRC, in the length.
        for at in [20, gz.len() / 2, gz.len() - 6, gz.len() - 2] {
            let mut bad = gz.clone();
            bad[at] ^= 0x55;
            let s = scan_in_frames(ContentCoding::Gzip, &bad, &[1, 100]);
            assert!(s.usage().is_none(), "flipped byte {at}");
        }
        // Garbage after a member.
        let mut bad = gzip(format!(r#"{{"usage":{USAGE}}}"#).as_bytes());
        bad.extend_from_slice(b"garbage");
        let s = scan_in_frames(ContentCoding::Gzip, &bad, &[3]);
        assert!(s.usage().is_none());
        // Corrupt deflate, both framings.
        for data in [zlib(&body), raw_deflate(&body)] {
            let mut bad = data.clone();
            for b in &mut bad[2..40] {
                *b = 0xff;
            }
            let s = scan_in_frames(ContentCoding::Deflate, &bad, &[11]);
            assert!(s.usage().is_none());
        }
        // Cut short (the client left): what was decoded still counts, as uncompressed.
        let sse = gzip(format!("data: {{\"usage\":{USAGE}}}\n\ndata: [DONE]\n\n").as_bytes());
        let mut s = DecodingScanner::new(ContentCoding::Gzip, UsageScanner::sse());
        s.push(&sse[..sse.len() - 8]);
        s.finish();
        assert_eq!(s.usage().unwrap().total_tokens, 15);
    }

    #[test]
    fn decompression_bomb_is_capped() {
        // 16 MiB of spaces compresses to ~16 KiB; the usage comes after them.
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(b"{\"content\":\"").unwrap();
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..16 {
            e.write_all(&spaces).unwrap();
        }
        e.write_all(format!("\",\"usage\":{USAGE}}}").as_bytes())
            .unwrap();
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 256 * 1024, "{}", bomb.len());

        let limit = 1 << 20;
        let mut s = DecodingScanner::with_limit(ContentCoding::Gzip, UsageScanner::json(), limit);
        for frame in bomb.chunks(4096) {
            s.push(frame);
            assert!(s.buffered() <= crate::audit::scan::SCAN_WINDOW);
        }
        s.finish();
        assert!(s.failed());
        assert!(s.usage().is_none());
        // Decoding stopped at the limit: at most one output buffer past it.
        assert!(
            s.decoded() <= limit + DECODE_BUFFER as u64,
            "{}",
            s.decoded()
        );

        // Under a limit above its size the same body is read to its usage.
        let mut s =
            DecodingScanner::with_limit(ContentCoding::Gzip, UsageScanner::json(), 32 << 20);
        s.push(&bomb);
        s.finish();
        assert_eq!(s.usage().unwrap().total_tokens, 15);
        assert_eq!(
            DecodingScanner::new(ContentCoding::Gzip, UsageScanner::json()).limit,
            DECODED_MAX
        );
    }

    #[test]
    fn content_coding_from_headers() {
        let parse =
            |v: &'static str| ContentCoding::from_header_values([&HeaderValue::from_static(v)]);
        assert_eq!(parse("gzip"), Some(ContentCoding::Gzip));
        assert_eq!(parse(" X-GZIP "), Some(ContentCoding::Gzip));
        assert_eq!(parse("Deflate"), Some(ContentCoding::Deflate));
        assert_eq!(parse("identity"), Some(ContentCoding::Identity));
        assert_eq!(parse("identity, gzip"), Some(ContentCoding::Gzip));
        assert_eq!(parse("br"), None);
        assert_eq!(parse("zstd"), None);
        assert_eq!(parse("gzip, br"), None);
        assert_eq!(parse("gzip, gzip"), None);
        assert_eq!(
            ContentCoding::of(&HeaderMap::new()),
            Some(ContentCoding::Identity)
        );
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.append(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(ContentCoding::of(&h), None);
    }

    fn narrowed(values: &[&'static str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        }
        narrow_accept_encoding(&mut h);
        let all: Vec<_> = h.get_all(header::ACCEPT_ENCODING).iter().collect();
        assert!(all.len() <= values.len().max(1));
        (!all.is_empty()).then(|| {
            all.iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
                .join(" | ")
        })
    }

    #[test]
    fn accept_encoding_narrowed_to_what_the_scanner_reads() {
        assert_eq!(narrowed(&[]), None);
        // What python-requests and most SDKs send: unchanged.
        assert_eq!(
            narrowed(&["gzip, deflate"]).as_deref(),
            Some("gzip, deflate")
        );
        assert_eq!(
            narrowed(&["x-gzip;q=0.8 , identity"]).as_deref(),
            Some("x-gzip;q=0.8 , identity")
        );
        assert_eq!(narrowed(&["br, gzip;q=0.5"]).as_deref(), Some("gzip;q=0.5"));
        assert_eq!(
            narrowed(&["gzip, deflate, br, zstd"]).as_deref(),
            Some("gzip, deflate")
        );
        assert_eq!(
            narrowed(&["BR;q=1.0, GZip ; q=0.9, *;q=0.1"]).as_deref(),
            Some("GZip ; q=0.9")
        );
        assert_eq!(narrowed(&["br"]).as_deref(), Some("identity"));
        assert_eq!(narrowed(&["*"]).as_deref(), Some("identity"));
        assert_eq!(narrowed(&["zstd, gzip;q=0"]).as_deref(), Some("identity"));
        assert_eq!(narrowed(&["br, gzip;Q=0.000"]).as_deref(), Some("identity"));
        assert_eq!(
            narrowed(&["br, gzip;q=0.001"]).as_deref(),
            Some("gzip;q=0.001")
        );
        // Several lines become one.
        assert_eq!(
            narrowed(&["br", "gzip", "deflate;q=0.2"]).as_deref(),
            Some("gzip, deflate;q=0.2")
        );
        assert_eq!(
            narrowed(&["gzip", "deflate"]).as_deref(),
            Some("gzip | deflate")
        );
        // Empty: "no coding but identity" stays as sent.
        assert_eq!(narrowed(&[""]).as_deref(), Some(""));
    }
}
