//! The audit port: where the worker writes batches of events.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use super::AuditEvent;

/// A batch of audit events, as handed to an [`AuditSink`]: a shared, read-only slice.
///
/// Cloning it is one reference-count increment, so a sink that writes on another thread (a
/// blocking pool, a writer thread) can take the batch along without copying the events, and the
/// worker can hand the same batch to a retry.
///
/// ```
/// use fastgate_layer::audit::{AuditBatch, AuditEvent};
///
/// let batch = AuditBatch::from(vec![AuditEvent::new("r1", "POST", "/proxy/chat")]);
/// let shared = batch.clone();
/// assert_eq!(shared.len(), 1);
/// assert_eq!(shared[0].request_id, "r1");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditBatch(Arc<[AuditEvent]>);

impl Deref for AuditBatch {
    type Target = [AuditEvent];

    fn deref(&self) -> &[AuditEvent] {
        &self.0
    }
}

impl From<Vec<AuditEvent>> for AuditBatch {
    fn from(events: Vec<AuditEvent>) -> Self {
        Self(events.into())
    }
}

impl From<&[AuditEvent]> for AuditBatch {
    fn from(events: &[AuditEvent]) -> Self {
        Self(events.into())
    }
}

impl FromIterator<AuditEvent> for AuditBatch {
    fn from_iter<I: IntoIterator<Item = AuditEvent>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Where audit events end up. Implemented by `fastgate-store`.
///
/// Called from the [`AuditWorker`](super::AuditWorker) only, never on the request path. A failed
/// batch is retried by the worker (bounded), so an implementation must be safe to call again with
/// the same batch after an error (write the batch in one transaction).
pub trait AuditSink: Send + 'static {
    /// Error returned by [`write_batch`](Self::write_batch).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Persist a batch, all or nothing.
    fn write_batch(
        &mut self,
        events: &AuditBatch,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Called by the worker when no event has come for [`AuditWorker::IDLE_TICK`]
    /// (and again after each such wait), for a sink with work of its own to catch up on: a
    /// [`SpoolSink`](super::SpoolSink) writes its file through once the database is back even
    /// when no request comes. Does nothing by default.
    ///
    /// [`AuditWorker::IDLE_TICK`]: super::AuditWorker::IDLE_TICK
    fn idle(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
