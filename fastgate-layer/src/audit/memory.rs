//! [`MemorySink`]: an in-memory [`AuditSink`] for tests and examples.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::{AuditBatch, AuditEvent, AuditSink};

/// The error a [`MemorySink`] returns when told to fail.
#[derive(Debug, thiserror::Error)]
#[error("memory sink told to fail")]
pub struct MemorySinkError(());

/// An [`AuditSink`] that keeps events in memory. Cloning shares the storage.
#[derive(Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<AuditEvent>>>,
    fail_next: Arc<AtomicU32>,
    notify: Arc<Notify>,
}

impl fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySink")
            .field("events", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemorySink {
    /// A copy of the events written so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Number of events written.
    pub fn len(&self) -> usize {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make the next `n` batch writes fail.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Wait until at least `n` events were written.
    pub async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.notify.notified();
            if self.len() >= n {
                return;
            }
            notified.await;
        }
    }
}

impl AuditSink for MemorySink {
    type Error = MemorySinkError;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), MemorySinkError> {
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(MemorySinkError(()));
        }
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(events);
        self.notify.notify_waiters();
        Ok(())
    }
}
