//! Asynchronous auditing (ports only so far).
mod event;
mod sink;
pub use event::{AuditEvent, Outcome, TokenUsage};
pub use sink::AuditSink;
