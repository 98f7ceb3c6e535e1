//! [`SpoolSink`]: audit events kept in a local file while the real sink fails, written through
//! once it works again.
//!
//! Without a spool, a batch the sink cannot take is retried by the [`AuditWorker`] and, after its
//! last retry, counted as lost; meanwhile the queue fills and new events are dropped. A database
//! outage longer than the retries (or than the queue holds) would lose records of requests that
//! were served. With a spool, a batch the sink refuses is appended to the file (one JSON object
//! per line, `fsync`ed) and the worker moves on; while the file holds events, every later batch
//! is appended behind them, so the table receives them in order. Every few seconds (doubling
//! from [`SpoolSink::RETRY_MIN`] to [`SpoolSink::RETRY_MAX`] while the sink keeps failing) the
//! file is replayed into the sink in batches of [`SpoolSink::REPLAY_BATCH`]; once it is empty it
//! is removed; with no traffic, the worker's [`idle`](AuditSink::idle) calls keep replaying. A
//! spool left by a stopped process is replayed by the next one ([`SpoolSink::replay_now`] at
//! start, then as above).
//!
//! Guarantees and limits: an event is acknowledged (counted as written) only once the sink or the
//! spool file (after `fsync`) holds it. An append that fails is cut back off the file, so the
//! batch the worker retries is not also half in it. The replay position is saved beside the file
//! (`<file>.pos`, replaced atomically) after each replayed batch, so a crash during a replay
//! writes at most that one batch twice. A line torn by a crash mid-append is skipped and counted.
//! One process per spool file. If the file cannot be written either (a full disk), the sink's
//! error is returned and the worker's retries apply as without a spool. The sink should refuse a
//! batch only when it cannot write at all (an outage): a batch it refuses for its content would
//! stay at the head of the file and hold back everything behind it.
//!
//! [`AuditWorker`]: super::AuditWorker

use std::io::{self, BufRead as _, Seek as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use super::{AuditBatch, AuditEvent, AuditSink, Outcome, TokenUsage};

/// Events per replayed batch.
const REPLAY_BATCH: usize = 512;
/// Batches replayed per batch written: the file shrinks faster than traffic can grow it, and the
/// worker gets back to the queue between two such runs.
const REPLAY_BATCHES_PER_WRITE: usize = 16;

/// Error of [`SpoolSink::write_batch`]: the sink failed and the spool could not take the batch.
#[derive(Debug, thiserror::Error)]
#[error("audit sink failed ({sink}); the spool file could not take the batch either: {spool}")]
pub struct SpoolError<E: std::error::Error + 'static> {
    /// The sink's error.
    #[source]
    pub sink: E,
    /// Why the spool file could not be written.
    pub spool: io::Error,
}

/// Counters of a [`SpoolSink`], shared with whoever reports them.
#[derive(Clone, Debug, Default)]
pub struct SpoolStats {
    inner: Arc<SpoolCounters>,
}

#[derive(Debug, Default)]
struct SpoolCounters {
    waiting: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    skipped: AtomicU64,
    failing: AtomicBool,
    /// Events of the file that were lost: lines skipped, or the file removed or cut by hand.
    lost: AtomicU64,
    /// When, on the audit layer's monotonic clock (0 for never).
    last_loss_mono: AtomicU64,
}

impl SpoolCounters {
    fn note_loss(&self, n: u64) {
        if n > 0 {
            self.lost.fetch_add(n, Ordering::Relaxed);
            self.last_loss_mono
                .store(super::layer::mono_ms(), Ordering::Relaxed);
        }
    }
}

