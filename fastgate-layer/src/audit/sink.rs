//! The audit port: where the worker writes batches of events.

use std::future::Future;

use super::AuditEvent;

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
        events: &[AuditEvent],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
