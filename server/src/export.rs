//! `GET /admin/logs/export`: every audit record matching a filter, streamed page by page as CSV,
//! a JSON array or NDJSON.
//!
//! The first page is read before the answer starts, so a bad filter is a 400 and an unreachable
//! database a 503. The next pages follow the keyset cursor of `GET /admin/logs` (newest first):
//! memory stays at one page whatever the export's size. Every page is limited to the records
//! stored when the export started (`AuditFilter::stored_by`), so a request that finishes while
//! the export runs is left out whatever its start time. A database error after the first page
//! ends the body without its last chunk, so the client sees a broken transfer (curl: exit 18),
//! never a file that looks complete.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use fastgate_store::{AuditFilter, AuditPage};
use poem::Body;
use poem_openapi::types::ToJSON;

use crate::api::AuditEntry;
use crate::state::AppState;

/// Records read per database query.
pub(crate) const PAGE: u32 = 1_000;

/// Output format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Json,
    Ndjson,
}

impl Format {
    /// `Content-Disposition` of the download (M-FastGate's file names).
    pub(crate) fn disposition(self) -> String {
        let ext = match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Ndjson => "ndjson",
        };
        format!("attachment; filename=\"audit_logs.{ext}\"")
    }
}

/// CSV columns: the field names of an audit record in the JSON formats, in the order the API
/// documents them.
pub(crate) const COLUMNS: [&str; 21] = [
    "request_id",
    "timestamp",
    "key_id",
    "source_path",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "target_url",
    "status",
    "is_stream",
    "model",
    "request_bytes",
    "response_bytes",
    "ttfb_ms",
    "duration_ms",
    "outcome",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
];

/// A text cell that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first)
/// gets a leading `'`: user agents, models and paths come from clients.
fn text_cell(s: &str) -> Cow<'_, str> {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{s}")),
        _ => Cow::Borrowed(s),
    }
}

fn opt_text(s: &Option<String>) -> Cow<'_, str> {
    s.as_deref().map_or(Cow::Borrowed(""), text_cell)
}

fn opt_num<T: ToString>(v: Option<T>) -> Cow<'static, str> {
    v.map_or(Cow::Borrowed(""), |v| Cow::Owned(v.to_string()))
}

/// One record as CSV cells, in [`COLUMNS`] order (absent values are empty cells).
pub(crate) fn csv_cells(e: &AuditEntry) -> [Cow<'_, str>; 21] {
    [
        text_cell(&e.request_id),
        Cow::Borrowed(e.timestamp.as_str()),
        opt_text(&e.key_id),
        opt_text(&e.source_path),
        opt_text(&e.client_ip),
        opt_text(&e.user_agent),
        text_cell(&e.method),
        text_cell(&e.path),
        opt_text(&e.target_url),
        Cow::Owned(e.status.to_string()),
        Cow::Borrowed(if e.is_stream { "true" } else { "false" }),
        opt_text(&e.model),
        Cow::Owned(e.request_bytes.to_string()),
        Cow::Owned(e.response_bytes.to_string()),
        opt_num(e.ttfb_ms),
        Cow::Owned(e.duration_ms.to_string()),
        text_cell(&e.outcome),
        opt_text(&e.error_code),
        opt_num(e.prompt_tokens),
        opt_num(e.completion_tokens),
        opt_num(e.total_tokens),
    ]
}

/// The export's state between chunks.
struct Export {
    state: Arc<AppState>,
    filter: AuditFilter,
    format: Format,
    /// The page read before the answer started; taken by the first chunk.
    first: Option<AuditPage>,
    /// Where the next page starts; `None` once the last page was read.
    cursor: Option<String>,
    /// Records still wanted (`limit`).
    remaining: u64,
    /// Records written so far (for the JSON array's commas).
    written: u64,
    /// Start the CSV with a UTF-8 byte order mark.
    bom: bool,
    done: bool,
}

/// The export body. `first` is the first page, read with `filter` (whose `limit` is at most
/// [`PAGE`]); at most `limit` records are written; `bom` puts a UTF-8 byte order mark before a
/// CSV.
pub(crate) fn body(
    state: Arc<AppState>,
    filter: AuditFilter,
    first: AuditPage,
    format: Format,
    limit: u64,
    bom: bool,
) -> Body {
    let export = Export {
        state,
        filter,
        format,
        first: Some(first),
        cursor: None,
        remaining: limit,
        written: 0,
        bom,
        done: false,
    };
    Body::from_bytes_stream(futures_util::stream::unfold(export, |mut e| async move {
        e.next_chunk().await.map(|chunk| (chunk, e))
    }))
}

impl Export {
    /// The next non-empty chunk; `None` at the end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            match self.step().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                other => return other,
            }
        }
    }

    async fn step(&mut self) -> Option<Result<Bytes, io::Error>> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(64 * 1024);
        let start = self.first.is_some();
        let page = if let Some(first) = self.first.take() {
            first
        } else if let Some(cursor) = self.cursor.take().filter(|_| self.remaining > 0) {
            self.filter.cursor = Some(cursor);
            self.filter.limit = u32::try_from(self.remaining).map_or(PAGE, |r| r.min(PAGE));
            match self.state.store.query_audit(&self.filter).await {
                Ok(page) => page,
                Err(error) => {
                    // Logged (at error level) and counted once, as other store failures are.
                    self.state.record_error("audit export", &error);
                    self.done = true;
                    return Some(Err(io::Error::other("audit export stopped")));
                }
            }
        } else {
            self.done = true;
            return match self.format {
                Format::Json if self.written == 0 => Some(Ok(Bytes::from_static(b"[]\n"))),
                Format::Json => Some(Ok(Bytes::from_static(b"\n]\n"))),
                Format::Csv | Format::Ndjson => None,
            };
        };
        self.cursor = page.next_cursor;
        let take = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        let entries = page.items.into_iter().take(take).map(AuditEntry::from);
        let before = self.written;
        match self.format {
            Format::Csv => {
                if start && self.bom {
                    out.extend_from_slice("\u{feff}".as_bytes());
                }
                let mut w = csv::WriterBuilder::new()
                    .terminator(csv::Terminator::Any(b'\n'))
                    .from_writer(&mut out);
                // Writing into a `Vec` cannot fail.
                if start {
                    let _ = w.write_record(COLUMNS);
                }
                for entry in entries {
                    let _ = w.write_record(csv_cells(&entry).iter().map(|c| c.as_bytes()));
                    self.written += 1;
                }
                let _ = w.flush();
            }
            Format::Json | Format::Ndjson => {
                for value in entries.filter_map(|entry| entry.to_json()) {
                    if self.format == Format::Json {
                        out.extend_from_slice(if self.written == 0 { b"[\n" } else { b",\n" });
                    }
                    // Writing a `Value` into a `Vec` cannot fail.
                    let _ = serde_json::to_writer(&mut out, &value);
                    if self.format == Format::Ndjson {
                        out.push(b'\n');
                    }
                    self.written += 1;
                }
            }
        }
        self.remaining -= self.written - before;
        Some(Ok(Bytes::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_defused_and_others_kept() {
        for (raw, cell) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("curl/8.5", "curl/8.5"),
            ("", ""),
            ("/proxy/v1", "/proxy/v1"),
        ] {
            assert_eq!(text_cell(raw), cell);
        }
    }
}