impl SpoolStats {
    /// Events in the spool file, not yet in the sink.
    pub fn waiting(&self) -> u64 {
        self.inner.waiting.load(Ordering::Relaxed)
    }
    /// Events appended to the spool file since start.
    pub fn spooled(&self) -> u64 {
        self.inner.spooled.load(Ordering::Relaxed)
    }
    /// Events moved from the spool file into the sink since start.
    pub fn replayed(&self) -> u64 {
        self.inner.replayed.load(Ordering::Relaxed)
    }
    /// Lines of the spool file that could not be read back (torn by a crash) since start.
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }
    /// Events of the file that were lost since start: lines that could not be read back, or
    /// events of a file removed or cut by hand.
    pub fn lost(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed)
    }
    /// How long ago an event of the file was [`lost`](Self::lost); `None` if never.
    pub fn since_last_loss(&self) -> Option<std::time::Duration> {
        match self.inner.last_loss_mono.load(Ordering::Relaxed) {
            0 => None,
            at => Some(std::time::Duration::from_millis(
                super::layer::mono_ms().saturating_sub(at),
            )),
        }
    }
    /// Whether events wait in the file and the sink's most recent write (of a batch or of a
    /// replay) failed: they are not reaching the sink.
    pub fn failing(&self) -> bool {
        self.inner.failing.load(Ordering::Relaxed) && self.waiting() > 0
    }
}

/// An [`AuditSink`] that keeps the batches its inner sink refuses in a local file and writes them
/// through later. See the [module docs](self).
pub struct SpoolSink<S> {
    inner: S,
    path: PathBuf,
    pos_path: PathBuf,
    /// Held locked for the sink's life: one process per spool file.
    _lock: std::fs::File,
    /// Byte offset of the first line not yet replayed.
    replayed_to: u64,
    /// The sink is not tried again before this.
    next_try: Instant,
    backoff: Duration,
    retry_min: Duration,
    retry_max: Duration,
    stats: SpoolStats,
}

impl<S> std::fmt::Debug for SpoolSink<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolSink")
            .field("path", &self.path)
            .field("waiting", &self.stats.waiting())
            .finish_non_exhaustive()
    }
}

impl<S: AuditSink> SpoolSink<S> {
    /// Events per replayed batch.
    pub const REPLAY_BATCH: usize = REPLAY_BATCH;
    /// First wait before the sink is tried again after a failure.
    pub const RETRY_MIN: Duration = Duration::from_millis(500);
    /// Longest wait between two tries while the sink keeps failing.
    pub const RETRY_MAX: Duration = Duration::from_secs(10);

