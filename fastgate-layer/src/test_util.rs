//! Scripted bodies for unit tests.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// What a [`MockBody`] yields next.
#[derive(Debug)]
pub(crate) enum Step {
    Data(&'static [u8]),
    Error,
    Trailers,
    Pending,
}

/// A body that plays a script and reports `is_end_stream` exactly (like an exact Content-Length).
#[derive(Debug)]
pub(crate) struct MockBody {
    steps: VecDeque<Step>,
}

/// The error a [`MockBody`] yields.
#[derive(Debug, thiserror::Error)]
#[error("mock body error")]
pub(crate) struct MockError;

impl MockBody {
    pub(crate) fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = MockError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockError>>> {
        match self.steps.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Data(d)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(d))))),
            Some(Step::Error) => Poll::Ready(Some(Err(MockError))),
            Some(Step::Trailers) => Poll::Ready(Some(Ok(Frame::trailers(http::HeaderMap::new())))),
            Some(Step::Pending) => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
