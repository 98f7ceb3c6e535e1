//! [`AuditWorker`]: drains the audit queue into an [`AuditSink`] in batches.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::layer::{AuditConfig, StatsInner};
use super::{AuditBatch, AuditEvent, AuditSink};

/// Drains the audit queue into an [`AuditSink`]. Created by
/// [`AuditLayer::pair`](super::AuditLayer::pair); run it with [`AuditWorker::run`].
#[must_use = "the audit worker writes nothing unless it is run (AuditWorker::run)"]
pub struct AuditWorker<W> {
    rx: mpsc::Receiver<AuditEvent>,
    sink: W,
    config: AuditConfig,
    stats: Arc<StatsInner>,
}

impl<W> fmt::Debug for AuditWorker<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<W: AuditSink> AuditWorker<W> {
    /// How long the queue stays empty before the sink's [`idle`](AuditSink::idle) is called.
    pub const IDLE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

    pub(crate) fn new(
        rx: mpsc::Receiver<AuditEvent>,
        sink: W,
        config: AuditConfig,
        stats: Arc<StatsInner>,
    ) -> Self {
        Self {
            rx,
            sink,
            config,
            stats,
        }
    }

    /// Write events in batches until every sender (layer and services) is dropped and the queue
    /// is empty, then return.
    ///
    /// A batch is written when it holds `max_batch` events or its first event has waited
    /// `max_delay`. While a batch fills, the worker sleeps instead of waking for every event, so
    /// under load it wakes about once per batch. A failed batch is retried up to `max_retries`
    /// times with doubling backoff (each retry counted in
    /// [`AuditStats::retried`](super::AuditStats::retried)); after that its events are counted as
    /// [`lost`](super::AuditStats::lost).
    pub async fn run(mut self) {
        let max_batch = self.config.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch.min(1024));
        loop {
            let first = match tokio::time::timeout(Self::IDLE_TICK, self.rx.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) => break,
                Err(_quiet) => {
                    self.sink.idle().await;
                    continue;
                }
            };
            batch.push(first);
            let mut closed = self.drain_into(&mut batch, max_batch);
            if batch.len() < max_batch && !closed {
                tokio::time::sleep(self.config.max_delay).await;
                closed = self.drain_into(&mut batch, max_batch);
            }
            self.stats
                .taken
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Moved (not copied) into a shared batch; `batch` keeps its capacity.
            let shared: AuditBatch = batch.drain(..).collect();
            self.write(&shared).await;
            if closed {
                break;
            }
        }
        tracing::debug!("audit queue closed; worker done");
    }

    /// Move queued events into `batch` without waiting; `true` when the queue is closed and empty.
    fn drain_into(&mut self, batch: &mut Vec<AuditEvent>, max_batch: usize) -> bool {
        while batch.len() < max_batch {
            match self.rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    async fn write(&mut self, batch: &AuditBatch) {
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 0;
        loop {
            match self.sink.write_batch(batch).await {
                Ok(()) => {
                    self.stats
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.stats.failing.store(false, Ordering::Relaxed);
                    return;
                }
                Err(error) if attempt < self.config.max_retries => {
                    self.stats.failing.store(true, Ordering::Relaxed);
                    attempt += 1;
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %crate::ErrorChain(&error), attempt, events = batch.len(), "audit batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_retry_backoff);
                }
                Err(error) => {
                    // Given up: nothing is waiting to be written any more (the loss is noted
                    // instead), so an idle gateway does not stay `failing` with nothing to retry.
                    self.stats.failing.store(false, Ordering::Relaxed);
                    self.stats.note_loss(batch.len() as u64, true);
                    tracing::error!(error = %crate::ErrorChain(&error), lost = batch.len(), "audit batch given up");
                    return;
                }
            }
        }
    }
}