    /// Wrap `inner`, spooling to `path` (created when first needed, mode 0600). Events a previous
    /// process left in the file are counted and replayed at the first batch. `<path>.lock` is
    /// created and locked for as long as the sink lives: a second process on the same file gets
    /// an error here (two would write each other's events twice and lose some).
    pub fn open(inner: S, path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let sibling = |suffix: &str| {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        let pos_path = sibling(".pos");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(sibling(".lock"))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                "the spool file is in use by another process",
            ),
            std::fs::TryLockError::Error(e) => e,
        })?;
        let stats = SpoolStats::default();
        let mut replayed_to = 0;
        if !path.exists() {
            // A position without its file (removed by hand, or left by a crash between the two
            // removals) must not apply to the next file.
            let _ = std::fs::remove_file(&pos_path);
        } else {
            replayed_to = std::fs::read_to_string(&pos_path)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)?;
            let len = file.metadata()?.len();
            if replayed_to > len {
                replayed_to = 0;
            }
            // A line torn by a crash must not swallow the next one appended.
            if len > 0 {
                file.seek(io::SeekFrom::End(-1))?;
                let mut last = [0u8; 1];
                io::Read::read_exact(&mut file, &mut last)?;
                if last != *b"\n" {
                    io::Write::write_all(&mut file, b"\n")?;
                }
            }
            file.seek(io::SeekFrom::Start(replayed_to))?;
            let waiting = io::BufReader::new(file)
                .split(b'\n')
                .filter(|line| line.as_ref().is_ok_and(|l| !l.is_empty()))
                .count() as u64;
            stats.inner.waiting.store(waiting, Ordering::Relaxed);
        }
        Ok(Self {
            inner,
            path,
            pos_path,
            _lock: lock,
            replayed_to,
            next_try: Instant::now(),
            backoff: Self::RETRY_MIN,
            retry_min: Self::RETRY_MIN,
            retry_max: Self::RETRY_MAX,
            stats,
        })
    }

    /// Wait `min` after the sink's first failure before trying it again, doubling up to `max`
    /// while it keeps failing (defaults: [`RETRY_MIN`](Self::RETRY_MIN),
    /// [`RETRY_MAX`](Self::RETRY_MAX)).
    pub fn retry_after(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self.backoff = min;
        self
    }

    /// The counters, for `/health` and the like.
    pub fn stats(&self) -> SpoolStats {
        self.stats.clone()
    }

    /// The spool file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn failed(&mut self) {
        self.stats.inner.failing.store(true, Ordering::Relaxed);
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.retry_max);
    }

    fn succeeded(&mut self) {
        self.stats.inner.failing.store(false, Ordering::Relaxed);
        self.next_try = Instant::now();
        self.backoff = self.retry_min;
    }

    /// Append `events` to the file and `fsync` it; on failure the file is cut back to where it
    /// was, so a batch the worker will retry is never half in it.
    async fn append(&mut self, events: &AuditBatch) -> io::Result<()> {
        let mut lines = Vec::with_capacity(events.len() * 320);
        for event in events.iter() {
            serde_json::to_writer(&mut lines, &Spooled::from(event)).map_err(io::Error::other)?;
            lines.push(b'\n');
        }
        let mut options = tokio::fs::OpenOptions::new();
        options.create(true).append(true).mode(0o600);
        let mut file = options.open(&self.path).await?;
        let len = file.metadata().await?.len();
        if len < self.replayed_to || (len == 0 && self.stats.waiting() > 0) {
            // Removed or replaced by hand since its events were counted: they are gone, and
            // the position belongs to the old file.
            tracing::warn!(path = %self.path.display(), lost = self.stats.waiting(),
                "audit spool file was removed or cut while it held events; starting a new one");
            self.replayed_to = 0;
            let gone = self.stats.inner.waiting.swap(0, Ordering::Relaxed);
            self.stats.inner.note_loss(gone);
            let _ = tokio::fs::remove_file(&self.pos_path).await;
        }
        let written = async {
            file.write_all(&lines).await?;
            // tokio's `File` writes in the background: a failed write (a full disk) is reported
            // by `flush` only; `sync_data` would keep it to itself and succeed.
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        if let Err(e) = written {
            let _ = file.set_len(len).await;
            let _ = file.sync_data().await;
            return Err(e);
        }
        self.stats
            .inner
            .waiting
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats
            .inner
            .spooled
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Write what the file holds into the sink now, for a start-up with a spool left by an
    /// earlier process: until it is empty, the sink fails, the file cannot be read, or `budget`
    /// has passed (the worker writes the rest). Returns the number of events written.
    pub async fn replay_now(&mut self, budget: Duration) -> Result<u64, S::Error> {
        let before = self.stats.replayed();
        let until = Instant::now() + budget;
        while Instant::now() < until {
            if self.replay(1).await? != Replay::More {
                break;
            }
        }
        Ok(self.stats.replayed() - before)
    }

    /// Move up to `max_batches` batches from the file into the sink.
    async fn replay(&mut self, max_batches: usize) -> Result<Replay, S::Error> {
        let mut written = 0;
        loop {
            let (batch, next) = match read_batch(&self.path, self.replayed_to).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, path = %self.path.display(), "audit spool unreadable; replay postponed");
                    return Ok(Replay::Unreadable);
                }
            };
            if batch.events.is_empty() && batch.skipped == 0 {
                self.finish().await;
                return Ok(Replay::Done);
            }
            if written == max_batches {
                return Ok(Replay::More);
            }
            written += 1;
            let n = batch.events.len() as u64;
            if n > 0 {
                let events: AuditBatch = batch.events.into_iter().collect();
                self.inner.write_batch(&events).await?;
            }
            self.replayed_to = next;
            self.save_position(next).await;
            let c = &self.stats.inner;
            c.replayed.fetch_add(n, Ordering::Relaxed);
            c.skipped.fetch_add(batch.skipped, Ordering::Relaxed);
            c.note_loss(batch.skipped);
            let _ = c
                .waiting
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    Some(w.saturating_sub(n + batch.skipped))
                });
        }
    }

    /// The replay position, written whole or not at all (a new file renamed over the old one):
    /// a torn position would replay from the wrong place.
    async fn save_position(&mut self, position: u64) {
        let mut tmp = self.pos_path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let saved = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            file.write_all(position.to_string().as_bytes()).await?;
            file.flush().await?; // reports a failed background write (see `append`)
            file.sync_all().await?;
            tokio::fs::rename(&tmp, &self.pos_path).await
        }
        .await;
        if let Err(e) = saved {
            tracing::warn!(error = %e, "audit spool position not saved");
        }
    }

    /// Everything replayed: the next outage starts with an empty file.
    async fn finish(&mut self) {
        if let Err(e) = tokio::fs::remove_file(&self.path).await
            && e.kind() != io::ErrorKind::NotFound
        {
            // Read again from the saved position next time: nothing lost, nothing twice.
            tracing::warn!(error = %e, path = %self.path.display(), "audit spool file not removed");
            return;
        }
        self.replayed_to = 0;
        self.stats.inner.waiting.store(0, Ordering::Relaxed);
        // A position left behind must not apply to the next file: removed, or else zeroed.
        if let Err(e) = tokio::fs::remove_file(&self.pos_path).await
            && e.kind() != io::ErrorKind::NotFound
            && tokio::fs::write(&self.pos_path, "0").await.is_err()
        {
            tracing::warn!(error = %e, path = %self.pos_path.display(), "audit spool position file not removed");
        }
        tracing::info!(path = %self.path.display(), "audit spool replayed into the sink; file removed");
    }
}

