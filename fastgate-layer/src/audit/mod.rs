//! Asynchronous auditing: exactly one [`AuditEvent`] per request, written in batches by a worker
//! the caller runs.
//!
//! [`AuditLayer::pair`] returns the layer and an [`AuditWorker`]. The layer never blocks a
//! request: events go into a bounded queue with `try_send`, and an event that does not fit is
//! counted in [`AuditStats::dropped`]. The worker is a plain future, which the caller runs (spawned, or joined with its server);
//! it writes batches to an [`AuditSink`], retries failed batches with bounded backoff, and, once
//! every sender is dropped, drains what is still queued and returns — graceful shutdown loses
//! nothing. A sink wrapped in a [`SpoolSink`] keeps the batches it refuses in a local file until
//! it takes them again, so an outage longer than the retries loses nothing either.
//!
//! Place it **outermost** (inside the request-id layer): it learns who called from the *response*
//! extensions ([`KeyIdentity`](crate::KeyIdentity), written by auth), why a request was refused
//! from [`Rejected`](crate::Rejected), where it went from [`TargetUrl`](crate::TargetUrl), and the
//! client address from the request's [`ClientAddr`](crate::ClientAddr).
//!
//! When the event is emitted:
//!
//! | what happens | outcome |
//! |---|---|
//! | response body ends (or was empty) | `completed`, or the [`Rejected`](crate::Rejected) outcome |
//! | upstream body fails / goes idle mid-stream | `upstream_error` / `upstream_timeout`, bytes so far |
//! | client drops the response (or the request before the headers) | `client_aborted` |
//! | client drops a stream after its terminal event passed (`data: [DONE]`, `response.completed` / `.failed` / `.incomplete`, `message_stop`, Ollama's `"done":true` line) | `completed` |
//! | the host cuts it after [`AuditStats::cutting`] (end of its shutdown grace) | `interrupted` |
//!
//! Bytes pass through unchanged. The request's top-level `model` is read from the request body as
//! it streams, wherever it is in the body, with the bounded [`scan::ModelScanner`]; token usage
//! from the response with the bounded [`scan::UsageScanner`].
//!
//! # Compressed answers and `Accept-Encoding`
//!
//! Clients such as python-requests, httpx and the OpenAI SDKs send `Accept-Encoding: gzip`, and
//! a backend may then compress its answer. The client still gets the compressed bytes exactly as
//! the backend sent them; for a `gzip` (`x-gzip`) or `deflate` answer the usage scanner reads a
//! copy decoded frame by frame as the body passes ([`decode::DecodingScanner`]: nothing is held
//! back; memory is the decoder's state, about 43 KiB with its 32 KiB window, plus an 8 KiB
//! buffer, allocated only for compressed answers; decoding stops past 64 MiB of output or at a
//! decode error, leaving the usage unknown).
//!
//! A coding the scanner cannot read (`br`, `zstd`, `compress`, …) would hide the usage, so **an
//! enabled audit layer narrows the request's `Accept-Encoding`** before it goes on: only
//! `gzip`, `x-gzip`, `deflate` and `identity` stay, with their q-values (`br, gzip;q=0.5`
//! reaches the backend as `gzip;q=0.5`), and when none of them remains accepted the backend is
//! sent `identity`. A header that names only those codings, or none, is left as it is. This is
//! deliberate: the cost is that a backend which could have answered in brotli or zstd answers in
//! gzip or uncompressed. [`AuditLayer::disabled`] leaves the header alone. An answer in a coding
//! the scanner cannot read anyway (a backend that ignores the header) is passed on with its
//! usage unknown.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use fastgate_layer::audit::{AuditConfig, AuditLayer, MemorySink, Outcome};
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let sink = MemorySink::default();
//! let (layer, worker) = AuditLayer::pair(sink.clone(), AuditConfig::default().max_delay(Duration::from_millis(5)));
//! let stats = layer.stats();
//! let worker = tokio::spawn(worker.run());
//!
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_req| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
//!     }));
//! let res = svc.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
//! res.into_body().collect().await.unwrap();
//!
//! worker.await.unwrap(); // every sender is gone: the worker drained the queue and returned
//! let events = sink.events();
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].outcome, Outcome::Completed);
//! assert_eq!(events[0].response_bytes, 2);
//! assert_eq!(stats.written(), 1);
//! # }
//! ```

mod body;
pub mod decode;
mod event;
mod guard;
mod layer;
mod memory;
pub mod scan;
mod sink;
pub mod spool;
mod worker;

pub use body::{AuditBody, AuditRequestBody};
pub use event::{AuditEvent, Outcome, TokenUsage};
pub(crate) use guard::{AuditSlot, RequestStats};
pub use layer::{Audit, AuditConfig, AuditLayer, AuditStats, ResponseFuture, UpstreamFailure};
pub use memory::MemorySink;
pub use sink::{AuditBatch, AuditSink};
pub use spool::{SpoolError, SpoolSink, SpoolStats};
pub use worker::AuditWorker;

#[cfg(test)]
mod tests;

#[cfg(test)]
fn body_classify_for_test<E: 'static>(err: &E) -> Outcome {
    body::classify(err).0
}