/// How far a replay got.
#[derive(Debug, PartialEq, Eq)]
enum Replay {
    /// The file is empty and removed.
    Done,
    /// Events remain.
    More,
    /// The file could not be read; tried again later.
    Unreadable,
}

struct ReadBatch {
    events: Vec<AuditEvent>,
    skipped: u64,
}

/// Up to [`SpoolSink::REPLAY_BATCH`] events from byte `from`, and the offset after them.
async fn read_batch(path: &Path, from: u64) -> io::Result<(ReadBatch, u64)> {
    let path = path.to_owned();
    // A blocking read of at most a few hundred kilobytes, on the blocking pool.
    tokio::task::spawn_blocking(move || {
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((
                    ReadBatch {
                        events: Vec::new(),
                        skipped: 0,
                    },
                    from,
                ));
            }
            Err(e) => return Err(e),
        };
        file.seek(io::SeekFrom::Start(from))?;
        let mut reader = io::BufReader::new(file);
        let mut batch = ReadBatch {
            events: Vec::new(),
            skipped: 0,
        };
        let mut offset = from;
        let mut line = Vec::new();
        while batch.events.len() < REPLAY_BATCH {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            // The end, or a last line still being written (no newline yet): stop before it.
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            offset += n as u64;
            if line == b"\n" {
                continue; // the newline added after a line torn by a crash
            }
            match serde_json::from_slice::<Spooled>(&line) {
                Ok(spooled) => batch.events.push(spooled.into()),
                Err(e) => {
                    tracing::warn!(error = %e, offset, "audit spool line unreadable; skipped");
                    batch.skipped += 1;
                }
            }
        }
        Ok((batch, offset))
    })
    .await
    .map_err(io::Error::other)?
}

impl<S: AuditSink> AuditSink for SpoolSink<S> {
    type Error = SpoolError<S::Error>;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), Self::Error> {
        if self.stats.waiting() == 0 {
            let Err(sink) = self.inner.write_batch(events).await else {
                self.succeeded();
                return Ok(());
            };
            self.failed();
            return match self.append(events).await {
                Ok(()) => {
                    tracing::warn!(error = %crate::ErrorChain(&sink), events = events.len(), path = %self.path.display(),
                        "audit sink failed; batch kept in the spool file until it works again");
                    Ok(())
                }
                Err(spool) => Err(SpoolError { sink, spool }),
            };
        }
        // Events wait in the file: this batch goes behind them, then the file is replayed if
        // it is time to try the sink again.
        if let Err(spool) = self.append(events).await {
            // Not kept in order then, but not lost while the sink works.
            return match self.inner.write_batch(events).await {
                Ok(()) => Ok(()),
                Err(sink) => Err(SpoolError { sink, spool }),
            };
        }
        self.replay_if_due(REPLAY_BATCHES_PER_WRITE).await;
        Ok(())
    }

    /// No traffic: the file is still written through once the sink works again, a batch per
    /// call (the worker gets back to its queue, and to a shutdown, in between).
    async fn idle(&mut self) {
        if self.stats.waiting() > 0 {
            self.replay_if_due(1).await;
        }
    }
}

impl<S: AuditSink> SpoolSink<S> {
    async fn replay_if_due(&mut self, max_batches: usize) {
        if Instant::now() < self.next_try {
            return;
        }
        match self.replay(max_batches).await {
            Ok(Replay::Unreadable) => self.failed(),
            Ok(_) => self.succeeded(),
            Err(e) => {
                self.failed();
                tracing::warn!(error = %crate::ErrorChain(&e), waiting = self.stats.waiting(), "audit spool not written to the sink yet; retried later");
            }
        }
    }
}

/// One event as a spool line. Field names are stable: a spool written by one version is read
/// by the next.
#[derive(Serialize, Deserialize)]
struct Spooled {
    request_id: String,
    /// Microseconds since the Unix epoch.
    started_at_us: u64,
    key_id: Option<String>,
    source_path: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    method: String,
    path: String,
    target_url: Option<String>,
    status: u16,
    is_stream: bool,
    model: Option<String>,
    request_bytes: u64,
    response_bytes: u64,
    ttfb_us: Option<u64>,
    duration_us: u64,
    outcome: String,
    error_code: Option<String>,
    /// Prompt, completion and total tokens; the first two `null` when the backend did not
    /// report them (older spools hold numbers only, which read the same).
    usage: Option<(Option<u64>, Option<u64>, u64)>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl From<&AuditEvent> for Spooled {
    fn from(e: &AuditEvent) -> Self {
        Self {
            request_id: e.request_id.clone(),
            started_at_us: micros(e.started_at.duration_since(UNIX_EPOCH).unwrap_or_default()),
            key_id: e.key_id.as_deref().map(str::to_owned),
            source_path: e.source_path.as_deref().map(str::to_owned),
            client_ip: e.client_ip.clone(),
            user_agent: e.user_agent.clone(),
            method: e.method.clone(),
            path: e.path.clone(),
            target_url: e.target_url.as_deref().map(str::to_owned),
            status: e.status,
            is_stream: e.is_stream,
            model: e.model.clone(),
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            ttfb_us: e.ttfb.map(micros),
            duration_us: micros(e.duration),
            outcome: e.outcome.as_str().to_owned(),
            error_code: e.error_code.map(str::to_owned),
            usage: e
                .usage
                .map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)),
        }
    }
}

impl From<Spooled> for AuditEvent {
    fn from(s: Spooled) -> Self {
        let mut e = AuditEvent::new(s.request_id, s.method, s.path);
        e.started_at = UNIX_EPOCH + Duration::from_micros(s.started_at_us);
        e.key_id = s.key_id.map(Arc::from);
        e.source_path = s.source_path.map(Arc::from);
        e.client_ip = s.client_ip;
        e.user_agent = s.user_agent;
        e.target_url = s.target_url.map(Arc::from);
        e.status = s.status;
        e.is_stream = s.is_stream;
        e.model = s.model;
        e.request_bytes = s.request_bytes;
        e.response_bytes = s.response_bytes;
        e.ttfb = s.ttfb_us.map(Duration::from_micros);
        e.duration = Duration::from_micros(s.duration_us);
        // An outcome this version does not know (a newer one wrote the file) reads as an error.
        e.outcome = Outcome::parse(&s.outcome).unwrap_or(Outcome::UpstreamError);
        e.error_code = s.error_code.as_deref().map(intern);
        e.usage = s.usage.map(|(p, c, t)| TokenUsage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
        });
        e
    }
}

/// The `&'static str` for an error code read back from a spool: each distinct code is leaked
/// once (they are a handful of fixed names); past 256 distinct ones, `"unknown"`.
fn intern(code: &str) -> &'static str {
    static CODES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut codes = CODES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = codes.iter().find(|c| **c == code) {
        return known;
    }
    if codes.len() >= 256 {
        return "unknown";
    }
    let leaked: &'static str = Box::leak(code.to_owned().into_boxed_str());
    codes.push(leaked);
    leaked
}

#[cfg(test)]
mod tests;
